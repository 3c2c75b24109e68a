"""Single-step cells with the API of torch.nn.RNNCell / GRUCell / LSTMCell.

A cell step is the layer kernel run for one time step (rnnc._engine.stack.run_stack with T = 1), so
cells and layers share one compiled code path.
"""
import numpy as np

from rnnc._engine import stack as _stack
from rnnc._engine.plan import GATES
from rnnc._module import Module
from rnnc._validation import (as_real_array, check_bool, check_choice, check_shape,
                              check_size, describe)


class _CellBase(Module):
    mode = None
    # The backend (see rnnc.recurrent._RNNBase): a cell is a one-layer network run for one step.
    _run_stack = staticmethod(_stack.run_stack)
    _run_stack_train = staticmethod(_stack.run_stack_train)
    _run_stack_backward = staticmethod(_stack.run_stack_backward)

    def __init__(self, input_size, hidden_size, bias=True, *, nonlinearity="tanh",
                 reset_after=True, dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(dtype, seed, init)
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.bias = check_bool(bias, "bias")
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        self.reset_after = check_bool(reset_after, "reset_after")
        check_size(GATES[self.mode] * self.hidden_size, f"{GATES[self.mode]} * hidden_size")
        self._reset_parameters()

    def _reset_parameters(self):
        """Draw every parameter from the cell's generator as ``init`` says (see rnnc.LSTM)."""
        G, H = GATES[self.mode], self.hidden_size
        shapes = {"weight_ih": (G * H, self.input_size), "weight_hh": (G * H, H)}
        if self.bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        forget = slice(H, 2 * H) if self.mode == "LSTM" else None     # gates i, f, g, o
        self._init_parameters(shapes, 1.0 / np.sqrt(H), forget_gate=forget)

    def _config(self):
        """Constructor arguments that rebuild an identical cell (weights aside)."""
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                   dtype=self.dtype, init=self.init)
        if self.mode == "RNN":
            cfg["nonlinearity"] = self.nonlinearity
        if self.mode == "GRU":
            cfg["reset_after"] = self.reset_after
        return cfg

    def __repr__(self):
        extra = ""
        if self.mode == "RNN" and self.nonlinearity != "tanh":
            extra += f", nonlinearity={self.nonlinearity!r}"
        if self.mode == "GRU" and not self.reset_after:
            extra += ", reset_after=False"
        if not self.bias:
            extra += ", bias=False"
        if self.init != "pytorch":
            extra += f", init={self.init!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, "
                f"dtype={self.dtype.name})")

    def __call__(self, input, hx=None):
        x = as_real_array(input, "input", self.dtype)
        if x.ndim not in (1, 2):
            raise ValueError(f"input must be 1-D ({self.input_size},) or 2-D (B, "
                             f"{self.input_size}), got {x.ndim}-D with shape {x.shape}")
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
        if x.shape[1] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features (input_size) in its "
                             f"last axis, got shape {x.shape[1:] if unbatched else x.shape}")
        B, H = x.shape[0], self.hidden_size
        expected = (H,) if unbatched else (B, H)
        if self.mode == "LSTM":
            if hx is None:
                h = c = np.zeros((B, H), dtype=self.dtype)
            else:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"hx for LSTMCell must be a tuple (h, c), got "
                                    f"{describe(hx)}")
                h = as_real_array(hx[0], "h", self.dtype)
                c = as_real_array(hx[1], "c", self.dtype)
                check_shape(h, "h", expected)
                check_shape(c, "c", expected)
        else:
            h = np.zeros((B, H), dtype=self.dtype) if hx is None else \
                as_real_array(hx, "hx", self.dtype)
            c = None
            if hx is not None:
                check_shape(h, "hx", expected)
        self._unbatched = unbatched
        h_new, c_new = self._step(x, h.reshape(B, H), None if c is None else c.reshape(B, H))
        if unbatched:
            h_new = h_new[0]
            c_new = None if c_new is None else c_new[0]
        return (h_new, c_new) if self.mode == "LSTM" else h_new

    def _layer_params(self):
        # A cell is layer 0 of a one-layer network: the same kernels, PyTorch's layer names.
        return {f"{name}_l0": arr for name, arr in self._params.items()}

    def _step(self, x, h, c):
        """One step on validated (B, I), (B, H) arrays; returns (h', c' or None)."""
        opts = dict(nonlinearity=self.nonlinearity, reset_after=self.reset_after)
        if not self.training and self._run_stack is _stack.run_stack:
            # compiled: the one-step fast path, on the cell's own parameter names
            return _stack.run_step(self.mode, self._params, np.ascontiguousarray(x),
                                   np.ascontiguousarray(h),
                                   None if c is None else np.ascontiguousarray(c), suffix="",
                                   **opts)
        args = (self.mode, self._layer_params(), x[None], h[None],
                None if c is None else c[None])
        if self.training:
            _, h_n, c_n, self._cache = self._run_stack_train(*args, **opts)
        else:
            _, h_n, c_n = self._run_stack(*args, **opts)
        return h_n[0], None if c_n is None else c_n[0]

    def backward(self, grad_output, grad_h_n=None):
        """Gradients of one step after a training-mode call.

        ``grad_output`` is dL/dh' (for LSTMCell a pair (dh', dc'), entries may be None; a plain
        array means dh'). A cell's output is its new state, so ``grad_h_n`` must be None.
        Returns ``(dx, dhx, grads)``: dhx has hx's shape (a pair for LSTMCell); grads are keyed
        like state_dict() and added to ``self.grads``.
        """
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a call in training mode "
                               "first (call .train(), then the cell), and runs once per call")
        if grad_h_n is not None:
            raise ValueError("grad_h_n must be None for a cell: its output is its new state")
        cache, unbatched = self._cache, self._unbatched
        shape = (self.hidden_size,) if unbatched else (cache.B, self.hidden_size)
        if self.mode == "LSTM" and isinstance(grad_output, (tuple, list)):
            if len(grad_output) != 2:
                raise TypeError("grad_output for LSTMCell must be dh' or a pair (dh', dc'), got "
                                f"{describe(grad_output)}")
            dh, dc = grad_output
        else:
            dh, dc = grad_output, None
        B, H = cache.B, self.hidden_size
        if dh is None:
            dh = np.zeros((1, B, H), self.dtype)
        else:
            dh = as_real_array(dh, "grad_output", self.dtype)
            check_shape(dh, "grad_output", shape)
            dh = dh.reshape(1, B, H)
        if dc is not None:
            dc = as_real_array(dc, "grad_output[1] (dc')", self.dtype)
            check_shape(dc, "grad_output[1] (dc')", shape)
            dc = dc.reshape(1, B, H)
        self._cache = None
        dx, dh0, dc0, grads = self._run_stack_backward(
            cache, np.zeros((1, B, H), self.dtype), dh, dc)
        grads = {name[:-3]: g for name, g in grads.items()}   # strip "_l0"
        dx, dh0 = dx[0], dh0[0]
        dc0 = None if dc0 is None else dc0[0]
        if unbatched:
            dx, dh0 = dx[0], dh0[0]
            dc0 = None if dc0 is None else dc0[0]
        self._accumulate(grads)
        return dx, ((dh0, dc0) if self.mode == "LSTM" else dh0), grads


class RNNCell(_CellBase):
    """One Elman RNN step, h' = g(W_ih x + b_ih + W_hh h + b_hh), like ``torch.nn.RNNCell``.

    Parameters: input_size, hidden_size, bias=True, nonlinearity='tanh' | 'relu';
    keyword-only dtype (float32 | float64), seed (None: from ``rnnc.manual_seed``'s sequence)
    and init ('pytorch' | 'keras', see rnnc.RNN).

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> cell = rnnc.RNNCell(4, 8, seed=0)
    >>> cell(np.ones((2, 4), dtype=np.float32)).shape
    (2, 8)
    """
    mode = "RNN"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(input_size, hidden_size, bias, nonlinearity=nonlinearity,
                         dtype=dtype, seed=seed, init=init)


class GRUCell(_CellBase):
    """One GRU step like ``torch.nn.GRUCell`` (gates r, z, n).

    ``reset_after=False`` selects the original formulation (see rnnc.GRU). Keyword-only
    dtype, seed and init as rnnc.GRU's.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> cell = rnnc.GRUCell(4, 8, seed=0)
    >>> cell(np.ones(4, dtype=np.float32)).shape
    (8,)
    """
    mode = "GRU"

    def __init__(self, input_size, hidden_size, bias=True, *, reset_after=True,
                 dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(input_size, hidden_size, bias, reset_after=reset_after,
                         dtype=dtype, seed=seed, init=init)


class LSTMCell(_CellBase):
    """One LSTM step like ``torch.nn.LSTMCell`` (gates i, f, g, o); returns (h', c').

    Keyword-only dtype, seed and init as rnnc.LSTM's (``init='keras'`` puts Keras' unit
    forget bias in ``bias_ih``).

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> cell = rnnc.LSTMCell(4, 8, seed=0)
    >>> h, c = cell(np.ones((2, 4), dtype=np.float32))
    >>> h.shape, c.shape
    ((2, 8), (2, 8))
    """
    mode = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None,
                 init="pytorch"):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed, init=init)
