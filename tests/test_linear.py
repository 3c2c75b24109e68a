"""rnnc.Linear against rnnc.reference.Linear (and torch.nn.Linear), and the vanilla RNN model
y<t> = softmax(W_ya a<t> + b_y), a<t> = tanh(W_aa a<t-1> + W_ax x<t> + b_a)."""
import numpy as np
import pytest

import rnnc
import rnnc.reference

from conftest import DTYPES, assert_close, make_pair

ACTIVATIONS = [None, "tanh", "relu", "sigmoid", "softmax"]
ACT_IDS = [str(a) for a in ACTIVATIONS]
SHAPES = [(5,), (4, 5), (3, 4, 5), (2, 3, 2, 5), (0, 5), (3, 0, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d", "3d", "4d", "empty2d", "empty3d"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, activation, bias, shape, rng):
    for seed in range(2):
        lin, ref = make_pair("Linear", 5, 6, bias=bias, activation=activation, dtype=dtype,
                             seed=seed)
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        y = lin(x)
        assert y.shape == shape[:-1] + (6,)
        assert_close(y, ref(x), dtype)
        assert not np.shares_memory(y, x)
        if activation == "softmax" and y.size:
            np.testing.assert_allclose(y.sum(-1), 1, rtol=10 * np.finfo(dtype).eps * 6)
            assert np.all(y >= 0)
        if activation == "relu":
            assert np.all(y >= 0)
        if activation == "sigmoid":
            assert np.all((y >= 0) & (y <= 1))
        if activation == "tanh":
            assert np.all(np.abs(y) <= 1)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_explicit_formula(dtype, activation, rng):
    lin = rnnc.Linear(4, 3, activation=activation, dtype=dtype, seed=3)
    x = rng.standard_normal((7, 4)).astype(dtype)
    p = lin.state_dict()
    z = x.astype(np.float64) @ p["weight"].astype(np.float64).T + p["bias"]
    if activation == "tanh":
        z = np.tanh(z)
    elif activation == "relu":
        z = np.maximum(z, 0)
    elif activation == "sigmoid":
        z = 1 / (1 + np.exp(-z))
    elif activation == "softmax":
        z = np.exp(z - z.max(-1, keepdims=True))
        z /= z.sum(-1, keepdims=True)
    assert_close(lin(x), z.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_survives_huge_logits(dtype):
    lin = rnnc.Linear(3, 4, activation="softmax", dtype=dtype, seed=0)
    lin.load_state_dict({"weight": np.eye(4, 3), "bias": np.zeros(4)})
    x = np.array([[1e4, 0, 0], [1e4, 1e4, 0], [-1e4, -1e4, -1e4], [0, 0, -1e4], [3, 1, 2]],
                 dtype=dtype)
    y = lin(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(y[0], [1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(y[1], [0.5, 0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(y[2], [0, 0, 0, 1], atol=1e-12)     # logits -1e4,-1e4,-1e4,0
    np.testing.assert_allclose(y[3], [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6, atol=1e-12)
    _, ref = make_pair("Linear", 3, 4, activation="softmax", dtype=dtype)
    ref.load_state_dict(lin.state_dict())
    assert_close(y, ref(x), dtype)
    # Huge logits through real weights, too.
    lin2, ref2 = make_pair("Linear", 3, 5, activation="softmax", dtype=dtype, seed=4)
    xh = np.array([[1e4, -1e4, 5e3], [-1e4, 1e4, 1e4]], dtype=dtype)
    y2 = lin2(xh)
    assert np.all(np.isfinite(y2))
    np.testing.assert_allclose(y2.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(y2, ref2(xh), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_cleanly(dtype):
    for act, lo, hi in (("sigmoid", 0, 1), ("tanh", -1, 1)):
        lin = rnnc.Linear(1, 2, activation=act, dtype=dtype, seed=0)
        lin.load_state_dict({"weight": [[1], [-1]], "bias": [0, 0]})
        y = lin(np.array([[1e4], [-1e4], [0]], dtype=dtype))
        assert np.all(np.isfinite(y))
        np.testing.assert_array_equal(y[0], [hi, lo])
        np.testing.assert_array_equal(y[1], [lo, hi])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_parameters_and_conversion(dtype, rng):
    lin = rnnc.Linear(8, 3, dtype=dtype, seed=5)
    sd = lin.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == [("weight", (3, 8)), ("bias", (3,))]
    assert all(v.dtype == dtype for v in sd.values())
    bound = 1 / np.sqrt(8)
    assert all(np.all(np.abs(v) <= bound) for v in sd.values())
    assert list(rnnc.Linear(8, 3, bias=False).state_dict()) == ["weight"]
    again = rnnc.Linear(8, 3, dtype=dtype, seed=5).state_dict()
    other = rnnc.Linear(8, 3, dtype=dtype, seed=6).state_dict()
    for k in sd:
        np.testing.assert_array_equal(sd[k], again[k])
        assert not np.array_equal(sd[k], other[k])
    big = rnnc.Linear(200, 50, dtype=np.float64, seed=1).weight
    b = 1 / np.sqrt(200)
    assert big.max() > 0.99 * b and big.min() < -0.99 * b and abs(big.mean()) < 0.05 * b
    assert isinstance(repr(lin), str)
    # Input conversion and layouts: ints, float16, the other float, strided, read-only.
    x = rng.integers(-3, 4, size=(8, 6)).T
    x.setflags(write=False)
    expected = lin(np.ascontiguousarray(x, dtype=dtype))
    np.testing.assert_array_equal(lin(x), expected)
    np.testing.assert_array_equal(lin(x.astype(np.float16)), expected)
    other_float = np.float32 if dtype == np.float64 else np.float64
    np.testing.assert_array_equal(lin(x.astype(other_float)), expected)
    np.testing.assert_array_equal(lin(x.tolist()), expected)
    assert lin(x).dtype == dtype
    # Copies in, copies out.
    sd["weight"][...] = 0
    np.testing.assert_array_equal(lin(x), expected)
    src = {k: v.copy() for k, v in again.items()}
    lin.load_state_dict(src)
    src["weight"][...] = 0
    np.testing.assert_array_equal(lin(x), expected)
    with pytest.raises(ValueError):
        lin(np.zeros((2, 7), dtype))
    with pytest.raises(ValueError):
        lin(np.float64(1.0))
    with pytest.raises(ValueError):
        rnnc.Linear(3, 2, activation="gelu")


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype, bias, activation, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tlin = torch.nn.Linear(5, 4, bias=bias).to(tdtype)
    lin = rnnc.Linear(5, 4, bias=bias, activation=activation, dtype=dtype, seed=1)
    lin.load_state_dict(tlin.state_dict())          # torch tensors accepted directly
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    with torch.no_grad():
        z = tlin(torch.from_numpy(x))
        act = {None: lambda v: v, "tanh": torch.tanh, "relu": torch.relu,
               "sigmoid": torch.sigmoid, "softmax": lambda v: torch.softmax(v, dim=-1)}
        expected = act[activation](z).numpy()
    assert_close(lin(x), expected, dtype,
                 table={np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
                        np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5)})


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]])
@pytest.mark.parametrize("dtype", DTYPES)
def test_vanilla_rnn_model(dtype, lengths, nonlinearity, rng):
    """The README's model: a<0> = 0 (or given), a<t> = g(W_aa a<t-1> + W_ax x<t> + b_a),
    y<t> = softmax(W_ya a<t> + b_y), with rnnc.RNN + rnnc.Linear against a loop written out by
    hand (W_ax = weight_ih_l0, W_aa = weight_hh_l0, b_a = bias_ih_l0 + bias_hh_l0,
    W_ya = weight, b_y = bias)."""
    T, B, n_x, n_a, n_y = 6, 3, 4, 5, 3
    g = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0))
    rnn = rnnc.RNN(n_x, n_a, nonlinearity=nonlinearity, dtype=dtype, seed=0)
    head = rnnc.Linear(n_a, n_y, activation="softmax", dtype=dtype, seed=1)
    p_rnn, p_head = rnn.state_dict(), head.state_dict()
    W_ax = p_rnn["weight_ih_l0"].astype(np.float64)
    W_aa = p_rnn["weight_hh_l0"].astype(np.float64)
    b_a = p_rnn["bias_ih_l0"].astype(np.float64) + p_rnn["bias_hh_l0"]
    W_ya, b_y = p_head["weight"].astype(np.float64), p_head["bias"].astype(np.float64)
    x = rng.standard_normal((T, B, n_x)).astype(dtype)
    if lengths is None:
        a0, hx = np.zeros((B, n_a)), None                      # a<0> = 0
    else:
        a0 = (0.5 * rng.standard_normal((B, n_a))).astype(dtype)
        hx = a0[None]

    a, a_n = rnn(x, hx, lengths)
    y = head(a)
    assert y.shape == (T, B, n_y) and y.dtype == dtype

    n = [T] * B if lengths is None else lengths
    for b in range(B):
        a_prev = a0[b].astype(np.float64)
        for t in range(n[b]):
            a_t = g(W_aa @ a_prev + W_ax @ x[t, b] + b_a)
            logits = W_ya @ a_t + b_y
            y_t = np.exp(logits - logits.max())
            y_t /= y_t.sum()
            assert_close(a[t, b], a_t.astype(dtype), dtype)
            assert_close(y[t, b], y_t.astype(dtype), dtype)
            a_prev = a_t
        assert_close(a_n[0, b], a_prev.astype(dtype), dtype)
        for t in range(n[b], T):
            assert np.all(a[t, b] == 0)
    np.testing.assert_allclose(y.sum(-1)[:n[0]], 1, rtol=1e-6)


def test_parameters_are_reachable_as_attributes():
    """rnnc.Module: "Parameters are reachable as attributes under their PyTorch names ... they
    are the live arrays" -- for Linear that is ``weight`` and ``bias``, as on torch.nn.Linear."""
    lin = rnnc.Linear(4, 3, dtype=np.float64, seed=0)
    sd = lin.state_dict()
    assert isinstance(lin.weight, np.ndarray)
    np.testing.assert_array_equal(lin.weight, sd["weight"])
    assert isinstance(lin.bias, np.ndarray), f"lin.bias is {lin.bias!r}, not the bias array"
    np.testing.assert_array_equal(lin.bias, sd["bias"])
    lin.bias = np.arange(3.0)                    # goes through load_state_dict
    np.testing.assert_array_equal(lin.state_dict()["bias"], np.arange(3.0))
    np.testing.assert_array_equal(lin.bias, np.arange(3.0))
