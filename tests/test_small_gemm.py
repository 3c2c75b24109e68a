"""The packed small-batch recurrent kernel (rnnc/_small_gemm.h) against BLAS and the reference.

float32 layers with a small batch and a few steps use it where the CPU has AVX-512; forcing it
off must give the same results to float32 rounding. Shapes cover column counts that are not
multiples of the 64-column panels and row counts that are not multiples of the 4-row tiles.
"""
import numpy as np
import pytest

import rnnc
from rnnc import _stack, reference
from rnnc._blas import has_small_gemm


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
def test_small_kernel_matches_blas_and_reference(monkeypatch, mode, kw, B, H):
    if kw.get("proj_size", 0) >= H:
        pytest.skip("proj_size must be < hidden_size")
    T = 6
    lengths = np.arange(B) % T + 1
    m, x, fast = run(mode, B, H, T, lengths, **kw)
    monkeypatch.setattr(_stack, "_SMALL_GEMM", [False])
    blas = m(x, lengths=lengths)
    ref = getattr(reference, mode)(5, H, dtype=np.float32, **kw)
    ref.load_state_dict(m.state_dict())
    expected = ref(x, lengths=lengths)
    for a, b, r in zip(flat(fast), flat(blas), flat(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def test_kernel_is_used_where_available():
    # On a CPU without AVX-512 the layers fall back to BLAS, and this reports False.
    assert isinstance(has_small_gemm(), bool)
    assert _stack._use_small_gemm(np.dtype(np.float64), 1, 100) is False
    assert _stack._use_small_gemm(np.dtype(np.float32), 1, 2) is False


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
def test_backward_small_kernel_matches_blas(monkeypatch, mode, B, H):
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
    monkeypatch.setattr(_stack, "_SMALL_GEMM", [False])
    dx_blas, g_blas = grads()
    np.testing.assert_allclose(dx_fast, dx_blas, rtol=1e-4, atol=1e-5)
    for k in g_fast:
        np.testing.assert_allclose(g_fast[k], g_blas[k], rtol=1e-4, atol=1e-4)


def test_batch_rule():
    assert not _stack._use_small_gemm(np.dtype(np.float32), 0, 100)
    if has_small_gemm():
        assert _stack._use_small_gemm(np.dtype(np.float32), 1, 100)
        assert _stack._use_small_gemm(np.dtype(np.float32), 2, 100)


def _panels_numpy(w):
    n, k = w.shape
    n_panels = -(-n // 64)
    padded = np.zeros((n_panels * 64, k), dtype=w.dtype)
    padded[:n] = w
    return padded.reshape(n_panels, 64, k).transpose(0, 2, 1)


@pytest.mark.parametrize("N,K", [(1, 1), (16, 16), (17, 33), (64, 16), (100, 70), (130, 17),
                                 (200, 1), (512, 128)])
def test_pack_panels_matches_numpy(N, K):
    # Both the transposing case (forward: W_hh, k contiguous; AVX-512 16 x 16 blocks plus
    # edges) and the copying case (backward: W_hh^T), plus a strided view.
    w = np.random.default_rng(N * K).standard_normal((N, K)).astype(np.float32)
    for view in (w, np.ascontiguousarray(w.T).T, w[:, ::2], w.T):
        np.testing.assert_array_equal(_stack.pack_panels(view), _panels_numpy(view))
