"""rnnc module -> ONNX graph of native RNN / GRU / LSTM nodes, one per layer.

Each layer becomes one ONNX node (direction "forward", "reverse" or "bidirectional") whose
weights are initializers with the gates reordered to ONNX's order; Transpose / Squeeze /
Reshape glue turns ONNX's Y (T, D, B, H) into the next layer's input (T, B, D*H) and the
graph's output into rnnc's layout, and Concat gathers the per-layer final states into rnnc's
(D*L, B, H).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnc.onnx._attributes import ONNX_FROM_TORCH, ONNX_P_FROM_TORCH, reorder_gates
from rnnc.recurrent import GRU, LSTM, RNN
from rnnc._validation import check_bool, describe

# Opset 14 gave RNN/GRU/LSTM their last change (the layout attribute); 17 is what ONNX Runtime
# releases of the last years all run.
DEFAULT_OPSET = 17
MIN_OPSET = 14
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class _Graph:
    """Nodes and initializers under construction, with fresh names."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem, array):
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, outputs=None, **attributes):
        outputs = outputs or [self.name(op)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(op + "_node"),
                                           **attributes))
        return outputs if len(outputs) > 1 else outputs[0]


def _layer_weights(module, k, sfx):
    """ONNX's W, R, B rows of layer k, direction suffix sfx, in ONNX's gate order."""
    mode, order = module.mode, ONNX_FROM_TORCH[module.mode]
    sd = module.state_dict()
    W = reorder_gates(sd[f"weight_ih_l{k}{sfx}"], mode, order, axis=0)
    R = reorder_gates(sd[f"weight_hh_l{k}{sfx}"], mode, order, axis=0)
    P = None
    if module.peepholes:        # rnnc's (i, f, o) -> ONNX's (i, o, f)
        blocks = np.split(sd[f"weight_p_l{k}{sfx}"], 3)
        P = np.concatenate([blocks[j] for j in ONNX_P_FROM_TORCH])
    if not module.bias:
        return W, R, None, P
    B = np.concatenate([reorder_gates(sd[f"bias_ih_l{k}{sfx}"], mode, order, axis=0),
                        reorder_gates(sd[f"bias_hh_l{k}{sfx}"], mode, order, axis=0)])
    return W, R, B, P


def _option_attributes(module):
    """ONNX attributes of the module's cell options: the activation list (one set per
    direction) with its alpha and beta values, clip, input_forget."""
    from rnnc._cell_options import ACTIVATIONS, parse_activation
    D, out = module.num_directions, {}
    if module.mode == "RNN":
        acts = [parse_activation(module.nonlinearity, "nonlinearity")]
    else:
        rec = parse_activation(module.recurrent_activation, "recurrent_activation")
        cand = parse_activation(module.activation, "activation")
        acts = [rec, cand] + ([cand] if module.mode == "LSTM" else [])
    if module._cell is not None or module.nonlinearity != "tanh":
        alphas, betas = [], []
        for name, alpha, beta in acts:
            n_params = ACTIVATIONS[name][1]
            alphas += [alpha] if n_params >= 1 else []
            betas += [beta] if n_params == 2 else []
        out["activations"] = [name for name, _, _ in acts] * D
        if alphas:
            out["activation_alpha"] = alphas * D
        if betas:
            out["activation_beta"] = betas * D
    if module.clip is not None:
        out["clip"] = module.clip
    if module.input_forget:
        out["input_forget"] = 1
    return out


def export(module, path=None, *, opset=None, initial_state=False, lengths=False):
    """Export an rnnc ``RNN``, ``GRU`` or ``LSTM`` as an ONNX model of native recurrent nodes.

    Parameters
    ----------
    module : rnnc.RNN, rnnc.GRU or rnnc.LSTM
        Its weights are copied into the graph. ``dropout`` acts in training only and is left
        out; the graph computes the module in inference (``eval()``) mode.
    path : str or os.PathLike, optional
        Also save the model there.
    opset : int, optional
        ONNX opset, from 14 (default 17).
    initial_state : bool, default False
        Add the graph inputs ``h0`` (and ``c0`` for LSTM), (D*L, B, H) as rnnc's ``hx``;
        without them the states start at zero.
    lengths : bool, default False
        Add the graph input ``lengths`` (B,) int32, rnnc's ``lengths`` (ONNX's
        ``sequence_lens``): outputs at padded steps are 0 and the final states are taken at
        each sequence's last step, as in rnnc.

    Returns
    -------
    onnx.ModelProto
        Inputs ``input`` ((T, B, I), or (B, T, I) when ``batch_first``), then ``h0``, ``c0``,
        ``lengths`` as asked; outputs ``output``, ``h_n`` (and ``c_n``) in rnnc's layouts. The
        batch and time axes are dynamic.

    Raises
    ------
    TypeError
        ``module`` is not an rnnc recurrent layer.
    ValueError
        The module uses an option ONNX cannot express (``proj_size``), or ``opset`` is out of
        range.

    Examples
    --------
    >>> import rnnc, rnnc.onnx
    >>> model = rnnc.onnx.export(rnnc.GRU(8, 16, num_layers=2, seed=0))
    >>> [n.op_type for n in model.graph.node if n.op_type == "GRU"]
    ['GRU', 'GRU']
    """
    if not isinstance(module, (RNN, GRU, LSTM)):
        raise TypeError(f"module must be an rnnc RNN, GRU or LSTM, got {describe(module)}")
    if module.proj_size:
        raise ValueError(f"module has proj_size={module.proj_size}: ONNX's LSTM has no "
                         "projection, so this LSTM cannot be exported")
    initial_state = check_bool(initial_state, "initial_state")
    lengths = check_bool(lengths, "lengths")
    max_opset = onnx.defs.onnx_opset_version()
    if opset is None:
        opset = DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, {max_opset}], "
                         f"got {opset!r}")
    mode, lstm = module.mode, module.mode == "LSTM"
    D, L, H, I = module.num_directions, module.num_layers, module.hidden_size, module.input_size
    elem = _ELEM[module.dtype]
    g = _Graph()

    inputs = [helper.make_tensor_value_info(
        "input", elem, ["batch", "time", I] if module.batch_first else ["time", "batch", I])]
    if initial_state:
        inputs += [helper.make_tensor_value_info(n, elem, [D * L, "batch", H])
                   for n in (["h0", "c0"] if lstm else ["h0"])]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))

    x = g.node("Transpose", ["input"], perm=[1, 0, 2]) if module.batch_first else "input"
    h_parts, c_parts = [], []
    attributes = {"hidden_size": H, "direction": "bidirectional" if D == 2
                  else "reverse" if module.reverse else "forward"}
    attributes.update(_option_attributes(module))
    if mode == "GRU":
        attributes["linear_before_reset"] = int(module.reset_after)
    for k in range(L):
        parts = [_layer_weights(module, k, sfx) for sfx in ("", "_reverse")[:D]]
        node_in = [x, g.const(f"W_l{k}", np.stack([p[0] for p in parts])),
                   g.const(f"R_l{k}", np.stack([p[1] for p in parts]))]
        node_in.append(g.const(f"B_l{k}", np.stack([p[2] for p in parts]))
                       if module.bias else "")
        node_in.append("lengths" if lengths else "")
        if initial_state:
            given = ["h0", "c0"] if lstm else ["h0"]
            if L > 1:       # layer k's rows of (D*L, B, H)
                rows = [g.const("start", np.array([k * D], np.int64)),
                        g.const("end", np.array([(k + 1) * D], np.int64))]
                given = [g.node("Slice", [s] + rows) for s in given]
            node_in += given
        if module.peepholes:
            node_in += [""] * (7 - len(node_in))
            node_in.append(g.const(f"P_l{k}", np.stack([p[3] for p in parts])))
        while node_in[-1] == "":
            node_in.pop()
        outs = [g.name(f"Y_l{k}"), g.name(f"Y_h_l{k}")] + ([g.name(f"Y_c_l{k}")] if lstm else [])
        g.node(mode, node_in, outs, **attributes)
        h_parts.append(outs[1])
        c_parts.append(outs[2] if lstm else None)
        last = k == L - 1
        # Y (T, D, B, H) -> (T, B, D*H), or (B, T, D*H) for a batch_first output.
        y = outs[0]
        if last and module.batch_first:
            y = g.node("Transpose", [y], perm=[2, 0, 1, 3])
        elif D == 2:
            y = g.node("Transpose", [y], perm=[0, 2, 1, 3])
        if D == 1 and not (last and module.batch_first):
            x = g.node("Squeeze", [y, g.const("axes", np.array([1], np.int64))],
                       ["output"] if last else None)
        else:
            # (0, 0, D*H) rather than -1: -1 is ambiguous for an empty batch.
            x = g.node("Reshape", [y, g.const("shape", np.array([0, 0, D * H], np.int64))],
                       ["output"] if last else None)
    states = [("h_n", h_parts, H)] + ([("c_n", c_parts, H)] if lstm else [])
    for name, parts, width in states:
        g.node("Concat", parts, [name], axis=0) if L > 1 else g.node("Identity", parts, [name])
    outputs = [helper.make_tensor_value_info(
        "output", elem, ["batch", "time", D * H] if module.batch_first
        else ["time", "batch", D * H])]
    outputs += [helper.make_tensor_value_info(name, elem, [D * L, "batch", width])
                for name, _, width in states]
    graph = helper.make_graph(g.nodes, f"rnnc_{mode}", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="rnnc")
    # Keep the IR version the opset needs rather than the newest onnx writes, so older
    # runtimes open the file.
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else model.ir_version)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, path)
    return model
