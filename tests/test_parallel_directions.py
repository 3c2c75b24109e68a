"""Bidirectional layers may run their two directions concurrently (rnnc._stack: one direction on
rnnc's helper thread, BLAS at one thread each). Results must not depend on it."""
import numpy as np
import pytest

import rnnc
from rnnc import _stack


def forward_backward(m, x, lengths, g):
    m.eval()
    out, _ = m(x, lengths=lengths)
    m.train()
    m(x, lengths=lengths)
    dx, _, grads = m.backward(g)
    m.eval()
    return out, dx, grads


@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                     ("GRU", {"reset_after": False}), ("RNN", {})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concurrent_directions_match_serial(monkeypatch, mode, kw, dtype):
    rng = np.random.default_rng(3)
    m = getattr(rnnc, mode)(4, 6, num_layers=2, bidirectional=True, dtype=dtype, seed=2, **kw)
    x = rng.standard_normal((7, 5, 4)).astype(dtype)
    lengths = [7, 3, 0, 5, 7]
    P = kw.get("proj_size") or 6
    g = rng.standard_normal((7, 5, 2 * P)).astype(dtype)

    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", float("inf"))
    serial = forward_backward(m, x, lengths, g)
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    assert _stack._parallel_directions(2, 1)
    parallel = forward_backward(m, x, lengths, g)

    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(parallel[0], serial[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(parallel[1], serial[1], rtol=tol, atol=tol)
    for k in serial[2]:
        np.testing.assert_allclose(parallel[2][k], serial[2][k], rtol=tol, atol=tol)


def test_one_thread_means_no_concurrency(monkeypatch):
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    assert not _stack._parallel_directions(2, 10**12)
    assert not _stack._parallel_directions(1, 10**12)


def test_concurrent_directions_work_in_a_forked_child(monkeypatch):
    # The helper thread does not survive fork(); a child must make its own, not hang.
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    m = rnnc.GRU(3, 4, bidirectional=True, seed=0)
    x = np.ones((5, 2, 3), np.float32)
    expected = m(x)[0]          # creates the helper in this process
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_run_in_child, (m, x)).get(timeout=60)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _run_in_child(m, x):
    return m(x)[0]
