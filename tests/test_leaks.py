"""Memory and threads do not grow over many calls (slow: ``pytest -m slow tests/test_leaks.py``).

Each kind of call -- a layer forward (RNN, GRU, LSTM; one thread and the two-thread paths:
split by batch rows, by hidden units, bidirectional directions run concurrently), a frozen
forward (also over changing batch sizes), a training forward + backward, stream steps, making
and dropping streams (each split stream owns a helper thread), cells, Linear, the Bidirectional
wrapper, Sequential, and calls that raise -- is warmed up, then run 10^4 times (fewer for the
costly kinds, and at most BUDGET seconds, so that each takes a few seconds); the resident set
size (/proc/self/statm) may not grow by more than LIMIT_MB and the process's thread count may
not grow at all.
"""
import gc
import os
import threading
import time

import numpy as np
import pytest

import rnnc

pytestmark = pytest.mark.slow

LIMIT_MB = 4
CALLS = 10_000
BUDGET = 4.0        # seconds of measured calls per kind, at most


def rss_bytes():
    """Resident set size now (not the peak getrusage reports)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def os_threads():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return threading.active_count()


if not os.path.exists("/proc/self/statm"):     # pragma: no cover - Linux only
    pytest.skip("needs /proc/self/statm (Linux)", allow_module_level=True)


@pytest.fixture
def two_threads():
    before = rnnc.get_num_threads()
    rnnc.set_num_threads(2)
    try:
        yield
    finally:
        rnnc.set_num_threads(before)


def assert_flat(fn, calls=CALLS, warm=None, budget=BUDGET):
    """Run fn() `warm` times, then `calls` times (or as many as fit in `budget` seconds, at
    least a fifth of them: two-thread calls wait for a helper thread, whose wake-up time varies
    a lot on a virtual machine): RSS within LIMIT_MB, no new thread."""
    warm = max(50, calls // 5) if warm is None else warm
    for _ in range(warm):
        fn()
    gc.collect()
    r0, t0 = rss_bytes(), os_threads()
    start = time.perf_counter()
    done = 0
    while done < calls:
        fn()
        done += 1
        if done >= calls // 5 and done % 100 == 0 and time.perf_counter() - start > budget:
            break
    gc.collect()
    r1, t1 = rss_bytes(), os_threads()
    grown = (r1 - r0) / 2**20
    assert grown <= LIMIT_MB, f"RSS grew by {grown:.1f} MB over {done} calls " \
                              f"({r0 / 2**20:.0f} -> {r1 / 2**20:.0f} MB)"
    assert t1 <= t0, f"threads {t0} -> {t1} over {done} calls"


def data(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- forward -----------------------------------------------------------------------------------
# (id, layer, input shape, calls): one thread's kernels, and at 2 threads the split paths.
FORWARD = [
    ("RNN", lambda: rnnc.RNN(16, 32, num_layers=2, seed=0), (10, 4, 16), CALLS),
    ("GRU", lambda: rnnc.GRU(16, 32, num_layers=2, seed=0), (10, 4, 16), CALLS),
    ("LSTM", lambda: rnnc.LSTM(16, 32, num_layers=2, seed=0), (10, 4, 16), CALLS),
    ("LSTM-proj-bi-f64", lambda: rnnc.LSTM(8, 16, proj_size=4, bidirectional=True,
                                           dtype=np.float64, seed=0), (6, 3, 8), CALLS),
    ("GRU-lengths", lambda: rnnc.GRU(8, 16, seed=0), (12, 5, 8), CALLS),
    ("LSTM-rows", lambda: rnnc.LSTM(16, 64, seed=0), (5, 8, 16), CALLS),
    ("GRU-rows", lambda: rnnc.GRU(16, 64, seed=0), (5, 8, 16), CALLS),
    ("RNN-rows", lambda: rnnc.RNN(16, 64, seed=0), (5, 16, 16), CALLS),
    ("LSTM-units", lambda: rnnc.LSTM(32, 256, seed=0), (8, 1, 32), 5_000),
    ("LSTM-bidirectional-concurrent", lambda: rnnc.LSTM(32, 128, bidirectional=True, seed=0),
     (10, 4, 32), 3_000),
]
FORWARD_IDS = [f[0] for f in FORWARD]


@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen"])
@pytest.mark.parametrize("name, ctor, shape, calls", FORWARD, ids=FORWARD_IDS)
def test_forward(two_threads, name, ctor, shape, calls, frozen):
    m = ctor()
    if frozen:
        m.freeze()
    x = data(shape, m.dtype)
    lengths = None
    if name.endswith("lengths"):
        lengths = np.array([12, 7, 7, 1, 0])
    assert_flat(lambda: m(x, lengths=lengths), calls)


def test_frozen_forward_changing_batch(two_threads):
    """A frozen module keeps packed weights per batch layout: bounded, not one per call."""
    m = rnnc.LSTM(16, 64, seed=0).freeze()
    xs = [data((5, B, 16), seed=B) for B in (1, 2, 3, 4, 8, 9, 16)]
    state = {"i": 0}

    def call():
        m(xs[state["i"] % len(xs)])
        state["i"] += 1
    assert_flat(call, CALLS)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_thread_forward(threads):
    before = rnnc.get_num_threads()
    rnnc.set_num_threads(threads)
    try:
        m = rnnc.LSTM(16, 64, seed=0)
        x = data((5, 8, 16))
        assert_flat(lambda: m(x), CALLS)
    finally:
        rnnc.set_num_threads(before)


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM", "LSTM-rows"])
def test_training_forward_backward(two_threads, mode):
    cls = getattr(rnnc, mode.split("-")[0])
    m = cls(16, 64 if mode == "LSTM-rows" else 32, num_layers=1 if mode == "LSTM-rows" else 2,
            dropout=0.0 if mode == "LSTM-rows" else 0.2, seed=0).train()
    x = data((8, 8 if mode == "LSTM-rows" else 3, 16))
    g = None

    def step():
        nonlocal g
        out, _ = m(x)
        if g is None:
            g = np.ones_like(out)
        m.backward(g)
    m.zero_grad()
    assert_flat(step, 5_000)


def test_sequential_training_with_optimizer(two_threads):
    model = rnnc.Sequential(rnnc.GRU(8, 16, seed=0), rnnc.Linear(16, 3, seed=1)).train()
    opt = rnnc.optim.Adam(model, lr=1e-3)
    x = data((6, 4, 8))
    labels = np.random.default_rng(0).integers(0, 3, size=(6, 4))

    def step():
        logits = model(x, lengths=[6, 5, 3, 1])
        _, grad = rnnc.losses.softmax_cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(grad)
        opt.step()
    assert_flat(step, 5_000)


# -- streams -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, ctor, B", [
    ("GRU", lambda: rnnc.GRU(16, 32, num_layers=2, seed=0), 4),
    ("LSTM-f64", lambda: rnnc.LSTM(16, 32, dtype=np.float64, seed=0), 2),
    ("LSTM-split", lambda: rnnc.LSTM(128, 128, seed=0), 1),
    ("RNN-unbatched", lambda: rnnc.RNN(16, 32, seed=0), None),
], ids=["GRU", "LSTM-f64", "LSTM-split", "RNN-unbatched"])
@pytest.mark.parametrize("use_out", [False, True], ids=["new", "out"])
def test_stream_steps(two_threads, name, ctor, B, use_out):
    m = ctor()
    s = m.stream(batch_size=B)
    x = data((16,) if B is None else (B, 16), m.dtype) if name != "LSTM-split" else \
        data((1, 128), m.dtype)
    out = np.empty_like(s.step(x))
    step = (lambda: s.step(x, out=out)) if use_out else (lambda: s.step(x))
    assert_flat(step, CALLS)
    s.reset()
    assert_flat(lambda: (s.step(x), s.state), 2_000)


def test_stream_made_and_dropped(two_threads):
    """Each split stream owns a helper thread: made and dropped 2000 times, no thread and no
    memory is left behind."""
    m = rnnc.LSTM(128, 128, seed=0)
    x = data((1, 128))

    def make_step_drop():
        s = m.stream(batch_size=1)
        s.step(x)
        s.refresh()
        del s
    assert_flat(make_step_drop, 2_000, warm=200)


# -- cells, Linear, wrappers -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells(two_threads, name):
    cell = getattr(rnnc, name)(16, 32, seed=0)
    x = data((4, 16))
    hx = cell(x)
    assert_flat(lambda: cell(x, hx), CALLS)


def test_cell_training(two_threads):
    cell = rnnc.LSTMCell(16, 32, seed=0).train()
    x = data((4, 16))
    g = np.ones((4, 32), np.float32)

    def step():
        cell(x)
        cell.backward(g)
    assert_flat(step, CALLS)


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_linear(two_threads, activation):
    lin = rnnc.Linear(32, 10, activation=activation, seed=0)
    x = data((10, 4, 32))
    assert_flat(lambda: lin(x), CALLS)


@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_bidirectional_wrapper(two_threads, merge_mode):
    bi = rnnc.Bidirectional(rnnc.GRU(16, 32, seed=0), merge_mode=merge_mode)
    x = data((8, 4, 16))
    assert_flat(lambda: bi(x, lengths=[8, 6, 2, 0]), CALLS)


def test_modules_made_and_dropped(two_threads):
    x = data((4, 2, 8))

    def make_call_drop():
        m = rnnc.LSTM(8, 16, num_layers=2, seed=0).freeze()
        m(x)
        del m
    assert_flat(make_call_drop, 5_000)


# -- calls that raise --------------------------------------------------------------------------
def test_errors(two_threads):
    m = rnnc.LSTM(8, 16, seed=0)
    s = rnnc.GRU(8, 16, seed=0).stream(2)
    cell = rnnc.GRUCell(8, 16, seed=0)
    good = data((5, 2, 8))
    bad_calls = [
        lambda: m(data((5, 2, 9))),                                 # feature count
        lambda: m(good, (np.zeros((1, 2, 16)),)),                   # hx structure
        lambda: m(good, lengths=[6, 1]),                            # lengths range
        lambda: m(good.astype(np.complex64)),                       # dtype
        lambda: m.backward(np.zeros(3)),                            # no training forward
        lambda: m.load_state_dict({"weight_ih_l0": np.zeros(3)}),   # shapes, missing keys
        lambda: s.step(np.zeros((2, 8), complex)),                  # stream dtype
        lambda: s.step(np.zeros((3, 8), np.float32)),               # stream shape
        lambda: cell(np.zeros((2, 9), np.float32)),                 # cell features
        lambda: rnnc.LSTM(8, 0),                                    # constructor
    ]
    state = {"i": 0}

    def call():
        fn = bad_calls[state["i"] % len(bad_calls)]
        state["i"] += 1
        try:
            fn()
        except (ValueError, TypeError, RuntimeError):
            return
        raise AssertionError("the bad call did not raise")
    assert_flat(call, CALLS)
