"""Which plans RNNC_TUNE=1 picks for the suite's forward grid, against the rules' (RNNC_TUNE=0).

    python -P benchmarks/tune_choices.py --threads 2 --dtype float32 --passes 3

Each pass measures in a fresh process with an empty choice cache; the cases where a pass
picked another plan than the rules are printed as (strategy, packed kernel, directions
concurrent) per layer. Whether a pick is right needs the suite's timings of both plans.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = """
import json, sys
import numpy as np
import rnnc
from rnnc.bench.cases import GRID
from rnnc._engine import plan
rnnc.set_num_threads(int(sys.argv[1]))
dtype = sys.argv[2]
out = {}
for c in GRID:
    if c.kind != "forward":
        continue
    for frozen in (False, True):
        m = getattr(rnnc, c.mode)(c.input_size, c.H, dtype=dtype, seed=0, **c.layer)
        if frozen:
            m.freeze()
        m(np.random.default_rng(0).standard_normal((c.T, c.B, c.input_size)).astype(dtype))
        out[c.name + (" frozen" if frozen else "")] = [
            (p.strategy, p.small_gemm, p.directions_concurrent) for p in plan._PLANS.values()]
        plan._PLANS.clear()
print(json.dumps(out))
"""


def choices(threads, dtype, tune, cache):
    env = dict(os.environ, RNNC_TUNE=tune, RNNC_TUNE_CACHE=cache)
    run = subprocess.run([sys.executable, "-P", "-c", _CHILD, str(threads), dtype], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args(argv)
    rules = choices(args.threads, args.dtype, "0", "0")
    passes = []
    for _ in range(args.passes):
        with tempfile.TemporaryDirectory() as cache:
            passes.append(choices(args.threads, args.dtype, "1", cache))
    differ = 0
    for case, plan in rules.items():
        picked = [p[case] for p in passes]
        if any(p != plan for p in picked):
            differ += 1
            print(f"{case}: rules {plan}; measured {picked}")
    print(f"{differ} of {len(rules)} cases: a pass picked another plan than the rules")


if __name__ == "__main__":
    main()
