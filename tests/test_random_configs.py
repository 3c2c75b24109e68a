"""Randomized comparison with the NumPy reference across the compiled paths.

Each case draws a layer (mode, sizes, layers, direction, options, dtype), a batch (with or
without variable lengths), a thread count, inference or training, and forces some of the
plan's decisions (rnnc/_engine/plan.py: the strategy, the directions run concurrently or not,
the packed kernel on or off, the split parts' products, W_ih read in place) through
conftest.force_plan, so that small shapes reach every path. The default run checks a fixed
sample in a few seconds; ``-m slow`` runs a longer sweep. (It found a division by zero in the
split kernel at hidden_size 16 once thresholds were forced down.)
"""
import numpy as np
import pytest

import rnnc
from rnnc import reference
from rnnc._engine.kernels import K

STRATEGIES = ["kernel", "fused", "units", "rows", "pipelined"]


def _flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _case(rng, force_plan):
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
    train = rng.random() < 0.3
    if train and kw.get("nonlinearity") == "relu":
        # A relu pre-activation within float32's rounding of 0 (seed 2192: 3e-8) takes the
        # other side in one of the two sums, and its gradient with it.
        dtype = np.float64
    decisions = dict(threads=int(rng.integers(1, 3)))
    if rng.random() < 0.7:      # where the layer cannot run it, it keeps its own
        decisions["strategy"] = str(rng.choice(STRATEGIES))
    if kw["bidirectional"] and rng.random() < 0.3:
        decisions["directions_concurrent"] = bool(rng.integers(2))
    if rng.random() < 0.2:
        decisions["small_gemm"] = decisions["parts_small_gemm"] = False
    elif K.has_small_gemm() and rng.random() < 0.2:
        decisions["small_gemm"] = decisions["parts_small_gemm"] = True
    if rng.random() < 0.3:
        decisions["units_big_ih"] = bool(rng.integers(2))
    if rng.random() < 0.3:
        decisions["units_fused"] = False
    force_plan(**decisions)
    seed = int(rng.integers(1 << 30))
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=seed, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if rng.random() < 0.4 else None
    return m, ref, x, lengths, kw, dtype, train


def _check(rng, force_plan):
    m, ref, x, lengths, kw, dtype, train = _case(rng, force_plan)
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
def test_random_config_matches_reference(force_plan, seed):
    _check(np.random.default_rng(seed), force_plan)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1000, 3000))
def test_random_config_sweep(force_plan, seed):
    _check(np.random.default_rng(seed), force_plan)
