"""Training may split an LSTM layer's hidden units between two threads, forward and backward
(rnnc/_parallel_train.pyx, chosen in rnnc/_split_train.py). The split is forced here on small
shapes: outputs, states and every gradient must match the NumPy reference (forward and BPTT)
as tightly as the one-thread kernels do and agree with the unsplit kernels, and the split must
be used only where it applies (LSTM without projection, directions not already concurrent, 2+
threads, a forward that ran split)."""
import numpy as np
import pytest

import rnnc
from rnnc import _split_train, _stack, reference


@pytest.fixture
def force_split(monkeypatch):
    """Split every LSTM training layer (as if on 2 threads); returns the list of split
    (forward, backward) calls."""
    monkeypatch.setattr(_split_train, "TRAIN_SPLIT_MIN_STEP_WORK", 0)
    monkeypatch.setattr(_split_train, "TRAIN_SPLIT_MIN_ROWS", 0)
    monkeypatch.setattr(_split_train, "cached_num_threads", lambda: 2)
    monkeypatch.setattr(_stack, "ROW_SPLIT_MIN_BATCH", 1 << 62)    # by units, not by rows
    calls = []
    forward, backward = _split_train.lstm_forward, _split_train.lstm_backward

    def spy_forward(*args, **kwargs):
        calls.append("forward")
        return forward(*args, **kwargs)

    def spy_backward(*args, **kwargs):
        calls.append("backward")
        return backward(*args, **kwargs)

    monkeypatch.setattr(_split_train, "lstm_forward", spy_forward)
    monkeypatch.setattr(_split_train, "lstm_backward", spy_backward)
    return calls


def train_step(m, x, hx, lengths, g, gh, gc):
    """Forward and backward of a training step; every result as a flat list."""
    m.train()
    out, (h, c) = m(x, hx, lengths=lengths)
    dx, (dh0, dc0), grads = m.backward(g, (gh, gc))
    return [out, h, c, dx, dh0, dc0] + [grads[k] for k in sorted(grads)]


CASES = [  # hidden, input, batch, steps, layers, bidirectional, options
    (32, 11, 1, 9, 1, False, {}),
    (40, 11, 3, 7, 2, False, {}),           # unequal halves (16 + 24 units)
    (130, 5, 17, 5, 1, False, {"bias": False}),
    (33, 11, 70, 4, 1, False, {}),          # batch > 64: BLAS with part-order W_hh
    (64, 64, 5, 6, 2, True, {}),            # each direction split in turn
    (48, 11, 4, 1, 1, False, {}),           # one step
]


@pytest.mark.parametrize("H,I,B,T,layers,bidir,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_split_training_matches_reference(force_split, H, I, B, T, layers, bidir, kw, dtype,
                                          variable):
    rng = np.random.default_rng(H * 100 + B)
    D = 2 if bidir else 1
    m = rnnc.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=H, **kw)
    ref = reference.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if variable else None   # zeros included
    hx = tuple(rng.standard_normal((D * layers, B, H)).astype(dtype) for _ in range(2))
    g = rng.standard_normal((T, B, D * H)).astype(dtype)
    gh, gc = (rng.standard_normal((D * layers, B, H)).astype(dtype) for _ in range(2))
    got = train_step(m, x, hx, lengths, g, gh, gc)
    assert force_split.count("forward") == D * layers
    # All sequences empty: the backward has nothing to do and returns zeros.
    runs = lengths is None or lengths.max() > 0
    assert force_split.count("backward") == (D * layers if runs else 0)
    expected = train_step(ref, x, hx, lengths, g, gh, gc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("variable", [False, True])
def test_split_reverse_in_time(force_split, variable):
    # What rnnc.Bidirectional's backward layer runs: every sequence from its last step.
    rng = np.random.default_rng(11)
    m = rnnc.LSTM(6, 40, dtype=np.float64, seed=4)
    ref = reference.LSTM(6, 40, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((7, 3, 6))
    lengths = np.array([7, 2, 5]) if variable else None
    g = rng.standard_normal((7, 3, 40))
    results = []
    for net in (m, ref):
        net.train()
        out, (h, c) = net._forward(x, None, lengths, reverse_all=True)
        dx, (dh0, dc0), grads = net.backward(g)
        results.append([out, h, c, dx, dh0, dc0] + [grads[k] for k in sorted(grads)])
    assert force_split == ["forward", "backward"]
    for a, e in zip(*results):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_matches_unsplit_kernels(force_split, monkeypatch, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 6, 20)).astype(dtype)
    g = rng.standard_normal((12, 6, 96)).astype(dtype)
    gh, gc = (rng.standard_normal((1, 6, 96)).astype(dtype) for _ in range(2))
    split = train_step(rnnc.LSTM(20, 96, dtype=dtype, seed=3), x, None, None, g, gh, gc)
    assert force_split == ["forward", "backward"]
    monkeypatch.setattr(_split_train, "TRAIN_SPLIT_MIN_ROWS", 1 << 62)
    whole = train_step(rnnc.LSTM(20, 96, dtype=dtype, seed=3), x, None, None, g, gh, gc)
    assert force_split == ["forward", "backward"]
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for a, e in zip(split, whole):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_split_without_small_batch_kernel(force_split, monkeypatch):
    # The BLAS path of the per-step products (what a CPU without AVX-512 runs).
    monkeypatch.setattr(_split_train, "_use_small_gemm", lambda *a, **k: False)
    rng = np.random.default_rng(3)
    m = rnnc.LSTM(7, 48, dtype=np.float32, seed=2)
    ref = reference.LSTM(7, 48, dtype=np.float32)
    ref.load_state_dict(m.state_dict())
    args = (rng.standard_normal((6, 4, 7)).astype(np.float32), None, None,
            rng.standard_normal((6, 4, 48)).astype(np.float32), None, None)
    got, expected = train_step(m, *args), train_step(ref, *args)
    assert force_split == ["forward", "backward"]
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_grads_accumulate_over_split_steps(force_split):
    rng = np.random.default_rng(5)
    m = rnnc.LSTM(4, 32, seed=1, dtype=np.float64)
    x = rng.standard_normal((5, 3, 4))
    g = rng.standard_normal((5, 3, 32))
    m.train()
    m(x)
    _, _, first = m.backward(g)
    m(x)
    m.backward(g)
    for name, grad in first.items():
        np.testing.assert_allclose(m.grads[name], 2 * grad, rtol=1e-12, atol=1e-12)
    assert force_split == ["forward", "backward"] * 2


@pytest.mark.parametrize("mode,kw", [("LSTM", {"proj_size": 8}), ("GRU", {})])
def test_forms_without_a_split_kernel_train_unsplit(force_split, mode, kw):
    m = getattr(rnnc, mode)(4, 32, seed=0, **kw)
    ref = getattr(reference, mode)(4, 32, **kw)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    P = kw.get("proj_size", 32)
    g = np.random.default_rng(2).standard_normal((5, 3, P)).astype(np.float32)
    for net in (m, ref):
        net.train()
        net(x)
    got, expected = m.backward(g), ref.backward(g)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for name in expected[2]:
        np.testing.assert_allclose(got[2][name], expected[2][name], rtol=1e-5, atol=1e-5)
    assert force_split == []


def test_concurrent_directions_and_inference_do_not_split(force_split, monkeypatch):
    monkeypatch.setattr(_stack, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    m = rnnc.LSTM(4, 32, bidirectional=True, seed=0)
    x = np.ones((5, 2, 4), np.float32)
    m.train()
    m(x)
    m.backward(np.ones((5, 2, 64), np.float32))
    m.eval()
    m(x)
    assert force_split == []


def test_split_rule_follows_size(monkeypatch):
    monkeypatch.setattr(_split_train, "cached_num_threads", lambda: 2)
    rule = _split_train.use_split
    args = dict(proj_size=0, parallel=False)
    assert rule("LSTM", 16, 128, 100, **args)
    assert rule("LSTM", 64, 256, 50, **args)
    assert rule("LSTM", 32, 64, 100, **args)
    assert not rule("LSTM", 16, 64, 100, **args)        # the barrier per step would dominate
    assert not rule("LSTM", 1, 256, 100, **args)
    assert not rule("LSTM", 8, 512, 20, **args)         # too few rows to repay the set-up
    assert not rule("LSTM", 1024, 16, 100, **args)      # too few units to split
    assert not rule("GRU", 64, 256, 50, **args)
    assert not rule("LSTM", 64, 256, 50, proj_size=100, parallel=False)
    assert not rule("LSTM", 64, 256, 50, proj_size=0, parallel=True)
    monkeypatch.setattr(_split_train, "cached_num_threads", lambda: 1)
    assert not rule("LSTM", 64, 256, 50, **args)
