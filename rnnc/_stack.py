"""Compiled forward of a stacked, optionally bidirectional RNN / GRU / LSTM.

``run_stack`` has the same signature and semantics as ``rnnc.reference.run_stack``; the classes
in rnnc.recurrent call one or the other. This module is the thin layer between the classes and
the kernels: it lays the batch out in PyTorch's packed form (sorted by decreasing length, see
rnnc/_sequence.pxd), allocates every buffer the kernels write, calls one kernel per layer and
direction, and scatters the results back to the caller's batch order.
"""
import numpy as np

from rnnc._gru_kernel import gru_forward
from rnnc._lstm_kernel import lstm_forward
from rnnc._rnn_kernel import rnn_forward
from rnnc._validation import check_blas_size

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

# Elements of the input-projection workspace per layer call. Bounds inference memory for long
# sequences while keeping each projection GEMM large (>= ~64 rows for hidden sizes <= 1024).
CHUNK_ELEMENTS = 1 << 20


class PackedLayout:
    """Where each time step's active rows live in the packed (N, features) arrays."""

    def __init__(self, steps, batch, lengths):
        if lengths is None or np.all(lengths == steps):
            self.perm = None
            self.batch_sizes = np.full(steps, batch, dtype=np.intp)
            self.offsets = np.arange(steps, dtype=np.intp) * batch
            self.n_rows = steps * batch
            return
        # Stable sort by decreasing length, as torch.nn.utils.rnn.pack_padded_sequence does.
        self.perm = np.argsort(-lengths, kind="stable")
        sorted_len = lengths[self.perm]
        steps_run = int(sorted_len[0]) if batch else 0
        t = np.arange(steps_run, dtype=np.intp)
        # Sequences still running at step t: those with length > t (a prefix of the sorted batch).
        self.batch_sizes = np.searchsorted(-sorted_len, -t, side="left").astype(np.intp)
        self.offsets = np.zeros(steps_run, dtype=np.intp)
        np.cumsum(self.batch_sizes[:-1], out=self.offsets[1:])
        self.n_rows = int(self.batch_sizes.sum())
        # Row of the padded (T * B) array that each packed row comes from.
        t_of_row = np.repeat(t, self.batch_sizes)
        j_of_row = np.arange(self.n_rows, dtype=np.intp) - self.offsets[t_of_row]
        self.rows = t_of_row * batch + self.perm[j_of_row]

    def pack(self, x):
        """(T, B, F) -> (N, F) packed rows (a view when every sequence is full length)."""
        flat = x.reshape(-1, x.shape[-1])
        return flat if self.perm is None else flat[self.rows]

    def unpack(self, packed, steps, batch):
        """(N, F) -> (T, B, F), zeros at padded positions."""
        if self.perm is None:
            return packed.reshape(steps, batch, -1)
        full = np.zeros((steps * batch, packed.shape[1]), dtype=packed.dtype)
        full[self.rows] = packed
        return full.reshape(steps, batch, -1)


def _empty(dtype, ndim):
    return np.empty((0,) * ndim, dtype=dtype)


def run_stack(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1, bidirectional=False,
              nonlinearity="tanh", reset_after=True, proj_size=0, reverse_all=False):
    """Run the network; see rnnc.reference.run_stack for the exact semantics.

    x (T, B, I), h0 (D*L, B, P), c0 (D*L, B, H) are C-contiguous arrays of one float dtype,
    lengths None or intp (B,) in [0, T] (checked by the caller).
    Returns out (T, B, D*P), h_n (D*L, B, P), c_n (D*L, B, H) or None.
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    G = GATES[mode]
    H = params["weight_hh_l0"].shape[0] // G
    P = proj_size if proj_size else H
    dtype = x.dtype
    h_n = np.array(h0, dtype=dtype, order="C", copy=True)
    c_n = None if c0 is None else np.array(c0, dtype=dtype, order="C", copy=True)
    if T == 0 or B == 0:
        return np.zeros((T, B, D * P), dtype=dtype), h_n, c_n

    layout = PackedLayout(T, B, lengths)
    if layout.perm is None:
        h_state, c_state = h_n, c_n          # updated in place by the kernels
    else:
        h_state = np.ascontiguousarray(h_n[:, layout.perm])
        c_state = None if c_n is None else np.ascontiguousarray(c_n[:, layout.perm])
    layer_in = layout.pack(x)
    n_rows = layout.n_rows
    chunk_steps = max(1, min(len(layout.batch_sizes), CHUNK_ELEMENTS // (B * G * H)))
    check_blas_size(chunk_steps * B, "rows of one input-projection GEMM")
    check_blas_size(D * P, "output width")

    # Workspace, allocated once for the whole stack.
    xg = np.empty((chunk_steps * B, G * H), dtype=dtype)
    if mode == "GRU":
        hg = np.empty((B, G * H), dtype=dtype)
        rh = np.empty((B, H), dtype=dtype) if not reset_after else np.empty((1, 1), dtype=dtype)
    if mode == "LSTM":
        hbuf = np.empty((B, H), dtype=dtype) if proj_size else _empty(dtype, 2)
    empty1 = _empty(dtype, 1)

    for k in range(num_layers):
        out = np.empty((n_rows, D * P), dtype=dtype)
        for d in range(D):
            sfx = "_reverse" if d else ""
            reverse = bool(d) or reverse_all
            w_ih = params[f"weight_ih_l{k}{sfx}"]
            w_hh = params[f"weight_hh_l{k}{sfx}"]
            b_ih = params.get(f"bias_ih_l{k}{sfx}", empty1)
            b_hh = params.get(f"bias_hh_l{k}{sfx}", empty1)
            s = k * D + d
            if mode == "LSTM":
                w_hr = params.get(f"weight_hr_l{k}{sfx}", _empty(dtype, 2))
                lstm_forward(layer_in, layout.batch_sizes, layout.offsets, reverse,
                             w_ih, w_hh, b_ih, b_hh, w_hr, h_state[s], c_state[s],
                             out, d * P, xg, hbuf, chunk_steps)
            elif mode == "GRU":
                gru_forward(layer_in, layout.batch_sizes, layout.offsets, reverse, reset_after,
                            w_ih, w_hh, b_ih, b_hh, h_state[s], out, d * H, xg, hg, rh,
                            chunk_steps)
            else:
                rnn_forward(layer_in, layout.batch_sizes, layout.offsets, reverse,
                            nonlinearity == "relu", w_ih, w_hh, b_ih, b_hh, h_state[s],
                            out, d * H, xg, chunk_steps)
        layer_in = out

    if layout.perm is not None:
        h_n[:, layout.perm] = h_state
        if c_n is not None:
            c_n[:, layout.perm] = c_state
    return layout.unpack(layer_in, T, B), h_n, c_n
