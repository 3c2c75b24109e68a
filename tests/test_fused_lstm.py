"""LSTM inference may compute each step's input and recurrent products as one product with
the small-batch kernel (rnnc._stack._run_fused, rnnc/_lstm_kernel.pyx lstm_fused_sequence). The
path is forced here on small shapes at one thread; results must match the NumPy reference as
tightly as the other kernels do, and the path must be used only where it applies."""
import numpy as np
import pytest

import rnnc
from rnnc import _stack, reference
from rnnc._blas import has_small_gemm

pytestmark = pytest.mark.skipif(not has_small_gemm(), reason="needs the small-batch kernel")


@pytest.fixture
def force_fused(monkeypatch):
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    monkeypatch.setattr(_stack, "FUSED_MIN_BATCH", 1)
    monkeypatch.setattr(_stack, "FUSED_MAX_WEIGHTS", 1 << 40)
    monkeypatch.setattr(_stack, "FUSED_WEIGHTS_PER_ROW", 1 << 40)
    return _record_dtypes(monkeypatch, "_run_fused")


@pytest.fixture
def force_fused_train(force_fused, monkeypatch):
    from rnnc import _split_train
    monkeypatch.setattr(_split_train, "cached_num_threads", lambda: 1)   # one thread: no split
    return _record_dtypes(monkeypatch, "_run_fused_train")


def _record_dtypes(monkeypatch, name):
    """Wrap rnnc._stack.<name>; the returned list gets the dtype of each call's input."""
    calls = []
    run = getattr(_stack, name)

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return run(*args, **kwargs)

    monkeypatch.setattr(_stack, name, spy)
    return calls


def flat(result):
    out, (h, c) = result
    return [out, h, c]


CASES = [  # hidden, input, batch, steps, layers, bidirectional, options
    (32, 11, 1, 9, 1, False, {}),
    (40, 7, 5, 6, 2, False, {}),            # H not a multiple of 16, 2 layers (I = H in layer 2)
    (64, 64, 16, 5, 1, True, {}),           # reverse direction, directions one after the other
    (17, 3, 9, 4, 1, False, {"bias": False}),   # zero bias column
    (96, 130, 64, 4, 1, False, {}),         # the kernel's largest batch
]


@pytest.mark.parametrize("H,I,B,T,layers,bidir,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_fused_matches_reference(force_fused, H, I, B, T, layers, bidir, kw, dtype, variable):
    rng = np.random.default_rng(H * 100 + B)
    D = 2 if bidir else 1
    m = rnnc.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=H, **kw)
    ref = reference.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = None
    if variable:        # zeros included; one full length (shorter runs use BLAS, < 4 steps)
        lengths = rng.integers(0, T + 1, B)
        lengths[B // 2] = T
    hx = tuple(rng.standard_normal((D * layers, B, H)).astype(dtype) for _ in range(2))
    got = m(x, hx, lengths=lengths)
    assert force_fused == [np.dtype(dtype)] * (D * layers)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(flat(got), flat(ref(x, hx, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_fused_sees_weight_updates(force_fused):
    # The fused weights are assembled and packed on every call: in-place updates take effect.
    m = rnnc.LSTM(6, 32, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 4, 6))
    m(x)
    m.weight_hh_l0[...] *= -0.5
    m.bias_ih_l0[...] += 0.25
    ref = reference.LSTM(6, 32, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    for a, e in zip(flat(m(x)), flat(ref(x))):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    assert len(force_fused) == 2


def test_forms_without_the_fused_path(force_fused_train, force_fused):
    x = np.ones((4, 8, 5), np.float32)
    rnnc.LSTM(5, 16, proj_size=8)(x)                    # projection
    m = rnnc.LSTM(5, 16, proj_size=8)
    m.train()
    m(x)
    rnnc.GRU(5, 16)(x)
    assert force_fused == [] and force_fused_train == []


def train_step(m, x, hx, lengths, g, gh, gc):
    m.train()
    out, (h, c) = m(x, hx, lengths=lengths)
    dx, (dh0, dc0), grads = m.backward(g, (gh, gc))
    return [out, h, c, dx, dh0, dc0] + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("H,I,B,T,layers,bidir,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_fused_training_matches_reference(force_fused_train, H, I, B, T, layers, bidir, kw,
                                          dtype, variable):
    # The training forward keeps [x | h_prev | 1] per row; the backward takes every weight
    # gradient (and the bias gradient, from the ones) from one GEMM over it.
    rng = np.random.default_rng(H * 10 + B)
    D = 2 if bidir else 1
    m = rnnc.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=H, **kw)
    ref = reference.LSTM(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = None
    if variable:
        lengths = rng.integers(0, T + 1, B)
        lengths[B // 2] = T
    hx = tuple(rng.standard_normal((D * layers, B, H)).astype(dtype) for _ in range(2))
    g = rng.standard_normal((T, B, D * H)).astype(dtype)
    gh, gc = (rng.standard_normal((D * layers, B, H)).astype(dtype) for _ in range(2))
    got = train_step(m, x, hx, lengths, g, gh, gc)
    assert force_fused_train == [np.dtype(dtype)] * (D * layers)
    expected = train_step(ref, x, hx, lengths, g, gh, gc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_fused_training_grads_accumulate(force_fused_train):
    # Two backward passes add their gradients, bias included (the ones column's sums).
    m = rnnc.LSTM(3, 16, seed=1, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((5, 4, 3))
    g = np.ones((5, 4, 16))
    m.train()
    m.zero_grad()
    m(x)
    m.backward(g)
    once = {k: v.copy() for k, v in m.grads.items()}
    m(x)
    m.backward(g)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, atol=1e-12)
    assert len(force_fused_train) == 2


def test_fused_rule_follows_size():
    rule = _stack._use_fused
    args = dict(proj_size=0, train=False, small=True, one_thread=True)
    assert rule("LSTM", 16, 128, 128, **args)
    assert rule("LSTM", 64, 256, 256, **args)
    assert rule("LSTM", 16, 512, 512, **args)
    assert not rule("LSTM", 2, 128, 128, **args)           # too few rows reuse the weights
    assert not rule("LSTM", 8, 512, 512, **args)
    assert not rule("LSTM", 64, 1024, 1024, **args)        # weights beyond the caches
    assert not rule("GRU", 16, 128, 128, **args)
    assert not rule("LSTM", 16, 128, 128, **{**args, "small": False})
    assert not rule("LSTM", 16, 128, 128, **{**args, "one_thread": False})
    assert not rule("LSTM", 16, 128, 128, **{**args, "train": True})
    assert not rule("LSTM", 16, 128, 128, **{**args, "proj_size": 64})
