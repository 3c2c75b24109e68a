"""Keras 3 -> rnnc: ``convert`` a Keras recurrent layer or ``keras.Sequential`` model.

``convert(keras.layers.GRU(...))`` returns an ``rnnc.GRU`` holding the layer's weights, and so
on for ``SimpleRNN`` (``rnnc.RNN``), ``LSTM``, ``Bidirectional`` (``rnnc.Bidirectional``) and
``Dense`` (``rnnc.Linear``); ``convert(keras.Sequential([...]))`` an ``rnnc.Sequential`` (or a
``MaskedSequential`` when the model starts with ``Masking``) whose output is the Keras model's.

Every attribute of the converted layers has one entry in ``ATTRIBUTES`` saying what it sets in
rnnc, that it only matters in training (ignored), or that rnnc cannot compute its value yet
(``NotSupportedError``, a ``ValueError`` naming the layer, the attribute and the value). The
activations rnnc's cells compute are in ``ACTIVATIONS``: every Keras name of rnnc's cell options
(tanh, sigmoid, relu, hard_sigmoid, linear, softsign, elu, softplus).

``import rnnc`` does not import this module, and this module imports Keras only inside
``convert``: converted models run, save and load (after ``import rnnc.keras``) without Keras.
"""

import numpy as np

from rnnc import io as _io
from rnnc._cell_options import KERAS as _KERAS_ACTIVATIONS
from rnnc._module import ParameterFree
from rnnc._validation import as_real_array, check_bool, check_choice, check_lengths
from rnnc.bidirectional import Bidirectional
from rnnc.linear import Linear
from rnnc.pooling import Pool
from rnnc.recurrent import GRU, LSTM, RNN
from rnnc.sequential import Sequential

__all__ = ["convert", "mask_lengths", "KerasOutputs", "MaskedSequential", "NotSupportedError",
           "ATTRIBUTES", "ACTIVATIONS", "DENSE_ACTIVATIONS"]

MASK_OUTPUTS = ("keras", "zeros")

# Keras layer class -> rnnc mode, and where Keras' gate blocks sit in PyTorch's order: block j
# of rnnc's weights is block KERAS_GATES[mode][j] of Keras'. Keras GRU is (z, r, h), PyTorch
# (r, z, n); Keras LSTM (i, f, c, o) is PyTorch's (i, f, g, o).
MODES = {"SimpleRNN": "RNN", "GRU": "GRU", "LSTM": "LSTM"}
KERAS_GATES = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 1, 2, 3]}
_CLASSES = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}

# The activations rnnc's cells compute: Keras name -> rnnc constructor arguments (all of
# Keras' names rnnc's cell options know, rnnc/_cell_options.py; Keras 3's hard_sigmoid is
# relu6(x + 3) / 6 there too).
ACTIVATIONS = {
    "RNN": {"activation": {k: {"nonlinearity": k} for k in _KERAS_ACTIVATIONS}},
    "GRU": {"activation": {k: {"activation": k} for k in _KERAS_ACTIVATIONS},
            "recurrent_activation": {k: {"recurrent_activation": k}
                                     for k in _KERAS_ACTIVATIONS}},
}
ACTIVATIONS["LSTM"] = ACTIVATIONS["GRU"]
# Dense's activation -> rnnc.Linear's ("linear" is none).
DENSE_ACTIVATIONS = {"linear": None, "tanh": "tanh", "relu": "relu", "sigmoid": "sigmoid",
                     "softmax": "softmax"}


class NotSupportedError(ValueError):
    """A Keras layer, attribute or value that rnnc cannot compute (yet)."""


def _refuse(where, name, value, why="is not supported by rnnc yet"):
    raise NotSupportedError(f"{where}: {name}={value!r} {why}")


# -- the attribute table ------------------------------------------------------------------------
# layer kind ("RNN", "GRU", "LSTM" for SimpleRNN, GRU, LSTM; "Dense") -> attribute name ->
# function(where, mode, value, spec) that sets rnnc arguments (or what convert needs) in
# ``spec``, or raises NotSupportedError. An attribute missing here is refused.
def _ignored(where, mode, value, spec):
    """Training only (initialisers, regularisers, constraints, dropout) or bookkeeping: an
    inference model computes the same without it."""


def _units(where, mode, value, spec):
    spec["hidden_size"] = int(value)


def _activation(name):
    def handle(where, mode, value, spec):
        table = ACTIVATIONS[mode][name]
        if not isinstance(value, str) or value not in table:
            _refuse(where, name, value, f"is not supported by rnnc yet (it computes "
                                        f"{' or '.join(map(repr, table))})")
        spec.update(table[value])
    return handle


def _use_bias(where, mode, value, spec):
    spec["bias"] = bool(value)


def _reset_after(where, mode, value, spec):
    spec["reset_after"] = bool(value)


def _go_backwards(where, mode, value, spec):
    spec["reverse"] = bool(value)


def _stateful(where, mode, value, spec):
    if value:
        _refuse(where, "stateful", value, "is not supported: rnnc's layers take the initial "
                "state as hx (and layer.stream() carries it step by step)")


def _flag(name):
    def handle(where, mode, value, spec):
        spec[name] = bool(value)
    return handle


_COMMON = {
    "name": _ignored, "trainable": _ignored, "dtype": _ignored,    # dtype: see _dtype_of
    "units": _units, "activation": _activation("activation"), "use_bias": _use_bias,
    "return_sequences": _flag("return_sequences"), "return_state": _flag("return_state"),
    "go_backwards": _go_backwards, "stateful": _stateful,
    "unroll": _ignored,                         # the same computation, unrolled
    "zero_output_for_mask": _flag("zero_output_for_mask"),
    "dropout": _ignored, "recurrent_dropout": _ignored,     # training only
    "kernel_initializer": _ignored, "recurrent_initializer": _ignored,
    "bias_initializer": _ignored, "kernel_regularizer": _ignored,
    "recurrent_regularizer": _ignored, "bias_regularizer": _ignored,
    "activity_regularizer": _ignored, "kernel_constraint": _ignored,
    "recurrent_constraint": _ignored, "bias_constraint": _ignored, "seed": _ignored,
}
ATTRIBUTES = {
    "RNN": dict(_COMMON),
    "GRU": dict(_COMMON, recurrent_activation=_activation("recurrent_activation"),
                reset_after=_reset_after, use_cudnn=_ignored),
    "LSTM": dict(_COMMON, recurrent_activation=_activation("recurrent_activation"),
                 unit_forget_bias=_ignored, use_cudnn=_ignored),
}


def _dense_activation(where, mode, value, spec):
    if not isinstance(value, str) or value not in DENSE_ACTIVATIONS:
        _refuse(where, "activation", value, "is not supported by rnnc.Linear (it computes "
                f"{', '.join(map(repr, DENSE_ACTIVATIONS))})")
    spec["activation"] = DENSE_ACTIVATIONS[value]


def _none_or_refused(name):
    def handle(where, mode, value, spec):
        if value:
            _refuse(where, name, value)
    return handle


ATTRIBUTES["Dense"] = {
    "name": _ignored, "trainable": _ignored, "dtype": _ignored, "units": _ignored,
    "activation": _dense_activation, "use_bias": _use_bias,
    "kernel_initializer": _ignored, "bias_initializer": _ignored,
    "kernel_regularizer": _ignored, "bias_regularizer": _ignored,
    "activity_regularizer": _ignored, "kernel_constraint": _ignored,
    "bias_constraint": _ignored, "quantization_config": _none_or_refused("quantization_config"),
    "lora_rank": _none_or_refused("lora_rank"), "lora_alpha": _ignored,
}


def _check_config(where, mode, config, spec):
    table = ATTRIBUTES[mode]
    for name, value in config.items():
        if name not in table:
            raise NotSupportedError(f"{where}: attribute {name!r} (got {value!r}) is not one "
                                    "rnnc.keras knows, so it cannot say the conversion is "
                                    "exact")
        table[name](where, mode, value, spec)
    return spec


def recurrent_spec(where, mode, config):
    """rnnc's arguments (and Keras' output flags) for a Keras recurrent layer's config.

    Returns a dict with hidden_size, bias, reverse (go_backwards), nonlinearity (RNN),
    activation and recurrent_activation (GRU, LSTM),
    reset_after (GRU), return_sequences, return_state, zero_output_for_mask. Raises
    NotSupportedError naming an attribute whose value rnnc cannot compute, or one that is not
    in the table (a Keras release newer than the table: its meaning is unknown).
    """
    spec = {"bias": True, "reverse": False, "return_sequences": False, "return_state": False,
            "zero_output_for_mask": False}
    table = ATTRIBUTES[mode]
    _check_config(where, mode, config, spec)
    for name in ("activation", "recurrent_activation"):
        if name in table and name not in config:     # Keras' defaults
            table[name](where, mode, "tanh" if name == "activation" else "sigmoid", spec)
    return spec


# -- Keras-side helpers --------------------------------------------------------------------------
def _keras():
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("rnnc.keras.convert needs Keras 3: pip install 'rnnc[keras]' (and a "
                          "backend, e.g. torch, with KERAS_BACKEND set)") from exc
    if not str(keras.__version__).startswith("3"):  # pragma: no cover
        raise ImportError(f"rnnc.keras.convert needs Keras 3, found {keras.__version__}")
    return keras


def _where(layer):
    return f"{type(layer).__name__} {layer.name!r}"


def _dtype_of(layer):
    policy = layer.dtype_policy
    variable, compute = str(policy.variable_dtype), str(policy.compute_dtype)
    if variable != compute or variable not in ("float32", "float64"):
        _refuse(_where(layer), "dtype", policy.name, "is not supported: rnnc computes in "
                "float32 or float64, with weights of the same dtype")
    return np.dtype(variable)


def _weights(layer, count):
    if not layer.built:
        raise ValueError(f"{_where(layer)} is not built (it has no weights yet): call it on "
                         "data or build() it first")
    weights = [np.asarray(w) for w in layer.get_weights()]
    if len(weights) != count:
        raise ValueError(f"{_where(layer)} has {len(weights)} weight arrays, expected {count}")
    return weights


def _reorder(array, mode, axis):
    blocks = np.split(array, len(KERAS_GATES[mode]), axis=axis)
    return np.concatenate([blocks[j] for j in KERAS_GATES[mode]], axis=axis)


def _recurrent(layer, mode, dtype, where, *, forwards=False):
    """(rnnc layer, spec) for a Keras SimpleRNN / GRU / LSTM; ``forwards``: the backward
    layer of a Bidirectional, which rnnc.Bidirectional reverses itself."""
    spec = recurrent_spec(where, mode, layer.get_config())
    bias = spec["bias"]
    kernel, recurrent, *rest = _weights(layer, 3 if bias else 2)
    H = spec["hidden_size"]
    G = len(KERAS_GATES[mode])
    if kernel.ndim != 2 or kernel.shape[1] != G * H or recurrent.shape != (H, G * H):
        raise ValueError(f"{where}: weights of shapes {kernel.shape}, {recurrent.shape} do "
                         f"not fit {G} gates of {H} units")
    kwargs = {k: spec[k] for k in ("nonlinearity", "reset_after", "activation",
                                   "recurrent_activation") if k in spec}
    # A fixed seed: the drawn values are overwritten, rnnc's global seed sequence untouched.
    module = _CLASSES[mode](kernel.shape[0], H, bias=bias, batch_first=True,
                            reverse=spec["reverse"] and not forwards, dtype=dtype, seed=0,
                            **kwargs)
    sd = {"weight_ih_l0": _reorder(kernel, mode, 1).T,
          "weight_hh_l0": _reorder(recurrent, mode, 1).T}
    if bias:
        b = rest[0]
        zeros = np.zeros(G * H, dtype=b.dtype)
        if mode == "GRU" and spec["reset_after"]:
            b_ih, b_hh = b[0], b[1]         # (2, 3 * units): input and recurrent biases
        else:
            b_ih, b_hh = b, zeros           # one bias; rnnc's second stays 0
        sd["bias_ih_l0"] = _reorder(b_ih, mode, 0)
        sd["bias_hh_l0"] = _reorder(b_hh, mode, 0)
    module.load_state_dict({k: np.ascontiguousarray(v, dtype=dtype) for k, v in sd.items()})
    return module, spec


def _mode_of(keras, layer):
    for name, mode in MODES.items():
        if type(layer) is getattr(keras.layers, name):
            return mode
    return None


def _bidirectional(keras, layer, dtype):
    where = _where(layer)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    mode = _mode_of(keras, fwd)
    if mode is None or _mode_of(keras, bwd) != mode:
        raise NotSupportedError(f"{where}: wraps {type(fwd).__name__} and "
                                f"{type(bwd).__name__}; rnnc converts SimpleRNN, GRU and "
                                "LSTM, the same class in both directions")
    if fwd.go_backwards:
        _refuse(where, "layer.go_backwards", True, "is not supported: the wrapped layer must "
                "run forwards (the backward layer is the one with go_backwards=True)")
    for part in (fwd, bwd):
        if _dtype_of(part) != dtype:
            _refuse(where, "dtype", dtype.name, f"differs from its layer {part.name!r}'s "
                    f"{_dtype_of(part).name} (Keras casts between them): give the "
                    "Bidirectional and its layer one dtype")
    f, f_spec = _recurrent(fwd, mode, dtype, f"{where} forward layer {fwd.name!r}")
    b, b_spec = _recurrent(bwd, mode, dtype, f"{where} backward layer {bwd.name!r}",
                           forwards=True)
    if f._config() != b._config():
        raise NotSupportedError(f"{where}: the backward layer ({b!r}) is not configured like "
                                f"the forward layer ({f!r}), which rnnc.Bidirectional needs")
    spec = {"merge_mode": layer.merge_mode, "return_sequences": f_spec["return_sequences"],
            "return_state": f_spec["return_state"]}
    return Bidirectional(f, merge_mode=layer.merge_mode, backward_layer=b), spec


def _dense(layer, dtype):
    where = _where(layer)
    spec = _check_config(where, "Dense", layer.get_config(),
                         {"bias": True, "activation": None})
    bias = spec["bias"]
    kernel, *rest = _weights(layer, 2 if bias else 1)
    if kernel.ndim != 2:
        _refuse(where, "kernel shape", kernel.shape, "is not supported (rnnc.Linear applies a "
                "2-D kernel over the last axis)")
    module = Linear(kernel.shape[0], kernel.shape[1], bias=bias,
                    activation=spec["activation"], dtype=dtype, seed=0)
    sd = {"weight": np.ascontiguousarray(kernel.T, dtype=dtype)}
    if bias:
        sd["bias"] = np.asarray(rest[0], dtype=dtype)
    module.load_state_dict(sd)
    return module


# -- convert -------------------------------------------------------------------------------------
def convert(layer_or_model, *, mask_outputs="keras"):
    """An rnnc module computing what a Keras 3 layer or ``keras.Sequential`` model computes.

    Parameters
    ----------
    layer_or_model : a built Keras layer or model
        - ``SimpleRNN`` / ``GRU`` / ``LSTM`` -> ``rnnc.RNN`` / ``rnnc.GRU`` / ``rnnc.LSTM``
          (one layer, ``batch_first=True``, the Keras dtype). GRU ``reset_after`` True or
          False maps to rnnc's ``reset_after``; ``go_backwards=True`` to ``reverse=True``.
        - ``Bidirectional`` -> ``rnnc.Bidirectional`` with the same ``merge_mode`` (concat,
          sum, mul, ave or None) and the two layers' own weights.
        - ``Dense`` -> ``rnnc.Linear`` (activation linear, tanh, relu, sigmoid or softmax).
        - ``keras.Sequential`` of those, with ``Masking`` first and ``Dropout`` (an identity
          at inference) anywhere -> ``rnnc.Sequential`` (a ``MaskedSequential`` with
          Masking); a recurrent layer with ``return_sequences=False`` is followed by
          ``rnnc.Pool("state")``, a ``go_backwards`` one by ``KerasOutputs`` (see below).
    mask_outputs : 'keras' (default) or 'zeros'
        What a converted Sequential with ``Masking`` gives at padded (masked) steps after a
        recurrent layer with ``return_sequences=True``. 'keras': Keras' values -- a
        forward layer repeats each sequence's last valid output (a ``KerasOutputs`` layer
        after it does that; with ``zero_output_for_mask=True``, and inside
        ``Bidirectional``, Keras gives 0 and so does rnnc), so every output equals the
        model's. 'zeros': rnnc's own 0 at padded steps (layers after it, such as ``Dense``,
        compute on those zeros).

    Returns
    -------
    The rnnc module. A recurrent layer is called ``m(x, hx=None, lengths=None)`` with x of
    shape (B, T, features) and returns ``(output, state)``: ``output`` (B, T, D*units) is
    Keras' output with ``return_sequences=True``, except for ``go_backwards=True``, where
    rnnc's ``output[:, t]`` is aligned with ``x[:, t]`` and Keras' is ``output[:, ::-1]``
    (Keras returns the steps in the order it read them). ``state`` is rnnc's ``h_n``
    (``(h_n, c_n)`` for LSTM) with a leading axis of 1: Keras' ``return_state`` values are
    ``h_n[0]`` (and ``c_n[0]``), and its output with ``return_sequences=False`` is
    ``h_n[0]`` too (for a Bidirectional, the merge of its two states). A Keras mask of
    right-padded sequences is ``lengths=mask_lengths(x)``: outputs at padded steps are 0
    (Keras repeats the last valid output, outside a Bidirectional) and the states are taken
    at each sequence's last valid step, as Keras'. The flags ``return_sequences`` and
    ``return_state`` only matter to a converted Sequential.

    Ignored, as they do nothing at inference: the initialisers, regularisers, constraints,
    ``dropout`` and ``recurrent_dropout`` (rnnc's ``dropout`` is 0), ``unroll``,
    ``trainable``. Refused with a ``NotSupportedError`` (a ``ValueError``) naming the layer,
    the attribute and its value: other activations, ``stateful=True``, a dtype policy other
    than float32 or float64 (e.g. mixed_float16), Keras attributes the table does not know,
    and other layers; in a Sequential also ``return_state=True``, a ``Bidirectional`` with
    ``merge_mode=None``, or one with ``return_sequences=False`` and a merge other than
    concat, and ``Masking`` anywhere but first.

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras
    >>> import keras, numpy as np, rnnc.keras
    >>> layer = keras.layers.GRU(8, return_sequences=True)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> gru = rnnc.keras.convert(layer)
    >>> gru
    GRU(3, 8, batch_first=True, dtype='float32')
    >>> out, h_n = gru(x)
    >>> bool(np.allclose(out, y, atol=1e-6)), bool(np.allclose(h_n[0], y[:, -1], atol=1e-6))
    (True, True)
    """
    keras = _keras()
    mask_outputs = check_choice(mask_outputs, "mask_outputs", MASK_OUTPUTS)
    obj = layer_or_model
    if isinstance(obj, keras.Sequential):
        return _sequential(keras, obj, mask_outputs)
    if isinstance(obj, keras.Model):
        raise NotSupportedError(f"{type(obj).__name__} {obj.name!r}: rnnc.keras.convert "
                                "converts keras.Sequential models and single layers, not "
                                "functional or subclassed models (convert their layers)")
    if not isinstance(obj, keras.layers.Layer):
        raise TypeError(f"convert takes a Keras layer or keras.Sequential model, got "
                        f"{type(obj).__module__}.{type(obj).__name__}")
    return _layer(keras, obj)[0]


def _layer(keras, layer):
    """(rnnc module, spec or None) for one Keras layer."""
    mode = _mode_of(keras, layer)
    if mode is not None:
        return _recurrent(layer, mode, _dtype_of(layer), _where(layer))
    if type(layer) is keras.layers.Bidirectional:
        return _bidirectional(keras, layer, _dtype_of(layer))
    if type(layer) is keras.layers.Dense:
        return _dense(layer, _dtype_of(layer)), None
    if type(layer) is keras.layers.Masking:
        raise NotSupportedError(f"{_where(layer)}: a Masking layer alone has no rnnc module: "
                                "convert the Sequential model it starts, or pass "
                                "lengths=rnnc.keras.mask_lengths(x) to the converted layer")
    raise NotSupportedError(f"{_where(layer)}: rnnc.keras.convert converts SimpleRNN, GRU, "
                            "LSTM, Bidirectional and Dense layers (and Masking, Dropout in a "
                            f"Sequential), not {type(layer).__module__}.{type(layer).__name__}")


def _sequential(keras, model, mask_outputs):
    layers, mask_value, dtype, first = [], None, None, None
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({_where(layer)})"
        if type(layer) is keras.layers.Masking:
            if i != 0:
                raise NotSupportedError(f"{where}: Masking is supported as the first layer "
                                        "only (rnnc turns its mask into the lengths of "
                                        "right-padded sequences)")
            mask_value = float(layer.mask_value)
            continue
        if type(layer) is keras.layers.Dropout:
            continue                            # an identity at inference
        try:
            module, spec = _layer(keras, layer)
        except ValueError as exc:
            raise type(exc)(f"layer {i}: {exc}") from exc
        own = module.forward_layer.dtype if isinstance(module, Bidirectional) else module.dtype
        if dtype is None:
            dtype, first = own, where
        elif own != dtype:
            raise NotSupportedError(f"{where}: its dtype {own.name} differs from {first}'s "
                                    f"{dtype.name}: rnnc converts models of one dtype")
        layers.append(module)
        if spec is None:
            continue
        if spec["return_state"]:
            _refuse(where, "return_state", True, "is not supported in a Sequential (convert "
                    "the layer alone: its call returns the states)")
        if isinstance(module, Bidirectional):
            if spec["merge_mode"] is None:
                _refuse(where, "merge_mode", None, "is not supported in a Sequential (Keras "
                        "returns a list of two outputs)")
            if not spec["return_sequences"]:
                if spec["merge_mode"] != "concat":
                    _refuse(where, "merge_mode", spec["merge_mode"], "with "
                            "return_sequences=False is not supported yet (rnnc's "
                            "Pool('state') concatenates the two final states)")
                layers.append(Pool("state"))
            continue                            # Keras zeroes masked outputs, as rnnc
        if not spec["return_sequences"]:
            layers.append(Pool("state"))        # the last output is h_n, masked or not
        elif spec["reverse"]:
            layers.append(KerasOutputs(go_backwards=True))
        elif mask_value is not None and mask_outputs == "keras" \
                and not spec["zero_output_for_mask"]:
            layers.append(KerasOutputs(hold_last=True))
    if mask_value is None:
        return Sequential(*layers)
    return MaskedSequential(*layers, mask_value=mask_value)


# -- masks -------------------------------------------------------------------------------------
def mask_lengths(x, mask_value=0.0):
    """Keras' ``Masking(mask_value)`` mask of x (B, T, features) as rnnc's ``lengths`` (B,).

    A step is masked when all its features equal ``mask_value``. rnnc's lengths describe
    right-padded sequences (each sequence's valid steps first): a masked step followed by a
    valid one (a hole, or left padding) is refused with a ValueError naming the sequence and
    step -- Keras would skip it, keeping the state, which lengths cannot say.

    >>> import numpy as np
    >>> x = np.zeros((2, 4, 1)); x[0, :3] = 1.0; x[1, :1] = 1.0
    >>> mask_lengths(x)
    array([3, 1])
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (B, T, features), got shape {x.shape}")
    valid = np.any(x != mask_value, axis=-1)                       # (B, T), Keras' rule
    lengths = valid.sum(axis=1)
    T = x.shape[1]
    holes = valid != (np.arange(T)[None, :] < lengths[:, None])
    if holes.any():
        b = int(np.argmax(holes.any(axis=1)))
        t = int(np.argmin(valid[b]))
        raise ValueError(f"the mask of sequence {b} has a masked step at t={t} before a valid "
                         "step: rnnc's lengths describe right-padded sequences only (Keras "
                         "would skip the step and keep the state)")
    return lengths.astype(np.intp)


# -- parameter-free layers of converted models ---------------------------------------------------
@_io.register
class KerasOutputs(ParameterFree):
    """Turn a recurrent layer's rnnc outputs (B, T, F) into Keras' (a layer of converted
    models, no parameters).

    Parameters
    ----------
    go_backwards : bool
        Reverse the whole (padded) time axis, as Keras' ``go_backwards=True`` returns the
        outputs in the order it read them. With padding, Keras' masked steps come first and
        hold 0, which is what reversing rnnc's output (0 at padded steps) gives.
    hold_last : bool
        Repeat each sequence's last valid output over its padded steps (0 for a sequence of
        length 0), Keras' masked outputs (``zero_output_for_mask=False``).

    ``m(x, lengths=None)``; with ``lengths`` None, ``hold_last`` changes nothing. Training:
    ``backward(grad_output)`` returns ``(dx, None, {})``.

    >>> import numpy as np
    >>> out = np.array([[[1.0], [2.0], [0.0]], [[3.0], [0.0], [0.0]]])   # lengths 2, 1
    >>> KerasOutputs(hold_last=True)(out, lengths=[2, 1])[..., 0]
    array([[1., 2., 2.],
           [3., 3., 3.]])
    >>> KerasOutputs(go_backwards=True)(out)[..., 0]
    array([[0., 2., 1.],
           [0., 0., 3.]])
    """

    #: Sequential passes ``lengths`` to layers that set this.
    takes_lengths = True
    batch_first = True

    def __init__(self, go_backwards=False, hold_last=False):
        self.go_backwards = check_bool(go_backwards, "go_backwards")
        self.hold_last = check_bool(hold_last, "hold_last")
        super().__init__()

    def _config(self):
        return {"go_backwards": self.go_backwards, "hold_last": self.hold_last}

    def __repr__(self):
        return f"KerasOutputs(go_backwards={self.go_backwards}, hold_last={self.hold_last})"

    def _index(self, lengths, B, T):
        """(B, T) source step of each output step under hold_last, or None."""
        if not self.hold_last or lengths is None:
            return None
        n = check_lengths(lengths, B, T)
        return np.minimum(np.arange(T)[None, :], np.maximum(n - 1, 0)[:, None]), n

    def __call__(self, x, lengths=None):
        x = np.asarray(x)
        if x.ndim != 3 or x.dtype.kind != "f":
            raise ValueError(f"input must be a 3-D (B, T, F) float array, got shape {x.shape} "
                             f"and dtype {x.dtype}")
        B, T, _ = x.shape
        self._cache = None
        held = self._index(lengths, B, T)
        out = x
        if held is not None:
            index, n = held
            out = np.take_along_axis(x, index[..., None], axis=1)
            out[n == 0] = 0
        if self.go_backwards:
            out = out[:, ::-1]
        out = np.ascontiguousarray(out)
        if self.training:
            self._cache = (x.shape, x.dtype, held)
        return out

    def backward(self, grad_output, grad_h_n=None):
        """Gradients after a training-mode call: ``(dx, None, {})``."""
        if self._cache is None:
            raise RuntimeError("KerasOutputs.backward needs a forward pass in training mode "
                               "first (call .train(), then the module), and runs once per "
                               "forward")
        if grad_h_n is not None:
            raise ValueError("grad_h_n must be None for KerasOutputs: it returns no state")
        shape, dtype, held = self._cache
        self._cache = None
        if grad_output is None:
            return None, None, {}
        g = as_real_array(grad_output, "grad_output", dtype)
        if g.shape != shape:
            raise ValueError(f"grad_output must have the output's shape {shape}, got {g.shape}")
        if self.go_backwards:
            g = g[:, ::-1]
        if held is None:
            return np.ascontiguousarray(g), None, {}
        index, n = held
        g = np.where((n > 0)[:, None, None], g, 0)
        dx = np.zeros(shape, dtype=dtype)
        rows = np.broadcast_to(np.arange(shape[0])[:, None], index.shape)
        np.add.at(dx, (rows, index), g)
        return dx, None, {}


@_io.register
class MaskedSequential(Sequential):
    """An ``rnnc.Sequential`` from a Keras model that starts with ``Masking(mask_value)``.

    Called without ``lengths``, it computes them from x (B, T, features) with
    ``mask_lengths(x, mask_value)`` (right-padded sequences; holes are refused) and, as
    Keras' Masking does, sets the masked steps of x to 0 before the first layer. Given
    ``lengths``, it is a plain Sequential.
    """

    def __init__(self, *layers, mask_value=0.0):
        super().__init__(*layers)
        self.mask_value = float(mask_value)

    def _config(self):
        return {"mask_value": self.mask_value}

    def __repr__(self):
        if not len(self):
            return f"MaskedSequential(mask_value={self.mask_value!r})"
        return super().__repr__().replace("Sequential(", f"MaskedSequential(mask_value="
                                          f"{self.mask_value!r},", 1)

    def __call__(self, x, lengths=None):
        if lengths is None:
            x = np.asarray(x)
            lengths = mask_lengths(x, self.mask_value)
            if np.all(lengths == x.shape[1]):
                lengths = None
            else:
                valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
                x = np.where(valid[..., None], x, np.zeros((), x.dtype))
        return self._run(x, lengths, self._layout)
