"""rnnc on a busy machine: the time of a call while other processes spin on the CPUs, against
the same call on the machine as it is (idle, or as idle as it gets).

    python -m rnnc.bench.busy                      # rnnc's default threads, one spinning process
    python -m rnnc.bench.busy --threads 2 2:1 1 --load 1 --rounds 3

``--threads 2:1``: rnnc at 2 threads (its plans split layers and use its helper thread) with
every BLAS call held at one thread: the BLAS side of the fix proposed in
benchmarks/results/amd-epyc/busy.md, measured without changing rnnc.

Cases: the suite's quick cases (rnnc/bench/cases.py QUICK; rnnc only) and those of
``python -m rnnc`` (rnnc/__main__.py: T=50 B=16 I=32 H=64, Linear included), float32, plus the
NumPy reference's Linear for scale. The load is ``--load`` processes running a busy loop,
started and killed by this program (killed in a ``finally``, so an interrupted run leaves none
behind).

Timing: ``--rounds`` rounds, each an idle phase and a loaded phase, so that a change in what
else runs on the machine hits both alike; in each phase every case and thread count runs an
untimed call, then calls for ``--min-time`` seconds (at least ``--min-calls``, at most
``--max-time`` s). Reported per case: median and mean time per call idle and loaded, and the
ratios loaded / idle. The mean is what a loop of calls pays: a thread that waits for a
descheduled partner stalls one call in several for a whole scheduler tick, which the median
hides. Target: every case within 2x of idle, in median and mean.

``--products`` adds single BLAS products as rnnc calls them (rows, K) @ (N, K)^T, sized from
this machine's L2 (rnnc/_engine/machine.py): operands of 1/4, 1, 4 and 16 times one core's L2,
to see where a product stops being hurt by a second BLAS thread on a busy machine.

Writes OUT/NAME.md and OUT/NAME.json (OUT: benchmarks/results/<CPU slug>/ in a source
checkout; NAME: busy_run).
"""
import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import rnnc
import rnnc.reference
from rnnc import __main__ as cli
from rnnc._engine import machine
from rnnc.bench import cases as _cases
from rnnc.bench import peers, report
from rnnc.bench.suite import _block, command_line, library_info, machine_info

TARGET = 2.0        # loaded / idle, per case
SPIN = "while True:\n    pass\n"


class Load:
    """``n`` processes that each keep a CPU busy until stop() (or the end of a with block)."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def start(self, settle=0.1):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", SPIN],
                                               stdin=subprocess.DEVNULL))
        time.sleep(settle)      # the spinners are running, not starting up

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def workloads(dtype="float32"):
    """[(name, fn)]: the calls timed. The suite's quick cases through the suite's rnnc runners
    (a variable-length case with its lengths), then python -m rnnc's."""
    out = []
    for case in _cases.QUICK:
        if dtype not in case.dtypes:
            continue
        variant = "lengths" if case.kind == "varlen" else ""
        data = peers.Data(case, dtype)
        runner = peers.build("rnnc", case, variant, data, rnnc.get_num_threads())
        out.append((f"suite: {case.name}", runner.fn))
    T, B, I, H = 50, 16, 32, 64
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    for name, config, build, call in cli._cases(T, B, I, H):
        m = build(rnnc, np.dtype(dtype))
        label = f"python -m rnnc: {name}" + (f" ({config})" if config else "")
        out.append((label, (lambda m=m, call=call: call(m, x))))
        if name == "Linear":
            ref = build(rnnc.reference, np.dtype(dtype))
            out.append((f"{label}, NumPy reference", (lambda m=ref, call=call: call(m, x))))
    return out


def products(dtype="float32"):
    """[(name, fn)]: rnnc's row-major BLAS product (the call its kernels make) on python -m
    rnnc's Linear, then on (M, 128) @ (128, 128)^T with operands of 1/4 to 16 times one core's
    L2."""
    from rnnc._kernels._blas import gemm_py
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    l2 = machine.current().l2
    shapes = [(800, 32, 64)]
    for times in (0.25, 1, 4, 16):
        M = max(1, int((times * l2 / dt.itemsize - 128 * 128) // 256))
        shapes.append((M, 128, 128))
    out = []
    for M, K, N in shapes:
        a = rng.standard_normal((M, K)).astype(dt)
        w = rng.standard_normal((N, K)).astype(dt)
        c = np.empty((M, N), dt)
        size = (M * K + N * K + M * N) * dt.itemsize / l2
        out.append((f"product ({M}, {K}) @ ({N}, {K})^T, {size:.2g} x L2",
                    (lambda a=a, w=w, c=c: gemm_py(a, w, c, trans_b=True))))
    return out


def parse_threads(text):
    """'2' -> (2, None): rnnc.set_num_threads(2); '2:1' -> (2, 1): the same, then BLAS held at
    one thread."""
    n, _, blas = str(text).partition(":")
    return int(n), (int(blas) if blas else None)


def measure(work, threads_list, load, rounds, min_time, min_calls, max_time, log=print):
    """{(case, threads): {"idle": [s], "loaded": [s]}}, rounds of an idle then a loaded phase."""
    samples = {(name, t): {"idle": [], "loaded": []} for name, _ in work for t in threads_list}
    for r in range(rounds):
        for phase in ("idle", "loaded"):
            spinners = Load(load if phase == "loaded" else 0)
            try:
                spinners.start(settle=0.1)
                for t in threads_list:
                    n, blas = parse_threads(t)
                    rnnc.set_num_threads(n)
                    hold = contextlib.nullcontext() if blas is None else \
                        threadpool_limits(limits=blas, user_api="blas")
                    with hold:
                        for name, fn in work:
                            samples[(name, t)][phase] += _block(fn, min_calls, min_time,
                                                                max_time, 0.0)
            finally:
                spinners.stop()
            log(f"round {r + 1}/{rounds}: {phase} done")
    return samples


def summarize(samples):
    rows = []
    for (name, threads), got in samples.items():
        row = {"case": name, "threads": threads}
        for phase, secs in got.items():
            v = np.asarray(secs) * 1e3
            row[phase] = {"median": float(np.median(v)), "mean": float(v.mean()),
                          "p90": float(np.percentile(v, 90)), "max": float(v.max()),
                          "n": int(v.size)}
        row["ratio_median"] = row["loaded"]["median"] / row["idle"]["median"]
        row["ratio_mean"] = row["loaded"]["mean"] / row["idle"]["mean"]
        row["within_target"] = max(row["ratio_median"], row["ratio_mean"]) <= TARGET
        rows.append(row)
    # Against the best of the thread counts idle: a thread count that is already slow idle
    # (other jobs on the machine) shows up here.
    for row in rows:
        best = min(r["idle"]["median"] for r in rows if r["case"] == row["case"])
        row["loaded_over_best_idle"] = row["loaded"]["median"] / best
    return rows


def markdown(doc):
    lines = report.header_lines(doc, title="rnnc on a busy machine")
    s = doc["settings"]
    lines.append(f"- Load: {s['load']} process(es) running a busy loop during the loaded "
                 f"phases; {s['rounds']} rounds of an idle then a loaded phase; per case and "
                 f"phase at least {s['min_calls']} calls and {s['min_time']:g} s (at most "
                 f"{s['max_time']:g} s) after an untimed call. Threads: rnnc.set_num_threads"
                 f"({', '.join(map(str, s['threads']))}); rnnc's default here: "
                 f"{s['default_threads']}.")
    lines.append(f"- Target: loaded within {TARGET:g}x of idle in median and mean, every case. "
                 "Last column: the loaded median against the best idle median over the thread "
                 "counts run.")
    head = ("| case | threads | idle median | idle mean | loaded median | loaded mean | "
            "loaded p90 | loaded / idle (median) | loaded / idle (mean) | within 2x | "
            "loaded median / best idle median |")
    lines += ["", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    fmt = report.fmt
    for r in doc["rows"]:
        i, ld = r["idle"], r["loaded"]
        lines.append(f"| {r['case']} | {r['threads']} | {fmt(i['median'])} | {fmt(i['mean'])} "
                     f"| {fmt(ld['median'])} | {fmt(ld['mean'])} | {fmt(ld['p90'])} | "
                     f"{r['ratio_median']:.2f} | {r['ratio_mean']:.2f} | "
                     f"{'yes' if r['within_target'] else '**no**'} | "
                     f"{r['loaded_over_best_idle']:.2f} |")
    lines += ["", "Times in ms per call."]
    for t in s["threads"]:
        rows = [r for r in doc["rows"] if str(r["threads"]) == str(t)]
        bad = [r for r in rows if not r["within_target"]]
        worst = max(rows, key=lambda r: r["ratio_mean"])
        lines.append(f"- {t} thread(s): {len(rows) - len(bad)} of {len(rows)} cases within "
                     f"{TARGET:g}x; worst (mean) {worst['case']} {worst['ratio_mean']:.1f}x.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", nargs="+", metavar="N[:B]",
                   help="rnnc thread counts (default: rnnc's default); N:B holds BLAS at B "
                        "threads meanwhile")
    p.add_argument("--load", type=int, default=1, help="spinning processes (default 1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.3, help="s per case and phase")
    p.add_argument("--min-calls", type=int, default=10)
    p.add_argument("--max-time", type=float, default=3.0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--cases", nargs="+", metavar="SUBSTRING",
                   help="only cases whose name contains one of these (case-insensitive)")
    p.add_argument("--products", action="store_true",
                   help="also time single BLAS products sized from the L2 cache")
    p.add_argument("--out", help="output folder (default: benchmarks/results/<CPU slug>/)")
    p.add_argument("--name", default="busy_run")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)

    default_threads = rnnc.get_num_threads()
    threads = args.threads or [str(default_threads)]
    for t in threads:
        parse_threads(t)        # a malformed count fails before anything runs
    work = workloads(args.dtype) + (products(args.dtype) if args.products else [])
    if args.cases:
        work = [(n, f) for n, f in work if any(c.lower() in n.lower() for c in args.cases)]
    started = time.time()
    doc = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": command_line(), "note": args.note, "machine": machine_info(),
           "libraries": library_info(), "load_average_start": list(os.getloadavg()),
           "threads_applied": {},
           "settings": {"threads": threads, "default_threads": default_threads,
                        "load": args.load, "rounds": args.rounds, "min_time": args.min_time,
                        "min_calls": args.min_calls, "max_time": args.max_time,
                        "dtype": args.dtype}}
    try:
        samples = measure(work, threads, args.load, args.rounds, args.min_time, args.min_calls,
                          args.max_time, log=lambda s: print(s, flush=True))
    finally:
        rnnc.set_num_threads(default_threads)
    doc["threads_applied"] = {
        str(t): {"rnnc": parse_threads(t)[0], "BLAS": parse_threads(t)[1] or parse_threads(t)[0]}
        for t in threads}
    doc["rows"] = summarize(samples)
    doc["load_average_end"] = list(os.getloadavg())
    doc["total_seconds"] = time.time() - started
    text = markdown(doc)
    print(text)
    out = Path(args.out) if args.out else report.results_dir(machine.current().slug)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    raw = dict(doc, samples={f"{n} [{t}t]": v for (n, t), v in samples.items()})
    (out / f"{args.name}.json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"wrote {out / (args.name + '.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
