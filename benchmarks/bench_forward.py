"""Forward-inference benchmark (kept for compatibility): the forward cases of the suite.

A thin wrapper around the suite, rnnc/bench/suite.py (see benchmarks/suite.py --help for
everything it can do):

    python benchmarks/bench_forward.py                  # forward grid, 1 thread, float32
    python benchmarks/bench_forward.py --threads 2 --dtype float64   # to benchmarks/results/<cpu>/
"""
import argparse
import sys

from rnnc.bench import suite


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, help="minimum timed calls per backend and case")
    p.add_argument("--quick", action="store_true", help="a small subset of the grid")
    p.add_argument("--no-reference", action="store_true", help="skip the slow NumPy loop")
    p.add_argument("--out", help="folder for the .md, .json, .png (default: the suite's, "
                                 "benchmarks/results/<CPU slug>/)")
    args = p.parse_args(argv)
    forwarded = ["--kinds", "forward", "--threads", str(args.threads), "--dtype", args.dtype,
                 "--name", f"forward_{args.dtype}_{args.threads}t"]
    if args.out:
        forwarded += ["--out", args.out]
    if args.repeats:
        forwarded += ["--min-repeats", str(args.repeats)]
    if args.quick:
        forwarded.append("--quick")
    if args.no_reference:
        forwarded += ["--backends"] + [b for b in suite.peers.installed() if b != "reference"]
    return suite.main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
