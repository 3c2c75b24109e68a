"""Layers split by batch rows (rnnc/_parallel_forward.pyx, rows_forward_py): at 2+ threads an
LSTM layer on the fused product runs its first and last rows as two sequences, one per thread.
The parts start at a multiple of the kernel's 4-row tiles, so the results must be the
one-thread kernel's, bit for bit, whichever thread ran which part, whether the helper was
awake, asleep or busy -- and match the NumPy reference."""
import multiprocessing as mp
import time

import numpy as np
import pytest

import rnnc
from rnnc import _split_train, _stack, reference

pytestmark = pytest.mark.skipif(not _stack._K.has_small_gemm(),
                                reason="the row split runs on the small-batch kernel")


@pytest.fixture
def force_rows(monkeypatch):
    """Inference splits LSTM layers by rows wherever it may (as at 2 threads); returns the list
    of the row-split calls (whether each held the helper), filled as they run."""
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    calls = []
    run = _stack._run_rows

    def spy(*args, **kwargs):
        calls.append(args[-1])
        return run(*args, **kwargs)

    monkeypatch.setattr(_stack, "_run_rows", spy)
    return calls


def one_thread(m, x, **kw):
    previous = rnnc.get_num_threads()
    rnnc.set_num_threads(1)
    try:
        return flat(m(x, **kw))
    finally:
        rnnc.set_num_threads(previous)


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def layer_and_reference(mode, I, H, dtype, kw):
    """An rnnc layer (seeded by H) and the NumPy reference with its weights."""
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=H, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    return m, ref


def make_lengths(rng, kind, B, T):
    """None ("full"), lengths in [1, T] with one full row ("varied"), or T for the first 4
    rows and 0 for the others ("zeros": the second part's rows never run)."""
    if kind == "full":
        return None
    if kind == "varied":
        ln = rng.integers(1, T + 1, B)
    else:
        ln = np.zeros(B, dtype=np.intp)
        ln[:4] = T
    ln[0] = T
    return ln


def assert_bits(got, expected):
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)


CASES = [  # input, hidden, batch, steps, kwargs
    (16, 32, 8, 12, {}),
    (5, 40, 12, 9, dict(bias=False)),
    (24, 24, 19, 7, dict(num_layers=2)),
    (9, 48, 64, 5, dict(batch_first=True)),
    (6, 20, 16, 10, dict(bidirectional=True)),      # directions one after the other, each split
]


@pytest.mark.parametrize("I,H,B,T,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", ["full", "varied", "zeros"])
def test_row_split_gives_the_one_thread_bits(force_rows, monkeypatch, I, H, B, T, kw, dtype,
                                             lengths):
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 1 << 62)
    rng = np.random.default_rng(B * 31 + H)
    m, ref = layer_and_reference("LSTM", I, H, dtype, kw)
    shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    ln = make_lengths(rng, lengths, B, T)
    got = flat(m(x, lengths=ln))
    assert force_rows and len(force_rows) == m.num_layers * m.num_directions
    assert_bits(got, one_thread(m, x, lengths=ln))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(got, flat(ref(x, lengths=ln))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_row_split_with_initial_state_and_repeated_calls(force_rows):
    rng = np.random.default_rng(3)
    m = rnnc.LSTM(10, 64, seed=2)
    x = rng.standard_normal((20, 16, 10)).astype(np.float32)
    hx = (rng.standard_normal((1, 16, 64)).astype(np.float32),
          rng.standard_normal((1, 16, 64)).astype(np.float32))
    hx_copy = tuple(a.copy() for a in hx)
    expected = one_thread(m, x, hx=hx)
    for _ in range(5):      # the helper awake for the later calls
        assert_bits(flat(m(x, hx=hx)), expected)
    assert_bits(hx, hx_copy)        # the initial state is read, not written
    assert True in force_rows


def test_row_split_without_the_helper_gives_the_same_bits(force_rows, monkeypatch):
    rng = np.random.default_rng(4)
    m = rnnc.LSTM(12, 32, num_layers=2, seed=3)
    x = rng.standard_normal((15, 24, 12)).astype(np.float32)
    with_helper = flat(m(x))
    monkeypatch.setattr(_stack, "_split_begin", lambda: False)     # held by another call
    assert_bits(flat(m(x)), with_helper)
    assert False in force_rows


def test_row_split_with_a_sleeping_helper(force_rows):
    """Calls far apart post to a sleeping helper and do not wait for it to wake: a call may
    return before the helper has looked at its job. Later calls (row split or not) must not be
    disturbed by that late helper."""
    rng = np.random.default_rng(5)
    rows = rnnc.LSTM(8, 32, seed=4)
    small = rnnc.LSTM(8, 32, seed=5)        # batch 2: projection ahead, which waits for it
    x = rng.standard_normal((12, 16, 8)).astype(np.float32)
    x2 = rng.standard_normal((40, 2, 8)).astype(np.float32)
    expected, expected2 = one_thread(rows, x), one_thread(small, x2)
    for i in range(6):
        time.sleep(0.02)                    # the helper sleeps after ~0.5 ms idle
        assert_bits(flat(rows(x)), expected)
        if i % 2:
            assert_bits(flat(small(x2)), expected2)


def test_frozen_row_split_keeps_each_part_its_panels(force_rows):
    rng = np.random.default_rng(6)
    m = rnnc.LSTM(7, 40, seed=6)
    f = rnnc.LSTM(7, 40, seed=6).freeze()
    x = rng.standard_normal((9, 12, 7)).astype(np.float32)
    for _ in range(3):      # the first call packs, the others find the panels kept
        assert_bits(flat(f(x)), flat(m(x)))
    assert {k for k in f._packs if "rows" in k} == {(0, 0, "rows", 0), (0, 0, "rows", 1)}
    m.load_state_dict(rnnc.LSTM(7, 40, seed=7).state_dict())
    f.load_state_dict(m.state_dict())
    assert_bits(flat(f(x)), flat(m(x)))


def test_where_layers_split_by_rows(monkeypatch):
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    ok = dict(mode="LSTM", B=16, I=128, H=128, proj_size=0, parallel=False, small=True,
              train=False)
    assert _stack._row_split(**ok)
    assert _stack._row_split(**{**ok, "train": True})
    assert _stack._row_split(**{**ok, "mode": "RNN"})
    assert _stack._row_split(**{**ok, "mode": "GRU"})
    for change in (dict(mode="GRU", reset_after=False), dict(mode="GRU", train=True),
                   dict(mode="RNN", train=True), dict(B=7), dict(proj_size=4),
                   dict(parallel=True), dict(small=False), dict(H=1024, I=1024)):
        assert not _stack._row_split(**{**ok, **change}), change
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    assert not _stack._row_split(**ok)


@pytest.mark.parametrize("lengths,rows0", [
    ([5] * 8, 4), ([5] * 16, 8), ([5] * 12, 4), ([5] * 19, 8),
    ([100, 1, 1, 1, 1, 1, 1, 1, 1, 1], 4),         # the long row alone is most of the work
    ([9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1], 4),
])
def test_row_boundary_balances_the_steps(lengths, rows0):
    got = _stack._row_boundary(np.array(lengths, dtype=np.intp))
    assert got == rows0 and got % _stack.ROW_TILE == 0 and 0 < got < len(lengths)


def test_rows_forward_checks_its_split():
    x = np.zeros((8, 3), np.float32)
    sizes = np.full(2, 4, dtype=np.intp)
    w = np.zeros((8, 3), np.float32)
    packed = np.zeros((1, 6, 64), np.float32)
    h = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="rows0 must be in"):
        _stack._K.rows_forward_py(3, x, sizes, sizes, np.arange(2) * 4, False, w,
                                  np.zeros((8, 2), np.float32), np.zeros(0, np.float32),
                                  np.zeros(0, np.float32), packed, packed, False, h, h.copy(),
                                  np.zeros((8, 2), np.float32), 0, 4, h, h, h, h, h, h, False)


def _child(conn, x):
    m = rnnc.LSTM(6, 32, seed=9)
    conn.send(flat(m(x)))


def test_row_split_in_a_forked_child(force_rows):
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    rng = np.random.default_rng(7)
    m = rnnc.LSTM(6, 32, seed=9)
    x = rng.standard_normal((10, 16, 6)).astype(np.float32)
    expected = flat(m(x))       # the parent's helper is running when the child is forked
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child, x))
    p.start()
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    assert_bits(got, expected)


def train_step(m, x, hx, lengths, g, gh, gc):
    """Forward and backward of a training step: ([out, h_n, c_n, dh0, dc0], [dx, grads...])."""
    m.train()
    out, (h, c) = m(x, hx, lengths=lengths)
    dx, (dh0, dc0), grads = m.backward(g, (gh, gc))
    return [out, h, c, dh0, dc0], [dx] + [grads[k] for k in sorted(grads)]


TRAIN_CASES = [  # input, hidden, batch, steps, kwargs
    (11, 32, 8, 9, {}),
    (5, 40, 17, 7, dict(bias=False)),
    (24, 24, 12, 6, dict(num_layers=2, dropout=0.0)),
    (6, 20, 16, 5, dict(bidirectional=True)),
]


@pytest.mark.parametrize("I,H,B,T,kw", TRAIN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_row_split_training(force_rows, monkeypatch, I, H, B, T, kw, dtype, variable):
    """Forward and BPTT split by rows: the states and state gradients are the one-thread bits
    (each part runs the one-thread loops on its rows); the input and weight gradients come
    from GEMMs over all rows (BLAS, which may sum in another order with more threads)."""
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 1 << 62)
    calls = []
    forward, backward = _split_train.rows_forward, _split_train.rows_backward
    monkeypatch.setattr(_split_train, "rows_forward",
                        lambda *a: calls.append("forward") or forward(*a))
    monkeypatch.setattr(_split_train, "rows_backward",
                        lambda *a: calls.append("backward") or backward(*a))
    rng = np.random.default_rng(B * 7 + H)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    m, ref = layer_and_reference("LSTM", I, H, dtype, kw)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = None
    if variable:
        lengths = rng.integers(0, T + 1, B)      # zeros included
        lengths[0] = T
    hx = tuple(rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
    g = rng.standard_normal((T, B, D * H)).astype(dtype)
    gh, gc = (rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
    states, grads = train_step(m, x, hx, lengths, g, gh, gc)
    assert calls.count("forward") == calls.count("backward") == D * L
    previous = rnnc.get_num_threads()
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    rnnc.set_num_threads(1)
    try:
        states1, grads1 = train_step(m, x, hx, lengths, g, gh, gc)
    finally:
        rnnc.set_num_threads(previous)
    assert calls.count("forward") == D * L         # not split on one thread
    assert_bits(states, states1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(grads, grads1):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    ref_states, ref_grads = train_step(ref, x, hx, lengths, g, gh, gc)
    for a, e in zip(states + grads, ref_states + ref_grads):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


RNN_CASES = [  # input, hidden, batch, steps, kwargs
    (16, 32, 8, 12, {}),
    (5, 40, 12, 9, dict(bias=False, nonlinearity="relu")),
    (24, 24, 19, 7, dict(num_layers=2)),
    (6, 20, 16, 10, dict(bidirectional=True, nonlinearity="relu")),
]


@pytest.mark.parametrize("I,H,B,T,kw", RNN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", ["full", "varied", "zeros"])
def test_rnn_row_split(force_rows, monkeypatch, I, H, B, T, kw, dtype, lengths):
    """The vanilla RNN's row split runs the fused product [x | h | 1] @ [W_ih | W_hh | b]^T
    (the one-thread kernel sums the input and state products apart): the reference's results
    to rounding, the same bits with or without the helper."""
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 1 << 62)
    rng = np.random.default_rng(B * 13 + H)
    m, ref = layer_and_reference("RNN", I, H, dtype, kw)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    ln = make_lengths(rng, lengths, B, T)
    got = flat(m(x, lengths=ln))
    assert force_rows and len(force_rows) == m.num_layers * m.num_directions
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(got, flat(ref(x, lengths=ln))):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    for a, e in zip(got, one_thread(m, x, lengths=ln)):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    monkeypatch.setattr(_stack, "_split_begin", lambda: False)    # both parts on this thread
    assert_bits(flat(m(x, lengths=ln)), got)


def test_frozen_rnn_row_split(force_rows):
    rng = np.random.default_rng(8)
    m = rnnc.RNN(7, 40, seed=6, nonlinearity="relu")
    f = rnnc.RNN(7, 40, seed=6, nonlinearity="relu").freeze()
    x = rng.standard_normal((9, 12, 7)).astype(np.float32)
    for _ in range(3):
        assert_bits(flat(f(x)), flat(m(x)))
    assert {k for k in f._packs if "rows" in k} == {(0, 0, "rows", 0), (0, 0, "rows", 1)}


GRU_CASES = [  # input, hidden, batch, steps, kwargs
    (16, 32, 8, 12, {}),
    (5, 40, 13, 9, dict(bias=False)),
    (24, 24, 20, 7, dict(num_layers=2)),
    (6, 20, 16, 10, dict(bidirectional=True)),
]


@pytest.mark.parametrize("I,H,B,T,kw", GRU_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", ["full", "varied", "zeros"])
def test_gru_row_split(force_rows, monkeypatch, I, H, B, T, kw, dtype, lengths):
    """GRU's row split runs the one-thread kernel's step on each part's rows, projecting each
    step's inputs at that step where the one-thread kernel projects a chunk of steps at once:
    the reference's results to rounding; the one-thread bits where every step's rows fill
    whole 4-row tiles (a full-length batch of a multiple of 4: the kernel sums a lone row's
    products in another order); the same bits with or without the helper."""
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 1 << 62)
    rng = np.random.default_rng(B * 17 + H)
    m, ref = layer_and_reference("GRU", I, H, dtype, kw)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    ln = make_lengths(rng, lengths, B, T)
    h0 = rng.standard_normal((m.num_layers * m.num_directions, B, H)).astype(dtype)
    got = flat(m(x, h0, lengths=ln))
    assert force_rows and len(force_rows) == m.num_layers * m.num_directions
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(got, flat(ref(x, h0, lengths=ln))):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    expected = one_thread(m, x, hx=h0, lengths=ln)
    if lengths == "full" and B % _stack.ROW_TILE == 0:
        assert_bits(got, expected)
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    monkeypatch.setattr(_stack, "_split_begin", lambda: False)    # both parts on this thread
    assert_bits(flat(m(x, h0, lengths=ln)), got)


def test_frozen_gru_row_split(force_rows):
    rng = np.random.default_rng(9)
    m = rnnc.GRU(7, 40, seed=6)
    f = rnnc.GRU(7, 40, seed=6).freeze()
    x = rng.standard_normal((9, 12, 7)).astype(np.float32)
    for _ in range(3):      # the first call packs, the others find both parts' panels kept
        assert_bits(flat(f(x)), flat(m(x)))
    assert {k for k in f._packs if "rows" in k} == {(0, 0, "rows", 0), (0, 0, "rows", 1)}
    m.load_state_dict(rnnc.GRU(7, 40, seed=8).state_dict())
    f.load_state_dict(m.state_dict())
    assert_bits(flat(f(x)), flat(m(x)))


def test_gru_rows_forward_needs_its_buffers():
    f = np.float32
    x = np.zeros((16, 3), f)
    sizes = np.full(2, 4, dtype=np.intp)
    packed = np.zeros((1, 3, 64), f)
    h = np.zeros((8, 2), f)
    with pytest.raises(ValueError, match="GRU needs packed_hh"):
        _stack._K.rows_forward_py(2, x, sizes, sizes, np.arange(2) * 8, False,
                                  np.zeros((6, 3), f), np.zeros((6, 2), f), np.zeros(0, f),
                                  np.zeros(0, f), packed, packed, False, h,
                                  np.zeros((0, 0), f), np.zeros((16, 2), f), 0, 4,
                                  np.zeros((0, 0), f), np.zeros((0, 0), f), h, h,
                                  np.zeros((0, 0), f), np.zeros((0, 0), f), False)
