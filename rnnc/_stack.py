"""Compiled forward and backward of a stacked, optionally bidirectional RNN / GRU / LSTM.

``run_stack`` has the same signature and semantics as ``rnnc.reference.run_stack``
(``run_stack_train`` / ``run_stack_backward`` those of rnnc.reference's training pair); the
classes in rnnc.recurrent call one or the other. This module is the thin layer between the
classes and the kernels: it lays the batch out in PyTorch's packed form (sorted by decreasing
length, see rnnc/_sequence.pxd), allocates every buffer the kernels write, chooses the recurrent
GEMM (BLAS or the small-batch kernel) and how to use a second thread (the two directions of a
bidirectional layer concurrently, a unidirectional layer's batch rows or hidden units split in
two, or the next inputs projected ahead), calls
the kernels per layer and direction, and scatters the results back to the caller's batch order.
"""
import contextlib
import math
import threading

import numpy as np

from rnnc._dropout import dropout_mask
from rnnc._threads import blas_one_thread, cached_num_threads, run_pair
from rnnc._validation import check_blas_size

# The kernels are imported on first use, not with rnnc: they cimport scipy.linalg.cython_blas,
# and importing scipy.linalg is most of the cost of `import rnnc` (~0.2 s of ~0.3 s).

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _Kernels:
    """The compiled kernels' entry points, imported on first use (see above) and then kept as
    attributes: an import statement in a function costs ~0.7 us a call even when the module is
    loaded, and a short layer call made six of them."""

    def __getattr__(self, name):
        from rnnc import _blas, _gru_kernel, _lstm_kernel, _parallel_forward, _rnn_kernel
        for module in (_lstm_kernel, _gru_kernel, _rnn_kernel, _blas, _parallel_forward):
            if hasattr(module, name):
                value = getattr(module, name)
                setattr(self, name, value)
                return value
        raise AttributeError(name)


_K = _Kernels()

# Elements of the input-projection workspace per layer call. Bounds inference memory for long
# sequences while keeping each projection GEMM large (>= ~64 rows for hidden sizes <= 1024).
CHUNK_ELEMENTS = 1 << 20


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

    def row_split(self):
        """(rows0, batch sizes of rows [0, rows0), of rows [rows0, B)) at every step: the
        parts of a layer split by batch rows (rnnc/_parallel_forward.pyx, rows_forward_py).
        rows0 is a multiple of ROW_TILE (the parts then compute the one-thread kernel's bits)
        that shares the steps to run most evenly (the first rows are the longest)."""
        if self.perm is None:
            steps, batch = len(self.batch_sizes), int(self.batch_sizes[0])
            rows0 = _row_boundary(np.full(batch, steps, dtype=np.intp))
            return (rows0, _full_layout(steps, rows0)[0], _full_layout(steps, batch - rows0)[0])
        rows0 = _row_boundary(self.sorted_lengths)
        return (rows0, np.minimum(self.batch_sizes, rows0),
                np.maximum(self.batch_sizes - rows0, 0))

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


ROW_TILE = 4     # rows of the small-batch kernel's tiles (rnnc/_small_gemm.h)


def _row_boundary(sorted_lengths):
    """The multiple of ROW_TILE in (0, B) that splits the steps of the rows (sorted by
    decreasing length) most evenly between rows [0, rows0) and [rows0, B)."""
    done = np.cumsum(sorted_lengths)
    cuts = np.arange(ROW_TILE, len(sorted_lengths), ROW_TILE)
    return int(cuts[np.argmin(np.maximum(done[cuts - 1], done[-1] - done[cuts - 1]))])


_EMPTIES = {}


def _empty(dtype, ndim):
    """A zero-size array: "none" for an optional kernel argument. Shared (nothing can be
    written into it), so that a call does not build a dozen of them."""
    key = (dtype, ndim)
    a = _EMPTIES.get(key)
    if a is None:
        a = _EMPTIES[key] = np.empty((0,) * ndim, dtype=dtype)
    return a


def _aligned(buf, shape):
    """A C-contiguous array of `shape` starting on a 64-byte boundary inside the flat `buf`
    (which has 64 bytes to spare)."""
    n = math.prod(shape)
    skip = (-buf.ctypes.data % 64) // buf.itemsize
    return buf[skip:skip + n].reshape(shape)


def aligned_empty(shape, dtype):
    """np.empty, 64-byte aligned. The two threads of a split layer write to the same rows of
    the shared buffers, each its own columns: with the rows and the parts' column blocks on
    cache-line boundaries they never write to the same line (NumPy's large arrays start 16
    bytes past a page boundary; the lines shared at the part boundary made the pointwise passes
    of a split LSTM B16 H128 ~2x slower)."""
    return _aligned(np.empty(math.prod(shape) + 64, dtype=dtype), shape)


def new_barrier():
    """The words of a spinning barrier (rnnc/_barrier.h), zeroed, on a cache line of their
    own: one per split layer call, shared by its two parts."""
    return _aligned(np.zeros(64, dtype=np.int32), (16,))


# Scratch buffers (input projections, packed weights, the split layers' private and shared
# buffers) are kept per calling thread and reused by the next call: fresh arrays of a few MB
# cost a page fault per 4 KB on first touch, and two threads faulting at once (a split layer)
# serialise in the kernel -- measured 30% of LSTM B16 H128 at 2 threads. Each thread keeps at
# most one buffer per key, as large as its largest use so far (bounded by CHUNK_ELEMENTS-sized
# projections and the packed weights), 64-byte aligned (see aligned_empty). Keys name a buffer's
# role and its direction/part, which never overlap within one call.
_scratch = threading.local()


def _workspace(key, shape, dtype):
    """This thread's scratch buffer `key`, of this shape and dtype, 64-byte aligned; a new
    array (aligned too) when key is None."""
    if key is None:
        return aligned_empty(shape, dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    n = math.prod(shape)
    entry = buffers.get(key)
    if entry is None or entry[0].dtype != dtype or entry[0].size < n + 64:
        buf = np.empty(n + 64, dtype=dtype)
        # The offset to the first 64-byte boundary, found once (ndarray.ctypes costs ~1.5 us).
        entry = buffers[key] = (buf, (-buf.ctypes.data % 64) // buf.itemsize)
    buf, skip = entry
    return buf[skip:skip + n].reshape(shape)


# Batches for which the packed small-batch kernels (rnnc/_small_gemm.h, float32 and float64)
# replace BLAS in the recurrent product: any batch on one thread, up to 16 rows with more threads,
# since the kernel runs on one thread and multi-threaded BLAS wins on larger products (measured
# with benchmarks/suite.py on 2 cores). A batch of 1 gains too (LSTM B1 H64 T100: 0.19 ms vs
# BLAS's matrix-vector path 0.23 ms) since the row kernel keeps eight FMA chains in flight.
# float64 measured to the same limits (LSTM/GRU/RNN, H64-H1024, whole layers at 1 thread): the
# kernel took 0.15-0.6x BLAS's time at B2-B16 and H >= 256 (LSTM H1024 B8: 39 ms vs 72 ms),
# 0.75-0.95x at B16-B64, ties at B1-B2 for H <= 128 and at B96-B128. At 2 threads, training
# (no split layers) with B >= 32 and H >= 256 took 1.1-1.2x BLAS's time, B8-B16 0.8-1.0x.
# Since the fused LSTM product and the AVX-512 rows, whole layers at one thread gain at every
# larger batch too (float32 inference B128-B1024, H128-H1024: 0.86-0.95x; float64 B256 H256
# 0.93-0.98x; training B128-B256 H256 0.96-0.98x): one thread has no limit.
SMALL_GEMM_MAX_BATCH = {1: 1 << 62}
SMALL_GEMM_MAX_BATCH_THREADED = 16
_SMALL_GEMM = []

def _use_small_gemm(dtype, batch, steps, one_thread=False):
    # Packing costs one pass over the weights per call. A frozen module keeps its panels, but
    # chooses as an unfrozen one does, so that both compute the same bits.
    if steps < 4:
        return False
    if dtype != np.float32 and dtype != np.float64:
        return False
    if not _SMALL_GEMM:
        _SMALL_GEMM.append(_K.has_small_gemm())
    threads = 1 if one_thread else cached_num_threads()
    limit = SMALL_GEMM_MAX_BATCH.get(threads, SMALL_GEMM_MAX_BATCH_THREADED)
    return _SMALL_GEMM[0] and 1 <= batch <= limit


# With the small-batch kernel, the input projection x W_ih^T runs on it too, on W_ih packed
# once per call: OpenBLAS packs W_ih itself on every GEMM, with a slower copy. Measured at 1
# thread, pack + kernel against BLAS, weights out of cache as in a layer call: float32 (160 x
# 1024) @ (1024 x 4096)^T (LSTM B8 H1024 T20) 14.1 vs 16.2 ms, (100 x 256) @ (256 x 1024)^T
# 0.50 vs 0.58 ms, (3200 x 128) @ (128 x 512)^T 3.75 vs 4.10; float64 26.1 vs 28.7, 1.03 vs
# 1.12, (1600 x 128) @ (128 x 512)^T 3.9 vs 4.4 (ties from 3200 rows; a chunk of the projection
# has at most CHUNK_ELEMENTS outputs, 1024 rows at 4H = 1024). With more threads, where the layer
# is not split, multi-threaded BLAS wins on larger projections (LSTM B1 H32 T1000 at 2 threads:
# 0.284 vs 0.273 ms), the kernel on smaller ones (LSTM B1 H64 T100 0.133 vs 0.146, GRU 0.105 vs
# 0.123): up to this many multiply-adds per chunk.
PACKED_PROJECTION_MAX_THREADED_WORK = 1 << 21


def _use_packed_projection(small, one_thread, rows, w_ih):
    return small and (one_thread or rows * w_ih.size <= PACKED_PROJECTION_MAX_THREADED_WORK)


# A projection on the kernel that covers the whole sequence in one chunk reads W_ih once: it is
# then packed panel by panel as the product goes (small_gemm_packing, rnnc/_blas.pxd), each
# panel used by every row while in L2, instead of packed whole first, which wrote it out and
# read it back through memory. Not for a frozen module (`packs`), which keeps W_ih packed whole.
# Same bits either way. Measured, B8 H1024 T20 float32, ms (median of 15 calls, both ways in one
# process): 2 threads (split by units) GRU 11.33-11.41 -> 10.58-10.67, LSTM 15.1-15.3 -> 14.3-14.4,
# RNN 3.46 -> 3.39; 1 thread GRU 20.35-20.43 -> 19.87-19.91, RNN 6.46-6.50 -> 6.39; smaller
# layers (LSTM B16 H256 T100, GRU B16 H128) unchanged.
IH_PER_PANEL = True


def _ih_per_panel(packs, chunk_steps, layout):
    return IH_PER_PANEL and packs is None and chunk_steps >= layout.batch_sizes.shape[0]


# Bidirectional layers run their two directions concurrently (one on the calling thread, one on
# rnnc's helper thread, BLAS at one thread each) when rnnc may use 2+ threads and the recurrent
# product of one step has at least this many multiply-adds (batch x gates x hidden x state):
# below it (e.g. B4 H128: 2.6e5) the helper thread and BLAS's idle spinning cost more than the
# concurrency saves (measured: B16 H256 bi-LSTM 58 ms concurrent vs 97 ms one after the other).
PARALLEL_MIN_WORK = 1 << 20


def _parallel_directions(D, work):
    return D == 2 and work >= PARALLEL_MIN_WORK and cached_num_threads() >= 2


def _run_directions(run, parallel):
    """run(0) and run(1), concurrently when parallel: both kernels release the GIL."""
    if parallel:
        run_pair(lambda: run(0), lambda: run(1))
    else:
        run(0)
        run(1)


# Inference splits a layer's hidden units between two threads (rnnc/_parallel_forward.pyx) when
# rnnc may use 2+ threads and the directions do not already run concurrently, if each step's
# recurrent product is big enough to repay a barrier per step (~1 us with the imbalance between
# the parts) and the whole layer to repay posting the helper and each part packing its own
# weights. Measured at 2 threads on this 2-core machine (two busy cores run ~30% slower each),
# T100, layer time split / unsplit: GRU B1 H256 0.65, LSTM B4 H128 0.77, GRU B8 H128 0.75, RNN
# B16 H128 0.82, RNN B8 H256 0.76, LSTM B8 H1024 T20 0.84 (all >= 3 * 2^16 multiply-adds a
# step); around and below that size it ties or loses (LSTM B2 H128 1.00, GRU B2 H128 1.04, RNN B4
# H128 1.7, LSTM B1 H64 1.2, LSTM B1 H32 T1000 2.3), and with H < 128 (parts of less than one
# 64-column panel) it is erratic (LSTM B16 H64 0.74 but GRU B16 H64 1.44). Shared buffers are
# 64-byte aligned (aligned_empty): without it GRU B16 H128 lost (1.13) instead of gaining (0.77).
SPLIT_MIN_HIDDEN = 128
SPLIT_MIN_STEP_WORK = 3 << 16       # multiply-adds of one step's recurrent product
SPLIT_MIN_TOTAL_WORK = 1 << 21      # multiply-adds of all recurrent products of the layer
_SPLIT_MODES = {"RNN": 0, "GRU": 2, "LSTM": 3}


def _split_layers(mode, B, H, steps, proj_size, reset_after, train, parallel):
    step_work = B * GATES[mode] * H * H
    # Whatever SPLIT_MIN_HIDDEN says, each part needs at least 16 units (_run_split's halves).
    return (not train and not parallel and not proj_size and H >= max(SPLIT_MIN_HIDDEN, 32)
            and (mode != "GRU" or reset_after)
            and step_work >= SPLIT_MIN_STEP_WORK and steps * step_work >= SPLIT_MIN_TOTAL_WORK
            and cached_num_threads() >= 2)


# LSTM inference without projection may compute x<t> W_ih^T + h<t-1> W_hh^T + b as one product
# per step with the small-batch kernel (rnnc/_fused.pxd, fused_sequence) instead of
# a BLAS GEMM over a chunk of steps plus one product per step. It reads all weights every step,
# so it pays when the batch reuses them and they stay in cache. Measured at 1 thread (layer
# time fused / unfused): float32 B4-B64 H128-H256 0.92-0.95, B16-B64 H512 0.94-0.97, B8 H512
# 1.00, B2 H128 1.03, every H1024 1.35-1.45 (33 MB of weights), B1 H256 1.34; float64 B4-B64
# H128-H512 0.94-0.98. Elements of [W_ih | W_hh | b], 4H x (I + H + 1):
FUSED_MIN_BATCH = 4
FUSED_MAX_WEIGHTS = 2_200_000
FUSED_WEIGHTS_PER_ROW = 150_000     # and at most this many per batch row


def _fused_fits(B, weights):
    """Whether B rows reuse `weights` elements of [W_ih | W_hh | b] enough (see above)."""
    return B >= FUSED_MIN_BATCH and weights <= min(FUSED_MAX_WEIGHTS, B * FUSED_WEIGHTS_PER_ROW)


def _use_fused(mode, B, I, H, proj_size, train, small, one_thread):
    return (mode == "LSTM" and not train and not proj_size and small and one_thread
            and _fused_fits(B, 4 * H * (I + H + 1)))


def _run_fused(layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out, col0, d,
               packs=None, name=()):
    dtype = layer_in.dtype
    G, H = w_hh.shape
    I = w_ih.shape[1]
    packed = _kept(packs, (*name, "fused"), lambda scratch: _fused_weights(
        w_ih, w_hh, b_ih, b_hh, d, keep=not scratch))
    _K.lstm_fused_forward(layer_in, layout.batch_sizes, layout.offsets, reverse,
                          packed, h, c, out, col0,
                          _workspace(f"fused xh {d}", (h.shape[0], I + H + 1), dtype),
                          _workspace(f"fused gates {d}", (h.shape[0], G), dtype))


# A unidirectional LSTM layer on the fused product at 2+ threads runs its batch in two parts of
# rows, one on each thread (rnnc/_parallel_forward.pyx, rows_forward_py), when each part still
# reuses the weights enough for the fused product (_fused_fits of half the batch): the parts
# share nothing while the steps run, where the split by hidden units meets every step and moves
# the state between the cores. Measured at 2 threads, layer time in ms, before (split by units,
# or projection ahead for B32 H64) -> split by rows; the ranges span the host's placements of
# the two vCPUs (a cache line's round trip between them took 65-75 ns or 350-395 ns, changing
# every few minutes): LSTM T100 B8 H128 1.17-1.60 -> 1.11-1.47, B16 H128 2.26-3.13 ->
# 2.15-2.44, B32 H128 4.44-6.13 -> 4.24-4.53, B32 H64 1.98-3.45 -> 1.23-1.57; T50 B64 H256
# 16.6-19.9 -> 16.0-16.5, B64 H512 62.8-68.2 -> 62.2-63.0; T20 B256 H256 26.3-31.0 -> 25.7-25.8.
# A vanilla RNN layer splits by rows the same way in inference, each part on the RNN's form of
# the fused product ([x | h | 1] @ [W_ih | W_hh | b]^T, fused_sequence). Measured at 2
# threads (vCPUs placed near), split by units or projection ahead -> by rows: RNN T20 B256 H256
# 7.5-7.7 -> 6.7 ms; T100 B16 H128 0.72-0.76 -> 0.59-0.63, B8 H128 0.35 -> 0.33-0.37, B32 H64
# 0.64 -> 0.36-0.39; T50 B64 H256 4.6-4.7 -> 4.1, B64 H512 17.2-17.9 -> 15.8-15.9. A GRU
# (reset_after) layer splits by rows too, each part running the one-thread kernel's step with
# its inputs projected step by step (gru_rows_sequence: two products a step, its n gate needs
# the state's product apart). Measured at 2 threads, split by units -> by rows, ms (median of
# 11, both in one process): vCPUs far apart (round trip 376-394 ns) T100 B8 H128 1.40 -> 1.10,
# B16 H128 2.60 -> 1.95-2.02, B32 H128 5.1 -> 3.55, B16 H256 7.9 -> 6.3; T50 B64 H256
# 15.5-15.6 -> 12.0-12.1, B64 H512 52.5-52.7 -> 46.4; T20 B256 H256 24.8 -> 19.2; near (82
# ns) T100 B8 H128 0.93 -> 0.86-0.89, B16 H128 1.77-1.79 -> 1.69-1.70, B32 H128 3.45-3.50 ->
# 3.17-3.20, B16 H256 6.32-6.37 -> 6.07-6.12; T50 B64 H256 12.4-12.6 -> 11.9-12.4, B64 H512
# 47.1-47.7 -> 46.4-46.7; T20 B256 H256 20.0-20.1 -> 19.1.
ROW_SPLIT_MIN_BATCH = 2 * ROW_TILE


def _row_split(mode, B, I, H, proj_size, parallel, small, train, reset_after=True):
    """Whether a layer (inference, or LSTM training: rnnc/_split_train.py) splits by rows: its
    weights small enough for each part to reuse them from cache (_fused_fits of half the batch;
    a GRU part reads as many bytes a step as the fused product's)."""
    return ((mode == "LSTM" or (mode in ("RNN", "GRU") and not train))
            and (mode != "GRU" or reset_after)
            and not parallel and not proj_size and small and B >= ROW_SPLIT_MIN_BATCH
            and _fused_fits(B // 2, GATES[mode] * H * (I + H + 1))
            and cached_num_threads() >= 2)


def _run_rows(code, layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out, col0, d,
              packs, name, helper):
    """One LSTM, GRU or RNN layer and direction, inference, split by batch rows: rows
    [0, rows0) on this thread, the others on the helper when `helper` (the caller holds
    _split_begin()). code: the kernel's mode (_SPLIT_MODES, + 1 for relu); c None but for
    LSTM."""
    dtype = layer_in.dtype
    B, H = h.shape
    I = w_ih.shape[1]
    K = I + H + 1
    G = w_ih.shape[0]
    empty2 = _empty(dtype, 2)
    rows0, sizes0, sizes1 = layout.row_split()
    # Each part packs its own copy of the weights, both at once, and reads only that one: two
    # threads reading one copy ran ~10% slower here when the host placed the vCPUs far apart.
    # A frozen module keeps both copies (packed by the parts on its first call).
    # GRU: each part's copies of W_ih's and W_hh's panels (gru_rows_sequence).
    lstm = c is not None
    gru = code == _SPLIT_MODES["GRU"]
    keys = [(*name, "rows", p) for p in range(2)]
    kept = [packs.get(key) for key in keys] if packs is not None else [None, None]
    prepared = kept[0] is not None and kept[1] is not None
    if not prepared:
        def panels(role, p, cols):
            return panel_workspace(None if packs is not None else f"rows {role} {d} {p}", G,
                                   cols, dtype)
        kept = [(panels("packed", p, I), panels("packed hh", p, H)) if gru
                else panels("packed", p, K) for p in range(2)]
    if gru:
        # Each part's workspace for the state's product and its folded biases.
        gru_args = dict(packed_hh0=kept[0][1], packed_hh1=kept[1][1],
                        hg0=_workspace(f"rows hg {d}", (rows0, G), dtype),
                        hg1=_workspace(f"rows hg {d} 1", (B - rows0, G), dtype),
                        bias0=_workspace(f"rows bias {d}", (G if b_ih.size else 0,), dtype),
                        bias1=_workspace(f"rows bias {d} 1", (G if b_ih.size else 0,), dtype))
    _K.rows_forward_py(code, layer_in, sizes0, sizes1, layout.offsets, reverse, w_ih, w_hh,
                       b_ih, b_hh, kept[0][0] if gru else kept[0],
                       kept[1][0] if gru else kept[1], prepared, h, c if lstm else empty2, out,
                       col0, rows0,
                       _workspace(f"rows xh {d}", (rows0, K), dtype) if not gru else empty2,
                       _workspace(f"rows xh {d} 1", (B - rows0, K), dtype) if not gru else empty2,
                       _workspace(f"rows gates {d}", (rows0, G), dtype),
                       _workspace(f"rows gates {d} 1", (B - rows0, G), dtype),
                       _workspace(f"rows c {d}", (rows0, H), dtype) if lstm else empty2,
                       _workspace(f"rows c {d} 1", (B - rows0, H), dtype) if lstm else empty2,
                       helper, **(gru_args if gru else {}))
    if packs is not None and not prepared:
        packs.update(zip(keys, kept))       # only once filled: another thread may read them


# A split part copies its rows of W_ih together (one projection GEMM) unless W_ih has at least
# this many bytes: then one GEMM per gate block reads them in place. The copy is a pass through
# memory over large weights (at 2 threads, LSTM B8 H1024 T20: 17.9 -> 16.1 ms in place, GRU
# 13.3 -> 12.1, float64 LSTM 39.7 -> 37.6); for small ones the extra packing of the inputs
# costs more (GRU B16 H128 +3%, B64 H256 +2%; 1 MB and less within noise).
SPLIT_IN_PLACE_MIN_BYTES = 2 << 20
# Where the parts run the small-batch kernel, each packs its rows of W_ih and projects on the
# kernel instead (_use_packed_projection at one thread: the parts run one thread each).
# Measured at 2 threads, interleaved in one process, median of 8 (noisy host): LSTM B1 H256
# T100 0.95 -> 0.92 ms, GRU 0.80 -> 0.76, LSTM B8 H1024 T20 17.4 -> 17.2, GRU 12.9 -> 12.9.

FUSED = "fused"     # the marker of a fused training forward's kept buffers


def _fused_weights(w_ih, w_hh, b_ih, b_hh, d, keep=False):
    """[W_ih | W_hh | b_ih + b_hh] (4H, I + H + 1) in the small-batch kernel's panels (this
    thread's scratch buffer; a new array when keep)."""
    G, H = w_hh.shape
    packed = panel_workspace(None if keep else f"packed {d}", G, w_ih.shape[1] + H + 1,
                             w_ih.dtype)
    _K.pack_fused_into(w_ih, w_hh, b_ih, b_hh, packed)
    return packed


def _run_fused_train(layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out, col0, d):
    dtype = layer_in.dtype
    G, H = w_hh.shape
    I = w_ih.shape[1]
    n_rows = layout.n_rows
    xh = np.empty((n_rows, I + H + 1), dtype=dtype)
    xh[:, :I] = layer_in
    xh[:, I + H] = 1
    act = np.empty((n_rows, G), dtype=dtype)
    c_prev = np.empty((n_rows, H), dtype=dtype)
    _K.lstm_fused_train_forward(xh, layout.batch_sizes, layout.offsets, reverse,
                                _fused_weights(w_ih, w_hh, b_ih, b_hh, d), h, c, out, col0, act,
                                c_prev)
    return act, xh, c_prev, FUSED


_SPLIT_LOCK = threading.Lock()    # the split's helper thread serves one layer call at a time


# A split layer call waits for the helper thread even when it is asleep, although waking a
# thread took from 0.6 to several ms on this virtual machine (rnnc/_worker.h; calls 10 ms apart,
# split LSTM B1 H256 T100: 7.1 ms against 0.86 back to back and 1.6 on one thread). Running such
# calls on one thread instead (and waking the helper for the next ones) was measured and
# dropped: the helper sleeps again before the next call of a loop (it spins ~0.5 ms; the
# one-thread call takes longer), so that a loop of calls never split (1.6 ms a call). Layers
# split by rows (_run_rows) do not wait: their caller takes the helper's half if it has not
# started; the split by units would need the caller to run both parts in lockstep until then.
def _split_begin(wait=False):
    """True (holding _SPLIT_LOCK) if this call may use the helper thread of
    rnnc/_parallel_forward.pyx now: it is running and no other thread's call is using it.
    wait: wait for another call to finish with it instead of answering False. The split by
    units waits, since its one-thread fallback rounds differently: a call's bits must not
    depend on what other threads are doing."""
    if not _SPLIT_LOCK.acquire(blocking=wait):
        return False
    if _K.split_helper_ready():
        return True
    _SPLIT_LOCK.release()
    return False


def _folded_biases(mode, b_ih, b_hh, H):
    """(the biases added with the input projection, GRU's b_hn or zero-size) of the split and
    pipelined kernels (rnnc/_parallel_forward.pyx): b_ih + b_hh, but for GRU b_ih + b_hh of the
    r and z gates only, since b_hn goes inside r * (.); zero-size without biases."""
    if not b_ih.size:
        return b_ih, b_ih
    if mode != "GRU":
        return b_ih + b_hh, b_ih[:0]
    bias = b_ih.copy()
    bias[:2 * H] += b_hh[:2 * H]
    return bias, b_hh[2 * H:]


def _run_split(mode, code, layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out,
               col0, chunk_steps, small, packs=None, name=()):
    """One layer and direction, inference, hidden units split between this thread and the
    helper thread of rnnc/_parallel_forward.pyx (the caller holds _split_begin()). Everything
    is allocated here, before either part starts: the parts wait for each other every step, so
    neither may fail alone. Each part copies and packs its own weight rows, or, with `packs` (a
    frozen module's cache, see pack_panels), finds them kept from an earlier call."""
    dtype = layer_in.dtype
    G, H = GATES[mode], h.shape[1]
    B = h.shape[0]
    half = max(16, H // 2 // 16 * 16)
    width = _K.panel_width(dtype)
    bias, b_hn = _folded_biases(mode, b_ih, b_hh, H)
    hbuf = _workspace("split h", (2, B, H), dtype)
    hbuf[0] = h
    hbuf[1] = h
    empty1, empty2, empty3 = _empty(dtype, 1), _empty(dtype, 2), _empty(dtype, 3)
    I = w_ih.shape[1]
    K = I + H + 1
    # Each part may use the fused LSTM product (see _use_fused) on its half of the weights.
    fused = mode == "LSTM" and small and _fused_fits(B, 2 * H * K)
    args, kept, new = {}, {}, {}
    for p, (u0, nu) in enumerate(((0, half), (half, H - half))):
        rows = (np.arange(G)[:, None] * H + np.arange(u0, u0 + nu)).ravel()
        # Packed straight from W_hh's / W_ih's gate blocks when nu fills whole panels, else
        # from the part's gathered rows (which the BLAS path multiplies directly).
        gather_hh = (not small or nu % width) and not fused
        # The projection: on the kernel with the part's rows of W_ih packed (as
        # _use_packed_projection, one thread), else BLAS on the gathered rows, or on W_ih's
        # gate blocks in place when large.
        packed_ih = not fused and _use_packed_projection(small, True, chunk_steps * B, w_ih)
        in_place = ((not fused and not packed_ih and w_ih.nbytes >= SPLIT_IN_PLACE_MIN_BYTES)
                    or (packed_ih and nu % width == 0))
        per_panel = packed_ih and _ih_per_panel(packs, chunk_steps, layout)
        key = (*name, "split", p, small, fused, packed_ih, in_place, gather_hh)
        kept[p] = packs.get(key) if packs is not None else None
        if kept[p] is None:
            # Kept arrays are new ones (key None), not this thread's scratch.
            scratch = (lambda role: f"split {role} {p}") if packs is None else (lambda role: None)
            kept[p] = new[key] = dict(
                w_ih=empty2 if in_place else
                _workspace(scratch("w_ih"), (G * nu, K if fused else I), dtype),
                w_hh=_workspace(scratch("w_hh"), (G * nu, H), dtype) if gather_hh else empty2,
                packed=panel_workspace(scratch("packed"), G * nu, K if fused else H, dtype)
                if small else empty3,
                ih_packed=panel_workspace(scratch("packed ih"),
                                          width if per_panel else G * nu, I, dtype)
                if packed_ih else empty3)
        args[p] = dict(
            kept[p],
            bias=bias[rows] if bias.size else empty1,
            b_hn=b_hn[u0:u0 + nu] if b_hn.size else empty1,
            cpart=_workspace(f"split c {p}", (B, nu), dtype) if mode == "LSTM" else empty2,
            xg=_workspace(f"split xg {p}", (chunk_steps * B, G * nu), dtype),
            hg=_workspace(f"split hg {p}", (B, G * nu), dtype) if mode == "GRU" else empty2,
            xh=_workspace(f"split xh {p}", (B, K), dtype) if fused else empty2)
    a, b = args[0], args[1]
    # On the small-batch kernel the parts never call BLAS (products and projections are
    # packed): holding BLAS at one thread is then not needed, and costs ~12 us a call.
    with blas_one_thread() if not small else contextlib.nullcontext():
        _K.split_forward_py(code, layer_in, layout.batch_sizes, layout.offsets, reverse, w_ih, w_hh,
                            half, a["bias"], b["bias"], a["b_hn"], b["b_hn"], a["w_ih"], b["w_ih"],
                            a["w_hh"], b["w_hh"], a["packed"], b["packed"], a["ih_packed"],
                            b["ih_packed"], hbuf, h,
                            c if c is not None else empty2, a["cpart"], b["cpart"], out, col0,
                            a["xg"], b["xg"], a["hg"], b["hg"], a["xh"], b["xh"], chunk_steps,
                            new_barrier(), not new, per_panel)
    if packs is not None:
        packs.update(new)       # only once filled: another thread may read them next


# A layer that runs on one thread while rnnc may use two (too small to split, and no second
# direction to run beside it) has the helper thread of rnnc/_parallel_forward.pyx project the
# inputs of the next chunk of steps while this thread runs the steps of the current one
# (pipelined_forward_py), from PIPELINE_MIN_STEPS steps. The sequence is cut into about
# PIPELINE_CHUNKS chunks: the first chunk's projection is not hidden, later ones are. Measured
# at 2 threads against the one-thread kernels (median of 200 calls): LSTM B1 H64 T100 0.106 vs
# 0.122 ms, GRU 0.084 vs 0.094, LSTM B1 H32 T1000 0.220 vs 0.250, LSTM B2 H128 T100 0.447 vs
# 0.535, B16 H64 T50 0.43 vs 0.52, RNN B1 H64 T100 equal; with 2 chunks instead of 8, the
# unhidden first chunk left LSTM B2 H128 no faster.
PIPELINE_CHUNKS = 8
PIPELINE_MIN_STEPS = 16


def _pipeline_steps(mode, steps, chunk_steps, proj_size, reset_after, small, one_thread, split,
                    train):
    """Steps per chunk of a projection-ahead layer call, or 0 where it does not apply (one
    thread: set_num_threads(1), or each direction on its own thread)."""
    if (train or split or one_thread or not small or proj_size
            or (mode == "GRU" and not reset_after)):
        return 0
    if steps < PIPELINE_MIN_STEPS:
        return 0
    return min(chunk_steps, -(-steps // PIPELINE_CHUNKS))


def _run_pipelined(mode, code, layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out,
                   col0, per_chunk, d, packs, name, helper):
    """One layer and direction, inference, its steps on this thread and the projection of the
    next chunk's inputs on the helper when `helper` (the caller holds _split_begin())."""
    dtype = layer_in.dtype
    G, H = GATES[mode], h.shape[1]
    B = h.shape[0]
    empty2 = _empty(dtype, 2)
    bias, b_hn = _folded_biases(mode, b_ih, b_hh, H)
    w_packed, _ = _recurrent_panels(mode, True, w_hh, True, d, False, packs, name)
    w_ih_packed = pack_panels(w_ih, f"packed ih {d}", packs, (*name, "ih"))
    hbuf = _workspace("pipe h", (2, B, H), dtype)
    hbuf[0] = h
    hbuf[1] = h
    _K.pipelined_forward_py(
        code, layer_in, layout.batch_sizes, layout.offsets, reverse, w_ih, w_ih_packed, bias,
        b_hn, w_hh, w_packed, hbuf, h, c if c is not None else empty2,
        _workspace("pipe c", (B, H), dtype) if mode == "LSTM" else empty2, out, col0,
        _workspace("pipe ring", (2, per_chunk * B, G * H), dtype),
        _workspace("pipe hg", (B, G * H), dtype) if mode == "GRU" else empty2, per_chunk,
        helper)


def panel_workspace(key, rows, K, dtype):
    """A buffer for `rows` rows of (K) weights in the small-batch kernel's panels,
    (ceil(rows / W), K, W), 64-byte aligned: this thread's scratch buffer `key`, or a new
    array when key is None (a frozen module's kept panels). Unaligned panels split a load in
    two cache lines: kept panels of NumPy's default alignment made LSTM B1 H32 T1000 ~12%
    slower than the scratch buffers."""
    width = _K.panel_width(dtype)
    return _workspace(key, (-(-rows // width), K, width), dtype)


def _kept(packs, name, make):
    """make(scratch=True) without `packs`; with `packs` (a frozen module's cache, see
    Module.freeze), what an earlier call kept under `name`, else make(scratch=False) (new
    arrays), kept once made: another thread may read it next."""
    if packs is None:
        return make(True)
    value = packs.get(name)
    if value is None:
        value = packs[name] = make(False)
    return value


def pack_panels(w, key=None, packs=None, name=None):
    """w (N, K) -> w^T in panels of W columns, (ceil(N / W), K, W), zero-padded: the layout of
    the small-batch kernel's weights, W = 64 for float32 and 32 for float64 (the dtype of w).
    Packed afresh on every call, so in-place parameter updates are always seen; into this
    thread's scratch buffer `key` when given. packs, name: see _kept."""
    def make(scratch):
        packed = panel_workspace(key if scratch else None, w.shape[0], w.shape[1], w.dtype)
        _K.pack_panels_into(w, packed)
        return packed
    return _kept(packs, name, make)


def _recurrent_panels(mode, reset_after, w_hh, small, d, backward, packs=None, name=()):
    """(W_hh packed for the small-batch kernel, W_hn's panels or a zero-size placeholder) of
    direction d, both zero-size without the kernel. GRU with reset_after=False multiplies by
    [W_hr; W_hz] and by W_hn in two products a step, so they are packed apart. The backward
    multiplies by W_hh itself: its panels are those of W_hh^T. packs, name: see pack_panels
    (name identifies the layer and direction)."""
    empty3 = _empty(w_hh.dtype, 3)
    if not small:
        return empty3, empty3
    blocks = [w_hh]
    if mode == "GRU" and not reset_after:
        H = w_hh.shape[1]
        blocks = [w_hh[:2 * H], w_hh[2 * H:]]
    packed = [pack_panels(w.T if backward else w, f"packed {k}{d}", packs, (*name, k))
              for k, w in zip(("", "hn "), blocks)]
    return packed[0], packed[1] if len(packed) > 1 else empty3


def run_stack(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1, bidirectional=False,
              nonlinearity="tanh", reset_after=True, proj_size=0, reverse_all=False,
              packs=None):
    """Run the network; see rnnc.reference.run_stack for the exact semantics.

    x (T, B, I), h0 (D*L, B, P), c0 (D*L, B, H) are C-contiguous arrays of one float dtype,
    lengths None or intp (B,) in [0, T] (checked by the caller).
    packs: None (weights packed afresh on every call), or a dict that keeps them across calls,
    which the caller empties whenever a parameter changes (a frozen module, Module.freeze).
    Returns out (T, B, D*P), h_n (D*L, B, P), c_n (D*L, B, H) or None.
    """
    out, h_n, c_n, _ = _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional,
                            nonlinearity, reset_after, proj_size, reverse_all, train=False,
                            packs=packs)
    return out, h_n, c_n


_ONE_STEP = {}


def run_step(mode, params, x, h, c=None, *, nonlinearity="tanh", reset_after=True, suffix="_l0"):
    """One inference step of a one-layer network (the cells): x (B, I), h (B, H), c (B, H) or
    None, validated C-contiguous arrays of one dtype; returns (h', c' or None), new arrays.
    params are named as layer 0's ("weight_ih_l0"), or with another suffix (a cell's: "").
    The layer kernel is called directly: with one step every row is active, so there is no
    packed layout to build, nothing to chunk or split, and (one step) no weights to pack."""
    B, H = h.shape
    dtype = x.dtype
    if B == 0:
        return h.copy(), None if c is None else c.copy()
    empty1 = _empty(dtype, 1)
    w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
    b_ih = params.get("bias_ih" + suffix, empty1)
    b_hh = params.get("bias_hh" + suffix, empty1)
    G = GATES[mode]
    h_new = h.copy()
    xg = _workspace("cell xg", (B, G * H), dtype)
    if mode == "LSTM":
        c_new = c.copy()
        _K.lstm_cell_forward(x, w_ih, w_hh, b_ih, b_hh, h_new, c_new, xg)
        return h_new, c_new
    steps = _ONE_STEP.get(B)
    if steps is None:
        steps = _ONE_STEP[B] = (np.array([B], dtype=np.intp), np.zeros(1, dtype=np.intp))
    empty2, empty3 = _empty(dtype, 2), _empty(dtype, 3)
    out = _workspace("cell out", (B, H), dtype)
    if mode == "GRU":
        _K.gru_forward(x, *steps, False, reset_after, w_ih, w_hh, b_ih, b_hh, h_new, out, 0, xg,
                       _workspace("cell hg", (B, G * H), dtype),
                       _workspace("cell rh", (B, H) if not reset_after else (1, 1), dtype), 1,
                       empty2, empty2, empty3, empty3, empty3)
    else:
        _K.rnn_forward(x, *steps, False, nonlinearity == "relu", w_ih, w_hh, b_ih, b_hh, h_new,
                       out, 0, xg, 1, empty2, empty3, empty3)
    return h_new, None


def run_stack_train(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1,
                    bidirectional=False, nonlinearity="tanh", reset_after=True, proj_size=0,
                    reverse_all=False, dropout=0.0, rng=None):
    """Training forward: like run_stack, also applying inverted dropout to the input of every
    layer but the first (masks drawn from ``rng``), and returning a cache for
    ``run_stack_backward`` as a fourth result. ``cache.dropout_masks`` holds the masks in the
    padded (T, B, D*P) layout (None without dropout), for tests and references."""
    return _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity,
                reset_after, proj_size, reverse_all, train=True, dropout=dropout, rng=rng)


class _Cache:
    """What a training forward keeps for the backward pass (all arrays in packed layout)."""


def _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity,
         reset_after, proj_size, reverse_all, train, dropout=0.0, rng=None, packs=None):
    if reverse_all and bidirectional:
        raise ValueError("reverse_all=True requires bidirectional=False")
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    G = GATES[mode]
    H = params["weight_hh_l0"].shape[0] // G
    P = proj_size if proj_size else H
    dtype = x.dtype
    h_n = np.array(h0, dtype=dtype, order="C", copy=True)
    c_n = None if c0 is None else np.array(c0, dtype=dtype, order="C", copy=True)
    cache = None
    if train:
        cache = _Cache()
        cache.__dict__.update(mode=mode, params=params, num_layers=num_layers, D=D, H=H, P=P,
                              T=T, B=B, input_size=x.shape[2], nonlinearity=nonlinearity,
                              reset_after=reset_after, reverse_all=reverse_all,
                              dropout_masks=None, layer_in=[], kept=[])
    if T == 0 or B == 0:
        if train:
            cache.layout = None
        return np.zeros((T, B, D * P), dtype=dtype), h_n, c_n, cache

    layout = PackedLayout(T, B, lengths)
    if layout.perm is None:
        h_state, c_state = h_n, c_n          # updated in place by the kernels
    else:
        h_state = np.ascontiguousarray(h_n[:, layout.perm])
        c_state = None if c_n is None else np.ascontiguousarray(c_n[:, layout.perm])
    layer_in = layout.pack(x)
    n_rows = layout.n_rows
    steps = len(layout.batch_sizes)
    # Training keeps every step's gate activations: the "chunk" is then the whole sequence.
    chunk_steps = steps if train else max(1, min(steps, CHUNK_ELEMENTS // (B * G * H)))
    check_blas_size(max(n_rows, chunk_steps * B), "rows of one input-projection GEMM")
    check_blas_size(D * P, "output width")

    parallel = _parallel_directions(D, B * G * H * P)
    split = _split_layers(mode, B, H, steps, proj_size, reset_after, train, parallel)
    # Workspace, allocated once for the whole stack (one set per direction: they may run
    # concurrently).
    ws = []
    for d in range(D):
        w = {}
        if not train:
            w["xg"] = _workspace(f"xg {d}", (chunk_steps * B, G * H), dtype)
        if mode == "GRU":
            w["hg"] = np.empty((B, G * H), dtype=dtype)
            w["rh"] = np.empty((B, H) if not reset_after else (1, 1), dtype=dtype)
        if mode == "LSTM":
            w["hbuf"] = np.empty((B, H), dtype=dtype) if proj_size else _empty(dtype, 2)
        ws.append(w)
    empty1, empty2, empty3 = _empty(dtype, 1), _empty(dtype, 2), _empty(dtype, 3)
    small = _use_small_gemm(dtype, B, steps, one_thread=parallel)
    small_rows = _use_small_gemm(dtype, B, steps, one_thread=True)   # each part on one thread
    one_thread = parallel or cached_num_threads() == 1     # each direction on one thread
    per_chunk = _pipeline_steps(mode, steps, chunk_steps, proj_size, reset_after, small,
                                one_thread, split, train)
    code = _SPLIT_MODES[mode] + (nonlinearity == "relu" and mode == "RNN")  # split, pipeline
    if train:
        cache.layout = layout
        if dropout > 0 and num_layers > 1:
            cache.dropout_masks = []
        # Training splits a layer's hidden units between two threads (rnnc/_split_train.py).
        from rnnc import _split_train
        train_split = _split_train.use_split(mode, B, H, steps, proj_size, parallel)

    for k in range(num_layers):
        if train and k > 0 and dropout > 0:
            mask = dropout_mask(rng, (T, B, D * P), dropout, dtype)
            cache.dropout_masks.append(mask)
            layer_in = layer_in * layout.pack(mask)
        if train:
            cache.layer_in.append(layer_in)
            cache.kept.append([None] * D)
        rows = _row_split(mode, B, layer_in.shape[1], H, proj_size, parallel, small_rows, train,
                          reset_after)
        if split or rows or (train and train_split):   # parts write their columns or rows
            out = aligned_empty((n_rows, D * P), dtype)
        else:
            out = np.empty((n_rows, D * P), dtype=dtype)

        def direction(d, k=k, layer_in=layer_in, out=out, rows=rows):
            sfx = "_reverse" if d else ""
            w = ws[d]
            reverse = bool(d) or reverse_all
            w_ih = params[f"weight_ih_l{k}{sfx}"]
            w_hh = params[f"weight_hh_l{k}{sfx}"]
            b_ih = params.get(f"bias_ih_l{k}{sfx}", empty1)
            b_hh = params.get(f"bias_hh_l{k}{sfx}", empty1)
            s = k * D + d
            name = (k, d)       # of this layer and direction's weights in packs
            if rows and train:      # kept: (act, [x | h_prev | 1], c_prev, RowsKept)
                cache.kept[k][d] = _split_train.rows_forward(
                    layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h_state[s], c_state[s],
                    out, d * P, d)
                return
            if rows:
                # The same results with or without the helper: only the time differs.
                helper = _split_begin()
                try:
                    _run_rows(code, layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh,
                              h_state[s], c_state[s] if mode == "LSTM" else None, out, d * P, d,
                              packs, name, helper)
                finally:
                    if helper:
                        _SPLIT_LOCK.release()
                return
            if split and _split_begin(wait=True):
                try:
                    _run_split(mode, code, layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh,
                               h_state[s], c_state[s] if mode == "LSTM" else None, out, d * P,
                               chunk_steps, _use_small_gemm(dtype, B, steps, one_thread=True),
                               packs, name)
                finally:
                    _SPLIT_LOCK.release()
                return
            if per_chunk:
                # The same results with or without the helper (busy with another call, or
                # asleep): only the time differs.
                helper = _split_begin()
                try:
                    _run_pipelined(mode, code, layer_in, layout, reverse, w_ih, w_hh, b_ih,
                                   b_hh, h_state[s], c_state[s] if mode == "LSTM" else None,
                                   out, d * P, per_chunk, d, packs, name, helper)
                finally:
                    if helper:
                        _SPLIT_LOCK.release()
                return
            if train and train_split:     # kept: (act, [x | h_prev], c_prev, SplitKept)
                cache.kept[k][d] = _split_train.lstm_forward(
                    layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h_state[s], c_state[s],
                    out, d * P)
                return
            if train and _use_fused(mode, B, w_ih.shape[1], H, proj_size, False, small,
                                    one_thread):   # kept: (act, [x | h_prev | 1], c_prev, FUSED)
                cache.kept[k][d] = _run_fused_train(layer_in, layout, reverse, w_ih, w_hh,
                                                    b_ih, b_hh, h_state[s], c_state[s], out,
                                                    d * P, d)
                return
            if _use_fused(mode, B, w_ih.shape[1], H, proj_size, train, small, one_thread):
                _run_fused(layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h_state[s],
                           c_state[s], out, d * P, d, packs, name)
                return
            w_packed, w_hn_packed = _recurrent_panels(mode, reset_after, w_hh, small, d, False,
                                                      packs, name)
            per_panel = False
            w_ih_packed = empty3
            if _use_packed_projection(small, one_thread, chunk_steps * B, w_ih):
                per_panel = _ih_per_panel(packs, chunk_steps, layout)
                w_ih_packed = (panel_workspace(f"panel ih {d}", _K.panel_width(dtype),
                                               w_ih.shape[1], dtype) if per_panel
                               else pack_panels(w_ih, f"packed ih {d}", packs, (*name, "ih")))
            h_prev = np.empty((n_rows, P), dtype=dtype) if train else empty2
            xg = np.empty((n_rows, G * H), dtype=dtype) if train else w["xg"]
            if mode == "LSTM":
                w_hr = params.get(f"weight_hr_l{k}{sfx}", empty2)
                c_prev = np.empty((n_rows, H), dtype=dtype) if train else empty2
                _K.lstm_forward(layer_in, layout.batch_sizes, layout.offsets, reverse,
                                w_ih, w_hh, b_ih, b_hh, w_hr, h_state[s], c_state[s],
                                out, d * P, xg, w["hbuf"], chunk_steps, h_prev, c_prev, w_packed,
                                pack_panels(w_hr, f"packed hr {d}", packs, (*name, "hr"))
                                if small and w_hr.size
                                else empty3, w_ih_packed, per_panel)
                extra = c_prev
            elif mode == "GRU":
                hn = np.empty((n_rows, H), dtype=dtype) if train and reset_after else empty2
                _K.gru_forward(layer_in, layout.batch_sizes, layout.offsets, reverse, reset_after,
                               w_ih, w_hh, b_ih, b_hh, h_state[s], out, d * H, xg, w["hg"],
                               w["rh"], chunk_steps, h_prev, hn, w_packed, w_hn_packed,
                               w_ih_packed, per_panel)
                extra = hn
            else:
                _K.rnn_forward(layer_in, layout.batch_sizes, layout.offsets, reverse,
                               nonlinearity == "relu", w_ih, w_hh, b_ih, b_hh, h_state[s],
                               out, d * H, xg, chunk_steps, h_prev, w_packed, w_ih_packed,
                               per_panel)
                extra = None
            if train:
                cache.kept[k][d] = (xg, h_prev, extra, None)

        if D == 2:
            _run_directions(direction, parallel)
        else:
            direction(0)
        layer_in = out

    if layout.perm is not None:
        h_n[:, layout.perm] = h_state
        if c_n is not None:
            c_n[:, layout.perm] = c_state
    return layout.unpack(layer_in, T, B), h_n, c_n, cache


def run_stack_backward(cache, grad_out, grad_h_n=None, grad_c_n=None):
    """Backpropagation through time after ``run_stack_train``.

    grad_out (T, B, D*P), grad_h_n (D*L, B, P), grad_c_n (D*L, B, H) (None means zero) are
    C-contiguous arrays of the forward's dtype. The cache's activation buffers are overwritten,
    so a cache serves one backward. Returns dx (T, B, I), dh0, dc0 (None unless LSTM) and a
    dict of parameter gradients keyed like the parameters.
    """
    from rnnc import _split_train     # (it imports this module)
    mode, params, D, H, P = cache.mode, cache.params, cache.D, cache.H, cache.P
    T, B, L = cache.T, cache.B, cache.num_layers
    dtype = grad_out.dtype
    dh = np.zeros((D * L, B, P), dtype=dtype) if grad_h_n is None else \
        np.array(grad_h_n, dtype=dtype, order="C", copy=True)
    dc = None
    if mode == "LSTM":
        dc = np.zeros((D * L, B, H), dtype=dtype) if grad_c_n is None else \
            np.array(grad_c_n, dtype=dtype, order="C", copy=True)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    layout = cache.layout
    if layout is None or layout.n_rows == 0:
        return np.zeros((T, B, cache.input_size), dtype=dtype), dh, dc, grads

    if layout.perm is None:
        dh_s, dc_s = dh, dc
    else:
        dh_s = np.ascontiguousarray(dh[:, layout.perm])
        dc_s = None if dc is None else np.ascontiguousarray(dc[:, layout.perm])
    n_rows = layout.n_rows
    dlayer = np.ascontiguousarray(layout.pack(grad_out))
    empty1, empty2, empty3 = _empty(dtype, 1), _empty(dtype, 2), _empty(dtype, 3)
    G = GATES[mode]
    parallel = _parallel_directions(D, B * G * H * P)
    ws = []     # workspace per direction: they may run concurrently
    for _ in range(D):
        w = {"db_acc": np.empty(H if mode == "RNN" else 4 * H, dtype=dtype)}
        if mode == "GRU":
            w["work"] = np.empty((B, 3 * H), dtype=dtype)
        if mode == "LSTM":
            w["tc_row"] = np.empty(H, dtype=dtype)
            if P != H:
                w["dhh"] = np.empty((B, H), dtype=dtype)
                w["hbuf_all"] = np.empty((n_rows, H), dtype=dtype)
                w["dhp_all"] = np.empty((n_rows, P), dtype=dtype)
            else:
                w["dhh"] = w["hbuf_all"] = w["dhp_all"] = empty2
        ws.append(w)

    small = _use_small_gemm(dtype, B, len(layout.batch_sizes), one_thread=parallel)
    for k in reversed(range(L)):
        x_k = cache.layer_in[k]
        # Each direction writes its own input gradient when they run concurrently.
        dxs = [np.empty_like(x_k) for _ in range(D if parallel else 1)]

        def direction(d, k=k, x_k=x_k, dxs=dxs):
            dx, add_dx = (dxs[d], False) if parallel else (dxs[0], d == 1)
            w = ws[d]
            sfx = "_reverse" if d else ""
            reverse = bool(d) or cache.reverse_all
            names = [f"{w}_l{k}{sfx}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                 "weight_hr")]
            w_ih, w_hh = params[names[0]], params[names[1]]
            dw_ih, dw_hh = grads[names[0]], grads[names[1]]
            db_ih, db_hh = grads.get(names[2], empty1), grads.get(names[3], empty1)
            s = k * D + d
            act, h_prev, extra, how = cache.kept[k][d]
            if how is FUSED:    # the forward kept [x | h_prev | 1] rows in h_prev's place
                _K.lstm_fused_backward(h_prev, layout.batch_sizes, layout.offsets, reverse, w_ih,
                                       w_hh, act, extra, dlayer, d * P, dh_s[s], dc_s[s], dx,
                                       add_dx, np.empty((4 * H, h_prev.shape[1]), dtype=dtype),
                                       dw_ih, dw_hh, db_ih, db_hh, w["tc_row"],
                                       pack_panels(w_hh.T, f"packed {d}") if small else empty3,
                                       pack_panels(w_ih.T, f"packed ih {d}") if small else empty3)
                return
            if isinstance(how, _split_train.RowsKept):     # the forward ran split by rows
                _split_train.rows_backward(layout, reverse, act, h_prev, extra, how, w_ih, w_hh,
                                           dlayer, d * P, dh_s[s], dc_s[s], dx, add_dx, dw_ih,
                                           dw_hh, db_ih, db_hh)
                return
            if how is not None:   # the forward ran split by units: so does the backward
                _split_train.lstm_backward(layout, reverse, *cache.kept[k][d], dlayer, d * P,
                                           dh_s[s], dc_s[s], dx, add_dx, dw_ih, dw_hh, db_ih,
                                           db_hh)
                return
            w_packed, w_hn_packed = _recurrent_panels(mode, cache.reset_after, w_hh, small, d,
                                                      True)
            if mode == "LSTM":
                _K.lstm_backward(x_k, layout.batch_sizes, layout.offsets, reverse, w_ih, w_hh,
                                 params.get(names[4], empty2), act, h_prev, extra, dlayer, d * P,
                                 dh_s[s], dc_s[s], dx, add_dx, dw_ih, dw_hh, db_ih, db_hh,
                                 grads.get(names[4], empty2), w["dhh"], w["hbuf_all"],
                                 w["dhp_all"], w["tc_row"], w["db_acc"], w_packed,
                                 pack_panels(params[names[4]].T, f"packed hr {d}")
                                 if small and names[4] in params else empty3)
            elif mode == "GRU":
                hn = extra if cache.reset_after else np.empty((n_rows, H), dtype=dtype)
                _K.gru_backward(x_k, layout.batch_sizes, layout.offsets, reverse,
                                cache.reset_after, w_ih, w_hh, act, h_prev, hn, dlayer, d * H,
                                dh_s[s], dx, add_dx, dw_ih, dw_hh, db_ih, db_hh, w["work"],
                                w["db_acc"], w_packed, w_hn_packed)
            else:
                _K.rnn_backward(x_k, layout.batch_sizes, layout.offsets, reverse,
                                cache.nonlinearity == "relu", w_ih, w_hh, act, h_prev, dlayer,
                                d * H, dh_s[s], dx, add_dx, dw_ih, dw_hh, db_ih, db_hh,
                                w["db_acc"], w_packed)

        if D == 2:
            _run_directions(direction, parallel)
        else:
            direction(0)
        dx = dxs[0]
        if parallel:
            dx += dxs[1]
        if k > 0 and cache.dropout_masks is not None:
            dx *= layout.pack(cache.dropout_masks[k - 1])
        dlayer = dx
    cache.kept = None   # the activation buffers now hold gradients

    if layout.perm is not None:
        dh[:, layout.perm] = dh_s
        if dc is not None:
            dc[:, layout.perm] = dc_s
    return layout.unpack(dlayer, T, B), dh, dc, grads
