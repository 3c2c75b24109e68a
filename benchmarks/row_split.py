"""The row split of layers without a fused row kernel (a projected LSTM, GRU in the original
form; in training GRU and RNN too): the same layer at 1 thread, at 2 threads on the one-thread
kernel with BLAS's threads (the plan before the split existed), and at 2 threads by the rules
(the row split where they choose it). Median of repeated calls, float32, seeded data.

    python benchmarks/row_split.py            # writes benchmarks/results/<cpu slug>/row_split.md
    python benchmarks/row_split.py --repeats 5 --out /tmp/bench
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import rnnc
from rnnc._engine import machine
from rnnc._engine import plan as plans
from rnnc.bench import report

# (cell, constructor options, input, hidden, batch, steps, training)
CASES = [
    ("LSTM", dict(proj_size=128), 256, 256, 16, 100, False),
    ("LSTM", dict(proj_size=128), 512, 512, 64, 50, False),
    ("LSTM", dict(proj_size=64), 128, 128, 300, 20, False),
    ("GRU", dict(reset_after=False), 128, 128, 16, 100, False),
    ("GRU", dict(reset_after=False), 256, 256, 64, 50, False),
    ("GRU", {}, 128, 128, 16, 100, True),
    ("GRU", {}, 256, 256, 64, 50, True),
    ("RNN", {}, 256, 256, 64, 50, True),
    ("RNN", {}, 512, 512, 16, 100, True),
    ("LSTM", dict(proj_size=128), 256, 256, 16, 100, True),
]


def timed(call, repeats):
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def run_case(mode, options, I, H, B, T, training, repeats):  # noqa: E741 - input features
    m = getattr(rnnc, mode)(I, H, seed=0, **options)
    m.train(training)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    g = np.ones((T, B, options.get("proj_size") or H), np.float32)

    def call():
        m(x)
        if training:
            m.backward(g)

    found = rnnc.get_num_threads()
    try:
        rnnc.set_num_threads(1)
        plans._PLANS.clear()
        one = timed(call, repeats)
        rnnc.set_num_threads(2)
        plans._PLANS.clear()
        plans._forced = (("strategy", plans.KERNEL),)
        kernel = timed(call, repeats)
        plans._forced = ()
        plans._PLANS.clear()
        rules = timed(call, repeats)
        chosen = plans.make_plan(mode, I, H, options.get("proj_size", 0),
                                 options.get("reset_after", True), False, B, T, np.float32,
                                 training, False).strategy
    finally:
        plans._forced = ()
        plans._PLANS.clear()
        rnnc.set_num_threads(found)
    return one, kernel, rules, chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", help="folder for row_split.md (default benchmarks/results/<cpu>/)")
    args = p.parse_args(argv)
    m = machine.current()
    load_start = os.getloadavg()
    rows = []
    for mode, options, I, H, B, T, training in CASES:  # noqa: E741
        one, kernel, rules, chosen = run_case(mode, options, I, H, B, T, training, args.repeats)
        name = (f"{mode} {' '.join(f'{k}={v}' for k, v in options.items())} I{I} H{H} B{B} "
                f"T{T} {'training' if training else 'inference'}").replace("  ", " ")
        rows.append(f"| {name} | {one:.2f} | {kernel:.2f} | {rules:.2f} ({chosen}) | "
                    f"{one / rules:.2f}x | {kernel / rules:.2f}x |")
        print(rows[-1], file=sys.stderr)
    lines = [f"# Row split of layers without a fused row kernel: {m.model}", "",
             f"- CPU: lscpu model name \"{m.model}\", ISA {m.isa}, L2 {m.l2 >> 10} KiB, "
             f"L3 {m.l3 >> 20} MiB; load average {', '.join(f'{v:.2f}' for v in load_start)}"
             f" at start, {', '.join(f'{v:.2f}' for v in os.getloadavg())} at end.",
             f"- rnnc {rnnc.__version__}, NumPy {np.__version__}; float32; median of "
             f"{args.repeats} calls (forward, and backward in training).",
             "- Command: `python benchmarks/row_split.py"
             + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)) + "`.", "",
             "| layer | 1 thread ms | 2 threads, one-thread kernel + BLAS ms | 2 threads, "
             "rules ms (strategy) | scaling 1 -> 2 | rules vs kernel + BLAS |",
             "|---|---:|---:|---:|---:|---:|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else report.results_dir(m.slug)
    out.mkdir(parents=True, exist_ok=True)
    (out / "row_split.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
