"""The packed small-batch recurrent kernels (rnnc/_kernels/_small_gemm.h) against BLAS and the
reference.

Layers use them where the CPU has AVX-512 (float32: panels of 64 columns, float64: 32) and the
plan says so (rnnc/_engine/plan.py, small_gemm; which layers: tests/test_plan.py); forcing
them off (conftest.force_plan) must give the same results to the dtype's rounding. Shapes
cover column counts that are not multiples of the panels and row counts that are not multiples
of the 4-row tiles. The float64 tests check that the kernel really ran (the packed weights they
saw), forward and backward, one thread and the 2-thread split.
"""
import numpy as np
import pytest

import rnnc
from rnnc import reference
from rnnc._engine import workspace
from rnnc._engine.runners import kernel, rows, units
from rnnc._engine.workspace import pack_panels
from rnnc._kernels._blas import has_small_gemm, pack_panels_into, panel_width, recurrent_gemm_py
from rnnc.reference import backward as refb

# Every product on BLAS: what a CPU without AVX-512 runs.
BLAS_ONLY = dict(small_gemm=False, parts_small_gemm=False)

needs_kernel = pytest.mark.skipif(not has_small_gemm(), reason="no AVX-512: BLAS only")


def run(mode, B, H, T, lengths=None, **kw):
    rng = np.random.default_rng(B * 1000 + H)
    m = getattr(rnnc, mode)(5, H, dtype=np.float32, seed=H, **kw)
    x = rng.standard_normal((T, B, 5)).astype(np.float32)
    return m, x, m(x, lengths=lengths)


def flat(result):
    out, state = result
    states = state if isinstance(state, tuple) else (state,)
    return [out, *states]


@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                     ("RNN", {}), ("LSTM", {"bidirectional": True})])
@pytest.mark.parametrize("B,H", [(1, 1), (1, 33), (2, 1), (3, 7), (4, 16), (5, 63), (17, 65),
                                 (2, 130)])
def test_small_kernel_matches_blas_and_reference(force_plan, mode, kw, B, H):
    if kw.get("proj_size", 0) >= H:
        pytest.skip("proj_size must be < hidden_size")
    T = 6
    lengths = np.arange(B) % T + 1
    m, x, fast = run(mode, B, H, T, lengths, **kw)
    force_plan(**BLAS_ONLY)
    blas = m(x, lengths=lengths)
    ref = getattr(reference, mode)(5, H, dtype=np.float32, **kw)
    ref.load_state_dict(m.state_dict())
    expected = ref(x, lengths=lengths)
    for a, b, r in zip(flat(fast), flat(blas), flat(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def test_in_place_weight_updates_are_seen():
    # The kernel's packed weights are made per call, never cached across calls.
    m, x, first = run("LSTM", 3, 16, 8)
    m.weight_hh_l0 *= 0.5
    second = m(x)
    ref = reference.LSTM(5, 16, dtype=np.float32)
    ref.load_state_dict(m.state_dict())
    np.testing.assert_allclose(second[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(first[0], second[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("B,H", [(1, 9), (3, 7), (5, 65), (16, 40)])
def test_backward_small_kernel_matches_blas(force_plan, mode, B, H):
    rng = np.random.default_rng(7)
    m = getattr(rnnc, mode)(5, H, num_layers=2, bidirectional=True, dtype=np.float32, seed=1)
    x = rng.standard_normal((6, B, 5)).astype(np.float32)
    lengths = np.arange(B) % 6 + 1
    g = rng.standard_normal((6, B, 2 * H)).astype(np.float32)

    def grads():
        m.train()
        m(x, lengths=lengths)
        dx, _, gr = m.backward(g)
        m.eval()
        return dx, gr

    dx_fast, g_fast = grads()
    force_plan(**BLAS_ONLY)
    dx_blas, g_blas = grads()
    np.testing.assert_allclose(dx_fast, dx_blas, rtol=1e-4, atol=1e-5)
    for k in g_fast:
        np.testing.assert_allclose(g_fast[k], g_blas[k], rtol=1e-4, atol=1e-4)


def _panels_numpy(w):
    width = {np.float32: 64, np.float64: 32}[w.dtype.type]
    n, k = w.shape
    n_panels = -(-n // width)
    padded = np.zeros((n_panels * width, k), dtype=w.dtype)
    padded[:n] = w
    return padded.reshape(n_panels, width, k).transpose(0, 2, 1)


def test_panel_width():
    assert panel_width(np.float32) == 64
    assert panel_width(np.dtype(np.float64)) == 32
    with pytest.raises(TypeError, match="float32 or float64"):
        panel_width(np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,K", [(1, 1), (8, 8), (16, 16), (17, 33), (31, 9), (32, 7), (33, 1),
                                 (64, 16), (100, 70), (130, 17), (200, 1), (512, 128)])
def test_pack_panels_matches_numpy(dtype, N, K):
    # Both the transposing case (forward: W_hh, k contiguous; AVX-512 16 x 16 float32 or
    # masked 8 x 8 float64 blocks plus edges) and the copying case (backward: W_hh^T), plus
    # strided views (the portable packer) and a reversed one (negative strides).
    w = np.random.default_rng(N * K).standard_normal((N, K)).astype(dtype)
    for view in (w, np.ascontiguousarray(w.T).T, w[:, ::2], w.T, w[::-1], w[:, ::-1]):
        packed = pack_panels(view)
        assert packed.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(packed, _panels_numpy(view))


@pytest.mark.parametrize("dtype,transposed", [(np.float64, False), (np.float64, True),
                                              (np.float32, False)])
def test_pack_panels_large(dtype, transposed):
    # Past RNNC_DPACK_STREAM_BYTES / RNNC_PACK_STREAM_BYTES (8 MB) the packers write with
    # streaming stores when their output is 64-byte aligned, as pack_panels makes it; a
    # misaligned output (here one element into a buffer) takes plain stores. Both must give the
    # same panels, edges (N, K not multiples of 16) included.
    rng = np.random.default_rng(5)
    shape = (1000, 1100) if dtype == np.float64 else (2001, 1103)
    w = rng.standard_normal(shape[::-1] if transposed else shape).astype(dtype)
    view = w.T if transposed else w
    expected = _panels_numpy(view)
    assert expected.nbytes >= 8 << 20
    packed = pack_panels(view, "test large")
    assert packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed, expected)
    buf = np.full(expected.size + 16, np.nan, dtype=dtype)
    start = 1 if buf.ctypes.data % 64 == 0 else 0
    out = buf[start:start + expected.size].reshape(expected.shape)
    assert out.ctypes.data % 64 != 0
    pack_panels_into(view, out)
    np.testing.assert_array_equal(out, expected)


def test_pack_panels_into_checks_out():
    with pytest.raises(ValueError, match=r"expected \(1, 4, 32\)"):
        pack_panels_into(np.zeros((3, 4)), np.zeros((1, 4, 64)))
    with pytest.raises(ValueError, match="dtype mismatch"):
        pack_panels_into(np.zeros((3, 4), np.float32), np.zeros((1, 4, 32)))


# ----------------------------------------------------------------------------------------------
# float64
# ----------------------------------------------------------------------------------------------
F64_TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 64, 70])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 3), (31, 17), (32, 32), (33, 65), (100, 128),
                                 (130, 1)])
def test_recurrent_gemm_matches_blas_and_numpy(dtype, M, N, K):
    # The kernel itself: every row-tile size (4, 3, 2 and the batch-1 row kernel with an odd K),
    # partial panels, beta 0 (C holding NaN must not leak) and 1.
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    h = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    tol = F64_TOL if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    packed = pack_panels(w)
    for beta in (False, True):
        expected = h.astype(np.float64) @ w.astype(np.float64).T + (c0 if beta else 0)
        got = {}
        for name, wp in (("kernel", packed), ("blas", np.empty((0, 0, 0), dtype=dtype))):
            c = c0.copy() if beta else np.full((M, N), np.nan, dtype=dtype)
            recurrent_gemm_py(h, w, wp, c, beta)
            np.testing.assert_allclose(c, expected, err_msg=name, **tol)
            got[name] = c
        np.testing.assert_allclose(got["kernel"], got["blas"], **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recurrent_gemm_reads_the_panels(dtype):
    # Given panels of 2 w, the kernel computes with them and BLAS (without AVX-512) with w:
    # shows which of the two ran.
    rng = np.random.default_rng(1)
    h = rng.standard_normal((5, 40)).astype(dtype)
    w = rng.standard_normal((70, 40)).astype(dtype)
    c = np.empty((5, 70), dtype=dtype)
    recurrent_gemm_py(h, w, pack_panels(2 * w), c)
    scale = 2 if has_small_gemm() else 1
    np.testing.assert_allclose(c, scale * (h.astype(np.float64) @ w.astype(np.float64).T),
                               rtol=1e-5, atol=1e-4)


def test_recurrent_gemm_py_checks_shapes():
    h, w, c = np.zeros((2, 3)), np.zeros((5, 3)), np.zeros((2, 5))
    with pytest.raises(ValueError, match="w_packed has shape"):
        recurrent_gemm_py(h, w, np.zeros((1, 3, 64)), c)
    with pytest.raises(ValueError, match="incompatible shapes"):
        recurrent_gemm_py(h, w, np.zeros((1, 3, 32)), np.zeros((5, 2)))


@pytest.fixture
def packs(monkeypatch):
    """Records the dtype of every set of packed weights the layers make (proof that the kernel
    path ran): the panel buffers of rnnc/_engine/workspace.py, wherever they are asked for."""
    seen = []
    real = workspace.panel_workspace

    def spy(*args, **kwargs):
        packed = real(*args, **kwargs)
        seen.append(packed.dtype)
        return packed

    for module in (workspace, kernel, rows, units):
        monkeypatch.setattr(module, "panel_workspace", spy)
    return seen


def _f64_case(mode, B, H, T, kw, seed):
    rng = np.random.default_rng(seed)
    m = getattr(rnnc, mode)(5, H, dtype=np.float64, seed=seed, **kw)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    P = kw.get("proj_size") or H
    x = rng.standard_normal((T, B, 5))
    lengths = rng.integers(0, T + 1, B)     # zero lengths included ...
    lengths[rng.integers(B)] = T            # ... and one full-length sequence: T steps run
    h0 = 0.8 * rng.standard_normal((D * L, B, P))
    hx = (h0, 0.8 * rng.standard_normal((D * L, B, H))) if mode == "LSTM" else h0
    return m, x, lengths, hx


F64_LAYERS = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {}),
              ("RNN", {"nonlinearity": "relu"}), ("LSTM", {"bidirectional": True}),
              ("GRU", {"num_layers": 2, "bidirectional": True}), ("GRU", {"reset_after": False})]
F64_SHAPES = [(1, 1), (1, 33), (2, 31), (3, 7), (4, 32), (5, 63), (8, 100), (17, 65), (33, 40),
              (64, 97), (70, 33)]


@needs_kernel
@pytest.mark.parametrize("mode,kw", F64_LAYERS)
@pytest.mark.parametrize("B,H", F64_SHAPES)
def test_float64_forward_matches_blas_and_reference(force_plan, packs, mode, kw, B, H):
    if kw.get("proj_size", 0) >= H:
        pytest.skip("proj_size must be < hidden_size")
    force_plan(threads=1)       # no split, no threads: the kernel takes any batch
    m, x, lengths, hx = _f64_case(mode, B, H, 6, kw, B * 100 + H)
    fast = m(x, hx, lengths=lengths)
    assert packs and set(packs) == {np.dtype(np.float64)}
    force_plan(threads=1, **BLAS_ONLY)
    blas = m(x, hx, lengths=lengths)
    ref = getattr(reference, mode)(5, H, dtype=np.float64, **kw)
    ref.load_state_dict(m.state_dict())
    expected = ref(x, hx, lengths=lengths)
    for a, b, r in zip(flat(fast), flat(blas), flat(expected)):
        np.testing.assert_allclose(a, b, **F64_TOL)
        np.testing.assert_allclose(a, r, **F64_TOL)


@needs_kernel
@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                     ("GRU", {"reset_after": False}), ("RNN", {})])
@pytest.mark.parametrize("B,H", [(1, 9), (3, 7), (5, 65), (16, 40), (37, 33), (70, 31)])
def test_float64_backward_matches_blas_and_reference(force_plan, packs, mode, kw, B, H):
    # Two bidirectional layers: the backward multiplies dA @ W_hh with W_hh^T packed (the
    # copying packer), every step of every direction.
    force_plan(threads=1)
    kw = dict(kw, num_layers=2, bidirectional=True)
    m, x, lengths, hx = _f64_case(mode, B, H, 6, kw, B * 100 + H + 1)
    P = kw.get("proj_size") or H
    rng = np.random.default_rng(B + H)
    g = rng.standard_normal((6, B, 2 * P))
    gh = rng.standard_normal((4, B, P))
    gc = rng.standard_normal((4, B, H)) if mode == "LSTM" else None

    def grads():
        m.train()
        m(x, hx, lengths=lengths)
        dx, dhx, gr = m.backward(g, (gh, gc) if mode == "LSTM" else gh)
        m.eval()
        return [dx, *(dhx if mode == "LSTM" else (dhx,))], gr

    fast, g_fast = grads()
    # Per layer and direction: W_ih and W_hh forward (or one [W_ih | W_hh | b] for the fused
    # LSTM product, whose backward also packs W_ih^T for the input gradient), W_hh backward;
    # with proj_size W_hr forward and backward too; GRU with reset_after=False packs
    # [W_hr; W_hz] and W_hn apart, forward and backward
    expected = 2 * 2 * (3 + (2 if kw.get("proj_size") else 0)
                        + (2 if kw.get("reset_after") is False else 0))
    assert len(packs) == expected
    assert set(packs) == {np.dtype(np.float64)}
    force_plan(threads=1, **BLAS_ONLY)
    blas, g_blas = grads()
    params = m.state_dict()
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    dx, dh0, dc0, g_ref = refb.run_stack_backward(
        mode, params, x, h0, c0, lengths, g, gh, gc, **kw)
    expected = [dx, dh0] + ([dc0] if mode == "LSTM" else [])
    for a, b, r in zip(fast, blas, expected):
        np.testing.assert_allclose(a, b, **F64_TOL)
        np.testing.assert_allclose(a, r, **F64_TOL)
    assert set(g_fast) == set(g_ref)
    for k in g_fast:
        np.testing.assert_allclose(g_fast[k], g_blas[k], err_msg=k, **F64_TOL)
        np.testing.assert_allclose(g_fast[k], g_ref[k], err_msg=k, **F64_TOL)


@needs_kernel
@pytest.mark.parametrize("mode,H,B,layers,bidir", [
    ("LSTM", 64, 1, 1, False),      # halves of 32 units: whole panels, packed from W_hh in place
    ("LSTM", 40, 3, 2, False),      # 16 + 24 units: gathered rows
    ("LSTM", 130, 17, 1, False),    # 64 + 66 units: one part of each kind
    ("GRU", 96, 5, 1, True),
    ("GRU", 33, 70, 2, False),
    ("RNN", 128, 9, 1, False),
    ("RNN", 100, 64, 1, True)])
def test_float64_split_matches_blas_and_reference(force_plan, packs, mode, H, B, layers,
                                                  bidir):
    # The 2-thread split by units (rnnc/_kernels/_parallel_forward.pyx), forced: each thread
    # runs the kernel on its units' rows of W_hh (each part packs them into a buffer from
    # rnnc/_engine/workspace.py, panel_workspace).
    splits = force_plan(strategy="units", threads=2)
    kw = {"num_layers": layers, "bidirectional": bidir}
    m, x, lengths, hx = _f64_case(mode, B, H, 7, kw, B * 100 + H + 2)
    fast = m(x, hx, lengths=lengths)
    D = 2 if bidir else 1
    assert splits == [("units", False, "forward")] * (D * layers)
    assert len(packs) >= 2 * D * layers and set(packs) == {np.dtype(np.float64)}
    force_plan(strategy="units", threads=2, **BLAS_ONLY)
    blas = m(x, hx, lengths=lengths)
    assert splits == [("units", False, "forward")] * (2 * D * layers)
    ref = getattr(reference, mode)(5, H, dtype=np.float64, **kw)
    ref.load_state_dict(m.state_dict())
    for a, b, r in zip(flat(fast), flat(blas), flat(ref(x, hx, lengths=lengths))):
        np.testing.assert_allclose(a, b, **F64_TOL)
        np.testing.assert_allclose(a, r, **F64_TOL)


@needs_kernel
def test_float64_in_place_weight_updates_are_seen(packs):
    m = rnnc.LSTM(5, 16, dtype=np.float64, seed=3)
    x = np.random.default_rng(0).standard_normal((8, 3, 5))
    first = m(x)[0]
    m.weight_hh_l0 *= 0.5
    second = m(x)[0]
    ref = reference.LSTM(5, 16, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    np.testing.assert_allclose(second, ref(x)[0], **F64_TOL)
    assert not np.allclose(first, second)
    assert set(packs) == {np.dtype(np.float64)}
