"""The input projection that reads W_ih once (the whole sequence in one chunk, weights not kept
by a frozen module) packs W_ih panel by panel as it goes (rnnc/_small_gemm.h,
rnnc_sgemm_small_packing) instead of packing it whole first. Same sums in the same order: the
results must be those of the whole-packed projection bit for bit, on the one-thread kernels, the
layers split by hidden units and the training forward, and match the NumPy reference."""
import numpy as np
import pytest

import rnnc
from rnnc import _lstm_kernel, _parallel_forward, _stack, reference

pytestmark = pytest.mark.skipif(not _stack._K.has_small_gemm(),
                                reason="the per-panel projection runs on the small-batch kernel")


@pytest.fixture
def per_panel(monkeypatch):
    """The LSTM projection runs apart from the step (no fused product); returns the list of
    _ih_per_panel's answers, filled as layers run."""
    monkeypatch.setattr(_stack, "FUSED_MIN_BATCH", 1 << 62)
    answers = []
    decide = _stack._ih_per_panel

    def spy(*args):
        answers.append(decide(*args))
        return answers[-1]

    monkeypatch.setattr(_stack, "_ih_per_panel", spy)
    return answers


@pytest.fixture
def threads():
    previous = rnnc.get_num_threads()
    yield rnnc.set_num_threads
    rnnc.set_num_threads(previous)


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def both_ways(monkeypatch, run):
    """run() with the per-panel projection allowed, then with W_ih packed whole."""
    monkeypatch.setattr(_stack, "IH_PER_PANEL", True)
    new = run()
    monkeypatch.setattr(_stack, "IH_PER_PANEL", False)
    return new, run()


CASES = [  # mode, input, hidden, batch, steps, kwargs: gate columns not a multiple of a panel
    ("LSTM", 13, 40, 3, 9, {}),                         # 160 columns: 2.5 float32 panels
    ("LSTM", 70, 24, 2, 6, dict(num_layers=2)),
    ("GRU", 19, 40, 5, 7, {}),
    ("GRU", 8, 24, 3, 8, dict(reset_after=False, bias=False)),
    ("RNN", 17, 100, 4, 6, {}),
    ("RNN", 5, 33, 9, 5, dict(nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("mode,I,H,B,T,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_one_thread_bits_and_reference(monkeypatch, per_panel, threads, mode, I, H, B, T, kw,
                                       dtype, variable):
    threads(1)
    rng = np.random.default_rng(I * H + B)
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=H, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B) if variable else None
    new, old = both_ways(monkeypatch, lambda: flat(m(x, lengths=lengths)))
    assert True in per_panel and False in per_panel
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(new, flat(ref(x, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


SPLIT_CASES = [  # mode, input, hidden, batch, steps: halves of whole panels read W_ih in
    ("LSTM", 11, 128, 3, 6),                      # place, gate block by gate block; others
    ("GRU", 20, 128, 2, 5),                       # from the gathered rows
    ("LSTM", 9, 40, 2, 7),
    ("RNN", 14, 96, 5, 6),
]


@pytest.mark.parametrize("mode,I,H,B,T", SPLIT_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_layers_bits_and_reference(monkeypatch, force_split, per_panel, mode, I, H, B, T,
                                         dtype):
    rng = np.random.default_rng(I + H)
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=I)
    ref = getattr(reference, mode)(I, H, dtype=dtype)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    new, old = both_ways(monkeypatch, lambda: flat(m(x)))
    assert len(force_split) == 2 and True in per_panel
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(new, flat(ref(x))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_training_forward_and_gradients_bits(monkeypatch, per_panel, threads, mode):
    threads(1)
    rng = np.random.default_rng(3)
    m = getattr(rnnc, mode)(10, 40, num_layers=2, dtype=np.float64, seed=1).train()
    x = rng.standard_normal((7, 3, 10))
    g = rng.standard_normal((7, 3, 40))

    def step():
        m.zero_grad()
        out = flat(m(x))
        dx, _, grads = m.backward(g)
        return [*out, dx, *(grads[k] for k in sorted(grads))]

    new, old = both_ways(monkeypatch, step)
    assert True in per_panel
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)


def test_not_for_frozen_modules_or_several_chunks(monkeypatch, per_panel, threads):
    threads(1)
    x = np.random.default_rng(0).standard_normal((8, 2, 12)).astype(np.float32)
    m = rnnc.GRU(12, 40, seed=0)
    expected = flat(m(x))
    assert per_panel == [True]
    m.freeze()              # keeps W_ih packed whole
    for a, b in zip(flat(m(x)), expected):
        np.testing.assert_array_equal(a, b)
    assert per_panel == [True, False]
    m.unfreeze()
    # Chunks of 3 steps: W_ih is read once per chunk, so it is packed whole, once.
    monkeypatch.setattr(_stack, "CHUNK_ELEMENTS", 3 * 2 * 3 * 40)
    for a, b in zip(flat(m(x)), expected):
        np.testing.assert_array_equal(a, b)
    assert per_panel == [True, False, False]


def test_kernels_check_the_panel_buffer():
    f = np.float32
    x = np.zeros((4, 12), f)
    sizes = np.full(2, 2, dtype=np.intp)
    offsets = np.arange(0, 4, 2, dtype=np.intp)
    w_ih, w_hh = np.zeros((64, 12), f), np.zeros((64, 16), f)
    e1, e2 = np.zeros(0, f), np.zeros((0, 0), f)
    h, c = np.zeros((2, 16), f), np.zeros((2, 16), f)
    out, xg = np.zeros((4, 16), f), np.zeros((4, 64), f)
    for bad in (np.zeros((1, 11, 64), f), np.zeros((1, 12, 32), f)):
        with pytest.raises(ValueError, match=r"lstm_forward: with ih_per_panel, w_ih_packed "
                                             r"must be one panel of shape \(1, 12, 64\)"):
            _lstm_kernel.lstm_forward(x, sizes, offsets, False, w_ih, w_hh, e1, e1, e2, h, c,
                                      out, 0, xg, e2, 2, e2, e2, np.zeros((0, 0, 0), f),
                                      np.zeros((0, 0, 0), f), bad, True)
    with pytest.raises(ValueError, match="prepared"):
        _parallel_forward.split_forward_py(
            3, x, sizes, offsets, False, w_ih, w_hh, 8, e1, e1, e1, e1, e2, e2, e2, e2,
            np.zeros((0, 0, 0), f), np.zeros((0, 0, 0), f), np.zeros((1, 12, 64), f),
            np.zeros((1, 12, 64), f), np.zeros((2, 2, 16), f), h, c, e2, e2, out, 0, xg, xg,
            e2, e2, e2, e2, 2, np.zeros(16, np.int32), True, True)
