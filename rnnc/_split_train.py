"""Training of one LSTM layer and direction split between two threads: by hidden units, or by
batch rows (the second half of this file).

By hidden units, the Python side of rnnc/_parallel_train.pyx (read its docstring first): when
to split, the weights in part order, the buffers, and starting the two parts together.
rnnc/_stack.py calls ``lstm_forward`` from its training forward and ``lstm_backward`` from
run_stack_backward for the layers whose forward was split (the kept activations are then in
part order); ``rows_forward`` / ``rows_backward`` likewise for the row split.
"""
import functools

import numpy as np

from rnnc._stack import (_empty, _use_small_gemm, _workspace as _scratch,
                         aligned_empty, new_barrier, pack_panels, panel_workspace)
from rnnc._threads import cached_num_threads, run_pair

# Training splits an LSTM layer's hidden units between two threads when rnnc may use 2+ threads
# and the directions do not already run concurrently, if
# - one step's recurrent product (batch x 4H x H multiply-adds) is large enough to repay a
#   barrier per step, and
# - the sequence has enough rows (steps x batch) to repay the set-up: the weights are copied
#   into part order and packed per call.
# Below either, the one-thread kernels run (BLAS using both cores for the large GEMMs before and
# after the time loop). Measured on this 2-core machine, training forward + backward, split /
# unsplit at 2 threads: LSTM B16 H128 T100 0.90, B64 H256 T50 0.90, B8 H128 T100 0.94,
# B32 H64 T100 0.91, B4 H256 T100 0.88, B8 H512 T100 0.83; worse below the limits: B16 H64
# T100 1.2, B64 H32 T100 1.1, B1 H256 T100 1.1 (per-step product 2^18), B8 H512 T20 1.1
# (160 rows).
TRAIN_SPLIT_MIN_STEP_WORK = 1 << 19
TRAIN_SPLIT_MIN_ROWS = 256


def use_split(mode, B, H, steps, proj_size, parallel):
    """Whether the training forward (and then the backward) of a layer runs split."""
    return (mode == "LSTM" and not parallel and not proj_size and H >= 32
            and B * 4 * H * H >= TRAIN_SPLIT_MIN_STEP_WORK and steps * B >= TRAIN_SPLIT_MIN_ROWS
            and cached_num_threads() >= 2)


def _parts(H):
    """(u0, nu) of each part: two halves, the first a multiple of 16 units, so that with H a
    multiple of 16 every part's columns of a shared row start on a cache line."""
    half = max(16, H // 2 // 16 * 16)
    return ((0, half), (half, H - half))


@functools.lru_cache(maxsize=16)
def _part_order(H):
    """Gate rows (4H) in part order: [part 0: i f g o of its units | part 1: ...]."""
    order = np.concatenate([(np.arange(4)[:, None] * H + np.arange(u0, u0 + nu)).ravel()
                            for u0, nu in _parts(H)])
    order.flags.writeable = False   # shared by every call (cached)
    return order


class SplitKept:
    """What a split training forward keeps for the backward, besides the activations (in part
    order) and the previous states: the weights in part order and the kernel choice."""

    def __init__(self, w_ih_perm, w_hh_perm, small):
        self.w_ih_perm = w_ih_perm
        self.w_hh_perm = w_hh_perm
        self.small = small


def _halves(N):
    """Rows [0, N) in two halves, one per part: of the input copied into [x | h_prev] in the
    forward, of the input gradient in the backward."""
    return ((0, N // 2), (N // 2, N))


def lstm_forward(layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out, col0):
    """Training forward of one LSTM layer and direction, split; h, c (B, H) updated in place
    and out's columns [col0, col0 + H) written as by rnnc._lstm_kernel.lstm_forward.

    Returns what lstm_backward needs: (act, xh, c_prev, SplitKept) with the activations in
    part order, xh = [x | h_prev] (N, I + H) the input next to the state before each step,
    and the cell states before each step. Everything is allocated and prepared before either
    part starts: the parts wait for each other every step, so neither may fail alone."""
    from rnnc._parallel_train import lstm_train_forward_part_py
    dtype = layer_in.dtype
    (N, I), (B, H) = layer_in.shape, h.shape
    small = _use_small_gemm(dtype, B, len(layout.batch_sizes), one_thread=True)
    perm = _part_order(H)
    w_ih_perm = w_ih[perm]
    w_hh_perm = w_hh[perm]
    bias = (b_ih + b_hh)[perm] if b_ih.size else _empty(dtype, 1)
    act = aligned_empty((N, 4 * H), dtype)
    xh = aligned_empty((N, I + H), dtype)
    c_prev = aligned_empty((N, H), dtype)
    hbuf = _scratch("split train h", (2, B, H), dtype)
    hbuf[0] = h
    hbuf[1] = h
    bar = new_barrier()
    parts = []
    for p, ((u0, nu), (x0, x1)) in enumerate(zip(_parts(H), _halves(N))):
        rows = slice(4 * u0, 4 * (u0 + nu))
        if small:
            w_ih_p, w_hh_p = w_ih_perm[rows], _empty(dtype, 2)
            ih_packed = pack_panels(w_ih_p, f"split train ih {p}")
            hh_packed = pack_panels(w_hh_perm[rows], f"split train hh {p}")
        else:
            w_ih_p, w_hh_p = w_ih_perm[rows], w_hh_perm[rows]
            ih_packed = hh_packed = _empty(dtype, 3)
        parts.append((
            layer_in, layout.batch_sizes, layout.offsets, reverse, w_ih_p, ih_packed,
            bias[rows] if bias.size else bias, w_hh_p, hh_packed, u0, nu, hbuf, h, c,
            _scratch(f"split train c {p}", (B, nu), dtype), out, col0, act, xh, x0, x1,
            c_prev, bar, 2))
    run_pair(lambda: lstm_train_forward_part_py(*parts[0]),
             lambda: lstm_train_forward_part_py(*parts[1]))
    return act, xh, c_prev, SplitKept(w_ih_perm, w_hh_perm, small)


def lstm_backward(layout, reverse, act, xh, c_prev, kept, dout, col0, dh, dc, dx, add_dx,
                  dw_ih, dw_hh, db_ih, db_hh):
    """BPTT through one LSTM layer and direction after lstm_forward (whose results are act,
    xh, c_prev and kept), split the same way; the other arguments and the results are those of
    rnnc._lstm_kernel.lstm_backward (act is overwritten)."""
    from rnnc._parallel_train import lstm_backward_part_py
    dtype = act.dtype
    B, H = dh.shape
    N, I = xh.shape[0], xh.shape[1] - H
    bar = new_barrier()
    parts = []
    for p, ((u0, nu), (row0, row1)) in enumerate(zip(_parts(H), _halves(N))):
        cols = kept.w_hh_perm[:, u0:u0 + nu]
        if kept.small:
            w_cols, packed = _empty(dtype, 2), pack_panels(cols.T, f"split train bwd {p}")
        else:
            w_cols, packed = np.ascontiguousarray(cols), _empty(dtype, 3)
        parts.append((
            layout.batch_sizes, layout.offsets, reverse, kept.w_ih_perm, w_cols, packed,
            u0, nu, row0, row1, act, xh, c_prev, dout, col0, dh, dc,
            _scratch(f"split train dh {p}", (B, nu), dtype),
            _scratch(f"split train dc {p}", (B, nu), dtype),
            dx, add_dx, dw_ih, dw_hh, db_ih, db_hh,
            _scratch(f"split train acc {p}", (4 * nu,), dtype),
            _scratch(f"split train wtmp {p}", (4 * nu, I + H), dtype),
            _scratch(f"split train tc {p}", (nu,), dtype), bar, 2))
    run_pair(lambda: lstm_backward_part_py(*parts[0]), lambda: lstm_backward_part_py(*parts[1]))


# ---------------------------------------------------------------------------------------------
# Split by batch rows. Where the training forward runs on the fused product (as at one thread,
# rnnc._stack._use_fused) for half the batch, each thread runs the one-thread kernels on half of
# the rows: the fused forward, then the time loop of the fused backward. Rows never meet there,
# so the threads share nothing while the steps run (the split by units meets every step, and
# the state crosses between the cores each time). The backward's GEMMs over all rows -- the
# input gradient and [dW_ih | dW_hh | db] -- then run in two shares, one per thread (see
# rows_backward). The parts start at rnnc._stack.PackedLayout.row_split()'s row (a multiple of
# the kernel's 4-row tiles), so the states and state gradients are the one-thread kernels' bit
# for bit; the weight gradients, from BLAS on part of the gate rows, may round differently.
# ---------------------------------------------------------------------------------------------
class RowsKept:
    """What a row-split training forward keeps for the backward besides act, [x | h_prev | 1]
    and c_prev (all in the usual packed layout): where the parts start and their batch sizes."""

    def __init__(self, split):
        self.rows0, self.sizes0, self.sizes1 = split

    def parts(self):
        """(first row, batch sizes at every step) of each part."""
        return (0, self.sizes0), (self.rows0, self.sizes1)


def _state_copies(state, rows0, key, dtype):
    """Each part's own copy of its rows of a (B, H) state (written every step: the parts'
    rows in the caller's array may share a cache line)."""
    B, H = state.shape
    copies = []
    for p, (r0, r1) in enumerate(((0, rows0), (rows0, B))):
        a = _scratch(f"{key} {p}", (r1 - r0, H), dtype)
        a[...] = state[r0:r1]
        copies.append(a)
    return copies


def _copy_back(state, copies, rows0):
    """The parts' copies (_state_copies) back into the (B, H) state."""
    state[:rows0] = copies[0]
    state[rows0:] = copies[1]


def rows_forward(layer_in, layout, reverse, w_ih, w_hh, b_ih, b_hh, h, c, out, col0, d):
    """Training forward of one LSTM layer and direction split by batch rows; h, c (B, H)
    updated in place and out's columns [col0, col0 + H) written as by the fused one-thread
    forward. Returns (act, xh, c_prev, RowsKept) for rows_backward."""
    from rnnc._lstm_kernel import lstm_fused_train_forward, pack_fused_into
    dtype = layer_in.dtype
    (N, I), (B, H) = layer_in.shape, h.shape
    K = I + H + 1
    kept = RowsKept(layout.row_split())
    xh = aligned_empty((N, K), dtype)       # each part writes its rows' h<t-1> columns
    xh[:, :I] = layer_in
    xh[:, I + H] = 1
    act = aligned_empty((N, 4 * H), dtype)
    c_prev = aligned_empty((N, H), dtype)
    hs = _state_copies(h, kept.rows0, "rows train h", dtype)
    cs = _state_copies(c, kept.rows0, "rows train c", dtype)
    packed = [panel_workspace(f"rows train w {p}", 4 * H, K, dtype) for p in range(2)]

    def part(p):
        r0, sizes = kept.parts()[p]
        pack_fused_into(w_ih, w_hh, b_ih, b_hh, packed[p])  # each its own copy, both at once
        lstm_fused_train_forward(xh[r0:], sizes, layout.offsets, reverse, packed[p], hs[p],
                                 cs[p], out[r0:], col0, act[r0:], c_prev[r0:])

    run_pair(lambda: part(0), lambda: part(1))
    _copy_back(h, hs, kept.rows0)
    _copy_back(c, cs, kept.rows0)
    return act, xh, c_prev, kept


def rows_backward(layout, reverse, act, xh, c_prev, kept, w_ih, w_hh, dout, col0, dh, dc, dx,
                  add_dx, dw_ih, dw_hh, db_ih, db_hh):
    """BPTT through one LSTM layer and direction after rows_forward (act is overwritten); the
    other arguments and the results are those of rnnc._lstm_kernel.lstm_fused_backward."""
    from rnnc._lstm_kernel import lstm_fused_backward_steps_py, lstm_fused_backward_weights_py
    dtype = act.dtype
    B, H = dh.shape
    steps = len(layout.batch_sizes)
    small = _use_small_gemm(dtype, B, steps, one_thread=True)
    dhs = _state_copies(dh, kept.rows0, "rows train dh", dtype)
    dcs = _state_copies(dc, kept.rows0, "rows train dc", dtype)

    def part(p):
        r0, sizes = kept.parts()[p]
        packed = (pack_panels(w_hh.T, f"rows train bwd {p}") if small
                  else _empty(dtype, 3))
        lstm_fused_backward_steps_py(sizes, layout.offsets, reverse, w_hh, act[r0:],
                                     c_prev[r0:], dout[r0:], col0, dhs[p], dcs[p],
                                     _scratch(f"rows train tc {p}", (H,), dtype), packed)

    run_pair(lambda: part(0), lambda: part(1))
    _copy_back(dh, dhs, kept.rows0)
    _copy_back(dc, dcs, kept.rows0)
    # The GEMMs over all rows, in two shares: half of the input gradient's rows and half of the
    # weight gradients' gate rows each, with BLAS at one thread (run_pair). With both BLAS
    # threads on one call of all rows instead, BLAS's helper thread kept spinning after it, on
    # the cores the next forward's parts run on: training LSTM B16 H128 T100 at 2 threads took
    # 10.5-11.3 ms a step, against 7.55 this way (8.1 split by units).
    N = xh.shape[0]
    dw_cat = _scratch("rows train dw", (4 * H, xh.shape[1]), dtype)
    shares = [(0, N // 2, 0, 2 * H), (N // 2, N, 2 * H, 4 * H)]

    def share(p):
        # Each packs its own W_ih^T for its rows of dx (see rows_forward).
        packed = (pack_panels(w_ih.T, f"rows train ih {p}") if small else _empty(dtype, 3))
        lstm_fused_backward_weights_py(xh, w_ih, act, dx, add_dx, dw_cat, dw_ih, dw_hh, db_ih,
                                       db_hh, *shares[p], packed)

    run_pair(lambda: share(0), lambda: share(1))
