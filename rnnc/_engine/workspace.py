"""Buffers and packed weights for the kernels: scratch buffers kept per thread, 64-byte
aligned arrays, the packed small-batch kernel's weight panels, and what a frozen module keeps.

Kernels never allocate: everything they write comes from here or from the runners.
"""
import math
import threading

import numpy as np

from rnnc._engine.kernels import K as kernels

_EMPTIES = {}


def empty(dtype, ndim):
    """A zero-size array: "none" for an optional kernel argument. Shared (nothing can be
    written into it), so that a call does not build a dozen of them."""
    key = (dtype, ndim)
    a = _EMPTIES.get(key)
    if a is None:
        a = _EMPTIES[key] = np.empty((0,) * ndim, dtype=dtype)
    return a


def aligned(buf, shape):
    """A C-contiguous array of `shape` starting on a 64-byte boundary inside the flat `buf`
    (which has 64 bytes to spare)."""
    n = math.prod(shape)
    skip = (-buf.ctypes.data % 64) // buf.itemsize
    return buf[skip:skip + n].reshape(shape)


def aligned_empty(shape, dtype):
    """np.empty, 64-byte aligned. The threads of a split layer write to the same rows of
    the shared buffers, each its own columns: with the rows and the parts' column blocks on
    cache-line boundaries they never write to the same line (NumPy's large arrays start 16
    bytes past a page boundary; the lines shared at the part boundary made the pointwise passes
    of a split LSTM B16 H128 ~2x slower)."""
    return aligned(np.empty(math.prod(shape) + 64, dtype=dtype), shape)


def new_barrier():
    """The words of a spinning barrier (rnnc/_kernels/_barrier.h), zeroed, on a cache line of their
    own: one per split layer call, shared by its parts."""
    return aligned(np.zeros(64, dtype=np.int32), (16,))


# Scratch buffers (input projections, packed weights, the split layers' private and shared
# buffers) are kept per calling thread and reused by the next call: fresh arrays of a few MB
# cost a page fault per 4 KB on first touch, and two threads faulting at once (a split layer)
# serialise in the kernel -- measured 30% of LSTM B16 H128 at 2 threads. Each thread keeps at
# most one buffer per key, as large as its largest use so far (bounded by CHUNK_ELEMENTS-sized
# projections and the packed weights), 64-byte aligned (see aligned_empty). Keys name a buffer's
# role and its direction/part, which never overlap within one call.
_scratch = threading.local()


def workspace(key, shape, dtype):
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
        # The offset to the first 64-byte boundary, found once (ndarray.ctypes is slow).
        entry = buffers[key] = (buf, (-buf.ctypes.data % 64) // buf.itemsize)
    buf, skip = entry
    return buf[skip:skip + n].reshape(shape)


def panel_workspace(key, rows, K, dtype):
    """A buffer for `rows` rows of (K) weights in the small-batch kernel's panels,
    (ceil(rows / W), K, W), 64-byte aligned: this thread's scratch buffer `key`, or a new
    array when key is None (a frozen module's kept panels). Unaligned panels split a load in
    two cache lines: kept panels of NumPy's default alignment made LSTM B1 H32 T1000 ~12%
    slower than the scratch buffers."""
    width = kernels.panel_width(dtype)
    return workspace(key, (-(-rows // width), K, width), dtype)


def kept(packs, name, make):
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
        kernels.pack_panels_into(w, packed)
        return packed
    return kept(packs, name, make)


def recurrent_panels(mode, reset_after, w_hh, small, d, backward, packs=None, name=()):
    """(W_hh packed for the small-batch kernel, W_hn's panels or a zero-size placeholder) of
    direction d, both zero-size without the kernel. GRU with reset_after=False multiplies by
    [W_hr; W_hz] and by W_hn in two products a step, so they are packed apart. The backward
    multiplies by W_hh itself: its panels are those of W_hh^T. packs, name: see pack_panels
    (name identifies the layer and direction)."""
    empty3 = empty(w_hh.dtype, 3)
    if not small:
        return empty3, empty3
    blocks = [w_hh]
    if mode == "GRU" and not reset_after:
        H = w_hh.shape[1]
        blocks = [w_hh[:2 * H], w_hh[2 * H:]]
    packed = [pack_panels(w.T if backward else w, f"packed {k}{d}", packs, (*name, k))
              for k, w in zip(("", "hn "), blocks)]
    return packed[0], packed[1] if len(packed) > 1 else empty3


def folded_biases(mode, b_ih, b_hh, H):
    """(the biases added with the input projection, GRU's b_hn or zero-size) of the split and
    pipelined kernels (rnnc/_kernels/_parallel_forward.pyx): b_ih + b_hh, but for GRU b_ih +
    b_hh of the r and z gates only, since b_hn goes inside r * (.); zero-size without biases."""
    if not b_ih.size:
        return b_ih, b_ih
    if mode != "GRU":
        return b_ih + b_hh, b_ih[:0]
    bias = b_ih.copy()
    bias[:2 * H] += b_hh[:2 * H]
    return bias, b_hh[2 * H:]


def fused_weights(w_ih, w_hh, b_ih, b_hh, d, keep=False):
    """[W_ih | W_hh | b_ih + b_hh] (4H, I + H + 1) in the small-batch kernel's panels (this
    thread's scratch buffer; a new array when keep)."""
    G, H = w_hh.shape
    packed = panel_workspace(None if keep else f"packed {d}", G, w_ih.shape[1] + H + 1,
                             w_ih.dtype)
    kernels.pack_fused_into(w_ih, w_hh, b_ih, b_hh, packed)
    return packed
