"""The packed small-batch kernels (rnnc/_kernels/_small_gemm.h) at each instruction set, with
and without the L2 blocking of their loops: one LSTM layer (I = H, T = 50 steps, inference) on
one thread, float32 and float64.

    PYTHONPATH=. python -P benchmarks/isa_kernels.py \
        --out benchmarks/results/<cpu-slug>/isa_kernels.json
    python benchmarks/isa_kernels.py --tables benchmarks/results/<cpu-slug>/isa_kernels.json

Variants, all in one process and interleaved (each round times every variant of a shape once,
in a rotating order; the table gives the median over rounds), switched by
rnnc._engine.machine.use:
  <isa> blocked    the kernels as built, blocks of panels sized from the machine's L2;
  <isa> unblocked  the loop order before the blocking: float32 row tiles outer over all the
                   panels (an L2 of 2^40 bytes makes one block), float64 panels outer (an L2
                   of 1 byte makes blocks of one panel);
  baseline         no kernel of rnnc's own: BLAS (and the portable activation loops).
OpenBLAS picks its own kernels by CPU, whatever RNNC_MAX_CPU_ISA says: OPENBLAS_CORETYPE=Haswell
in the environment gives the BLAS an AVX2-only CPU would run.
"""
import argparse
import json
import time

import numpy as np

import rnnc
from rnnc._engine import machine, plan

T = 50
UNBLOCKED_L2 = {"float32": 1 << 40, "float64": 1}


def variants(dtype):
    supported = machine.ISAS.index(machine.current().supported)
    out = []
    for isa in ("avx512", "avx2"):
        if machine.ISAS.index(isa) <= supported:
            out += [(f"{isa} blocked", {"isa": isa}),
                    (f"{isa} unblocked", {"isa": isa, "l2": UNBLOCKED_L2[dtype]})]
    return out + [("baseline", {"isa": "baseline"})]


def time_call(m, x, budget, warm):
    """Seconds per call: as many calls as fill `budget` seconds (at least 1), after one warm-up
    call when `warm`."""
    if warm:
        m(x)
    n, start = 0, time.perf_counter()
    while True:
        m(x)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / n


def tables(path):
    """Markdown tables of a results file: ms and GFLOP/s per variant, and float32 / float64."""
    with open(path) as f:
        data = json.load(f)
    rows = data["rows"]
    names = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["dtype"], r["H"], r["B"], r["variant"]): r for r in rows}
    shapes = list(dict.fromkeys((r["H"], r["B"]) for r in rows))
    lines = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        lines += [f"### {dtype}: ms per layer call (GFLOP/s)", "",
                  "| H | B | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for H, B in shapes:
            cells = [f"{by[dtype, H, B, n]['ms']:.4g} ({by[dtype, H, B, n]['gflops']:.3g})"
                     if (dtype, H, B, n) in by else "" for n in names]
            lines.append(f"| {H} | {B} | " + " | ".join(cells) + " |")
        lines.append("")
    if {"float32", "float64"} <= {r["dtype"] for r in rows}:
        kept = [n for n in names if "unblocked" not in n]
        lines += ["### float32 time / float64 time (< 1: float32 faster)", "",
                  "| H | B | " + " | ".join(kept) + " |", "|---|---|" + "---|" * len(kept)]
        for H, B in shapes:
            cells = [f"{by['float32', H, B, n]['ms'] / by['float64', H, B, n]['ms']:.2f}"
                     for n in kept]
            lines.append(f"| {H} | {B} | " + " | ".join(cells) + " |")
        lines.append("")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--hidden", default="128,256,512,1024")
    p.add_argument("--batch", default="1,16,64,256")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=float, default=0.05, help="seconds of calls per timing")
    p.add_argument("--variants", help="comma-separated variant names to run (default: all)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--tables", metavar="JSON", help="print the tables of a results file, only")
    args = p.parse_args(argv)
    if args.tables:
        return tables(args.tables)
    rnnc.set_num_threads(1)
    m0 = machine.current()
    print(f"# {m0.model}: {m0.supported}, L1d {m0.l1d >> 10} KiB, L2 {m0.l2 >> 10} KiB, "
          f"L3 {m0.l3 >> 20} MiB ({m0.source}); T={T}, 1 thread, median of {args.rounds} rounds",
          flush=True)
    rows = []
    for dtype in args.dtypes.split(","):
        for H in map(int, args.hidden.split(",")):
            for B in map(int, args.batch.split(",")):
                rng = np.random.default_rng(H + B)
                m = rnnc.LSTM(H, H, dtype=dtype, seed=H)
                x = rng.standard_normal((T, B, H)).astype(dtype)
                vs = [v for v in variants(dtype)
                      if not args.variants or v[0] in args.variants.split(",")]
                times = {name: [] for name, _ in vs}
                flops = 2.0 * T * B * 4 * H * (H + H)
                for r in range(args.rounds):
                    for name, kw in vs[r % len(vs):] + vs[:r % len(vs)]:
                        with machine.use(**kw):
                            plan._PLANS.clear()     # plans made at another setting
                            times[name].append(time_call(m, x, args.budget, warm=r == 0))
                plan._PLANS.clear()
                for name, _ in vs:
                    t = float(np.median(times[name]))
                    rows.append({"dtype": dtype, "H": H, "B": B, "variant": name, "ms": t * 1e3,
                                     "gflops": flops / t / 1e9, "spread": float(
                                         (max(times[name]) - min(times[name])) / t)})
                print(f"{dtype} H{H} B{B}: " + ", ".join(
                    f"{r['variant']} {r['ms']:.2f} ms" for r in rows[-len(vs):]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": m0.model, "l1d": m0.l1d, "l2": m0.l2, "l3": m0.l3, "T": T,
                           "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
