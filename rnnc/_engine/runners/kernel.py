"""KERNEL: the layer kernel of each cell (rnnc/_kernels/_lstm_kernel.pyx, _gru_kernel.pyx,
_rnn_kernel.pyx), on the calling thread; BLAS may use its threads for the products. The
recurrent product runs on the packed small-batch kernel where the plan says (small_gemm), and
the input projection too (packed_projection)."""
import numpy as np

from rnnc._engine.kernels import K
from rnnc._engine.workspace import pack_panels, panel_workspace, recurrent_panels, workspace


def forward(plan, job):
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.h.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.h.shape[1]
    n_rows, I = job.x.shape
    train = plan.training
    w_packed, w_hn_packed = recurrent_panels(mode, plan.reset_after, job.w_hh, plan.small_gemm,
                                             d, False, job.packs, job.name)
    per_panel = plan.packed_projection and plan.ih_per_panel
    w_ih_packed = None
    if plan.packed_projection:
        w_ih_packed = (panel_workspace(f"panel ih {d}", K.panel_width(dtype), I, dtype)
                       if per_panel else
                       pack_panels(job.w_ih, f"packed ih {d}", job.packs, (*job.name, "ih")))
    h_prev = np.empty((n_rows, P), dtype=dtype) if train else None
    xg = (np.empty((n_rows, G), dtype=dtype) if train
          else workspace(f"xg {d}", (plan.chunk_steps * B, G), dtype))
    f = K.LayerForward(x=job.x, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
                       reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, b_ih=job.b_ih,
                       b_hh=job.b_hh, h=job.h, out=job.out, col0=job.col0, xg=xg,
                       chunk_steps=plan.chunk_steps, h_prev=h_prev, w_hh_packed=w_packed,
                       w_ih_packed=w_ih_packed, ih_per_panel=per_panel)
    if mode == "LSTM":
        f.w_hr = job.w_hr
        f.c = job.c
        if plan.proj_size:
            f.hbuf = np.empty((B, H), dtype=dtype)
        if train:
            f.c_prev = np.empty((n_rows, H), dtype=dtype)
        if plan.small_gemm and job.w_hr.size:
            f.w_hr_packed = pack_panels(job.w_hr, f"packed hr {d}", job.packs,
                                        (*job.name, "hr"))
        K.lstm_forward(f)
        extra = f.c_prev
    elif mode == "GRU":
        f.reset_after = plan.reset_after
        if train and plan.reset_after:
            f.hn_keep = np.empty((n_rows, H), dtype=dtype)
        f.hg = np.empty((B, G), dtype=dtype)
        f.rh = np.empty((B, H) if not plan.reset_after else (1, 1), dtype=dtype)
        f.w_hn_packed = w_hn_packed
        K.gru_forward(f)
        extra = f.hn_keep
    else:
        f.relu = plan.relu
        K.rnn_forward(f)
        extra = None
    return (xg, h_prev, extra) if train else None


def backward(plan, job):
    """BPTT after forward: kept = (gate activations, previous states, LSTM's previous cell
    states or GRU's W_hn h products)."""
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.dh.shape[0], plan.hidden_size
    P = job.dh.shape[1]
    n_rows = job.x.shape[0]
    act, h_prev, extra = job.kept
    w_packed, w_hn_packed = recurrent_panels(mode, plan.reset_after, job.w_hh, plan.small_gemm,
                                             d, True)
    b = K.LayerBackward(x=job.x, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
                        reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, act=act,
                        h_prev=h_prev, dout=job.dout, col0=job.col0, dh=job.dh, dx=job.dx,
                        add_dx=job.add_dx, dw_ih=job.dw_ih, dw_hh=job.dw_hh, db_ih=job.db_ih,
                        db_hh=job.db_hh, w_hh_packed=w_packed,
                        db_acc=np.empty(H if mode == "RNN" else 4 * H, dtype=dtype))
    if mode == "LSTM":
        b.w_hr = job.w_hr
        b.c_prev = extra
        b.dc = job.dc
        b.dw_hr = job.dw_hr
        if P != H:      # projection
            b.dhh = np.empty((B, H), dtype=dtype)
            b.hbuf_all = np.empty((n_rows, H), dtype=dtype)
            b.dhp_all = np.empty((n_rows, P), dtype=dtype)
        b.tc_row = np.empty(H, dtype=dtype)
        if plan.small_gemm and job.w_hr.size:
            b.w_hr_packed = pack_panels(job.w_hr.T, f"packed hr {d}")
        K.lstm_backward(b)
    elif mode == "GRU":
        b.reset_after = plan.reset_after
        b.hn = extra if plan.reset_after else np.empty((n_rows, H), dtype=dtype)
        b.work = np.empty((B, 3 * H), dtype=dtype)
        b.w_hn_packed = w_hn_packed
        K.gru_backward(b)
    else:
        b.relu = plan.relu
        K.rnn_backward(b)
