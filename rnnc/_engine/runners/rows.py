"""ROWS: a layer's batch rows split into plan.parts parts, one on the calling thread and the
others on the pool's workers (rnnc/_engine/threads.py), each part running the one-thread kernel
on its rows with its own copy of the weights: the threads share nothing while the steps run.

Inference (rnnc/_kernels/_parallel_forward.pyx, rows_forward_py): LSTM and RNN on the fused
product [x | h | 1] @ [W_ih | W_hh | b]^T, GRU (reset_after) on its step with the inputs
projected step by step (gru_rows_sequence). A worker's part is run by the caller (or another
worker) if its worker has not started it, so the results never depend on the workers.

A projected LSTM and a GRU in the original form (no fused row kernel), and in training GRU
and RNN, split the same way, each part gathering its rows and running the cell's one-thread
layer kernel, forward and backward (_kernel_parts_forward / _kernel_parts_backward).

LSTM training: each part runs the fused forward, then the time loop of the fused backward, on
its rows (run_parts); the backward's GEMMs over all rows then run in as many shares. The parts start
at a multiple of the kernel's row tiles (layout.row_split), so the outputs, the final states
and a layer's own state gradients are the one-thread kernels' bit for bit; the input and
weight gradients (shares of rows that need not fall on row tiles) may round differently,
and with them the layers below.
"""
import dataclasses
from itertools import pairwise

import numpy as np

from rnnc._engine import threads
from rnnc._engine.job import BackwardJob, LayerJob
from rnnc._engine.kernels import K
from rnnc._engine.plan import KERNEL
from rnnc._engine.runners import kernel
from rnnc._engine.workspace import aligned_empty, empty, pack_panels, panel_workspace, workspace


def forward(plan, job):
    if plan.rows_by_kernel:
        return _kernel_parts_forward(plan, job)
    if plan.training:
        return _train_forward(plan, job)
    pool = threads.split_begin(parts=plan.parts)
    try:
        _forward(plan, job, pool)
    finally:
        if pool is not None:
            threads.split_end()
    return None


def _forward(plan, job, pool):
    """Part 0 on this thread, the others on the pool's workers when `pool` (a Pool, or
    None: then all on this thread)."""
    dtype, d, packs = plan.dtype, job.d, job.packs
    H = job.h.shape[1]
    I = job.w_ih.shape[1]
    K_all = I + H + 1
    G = job.w_ih.shape[0]
    empty2 = empty(dtype, 2)
    bounds, sizes = job.layout.row_split(plan.parts)
    n = len(sizes)
    # Each part packs its own copy of the weights, all at once, and reads only that one. A
    # frozen module keeps every copy (packed by the parts on its first call). GRU: each part's
    # copies of W_ih's and W_hh's panels.
    lstm = plan.mode == "LSTM"
    gru = plan.mode == "GRU"
    keys = [(*job.name, "rows", p) for p in range(n)]
    kept = [packs.get(key) for key in keys] if packs is not None else [None] * n
    prepared = all(k is not None for k in kept)
    if not prepared:
        def panels(role, p, cols):
            return panel_workspace(None if packs is not None else f"rows {role} {d} {p}", G,
                                   cols, dtype)
        kept = [(panels("packed", p, I), panels("packed hh", p, H)) if gru
                else panels("packed", p, K_all) for p in range(n)]
    has_bias = job.b_ih.size
    parts = []
    for p in range(n):
        rows = bounds[p + 1] - bounds[p]
        tail = "" if p == 0 else f" {p}"
        part = K.RowsPart(batch_sizes=sizes[p], packed=kept[p][0] if gru else kept[p],
                          xh=workspace(f"rows xh {d}{tail}", (rows, K_all), dtype)
                          if not gru else empty2,
                          gates=workspace(f"rows gates {d}{tail}", (rows, G), dtype),
                          cwork=workspace(f"rows c {d}{tail}", (rows, H), dtype)
                          if lstm else empty2)
        if gru:
            # Each part's workspace for the state's product and its folded biases.
            part.packed_hh = kept[p][1]
            part.hg = workspace(f"rows hg {d}{tail}", (rows, G), dtype)
            part.bias = workspace(f"rows bias {d}{tail}", (G if has_bias else 0,), dtype)
        parts.append(part)
    K.rows_forward_py(K.RowsJob(
        mode=plan.kernel_code, x=job.x, offsets=job.layout.offsets, reverse=job.reverse,
        w_ih=job.w_ih, w_hh=job.w_hh, b_ih=job.b_ih, b_hh=job.b_hh, prepared=prepared, h=job.h,
        c=job.c if lstm else empty2, out=job.out, col0=job.col0, bounds=bounds, parts=parts),
        pool)
    if packs is not None and not prepared:
        packs.update(zip(keys, kept))       # only once filled: another thread may read them


# -- LSTM training ---------------------------------------------------------------------------
def _state_copies(state, bounds, key, dtype):
    """Each part's own copy of its rows of a (B, H) state (written every step: the parts'
    rows in the caller's array may share a cache line)."""
    copies = []
    for p, (r0, r1) in enumerate(pairwise(bounds)):
        a = workspace(f"{key} {p}", (r1 - r0, state.shape[1]), dtype)
        a[...] = state[r0:r1]
        copies.append(a)
    return copies


def _copy_back(state, copies, bounds):
    """The parts' copies (_state_copies) back into the (B, H) state."""
    for r0, copy in zip(bounds, copies):
        state[r0:r0 + len(copy)] = copy


def _shares(n, parts):
    """[0, n) in `parts` shares, one per part (rows of the backward's GEMMs)."""
    return [(n * p // parts, n * (p + 1) // parts) for p in range(parts)]


def _train_forward(plan, job):
    """Returns (act, [x | h_prev | 1], c_prev, the row split) for backward."""
    dtype = plan.dtype
    (N, I), H = job.x.shape, job.h.shape[1]
    K_all = I + H + 1
    split = bounds, sizes = job.layout.row_split(plan.parts)
    n = len(sizes)
    xh = aligned_empty((N, K_all), dtype)       # each part writes its rows' h<t-1> columns
    xh[:, :I] = job.x
    xh[:, I + H] = 1
    act = aligned_empty((N, 4 * H), dtype)
    c_prev = aligned_empty((N, H), dtype)
    hs = _state_copies(job.h, bounds, "rows train h", dtype)
    cs = _state_copies(job.c, bounds, "rows train c", dtype)
    packed = [panel_workspace(f"rows train w {p}", 4 * H, K_all, dtype) for p in range(n)]

    def part(p):
        r0 = bounds[p]
        K.pack_fused_into(job.w_ih, job.w_hh, job.b_ih, job.b_hh, packed[p])   # all at once
        K.lstm_fused_train_forward(xh[r0:], sizes[p], job.layout.offsets, job.reverse,
                                   packed[p], hs[p], cs[p], job.out[r0:], job.col0, act[r0:],
                                   c_prev[r0:])

    threads.run_parts([lambda p=p: part(p) for p in range(n)])
    _copy_back(job.h, hs, bounds)
    _copy_back(job.c, cs, bounds)
    return act, xh, c_prev, split


def backward(plan, job):
    """BPTT after a training forward (act is overwritten)."""
    if plan.rows_by_kernel:
        _kernel_parts_backward(plan, job)
        return
    dtype = plan.dtype
    act, xh, c_prev, (bounds, sizes) = job.kept
    n = len(sizes)
    H = job.dh.shape[1]
    small = plan.parts_small_gemm
    dhs = _state_copies(job.dh, bounds, "rows train dh", dtype)
    dcs = _state_copies(job.dc, bounds, "rows train dc", dtype)

    def part(p):
        r0 = bounds[p]
        packed = (pack_panels(job.w_hh.T, f"rows train bwd {p}") if small
                  else empty(dtype, 3))
        K.lstm_fused_backward_steps_py(sizes[p], job.layout.offsets, job.reverse, job.w_hh,
                                       act[r0:], c_prev[r0:], job.dout[r0:], job.col0, dhs[p],
                                       dcs[p], workspace(f"rows train tc {p}", (H,), dtype),
                                       packed)

    threads.run_parts([lambda p=p: part(p) for p in range(n)])
    _copy_back(job.dh, dhs, bounds)
    _copy_back(job.dc, dcs, bounds)
    # The GEMMs over all rows, in one share a part: a share of the input gradient's rows and of
    # the weight gradients' gate rows each, with BLAS at one thread (run_parts): BLAS's own
    # threads kept spinning on the cores the next forward's parts run on.
    N = xh.shape[0]
    dw_cat = workspace("rows train dw", (4 * H, xh.shape[1]), dtype)
    shares = [(*rows, *gates) for rows, gates in zip(_shares(N, n), _shares(4 * H, n))]

    def share(p):
        # Each packs its own W_ih^T for its rows of dx.
        packed = (pack_panels(job.w_ih.T, f"rows train ih {p}") if small else empty(dtype, 3))
        K.lstm_fused_backward_weights_py(
            K.LayerBackward(xh=xh, w_ih=job.w_ih, act=act, dx=job.dx, add_dx=job.add_dx,
                            dw_cat=dw_cat, dw_ih=job.dw_ih, dw_hh=job.dw_hh, db_ih=job.db_ih,
                            db_hh=job.db_hh, w_ih_packed=packed), *shares[p])

    threads.run_parts([lambda p=p: share(p) for p in range(n)])


# -- layers the fused row kernels do not compute: each part a one-thread KERNEL layer --------
class _PartLayout:
    """The packed layout of one part's rows, as the kernel runner reads it."""
    __slots__ = ("batch_sizes", "offsets")

    def __init__(self, batch_sizes):
        self.batch_sizes = np.ascontiguousarray(batch_sizes, dtype=np.intp)
        self.offsets = np.zeros(len(batch_sizes), dtype=np.intp)
        np.cumsum(self.batch_sizes[:-1], out=self.offsets[1:])


class _Part:
    """One part's rows of the packed batch: a slice of each step's slab (full-length
    batches) or an index array, and gather / scatter between them and a batch of its own."""

    def __init__(self, layout, b0, b1, size, B):
        self.b0, self.b1, self.T, self.B = b0, b1, len(layout.offsets), B
        self.layout = _PartLayout(size)
        if layout.perm is None:     # every step holds the whole batch: slabs, no gathers
            self.rows = None
        else:
            self.rows = np.concatenate([np.arange(o + b0, o + b0 + s, dtype=np.intp)
                                        for o, s in zip(layout.offsets, size)])

    def gather(self, a):
        """This part's rows of a packed (N, F) array, as a new (N_p, F) array."""
        if self.rows is None:
            F = a.shape[1]
            return np.ascontiguousarray(a.reshape(self.T, self.B, F)[:, self.b0:self.b1]) \
                .reshape(-1, F)
        return a[self.rows]

    def scatter(self, dst, cols, src, add=False):
        """dst[this part's rows, cols] = (or +=) src (N_p, ...)."""
        if self.rows is None:
            view = dst.reshape(self.T, self.B, -1)[:, self.b0:self.b1, cols]
            src = src.reshape(self.T, self.b1 - self.b0, -1)
            if add:
                view += src
            else:
                view[...] = src
        elif add:
            dst[self.rows, cols] += src
        else:
            dst[self.rows, cols] = src


def _part_plan(plan):
    return dataclasses.replace(plan, strategy=KERNEL, small_gemm=plan.parts_small_gemm,
                               packed_projection=plan.parts_small_gemm,
                               parts=1, rows_by_kernel=False)


def _kernel_parts_forward(plan, job):
    """A layer split by rows where no fused row kernel computes its cell (a projected LSTM,
    GRU in the original form; in training GRU and RNN too): each part gathers its rows of the
    packed input into a batch of its own and runs the cell's one-thread layer kernel on it
    (KERNEL, rnnc/_engine/runners/kernel.py) with its own state and packed weights; outputs
    and states are scattered back. The gathers cost copies of the rows, small beside the
    products they let the threads run. Training returns each part's kept arrays."""
    bounds, sizes = job.layout.row_split(plan.parts)
    B, P = job.h.shape
    part_plan = _part_plan(plan)
    hs = _state_copies(job.h, bounds, "rows parts h", plan.dtype)
    cs = None if job.c is None else _state_copies(job.c, bounds, "rows parts c", plan.dtype)
    parts = []
    for p, (b0, b1) in enumerate(pairwise(bounds)):
        part = _Part(job.layout, b0, b1, sizes[p], B)
        x = part.gather(job.x)
        part.job = LayerJob(
            x=x, layout=part.layout, reverse=job.reverse, d=(job.d, p), w_ih=job.w_ih,
            w_hh=job.w_hh, b_ih=job.b_ih, b_hh=job.b_hh, w_hr=job.w_hr, w_p=job.w_p,
            h=hs[p], c=None if cs is None else cs[p],
            out=np.empty((len(x), P), dtype=plan.dtype), col0=0, packs=job.packs,
            name=(*job.name, "rows", p))
        parts.append(part)
    kept = [None] * len(parts)

    def run(p):
        kept[p] = kernel.forward(part_plan, parts[p].job)

    threads.run_parts([lambda p=p: run(p) for p in range(len(parts))])
    c0 = job.col0
    for part in parts:
        part.scatter(job.out, slice(c0, c0 + P), part.job.out)
    _copy_back(job.h, hs, bounds)
    if cs is not None:
        _copy_back(job.c, cs, bounds)
    if plan.training:
        return ("kernel parts", parts, kept)
    return None


def _kernel_parts_backward(plan, job):
    """BPTT after _kernel_parts_forward: each part's kernel backward on its rows, with its own
    gradient buffers; the parameter gradients are then added in the parts' order (the same
    bits on every call), the input gradient scattered back."""
    _, parts, kept = job.kept
    part_plan = _part_plan(plan)
    P = job.dh.shape[1]
    bounds = [part.b0 for part in parts] + [parts[-1].b1]
    dhs = _state_copies(job.dh, bounds, "rows parts dh", plan.dtype)
    dcs = (None if job.dc is None
           else _state_copies(job.dc, bounds, "rows parts dc", plan.dtype))
    grads = [{name: np.zeros_like(getattr(job, name)) for name in
              ("dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dw_p")} for _ in parts]
    jobs = []
    for p, (part, k, g) in enumerate(zip(parts, kept, grads)):
        jobs.append(BackwardJob(
            x=part.job.x, layout=part.layout, reverse=job.reverse, d=part.job.d,
            w_ih=job.w_ih, w_hh=job.w_hh, w_hr=job.w_hr, w_p=job.w_p, kept=k,
            dout=part.gather(job.dout[:, job.col0:job.col0 + P]), col0=0,
            dh=dhs[p], dc=None if dcs is None else dcs[p],
            dx=np.empty_like(part.job.x), add_dx=False, **g))

    threads.run_parts([lambda j=j: kernel.backward(part_plan, j) for j in jobs])
    _copy_back(job.dh, dhs, bounds)
    if dcs is not None:
        _copy_back(job.dc, dcs, bounds)
    for part, j, g in zip(parts, jobs, grads):
        part.scatter(job.dx, slice(None), j.dx, add=job.add_dx)
        for name, value in g.items():
            if value.size:
                getattr(job, name)[...] += value
