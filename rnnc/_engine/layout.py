"""Where each time step's rows live: PyTorch's packed layout of a variable-length batch.

The batch is sorted by decreasing length (as torch.nn.utils.rnn.pack_padded_sequence does), so
the sequences still running at step t are a prefix of it; the kernels read step t's rows at
offsets[t], batch_sizes[t] of them (rnnc/_kernels/_sequence.pxd).
"""
from itertools import pairwise

import numpy as np

from rnnc._engine.plan import ROW_TILE

_FULL_LAYOUTS = {}


def _full_layout(steps, batch):
    """(batch_sizes, offsets) of a batch without padding, read-only, kept for the next call
    of the same shape (a few us of a short sequence's call)."""
    key = (steps, batch)
    arrays = _FULL_LAYOUTS.get(key)
    if arrays is None:
        arrays = (np.full(steps, batch, dtype=np.intp), np.arange(steps, dtype=np.intp) * batch)
        for a in arrays:
            a.flags.writeable = False
        if len(_FULL_LAYOUTS) >= 64:
            _FULL_LAYOUTS.clear()
        _FULL_LAYOUTS[key] = arrays
    return arrays


class PackedLayout:
    """Where each time step's active rows live in the packed (N, features) arrays."""

    def __init__(self, steps, batch, lengths):
        if lengths is None or np.all(lengths == steps):
            self.perm = None
            self.batch_sizes, self.offsets = _full_layout(steps, batch)
            self.n_rows = steps * batch
            return
        # Stable sort by decreasing length, as torch.nn.utils.rnn.pack_padded_sequence does.
        self.perm = np.argsort(-lengths, kind="stable")
        sorted_len = self.sorted_lengths = lengths[self.perm]
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

    def row_split(self, parts=2):
        """(bounds, sizes) of a layer split by batch rows into `parts` parts
        (rnnc/_kernels/_parallel_forward.pyx, rows_forward_py): part p has the rows
        [bounds[p], bounds[p + 1]) of the packed (sorted) batch, sizes[p] of them active at
        every step. Every part starts at a multiple of ROW_TILE (the parts then compute the
        one-thread kernel's bits), at bounds that share the steps to run most evenly (the
        first rows are the longest); fewer parts where the batch has fewer row tiles."""
        steps = len(self.batch_sizes)
        batch = int(self.batch_sizes[0])
        lengths = (np.full(batch, steps, dtype=np.intp) if self.perm is None
                   else self.sorted_lengths)
        bounds = _row_bounds(lengths, parts)
        if self.perm is None:
            return bounds, [_full_layout(steps, b1 - b0)[0]
                            for b0, b1 in pairwise(bounds)]
        return bounds, [np.clip(self.batch_sizes - b0, 0, b1 - b0)
                        for b0, b1 in pairwise(bounds)]

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


def _row_boundary(sorted_lengths):
    """The multiple of ROW_TILE in (0, B) that splits the steps of the rows (sorted by
    decreasing length) most evenly between rows [0, rows0) and [rows0, B)."""
    return _row_bounds(sorted_lengths, 2)[1]


def _row_bounds(sorted_lengths, parts):
    """(0, the parts' first rows after the first, B): multiples of ROW_TILE, rising, each cut
    where the steps done so far come closest to their share of all the steps (sorted by
    decreasing length: the first rows are the longest). At most as many parts as the batch has
    row tiles (the last may be partial)."""
    B = len(sorted_lengths)
    parts = max(1, min(parts, -(-B // ROW_TILE)))
    done = np.cumsum(sorted_lengths)
    last = (B - 1) // ROW_TILE * ROW_TILE      # the last part's first row, at the latest
    bounds = [0]
    for k in range(1, parts):
        cuts = np.arange(bounds[-1] + ROW_TILE, last - ROW_TILE * (parts - 1 - k) + 1, ROW_TILE)
        share = done[-1] * k / parts
        bounds.append(int(cuts[np.argmin(np.abs(done[cuts - 1] - share))]))
    return (*bounds, B)


def gate_rows(G, H, u0, nu):
    """Rows of a (G * H, K) gate-major weight that feed hidden units [u0, u0 + nu): each gate's
    block of those units, gate after gate (a split part's share of the weights)."""
    return (np.arange(G)[:, None] * H + np.arange(u0, u0 + nu)).ravel()
