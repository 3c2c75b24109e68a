"""Inference may split a layer's hidden units between two threads (rnnc/_parallel_forward.pyx,
chosen in rnnc._stack). The split is forced here on small shapes; results must match the NumPy
reference as tightly as the one-thread kernels do, and the split must be used only where it
applies (inference, no projection, GRU in PyTorch's form, 2+ threads)."""
import numpy as np
import pytest

import rnnc
from rnnc import _stack, reference


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


CASES = [  # mode, hidden, batch, steps, layers, bidirectional, options
    ("LSTM", 32, 1, 9, 1, False, {}),
    ("LSTM", 40, 3, 7, 2, False, {}),          # unequal halves (16 + 24 units)
    ("LSTM", 130, 17, 5, 1, False, {"bias": False}),
    ("LSTM", 33, 70, 4, 1, False, {}),         # batch > 64: BLAS with gathered W_hh rows
    ("LSTM", 64, 5, 6, 3, True, {}),
    ("GRU", 48, 4, 8, 1, False, {}),
    ("GRU", 130, 2, 5, 2, True, {"bias": False}),
    ("GRU", 64, 66, 3, 1, False, {}),
    ("RNN", 32, 6, 10, 1, False, {}),
    ("RNN", 96, 3, 7, 2, False, {"nonlinearity": "relu"}),
    ("RNN", 256, 70, 3, 1, False, {}),
]


@pytest.mark.parametrize("mode,H,B,T,layers,bidir,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_split_matches_reference(force_split, mode, H, B, T, layers, bidir, kw, dtype,
                                 variable):
    rng = np.random.default_rng(H * 100 + B)
    D = 2 if bidir else 1
    m = getattr(rnnc, mode)(11, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=H,
                            **kw)
    ref = getattr(reference, mode)(11, H, num_layers=layers, bidirectional=bidir, dtype=dtype,
                                   **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, 11)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if variable else None   # zeros included
    h0 = rng.standard_normal((D * layers, B, H)).astype(dtype)
    hx = (h0, rng.standard_normal((D * layers, B, H)).astype(dtype)) if mode == "LSTM" else h0
    got = m(x, hx, lengths=lengths)
    assert len(force_split) == D * layers
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(flat(got), flat(ref(x, hx, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_split_batch_first_and_unbatched(force_split):
    m = rnnc.LSTM(5, 48, batch_first=True, seed=1, dtype=np.float64)
    ref = reference.LSTM(5, 48, batch_first=True, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 6, 5))
    for a, e in zip(flat(m(x)), flat(ref(x))):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    for a, e in zip(flat(m(x[0])), flat(ref(x[0]))):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    assert len(force_split) == 2


@pytest.mark.parametrize("mode,kw", [("LSTM", {"proj_size": 8}), ("GRU", {"reset_after": False})])
def test_forms_without_a_split_kernel_run_unsplit(force_split, mode, kw):
    m = getattr(rnnc, mode)(4, 32, seed=0, **kw)
    ref = getattr(reference, mode)(4, 32, **kw)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    for a, e in zip(flat(m(x)), flat(ref(x))):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    assert force_split == []


def test_training_forward_and_one_thread_do_not_split(force_split, monkeypatch):
    m = rnnc.GRU(4, 32, seed=0)
    x = np.ones((5, 2, 4), np.float32)
    m.train()
    m(x)
    m.backward(np.ones((5, 2, 32), np.float32))
    assert force_split == []
    m.eval()
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    m(x)
    assert force_split == []


def test_split_rule_follows_size(monkeypatch):
    # Defaults: small layers stay on one thread, big ones split (given 2 threads).
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    args = dict(proj_size=0, reset_after=True, train=False, parallel=False)
    rule = _stack._split_layers
    assert not rule("LSTM", 1, 64, 100, **args)       # the barrier per step would dominate
    assert not rule("LSTM", 64, 64, 100, **args)      # parts narrower than one panel
    assert rule("LSTM", 16, 128, 100, **args)         # 2^20 multiply-adds per step
    assert rule("LSTM", 4, 128, 100, **args)          # 2^18
    assert not rule("LSTM", 2, 128, 100, **args)
    assert rule("GRU", 1, 256, 100, **args)           # 3 * 2^16
    assert not rule("RNN", 1, 256, 100, **args)
    assert rule("GRU", 8, 1024, 20, **args)
    assert rule("RNN", 64, 512, 50, **args)
    assert not rule("LSTM", 1, 256, 4, **args)        # too short to repay the parts' packing
    assert not rule("LSTM", 64, 512, 50, **{**args, "train": True})
    assert not rule("LSTM", 64, 512, 50, **{**args, "parallel": True})
    assert not rule("LSTM", 64, 512, 50, **{**args, "proj_size": 100})
    assert not rule("GRU", 64, 512, 50, **{**args, "reset_after": False})
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    assert not rule("LSTM", 64, 512, 50, **args)


def _split_case(seed):
    m = rnnc.LSTM(6, 40, num_layers=2, seed=seed, dtype=np.float64)
    ref = reference.LSTM(6, 40, num_layers=2, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(seed).standard_normal((9, 3, 6))
    return m, x, flat(ref(x))


def test_concurrent_callers_share_the_helper_or_run_unsplit(force_split):
    # One helper thread serves one layer call at a time: a second Python thread calling at the
    # same moment runs its layer unsplit. Every result must still be exact.
    import threading
    cases = [_split_case(seed) for seed in range(4)]
    errors = []

    def work(m, x, expected):
        try:
            for _ in range(25):
                for a, e in zip(flat(m(x)), expected):
                    np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
        except Exception as exc:    # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(force_split) > 0
    assert _stack._SPLIT_LOCK.acquire(blocking=False)   # released after every call
    _stack._SPLIT_LOCK.release()


_FORK_CALLS = []     # force_split's record of split calls, seen by a forked child


def test_split_in_a_forked_child(force_split):
    # A forked child inherits the helper's description but not its thread: it starts its own.
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    m, x, expected = _split_case(7)
    m(x)                                    # the parent's helper is running
    _FORK_CALLS[:] = [force_split]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got, splits = pool.apply(_call_in_child, (m, x))
    assert splits == 2                      # both layers split in the child too
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def _call_in_child(m, x):
    calls = _FORK_CALLS[0]
    before = len(calls)
    result = flat(m(x))
    return result, len(calls) - before


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_reading_w_ih_in_place(force_split, monkeypatch, mode, dtype):
    # Large W_ih: each part's projection reads its rows of every gate block in place.
    monkeypatch.setattr(_stack, "SPLIT_IN_PLACE_MIN_BYTES", 0)
    monkeypatch.setattr(_stack, "FUSED_MIN_BATCH", 1 << 30)   # the unfused LSTM parts
    rng = np.random.default_rng(3)
    m = getattr(rnnc, mode)(13, 40, num_layers=2, dtype=dtype, seed=2)
    ref = getattr(reference, mode)(13, 40, num_layers=2, dtype=dtype)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((6, 5, 13)).astype(dtype)
    lengths = np.array([6, 2, 5, 0, 6])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(flat(m(x, lengths=lengths)), flat(ref(x, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    assert len(force_split) == 2


def test_split_needs_two_nonempty_parts(force_split, monkeypatch):
    # Below 32 units one half would be empty: never split, whatever the threshold says; the
    # kernel itself refuses an empty part instead of dividing by zero.
    monkeypatch.setattr(_stack, "SPLIT_MIN_HIDDEN", 1)
    m = rnnc.RNN(7, 16, num_layers=2, seed=0, dtype=np.float64)
    ref = reference.RNN(7, 16, num_layers=2, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 55, 7))
    for a, e in zip(flat(m(x)), flat(ref(x))):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    assert force_split == []
    from rnnc._parallel_forward import split_forward_py
    e1, e2, e3 = np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0, 0))
    h = np.zeros((2, 16))
    with pytest.raises(ValueError, match="half must be in"):
        split_forward_py(0, np.zeros((2, 3)), np.array([2], np.intp), np.array([0], np.intp),
                         False, np.zeros((16, 3)), np.zeros((16, 16)), 16, e1, e1, e1, e1,
                         e2, e2, e2, e2, e3, e3, e3, e3, np.zeros((2, 2, 16)), h, e2, e2, e2,
                         np.zeros((2, 16)), 0, e2, e2, e2, e2, e2, e2, 1,
                         np.zeros(16, np.int32))
