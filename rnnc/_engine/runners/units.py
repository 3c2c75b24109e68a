"""UNITS: a layer's hidden units split into plan.parts blocks (plan.unit_bounds), one on the
calling thread and the others on the pool's workers (rnnc/_engine/threads.py), which meet once
per step at an n-party barrier to exchange the new state.

Inference (rnnc/_kernels/_parallel_forward.pyx, split_forward_py): each part projects its own
gate columns and computes its columns of the recurrent product, on its own copy of its weight
rows (packed by the part, or kept by a frozen module). LSTM training
(rnnc/_kernels/_parallel_train.pyx): the same split, with the weights in part order for the
whole call, and a backward split the same way.

Everything is allocated before any part starts: the parts wait for each other every step, so
none may fail alone.
"""
import contextlib
import functools
from itertools import pairwise

import numpy as np

from rnnc._engine import threads
from rnnc._engine.kernels import K
from rnnc._engine.layout import gate_rows
from rnnc._engine.plan import FUSED
from rnnc._engine.runners import fused, kernel
from rnnc._engine.workspace import (
    aligned_empty,
    empty,
    folded_biases,
    new_barrier,
    pack_panels,
    panel_workspace,
    workspace,
)


def forward(plan, job):
    if plan.training:
        return _train_forward(plan, job)
    # Waits for another call using the pool: running alone instead would round differently.
    pool = threads.split_begin(wait=True, parts=plan.parts)
    if pool is None:      # no worker thread could be started
        return (fused if plan.alone == FUSED else kernel).forward(plan, job)
    try:
        _forward(plan, job, pool)
    finally:
        threads.split_end()
    return None


def _forward(plan, job, pool):
    mode, dtype = plan.mode, plan.dtype
    G, H = plan.gates, plan.hidden_size
    B = job.h.shape[0]
    bias, b_hn = folded_biases(mode, job.b_ih, job.b_hh, H)
    hbuf = workspace("split h", (2, B, H), dtype)
    hbuf[0] = job.h
    hbuf[1] = job.h
    empty1, empty2, empty3 = empty(dtype, 1), empty(dtype, 2), empty(dtype, 3)
    I = job.w_ih.shape[1]
    K_all = I + H + 1
    fused, packed_ih, small = plan.units_fused, plan.units_packed_ih, plan.parts_small_gemm
    per_panel = packed_ih and plan.ih_per_panel
    packs = job.packs
    width = K.panel_width(dtype)
    args, kept, new = {}, {}, {}
    for p, (u0, nu) in enumerate(_parts(plan)):
        rows = gate_rows(G, H, u0, nu)
        gather_hh, in_place = plan.units_gather_hh[p], plan.units_in_place[p]
        key = (*job.name, "split", p, small, fused, packed_ih, in_place, gather_hh)
        kept[p] = packs.get(key) if packs is not None else None
        if kept[p] is None:
            # Kept arrays are new ones (key None), not this thread's scratch.
            scratch = (lambda role: f"split {role} {p}") if packs is None else (lambda role: None)
            kept[p] = new[key] = dict(
                w_ih=empty2 if in_place else
                workspace(scratch("w_ih"), (G * nu, K_all if fused else I), dtype),
                w_hh=workspace(scratch("w_hh"), (G * nu, H), dtype) if gather_hh else empty2,
                packed=panel_workspace(scratch("packed"), G * nu, K_all if fused else H, dtype)
                if small else empty3,
                ih_packed=panel_workspace(scratch("packed ih"),
                                          width if per_panel else G * nu, I, dtype)
                if packed_ih else empty3)
        args[p] = dict(
            kept[p],
            bias=bias[rows] if bias.size else empty1,
            b_hn=b_hn[u0:u0 + nu] if b_hn.size else empty1,
            cpart=workspace(f"split c {p}", (B, nu), dtype) if mode == "LSTM" else empty2,
            xg=workspace(f"split xg {p}", (plan.chunk_steps * B, G * nu), dtype),
            hg=workspace(f"split hg {p}", (B, G * nu), dtype) if mode == "GRU" else empty2,
            xh=workspace(f"split xh {p}", (B, K_all), dtype) if fused else empty2)
    layout = job.layout
    split = K.SplitJob(
        mode=plan.kernel_code, x=job.x, batch_sizes=layout.batch_sizes, offsets=layout.offsets,
        reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, bounds=plan.unit_bounds, hbuf=hbuf,
        h=job.h, c=job.c if job.c is not None else empty2, out=job.out, col0=job.col0,
        chunk_steps=plan.chunk_steps, bar=new_barrier(), prepared=not new,
        ih_per_panel=per_panel, parts=[K.SplitPart(**args[p]) for p in range(plan.parts)])
    # On the small-batch kernel the parts never call BLAS (products and projections are
    # packed): holding BLAS at one thread is then not needed.
    with threads.blas_one_thread() if not small else contextlib.nullcontext():
        K.split_forward_py(split, pool)
    if packs is not None:
        packs.update(new)       # only once filled: another thread may read them next


# -- LSTM training ---------------------------------------------------------------------------
def _parts(plan):
    """(u0, nu) of each part."""
    b = plan.unit_bounds
    return tuple((b0, b1 - b0) for b0, b1 in pairwise(b))


@functools.lru_cache(maxsize=16)
def _part_order(H, bounds):
    """Gate rows (4H) in part order: [part 0: i f g o of its units | part 1: ... | ...]."""
    order = np.concatenate([gate_rows(4, H, b0, b1 - b0) for b0, b1 in pairwise(bounds)])
    order.flags.writeable = False   # shared by every call (cached)
    return order


def _shares(N, parts):
    """Rows [0, N) in `parts` shares, one per part: of the input copied into [x | h_prev] in
    the forward, of the input gradient in the backward."""
    return tuple((N * p // parts, N * (p + 1) // parts) for p in range(parts))


def _train_forward(plan, job):
    """Returns (act, xh, c_prev, (w_ih_perm, w_hh_perm)) for backward: the activations in
    part order, xh = [x | h_prev] (N, I + H) the input next to the state before each step,
    the cell states before each step, and the weights in part order."""
    dtype = plan.dtype
    (N, I), (B, H) = job.x.shape, job.h.shape
    small = plan.parts_small_gemm
    perm = _part_order(H, plan.unit_bounds)
    w_ih_perm = job.w_ih[perm]
    w_hh_perm = job.w_hh[perm]
    bias = (job.b_ih + job.b_hh)[perm] if job.b_ih.size else empty(dtype, 1)
    act = aligned_empty((N, 4 * H), dtype)
    xh = aligned_empty((N, I + H), dtype)
    c_prev = aligned_empty((N, H), dtype)
    hbuf = workspace("split train h", (2, B, H), dtype)
    hbuf[0] = job.h
    hbuf[1] = job.h
    bar = new_barrier()
    parts = []
    for p, ((u0, nu), (x0, x1)) in enumerate(zip(_parts(plan), _shares(N, plan.parts))):
        rows = slice(4 * u0, 4 * (u0 + nu))
        if small:
            w_ih_p, w_hh_p = w_ih_perm[rows], empty(dtype, 2)
            ih_packed = pack_panels(w_ih_p, f"split train ih {p}")
            hh_packed = pack_panels(w_hh_perm[rows], f"split train hh {p}")
        else:
            w_ih_p, w_hh_p = w_ih_perm[rows], w_hh_perm[rows]
            ih_packed = hh_packed = empty(dtype, 3)
        parts.append(K.TrainForwardPart(
            x=job.x, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
            reverse=job.reverse, w_ih=w_ih_p, w_ih_packed=ih_packed,
            bias=bias[rows] if bias.size else bias, w_hh=w_hh_p, w_hh_packed=hh_packed, u0=u0,
            nu=nu, hbuf=hbuf, h=job.h, c=job.c,
            cpart=workspace(f"split train c {p}", (B, nu), dtype), out=job.out, col0=job.col0,
            act=act, xh=xh, xrow0=x0, xrow1=x1, c_prev=c_prev, bar=bar, n_threads=plan.parts))
    threads.run_parts([lambda part=part: K.lstm_train_forward_part_py(part) for part in parts])
    return act, xh, c_prev, (w_ih_perm, w_hh_perm)


def backward(plan, job):
    """BPTT after a training forward, split the same way (act is overwritten)."""
    dtype = plan.dtype
    act, xh, c_prev, (w_ih_perm, w_hh_perm) = job.kept
    B, H = job.dh.shape
    N, I = xh.shape[0], xh.shape[1] - H
    bar = new_barrier()
    parts = []
    for p, ((u0, nu), (row0, row1)) in enumerate(zip(_parts(plan), _shares(N, plan.parts))):
        cols = w_hh_perm[:, u0:u0 + nu]
        if plan.parts_small_gemm:
            w_cols, packed = empty(dtype, 2), pack_panels(cols.T, f"split train bwd {p}")
        else:
            w_cols, packed = np.ascontiguousarray(cols), empty(dtype, 3)
        parts.append(K.BackwardPart(
            batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets, reverse=job.reverse,
            w_ih_perm=w_ih_perm, w_hh_cols=w_cols, w_hh_packed=packed, u0=u0, nu=nu, row0=row0,
            row1=row1, act=act, xh=xh, c_prev=c_prev, dout=job.dout, col0=job.col0, dh=job.dh,
            dc=job.dc, dhp=workspace(f"split train dh {p}", (B, nu), dtype),
            dcp=workspace(f"split train dc {p}", (B, nu), dtype),
            dx=job.dx, add_dx=job.add_dx, dw_ih=job.dw_ih, dw_hh=job.dw_hh, db_ih=job.db_ih,
            db_hh=job.db_hh, acc=workspace(f"split train acc {p}", (4 * nu,), dtype),
            wtmp=workspace(f"split train wtmp {p}", (4 * nu, I + H), dtype),
            tc_row=workspace(f"split train tc {p}", (nu,), dtype), bar=bar,
            n_threads=plan.parts))
    threads.run_parts([lambda part=part: K.lstm_backward_part_py(part) for part in parts])
