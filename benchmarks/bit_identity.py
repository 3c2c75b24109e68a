"""Bit identity across builds: run a grid of configurations through the public API and save
every output to an npz file, or compare two such files.

The grid (RNN/GRU/LSTM, bidirectional, 2 layers, projection, GRU reset_before, relu; float32
and float64; 1 and 2 threads; full and variable lengths; frozen; training forward and backward
with every gradient; streams) takes every strategy of rnnc/_engine/plan.py naturally. For a
change that must not change results (a refactor of the engine), save the outputs of both
builds and compare:

    PYTHONPATH=/path/to/old/checkout python -P benchmarks/bit_identity.py old.npz
    python -P benchmarks/bit_identity.py new.npz
    python -P benchmarks/bit_identity.py --compare old.npz new.npz

(an in-place build of the old checkout: `python setup.py build_ext --inplace` there).
"""
import sys
import numpy as np
import rnnc

CASES = [
    # (mode, I, H, B, T, kwargs)
    ("LSTM", 128, 128, 16, 100, {}), ("GRU", 128, 128, 16, 100, {}), ("RNN", 128, 128, 16, 100, {}),
    ("GRU", 256, 256, 1, 100, {}), ("LSTM", 256, 256, 4, 50, {}), ("RNN", 256, 256, 4, 50, {}),
    ("LSTM", 128, 128, 2, 100, {}), ("GRU", 64, 64, 1, 100, {}), ("RNN", 64, 64, 1, 100, {}),
    ("LSTM", 32, 256, 16, 20, dict(bidirectional=True)),
    ("LSTM", 64, 256, 64, 20, dict(bidirectional=True, num_layers=2)),
    ("GRU", 64, 128, 16, 50, dict(reset_after=False)),
    ("LSTM", 64, 128, 8, 50, dict(proj_size=64)),
    ("GRU", 1024, 1024, 8, 20, {}), ("LSTM", 1024, 1024, 8, 20, {}),
    ("LSTM", 64, 64, 4, 30, {}), ("GRU", 32, 64, 33, 30, dict(num_layers=2)),
    ("RNN", 16, 48, 3, 40, dict(nonlinearity="relu")),
    ("LSTM", 100, 128, 12, 60, {}),
]
TRAIN = [
    ("LSTM", 128, 128, 16, 100, {}), ("LSTM", 256, 256, 8, 50, {}), ("LSTM", 256, 256, 4, 100, {}),
    ("GRU", 128, 128, 16, 50, {}), ("RNN", 64, 64, 8, 50, {}), ("LSTM", 64, 64, 4, 40, {}),
    ("LSTM", 32, 256, 16, 20, dict(bidirectional=True)),
    ("LSTM", 64, 128, 8, 30, dict(proj_size=32)),
    ("GRU", 64, 64, 3, 30, dict(num_layers=2, bidirectional=True, reset_after=False)),
]
STREAMS = [("LSTM", 128, 128, 1), ("GRU", 128, 256, 1), ("LSTM", 64, 64, 3), ("RNN", 64, 128, 2)]


def lengths_for(B, T, rng):
    n = rng.integers(1, T + 1, size=B)
    n[0] = T
    return n


def main(out):
    res = {}
    for threads in (1, 2):
        rnnc.set_num_threads(threads)
        for dtype in (np.float32, np.float64):
            for i, (mode, I, H, B, T, kw) in enumerate(CASES):
                rng = np.random.default_rng(i)
                m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=i, **kw)
                x = rng.standard_normal((T, B, I)).astype(dtype)
                for tag, lengths in (("full", None), ("var", lengths_for(B, T, rng))):
                    key = f"{threads}/{np.dtype(dtype).name}/{i}/{tag}"
                    o, st = m(x, lengths=lengths)
                    res[key + "/out"] = o
                    for j, s in enumerate(st if isinstance(st, tuple) else (st,)):
                        res[key + f"/st{j}"] = s
                m.freeze()
                for rep in range(2):
                    o, st = m(x)
                    res[f"{threads}/{np.dtype(dtype).name}/{i}/frozen{rep}/out"] = o
                m.unfreeze()
            for i, (mode, I, H, B, T, kw) in enumerate(TRAIN):
                rng = np.random.default_rng(100 + i)
                m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=i, **kw).train()
                x = rng.standard_normal((T, B, I)).astype(dtype)
                for tag, lengths in (("full", None), ("var", lengths_for(B, T, rng))):
                    key = f"{threads}/{np.dtype(dtype).name}/train{i}/{tag}"
                    o, st = m(x, lengths=lengths)
                    g = rng.standard_normal(o.shape).astype(dtype)
                    gh = (tuple(rng.standard_normal(s.shape).astype(dtype) for s in st)
                          if isinstance(st, tuple) else rng.standard_normal(st.shape).astype(dtype))
                    dx, dhx, grads = m.backward(g, gh)
                    res[key + "/out"] = o
                    res[key + "/dx"] = dx
                    for j, s in enumerate(dhx if isinstance(dhx, tuple) else (dhx,)):
                        res[key + f"/dh{j}"] = s
                    for name, v in grads.items():
                        res[key + "/g/" + name] = v
        for i, (mode, I, H, B) in enumerate(STREAMS):
            rng = np.random.default_rng(200 + i)
            m = getattr(rnnc, mode)(I, H, seed=i)
            s = m.stream(batch_size=B)
            ys = [s.step(rng.standard_normal((B, I)).astype(np.float32)) for _ in range(20)]
            res[f"{threads}/stream{i}"] = np.stack(ys)
    np.savez(out, **res)
    print(len(res), "arrays")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    if set(a.files) != set(b.files):
        print("different sets of arrays:", sorted(set(a.files) ^ set(b.files))[:10])
        return 1
    bad = [k for k in a.files if not np.array_equal(a[k], b[k], equal_nan=True)]
    print(f"{len(a.files)} arrays compared, {len(bad)} differ", *bad[:20], sep="\n  ")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    main(sys.argv[1])
