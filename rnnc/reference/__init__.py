"""Plain NumPy reference implementation of rnnc's recurrent networks: the project's
specification and test oracle.

- ``rnnc.reference.forward``: the forward math, written straight from the equations (imports
  only NumPy): cells, one direction, the stack.
- ``rnnc.reference.backward``: backpropagation through time, by hand from the chain rule, on
  top of the forward's functions.
- here: the same classes as rnnc's compiled ones (RNN, GRU, LSTM, the cells, Linear,
  Bidirectional), reusing rnnc's argument checking and parameter handling and replacing every
  computation with the functions of the two modules.
"""
import numpy as np

from rnnc import bidirectional as _bidirectional
from rnnc import cells as _cells
from rnnc import linear as _linear
from rnnc import recurrent as _recurrent
from rnnc._dropout import dropout_mask
from rnnc.reference import backward as _backward
from rnnc.reference.forward import gru_cell, lstm_cell, rnn_cell, run_stack, sigmoid

__all__ = ["sigmoid", "rnn_cell", "gru_cell", "lstm_cell", "run_stack", "RNN", "GRU", "LSTM",
           "RNNCell", "GRUCell", "LSTMCell", "Linear", "Bidirectional"]


def _cell_kwargs(opts, cell):
    """rnnc's ``cell`` (a CellSpec, rnnc/_cell_options.py) as the reference takes the cell
    options: activations, clip, input_forget (RNN's nonlinearity is then activations[0])."""
    if cell is None:
        return opts
    return dict(opts, nonlinearity="tanh", activations=cell.activations,
                clip=cell.clip or None, input_forget=cell.input_forget)


def run_stack_options(mode, params, x, h0, c0=None, lengths=None, *, cell=None, **opts):
    """reference.run_stack with rnnc's ``cell`` argument (the compiled run_stack's API)."""
    return run_stack(mode, params, x, h0, c0, lengths, **_cell_kwargs(opts, cell))


class _TrainCache:
    """The reference keeps the forward's inputs and recomputes everything in backward."""


def run_stack_train(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1,
                    bidirectional=False, nonlinearity="tanh", reset_after=True, proj_size=0,
                    reverse_all=False, dropout=0.0, rng=None, cell=None):
    """Training forward with the compiled backend's conventions
    (rnnc._engine.stack.run_stack_train): inverted-dropout masks on the input of every layer
    but the first, drawn from ``rng`` in the same order and layout, so one seed gives the same
    masks in both."""
    T, B = x.shape[:2]
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[0] // {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    P = proj_size or H
    masks = None
    if dropout > 0 and num_layers > 1:
        masks = [dropout_mask(rng, (T, B, D * P), dropout, x.dtype)
                 for _ in range(num_layers - 1)]
    opts = _cell_kwargs(dict(num_layers=num_layers, bidirectional=bidirectional,
                             nonlinearity=nonlinearity, reset_after=reset_after,
                             proj_size=proj_size, reverse_all=reverse_all), cell)
    out, h_n, c_n = _backward.run_stack_dropout(mode, params, x, h0, c0, lengths,
                                                dropout_masks=masks, **opts)
    cache = _TrainCache()
    cache.__dict__.update(mode=mode, params=params, x=x, h0=h0, c0=c0, lengths=lengths,
                          opts=opts, dropout_masks=masks, B=B)
    return out, h_n, c_n, cache


def run_stack_backward_cache(cache, grad_out, grad_h_n=None, grad_c_n=None):
    """Backward from a ``run_stack_train`` cache (rnnc._engine.stack.run_stack_backward's API)."""
    if grad_out is None:        # no gradient from the outputs
        T, B = cache.x.shape[:2]
        D = 2 if cache.opts["bidirectional"] else 1
        P = cache.params["weight_hh_l0"].shape[1]
        grad_out = np.zeros((T, B, D * P), dtype=cache.x.dtype)
    return _backward.run_stack_backward(
        cache.mode, cache.params, cache.x, cache.h0, cache.c0, cache.lengths, grad_out,
        grad_h_n, grad_c_n, dropout_masks=cache.dropout_masks, **cache.opts)


class _ReferenceBackend:
    _run_stack = staticmethod(run_stack_options)
    _run_stack_train = staticmethod(run_stack_train)
    _run_stack_backward = staticmethod(run_stack_backward_cache)


class RNN(_ReferenceBackend, _recurrent.RNN):
    """NumPy reference of rnnc.RNN (same constructor, call, backward and state_dict)."""


class GRU(_ReferenceBackend, _recurrent.GRU):
    """NumPy reference of rnnc.GRU (same constructor, call, backward and state_dict)."""


class LSTM(_ReferenceBackend, _recurrent.LSTM):
    """NumPy reference of rnnc.LSTM (same constructor, call, backward and state_dict)."""


class _ReferenceCellStep(_ReferenceBackend):
    def _step(self, x, h, c):
        if self.training:    # the one-step network of the layer reference, keeping a cache
            return super()._step(x, h, c)
        p = self._params
        w_ih, w_hh = p["weight_ih"], p["weight_hh"]
        b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
        if self.mode == "RNN":
            return rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, self.nonlinearity), None
        if self.mode == "GRU":
            return gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, self.reset_after), None
        return lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


class RNNCell(_ReferenceCellStep, _cells.RNNCell):
    """NumPy reference of rnnc.RNNCell."""


class GRUCell(_ReferenceCellStep, _cells.GRUCell):
    """NumPy reference of rnnc.GRUCell."""


class LSTMCell(_ReferenceCellStep, _cells.LSTMCell):
    """NumPy reference of rnnc.LSTMCell."""


class Linear(_linear.Linear):
    """NumPy reference of rnnc.Linear: y = activation(x W^T + b) over the last axis."""

    def __call__(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features (in_features) in "
                             f"its last axis, got shape {x.shape}")
        y = x @ self._params["weight"].T
        if "bias" in self._params:
            y = y + self._params["bias"]
        with np.errstate(over="ignore", invalid="ignore"):
            if self.activation == "tanh":
                y = np.tanh(y)
            elif self.activation == "relu":
                y = np.where(y < 0, 0, y).astype(self.dtype)
            elif self.activation == "sigmoid":
                y = sigmoid(y)
            elif self.activation == "softmax":
                e = np.exp(y - y.max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
        if self.training:    # what the inherited backward (plain NumPy) reads
            self._cache = (x.reshape(-1, self.in_features), y.reshape(-1, self.out_features),
                           x.shape[:-1])
        return y


def reverse_padded(x, lengths):
    """Reverse each sequence of a time-major (T, B, ...) batch within its own length;
    padded positions (t >= lengths[b]) are left where they are."""
    x = np.array(x, copy=True)
    for b, n in enumerate(lengths):
        x[:n, b] = x[:n, b][::-1].copy()
    return x


class Bidirectional(_bidirectional.Bidirectional):
    """NumPy reference of rnnc.Bidirectional, written the textbook way: flip every sequence
    within its length, run the backward layer forward in time, flip its outputs back.

    Its backward mirrors this: the gradient of the backward layer's output is flipped the same
    way before that layer's backward (which runs on the flipped input), and the gradient of
    that input is flipped back."""

    def _flip(self, a, n):
        """reverse_padded for an array in the layers' layout: (T, B, F), (B, T, F) when
        batch_first, or (T, F) unbatched."""
        a = np.asarray(a)
        if a.ndim == 2:
            return reverse_padded(a[:, None], n)[:, 0]
        if self.forward_layer.batch_first:
            return reverse_padded(a.swapaxes(0, 1), n).swapaxes(0, 1)
        return reverse_padded(a, n)

    def __call__(self, x, hx=None, lengths=None):
        hx_f, hx_b = (None, None) if hx is None else hx
        layer = self.forward_layer
        out_f, state_f = layer(x, hx_f, lengths)
        x = np.asarray(x)
        if x.ndim == 2:
            T, B = x.shape[0], 1                                    # unbatched
        else:
            T, B = x.shape[1::-1] if layer.batch_first else x.shape[:2]
        n = np.full(B, T) if lengths is None else np.reshape(np.asarray(lengths), (B,))
        out_b, state_b = self.backward_layer(self._flip(x, n), hx_b, lengths)
        out_b = self._flip(out_b, n)
        if self.training:
            self._lengths = n
            # "mul": each direction's output is a factor of the other's gradient.
            self._outputs = (out_f, out_b)
        return _bidirectional.merge(out_f, out_b, self.merge_mode), (state_f, state_b)

    def _run_backward_layer(self, checked):
        """The backward layer ran forward in time on the flipped input: its output gradient
        is flipped the same way before its backward (step t of the flipped sequence is step
        n - 1 - t), and the gradient of its input is flipped back; its final state is not
        flipped."""
        g_b, gh_b, gc_b = checked             # g_b: (T, B, P), time-major
        n = self._lengths
        dx_b, dhx_b, grads_b = self.backward_layer._run_backward(
            (None if g_b is None else reverse_padded(g_b, n), gh_b, gc_b))
        return self._flip(dx_b, n), dhx_b, grads_b
