"""Time the float32 suite grid with whichever rnnc is imported, for comparing two builds side
by side (the suite itself compares rnnc with its peers): forward (and frozen), variable
lengths, a stream step, a training step; the median over >= 0.4 s of calls per case, as JSON.

    python -P benchmarks/compare_builds.py THREADS > new.json
    PYTHONPATH=/path/to/old/checkout python -P benchmarks/compare_builds.py THREADS > old.json

Alternate the builds over a few rounds (benchmarks/results/amd-epyc/engine_ab_amd-epyc.md shows
how) and compare the best of the rounds; results go to benchmarks/results/<cpu-slug>/, the folder
of the CPU they were measured on (rnnc._engine.machine.current().slug).
"""
import json
import sys
import time

import numpy as np
import rnnc

SHAPES = [(1, 32, 1000), (1, 64, 100), (1, 256, 100), (16, 128, 100), (64, 256, 50),
          (64, 512, 50), (256, 256, 20), (8, 1024, 20)]
CASES = [("forward", m, B, H, T, {}) for m in ("RNN", "GRU", "LSTM") for B, H, T in SHAPES]
CASES += [("forward", "LSTM", 16, 256, 100, dict(num_layers=2, bidirectional=True)),
          ("forward", "LSTM", 16, 128, 100, dict(I=40)),
          ("forward", "LSTM", 16, 256, 100, dict(proj_size=128)),
          ("varlen", "LSTM", 64, 256, 50, {}), ("varlen", "GRU", 64, 256, 50, {}),
          ("stream", "LSTM", 1, 128, 100, {}),
          ("train", "LSTM", 16, 128, 100, {}), ("train", "LSTM", 64, 256, 50, {})]


def timeit(fn, budget=0.4, min_reps=5):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < budget:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) > 2000:
            break
    return float(np.median(times))


def main():
    threads = int(sys.argv[1])
    rnnc.set_num_threads(threads)
    out = {}
    rng = np.random.default_rng(0)
    for kind, mode, B, H, T, kw in CASES:
        kw = dict(kw)
        I = kw.pop("I", H)
        m = getattr(rnnc, mode)(I, H, seed=0, **kw)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        name = f"{kind} {mode} B{B} H{H} T{T} {kw}"
        if kind == "forward":
            out[name] = timeit(lambda: m(x))
            m.freeze()
            out[name + " frozen"] = timeit(lambda: m(x))
        elif kind == "varlen":
            n = rng.integers(1, T + 1, size=B)
            n[0] = T
            out[name] = timeit(lambda: m(x, lengths=n))
        elif kind == "stream":
            s = m.stream(batch_size=1)
            xs = x[:, 0].copy()
            def run():
                for t in range(T):
                    s.step(xs[t:t + 1])
            out[name] = timeit(run) / T
        else:
            m.train()
            g = np.ones((T, B, H), np.float32)
            def step():
                o, _ = m(x)
                m.backward(g)
            out[name] = timeit(step)
    json.dump(out, sys.stdout)


main()
