"""KERNEL: the layer kernel of each cell (rnnc/_kernels/_lstm_kernel.pyx, _gru_kernel.pyx,
_rnn_kernel.pyx), on the calling thread; BLAS may use its threads for the products. The
recurrent product runs on the packed small-batch kernel where the plan says (small_gemm), and
the input projection too (packed_projection)."""
import numpy as np

from rnnc._engine.kernels import K
from rnnc._engine.workspace import (empty, pack_panels, panel_workspace, recurrent_panels,
                                    workspace)


def forward(plan, job):
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.h.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.h.shape[1]
    n_rows, I = job.x.shape
    train = plan.training
    empty2, empty3 = empty(dtype, 2), empty(dtype, 3)
    w_packed, w_hn_packed = recurrent_panels(mode, plan.reset_after, job.w_hh, plan.small_gemm,
                                             d, False, job.packs, job.name)
    per_panel = plan.packed_projection and plan.ih_per_panel
    w_ih_packed = empty3
    if plan.packed_projection:
        w_ih_packed = (panel_workspace(f"panel ih {d}", K.panel_width(dtype), I, dtype)
                       if per_panel else
                       pack_panels(job.w_ih, f"packed ih {d}", job.packs, (*job.name, "ih")))
    h_prev = np.empty((n_rows, P), dtype=dtype) if train else empty2
    xg = (np.empty((n_rows, G), dtype=dtype) if train
          else workspace(f"xg {d}", (plan.chunk_steps * B, G), dtype))
    args = (job.x, job.layout.batch_sizes, job.layout.offsets, job.reverse)
    if mode == "LSTM":
        hbuf = np.empty((B, H), dtype=dtype) if plan.proj_size else empty2
        c_prev = np.empty((n_rows, H), dtype=dtype) if train else empty2
        w_hr_packed = (pack_panels(job.w_hr, f"packed hr {d}", job.packs, (*job.name, "hr"))
                       if plan.small_gemm and job.w_hr.size else empty3)
        K.lstm_forward(*args, job.w_ih, job.w_hh, job.b_ih, job.b_hh, job.w_hr, job.h, job.c,
                       job.out, job.col0, xg, hbuf, plan.chunk_steps, h_prev, c_prev, w_packed,
                       w_hr_packed, w_ih_packed, per_panel)
        extra = c_prev
    elif mode == "GRU":
        hn = np.empty((n_rows, H), dtype=dtype) if train and plan.reset_after else empty2
        hg = np.empty((B, G), dtype=dtype)
        rh = np.empty((B, H) if not plan.reset_after else (1, 1), dtype=dtype)
        K.gru_forward(*args, plan.reset_after, job.w_ih, job.w_hh, job.b_ih, job.b_hh, job.h,
                      job.out, job.col0, xg, hg, rh, plan.chunk_steps, h_prev, hn, w_packed,
                      w_hn_packed, w_ih_packed, per_panel)
        extra = hn
    else:
        K.rnn_forward(*args, plan.relu, job.w_ih, job.w_hh, job.b_ih, job.b_hh, job.h, job.out,
                      job.col0, xg, plan.chunk_steps, h_prev, w_packed, w_ih_packed, per_panel)
        extra = None
    return (xg, h_prev, extra) if train else None


def backward(plan, job):
    """BPTT after forward: kept = (gate activations, previous states, LSTM's previous cell
    states or GRU's W_hn h products)."""
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.dh.shape[0], plan.hidden_size
    P = job.dh.shape[1]
    n_rows = job.x.shape[0]
    empty2, empty3 = empty(dtype, 2), empty(dtype, 3)
    act, h_prev, extra = job.kept
    w_packed, w_hn_packed = recurrent_panels(mode, plan.reset_after, job.w_hh, plan.small_gemm,
                                             d, True)
    db_acc = np.empty(H if mode == "RNN" else 4 * H, dtype=dtype)
    args = (job.x, job.layout.batch_sizes, job.layout.offsets, job.reverse)
    if mode == "LSTM":
        proj = P != H
        K.lstm_backward(*args, job.w_ih, job.w_hh, job.w_hr, act, h_prev, extra, job.dout,
                        job.col0, job.dh, job.dc, job.dx, job.add_dx, job.dw_ih, job.dw_hh,
                        job.db_ih, job.db_hh, job.dw_hr,
                        np.empty((B, H), dtype=dtype) if proj else empty2,
                        np.empty((n_rows, H), dtype=dtype) if proj else empty2,
                        np.empty((n_rows, P), dtype=dtype) if proj else empty2,
                        np.empty(H, dtype=dtype), db_acc, w_packed,
                        pack_panels(job.w_hr.T, f"packed hr {d}")
                        if plan.small_gemm and job.w_hr.size else empty3)
    elif mode == "GRU":
        hn = extra if plan.reset_after else np.empty((n_rows, H), dtype=dtype)
        K.gru_backward(*args, plan.reset_after, job.w_ih, job.w_hh, act, h_prev, hn, job.dout,
                       job.col0, job.dh, job.dx, job.add_dx, job.dw_ih, job.dw_hh, job.db_ih,
                       job.db_hh, np.empty((B, 3 * H), dtype=dtype), db_acc, w_packed,
                       w_hn_packed)
    else:
        K.rnn_backward(*args, plan.relu, job.w_ih, job.w_hh, act, h_prev, job.dout, job.col0,
                       job.dh, job.dx, job.add_dx, job.dw_ih, job.dw_hh, job.db_ih, job.db_hh,
                       db_acc, w_packed)
