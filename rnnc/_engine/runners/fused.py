"""FUSED: an LSTM layer on one product per step, [x | h | 1] @ [W_ih | W_hh | b]^T, with the
packed small-batch kernel (rnnc/_kernels/_fused.pxd), on the calling thread; in training the
forward keeps [x | h_prev | 1] for the fused backward."""
import numpy as np

from rnnc._engine.kernels import K
from rnnc._engine.workspace import fused_weights, kept, pack_panels, workspace


def forward(plan, job):
    if plan.training:
        return _train_forward(plan, job)
    dtype, d = plan.dtype, job.d
    G, H = job.w_hh.shape
    I = job.w_ih.shape[1]
    B = job.h.shape[0]
    packed = kept(job.packs, (*job.name, "fused"), lambda scratch: fused_weights(
        job.w_ih, job.w_hh, job.b_ih, job.b_hh, d, keep=not scratch))
    K.lstm_fused_forward(job.x, job.layout.batch_sizes, job.layout.offsets, job.reverse,
                         packed, job.h, job.c, job.out, job.col0,
                         workspace(f"fused xh {d}", (B, I + H + 1), dtype),
                         workspace(f"fused gates {d}", (B, G), dtype))
    return None


def _train_forward(plan, job):
    dtype = plan.dtype
    G, H = job.w_hh.shape
    n_rows, I = job.x.shape
    xh = np.empty((n_rows, I + H + 1), dtype=dtype)
    xh[:, :I] = job.x
    xh[:, I + H] = 1
    act = np.empty((n_rows, G), dtype=dtype)
    c_prev = np.empty((n_rows, H), dtype=dtype)
    K.lstm_fused_train_forward(xh, job.layout.batch_sizes, job.layout.offsets, job.reverse,
                               fused_weights(job.w_ih, job.w_hh, job.b_ih, job.b_hh, job.d),
                               job.h, job.c, job.out, job.col0, act, c_prev)
    return act, xh, c_prev


def backward(plan, job):
    """BPTT after a training forward: kept = (act, [x | h_prev | 1], c_prev)."""
    dtype, d = plan.dtype, job.d
    act, xh, c_prev = job.kept
    H = plan.hidden_size
    small = plan.small_gemm
    K.lstm_fused_backward(K.LayerBackward(
        xh=xh, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
        reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, act=act, c_prev=c_prev,
        dout=job.dout, col0=job.col0, dh=job.dh, dc=job.dc, dx=job.dx, add_dx=job.add_dx,
        dw_cat=np.empty((4 * H, xh.shape[1]), dtype=dtype), dw_ih=job.dw_ih, dw_hh=job.dw_hh,
        db_ih=job.db_ih, db_hh=job.db_hh, tc_row=np.empty(H, dtype=dtype),
        w_hh_packed=pack_panels(job.w_hh.T, f"packed {d}") if small else None,
        w_ih_packed=pack_panels(job.w_ih.T, f"packed ih {d}") if small else None))
