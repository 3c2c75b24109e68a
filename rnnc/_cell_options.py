"""The cell options of RNN, GRU and LSTM beyond PyTorch's: activation functions, cell clip,
coupled input and forget gates, peepholes (the options of ONNX's RNN/GRU/LSTM operators and of
Keras' layers).

A layer with every option at its default runs the kernels of rnnc/_kernels/_*_kernel.pyx; any
other runs the options kernel (rnnc/_kernels/_options_kernel.pyx, strategy ``options`` of
rnnc/_engine/plan.py), which computes every activation of the table below in compiled code.

Activations are named as Keras names them (lower case) or as ONNX does (``"LeakyRelu"``), and
take their parameters as a tuple: ``("LeakyRelu", 0.1)``, ``("HardSigmoid", 0.2, 0.5)``.
Internally each is a triple (ONNX name, alpha, beta), the form the kernels and the reference
take. Keras 3's ``hard_sigmoid`` is relu6(x + 3) / 6, i.e. HardSigmoid(1/6, 1/2); ONNX's
HardSigmoid defaults to (0.2, 0.5), Keras 2's definition.
"""
import numbers
from typing import NamedTuple

# ONNX name -> (code in the kernels, number of parameters, default alpha, default beta).
# The formulas (alpha = a, beta = b), as in ONNX's operator documentation:
#   Tanh, Sigmoid, Relu; Affine a*x + b; LeakyRelu x if x >= 0 else a*x;
#   ThresholdedRelu x if x > a else 0; ScaledTanh a*tanh(b*x); HardSigmoid max(0, min(1, a*x + b));
#   Elu x if x >= 0 else a*(exp(x) - 1); Softsign x / (1 + |x|); Softplus log(1 + exp(x)).
ACTIVATIONS = {
    "Tanh": (0, 0, 0.0, 0.0),
    "Sigmoid": (1, 0, 0.0, 0.0),
    "Relu": (2, 0, 0.0, 0.0),
    "HardSigmoid": (3, 2, 0.2, 0.5),
    "Affine": (4, 2, 1.0, 0.0),
    "LeakyRelu": (5, 1, 0.01, 0.0),
    "ThresholdedRelu": (6, 1, 1.0, 0.0),
    "ScaledTanh": (7, 2, 1.0, 1.0),
    "Elu": (8, 1, 1.0, 0.0),
    "Softsign": (9, 0, 0.0, 0.0),
    "Softplus": (10, 0, 0.0, 0.0),
}
# Keras' names (keras.activations) for the functions it shares with ONNX.
KERAS = {"tanh": ("Tanh", 0.0, 0.0), "sigmoid": ("Sigmoid", 0.0, 0.0), "relu": ("Relu", 0.0, 0.0),
         "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5), "linear": ("Affine", 1.0, 0.0),
         "softsign": ("Softsign", 0.0, 0.0), "elu": ("Elu", 1.0, 0.0),
         "softplus": ("Softplus", 0.0, 0.0)}
_BY_LOWER = {name.lower(): name for name in ACTIVATIONS}


def onnx_name(name):
    """The ONNX function ``name`` spells in any case ("leakyrelu" -> "LeakyRelu"), or None."""
    return _BY_LOWER.get(str(name).lower())

TANH, SIGMOID = KERAS["tanh"], KERAS["sigmoid"]


def _choices():
    return (f"one of {sorted(KERAS)} (Keras' names), or of {sorted(ACTIVATIONS)} (ONNX's), "
            "with parameters as a tuple such as ('LeakyRelu', 0.1)")


def parse_activation(value, name):
    """The triple (ONNX name, alpha, beta) of an activation given as a name or a tuple
    (name, alpha[, beta]); a ValueError / TypeError naming the argument otherwise."""
    if isinstance(value, str):
        key, params = value, ()
    elif isinstance(value, (tuple, list)) and len(value) >= 2 and isinstance(value[0], str):
        key, params = value[0], tuple(value[1:])
    else:
        raise TypeError(f"{name} must be a str or a tuple (name, alpha[, beta]): "
                        f"{_choices()}; got {value!r}")
    if key in KERAS and not params:
        return KERAS[key]
    function = onnx_name(key)
    if function is None:
        raise ValueError(f"{name} must be {_choices()}; got {value!r}")
    _, n_params, alpha, beta = ACTIVATIONS[function]
    if len(params) > n_params:
        raise ValueError(f"{name}: {function} takes {n_params} parameter(s) (alpha, beta), "
                         f"got {len(params)} in {value!r}")
    for p in params:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or p != p \
                or abs(p) == float("inf"):
            raise ValueError(f"{name}: the parameters of {function} must be finite numbers, "
                             f"got {value!r}")
    given = [float(p) for p in params]
    alpha = given[0] if len(given) > 0 else alpha
    beta = given[1] if len(given) > 1 else beta
    return (function, alpha, beta)


def activation_label(triple):
    """The shortest public name of a triple: a Keras name where one matches, the ONNX name
    where its parameters are the defaults, else the tuple."""
    for keras_name, t in KERAS.items():
        if t == triple:
            return keras_name
    name, alpha, beta = triple
    _, n_params, a0, b0 = ACTIVATIONS[name]
    if (alpha, beta) == (a0, b0):
        return name
    return (name, alpha, beta)[:1 + n_params]


class CellSpec(NamedTuple):
    """The options of one layer as the kernels take them: activations f (gates), g (candidate),
    h (LSTM's output), as triples (RNN uses f only, GRU f and g); clip (0: none); input_forget
    (LSTM); peepholes (LSTM)."""
    activations: tuple
    clip: float = 0.0
    input_forget: bool = False
    peepholes: bool = False


DEFAULT_GATED = CellSpec((SIGMOID, TANH, TANH))


def check_clip(value):
    """None (no clip) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or value != value:
        raise ValueError(f"clip must be None or a number > 0 (pre-activations are clipped to "
                         f"[-clip, clip]), got {value!r}")
    return None if value == float("inf") else float(value)


def cell_spec(mode, nonlinearity, activation, recurrent_activation, clip, input_forget,
              peepholes):
    """The CellSpec of a layer from its validated options, or None when every option is at
    PyTorch's default (tanh or relu for RNN): the fast kernels run it."""
    if mode == "RNN":
        spec = CellSpec((nonlinearity,), clip or 0.0)
        default = nonlinearity in (TANH, KERAS["relu"]) and not clip
    else:
        spec = CellSpec((recurrent_activation, activation, activation), clip or 0.0,
                        input_forget, peepholes)
        default = spec == DEFAULT_GATED
    return None if default else spec
