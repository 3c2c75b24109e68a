"""Batch-inference throughput: one process against rnnc.dask.apply on a LocalCluster.

Sequences per second on N ragged sequences (default 100,000; T ~ U[20, 200], 32 features,
float32, seeded) through an LSTM(32, 128) scorer that keeps each sequence's final hidden state
(``Sequential(LSTM, Pool("state"))``: 128 numbers per sequence come back, not the outputs):

- one process, rnnc called directly at 1 and 2 threads on padded batches of 64
  (``rnnc.batches``), in input order or bucketed by length (``bucket=True``);
- ``rnnc.dask.apply`` on a bag of the sequences on a LocalCluster of 2 worker processes of 1
  thread each, bucketing (sorting each partition by length) on and off. The bag is persisted
  on the workers first and the module is warmed up, so the time is the computation, the
  scatter of the module and the results coming back, not the data going out.

Prints a Markdown table (with lscpu's model name and the thread counts) and writes it to
benchmarks/results/<cpu slug>/dask.md (``--out`` to change the folder). ``--sequences 2000``
for a quick check.

    python benchmarks/dask_throughput.py
    python benchmarks/dask_throughput.py --sequences 2000 --out /tmp/bench
"""
import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import rnnc
from rnnc._engine import machine
from rnnc.bench import report


def lscpu_model():
    """lscpu's model name (rnnc's own reading of /proc/cpuinfo where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Model name":
            return " ".join(value.split())
    return machine.current().model or "unknown CPU"


def make_data(n, features, t_min, t_max, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t_min, t_max + 1, n)
    return [rng.standard_normal((int(t), features)).astype(np.float32) for t in lengths]


def make_model(features, hidden, seed):
    return rnnc.Sequential(rnnc.LSTM(features, hidden, seed=seed), rnnc.Pool("state")).freeze()


def padded_steps(lengths, batches):
    """Steps computed (each batch padded to its longest sequence) for batches of indices."""
    return int(sum(len(b) * lengths[b].max() for b in batches))


def partition_batches(lengths, npartitions, batch_size, bucket):
    """The batches rnnc.dask.apply runs on a bag made by db.from_sequence(..., npartitions)."""
    n = len(lengths)
    size = math.ceil(n / npartitions)
    out = []
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        if bucket:
            idx = idx[np.argsort(-lengths[idx], kind="stable")]
        out += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    return out


def run_local(model, seqs, threads, bucket, batch_size):
    found = rnnc.get_num_threads()
    rnnc.set_num_threads(threads)
    try:
        warm, warm_lengths = rnnc.pad_sequences(seqs[:batch_size])
        model(warm, lengths=warm_lengths)
        start = time.perf_counter()
        rows = 0
        for x, lengths, _ in rnnc.batches(seqs, batch_size=batch_size, bucket=bucket):
            rows += len(model(x, lengths=lengths))
        elapsed = time.perf_counter() - start
    finally:
        rnnc.set_num_threads(found)
    assert rows == len(seqs)
    return elapsed


def run_dask(client, model, seqs, bucket, batch_size, npartitions, gather=True):
    """Seconds to run the bag through rnnc.dask.apply: with the per-sequence results gathered
    into the client (``.compute()``), or kept on the workers (``.persist()``, as a pipeline
    that writes its results from the workers would)."""
    import dask.bag as db
    from distributed import wait

    import rnnc.dask
    # The partitions db.from_sequence(seqs, npartitions) would make, sent to the workers
    # before the clock starts (not embedded in the graph).
    size = math.ceil(len(seqs) / npartitions)
    parts = client.scatter([seqs[i:i + size] for i in range(0, len(seqs), size)])
    wait(parts)
    bag = db.from_delayed(parts)
    # Warm-up: every worker imports rnnc and packs the weights once.
    rnnc.dask.apply(model, db.from_sequence(seqs[:4 * batch_size], npartitions=4),
                    batch_size=batch_size).compute()
    start = time.perf_counter()
    result = rnnc.dask.apply(model, bag, batch_size=batch_size, bucket=bucket)
    if gather:
        out = result.compute()
        elapsed = time.perf_counter() - start
        assert len(out) == len(seqs)
    else:
        kept = result.persist()
        wait(kept)
        elapsed = time.perf_counter() - start
        assert kept.count().compute() == len(seqs)
        client.cancel(kept)
    client.cancel(parts)
    return elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=100_000, help="N (default 100000)")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--t-min", type=int, default=20)
    p.add_argument("--t-max", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--partitions", type=int, default=16,
                   help="partitions of the bag on the cluster (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for dask.md (default: benchmarks/results/<CPU slug>/)")
    args = p.parse_args(argv)
    if args.sequences < args.batch_size:
        p.error("--sequences must be at least --batch-size")

    import distributed

    seqs = make_data(args.sequences, args.features, args.t_min, args.t_max, args.seed)
    lengths = np.array([len(s) for s in seqs])
    model = make_model(args.features, args.hidden, args.seed)
    load_start = os.getloadavg()
    rows = []

    def add(setup, threads, bucket, seconds, batches):
        steps = padded_steps(lengths, batches)
        rows.append((setup, threads, "on" if bucket else "off", len(seqs) / seconds, seconds,
                     lengths.sum() / steps))
        print(f"{setup}, {threads}, bucketing {'on' if bucket else 'off'}: "
              f"{len(seqs) / seconds:.0f} sequences/s", file=sys.stderr)

    for threads in (1, 2):
        for bucket in (False, True):
            seconds = run_local(model, seqs, threads, bucket, args.batch_size)
            plan = rnnc.batches(seqs, batch_size=args.batch_size, bucket=bucket)._plan
            add("one process (rnnc directly)", f"{threads} thread{'s' * (threads > 1)}",
                bucket, seconds, plan)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        for gather in (True, False):
            for bucket in (False, True):
                seconds = run_dask(client, model, seqs, bucket, args.batch_size,
                                   args.partitions, gather)
                add("rnnc.dask.apply, LocalCluster, results "
                    + ("gathered to the client" if gather else "kept on the workers"),
                    "2 workers x 1 thread", bucket, seconds,
                    partition_batches(lengths, args.partitions, args.batch_size, bucket))
    finally:
        client.close()
        cluster.close()
    load_end = os.getloadavg()

    command = " ".join(["python benchmarks/dask_throughput.py"]
                       + list(sys.argv[1:] if argv is None else argv))
    model_name = lscpu_model()
    slug = machine.slug(model_name)
    import dask
    lines = [
        f"# rnnc.dask batch-inference throughput: {model_name}", "",
        f"- CPU: lscpu model name \"{model_name}\" (results folder `benchmarks/results/{slug}/`),"
        f" {os.cpu_count()} logical CPUs; load average (1, 5, 15 min) "
        f"{', '.join(f'{v:.2f}' for v in load_start)} at start, "
        f"{', '.join(f'{v:.2f}' for v in load_end)} at end.",
        f"- Data: {len(seqs):,} sequences, T ~ U[{args.t_min}, {args.t_max}] (mean "
        f"{lengths.mean():.1f}), {args.features} features, float32, seed {args.seed}.",
        f"- Model: `Sequential(LSTM({args.features}, {args.hidden}), Pool(\"state\"))`, frozen "
        f"(each sequence's final hidden state comes back); batches of {args.batch_size}, each "
        f"padded to its longest sequence; bucketing sorts by length (one process: "
        f"`rnnc.batches(bucket=True)`, chunks of 50 batches; Dask: within each of "
        f"{args.partitions} partitions).",
        "- Threads: one process at the thread count given (`rnnc.set_num_threads`); the "
        "cluster's 2 worker processes run 1 thread each (`LocalCluster(n_workers=2, "
        "threads_per_worker=1)`); the bag is on the workers before the clock starts. "
        "Results gathered: `.compute()` brings every sequence's result (a list of 128-float "
        "arrays) to the client; kept: `.persist()` leaves them on the workers.",
        "- Real steps / padded steps: the share of the padded batches' steps that are real. "
        "rnnc runs a padded batch in packed form (sorted by length inside the call, "
        "rnnc/_engine/layout.py) and computes no step of a sequence that has ended, so padding "
        "costs copies and memory more than recurrent work.",
        f"- Versions: rnnc {rnnc.__version__}, dask {dask.__version__}, distributed "
        f"{distributed.__version__}, NumPy {np.__version__}; Python "
        f"{platform.python_version()}.",
        f"- Command: `{command}`.",
        "",
        "| Setup | Threads | Bucketing | Sequences/s | Time (s) | Real steps / padded steps |",
        "|---|---|---|---:|---:|---:|",
    ]
    for setup, threads, bucket, rate, seconds, useful in rows:
        lines.append(f"| {setup} | {threads} | {bucket} | {rate:,.0f} | {seconds:.2f} | "
                     f"{useful:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else report.results_dir(slug)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dask.md").write_text(text)
    print(f"written: {out / 'dask.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
