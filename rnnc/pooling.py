"""``Pool``: one vector per sequence, the piece between recurrent layers and a ``Linear`` head.

A classifier or forecaster on sequences reads one vector per sequence: the output at its last
valid step, the mean or the max over its valid steps, or the final hidden state of the
recurrent layer that made the outputs. ``Pool`` computes each of them from a padded batch and
its ``lengths`` (padded steps never count) and back-propagates through it, so that
``Sequential(LSTM, Pool, Linear)`` is one model with one forward and one backward.
"""

import numpy as np

from rnnc._module import ParameterFree
from rnnc._validation import as_real_array, check_bool, check_choice, check_lengths, to_array

MODES = ("last", "mean", "max", "state")

__all__ = ["Pool", "MODES"]


def _as_float_array(value, name):
    """A floating array: float input keeps its dtype, integer input becomes float64."""
    arr = to_array(value, name)
    if arr.dtype.kind == "f":
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    raise TypeError(f"{name} must have a real numeric dtype (float or int), got {arr.dtype}")


class Pool(ParameterFree):
    """Reduce each sequence of a padded batch to one vector, honouring ``lengths``.

    Parameters
    ----------
    mode : {'last', 'mean', 'max', 'state'}, default 'last'
        - ``'last'``: the output at each sequence's last valid step, ``x[lengths[b] - 1, b]``.
        - ``'mean'``: the mean over each sequence's valid steps (divided by its own length).
        - ``'max'``: the maximum over each sequence's valid steps, per feature. Its gradient
          is split evenly between the steps that tie for the maximum, as for ``torch.amax``
          and TensorFlow's ``reduce_max`` (``torch.max(dim)`` instead sends it to one index).
        - ``'state'``: the final hidden state ``h_n`` of the top layer of the recurrent layer
          before it, both directions concatenated for a bidirectional layer (forward first,
          as ``torch.cat([h_n[-2], h_n[-1]], 1)``). For a bidirectional layer this differs
          from ``'last'``: the reverse direction ends at step 0, and its output at the last
          step has seen one input only. The outputs get no gradient; ``h_n`` does.
    batch_first : bool or None, default None
        The time axis of the input: (B, T, F) if True, (T, B, F) if False. None: inside a
        ``Sequential``, the layout of its recurrent layers (they must agree), else False.

    Calling
    -------
    ``pool(x, lengths=None, *, state=None)`` with x of shape (T, B, F) (or (B, T, F), see
    ``batch_first``) or (T, F) unbatched, and ``lengths`` (B,) integers in [1, T] (a scalar
    or (1,) unbatched; None: every sequence has T steps). Returns (B, F), or (F,) unbatched.
    A sequence of length 0 has nothing to pool and is refused (``'state'`` excepted).

    ``'state'`` reads ``state`` instead of ``x`` (which may be None): the final hidden states
    of the top layer, one per direction, shape (D, B, P) (``h_n[-D:]`` of an RNN, GRU or LSTM
    with D directions; (D, P) unbatched), and returns (B, D*P). Inside a ``Sequential`` the
    state comes from the layer before, converted from whatever that layer returns (LSTM's
    ``(h_n, c_n)``, ``Bidirectional``'s pair of states).

    Training: after ``train()`` and a forward call, ``backward(grad_output)`` returns
    ``(dx, dstate, {})``: dx has x's shape (zero at padded steps) and dstate is None, except
    for ``'state'``, where dx is None (no gradient from the outputs) and dstate has the
    state's shape. ``backward(None)`` means no gradient and returns ``(None, None, {})``.
    ``Pool`` has no parameters.

    Examples
    --------
    A classifier on each sequence's own final state, one forward and one backward:

    >>> import numpy as np, rnnc
    >>> model = rnnc.Sequential(rnnc.LSTM(3, 8, seed=0), rnnc.Pool("state"),
    ...                         rnnc.Linear(8, 2, seed=1))
    >>> x = np.ones((5, 4, 3), dtype=np.float32)             # (T, B, features)
    >>> model(x, lengths=[5, 3, 2, 1]).shape                 # (B, classes)
    (4, 2)

    The pooled values themselves:

    >>> x = np.arange(6.0).reshape(3, 2, 1)                  # T=3, B=2, F=1
    >>> rnnc.Pool("mean")(x, lengths=[3, 2])[:, 0]           # (0+2+4)/3, (1+3)/2
    array([2., 2.])
    >>> rnnc.Pool("last")(x, lengths=[3, 2])[:, 0]
    array([4., 3.])
    """

    #: Sequential passes ``lengths`` to layers that set this.
    takes_lengths = True

    def __init__(self, mode="last", *, batch_first=None):
        self.mode = check_choice(mode, "mode", MODES)
        self.batch_first = None if batch_first is None else check_bool(batch_first,
                                                                        "batch_first")
        super().__init__()

    def _config(self):
        """Constructor arguments that rebuild an identical module (JSON-able)."""
        return {"mode": self.mode, "batch_first": self.batch_first}

    def __repr__(self):
        extra = "" if self.batch_first is None else f", batch_first={self.batch_first}"
        return f"Pool({self.mode!r}{extra})"

    # -- forward ------------------------------------------------------------------------------
    def __call__(self, x=None, lengths=None, *, state=None):
        """Pool ``x`` (or read ``state``); see the class docstring. Returns (B, F) or (F,)."""
        return self._forward(x, lengths, state, self.batch_first)

    def _forward(self, x, lengths, state, batch_first):
        """The call, with the time axis given (Sequential passes its own layout)."""
        self._cache = None
        if self.mode == "state":
            return self._forward_state(state)
        if state is not None:
            raise ValueError(f"state is only read by Pool('state'), got a state for "
                             f"Pool({self.mode!r})")
        x = _as_float_array(x, "input")
        if x.ndim not in (2, 3):
            raise ValueError(f"input must be 3-D ({'(B, T, F)' if batch_first else '(T, B, F)'})"
                             f" or 2-D (T, F) unbatched, got {x.ndim}-D with shape {x.shape}")
        unbatched = x.ndim == 2
        # A time-major view (T, B, F): no copy for any layout.
        xt = x[:, None, :] if unbatched else (x.swapaxes(0, 1) if batch_first else x)
        T, B, F = xt.shape
        full = lengths is None
        if full:
            n = np.full(B, T, dtype=np.intp)
        else:
            if unbatched and np.ndim(lengths) == 0:
                lengths = np.reshape(lengths, (1,))
            n = check_lengths(lengths, B, T)
            full = bool(np.all(n == T))
        if n.size and n.min() == 0:
            b = int(np.argmin(n))
            where = "the input has 0 time steps" if full else \
                f"lengths[{b}] is 0 (lengths must be >= 1)"
            raise ValueError(f"Pool({self.mode!r}) needs at least one valid step per sequence: "
                             f"{where}")
        rows = np.arange(B)
        mask = None if full else (np.arange(T)[:, None] < n[None, :])      # (T, B)
        ties = None
        if self.mode == "last":
            out = xt[n - 1, rows]
        elif self.mode == "mean":
            total = xt.sum(axis=0) if full else np.where(mask[..., None], xt, 0).sum(axis=0)
            out = total / n.astype(xt.dtype)[:, None]
        else:   # max; padded steps can never win
            masked = xt if full else np.where(mask[..., None], xt, xt.dtype.type(-np.inf))
            out = masked.max(axis=0) if T else np.empty((B, F), dtype=xt.dtype)
            if self.training:
                ties = masked == out[None]
        out = np.ascontiguousarray(out, dtype=xt.dtype)
        if self.training:
            self._cache = dict(x_shape=x.shape, dtype=xt.dtype, unbatched=unbatched,
                               batch_first=bool(batch_first) and not unbatched, n=n,
                               mask=mask, ties=ties, out_shape=out.shape[-1:] if unbatched
                               else out.shape)
        return out[0] if unbatched else out

    def _forward_state(self, state):
        if state is None:
            raise TypeError("Pool('state') needs state=: the final hidden state of the top "
                            "layer of each direction, (D, B, P) (h_n[-D:]), or (D, P) "
                            "unbatched; inside a Sequential it comes from the recurrent "
                            "layer before the Pool")
        h = _as_float_array(state, "state")
        if h.ndim not in (2, 3) or h.shape[0] not in (1, 2):
            raise ValueError(f"state must have shape (D, B, P) or (D, P) unbatched, D = 1 or "
                             f"2 directions, got shape {h.shape}")
        unbatched = h.ndim == 2
        h3 = h[:, None, :] if unbatched else h
        D, B, P = h3.shape
        out = np.ascontiguousarray(h3.transpose(1, 0, 2)).reshape(B, D * P)
        if self.training:
            self._cache = dict(state_shape=h.shape, dtype=h.dtype, unbatched=unbatched,
                               out_shape=(D * P,) if unbatched else out.shape)
        return out[0] if unbatched else out

    # -- backward -----------------------------------------------------------------------------
    def backward(self, grad_output, grad_h_n=None):
        """Gradients after a training-mode call: ``(dx, dstate, {})``.

        ``grad_output`` is d loss / d output, of the output's shape, or None (no gradient:
        returns ``(None, None, {})``). ``grad_h_n`` is accepted for the common signature and
        must be None (a Pool returns no state). See the class docstring.
        """
        if self._cache is None:
            raise RuntimeError("Pool.backward needs a forward pass in training mode first "
                               "(call .train(), then the module), and runs once per forward")
        if grad_h_n is not None:
            raise ValueError("grad_h_n must be None for a Pool: it returns no state")
        c = self._cache
        if grad_output is None:
            self._cache = None
            return None, None, {}
        g = as_real_array(grad_output, "grad_output", c["dtype"])
        if g.shape != c["out_shape"]:
            raise ValueError(f"grad_output must have the output's shape {c['out_shape']}, got "
                             f"{g.shape}")
        self._cache = None
        if c["unbatched"]:
            g = g[None]
        if self.mode == "state":
            D = c["state_shape"][0]
            B = g.shape[0]
            dstate = np.ascontiguousarray(
                g.reshape(B, D, c["state_shape"][-1]).transpose(1, 0, 2))
            return None, (dstate[:, 0] if c["unbatched"] else dstate), {}
        dx = np.zeros(c["x_shape"], dtype=c["dtype"])
        # The time-major view of dx, written in place (dx stays in the input's layout).
        dxt = dx[:, None, :] if c["unbatched"] else (dx.swapaxes(0, 1) if c["batch_first"]
                                                      else dx)
        n, mask = c["n"], c["mask"]
        if self.mode == "last":
            dxt[n - 1, np.arange(len(n))] = g
        elif self.mode == "mean":
            share = g / n.astype(g.dtype)[:, None]
            dxt[...] = share if mask is None else np.where(mask[..., None], share, 0)
        else:   # max: an even split among the tied maxima
            ties = c["ties"]
            count = ties.sum(axis=0)
            share = g / np.maximum(count, 1).astype(g.dtype)
            dxt[...] = np.where(ties, share, 0)
        return dx, None, {}
