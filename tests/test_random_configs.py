"""Randomized comparison with the NumPy reference across the compiled paths.

Each case draws a layer (mode, sizes, layers, direction, options, dtype), a batch (with or
without variable lengths), a thread count, inference or training, and lowers or keeps the
thresholds that choose between the kernels (the 2-thread split, the fused LSTM product, W_ih
read in place), so that small shapes reach every path. The default run checks a fixed sample
in a few seconds; ``-m slow`` runs a longer sweep. (It found a division by zero in the split
kernel at hidden_size 16 once thresholds were forced down.)
"""
import numpy as np
import pytest

import rnnc
from rnnc import _split_train, _stack, reference


def _flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _case(rng, monkeypatch):
    mode = str(rng.choice(["RNN", "GRU", "LSTM"]))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    H, I = int(rng.integers(1, 140)), int(rng.integers(1, 100))
    B, T = int(rng.integers(1, 70)), int(rng.integers(1, 10))
    kw = dict(num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.integers(2)))
    if mode == "LSTM" and H > 1 and rng.random() < 0.2:
        kw["proj_size"] = int(rng.integers(1, H))
    if mode == "GRU" and rng.random() < 0.2:
        kw["reset_after"] = False
    if mode == "RNN" and rng.random() < 0.3:
        kw["nonlinearity"] = "relu"
    if rng.random() < 0.2:
        kw["bias"] = False
    threads = int(rng.integers(1, 3))
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: threads)
    monkeypatch.setattr(_split_train, "cached_num_threads", lambda: threads)
    monkeypatch.setattr(_stack, "SPLIT_MIN_STEP_WORK", int(rng.choice([0, 3 << 16])))
    monkeypatch.setattr(_stack, "SPLIT_MIN_TOTAL_WORK", int(rng.choice([0, 1 << 21])))
    monkeypatch.setattr(_stack, "SPLIT_MIN_HIDDEN", int(rng.choice([1, 32, 128])))
    monkeypatch.setattr(_stack, "FUSED_MIN_BATCH", int(rng.choice([1, 4, 1 << 30])))
    monkeypatch.setattr(_stack, "SPLIT_IN_PLACE_MIN_BYTES", int(rng.choice([0, 2 << 20])))
    seed = int(rng.integers(1 << 30))
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=seed, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if rng.random() < 0.4 else None
    return m, ref, x, lengths, kw, dtype, rng.random() < 0.3


def _check(rng, monkeypatch):
    m, ref, x, lengths, kw, dtype, train = _case(rng, monkeypatch)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    if train:
        m.train()
        ref.train()
    for a, e in zip(_flat(m(x, lengths=lengths)), _flat(ref(x, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    if train:
        P = kw.get("proj_size") or m.hidden_size
        D = 2 if kw["bidirectional"] else 1
        g = rng.standard_normal((x.shape[0], x.shape[1], D * P)).astype(dtype)
        dx, _, grads = m.backward(g)
        dx_ref, _, grads_ref = ref.backward(g)
        np.testing.assert_allclose(dx, dx_ref, rtol=10 * tol, atol=10 * tol)
        for k in grads_ref:
            np.testing.assert_allclose(grads[k], grads_ref[k], rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("seed", range(200))
def test_random_config_matches_reference(monkeypatch, seed):
    _check(np.random.default_rng(seed), monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1000, 3000))
def test_random_config_sweep(monkeypatch, seed):
    _check(np.random.default_rng(seed), monkeypatch)
