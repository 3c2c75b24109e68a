"""OPTIONS: a layer with cell options (rnnc/_cell_options.py) on the options kernel
(rnnc/_kernels/_options_kernel.pyx), on the calling thread; BLAS may use its threads for the
products."""
import numpy as np

from rnnc._cell_options import ACTIVATIONS
from rnnc._engine.kernels import K
from rnnc._engine.workspace import empty, workspace

_MODE = {"RNN": 0, "GRU": 1, "LSTM": 2}


def spec_array(cell):
    """The kernel's form of a CellSpec: [code, alpha, beta] of f, g and h, clip,
    input_forget (the missing activations of RNN and GRU repeat their last)."""
    acts = list(cell.activations) + [cell.activations[-1]] * (3 - len(cell.activations))
    values = []
    for name, alpha, beta in acts:
        values += [ACTIVATIONS[name][0], alpha, beta]
    return np.array(values + [cell.clip, float(cell.input_forget)], dtype=np.float64)


def forward(plan, job):
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.h.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.h.shape[1]
    n_rows = job.x.shape[0]
    train = plan.training
    lstm = mode == "LSTM"
    keeps = train and (mode == "GRU" or (lstm and plan.proj_size))
    f = K.LayerForward(
        x=job.x, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
        reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, b_ih=job.b_ih, b_hh=job.b_hh,
        w_hr=job.w_hr, w_p=job.w_p, h=job.h, c=job.c if lstm else empty(dtype, 2),
        out=job.out, col0=job.col0, reset_after=plan.reset_after,
        cell_spec=spec_array(plan.cell),
        xg=(np.empty((n_rows, G), dtype=dtype) if train
            else workspace(f"options pre {d}", (plan.chunk_steps * B, G), dtype)),
        chunk_steps=max(1, len(job.layout.batch_sizes)) if train else plan.chunk_steps,
        hg=workspace(f"options work {d}", (B, G), dtype),
        h_prev=np.empty((n_rows, P), dtype=dtype) if train else empty(dtype, 2),
        c_prev=np.empty((n_rows, H), dtype=dtype) if train and lstm else empty(dtype, 2),
        keep=np.empty((n_rows, H), dtype=dtype) if keeps else empty(dtype, 2))
    K.options_forward(_MODE[mode], f)
    return (f.xg, f.h_prev, f.c_prev, f.keep) if train else None


def backward(plan, job):
    """BPTT after forward: kept = (pre-activations, previous states, previous cell states,
    GRU's W_hn h + b_hn or r * h / the projected LSTM's o * h(c'))."""
    mode, dtype = plan.mode, plan.dtype
    B, H = job.dh.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.dh.shape[1]
    n_rows = job.x.shape[0]
    pre, h_prev, c_prev, keep = job.kept
    lstm = mode == "LSTM"
    b = K.LayerBackward(
        x=job.x, batch_sizes=job.layout.batch_sizes, offsets=job.layout.offsets,
        reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, w_hr=job.w_hr, w_p=job.w_p,
        act=pre, h_prev=h_prev, c_prev=c_prev, keep=keep, dout=job.dout, col0=job.col0,
        dh=job.dh, dc=job.dc if lstm else empty(dtype, 2), dx=job.dx, add_dx=job.add_dx,
        dw_ih=job.dw_ih, dw_hh=job.dw_hh, db_ih=job.db_ih, db_hh=job.db_hh, dw_hr=job.dw_hr,
        dw_p=job.dw_p, reset_after=plan.reset_after, cell_spec=spec_array(plan.cell),
        dhp_all=(np.empty((n_rows, P), dtype=dtype) if lstm and plan.proj_size
                 else empty(dtype, 2)),
        work=np.empty((B, G), dtype=dtype))
    K.options_backward(_MODE[mode], b)
