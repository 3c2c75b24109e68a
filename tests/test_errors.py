"""Every error path of the public API: a clear ValueError / TypeError naming the argument.

Constructor arguments, call arguments (input, hx, lengths), load_state_dict / parameter
assignment, and train()/eval(). Where a message states the expected and the received shape,
both are checked.
"""
import re

import numpy as np
import pytest

import rnnc

LAYERS = [rnnc.RNN, rnnc.GRU, rnnc.LSTM]
CELLS = [rnnc.RNNCell, rnnc.GRUCell, rnnc.LSTMCell]
LAYER_IDS = [c.__name__ for c in LAYERS]
CELL_IDS = [c.__name__ for c in CELLS]


def esc(shape):
    """A shape as it appears in a message, regex-escaped."""
    return re.escape(str(tuple(shape)))


def _all_modules():
    """One instance of every module class (small), with ids."""
    return [
        pytest.param(lambda: rnnc.RNN(3, 4, seed=0), id="RNN"),
        pytest.param(lambda: rnnc.GRU(3, 4, seed=0), id="GRU"),
        pytest.param(lambda: rnnc.LSTM(3, 4, seed=0), id="LSTM"),
        pytest.param(lambda: rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                                       seed=0), id="LSTM-proj-bi"),
        pytest.param(lambda: rnnc.RNNCell(3, 4, seed=0), id="RNNCell"),
        pytest.param(lambda: rnnc.GRUCell(3, 4, seed=0), id="GRUCell"),
        pytest.param(lambda: rnnc.LSTMCell(3, 4, seed=0), id="LSTMCell"),
        pytest.param(lambda: rnnc.Linear(3, 4, seed=0), id="Linear"),
    ]


# ==========================================================================================
# Constructors
# ==========================================================================================

SIZE_ARGS = {
    **{cls: ("input_size", "hidden_size", "num_layers") for cls in LAYERS},
    **{cls: ("input_size", "hidden_size") for cls in CELLS},
    rnnc.Linear: ("in_features", "out_features"),
}
SIZE_CASES = [(cls, arg) for cls, args in SIZE_ARGS.items() for arg in args]
SIZE_IDS = [f"{cls.__name__}-{arg}" for cls, arg in SIZE_CASES]
GOOD_SIZES = {"input_size": 3, "hidden_size": 4, "num_layers": 1, "in_features": 3,
              "out_features": 4}


def _build(cls, **override):
    kwargs = {k: GOOD_SIZES[k] for k in SIZE_ARGS[cls]}
    kwargs.update(override)
    return cls(**kwargs)


@pytest.mark.parametrize("cls,arg", SIZE_CASES, ids=SIZE_IDS)
@pytest.mark.parametrize("bad", [0, -1, -100])
def test_non_positive_size(cls, arg, bad):
    with pytest.raises(ValueError, match=rf"{arg} must be >= 1, got {bad}"):
        _build(cls, **{arg: bad})


@pytest.mark.parametrize("cls,arg", SIZE_CASES, ids=SIZE_IDS)
@pytest.mark.parametrize("bad", [2.5, 3.0, np.float64(3.0), "3", None, [3], np.array([3])],
                         ids=["2.5", "3.0", "np.float64", "str", "None", "list", "array"])
def test_non_integer_size(cls, arg, bad):
    with pytest.raises(TypeError, match=rf"{arg} must be an integer"):
        _build(cls, **{arg: bad})


@pytest.mark.parametrize("cls,arg", SIZE_CASES, ids=SIZE_IDS)
@pytest.mark.parametrize("bad", [True, False, np.bool_(True)], ids=["True", "False", "np.True_"])
def test_bool_is_not_a_size(cls, arg, bad):
    with pytest.raises(TypeError, match=rf"{arg} must be an integer.*bool"):
        _build(cls, **{arg: bad})


@pytest.mark.parametrize("cls,arg", SIZE_CASES, ids=SIZE_IDS)
def test_size_beyond_blas_int(cls, arg):
    with pytest.raises(ValueError, match=rf"{arg} must be <= {2**31 - 1}"):
        _build(cls, **{arg: 2**31})


@pytest.mark.parametrize("cls,arg", SIZE_CASES, ids=SIZE_IDS)
def test_numpy_integer_sizes_are_accepted(cls, arg):
    m = _build(cls, **{arg: np.int64(GOOD_SIZES[arg])})
    assert getattr(m, arg) == GOOD_SIZES[arg] and type(getattr(m, arg)) is int


@pytest.mark.parametrize("bad", [-1, -5])
def test_negative_proj_size(bad):
    with pytest.raises(ValueError, match=rf"proj_size must be >= 0, got {bad}"):
        rnnc.LSTM(3, 4, proj_size=bad)


@pytest.mark.parametrize("bad", [4, 5, 100])
def test_proj_size_not_smaller_than_hidden_size(bad):
    with pytest.raises(ValueError, match=rf"proj_size must be smaller than hidden_size \(4\), "
                                         rf"got {bad}"):
        rnnc.LSTM(3, 4, proj_size=bad)


@pytest.mark.parametrize("bad", [1.5, 2.0, "2", True])
def test_non_integer_proj_size(bad):
    with pytest.raises(TypeError, match="proj_size must be an integer"):
        rnnc.LSTM(3, 4, proj_size=bad)


@pytest.mark.parametrize("cls", [rnnc.RNN, rnnc.GRU], ids=["RNN", "GRU"])
def test_proj_size_is_lstm_only(cls):
    with pytest.raises(TypeError, match="proj_size"):
        cls(3, 4, proj_size=2)
    with pytest.raises(TypeError, match="proj_size"):
        cls(3, 4, proj_size=0)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("bad", [-0.1, 1.0001, 2, -1, float("nan"), float("inf"), "0.5", None,
                                 True, False, [0.5]])
def test_dropout_outside_unit_interval(cls, bad):
    with pytest.raises(ValueError, match="dropout must be a number in"):
        cls(3, 4, dropout=bad)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("good", [0, 0.0, 0.5, 1, 1.0])
def test_dropout_in_unit_interval_is_accepted(cls, good):
    m = cls(3, 4, num_layers=2, dropout=good)
    assert m.dropout == good and isinstance(m.dropout, float)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("good", [np.float64(0.25), np.float32(0.25), np.int64(0)],
                         ids=["np.float64", "np.float32", "np.int64"])
def test_dropout_numpy_scalars_are_accepted(cls, good):
    """A NumPy scalar in [0, 1] is a number in [0, 1] (torch accepts any numbers.Number);
    rejecting it with "must be a number in [0, 1], got np.float32(0.25)" is wrong."""
    m = cls(3, 4, num_layers=2, dropout=good)
    assert m.dropout == float(good)


FLAGS = [
    pytest.param(lambda v: rnnc.LSTM(3, 4, bias=v), "bias", id="LSTM-bias"),
    pytest.param(lambda v: rnnc.GRU(3, 4, batch_first=v), "batch_first", id="GRU-batch_first"),
    pytest.param(lambda v: rnnc.RNN(3, 4, bidirectional=v), "bidirectional",
                 id="RNN-bidirectional"),
    pytest.param(lambda v: rnnc.GRU(3, 4, reset_after=v), "reset_after", id="GRU-reset_after"),
    pytest.param(lambda v: rnnc.GRUCell(3, 4, bias=v), "bias", id="GRUCell-bias"),
    pytest.param(lambda v: rnnc.GRUCell(3, 4, reset_after=v), "reset_after",
                 id="GRUCell-reset_after"),
    pytest.param(lambda v: rnnc.Linear(3, 4, bias=v), "bias", id="Linear-bias"),
    pytest.param(lambda v: rnnc.LSTM(3, 4).train(v), "mode", id="train-mode"),
    pytest.param(lambda v: rnnc.optim.Adam(rnnc.Linear(3, 4), amsgrad=v), "amsgrad",
                 id="Adam-amsgrad"),
]


@pytest.mark.parametrize("make, name", FLAGS)
@pytest.mark.parametrize("bad", ["no", "False", 2, -1, 0.5, None, [True]])
def test_flag_that_is_not_a_bool_is_refused(make, name, bad):
    """bias="no" once meant True; PyTorch refuses it."""
    with pytest.raises(TypeError, match=rf"{name} must be a bool \(True or False\), got "
                                        rf"{type(bad).__name__} {re.escape(repr(bad))}"):
        make(bad)


@pytest.mark.parametrize("make, name", FLAGS)
@pytest.mark.parametrize("good", [True, False, np.bool_(True), 0, 1])
def test_flag_as_bool_or_zero_or_one_is_accepted(make, name, good):
    make(good)


@pytest.mark.parametrize("bad, error", [("abc", TypeError), (1.5, TypeError), (True, TypeError),
                                        ([1, 2], TypeError), (-1, ValueError)])
@pytest.mark.parametrize("make", [lambda s: rnnc.GRU(3, 4, seed=s),
                                  lambda s: rnnc.LSTMCell(3, 4, seed=s),
                                  lambda s: rnnc.Linear(3, 4, seed=s)],
                         ids=["GRU", "LSTMCell", "Linear"])
def test_bad_seed_is_refused_naming_seed(make, bad, error):
    with pytest.raises(error, match=r"^seed must be"):
        make(bad)


@pytest.mark.parametrize("good", [None, 0, np.int64(7), 2**70, np.random.SeedSequence(1),
                                  np.random.PCG64(1)],
                         ids=["None", "0", "np.int64", "big", "SeedSequence", "BitGenerator"])
def test_seed_kinds_numpy_accepts_are_accepted(good):
    assert rnnc.GRU(3, 4, seed=good).state_dict()["weight_ih_l0"].shape == (12, 3)


@pytest.mark.parametrize("kwargs", [dict(num_layers=10**7), dict(num_layers=10**8),
                                    dict(num_layers=1000, hidden_size=2**15)],
                         ids=["1e7-layers-H64", "1e8-layers-H64", "H32768-1000-layers"])
def test_module_larger_than_memory_is_refused_at_once(kwargs):
    """num_layers=10**7 once passed validation and allocated for 26 s until a MemoryError."""
    import time
    kwargs.setdefault("hidden_size", 64)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"LSTM with \d+ parameters in \d+ arrays needs "
                                         r"[\d.]+ [KMGTP]B of memory; [\d.]+ [KMGTP]B is available"):
        rnnc.LSTM(3, **kwargs)
    assert time.perf_counter() - start < 5      # refused before anything is allocated


def test_call_larger_than_memory_is_refused_naming_the_call():
    m = rnnc.LSTM(1, 256, num_layers=2).train()
    x = np.broadcast_to(np.float32(0), (1_000_000, 100_000, 1))   # 400 GB as input, 0 here
    with pytest.raises(ValueError, match=r"LSTM\(1, 256\) on 1000000 steps of 100000 sequences "
                                         r"needs [\d.]+ [KMGTP]B of memory"):
        m(x)


@pytest.mark.parametrize("make", [lambda nl: rnnc.RNNCell(3, 4, nonlinearity=nl),
                                  lambda nl: rnnc.RNNCell(3, 4, True, nl)],
                         ids=["RNNCell", "RNNCell-positional"])
@pytest.mark.parametrize("bad", ["sigmoid", "Tanh", "RELU", "", None, 1])
def test_unknown_nonlinearity(make, bad):
    with pytest.raises(ValueError, match=rf"nonlinearity must be one of 'tanh', 'relu', "
                                         rf"got {re.escape(repr(bad))}"):
        make(bad)


# A layer's nonlinearity is any activation of the cell options (ONNX's names in any case).
@pytest.mark.parametrize("make", [lambda nl: rnnc.RNN(3, 4, nonlinearity=nl),
                                  lambda nl: rnnc.RNN(3, 4, 1, nl)],
                         ids=["RNN", "RNN-positional"])
@pytest.mark.parametrize("bad,error,message", [
    ("gelu", ValueError, "nonlinearity must be one of"),
    ("", ValueError, "nonlinearity must be one of"),
    (None, TypeError, "nonlinearity must be a str or a tuple"),
    (1, TypeError, "nonlinearity must be a str or a tuple"),
    (("Relu", 1.0), ValueError, "Relu takes 0 parameter"),
])
def test_unknown_nonlinearity_of_a_layer(make, bad, error, message):
    with pytest.raises(error) as info:
        make(bad)
    assert message in str(info.value) and repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["gelu", "Softmax", "linear", "", 0])
def test_unknown_activation(bad):
    with pytest.raises(ValueError, match=rf"activation must be one of .*'softmax'.*"
                                         rf"got {re.escape(repr(bad))}"):
        rnnc.Linear(3, 4, activation=bad)


@pytest.mark.parametrize("bad", ["max", "Concat", "add", "", 0])
def test_unknown_merge_mode(bad):
    with pytest.raises(ValueError, match=rf"merge_mode must be one of 'concat'.*"
                                         rf"got {re.escape(repr(bad))}"):
        rnnc.Bidirectional(rnnc.GRU(3, 4), merge_mode=bad)


DTYPE_CLASSES = [lambda dt: rnnc.RNN(3, 4, dtype=dt), lambda dt: rnnc.GRU(3, 4, dtype=dt),
                 lambda dt: rnnc.LSTM(3, 4, dtype=dt), lambda dt: rnnc.RNNCell(3, 4, dtype=dt),
                 lambda dt: rnnc.GRUCell(3, 4, dtype=dt), lambda dt: rnnc.LSTMCell(3, 4, dtype=dt),
                 lambda dt: rnnc.Linear(3, 4, dtype=dt)]
DTYPE_IDS = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Linear"]


@pytest.mark.parametrize("make", DTYPE_CLASSES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bad", [np.float16, np.int32, np.int64, np.complex64, np.longdouble,
                                 bool, object, "banana", "float16", int, complex],
                         ids=lambda d: getattr(d, "__name__", str(d)))
def test_unsupported_dtype(make, bad):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        make(bad)


@pytest.mark.parametrize("make", DTYPE_CLASSES, ids=DTYPE_IDS)
@pytest.mark.parametrize("good,expected", [(np.float32, np.float32), ("float64", np.float64),
                                           (np.dtype("f4"), np.float32), (float, np.float64)])
def test_supported_dtype_spellings(make, good, expected):
    m = make(good)
    assert m.dtype == np.dtype(expected)
    assert all(v.dtype == expected for _, v in m.named_parameters())


@pytest.mark.parametrize("not_a_layer", [
    pytest.param(lambda: rnnc.GRUCell(3, 4), id="cell"),
    pytest.param(lambda: rnnc.Linear(3, 4), id="Linear"),
    pytest.param(lambda: rnnc.Bidirectional(rnnc.GRU(3, 4)), id="Bidirectional"),
    pytest.param(lambda: "GRU", id="str"),
    pytest.param(lambda: None, id="None"),
    pytest.param(lambda: rnnc.GRU, id="class-not-instance"),
])
def test_bidirectional_needs_a_layer(not_a_layer):
    with pytest.raises(TypeError, match="layer must be an RNN, GRU or LSTM layer"):
        rnnc.Bidirectional(not_a_layer())


@pytest.mark.parametrize("layer,backward", [
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.LSTM(3, 4), id="other-class"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 5), id="hidden_size"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(2, 4), id="input_size"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 4, 2), id="num_layers"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 4, batch_first=True),
                 id="batch_first"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 4, bias=False), id="bias"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 4, dtype=np.float64), id="dtype"),
    pytest.param(lambda: rnnc.GRU(3, 4), lambda: rnnc.GRU(3, 4, reset_after=False),
                 id="reset_after"),
    pytest.param(lambda: rnnc.RNN(3, 4), lambda: rnnc.RNN(3, 4, nonlinearity="relu"),
                 id="nonlinearity"),
    pytest.param(lambda: rnnc.LSTM(3, 4), lambda: rnnc.LSTM(3, 4, proj_size=2), id="proj_size"),
    pytest.param(lambda: rnnc.LSTM(3, 4), lambda: rnnc.LSTMCell(3, 4), id="cell"),
    pytest.param(lambda: rnnc.LSTM(3, 4), lambda: "LSTM", id="str"),
])
def test_bidirectional_backward_layer_of_another_config(layer, backward):
    with pytest.raises(ValueError, match="backward_layer must be configured like layer"):
        rnnc.Bidirectional(layer(), backward_layer=backward())


def test_bidirectional_backward_layer_same_config_is_accepted():
    fwd, bwd = rnnc.LSTM(3, 4, seed=1), rnnc.LSTM(3, 4, seed=2)
    bi = rnnc.Bidirectional(fwd, backward_layer=bwd)
    assert bi.backward_layer is bwd and bi.forward_layer is fwd


# ==========================================================================================
# Calls: layers
# ==========================================================================================

def _layer(cls, **kw):
    return cls(3, 4, seed=0, **kw)


def _hx(cls, shape, c_shape=None, dtype=np.float32):
    h = np.zeros(shape, dtype=dtype)
    if cls is rnnc.LSTM:
        return h, np.zeros(shape if c_shape is None else c_shape, dtype=dtype)
    return h


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("x", [np.float32(1.0), 1.0, np.zeros(3), np.zeros(0),
                               np.zeros((2, 3, 4, 3)), np.zeros((1, 1, 1, 1, 3))],
                         ids=["np-scalar", "float", "1-D", "1-D-empty", "4-D", "5-D"])
def test_layer_input_wrong_ndim(cls, x):
    nd = np.ndim(x)
    with pytest.raises(ValueError, match=rf"input must be 2-D \(T, 3\) unbatched or 3-D "
                                         rf"batched, got {nd}-D with shape {esc(np.shape(x))}"):
        _layer(cls)(x)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("shape", [(5, 2, 4), (5, 2, 2), (5, 2, 0), (5, 4), (5, 1), (0, 2, 7),
                                   (5, 0, 2)])
def test_layer_input_wrong_feature_size(cls, shape):
    with pytest.raises(ValueError, match=rf"input must have 3 features \(input_size\) in its "
                                         rf"last axis, got shape {esc(shape)}"):
        _layer(cls)(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_layer_input_wrong_feature_size_batch_first(cls):
    """The message shows the shape the caller passed, (B, T, F), not an internal transpose."""
    with pytest.raises(ValueError, match=rf"input must have 3 features \(input_size\) in its "
                                         rf"last axis, got shape \(2, 5, 4\)"):
        _layer(cls, batch_first=True)(np.zeros((2, 5, 4), dtype=np.float32))


BAD_DTYPE_INPUTS = [
    pytest.param(lambda s: np.zeros(s, dtype=np.complex64), "complex64", id="complex64"),
    pytest.param(lambda s: np.zeros(s, dtype=np.complex128), "complex128", id="complex128"),
    pytest.param(lambda s: np.zeros(s, dtype=bool), "bool", id="bool"),
    pytest.param(lambda s: np.zeros(s, dtype=object), "object", id="object"),
    pytest.param(lambda s: np.full(s, "1.0"), "<U3", id="str-array"),
    pytest.param(lambda s: np.full(s, b"1"), "|S1", id="bytes-array"),
    pytest.param(lambda s: np.zeros(s, dtype="M8[s]"), "datetime64", id="datetime"),
    pytest.param(lambda s: np.zeros(s).tolist() and [[["a"] * s[-1]] * s[1]] * s[0], "<U1",
                 id="nested-list-of-str"),
]


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("make,dtype_name", BAD_DTYPE_INPUTS)
def test_layer_input_non_real_dtype(cls, make, dtype_name):
    with pytest.raises(TypeError, match=rf"input must have a real numeric dtype .*got "
                                        rf"{re.escape(dtype_name)}"):
        _layer(cls)(make((5, 2, 3)))


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("ragged", [
    [[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    [[[0.0, 0.0, 0.0], [0.0, 0.0]]],
    [[0.0, 0.0, 0.0], [0.0, 0.0]],
])
def test_layer_input_ragged_nested_list(cls, ragged):
    with pytest.raises(TypeError, match="input must be a real numeric array, could not convert"):
        _layer(cls)(ragged)


# (num_layers, bidirectional, proj_size): the leading axis of the states is D * L.
STATE_CONFIGS = [(1, False, 0), (2, True, 0), (2, True, 2)]


def _state_shapes(cls, L, bi, proj, B):
    DL, H = L * (2 if bi else 1), 4
    P = proj or H
    lead = (DL,) if B is None else (DL, B)
    return lead + (P,), lead + (H,)


def _state_cases():
    for cls in LAYERS:
        for L, bi, proj in STATE_CONFIGS:
            if proj and cls is not rnnc.LSTM:
                continue
            yield pytest.param(cls, L, bi, proj, id=f"{cls.__name__}-L{L}-bi{int(bi)}-P{proj}")


def _wrong_shapes(shape):
    """Shapes that differ from `shape` in each axis, plus wrong ndim."""
    out = []
    for i in range(len(shape)):
        s = list(shape)
        s[i] += 1
        out.append(tuple(s))
    out.append(shape[1:])
    out.append(shape + (1,))
    return out


@pytest.mark.parametrize("cls,L,bi,proj", list(_state_cases()))
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_initial_state_wrong_shape(cls, L, bi, proj, batched):
    kw = dict(num_layers=L, bidirectional=bi)
    if proj:
        kw["proj_size"] = proj
    m = _layer(cls, **kw)
    B = 2 if batched else None
    x = np.zeros((5, 2, 3) if batched else (5, 3), dtype=np.float32)
    h_shape, c_shape = _state_shapes(cls, L, bi, proj, B)
    if cls is rnnc.LSTM:
        for bad in _wrong_shapes(h_shape):
            with pytest.raises(ValueError, match=rf"h_0 must have shape {esc(h_shape)}, "
                                                 rf"got {esc(bad)}"):
                m(x, (np.zeros(bad), np.zeros(c_shape)))
        for bad in _wrong_shapes(c_shape):
            with pytest.raises(ValueError, match=rf"c_0 must have shape {esc(c_shape)}, "
                                                 rf"got {esc(bad)}"):
                m(x, (np.zeros(h_shape), np.zeros(bad)))
        m(x, (np.zeros(h_shape), np.zeros(c_shape)))  # the right shapes work
    else:
        for bad in _wrong_shapes(h_shape):
            with pytest.raises(ValueError, match=rf"hx must have shape {esc(h_shape)}, "
                                                 rf"got {esc(bad)}"):
                m(x, np.zeros(bad))
        m(x, np.zeros(h_shape))


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_initial_state_batch_first_keeps_batch_in_axis_1(cls):
    """With batch_first the states stay (D*L, B, H) (as in PyTorch): (B, D*L, H) is an error."""
    m = _layer(cls, batch_first=True, num_layers=2)
    x = np.zeros((3, 5, 3), dtype=np.float32)
    bad = (3, 2, 4)
    hx = _hx(cls, bad)
    name = "h_0" if cls is rnnc.LSTM else "hx"
    with pytest.raises(ValueError, match=rf"{name} must have shape \(2, 3, 4\), got \(3, 2, 4\)"):
        m(x, hx)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_initial_state_non_real_dtype(cls):
    m = _layer(cls)
    x = np.zeros((5, 2, 3), dtype=np.float32)
    if cls is rnnc.LSTM:
        z = np.zeros((1, 2, 4))
        with pytest.raises(TypeError, match="h_0 must have a real numeric dtype"):
            m(x, (z.astype(complex), z))
        with pytest.raises(TypeError, match="c_0 must have a real numeric dtype"):
            m(x, (z, z.astype(bool)))
        with pytest.raises(TypeError, match="c_0 must have a real numeric dtype"):
            m(x, (z, None))
        with pytest.raises(TypeError, match="h_0 must be a real numeric array"):
            m(x, ([[[0.0] * 4, [0.0] * 3]], z))
    else:
        with pytest.raises(TypeError, match="hx must have a real numeric dtype"):
            m(x, np.zeros((1, 2, 4), dtype=complex))
        with pytest.raises(TypeError, match="hx must have a real numeric dtype"):
            m(x, "hello")
        with pytest.raises(TypeError, match="hx must be a real numeric array"):
            m(x, [[[0.0] * 4, [0.0] * 3]])


@pytest.mark.parametrize("hx", [
    pytest.param(lambda h: h, id="array"),
    pytest.param(lambda h: np.stack([h, h]), id="stacked-array"),
    pytest.param(lambda h: (h,), id="1-tuple"),
    pytest.param(lambda h: (h, h, h), id="3-tuple"),
    pytest.param(lambda h: {"h": h, "c": h}, id="dict"),
    pytest.param(lambda h: 0.0, id="float"),
])
def test_lstm_hx_not_a_pair(hx):
    m = _layer(rnnc.LSTM)
    h = np.zeros((1, 2, 4), dtype=np.float32)
    bad = hx(h)
    got = (f"a {type(bad).__name__} of {len(bad)} items" if isinstance(bad, tuple)
           else type(bad).__name__)
    with pytest.raises(TypeError, match=rf"hx for LSTM must be a tuple \(h_0, c_0\), got "
                                        rf"{got}$"):
        m(np.zeros((5, 2, 3), dtype=np.float32), bad)


def test_lstm_hx_as_list_pair_is_accepted():
    m = _layer(rnnc.LSTM)
    h = np.zeros((1, 2, 4), dtype=np.float32)
    out, (h_n, c_n) = m(np.zeros((5, 2, 3), dtype=np.float32), [h, h])
    assert h_n.shape == c_n.shape == (1, 2, 4)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("lengths,shape", [
    ([5], (1,)), ([5, 5, 5], (3,)), ([[5], [5]], (2, 1)), ([[5, 5]], (1, 2)), (5, ()),
    (np.array([], dtype=np.int64), (0,)),
])
def test_lengths_wrong_shape(cls, lengths, shape):
    with pytest.raises(ValueError, match=rf"lengths must have shape \(2,\) .*got {esc(shape)}"):
        _layer(cls)(np.zeros((5, 2, 3), dtype=np.float32), lengths=lengths)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_lengths_wrong_shape_unbatched(cls):
    with pytest.raises(ValueError, match=r"lengths must have shape \(1,\) .*got \(2,\)"):
        _layer(cls)(np.zeros((5, 3), dtype=np.float32), lengths=[5, 5])


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("lengths", [[-1, 5], [5, -3], [6, 5], [0, 100],
                                     np.array([2**63 - 1, 1]), [-(2**40), 3]])
def test_lengths_out_of_range(cls, lengths):
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        _layer(cls)(np.zeros((5, 2, 3), dtype=np.float32), lengths=lengths)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_lengths_out_of_range_batch_first(cls):
    """T is axis 1 with batch_first."""
    m = _layer(cls, batch_first=True)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 7\]"):
        m(np.zeros((2, 7, 3), dtype=np.float32), lengths=[7, 8])
    m(np.zeros((2, 7, 3), dtype=np.float32), lengths=[7, 2])


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_lengths_out_of_range_unbatched(cls):
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        _layer(cls)(np.zeros((5, 3), dtype=np.float32), lengths=6)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("lengths", [[2.5, 3], np.array([2.0, 3.5]), [float("nan"), 3],
                                     [float("inf"), 3], np.array([1.0, 2.0], np.float32) + 1e-3],
                         ids=["2.5", "3.5", "nan", "inf", "float32"])
def test_lengths_non_integer_float(cls, lengths):
    with pytest.raises(TypeError, match="lengths must be integers"):
        _layer(cls)(np.zeros((5, 2, 3), dtype=np.float32), lengths=lengths)


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("lengths", [["5", "3"], "53", [b"5", b"3"], [True, False],
                                     np.array([5, 3], dtype=complex), [None, 3],
                                     [[5], [3, 3]], {"a": 1}],
                         ids=["str-list", "str", "bytes", "bool", "complex", "None", "ragged",
                              "dict"])
def test_lengths_not_integers(cls, lengths):
    with pytest.raises(TypeError, match="lengths must be"):
        _layer(cls)(np.zeros((5, 2, 3), dtype=np.float32), lengths=lengths)


def test_lengths_whole_floats_are_accepted():
    m = _layer(rnnc.GRU)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out_f, h_f = m(x, lengths=np.array([5.0, 2.0]))
    out_i, h_i = m(x, lengths=[5, 2])
    np.testing.assert_array_equal(out_f, out_i)
    np.testing.assert_array_equal(h_f, h_i)


# ==========================================================================================
# Calls: Bidirectional
# ==========================================================================================

@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("hx", [
    pytest.param(lambda h: h[0], id="array"),
    pytest.param(lambda h: np.stack([h[0], h[0]]), id="stacked-array"),
    pytest.param(lambda h: (h,), id="1-tuple"),
    pytest.param(lambda h: (h, h, h), id="3-tuple"),
    pytest.param(lambda h: 1.0, id="float"),
])
def test_bidirectional_hx_not_a_pair(cls, hx):
    bi = rnnc.Bidirectional(_layer(cls))
    h = (np.zeros((1, 2, 4), dtype=np.float32),) * 2   # only h[0] is used for single arrays
    h = _hx(cls, (1, 2, 4)) if cls is rnnc.LSTM else h
    with pytest.raises(TypeError, match=r"hx for Bidirectional must be None or a pair"):
        bi(np.zeros((5, 2, 3), dtype=np.float32), hx(h))


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_bidirectional_hx_halves_are_checked(cls):
    bi = rnnc.Bidirectional(_layer(cls))
    good, bad = _hx(cls, (1, 2, 4)), _hx(cls, (1, 3, 4))
    name = "h_0" if cls is rnnc.LSTM else "hx"
    x = np.zeros((5, 2, 3), dtype=np.float32)
    for hx in [(good, bad), (bad, good)]:
        with pytest.raises(ValueError, match=rf"{name} must have shape \(1, 2, 4\), "
                                             rf"got \(1, 3, 4\)"):
            bi(x, hx)
    bi(x, (good, good))


@pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)
def test_bidirectional_input_and_lengths_are_checked(cls):
    bi = rnnc.Bidirectional(_layer(cls), merge_mode="sum")
    with pytest.raises(ValueError, match=r"input must have 3 features"):
        bi(np.zeros((5, 2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"input must have a real numeric dtype"):
        bi(np.zeros((5, 2, 3), dtype=complex))
    with pytest.raises(ValueError, match=r"input must be 2-D"):
        bi(np.zeros(3))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        bi(np.zeros((5, 2, 3), dtype=np.float32), lengths=[5, 6])
    with pytest.raises(TypeError, match=r"lengths must be integers"):
        bi(np.zeros((5, 2, 3), dtype=np.float32), lengths=[5, 1.5])


# ==========================================================================================
# Calls: cells
# ==========================================================================================

@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("x", [np.float32(1.0), 2.0, np.zeros((2, 2, 3)), np.zeros((1, 1, 1, 3))],
                         ids=["np-scalar", "float", "3-D", "4-D"])
def test_cell_input_wrong_ndim(cls, x):
    nd = np.ndim(x)
    with pytest.raises(ValueError, match=rf"input must be 1-D \(3,\) or 2-D \(B, 3\), got "
                                         rf"{nd}-D with shape {esc(np.shape(x))}"):
        cls(3, 4)(x)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: rnnc.RNNCell(1, 4), id="RNNCell"),
    pytest.param(lambda: rnnc.GRUCell(1, 4), id="GRUCell"),
    pytest.param(lambda: rnnc.LSTMCell(1, 4), id="LSTMCell"),
    pytest.param(lambda: rnnc.Linear(1, 4), id="Linear"),
])
@pytest.mark.parametrize("scalar", [2.0, np.float32(2.0), np.array(2.0)],
                         ids=["float", "np-scalar", "0-D-array"])
def test_scalar_input_is_refused_even_with_one_feature(make, scalar):
    """A 0-D input is not a 1-feature vector: with input_size=1 it must still be an error
    (rnnc.reference.Linear and torch refuse it), not silently read as shape (1,)."""
    with pytest.raises(ValueError, match=r"input .*got .*shape \(\)"):
        make()(scalar)


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
def test_cell_scalar_state_is_refused_with_hidden_size_one(cls):
    cell = cls(3, 1)
    x = np.ones(3, dtype=np.float32)
    hx = (0.5, np.zeros(1)) if cls is rnnc.LSTMCell else 0.5
    name = "h" if cls is rnnc.LSTMCell else "hx"
    with pytest.raises(ValueError, match=rf"{name} must have shape \(1,\), got \(\)"):
        cell(x, hx)


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("shape", [(2, 4), (2, 2), (0, 5), (4,), (1,), (0,)])
def test_cell_input_wrong_feature_size(cls, shape):
    with pytest.raises(ValueError, match=rf"input must have 3 features \(input_size\) in its "
                                         rf"last axis, got shape {esc(shape)}"):
        cls(3, 4)(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("make,dtype_name", BAD_DTYPE_INPUTS[:6])
def test_cell_input_non_real_dtype(cls, make, dtype_name):
    with pytest.raises(TypeError, match=rf"input must have a real numeric dtype .*got "
                                        rf"{re.escape(dtype_name)}"):
        cls(3, 4)(make((2, 3)))


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
def test_cell_input_ragged(cls):
    with pytest.raises(TypeError, match="input must be a real numeric array"):
        cls(3, 4)([[0.0, 0.0, 0.0], [0.0]])


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_cell_state_wrong_shape(cls, batched):
    cell = cls(3, 4)
    x = np.zeros((2, 3) if batched else (3,), dtype=np.float32)
    good = (2, 4) if batched else (4,)
    bads = [(2, 5), (3, 4), (4,), (1, 2, 4), (1, 4)] if batched else [(5,), (1, 4), (2, 4)]
    for bad in bads:
        if cls is rnnc.LSTMCell:
            with pytest.raises(ValueError, match=rf"h must have shape {esc(good)}, "
                                                 rf"got {esc(bad)}"):
                cell(x, (np.zeros(bad), np.zeros(good)))
            with pytest.raises(ValueError, match=rf"c must have shape {esc(good)}, "
                                                 rf"got {esc(bad)}"):
                cell(x, (np.zeros(good), np.zeros(bad)))
        else:
            with pytest.raises(ValueError, match=rf"hx must have shape {esc(good)}, "
                                                 rf"got {esc(bad)}"):
                cell(x, np.zeros(bad))
    cell(x, (np.zeros(good), np.zeros(good)) if cls is rnnc.LSTMCell else np.zeros(good))


@pytest.mark.parametrize("cls", CELLS, ids=CELL_IDS)
def test_cell_state_non_real_dtype(cls):
    cell = cls(3, 4)
    x = np.zeros((2, 3), dtype=np.float32)
    z = np.zeros((2, 4))
    if cls is rnnc.LSTMCell:
        with pytest.raises(TypeError, match="h must have a real numeric dtype"):
            cell(x, (z.astype(complex), z))
        with pytest.raises(TypeError, match="c must have a real numeric dtype"):
            cell(x, (z, z.astype(object)))
    else:
        with pytest.raises(TypeError, match="hx must have a real numeric dtype"):
            cell(x, z.astype(bool))


@pytest.mark.parametrize("hx", [
    pytest.param(lambda h: h, id="array"),
    pytest.param(lambda h: np.stack([h, h]), id="stacked-array"),
    pytest.param(lambda h: (h,), id="1-tuple"),
    pytest.param(lambda h: (h, h, h), id="3-tuple"),
])
def test_lstm_cell_hx_not_a_pair(hx):
    with pytest.raises(TypeError, match=r"hx for LSTMCell must be a tuple \(h, c\)"):
        rnnc.LSTMCell(3, 4)(np.zeros((2, 3), dtype=np.float32), hx(np.zeros((2, 4))))


# ==========================================================================================
# Calls: Linear
# ==========================================================================================

@pytest.mark.parametrize("shape", [(), (4,), (2, 4), (2, 3, 2), (5, 0), (0,)])
def test_linear_input_wrong_feature_size(shape):
    with pytest.raises(ValueError, match=rf"input must have 3 features \(in_features\) in its "
                                         rf"last axis, got shape {esc(shape)}"):
        rnnc.Linear(3, 4)(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("make,dtype_name", BAD_DTYPE_INPUTS[:6])
def test_linear_input_non_real_dtype(make, dtype_name):
    with pytest.raises(TypeError, match=rf"input must have a real numeric dtype .*got "
                                        rf"{re.escape(dtype_name)}"):
        rnnc.Linear(3, 4)(make((2, 3)))


def test_linear_input_ragged():
    with pytest.raises(TypeError, match="input must be a real numeric array"):
        rnnc.Linear(3, 4)([[0.0, 0.0, 0.0], [0.0]])


# ==========================================================================================
# load_state_dict and parameter assignment
# ==========================================================================================

def _bad_value_cases():
    return [
        pytest.param(lambda shape: "abc", "expected a real numeric dtype", id="str"),
        pytest.param(lambda shape: None, "expected a real numeric dtype", id="None"),
        pytest.param(lambda shape: np.zeros(shape, dtype=complex), "expected a real numeric dtype",
                     id="complex"),
        pytest.param(lambda shape: np.zeros(shape, dtype=bool), "expected a real numeric dtype",
                     id="bool"),
        pytest.param(lambda shape: np.zeros(shape, dtype=object),
                     "expected a real numeric dtype", id="object"),
        pytest.param(lambda shape: [[1.0], [1.0, 2.0]], "cannot convert to an array",
                     id="ragged-list"),
    ]


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_missing_key(make):
    m = make()
    sd = m.state_dict()
    key = list(sd)[-1]
    del sd[key]
    with pytest.raises(ValueError, match=rf"missing key '{key}'"):
        m.load_state_dict(sd)


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_unexpected_key(make):
    m = make()
    sd = m.state_dict()
    sd["weight_ih_l9"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected key 'weight_ih_l9'"):
        m.load_state_dict(sd)


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_wrong_shape(make):
    m = make()
    sd = m.state_dict()
    key = list(sd)[0]
    shape = sd[key].shape
    bad = shape[:-1] + (shape[-1] + 1,)
    sd[key] = np.zeros(bad)
    with pytest.raises(ValueError, match=rf"'{key}': expected shape {esc(shape)}, "
                                         rf"got {esc(bad)}"):
        m.load_state_dict(sd)
    sd[key] = np.zeros(shape).T if len(shape) == 2 else np.zeros(shape + (1,))
    with pytest.raises(ValueError, match=rf"'{key}': expected shape {esc(shape)}"):
        m.load_state_dict(sd)


@pytest.mark.parametrize("make", _all_modules())
@pytest.mark.parametrize("bad_value,message", _bad_value_cases())
def test_load_state_dict_non_numeric_value(make, bad_value, message):
    m = make()
    sd = m.state_dict()
    key = list(sd)[0]
    sd[key] = bad_value(sd[key].shape)
    with pytest.raises(ValueError, match=rf"'{key}': {message}"):
        m.load_state_dict(sd)


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_reports_all_problems_at_once(make):
    m = make()
    sd = m.state_dict()
    keys = list(sd)
    missing, wrong = keys[-1], keys[0]
    del sd[missing]
    sd["bogus.key"] = np.zeros(2)
    wrong_shape = sd[wrong].shape + (2,)
    sd[wrong] = np.zeros(wrong_shape)
    if len(keys) > 2:
        sd[keys[1]] = "not a number"
    with pytest.raises(ValueError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    assert f"missing key '{missing}'" in msg
    assert "unexpected key 'bogus.key'" in msg
    assert f"'{wrong}': expected shape {m.state_dict()[wrong].shape}, got {wrong_shape}" in msg
    if len(keys) > 2:
        assert f"'{keys[1]}': expected a real numeric dtype" in msg
    assert type(m).__name__ in msg


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_lists_every_missing_key(make):
    m = make()
    with pytest.raises(ValueError) as info:
        m.load_state_dict({})
    for key in m.state_dict():
        assert f"missing key '{key}'" in str(info.value)


@pytest.mark.parametrize("make", _all_modules())
def test_load_state_dict_non_strict(make):
    m = make()
    sd = m.state_dict()
    keys = list(sd)
    new = {keys[0]: sd[keys[0]] + 1, "unexpected": np.zeros(7)}   # everything else missing
    m.load_state_dict(new, strict=False)
    params = dict(m.named_parameters())
    np.testing.assert_array_equal(params[keys[0]], (sd[keys[0]] + 1).astype(m.dtype))
    for k in keys[1:]:
        np.testing.assert_array_equal(params[k], sd[k])
    # ... but a wrong shape is still an error, and the load is all-or-nothing.
    before = m.state_dict()
    bad = {keys[0]: sd[keys[0]] - 1, keys[-1]: np.zeros(sd[keys[-1]].shape + (1,))}
    with pytest.raises(ValueError, match=rf"'{keys[-1]}': expected shape"):
        m.load_state_dict(bad, strict=False)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match=rf"'{keys[0]}': expected a real numeric dtype"):
        m.load_state_dict({keys[0]: "x"}, strict=False)


def _output(m):
    """The module's output on a fixed input (to check nothing changed)."""
    rng = np.random.default_rng(0)
    n_in = getattr(m, "input_size", None) or m.in_features
    if isinstance(m, (rnnc.RNN, rnnc.GRU, rnnc.LSTM)):
        out = m(rng.standard_normal((4, 2, n_in)))
        return out[0]
    out = m(rng.standard_normal((2, n_in)))
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("make", _all_modules())
def test_failed_load_changes_nothing(make):
    m = make()
    before = m.state_dict()
    arrays = dict(m.named_parameters())
    out_before = _output(m)
    sd = {k: v + 1 for k, v in before.items()}   # valid new values for every key ...
    last = list(sd)[-1]
    sd[last] = np.zeros(before[last].shape + (1,))   # ... except one
    with pytest.raises(ValueError):
        m.load_state_dict(sd)
    with pytest.raises(ValueError):
        m.load_state_dict({**{k: v + 1 for k, v in before.items()}, "extra": 0})
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
        assert dict(m.named_parameters())[k] is arrays[k]   # not even replaced by a copy
    np.testing.assert_array_equal(_output(m), out_before)


@pytest.mark.parametrize("make", _all_modules())
def test_parameter_assignment_wrong_shape(make):
    m = make()
    name, arr = m.named_parameters()[0]
    before = arr.copy()
    with pytest.raises(ValueError, match=rf"'{name}': expected shape {esc(arr.shape)}, "
                                         rf"got {esc(arr.shape + (1,))}"):
        setattr(m, name, np.zeros(arr.shape + (1,)))
    with pytest.raises(ValueError, match=rf"'{name}': expected shape {esc(arr.shape)}"):
        setattr(m, name, np.zeros(arr.shape[:-1]))
    with pytest.raises(ValueError, match=rf"'{name}': expected a real numeric dtype"):
        setattr(m, name, np.zeros(arr.shape, dtype=complex))
    with pytest.raises(ValueError, match=rf"'{name}'"):
        setattr(m, name, "hello")
    assert getattr(m, name) is arr
    np.testing.assert_array_equal(arr, before)
    # The right shape (any real dtype, any layout) is converted and stored as a copy.
    new = np.asfortranarray(np.ones(arr.shape, dtype=np.int64))
    setattr(m, name, new)
    got = getattr(m, name)
    assert got.dtype == m.dtype and got.flags.c_contiguous and got is not new
    np.testing.assert_array_equal(got, 1)


def test_parameters_are_attributes_under_their_torch_names():
    """``Linear.bias`` is the bias vector (as torch.nn.Linear.bias), not the constructor flag:
    every parameter name must resolve to the live parameter array."""
    for m in [rnnc.Linear(3, 4, seed=0), rnnc.LSTM(3, 4, seed=0), rnnc.GRUCell(3, 4, seed=0)]:
        for name, arr in m.named_parameters():
            assert getattr(m, name) is arr, f"{type(m).__name__}.{name}"
    assert rnnc.Linear(3, 4, seed=0).bias.shape == (4,)


@pytest.mark.parametrize("bad", [[("weight", np.zeros((4, 3)))], "weight", 3, None])
def test_load_state_dict_not_a_mapping(bad):
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        rnnc.Linear(3, 4).load_state_dict(bad)


def _bi(**kw):
    return rnnc.Bidirectional(rnnc.LSTM(3, 4, seed=0, **kw))


def test_bidirectional_load_state_dict_reports_all_problems():
    bi = _bi()
    sd = bi.state_dict()
    del sd["forward_layer.bias_hh_l0"]
    sd["middle_layer.weight_ih_l0"] = np.zeros((16, 3))
    sd["backward_layer.bogus"] = np.zeros(1)
    sd["backward_layer.weight_hh_l0"] = np.zeros((16, 5))
    sd["forward_layer.weight_ih_l0"] = "text"
    with pytest.raises(ValueError) as info:
        bi.load_state_dict(sd)
    msg = str(info.value)
    assert "missing key 'bias_hh_l0'" in msg
    assert "unexpected key 'middle_layer.weight_ih_l0'" in msg
    assert "unexpected key 'bogus'" in msg
    assert "'weight_hh_l0': expected shape (16, 4), got (16, 5)" in msg
    assert "'weight_ih_l0': expected a real numeric dtype" in msg
    assert "forward_layer" in msg and "backward_layer" in msg


def test_bidirectional_failed_load_changes_neither_half():
    bi = _bi()
    before = bi.state_dict()
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    out_before = bi(x)[0]
    sd = {k: v + 1 for k, v in before.items()}          # forward half valid ...
    sd["backward_layer.weight_hr_l0"] = np.zeros(2)     # ... backward half has an extra key
    sd["backward_layer.bias_ih_l0"] = np.zeros(3)       # ... and a wrong shape
    with pytest.raises(ValueError, match=r"backward_layer.*'bias_ih_l0': expected shape"):
        bi.load_state_dict(sd)
    for k, v in bi.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_array_equal(bi(x)[0], out_before)
    # strict=False still rejects the wrong shape, ignores the extra key.
    with pytest.raises(ValueError, match=r"'bias_ih_l0': expected shape"):
        bi.load_state_dict(sd, strict=False)
    for k, v in bi.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    del sd["backward_layer.bias_ih_l0"]
    bi.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(bi.state_dict()["backward_layer.bias_ih_l0"],
                                  before["backward_layer.bias_ih_l0"])
    np.testing.assert_array_equal(bi.state_dict()["forward_layer.bias_ih_l0"],
                                  before["forward_layer.bias_ih_l0"] + 1)


def test_bidirectional_load_state_dict_not_a_mapping():
    with pytest.raises((TypeError, ValueError), match="state_dict"):
        _bi().load_state_dict([1, 2])


# ==========================================================================================
# train() / eval()
# ==========================================================================================

def _all_modules_and_bidirectional():
    return _all_modules() + [
        pytest.param(lambda: rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0)), id="Bidirectional")]


@pytest.mark.parametrize("make", _all_modules_and_bidirectional())
def test_train_mode(make):
    """train() either refuses clearly (NotImplementedError, while training is not implemented)
    or switches to training mode; it never half-switches."""
    m = make()
    try:
        result = m.train()
    except NotImplementedError as exc:
        assert "training" in str(exc)
        assert m.training is False
        with pytest.raises(NotImplementedError, match="training"):
            m.train(True)
        assert m.training is False
    else:
        assert result is m and m.training is True
        assert m.eval() is m and m.training is False


@pytest.mark.parametrize("make", _all_modules_and_bidirectional())
def test_eval_works(make):
    m = make()
    assert m.eval() is m
    assert m.training is False
    assert m.train(False) is m
    assert m.training is False
