"""rnnc's own kernels at every instruction set this CPU runs (rnnc._engine.machine: avx512,
avx2, baseline), switched in-process with machine.use, and the L2 blocking of the packed
small-batch products (rnnc/_kernels/_small_gemm.h).

- The packed products against NumPy at each level (at the baseline level they do nothing and
  the callers use BLAS), over row counts that are not multiples of the 4-row tiles, column
  counts that are not multiples of the vectors or panels, and k from 1 to 300.
- Their results do not depend on the L2 size the loops are blocked for, nor on the order in
  which `flip` walks the panels, nor on the other rows of the batch: bit for bit.
- The activations and the layers (forward and a training backward) against float64 NumPy and
  rnnc.reference at each level.
"""
import contextlib

import numpy as np
import pytest

import rnnc
from rnnc import reference
from rnnc._engine import machine, plan
from rnnc._kernels._blas import (
    has_small_gemm,
    pack_panels_into,
    panel_width,
    small_gemm_blocking,
    small_gemm_py,
)
from rnnc._kernels._linear_kernel import ACTIVATIONS, activate
from rnnc.reference import backward as refb

ISAS = machine.ISAS[:machine.ISAS.index(machine.current().supported) + 1]
KERNEL_ISAS = [isa for isa in ISAS if isa != "baseline"]
L2_SIZES = [64 << 10, 256 << 10, 1 << 20, 2 << 20, 8 << 20, 64 << 20]
DTYPES = [np.float32, np.float64]
GEMM_TOL = {np.float32: 1e-5, np.float64: 1e-12}


@contextlib.contextmanager
def at(**settings):
    """The kernels at these machine settings, with plans made for them (plans made at another
    setting are dropped on the way in and out)."""
    plan._PLANS.clear()
    try:
        with machine.use(**settings):
            yield
    finally:
        plan._PLANS.clear()


def packed(w):
    W = panel_width(w.dtype)
    out = np.empty((-(-w.shape[0] // W), w.shape[1], W), dtype=w.dtype)
    pack_panels_into(w, out)
    return out


def product(a, wp, n, beta_c=None, bias=None, flip=False):
    """(ran, C) of the packed kernel: a @ w^T (+ beta_c, + bias)."""
    C = np.zeros((a.shape[0], n), a.dtype) if beta_c is None else beta_c.copy()
    ran = small_gemm_py(a, wp, C, beta=beta_c is not None, bias=bias, flip=flip)
    return ran, C


@pytest.mark.parametrize("isa", ISAS)
def test_small_gemm_runs_at_avx2_and_avx512_only(isa):
    with at(isa=isa):
        assert has_small_gemm() == (isa != "baseline")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_packed_product_matches_numpy(isa, dtype, rng):
    with at(isa=isa):
        for K in (1, 2, 7, 64, 129, 300):
            for N in (1, 5, 17, 33, 63, 65, 100, 130):
                w = rng.standard_normal((N, K)).astype(dtype)
                wp = packed(w)
                for M in range(1, 10):
                    a = rng.standard_normal((M, K)).astype(dtype)
                    c0 = rng.standard_normal((M, N)).astype(dtype)
                    exact = a.astype(np.float64) @ w.astype(np.float64).T
                    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64).T
                    for beta in (False, True):
                        ran, C = product(a, wp, N, c0 if beta else None, flip=bool(K % 2))
                        if isa == "baseline":
                            assert not ran
                            np.testing.assert_array_equal(C, c0 if beta else 0)
                            continue
                        assert ran and C.dtype == dtype
                        expected = exact + c0 if beta else exact
                        bound = GEMM_TOL[dtype] * (scale + (np.abs(c0) if beta else 0) + 1e-30)
                        err = np.abs(C - expected)
                        assert np.all(err <= bound), (M, N, K, beta, float((err / bound).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_packing_matches_numpy(isa, dtype, rng):
    # (N, K) with k contiguous (the transposing packers), n contiguous, and a pack large enough
    # for streaming stores (8 MB).
    for N, K in [(1, 1), (7, 9), (64, 16), (65, 33), (130, 300), (2048, 1030)]:
        w = rng.standard_normal((N, K)).astype(dtype)
        W = panel_width(dtype)
        padded = np.zeros((-(-N // W) * W, K), dtype)
        padded[:N] = w
        expected = padded.reshape(-1, W, K).transpose(0, 2, 1)
        for source in (w, np.asfortranarray(w)):
            with at(isa=isa):
                got = packed(source)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_bias_product_is_bias_then_accumulate_bit_for_bit(isa, rng):
    with at(isa=isa):
        for M, N, K in [(1, 70, 33), (3, 64, 9), (6, 129, 100), (9, 17, 1)]:
            a = rng.standard_normal((M, K)).astype(np.float32)
            wp = packed(rng.standard_normal((N, K)).astype(np.float32))
            bias = rng.standard_normal(N).astype(np.float32)
            ran, with_bias = product(a, wp, N, bias=bias)
            assert ran
            _, accumulated = product(a, wp, N, beta_c=np.tile(bias, (M, 1)))
            np.testing.assert_array_equal(with_bias, accumulated)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_a_row_does_not_depend_on_the_other_rows_nor_the_panel_order(isa, dtype, rng):
    # The engine splits the batch into parts starting at multiples of 4 rows (plan.ROW_TILE),
    # so that each part's 4-row tiles are those of the whole batch, and alternates the panel
    # order from step to step: neither may change a bit.
    M, N, K = 11, 200, 150
    a = rng.standard_normal((M, K)).astype(dtype)
    wp = packed(rng.standard_normal((N, K)).astype(dtype))
    with at(isa=isa, l2=64 << 10):       # several blocks of panels
        _, whole = product(a, wp, N)
        for flip in (False, True):
            np.testing.assert_array_equal(product(a, wp, N, flip=flip)[1], whole)
        for start, stop in [(0, 4), (0, 8), (4, 8), (4, M), (8, M)]:
            np.testing.assert_array_equal(product(a[start:stop], wp, N)[1], whole[start:stop])


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocking_follows_the_l2_size(dtype):
    panel_row = panel_width(dtype) * np.dtype(dtype).itemsize     # bytes: 256
    for K in (1, 64, 300, 512, 1024, 4096):
        for l2 in L2_SIZES:
            panels = small_gemm_blocking(dtype, K, l2)
            assert panels >= 1
            if panels > 1:      # a block fits half of the L2 ...
                assert panels * K * panel_row <= l2 // 2
            assert (panels + 1) * K * panel_row > l2 // 2   # ... and holds as many as fit
            doubled = small_gemm_blocking(dtype, K, 2 * l2)
            if panels > 1 or doubled > 1:   # twice the L2: twice the panels (to rounding)
                assert doubled in (2 * panels, 2 * panels + 1)
    with machine.use(l2=3 << 20):
        assert small_gemm_blocking(dtype, 700) == small_gemm_blocking(dtype, 700, 3 << 20)
    with pytest.raises(ValueError):
        small_gemm_blocking(dtype, 0)
    with pytest.raises(TypeError):
        small_gemm_blocking(np.int32, 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_products_do_not_depend_on_the_l2_size(isa, dtype, rng):
    N, K = 1000, 300        # 16 (float32) or 32 (float64) panels of 75 KiB
    w = rng.standard_normal((N, K)).astype(dtype)
    wp = packed(w)
    for M in (1, 5, 9, 17):
        a = rng.standard_normal((M, K)).astype(dtype)
        results = []
        for l2 in L2_SIZES:
            with at(isa=isa, l2=l2):
                for flip in (False, True):
                    results.append(product(a, wp, N, flip=flip)[1])
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_layers_do_not_depend_on_the_l2_size(isa, dtype, rng):
    m = rnnc.LSTM(24, 200, dtype=dtype, seed=2)
    x = rng.standard_normal((7, 9, 24)).astype(dtype)
    outs = []
    for l2 in (64 << 10, 1 << 20, 64 << 20):
        with at(isa=isa, l2=l2):
            outs.append(m(x))
            outs.append(m(x))           # the same bits on repeated calls
    for out in outs[1:]:
        np.testing.assert_array_equal(out[0], outs[0][0])
        np.testing.assert_array_equal(out[1][1], outs[0][1][1])


def test_avx2_cap_runs_other_code(rng):
    # A batch of one: the AVX-512 row kernel sums even and odd k apart, the AVX2 one in a
    # single chain, so their roundings differ somewhere: the cap really changes the code.
    if "avx512" not in ISAS:
        pytest.skip("needs an AVX-512 CPU")
    a = rng.standard_normal((1, 300)).astype(np.float32)
    wp = packed(rng.standard_normal((256, 300)).astype(np.float32))
    with at(isa="avx512"):
        wide = product(a, wp, 256)[1]
    with at(isa="avx2"):
        narrow = product(a, wp, 256)[1]
    assert not np.array_equal(wide, narrow)
    np.testing.assert_allclose(wide, narrow, rtol=1e-4, atol=1e-4)


def _activation_sample(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-s, s, 2000) for s in (1e-6, 1e-3, 0.5, 1, 3, 9, 20, 90)]
                       + [np.array([0.0, -0.0, np.inf, -np.inf, 88.7, -88.7, 103.9, -103.9])])
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("isa", ISAS)
def test_activations_match_float64_numpy(isa, name, dtype):
    x = _activation_sample(dtype)
    with np.errstate(over="ignore"):
        exact = np.tanh(x.astype(np.float64)) if name == "tanh" else \
            1 / (1 + np.exp(-x.astype(np.float64)))
    y = x.reshape(1, -1).copy()     # one row, not a multiple of the vectors
    with at(isa=isa):
        activate(y, ACTIVATIONS[name])
    y = y.ravel()
    tiny = np.finfo(dtype).tiny
    normal = np.abs(exact) >= tiny
    rel = np.abs(y[normal] - exact[normal]) / np.abs(exact[normal])
    assert rel.max() <= (1e-6 if dtype == np.float32 else 1e-15)
    assert np.all(np.abs(y[~normal] - exact[~normal]) <= tiny)
    nan = np.full((1, 3), np.nan, dtype)
    with at(isa=isa):
        activate(nan, ACTIVATIONS[name])
    assert np.isnan(nan).all()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_float64_activations_are_the_same_bits_at_avx2_and_avx512(name):
    # The AVX2 versions build 2^n in two exact factors instead of vscalefpd: the same
    # roundings, including the overflow, underflow and subnormal ranges.
    if "avx512" not in ISAS:
        pytest.skip("needs an AVX-512 CPU")
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-s, s, 1001) for s in (1e-300, 1e-8, 0.3, 5, 50, 400, 760)]
                       + [np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 709.78, -709.78,
                                    745.1, -745.1, -708.39, 5e-324])])
    results = []
    for isa in ("avx512", "avx2"):
        y = x.reshape(1, -1).copy()
        with at(isa=isa):
            activate(y, ACTIVATIONS[name])
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
          ("GRU", {}), ("GRU", {"bidirectional": True}), ("LSTM", {}),
          ("LSTM", {"bidirectional": True, "num_layers": 2}), ("LSTM", {"proj_size": 5})]
LAYER_IDS = ["RNN", "RNN-relu-bi", "GRU", "GRU-bi", "LSTM", "LSTM-bi-2", "LSTM-proj"]
TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-11}}


def _layer_case(mode, kw, dtype, B, H, T, seed):
    rng = np.random.default_rng(seed)
    m = getattr(rnnc, mode)(6, H, dtype=dtype, seed=seed, **kw)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    P = kw.get("proj_size") or H
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    h0 = (0.5 * rng.standard_normal((D * L, B, P))).astype(dtype)
    hx = (h0, (0.5 * rng.standard_normal((D * L, B, H))).astype(dtype)) if mode == "LSTM" \
        else h0
    return m, x, lengths, hx, D * P


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,kw", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_layers_forward_match_reference(isa, mode, kw, dtype):
    for B, H in [(1, 40), (6, 70)]:
        m, x, lengths, hx, _ = _layer_case(mode, kw, dtype, B, H, 12, B + H)
        ref = getattr(reference, mode)(6, H, dtype=dtype, **kw)
        ref.load_state_dict(m.state_dict())
        expected = ref(x, hx, lengths=lengths)
        with at(isa=isa):
            got = m(x, hx, lengths=lengths)
            again = m(x, hx, lengths=lengths)
        for a, e, b in zip([got[0], *_flat(got[1])], [expected[0], *_flat(expected[1])],
                           [again[0], *_flat(again[1])]):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, e, **TOL[dtype])
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,kw", [("RNN", {}), ("GRU", {"bidirectional": True}),
                                     ("LSTM", {"bidirectional": True})],
                         ids=["RNN", "GRU-bi", "LSTM-bi"])
@pytest.mark.parametrize("isa", ISAS)
def test_training_backward_matches_reference(isa, mode, kw, dtype):
    B, H, T = 5, 70, 9
    m, x, lengths, hx, width = _layer_case(mode, kw, dtype, B, H, T, 11)
    rng = np.random.default_rng(3)
    g = rng.standard_normal((T, B, width)).astype(dtype)
    with at(isa=isa):
        m.train()
        m(x, hx, lengths=lengths)
        dx, dhx, grads = m.backward(g)
        m.eval()
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    rdx, rdh0, rdc0, rgrads = refb.run_stack_backward(
        mode, m.state_dict(), x.astype(np.float64), h0.astype(np.float64),
        None if c0 is None else c0.astype(np.float64), lengths, g.astype(np.float64), **kw)
    tol = {"rtol": 2e-4, "atol": 2e-4} if dtype == np.float32 else TOL[dtype]
    np.testing.assert_allclose(dx, rdx, **tol)
    np.testing.assert_allclose(_flat(dhx)[0], rdh0, **tol)
    if mode == "LSTM":
        np.testing.assert_allclose(dhx[1], rdc0, **tol)
    assert set(grads) == set(rgrads)
    for k in grads:
        np.testing.assert_allclose(grads[k], rgrads[k], err_msg=k, **tol)
