"""How ONNX's RNN / GRU / LSTM nodes map onto rnnc's layers: gate orders and attributes.

Every ONNX attribute and optional input of the three operators has one entry here, saying which
rnnc constructor argument it sets or that rnnc does not support its value yet. The cell options
of issue 17 still missing (peepholes, clip, input_forget, activation lists) join by
replacing their ``_unsupported`` entries, in this file only.
"""
import numpy as np

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
    names = [v.capitalize() if v.lower() in ("tanh", "relu", "sigmoid") else v for v in value]
    D = 2 if spec.get("bidirectional") else 1
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    if len(names) not in (per_direction, per_direction * D):
        raise ValueError(f"{op} attribute 'activations' must list {per_direction} function(s) "
                         f"per direction, got {value!r}")
    first = names[:per_direction]
    if any(names[i:i + per_direction] != first for i in range(0, len(names), per_direction)):
        _unsupported(op, "activations", value,
                     "with different functions per direction is not supported by rnnc yet")
    if op == "RNN" and first == ["Relu"]:
        spec["nonlinearity"] = "relu"
    elif op == "RNN" and first == ["Tanh"]:
        spec["nonlinearity"] = "tanh"
    elif first != DEFAULT_ACTIVATIONS[op]:
        _unsupported(op, "activations", value,
                     f"other than {DEFAULT_ACTIVATIONS[op]}"
                     + (" or ['Relu']" if op == "RNN" else "") + " is not supported by rnnc yet")


def _no_values(name):
    def check(op, value, spec):
        if len(value):
            _unsupported(op, name, value)
    return check


def _clip(op, value, spec):
    _unsupported(op, "clip", value)


def _input_forget(op, value, spec):
    if value:
        _unsupported(op, "input_forget", value)


def _linear_before_reset(op, value, spec):
    if value not in (0, 1):
        raise ValueError(f"GRU attribute 'linear_before_reset' must be 0 or 1, got {value!r}")
    spec["reset_after"] = bool(value)


# The attribute table: name -> function(op, value, spec) that sets rnnc arguments in ``spec``
# or raises NotSupportedError. Order matters for 'activations', which needs 'direction' first.
_COMMON = {"hidden_size": _hidden_size, "direction": _direction, "layout": _layout,
           "activations": _activations, "activation_alpha": _no_values("activation_alpha"),
           "activation_beta": _no_values("activation_beta"), "clip": _clip}
ATTRIBUTES = {"RNN": dict(_COMMON),
              "GRU": dict(_COMMON, linear_before_reset=_linear_before_reset),
              "LSTM": dict(_COMMON, input_forget=_input_forget)}
# ONNX's optional inputs by position; "P" (LSTM peepholes) is refused when given.
INPUTS = {"RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
          "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]}
UNSUPPORTED_INPUTS = {"P": "peepholes"}


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
    nonlinearity, reset_after (GRU; ONNX's default linear_before_reset=0 is reset_after=False).

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
    if "hidden_size" not in spec:
        raise ValueError(f"{op} node has no 'hidden_size' attribute (rnnc needs it)")
    for position, name in enumerate(INPUTS[op]):
        if name in UNSUPPORTED_INPUTS and position < len(inputs) and inputs[position]:
            raise NotSupportedError(f"{op} input {name!r} ({UNSUPPORTED_INPUTS[name]}) is not "
                                    f"supported by rnnc yet (got input {inputs[position]!r})")
    if len(inputs) > len(INPUTS[op]):
        raise ValueError(f"{op} node has {len(inputs)} inputs, ONNX defines "
                         f"{len(INPUTS[op])}")
    return spec
