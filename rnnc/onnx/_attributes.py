"""How ONNX's RNN / GRU / LSTM nodes map onto rnnc's layers: gate orders and attributes.

Every ONNX attribute and optional input of the three operators has one entry here, saying which
rnnc constructor argument it sets or that rnnc does not support its value. The activation list
with its alpha and beta values, clip, input_forget and the peepholes P map onto rnnc's cell
options (rnnc/_cell_options.py); what rnnc cannot run -- an LSTM whose candidate and output
activations differ, different functions per direction -- raises NotSupportedError.
"""
import numpy as np

from rnnc._cell_options import ACTIVATIONS, activation_label, onnx_name

# Gates per cell, and where ONNX's gate blocks sit in PyTorch's order. PyTorch LSTM is
# (i, f, g, o), ONNX (i, o, f, c); PyTorch GRU (r, z, n), ONNX (z, r, h).
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
ONNX_FROM_TORCH = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 3, 1, 2]}
TORCH_FROM_ONNX = {mode: list(np.argsort(order)) for mode, order in ONNX_FROM_TORCH.items()}

# The activations ONNX applies by default, which are the only ones rnnc's cells compute today
# (RNN also takes Relu).
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def reorder_gates(array, mode, order, axis):
    """Permute the gate blocks of ``array`` along ``axis``: block ``j`` of the result is block
    ``order[j]`` of ``array`` (``GATES[mode]`` equal blocks)."""
    blocks = np.split(array, GATES[mode], axis=axis)
    return np.concatenate([blocks[j] for j in order], axis=axis)


class NotSupportedError(ValueError):
    """An ONNX attribute, input or value that rnnc cannot run (yet)."""


def _unsupported(op, name, value, why="is not supported by rnnc yet", show_value=True):
    raise NotSupportedError(f"{op} attribute {name!r} {why}"
                            + (f" (got {value!r})" if show_value else ""))


def _hidden_size(op, value, spec):
    spec["hidden_size"] = int(value)


def _direction(op, value, spec):
    if value == "forward":
        spec["bidirectional"] = False
    elif value == "bidirectional":
        spec["bidirectional"] = True
    elif value == "reverse":
        spec["bidirectional"] = False
        spec["reverse"] = True
    else:
        raise ValueError(f"{op} attribute 'direction' must be 'forward', 'reverse' or "
                         f"'bidirectional', got {value!r}")


def _layout(op, value, spec):
    if value not in (0, 1):
        raise ValueError(f"{op} attribute 'layout' must be 0 or 1, got {value!r}")
    spec["layout"] = int(value)


def _activations(op, value, spec):
    names = []
    for v in value:
        name = onnx_name(v)
        if name is None:
            _unsupported(op, "activations", value,
                         f"names {v!r}, which is not one of ONNX's functions "
                         f"{sorted(ACTIVATIONS)}")
        names.append(name)
    D = 2 if spec.get("bidirectional") else 1
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    if len(names) not in (per_direction, per_direction * D):
        raise ValueError(f"{op} attribute 'activations' must list {per_direction} function(s) "
                         f"per direction, got {value!r}")
    spec["_activation_names"] = names


def _values(key):
    def keep(op, value, spec):
        spec[key] = [float(v) for v in value]
    return keep


def _resolve_activations(op, spec):
    """The triples (name, alpha, beta) of the activation list, alpha and beta consumed in the
    order of the functions that take them (defaults where the lists end, as ONNX Runtime);
    one direction's functions must equal the other's."""
    names = spec.pop("_activation_names", None)
    alphas, betas = spec.pop("_alpha", []), spec.pop("_beta", [])
    if names is None:
        if alphas or betas:
            _unsupported(op, "activation_alpha" if alphas else "activation_beta",
                         alphas or betas, "is given without an 'activations' list")
        return
    triples = []
    for name in names:
        _, n_params, alpha, beta = ACTIVATIONS[name]
        if n_params >= 1 and alphas:
            alpha = alphas.pop(0)
        if n_params == 2 and betas:
            beta = betas.pop(0)
        triples.append((name, alpha, beta))
    per = len(DEFAULT_ACTIVATIONS[op])
    first = triples[:per]
    if any(triples[i:i + per] != first for i in range(0, len(triples), per)):
        _unsupported(op, "activations", names,
                     "with different functions per direction is not supported by rnnc")
    labels = [activation_label(t) for t in first]
    if op == "RNN":
        spec["nonlinearity"] = labels[0]
    else:
        spec["recurrent_activation"], spec["activation"] = labels[0], labels[1]
    if op == "LSTM" and first[1] != first[2]:
        _unsupported(op, "activations", names,
                     "with a cell-output function (h) other than the candidate's (g) is not "
                     "supported by rnnc (its LSTM applies `activation` to both)")


def _clip(op, value, spec):
    if not value > 0:
        raise ValueError(f"{op} attribute 'clip' must be > 0, got {value!r}")
    spec["clip"] = float(value)


def _input_forget(op, value, spec):
    if value not in (0, 1):
        raise ValueError(f"LSTM attribute 'input_forget' must be 0 or 1, got {value!r}")
    if value:
        spec["input_forget"] = True


def _linear_before_reset(op, value, spec):
    if value not in (0, 1):
        raise ValueError(f"GRU attribute 'linear_before_reset' must be 0 or 1, got {value!r}")
    spec["reset_after"] = bool(value)


# The attribute table: name -> function(op, value, spec) that sets rnnc arguments in ``spec``
# or raises NotSupportedError. Order matters for 'activations', which needs 'direction' first.
_COMMON = {"hidden_size": _hidden_size, "direction": _direction, "layout": _layout,
           "activations": _activations, "activation_alpha": _values("_alpha"),
           "activation_beta": _values("_beta"), "clip": _clip}
ATTRIBUTES = {"RNN": dict(_COMMON),
              "GRU": dict(_COMMON, linear_before_reset=_linear_before_reset),
              "LSTM": dict(_COMMON, input_forget=_input_forget)}
# ONNX's inputs by position; "P" (LSTM peepholes) sets peepholes=True.
INPUTS = {"RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]}
# Peepholes: ONNX's P is (i, o, f), rnnc's weight_p (i, f, o).
TORCH_P_FROM_ONNX = [0, 2, 1]
ONNX_P_FROM_TORCH = [0, 2, 1]


def node_spec(op, attributes, inputs):
    """rnnc's arguments for an ONNX recurrent node.

    Parameters
    ----------
    op : 'RNN', 'GRU' or 'LSTM'
    attributes : dict
        The node's attributes by name, as ``onnx.helper.get_attribute_value`` gives them (bytes
        decoded to str).
    inputs : list of str
        The node's input names ('' for an omitted optional input).

    Returns
    -------
    dict with mode, hidden_size, bidirectional, reverse (direction "reverse"), layout,
    nonlinearity, reset_after (GRU; ONNX's default linear_before_reset=0 is reset_after=False),
    and where given the cell options activation, recurrent_activation, clip, input_forget,
    peepholes (the P input).

    Raises
    ------
    NotSupportedError naming the attribute or input and its value when rnnc cannot run it.
    """
    spec = {"mode": op, "bidirectional": False, "reverse": False, "layout": 0,
            "nonlinearity": "tanh"}
    if op == "GRU":
        spec["reset_after"] = False
    table = ATTRIBUTES[op]
    unknown = sorted(set(attributes) - set(table))
    if unknown:
        raise NotSupportedError(f"{op} attribute {unknown[0]!r} is not an ONNX {op} attribute "
                                f"rnnc knows (got {attributes[unknown[0]]!r})")
    for name, handle in table.items():
        if name in attributes:
            handle(op, attributes[name], spec)
    _resolve_activations(op, spec)
    if "hidden_size" not in spec:
        raise ValueError(f"{op} node has no 'hidden_size' attribute (rnnc needs it)")
    if op == "LSTM" and len(inputs) > 7 and inputs[7]:
        spec["peepholes"] = True
    if len(inputs) > len(INPUTS[op]):
        raise ValueError(f"{op} node has {len(inputs)} inputs, ONNX defines "
                         f"{len(INPUTS[op])}")
    return spec
