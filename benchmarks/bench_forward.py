"""Forward-inference benchmark: rnnc against the NumPy reference and (when installed) PyTorch.

Each case is checked for agreement before it is timed. Times are medians over repeats, with the
interquartile range; speed is reported as a ratio against the peers measured in the same run.

    python benchmarks/bench_forward.py                  # default grid, 1 thread, float32
    python benchmarks/bench_forward.py --threads 2 --dtype float64 --out bench_results
"""
import argparse
import json
import pathlib
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnnc
from rnnc import reference

try:
    import torch
except ImportError:  # PyTorch is optional: its column is left out
    torch = None

# (mode, B, H, T, extra constructor args); I = H unless "input_size" is given.
GRID = [
    ("LSTM", 1, 32, 1000, {}),
    ("LSTM", 1, 64, 100, {}),
    ("LSTM", 1, 256, 100, {}),
    ("LSTM", 16, 128, 100, {}),
    ("LSTM", 64, 256, 50, {}),
    ("LSTM", 64, 512, 50, {}),
    ("LSTM", 256, 256, 20, {}),
    ("LSTM", 8, 1024, 20, {}),
    ("GRU", 1, 32, 1000, {}),
    ("GRU", 16, 128, 100, {}),
    ("GRU", 8, 1024, 20, {}),
    ("RNN", 1, 64, 100, {}),
    ("RNN", 64, 512, 50, {}),
    ("LSTM", 16, 256, 100, {"num_layers": 2, "bidirectional": True}),
    ("LSTM", 16, 128, 100, {"input_size": 40}),
    ("LSTM", 16, 128, 100, {"proj_size": 64}),
]
QUICK = [GRID[1], GRID[3], GRID[9], GRID[11]]


def timed(fn, repeats, min_time=0.2):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": med * 1e3, "iqr_ms": (q3 - q1) * 1e3, "n": len(times)}


def run_case(mode, B, H, T, extra, dtype, repeats, with_reference):
    kw = dict(extra)
    I = kw.pop("input_size", H)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=0, **kw)
    name = f"{mode} B{B} H{H} T{T}" + "".join(f" {k}={v}" for k, v in extra.items())
    row = {"case": name, "rnnc": timed(lambda: m(x), repeats)}
    out = m(x)[0]
    if with_reference:
        r = getattr(reference, mode)(I, H, dtype=dtype, **kw)
        r.load_state_dict(m.state_dict())
        assert np.allclose(r(x)[0], out, atol=1e-4), f"{name}: rnnc disagrees with reference"
        row["reference"] = timed(lambda: r(x), max(3, repeats // 5), min_time=0.0)
    if torch is not None:
        tdt = torch.float32 if dtype == np.float32 else torch.float64
        tm = getattr(torch.nn, mode)(I, H, dtype=tdt, **kw).eval()
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        tx = torch.from_numpy(x)
        with torch.inference_mode():
            assert np.allclose(tm(tx)[0].numpy(), out, atol=1e-4), f"{name}: torch disagrees"
            row["torch"] = timed(lambda: tm(tx), repeats)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="a small subset of the grid")
    p.add_argument("--no-reference", action="store_true", help="skip the slow NumPy loop")
    p.add_argument("--out", default="bench_results", help="folder for the .md and .json")
    args = p.parse_args(argv)
    dtype = np.dtype(args.dtype)
    if torch is not None:
        torch.set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for case in (QUICK if args.quick else GRID):
            rows.append(run_case(*case, dtype, args.repeats, not args.no_reference))
            print(rows[-1]["case"], {k: round(v["median_ms"], 3) for k, v in rows[-1].items()
                                     if isinstance(v, dict)}, flush=True)
    peers = [k for k in ("torch", "reference") if k in rows[0]]
    head = "| case | rnnc ms | " + " | ".join(f"{k} ms | rnnc / {k}" for k in peers) + " |"
    lines = [f"rnnc {rnnc.__version__}, {args.dtype}, {args.threads} thread(s), "
             f"{platform.machine()}, " + (f"torch {torch.__version__}" if torch else "no torch"),
             "", head, "|" + "---|" * (2 + 2 * len(peers))]
    for r in rows:
        cells = [r["case"], f"{r['rnnc']['median_ms']:.3f} ± {r['rnnc']['iqr_ms']:.3f}"]
        for k in peers:
            cells += [f"{r[k]['median_ms']:.3f}", f"{r['rnnc']['median_ms'] / r[k]['median_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"forward_{args.dtype}_{args.threads}t"
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out / stem}.md and .json")


if __name__ == "__main__":
    main()
