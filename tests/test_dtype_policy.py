"""rnnc's one dtype policy, entry point by entry point: real input of another dtype (float64 to
a float32 module, float32 to a float64 one, integers, float16, lists) is converted to the
module's dtype -- the result is the bits of the same call on the converted input -- and
complex, bool, object and string data raise TypeError naming the argument. Losses keep a
float32/float64 prediction's dtype; softmax_cross_entropy takes logits and warns when it is
handed probabilities."""
import warnings

import numpy as np
import pytest

import rnnc
from rnnc import losses

F32, F64 = np.float32, np.float64


def same(a, b):
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for u, v in zip(a, b):
            same(u, v)
    elif a is None:
        assert b is None
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def lstm_hx(rng, dtype):
    return (rng.standard_normal((1, 2, 4)).astype(dtype), rng.standard_normal((1, 2, 4))
            .astype(dtype))


# name -> (dtype of the module, a function (module-free) that runs the entry point on the
# argument under test, a good value in the module's dtype, the argument's name in errors)
def entry_points(rng):
    x3 = rng.standard_normal((5, 2, 3))
    x2 = rng.standard_normal((2, 3))
    h = rng.standard_normal((1, 2, 4))
    lstm = rnnc.LSTM(3, 4, seed=0)
    gru64 = rnnc.GRU(3, 4, dtype=F64, seed=0)
    cell = rnnc.GRUCell(3, 4, seed=0)
    lcell = rnnc.LSTMCell(3, 4, seed=0)
    lin = rnnc.Linear(3, 4, seed=0)
    bi = rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0))
    seq = rnnc.Sequential(rnnc.GRU(3, 4, seed=0), rnnc.Linear(4, 2, seed=1))
    hx_lstm = lstm_hx(rng, F32)

    def stream_step(v):
        return lstm.stream(2).step(v)

    def stream_reset(v):
        s = rnnc.GRU(3, 4, seed=0).stream(2).reset(v)
        return s.step(np.ones((2, 3), F32)), s.state

    def lstm_backward(v):
        m = rnnc.LSTM(3, 4, seed=0).train()
        m(x3.astype(F32))
        return m.backward(v)[:2]

    return {
        "LSTM input": (F32, lambda v: lstm(v), x3, "input"),
        "LSTM h_0": (F32, lambda v: lstm(x3, (v, hx_lstm[1])), h, "h_0"),
        "LSTM c_0": (F32, lambda v: lstm(x3, (hx_lstm[0], v)), h, "c_0"),
        "GRU float64 input": (F64, lambda v: gru64(v), x3, "input"),
        "GRU float64 hx": (F64, lambda v: gru64(x3, v), h, "hx"),
        "LSTM backward grad_output": (F32, lstm_backward, np.ones((5, 2, 4)), "grad_output"),
        "GRUCell input": (F32, lambda v: cell(v), x2, "input"),
        "GRUCell hx": (F32, lambda v: cell(x2, v), h[0], "hx"),
        "LSTMCell h": (F32, lambda v: lcell(x2, (v, h[0])), h[0], "h"),
        "Linear input": (F32, lambda v: lin(v), x3, "input"),
        "Bidirectional input": (F32, lambda v: bi(v), x3, "input"),
        "Sequential input": (F32, lambda v: seq(v), x3, "input"),
        "Stream.step x": (F32, stream_step, x2, "x"),
        "Stream.reset hx": (F32, stream_reset, h, "hx"),
    }


NAMES = list(entry_points(np.random.default_rng(0)))


@pytest.mark.parametrize("name", NAMES)
def test_real_input_of_another_dtype_is_converted(name, rng):
    dtype, run, good, _ = entry_points(rng)[name]
    expected = run(good.astype(dtype))
    other = F64 if dtype == F32 else F32
    same(run(good.astype(other)), run(good.astype(other).astype(dtype)))
    same(run(good.astype(dtype).tolist()), expected)
    ints = np.round(good * 3)
    same(run(ints.astype(np.int64)), run(ints.astype(dtype)))
    same(run(good.astype(np.float16)), run(good.astype(np.float16).astype(dtype)))


@pytest.mark.parametrize("bad", ["complex128", "bool", "object", "U3"])
@pytest.mark.parametrize("name", NAMES)
def test_complex_bool_object_and_strings_are_refused_naming_the_argument(name, bad, rng):
    _, run, good, arg = entry_points(rng)[name]
    value = np.zeros(good.shape, dtype=bad)
    with pytest.raises(TypeError, match=rf"{arg} must have a real numeric dtype.*got"):
        run(value)


# -- losses --------------------------------------------------------------------------------------
def test_losses_keep_float32_and_float64_and_convert_the_rest(rng):
    pred = rng.standard_normal((4, 3))
    target = rng.standard_normal((4, 3))
    for dtype in (F32, F64):
        loss, grad = losses.mse(pred.astype(dtype), target)
        assert grad.dtype == dtype
        ref = losses.mse(pred.astype(dtype), target.astype(dtype))
        assert loss == ref[0]
        np.testing.assert_array_equal(grad, ref[1])
    for other in (np.int32, np.float16):
        _, grad = losses.mse(pred.astype(other), target)
        assert grad.dtype == F64
        _, grad = losses.softmax_cross_entropy(pred.astype(other), [0, 1, 2, 0])
        assert grad.dtype == F64
    for bad in ("complex128", "bool", "object"):
        with pytest.raises(TypeError, match="pred must have a real numeric dtype"):
            losses.mse(np.zeros((2, 2), bad), np.zeros((2, 2)))
        with pytest.raises(TypeError, match="logits must have a real numeric dtype"):
            losses.softmax_cross_entropy(np.zeros((2, 2), bad), [0, 1])
        with pytest.raises(TypeError, match="target must have a real numeric dtype"):
            losses.mse(np.zeros((2, 2)), np.zeros((2, 2), bad))


def test_softmax_cross_entropy_warns_when_given_probabilities(rng):
    probs = rnnc.Linear(3, 5, activation="softmax", seed=0)(rng.standard_normal((6, 4, 3)))
    labels = rng.integers(0, 5, size=(6, 4))
    with pytest.warns(UserWarning, match="takes logits.*Linear without activation"):
        losses.softmax_cross_entropy(probs, labels)
    with pytest.warns(UserWarning):
        losses.softmax_cross_entropy(np.eye(5)[labels], labels)      # one-hot rows, too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Real logits (even small, positive ones), zeros, one class, masked-out rows.
        for logits in (rng.standard_normal((6, 4, 5)), rng.uniform(0, 0.3, (6, 4, 5)),
                       np.zeros((6, 4, 5)), rng.uniform(0, 1, (6, 4, 1))):
            losses.softmax_cross_entropy(logits, np.minimum(labels, logits.shape[-1] - 1))
        mixed = np.array(probs)
        mixed[0, 0] = [3.0, -1.0, 0.5, 0.2, 0.1]
        losses.softmax_cross_entropy(mixed, labels)
