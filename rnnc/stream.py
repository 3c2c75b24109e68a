"""Streaming inference: one time step per call, the state carried between calls.

``layer.stream(batch_size)`` (rnnc.RNN / GRU / LSTM) returns a ``Stream``. This module checks
the arguments, allocates every buffer (weight copies, packed weights, folded biases, states,
workspace) and fills them; the step itself is the compiled ``StreamKernel.step``
(rnnc/_kernels/_stream_kernel.pyx), inherited as it is so that a step costs no Python frame.
"""
import warnings

import numpy as np

from rnnc._engine.layout import gate_rows
from rnnc._engine.plan import GATES, make_stream_plan
from rnnc._engine.workspace import aligned_empty, panel_workspace
from rnnc._kernels._stream_kernel import StreamKernel
from rnnc._validation import as_real_array, check_shape, check_size, describe

_UNSET = object()       # reset()'s deprecated arguments: not given


class Stream(StreamKernel):
    """A recurrent layer run one time step per call, its state carried between calls.

    Made by ``layer.stream(batch_size=1)`` for a unidirectional ``rnnc.RNN``, ``GRU`` or
    ``LSTM`` (any number of layers, bias or not, proj_size, float32 or float64). Stepping
    through x[0], ..., x[T-1] gives the results of ``layer(x, hx)`` (to rounding: products are
    summed in another order): ``step`` returns ``out[t]`` and ``state`` is then ``h_n``
    (``(h_n, c_n)`` for LSTM).

    The weights are a snapshot. The stream copies (and, for float32, re-lays out) the layer's
    parameters when it is made; later changes to the layer -- in-place updates, an optimizer
    step, ``load_state_dict`` -- are not seen until ``refresh()``.

    Threads: with ``rnnc.set_num_threads(n)``, n >= 2 (as when the stream is made), a step of
    a large enough layer (LSTM B1 H128 and up; no projection; GRU in PyTorch's form) splits the
    hidden units between the calling thread and a helper thread owned by the stream
    (``threads`` tells which): the helper spins ~0.5 ms after each step, waiting for the next,
    then sleeps; it ends with the stream. A step that finds it asleep runs both halves on the
    calling thread, with the same results, and wakes it for the next steps (waking a thread
    takes from 0.6 to several ms on some virtual machines: steps 10 ms apart took 0.63 ms each
    when they waited for it, 0.03-0.09 ms now). In a forked child the steps run on one thread,
    with the same results too.

    Inference only: no dropout is applied, whatever the layer's training flag (as in
    ``layer.eval()``); nothing is kept for ``backward``. A bidirectional layer cannot stream:
    its reverse direction starts from the last step. ``batch_first`` plays no part (a step is
    one (batch, features) slice). One stream per thread: a step releases the GIL, and a second
    thread stepping, resetting or refreshing the same stream meanwhile gets a RuntimeError.

    Parameters
    ----------
    module : rnnc.RNN, rnnc.GRU or rnnc.LSTM, unidirectional
    batch_size : int >= 0, or None, default 1
        Rows per step. None: unbatched, ``step(x (input_size,)) -> (P,)`` and states without
        the batch axis, as an unbatched layer call.

    Methods and attributes
    ----------------------
    step(x, out=None)
        x (batch_size, input_size) -> y (batch_size, P), P = proj_size or hidden_size: the
        last layer's output for this step. x of the layer's dtype goes straight to the
        compiled step; any other real dtype is converted first, as a layer call converts its
        input (complex, bool, object and string data raise TypeError). ``out``: write y there
        instead of into a new array.
    state
        Copies of the current state: h (L, batch_size, P), for LSTM the pair (h, c) with
        c (L, batch_size, hidden_size) -- the layer's h_n / c_n. Unbatched: (L, P), (L, H).
    reset(hx=None)
        Start again from zero or from the state ``hx``, which is what the layer's ``hx`` is
        (an array; for LSTM a pair (h0, c0)), so ``s.reset(s.state)`` works.
    refresh()
        Copy the layer's current weights in; the state is kept.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> lstm = rnnc.LSTM(8, 16, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)
    >>> s = lstm.stream(batch_size=3)
    >>> ys = [s.step(xt) for xt in x]          # xt (3, 8) -> (3, 16)
    >>> out, (h_n, c_n) = lstm(x)
    >>> bool(np.allclose(np.stack(ys), out, atol=1e-6) and np.allclose(s.state[0], h_n, atol=1e-6))
    True
    """

    def __init__(self, module, batch_size=1):
        _check_streamable(module)
        mode = module.mode
        unbatched = batch_size is None
        B = 1 if unbatched else check_size(batch_size, "batch_size", minimum=0)
        dtype = module.dtype
        L, H, I = module.num_layers, module.hidden_size, module.input_size
        P = module.proj_size or H
        G = GATES[mode] * H
        plan = make_stream_plan(mode, I, H, module.proj_size, module.reset_after, B, dtype)
        small = plan.small_gemm
        self.module = module
        self.batch_size = batch_size
        self._shape = (L, H, P, G, unbatched)
        self._h = _zeros((L, B, P), dtype)
        self._c = _zeros((L, B, H), dtype) if mode == "LSTM" else None
        # Workspace shared by the layers (they run one after the other).
        gates = _empty((B, G), dtype)
        hg = _empty((B, G), dtype) if mode == "GRU" else None
        tmp = _empty((B, H), dtype) if (P != H or (mode == "GRU"
                                                           and not module.reset_after)) else None
        self._layers = []
        for k in range(L):
            layer_in = I if k == 0 else P
            buf = dict(w_ih=_empty((G, layer_in), dtype),
                       w_hh=_empty((G, P), dtype),
                       bias=_empty((G,), dtype) if module.bias else None,
                       h=self._h[k], gates=gates, hg=hg, tmp=tmp)
            if mode == "LSTM":
                buf["c"] = self._c[k]
                if P != H:
                    buf["w_hr"] = _empty((P, H), dtype)
            if mode == "GRU" and module.reset_after and module.bias:
                buf["b_hn"] = _empty((H,), dtype)
            if small:
                # Which products use which panels: see StreamKernel's layer buffers.
                buf["w_ih_packed"] = _panels(G, layer_in)
                if mode == "GRU" and not module.reset_after:
                    buf["w_hh_packed"] = _panels(2 * H, H)
                    buf["w_hn_packed"] = _panels(H, H)
                else:
                    buf["w_hh_packed"] = _panels(G, P)
                if P != H:
                    buf["w_hr_packed"] = _panels(P, H)
            self._layers.append(buf)
        self._parts = None
        if plan.split_units:
            self._parts = [self._part_buffers(mode, k, B, small, plan.half) for k in range(L)]
            for buf in self._layers:
                buf["h_next"] = _empty((B, H), dtype)
        self._load_weights()
        self.bind(mode, dtype, B, unbatched, I, H, P, module.nonlinearity == "relu",
                  module.reset_after, self._layers)
        if self._parts is not None:
            self._bind_parts(self._parts)

    def _part_buffers(self, mode, k, B, small, half):
        """The two halves of layer k's hidden units: the rows of its weights (gathered and,
        for the small-batch kernel, packed by _load_weights) and each half's workspace."""
        m = self.module
        dtype, H = m.dtype, m.hidden_size
        G1 = GATES[mode]
        layer_in = m.input_size if k == 0 else H
        parts = []
        for u0, nu in ((0, half), (half, H - half)):
            buf = dict(u0=u0, nu=nu,
                       rows=gate_rows(G1, H, u0, nu),
                       w_ih=_empty((G1 * nu, layer_in), dtype),
                       w_hh=_empty((G1 * nu, H), dtype),
                       bias=_empty((G1 * nu,), dtype) if m.bias else None,
                       gates=_empty((B, G1 * nu), dtype),
                       hg=_empty((B, G1 * nu), dtype) if mode == "GRU" else None)
            if mode == "GRU" and m.bias:
                buf["b_hn"] = _empty((nu,), dtype)
            if small:
                buf["w_ih_packed"] = _panels(G1 * nu, layer_in)
                buf["w_hh_packed"] = _panels(G1 * nu, H)
            parts.append(buf)
        return parts

    def __repr__(self):
        return f"{type(self).__name__}({self.module!r}, batch_size={self.batch_size!r})"

    @property
    def state(self):
        """Copies of the current state: h (L, B, P), or for LSTM (h, c) with c (L, B, H);
        unbatched (L, P) and (L, H). The layer's h_n / c_n after the steps so far."""
        return _state_copy(self)

    # step(x, out=None) is StreamKernel.step itself (no Python frame per step); it calls
    # convert_input only for an x that is not exactly the stream's dtype.
    def convert_input(self, x):
        """x converted to the stream's dtype by rnnc's dtype policy (complex, bool, object
        and string data raise TypeError): what step does with an x of another dtype."""
        return as_real_array(x, "x", self.module.dtype)

    def reset(self, hx=None, c0=_UNSET, *, h0=_UNSET):
        """Start a new sequence from the state ``hx`` (None: zeros).

        ``hx`` is what the layer's ``hx`` is: for RNN and GRU an array h0 (L, B, P); for LSTM
        a pair ``(h0, c0)`` with c0 (L, B, H) -- without the B axis for an unbatched stream --
        so that ``s.reset(s.state)`` restarts from a saved state. Any real dtype (converted to
        the layer's); checked like the layer's hx.

        The old forms ``reset(h0, c0)`` and ``reset(h0=..., c0=...)`` still work and warn
        (DeprecationWarning); an LSTM's ``reset(h0)`` with one array, which used to mean a
        zero cell state, now raises TypeError: pass ``(h0, c0)``.
        """
        if c0 is not _UNSET or h0 is not _UNSET:
            h0, c0 = _checked_state(self, *self._legacy_state(hx, c0, h0))
        else:
            h0, c0 = _checked_state(self, *_split_state(hx, self._c is not None))
        unbatched = self._shape[4]
        self._acquire()
        try:
            self._restart()
            _assign(self._h, h0, unbatched)
            if self._c is not None:
                _assign(self._c, c0, unbatched)
        finally:
            self._release()
        return self

    def _legacy_state(self, hx, c0, h0):
        """(h0, c0) from the old call forms reset(h0, c0) and reset(h0=, c0=), with a
        DeprecationWarning; they kept their meaning (a missing part is zeros)."""
        if h0 is not _UNSET and hx is not None:
            raise TypeError("reset() got both hx and h0: pass the state as hx")
        h0 = hx if h0 is _UNSET else h0
        c0 = None if c0 is _UNSET else c0
        if c0 is not None and self._c is None:
            raise TypeError(f"c0 is the cell state of an LSTM; {self.module.mode} has none "
                            "(pass hx only)")
        form = "reset((h0, c0))" if self._c is not None else "reset(hx)"
        warnings.warn(f"Stream.reset(h0, c0) and the keywords h0=, c0= are deprecated: reset "
                      f"takes what the layer's hx takes, {form}", DeprecationWarning,
                      stacklevel=3)
        return h0, c0

    def refresh(self):
        """Copy the module's current weights into the stream (the state is kept).

        The stream works on a snapshot taken when it was made: changes to the module's
        parameters are seen only after this call.
        """
        self._acquire()
        try:
            self._load_weights()
        finally:
            self._release()
        return self

    def _load_weights(self):
        from rnnc._kernels._blas import pack_panels_into
        m = self.module
        params = dict(m.named_parameters())
        H = self._shape[1]
        for k, buf in enumerate(self._layers):
            w_ih = _copy(buf["w_ih"], params, f"weight_ih_l{k}")
            w_hh = _copy(buf["w_hh"], params, f"weight_hh_l{k}")
            w_hr = _copy(buf["w_hr"], params, f"weight_hr_l{k}") if "w_hr" in buf else None
            if m.bias:
                # b_hh folded into the input side wherever the gate math allows (as in the
                # sequence kernels): all of it but the n part of a reset_after GRU.
                b_ih, b_hh = params[f"bias_ih_l{k}"], params[f"bias_hh_l{k}"]
                _check(buf["bias"], b_ih, f"bias_ih_l{k}")
                _check(buf["bias"], b_hh, f"bias_hh_l{k}")
                np.add(b_ih, b_hh, out=buf["bias"])
                if "b_hn" in buf:
                    buf["bias"][2 * H:] = b_ih[2 * H:]
                    buf["b_hn"][...] = b_hh[2 * H:]
            if "w_ih_packed" in buf:
                pack_panels_into(w_ih, buf["w_ih_packed"])
                if "w_hn_packed" in buf:
                    pack_panels_into(w_hh[:2 * H], buf["w_hh_packed"])
                    pack_panels_into(w_hh[2 * H:], buf["w_hn_packed"])
                else:
                    pack_panels_into(w_hh, buf["w_hh_packed"])
                if w_hr is not None:
                    pack_panels_into(w_hr, buf["w_hr_packed"])
        for k, pair in enumerate(self._parts or ()):
            buf = self._layers[k]
            for part in pair:
                rows = part["rows"]
                np.take(buf["w_ih"], rows, axis=0, out=part["w_ih"])
                np.take(buf["w_hh"], rows, axis=0, out=part["w_hh"])
                if part["bias"] is not None:
                    np.take(buf["bias"], rows, axis=0, out=part["bias"])
                if "b_hn" in part:
                    part["b_hn"][...] = buf["b_hn"][part["u0"]:part["u0"] + part["nu"]]
                if "w_ih_packed" in part:
                    pack_panels_into(part["w_ih"], part["w_ih_packed"])
                    pack_panels_into(part["w_hh"], part["w_hh_packed"])


def _panels(N, K):
    """A new buffer in the small-batch kernel's layout of an (N, K) float32 weight."""
    return panel_workspace(None, N, K, np.float32)


# Every buffer a step reads or writes starts on a cache line: NumPy's start 16 bytes past one,
# so a 64-byte load of a packed panel spanned two lines, and the two threads of a split step
# wrote to a shared line at the boundary between their units
# (benchmarks/results/amd-epyc/tuning.md).
_empty = aligned_empty


def _zeros(shape, dtype):
    a = aligned_empty(shape, dtype)
    a[...] = 0
    return a


def _check(dst, src, name):
    if src.shape != dst.shape:      # only if the module's parameters were replaced by hand
        raise ValueError(f"parameter {name} has shape {src.shape}, the stream was made for "
                         f"{dst.shape}")


def _copy(dst, params, name):
    src = params[name]
    _check(dst, src, name)
    dst[...] = src
    return dst


def _assign(state, value, unbatched):
    if value is None:
        state[...] = 0
    elif unbatched:
        state[:, 0] = value
    else:
        state[...] = value


class OptionsStream:
    """The stream of a layer with cell options (rnnc/_cell_options.py): the same interface as
    Stream -- ``step(x, out=None)``, ``state``, ``reset(hx=None)``, ``refresh()`` -- and the
    same results as the layer's call, each step one call of the options kernel on a snapshot
    of the weights (the compiled stream kernel computes PyTorch's cells only). Made by
    ``layer.stream(batch_size)``."""

    def __init__(self, module, batch_size=1):
        _check_streamable(module)
        self.module = module
        self.batch_size = batch_size
        unbatched = batch_size is None
        B = 1 if unbatched else check_size(batch_size, "batch_size", minimum=0)
        L, H = module.num_layers, module.hidden_size
        P = module.proj_size or H
        self._shape = (L, H, P, B, unbatched)
        self._h = np.zeros((L, B, P), dtype=module.dtype)
        self._c = np.zeros((L, B, H), dtype=module.dtype) if module.mode == "LSTM" else None
        self.refresh()

    def __repr__(self):
        return f"{type(self).__name__}({self.module!r}, batch_size={self.batch_size!r})"

    @property
    def state(self):
        """As Stream.state."""
        return _state_copy(self)

    def step(self, x, out=None):
        """As Stream.step."""
        from rnnc._engine.stack import run_stack
        m = self.module
        L, H, P, B, unbatched = self._shape
        x = as_real_array(x, "x", m.dtype)
        check_shape(x, "x", (m.input_size,) if unbatched else (B, m.input_size))
        if out is not None:
            if not isinstance(out, np.ndarray) or out.dtype != m.dtype \
                    or not out.flags.c_contiguous or not out.flags.writeable:
                raise TypeError(f"out must be a writeable C-contiguous {m.dtype} array, got "
                                f"{describe(out)}")
            check_shape(out, "out", (P,) if unbatched else (B, P))
        x = np.ascontiguousarray(x.reshape(1, B, m.input_size))
        y, h, c = run_stack(m.mode, self._params, x, self._h, self._c, num_layers=L,
                            nonlinearity=m.nonlinearity, reset_after=m.reset_after,
                            proj_size=m.proj_size, cell=m._cell)
        self._h[...] = h
        if c is not None:
            self._c[...] = c
        y = y[0, 0] if unbatched else y[0]
        if out is None:
            return y
        out[...] = y
        return out

    def reset(self, hx=None):
        """As Stream.reset (its deprecated call forms aside)."""
        h0, c0 = _checked_state(self, *_split_state(hx, self._c is not None))
        _assign(self._h, h0, self._shape[4])
        if self._c is not None:
            _assign(self._c, c0, self._shape[4])
        return self

    def refresh(self):
        """As Stream.refresh: a copy of the layer's current weights."""
        self._params = {name: p.copy() for name, p in self.module.named_parameters()}
        return self


def _check_streamable(module):
    mode = getattr(module, "mode", None)
    if mode not in GATES or not hasattr(module, "num_layers"):
        raise TypeError(f"module must be an rnnc.RNN, GRU or LSTM layer, got "
                        f"{type(module).__name__}")
    if module.bidirectional:
        raise ValueError(f"stream() needs a unidirectional layer, got bidirectional=True: "
                         f"the reverse direction of {type(module).__name__} starts from "
                         "the last step of the sequence, which a stream has not seen yet")
    if getattr(module, "reverse", False):
        raise ValueError(f"stream() needs a layer that runs forwards, got reverse=True: "
                         f"{type(module).__name__} would start from the last step of the "
                         "sequence, which a stream has not seen yet")


# -- what both streams share: their state, read and set -----------------------------------------
# A stream keeps _h (L, B, P), _c (L, B, H) or None, and _shape = (L, H, P, _, unbatched).
def _state_copy(stream):
    unbatched = stream._shape[4]
    h = stream._h[:, 0].copy() if unbatched else stream._h.copy()
    if stream._c is None:
        return h
    return h, (stream._c[:, 0].copy() if unbatched else stream._c.copy())


def _split_state(hx, lstm):
    """(h0, c0, pair) of reset's hx: None, an array, or for an LSTM a pair (as the layer's
    hx), whose entries must then both be arrays."""
    if hx is None:
        return None, None, False
    if not lstm:
        return hx, None, False
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError("hx for an LSTM stream must be None or a pair (h_0, c_0), as "
                        f"the layer's hx, got {describe(hx)} (reset(h0) with one array "
                        "no longer means a zero cell state: pass (h0, c0))")
    return hx[0], hx[1], True


def _checked_state(stream, h0, c0, pair=False):
    """h0, c0 converted to the stream's dtype and checked against its state's shapes (None:
    zeros, unless pair: an LSTM's hx holds two arrays, as the layer's does)."""
    L, H, P, _, unbatched = stream._shape
    lead = (L,) if unbatched else (L, stream._h.shape[1])
    dtype, lstm = stream._h.dtype, stream._c is not None
    if h0 is not None or pair:
        h0 = as_real_array(h0, "h_0" if lstm else "hx", dtype)
        check_shape(h0, "h_0" if lstm else "hx", lead + (P,))
    if c0 is not None or pair:
        c0 = as_real_array(c0, "c_0", dtype)
        check_shape(c0, "c_0", lead + (H,))
    return h0, c0
