"""Stacked recurrent layers with the semantics of torch.nn.RNN / GRU / LSTM.

The classes validate and normalise their inputs once, then hand C-contiguous arrays to a
backend ``run_stack`` (compiled: rnnc._engine.stack; NumPy reference: rnnc.reference).
"""
import numbers

import numpy as np

from rnnc import _cell_options as _opts
from rnnc._engine import stack as _stack
from rnnc._engine.plan import GATES
from rnnc._module import Module
from rnnc._validation import (as_real_array, check_bool, check_lengths,
                              check_memory, check_shape, check_size, describe)


class _RNNBase(Module):
    mode = None                         # "RNN" | "GRU" | "LSTM"
    reverse = False                     # (a class default too: modules pickled before it)
    activation, recurrent_activation = "tanh", "sigmoid"     # cell options (ditto)
    clip, input_forget, peepholes, _cell = None, False, False, None
    # The backend: inference forward, training forward (returns a cache) and backward.
    _run_stack = staticmethod(_stack.run_stack)
    _run_stack_train = staticmethod(_stack.run_stack_train)
    _run_stack_backward = staticmethod(_stack.run_stack_backward)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, proj_size=0, nonlinearity="tanh",
                 reset_after=True, reverse=False, activation="tanh",
                 recurrent_activation="sigmoid", clip=None, input_forget=False, peepholes=False,
                 dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(dtype, seed, init)
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.num_layers = check_size(num_layers, "num_layers")
        self.proj_size = check_size(proj_size, "proj_size", minimum=0)
        if self.proj_size and self.mode != "LSTM":
            raise ValueError(f"proj_size is only supported by LSTM, got {proj_size}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), "
                             f"got {proj_size}")
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = check_bool(bias, "bias")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.reverse = check_bool(reverse, "reverse")
        if self.reverse and self.bidirectional:
            raise ValueError("reverse=True runs the one direction of a unidirectional layer "
                             "backwards; with bidirectional=True both directions run already")
        self._set_cell_options(nonlinearity, activation, recurrent_activation, clip,
                               input_forget, peepholes)
        self.reset_after = check_bool(reset_after, "reset_after")
        G = GATES[self.mode]
        check_size(G * self.hidden_size, f"{G} * hidden_size")
        H, P, D = self.hidden_size, self.proj_size or self.hidden_size, self.num_directions
        L = self.num_layers
        per_input = G * H       # parameters per input feature of a layer, and the rest:
        rest = (G * H * P + 2 * G * H * self.bias + P * H * bool(self.proj_size)
                + 3 * H * self.peepholes)
        self._check_parameter_memory(
            D * (per_input * (self.input_size + (L - 1) * D * P) + L * rest),
            D * L * (2 + 2 * self.bias + bool(self.proj_size) + self.peepholes))
        self._reset_parameters()

    def _reset_parameters(self):
        """Draw every parameter from the layer's generator as ``init`` says (see the class
        docstring); the first draw of a layer built with ``seed=s`` gives the same values every
        time."""
        G, H, D = GATES[self.mode], self.hidden_size, self.num_directions
        P = self._out_size
        shapes = {}
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else D * P
            for sfx in ("", "_reverse")[:D]:
                shapes[f"weight_ih_l{k}{sfx}"] = (G * H, layer_in)
                shapes[f"weight_hh_l{k}{sfx}"] = (G * H, P)
                if self.bias:
                    shapes[f"bias_ih_l{k}{sfx}"] = (G * H,)
                    shapes[f"bias_hh_l{k}{sfx}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr_l{k}{sfx}"] = (P, H)
                if self.peepholes:
                    shapes[f"weight_p_l{k}{sfx}"] = (3 * H,)
        forget = slice(H, 2 * H) if self.mode == "LSTM" else None     # gates i, f, g, o
        self._init_parameters(shapes, 1.0 / np.sqrt(H), forget_gate=forget)

    _CELL_OPTIONS = frozenset(("nonlinearity", "activation", "recurrent_activation", "clip",
                               "input_forget", "peepholes"))

    def __setattr__(self, name, value):
        # The cell options are fixed at construction: the kernels' CellSpec and the
        # parameters (peepholes) follow from them.
        if name in self._CELL_OPTIONS and "_cell" in self.__dict__:
            raise AttributeError(f"{name} is set when the layer is made: build a new "
                                 f"{type(self).__name__} with {name}={value!r} and load this "
                                 "one's state_dict into it")
        super().__setattr__(name, value)

    def _set_cell_options(self, nonlinearity, activation, recurrent_activation, clip,
                          input_forget, peepholes):
        """Validate the cell options (rnnc/_cell_options.py) and keep them, each under its
        shortest name, with the CellSpec the kernels take (None: PyTorch's cells)."""
        if self.mode == "RNN":
            act = _opts.parse_activation(nonlinearity, "nonlinearity")
            self.nonlinearity = _opts.activation_label(act)
            for name, value, default in (("activation", activation, "tanh"),
                                         ("recurrent_activation", recurrent_activation,
                                          "sigmoid")):
                if value != default:
                    raise ValueError(f"{name} is a GRU and LSTM option; an RNN's activation is "
                                     f"nonlinearity=, got {name}={value!r}")
            rec = cand = None
        else:
            if nonlinearity != "tanh":
                raise ValueError(f"nonlinearity is an RNN option; {self.mode} takes activation="
                                 f" and recurrent_activation=, got nonlinearity={nonlinearity!r}")
            self.nonlinearity = "tanh"
            act = None
            cand = _opts.parse_activation(activation, "activation")
            rec = _opts.parse_activation(recurrent_activation, "recurrent_activation")
            self.activation = _opts.activation_label(cand)
            self.recurrent_activation = _opts.activation_label(rec)
        self.clip = _opts.check_clip(clip)
        for name, value in (("input_forget", input_forget), ("peepholes", peepholes)):
            check_bool(value, name)
            if value and self.mode != "LSTM":
                raise ValueError(f"{name} is an LSTM option, got {name}=True for {self.mode}")
        self.input_forget = bool(input_forget)
        self.peepholes = bool(peepholes)
        self._cell = _opts.cell_spec(self.mode, act, cand, rec, self.clip, self.input_forget,
                                     self.peepholes)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self):
        return self.proj_size or self.hidden_size

    def _config(self):
        """Constructor arguments that rebuild an identical layer (weights aside)."""
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional, dtype=self.dtype,
                   init=self.init)
        if self.mode == "RNN":
            cfg["nonlinearity"] = self.nonlinearity
        if self.mode == "GRU":
            cfg["reset_after"] = self.reset_after
        if self.mode == "LSTM":
            cfg["proj_size"] = self.proj_size
        if self.reverse:
            cfg["reverse"] = True
        # The cell options, where not at their defaults (modules pickled before them have
        # none: the class attributes below answer).
        if self.mode != "RNN":
            for name, default in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
                if getattr(self, name) != default:
                    cfg[name] = getattr(self, name)
        for name, default in (("clip", None), ("input_forget", False), ("peepholes", False)):
            if getattr(self, name) != default:
                cfg[name] = getattr(self, name)
        return cfg

    def __repr__(self):
        cfg = self._config()
        args = [str(cfg.pop("input_size")), str(cfg.pop("hidden_size"))]
        defaults = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0,
                        bidirectional=False, nonlinearity="tanh", reset_after=True, proj_size=0,
                        reverse=False, init="pytorch", activation="tanh",
                        recurrent_activation="sigmoid", clip=None, input_forget=False,
                        peepholes=False)
        cfg["dtype"] = cfg["dtype"].name
        args += [f"{k}={v!r}" for k, v in cfg.items() if k == "dtype" or defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(args)})"

    def __call__(self, x, hx=None, lengths=None):
        """Run the layer; see the class docstring. Returns (output, h_n) or, for LSTM,
        (output, (h_n, c_n))."""
        return self._forward(x, hx, lengths, reverse_all=self.reverse)

    def _forward(self, x, hx, lengths, reverse_all):
        if isinstance(x, np.ndarray) and x.ndim == 3:   # before a conversion copies it
            self._check_call_memory(*((x.shape[1], x.shape[0]) if self.batch_first
                                      else x.shape[:2]))
        x = as_real_array(x, "input", self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"input must be 2-D (T, {self.input_size}) unbatched or 3-D "
                             f"batched, got {x.ndim}-D with shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features (input_size) in its "
                             f"last axis, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        T, B, _ = x.shape
        h0, c0 = self._initial_state(hx, B, unbatched)
        if lengths is not None:
            if unbatched:
                lengths = np.reshape(lengths, (1,)) if np.ndim(lengths) == 0 else lengths
            lengths = check_lengths(lengths, B, T)
        opts = dict(num_layers=self.num_layers, bidirectional=self.bidirectional,
                    nonlinearity=self.nonlinearity, reset_after=self.reset_after,
                    proj_size=self.proj_size, reverse_all=reverse_all)
        if self._cell is not None:
            opts["cell"] = self._cell
        if self.training:
            # A snapshot of the parameter dict: backward uses the weights of this forward.
            out, h_n, c_n, cache = self._run_stack_train(
                self.mode, dict(self._params), x, h0, c0, lengths, dropout=self.dropout,
                rng=self._rng, **opts)
        else:
            if self._packs is not None and type(self)._run_stack is _stack.run_stack:
                opts["packs"] = self._packs     # frozen: weights packed once, kept
            out, h_n, c_n = self._run_stack(self.mode, self._params, x, h0, c0, lengths, **opts)
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        if self.training:
            self._cache = (cache, unbatched, out.shape, h_n.shape,
                           None if c_n is None else c_n.shape)
        return (out, (h_n, c_n)) if self.mode == "LSTM" else (out, h_n)

    def _check_call_memory(self, T, B):
        """Refuse a call whose arrays cannot fit in memory, before any is allocated: the
        outputs of two consecutive layers, and in training what each layer keeps for backward
        (its input, gate activations, previous states)."""
        G, H, P, D = GATES[self.mode], self.hidden_size, self._out_size, \
            self.num_directions
        per_row = 2 * D * P
        if self.training:
            per_row += self.num_layers * D * (G * H + 2 * H + 2 * P) + self.input_size
        check_memory(T * B * per_row * self.dtype.itemsize,
                     f"{type(self).__name__}({self.input_size}, {H}) on {T} steps of "
                     f"{B} sequences")

    def stream(self, batch_size=1):
        """A stepper for streaming inference: one time step per call, the state carried.

        ``s = m.stream(batch_size=1)``; ``y = s.step(x)`` with x (batch_size, input_size)
        returns this step's output (batch_size, P); ``s.state`` is (h_n) or (h_n, c_n) so far;
        ``s.reset(hx=None)`` takes what the layer's ``hx`` takes; ``s.refresh()``.
        ``batch_size=None``: unbatched, x (input_size,). Stepping through a sequence gives
        the results of ``m(x, hx)``, at a fraction of the cost of calling the layer with
        T = 1. The stream works on a snapshot
        of the weights taken now: changes to the layer are seen only after ``s.refresh()``.
        Inference only (no dropout); unidirectional layers only. See rnnc.stream.Stream.
        """
        if type(self)._run_stack is not _stack.run_stack:
            raise NotImplementedError(f"{type(self).__module__}.{type(self).__name__} has no "
                                      "stream: streaming runs rnnc's compiled kernel; step the "
                                      "reference by calling it with T = 1 and the state")
        from rnnc.stream import OptionsStream, Stream
        return Stream(self, batch_size) if self._cell is None else OptionsStream(self, batch_size)

    def backward(self, grad_output, grad_h_n=None):
        """Backpropagation through time after a training-mode forward.

        Parameters
        ----------
        grad_output : array of the output's shape, dL/d(output), or None: no gradient from
            the outputs (a loss on the final state only), without an array of zeros.
        grad_h_n : dL/d(h_n) (array of h_n's shape) or None; for LSTM a pair (dh_n, dc_n)
            whose entries may be None. None means zero.

        Returns
        -------
        dx : dL/d(input), the input's shape (zero at padded steps).
        dhx : dL/d(initial state), h_0's shape (for LSTM a pair (dh_0, dc_0)).
        grads : dict of parameter gradients under the state_dict names; also added to
            ``self.grads`` (cleared by ``zero_grad()``).

        One backward per training forward: the forward's buffers are consumed.
        """
        return self._run_backward(self._check_backward(grad_output, grad_h_n))

    def _check_backward(self, grad_output, grad_h_n):
        """Validate backward's arguments (changing nothing); returns what _run_backward takes."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward pass in training "
                               "mode first (call .train(), then the module), and runs once per "
                               "forward")
        cache, unbatched, out_shape, hn_shape, cn_shape = self._cache
        g = None
        if grad_output is not None:     # None: the backend starts from zeros of its own
            g = as_real_array(grad_output, "grad_output", self.dtype)
            check_shape(g, "grad_output", out_shape)
        if self.mode == "LSTM":
            if grad_h_n is None:
                grad_h_n = (None, None)
            if not isinstance(grad_h_n, (tuple, list)) or len(grad_h_n) != 2:
                raise TypeError("grad_h_n for LSTM must be None or a pair (dh_n, dc_n), got "
                                f"{describe(grad_h_n)}")
            dh_n, dc_n = grad_h_n
        else:
            dh_n, dc_n = grad_h_n, None
        if dh_n is not None:
            dh_n = as_real_array(dh_n, "grad_h_n", self.dtype)
            check_shape(dh_n, "grad_h_n", hn_shape)
        if dc_n is not None:
            dc_n = as_real_array(dc_n, "grad_c_n", self.dtype)
            check_shape(dc_n, "grad_c_n", cn_shape)
        if unbatched:
            g = None if g is None else g[:, None]
            dh_n = None if dh_n is None else dh_n[:, None]
            dc_n = None if dc_n is None else dc_n[:, None]
        elif self.batch_first and g is not None:
            g = np.ascontiguousarray(g.transpose(1, 0, 2))
        return g, dh_n, dc_n

    def _run_backward(self, checked):
        g, dh_n, dc_n = checked
        cache, unbatched = self._cache[:2]
        self._cache = None
        dx, dh0, dc0, grads = self._run_stack_backward(cache, g, dh_n, dc_n)
        if unbatched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        elif self.batch_first:
            dx = dx.transpose(1, 0, 2)
        self._accumulate(grads)
        return dx, ((dh0, dc0) if self.mode == "LSTM" else dh0), grads

    def _initial_state(self, hx, B, unbatched):
        DL = self.num_directions * self.num_layers
        P, H = self._out_size, self.hidden_size
        lead = (DL,) if unbatched else (DL, B)
        if hx is None:
            h0 = np.zeros((DL, B, P), dtype=self.dtype)
            c0 = np.zeros((DL, B, H), dtype=self.dtype) if self.mode == "LSTM" else None
            return h0, c0
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for LSTM must be a tuple (h_0, c_0), got {describe(hx)}")
            h0 = as_real_array(hx[0], "h_0", self.dtype)
            c0 = as_real_array(hx[1], "c_0", self.dtype)
            check_shape(h0, "h_0", lead + (P,))
            check_shape(c0, "c_0", lead + (H,))
        else:
            h0 = as_real_array(hx, "hx", self.dtype)
            c0 = None
            check_shape(h0, "hx", lead + (P,))
        if unbatched:
            h0 = h0[:, None, :]
            c0 = None if c0 is None else c0[:, None, :]
        return h0, c0


_ACTIVATIONS_DOC = """activation, recurrent_activation : default 'tanh', 'sigmoid' (keyword-only)
        Keras' names: the candidate's (and an LSTM's output's, h = o * activation(c))
        activation, and the gates'. Any of 'tanh', 'sigmoid', 'relu', 'hard_sigmoid' (Keras 3:
        relu6(x + 3) / 6), 'linear', 'softsign', 'elu', 'softplus', or ONNX's functions with
        their parameters: 'Affine', 'LeakyRelu', 'ThresholdedRelu', 'ScaledTanh',
        'HardSigmoid', 'Elu', 'Softsign', 'Softplus', e.g. ('LeakyRelu', 0.1) or
        ('HardSigmoid', 0.2, 0.5).
    """
_CLIP_DOC = """clip : float or None, default None (keyword-only)
        ONNX's cell clip: every pre-activation is clipped to [-clip, clip] before its
        activation (an LSTM's cell state is not). Gradients are 0 where the clip cuts.
    """
_LSTM_DOC = """input_forget : bool, default False (keyword-only)
        ONNX's coupled gates: the forget gate is 1 - i (its weights stay, unused).
    peepholes : bool, default False (keyword-only)
        Peephole connections (Gers & Schmidhuber; ONNX's P): parameters ``weight_p_l{k}``
        (3 * hidden_size,) in the order (i, f, o) -- ONNX's P is (i, o, f) --; the previous
        cell state joins the pre-activations of i and f, the new one that of o.
    """
_NOTE_DOC = """Cell options other than PyTorch's cells run on the options kernel
        (rnnc/_kernels/_options_kernel.pyx): compiled, forward and backward, both dtypes,
        its products on BLAS, without the threading strategies of PyTorch's cells.
    """

_DOC = """{summary}

    Mirrors ``torch.nn.{name}``: same constructor arguments, parameter names and shapes,
    gate order and initialisation (U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)); Keras' with
    ``init='keras'``), so a PyTorch state_dict converted to NumPy loads unchanged.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    {extra}bias : bool, default True
    batch_first : bool, default False
        Input and output are (B, T, F) instead of (T, B, F). States stay (D*L, B, H).
    dropout : float, default 0.0
        In training mode, inverted dropout on the input of every layer but the first (masks
        drawn from the module's generator, reproducible with ``seed``). Off in inference.
    bidirectional : bool, default False
        PyTorch's stacked form: each layer sees both directions of the layer below.
    reverse : bool, default False (keyword-only)
        A unidirectional layer that runs backwards (ONNX's ``direction="reverse"``): every
        layer of the stack starts at each sequence's own last step and ends at step 0, as
        the reverse direction of a bidirectional layer does; ``output[t]`` stays aligned with
        ``input[t]`` (Keras' ``go_backwards=True`` instead returns the outputs in reversed
        order) and ``h_n`` is the state after step 0. Not with ``bidirectional``; a reverse
        layer cannot ``stream()`` (it needs the whole sequence first).
    {options}dtype : float32 or float64, default float32
    seed : int or None
        Seeds the parameter initialisation and the dropout masks. None: a seed from rnnc's
        global sequence, which ``rnnc.manual_seed`` fixes (NumPy's global state is not used).
    init : 'pytorch' (default) or 'keras'
        'pytorch': every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
        'keras': Keras' defaults -- glorot-uniform input weights (``weight_ih*``, and
        ``weight_hr*``), orthogonal recurrent weights (``weight_hh*`` has orthonormal columns
        over all gates together, Keras' ``Orthogonal`` on its (units, gates * units) kernel),
        zero biases{forget}.

    Calling
    -------
    ``m(x, hx=None, lengths=None)`` with x of shape (T, B, input_size), or (T, input_size)
    unbatched. ``lengths`` (B,) runs a padded batch with PyTorch's packed-sequence semantics:
    each sequence stops at its own length, the reverse direction starts at its own last step,
    padded outputs are 0 and the final states are taken at each sequence's own last step.
    Returns {returns}.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> m = rnnc.{name}(8, 16, num_layers=2, seed=0)
    >>> x = np.zeros((5, 3, 8), dtype=np.float32)
    >>> {example}
    """


class RNN(_RNNBase):
    __doc__ = _DOC.format(
        summary="Elman RNN: h<t> = g(W_ih x<t> + b_ih + W_hh h<t-1> + b_hh), g = tanh or relu.",
        name="RNN", forget="", extra=("nonlinearity : activation, default 'tanh'\n        "
                                      "'tanh' or 'relu' as in PyTorch; any other activation "
                                      "of the cell options below.\n    "),
        returns="(output (T, B, D*H), h_n (D*L, B, H))", options=_CLIP_DOC + _NOTE_DOC,
        example="out, h_n = m(x); out.shape, h_n.shape\n    ((5, 3, 16), (2, 3, 16))")
    mode = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, reverse=False,
                 clip=None, dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, nonlinearity=nonlinearity, reverse=reverse, clip=clip,
                         dtype=dtype, seed=seed, init=init)


class GRU(_RNNBase):
    __doc__ = _DOC.format(
        summary="Gated recurrent unit (gates r, z, n as in PyTorch).",
        name="GRU", forget="",
        extra=("reset_after : bool, default True\n        True is PyTorch's form "
               "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); False the original "
               "form\n        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (ONNX "
               "default, Keras reset_after=False).\n    "),
        returns="(output (T, B, D*H), h_n (D*L, B, H))",
        options=_ACTIVATIONS_DOC + _CLIP_DOC + _NOTE_DOC,
        example="out, h_n = m(x); out.shape\n    (5, 3, 16)")
    mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, reverse=False,
                 activation="tanh", recurrent_activation="sigmoid", clip=None,
                 dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, reset_after=reset_after, reverse=reverse,
                         activation=activation, recurrent_activation=recurrent_activation,
                         clip=clip, dtype=dtype, seed=seed, init=init)


class LSTM(_RNNBase):
    __doc__ = _DOC.format(
        summary="Long short-term memory (gates i, f, g, o as in PyTorch), optional projection.",
        name="LSTM", forget=(" but the forget gate's rows of ``bias_ih*``, 1 (Keras' unit "
                             "forget bias;\n        Keras has one bias, rnnc two: ``bias_hh*``"
                             " stays 0)"),
        extra=("proj_size : int, default 0\n        If > 0, h = (o * tanh(c)) "
               "W_hr^T has proj_size features (c keeps hidden_size).\n    "),
        returns="(output (T, B, D*P), (h_n (D*L, B, P), c_n (D*L, B, H))), P = proj_size or H",
        options=_ACTIVATIONS_DOC + _CLIP_DOC + _LSTM_DOC + _NOTE_DOC,
        example="out, (h_n, c_n) = m(x); out.shape, c_n.shape\n    ((5, 3, 16), (2, 3, 16))")
    mode = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, reverse=False,
                 activation="tanh", recurrent_activation="sigmoid", clip=None,
                 input_forget=False, peepholes=False, dtype=np.float32, seed=None,
                 init="pytorch"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size=proj_size, reverse=reverse,
                         activation=activation, recurrent_activation=recurrent_activation,
                         clip=clip, input_forget=input_forget, peepholes=peepholes,
                         dtype=dtype, seed=seed, init=init)
