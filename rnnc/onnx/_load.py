"""ONNX graph -> a session that runs its RNN / GRU / LSTM nodes with rnnc.

``load`` reads the graph once: each recurrent node's attributes go through the attribute
table (``_attributes.py``), its rnnc module is built when its weights are constants, and every
other op must be one of ``_ops.OPS``. ``Session.run`` then walks the nodes in order (ONNX
stores them topologically sorted).
"""
import os

import numpy as np
import onnx
from onnx import numpy_helper

from rnnc.onnx._attributes import GATES, TORCH_FROM_ONNX, TORCH_P_FROM_ONNX, \
    NotSupportedError, node_spec, reorder_gates
from rnnc.onnx._ops import OPS, attributes_of
from rnnc.recurrent import GRU, LSTM, RNN
from rnnc._validation import describe

_CLASSES = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}
# Ops with one data input that only move data around: what may sit between stacked layers.
_PASS_THROUGH = {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity"}


_OPTIONS = ("activation", "recurrent_activation", "clip", "input_forget", "peepholes")


def _layer_kwargs(spec):
    """The constructor arguments of a node's spec beyond sizes, directions and bias."""
    kwargs = {"nonlinearity": spec["nonlinearity"]} if spec["mode"] == "RNN" else {}
    if spec["mode"] == "GRU":
        kwargs["reset_after"] = spec["reset_after"]
    kwargs.update({k: spec[k] for k in _OPTIONS if k in spec})
    return kwargs


def _module_from_weights(spec, W, R, B, dtype, where, P=None):
    """An rnnc layer holding ONNX's W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or None, and
    an LSTM's peepholes P (D, 3*H) or None."""
    mode, H = spec["mode"], spec["hidden_size"]
    G, D = GATES[mode], 2 if spec["bidirectional"] else 1
    W, R = np.asarray(W), np.asarray(R)
    if W.ndim != 3 or W.shape[:2] != (D, G * H):
        raise ValueError(f"{where}: W must have shape ({D}, {G * H}, input_size), got "
                         f"{W.shape}")
    if R.shape != (D, G * H, H):
        raise ValueError(f"{where}: R must have shape {(D, G * H, H)}, got {R.shape}")
    if B is not None and np.shape(B) != (D, 2 * G * H):
        raise ValueError(f"{where}: B must have shape {(D, 2 * G * H)}, got {np.shape(B)}")
    if P is not None and np.shape(P) != (D, 3 * H):
        raise ValueError(f"{where}: P must have shape {(D, 3 * H)}, got {np.shape(P)}")
    kwargs = _layer_kwargs(spec)
    # A fixed seed: the drawn values are overwritten, and rnnc's global seed sequence is left
    # as the user's script set it.
    module = _CLASSES[mode](W.shape[2], H, bias=B is not None,
                            bidirectional=spec["bidirectional"], reverse=spec["reverse"],
                            dtype=dtype, seed=0, **kwargs)
    order, sd = TORCH_FROM_ONNX[mode], {}
    for d, sfx in enumerate(("", "_reverse")[:D]):
        sd[f"weight_ih_l0{sfx}"] = reorder_gates(W[d], mode, order, axis=0)
        sd[f"weight_hh_l0{sfx}"] = reorder_gates(R[d], mode, order, axis=0)
        if B is not None:
            sd[f"bias_ih_l0{sfx}"] = reorder_gates(B[d, :G * H], mode, order, axis=0)
            sd[f"bias_hh_l0{sfx}"] = reorder_gates(B[d, G * H:], mode, order, axis=0)
        if P is not None:
            sd[f"weight_p_l0{sfx}"] = np.concatenate(
                [np.split(np.asarray(P[d]), 3)[j] for j in TORCH_P_FROM_ONNX])
    module.load_state_dict(sd)
    return module


def _module_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


class Session:
    """An ONNX model whose recurrent nodes run on rnnc; made by ``rnnc.onnx.load``.

    Attributes
    ----------
    input_names, output_names : list of str
        The graph's inputs (initializers excluded) and outputs.
    modules : dict of str -> rnnc.RNN, rnnc.GRU or rnnc.LSTM
        The rnnc layer of each recurrent node whose weights are constants in the graph, by
        node name (``"<op>_<index>"`` for an unnamed node). A node whose W, R or B is a graph
        input gets its layer built from the fed arrays at each ``run``.
    """

    def __init__(self, model):
        graph = model.graph
        self.model = model
        self._constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in self._constants]
        self.output_names = [o.name for o in graph.output]
        self._nodes, self._specs, self.modules = [], {}, {}
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            if node.domain not in ("", "ai.onnx"):
                raise NotSupportedError(f"node {name!r}: op {node.op_type!r} of domain "
                                        f"{node.domain!r} is not supported by rnnc.onnx")
            attributes = attributes_of(node)
            if node.op_type in _CLASSES:
                spec = node_spec(node.op_type, attributes, list(node.input))
                self._specs[name] = spec
                weights = [node.input[i] if len(node.input) > i else "" for i in (1, 2, 3, 7)]
                if all(w == "" or w in self._constants for w in weights):
                    W, R, B, P = (self._constants[w] if w else None for w in weights)
                    self.modules[name] = _module_from_weights(
                        spec, W, R, B, _module_dtype(W), f"{node.op_type} node {name!r}", P)
            elif node.op_type not in OPS:
                raise NotSupportedError(
                    f"node {name!r}: ONNX op {node.op_type!r} is not supported by "
                    f"rnnc.onnx.load (it runs {', '.join(sorted(OPS))} and RNN, GRU, LSTM)")
            self._nodes.append((name, node, attributes))

    def get_inputs(self):
        """The graph's inputs as ONNX ValueInfoProtos (initializers excluded)."""
        return [i for i in self.model.graph.input if i.name in self.input_names]

    def get_outputs(self):
        """The graph's outputs as ONNX ValueInfoProtos."""
        return list(self.model.graph.output)

    def run(self, output_names, input_feed):
        """Compute the graph's outputs, as ``onnxruntime.InferenceSession.run``.

        Parameters
        ----------
        output_names : list of str or None
            Which outputs, in order; None for all of them.
        input_feed : dict of str -> array-like
            A value for every graph input.

        Returns
        -------
        list of numpy.ndarray, in ONNX's layouts.
        """
        if output_names is None:
            output_names = self.output_names
        unknown = [n for n in output_names if n not in self.output_names]
        if unknown:
            raise ValueError(f"output_names: {unknown[0]!r} is not an output of the graph "
                             f"(outputs: {self.output_names})")
        if not isinstance(input_feed, dict):
            raise TypeError(f"input_feed must be a dict of input name -> array, got "
                            f"{describe(input_feed)}")
        missing = [n for n in self.input_names if n not in input_feed]
        extra = [n for n in input_feed if n not in self.input_names]
        if missing or extra:
            raise ValueError(f"input_feed: expected the inputs {self.input_names}, "
                             f"missing {missing}, unknown {extra}")
        values = dict(self._constants)
        values.update({k: np.asarray(v) for k, v in input_feed.items()})
        values[""] = None
        for name, node, attributes in self._nodes:
            inputs = [values[i] for i in node.input]
            if node.op_type in _CLASSES:
                outputs = self._run_recurrent(name, node, inputs)
            else:
                try:
                    outputs = OPS[node.op_type](inputs, attributes)
                except Exception as exc:
                    raise type(exc)(f"node {name!r} ({node.op_type}): {exc}") from exc
            values.update(zip(node.output, outputs))
        return [values[n] for n in output_names]

    def _run_recurrent(self, name, node, inputs):
        spec = self._specs[name]
        inputs = inputs + [None] * (8 - len(inputs))
        X, W, R, B, seq_lens, h0, c0, P = inputs[:8]
        if name in self.modules:
            module = self.modules[name]
        else:
            module = _module_from_weights(spec, W, R, B, _module_dtype(X),
                                          f"{node.op_type} node {name!r}", P)
        batchwise = spec["layout"] == 1
        x = X.swapaxes(0, 1) if batchwise else X
        # ONNX's states are (D, B, H) ((B, D, H) in layout 1); rnnc's (D*L, B, H) with L = 1.
        states = [None if s is None else (s.swapaxes(0, 1) if batchwise else s) for s in (h0, c0)]
        if module.mode == "LSTM":
            if (states[0] is None) != (states[1] is None):
                H = spec["hidden_size"]
                zeros = np.zeros((module.num_directions, x.shape[1], H), module.dtype)
                states = [zeros if s is None else s for s in states]
            hx = None if states[0] is None else tuple(states)
        else:
            hx = states[0]
        lengths = None if seq_lens is None else seq_lens.astype(np.int64)
        out, state = module(x, hx, lengths=lengths)
        T, Bn = x.shape[:2]
        D, H = module.num_directions, spec["hidden_size"]
        # rnnc's output (T, B, D*H) -> ONNX's Y (T, D, B, H), or (B, T, D, H) in layout 1.
        Y = out.reshape(T, Bn, D, H).transpose((1, 0, 2, 3) if batchwise else (0, 2, 1, 3))
        finals = list(state) if module.mode == "LSTM" else [state]
        finals = [f.swapaxes(0, 1) if batchwise else f for f in finals]
        dtype = X.dtype
        return [np.ascontiguousarray(a, dtype=dtype) for a in [Y] + finals]

    def _producer(self):
        return {out: (name, node) for name, node, _ in self._nodes for out in node.output}

    def _trace(self, value, producers):
        """Follow ``value`` back through pass-through ops: (source name, node or None,
        number of (1, 0, 2) transposes on the way)."""
        swaps = 0
        while value in producers:
            name, node = producers[value]
            if node.op_type not in _PASS_THROUGH:
                return value, node, swaps
            if node.op_type == "Transpose":
                perm = list(attributes_of(node).get("perm", []))
                swaps += perm == [1, 0, 2]
            value = node.input[0]
        return value, None, swaps

    def to_module(self):
        """The one rnnc layer this graph computes, for a stack of recurrent nodes.

        Recognised: a chain of RNN, GRU or LSTM nodes of one kind and configuration with
        constant weights, each fed (through Transpose / Squeeze / Reshape glue) by the
        previous one's Y, the first by a graph input and the graph's first output made from
        the last one's Y -- what ``torch.onnx.export`` makes of ``nn.RNN/GRU/LSTM`` and what
        ``rnnc.onnx.export`` makes.

        Returns
        -------
        rnnc.RNN, rnnc.GRU or rnnc.LSTM with the graph's weights, ``num_layers`` the number
        of nodes and ``batch_first`` as the graph's input layout.

        Raises
        ------
        ValueError
            Saying why the graph is not such a stack.
        """
        names = [name for name, node, _ in self._nodes if node.op_type in _CLASSES]
        if not names:
            raise ValueError("to_module: the graph has no RNN, GRU or LSTM node")
        missing = [n for n in names if n not in self.modules]
        if missing:
            raise ValueError(f"to_module: node {missing[0]!r} takes its weights from graph "
                             "inputs, not constants, so there is no one module to return")
        specs = [self._specs[n] for n in names]
        first = specs[0]
        for n, s in zip(names, specs):
            if s != first:
                raise ValueError(f"to_module: node {n!r} differs from node {names[0]!r} "
                                 f"({s} vs {first}), so the graph is not one stacked layer")
        producers = self._producer()
        nodes = {name: node for name, node, _ in self._nodes}
        source, node, swaps = self._trace(nodes[names[0]].input[0], producers)
        if node is not None or source not in self.input_names:
            raise ValueError(f"to_module: the input of node {names[0]!r} is not made from a "
                             "graph input by Transpose/Squeeze/Reshape alone")
        batch_first = (first["layout"] == 1) != bool(swaps % 2)
        for prev, name in zip(names, names[1:]):
            value, node, _ = self._trace(nodes[name].input[0], producers)
            if node is not nodes[prev] or value != nodes[prev].output[0]:
                raise ValueError(f"to_module: the input of node {name!r} is not the output Y "
                                 f"of node {prev!r}, so the graph is not one stacked layer")
        value, node, _ = self._trace(self.output_names[0], producers)
        if node is not nodes[names[-1]] or value != node.output[0]:
            raise ValueError(f"to_module: the graph's output {self.output_names[0]!r} is not "
                             f"the output Y of its last recurrent node {names[-1]!r}")
        layers = [self.modules[n] for n in names]
        bias = any(m.bias for m in layers)
        kwargs = _layer_kwargs(first)
        module = _CLASSES[first["mode"]](
            layers[0].input_size, first["hidden_size"], num_layers=len(layers), bias=bias,
            batch_first=batch_first, bidirectional=first["bidirectional"],
            reverse=first["reverse"], dtype=layers[0].dtype, seed=0, **kwargs)
        sd = {}
        for k, layer in enumerate(layers):
            for key, value in layer.state_dict().items():
                sd[key.replace("_l0", f"_l{k}")] = value
            if bias and not layer.bias:     # ONNX's omitted B is zeros
                for key in list(sd):
                    if key.startswith("weight_ih") and f"_l{k}" in key:
                        sfx = key[len(f"weight_ih_l{k}"):]
                        rows = sd[key].shape[0]
                        sd[f"bias_ih_l{k}{sfx}"] = np.zeros(rows, module.dtype)
                        sd[f"bias_hh_l{k}{sfx}"] = np.zeros(rows, module.dtype)
        module.load_state_dict(sd)
        return module


def load(path_or_model):
    """Load an ONNX model whose recurrent nodes are RNN, GRU or LSTM, to run it with rnnc.

    Parameters
    ----------
    path_or_model : str, os.PathLike, bytes or onnx.ModelProto

    Returns
    -------
    Session
        ``run(output_names, input_feed)`` as ONNX Runtime's, ``modules`` (the rnnc layer of
        each recurrent node) and ``to_module()`` (one rnnc layer for a stacked graph).

    Raises
    ------
    NotSupportedError (a ValueError)
        An op, attribute, input or value rnnc cannot run yet, named with its node.
    TypeError
        ``path_or_model`` is none of the types above.

    Examples
    --------
    >>> import numpy as np, rnnc, rnnc.onnx
    >>> gru = rnnc.GRU(3, 4, seed=0)
    >>> session = rnnc.onnx.load(rnnc.onnx.export(gru))
    >>> x = np.ones((5, 2, 3), np.float32)
    >>> out, h_n = session.run(None, {"input": x})
    >>> bool(np.allclose(out, gru(x)[0], atol=1e-6))
    True
    """
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    elif isinstance(path_or_model, bytes):
        model = onnx.load_from_string(path_or_model)
    elif isinstance(path_or_model, (str, os.PathLike)):
        model = onnx.load(os.fspath(path_or_model))
    else:
        raise TypeError(f"path_or_model must be a path, bytes or an onnx.ModelProto, got "
                        f"{describe(path_or_model)}")
    return Session(model)
