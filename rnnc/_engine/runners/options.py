"""OPTIONS: a layer with cell options (rnnc/_cell_options.py) on the options kernel
(rnnc/_kernels/_options_kernel.pyx), on the calling thread; BLAS may use its threads for the
products."""
import numpy as np

from rnnc._cell_options import ACTIVATIONS
from rnnc._engine.kernels import K
from rnnc._engine.workspace import workspace

_MODE = {"RNN": 0, "GRU": 1, "LSTM": 2}


def spec_array(cell):
    """The kernel's form of a CellSpec: [code, alpha, beta] of f, g and h, clip,
    input_forget (the missing activations of RNN and GRU repeat their last)."""
    acts = list(cell.activations) + [cell.activations[-1]] * (3 - len(cell.activations))
    values = []
    for name, alpha, beta in acts:
        values += [ACTIVATIONS[name][0], alpha, beta]
    return np.array(values + [cell.clip, float(cell.input_forget)], dtype=np.float64)


def _none(dtype, ndim):
    return np.empty((0,) * ndim, dtype=dtype)


def forward(plan, job):
    mode, dtype, d = plan.mode, plan.dtype, job.d
    B, H = job.h.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.h.shape[1]
    n_rows = job.x.shape[0]
    train = plan.training
    lstm = mode == "LSTM"
    keeps = train and (mode == "GRU" or (lstm and plan.proj_size))
    pre = (np.empty((n_rows, G), dtype=dtype) if train
           else workspace(f"options pre {d}", (plan.chunk_steps * B, G), dtype))
    h_prev = np.empty((n_rows, P), dtype=dtype) if train else _none(dtype, 2)
    c_prev = np.empty((n_rows, H), dtype=dtype) if train and lstm else _none(dtype, 2)
    keep = np.empty((n_rows, H), dtype=dtype) if keeps else _none(dtype, 2)
    K.options_forward(_MODE[mode], plan.reset_after, spec_array(plan.cell), job.x,
                      job.layout.batch_sizes, job.layout.offsets, job.reverse, job.w_ih,
                      job.w_hh, job.b_ih, job.b_hh, job.w_hr, job.w_p, job.h,
                      job.c if lstm else _none(dtype, 2), job.out, job.col0, pre,
                      n_rows and (len(job.layout.batch_sizes) if train else plan.chunk_steps),
                      workspace(f"options work {d}", (B, G), dtype), h_prev, c_prev, keep)
    return (pre, h_prev, c_prev, keep) if train else None


def backward(plan, job):
    """BPTT after forward: kept = (pre-activations, previous states, previous cell states,
    GRU's W_hn h + b_hn or r * h / the projected LSTM's o * h(c'))."""
    mode, dtype = plan.mode, plan.dtype
    B, H = job.dh.shape[0], plan.hidden_size
    G, P = plan.gates * H, job.dh.shape[1]
    n_rows = job.x.shape[0]
    pre, h_prev, c_prev, keep = job.kept
    lstm = mode == "LSTM"
    K.options_backward(_MODE[mode], plan.reset_after, spec_array(plan.cell), job.x,
                       job.layout.batch_sizes, job.layout.offsets, job.reverse, job.w_ih,
                       job.w_hh, job.w_hr, job.w_p, pre, h_prev, c_prev, keep, job.dout,
                       job.col0, job.dh, job.dc if lstm else _none(dtype, 2), job.dx,
                       job.add_dx, job.dw_ih, job.dw_hh, job.db_ih, job.db_hh, job.dw_hr,
                       job.dw_p,
                       np.empty((n_rows, P), dtype=dtype) if lstm and plan.proj_size
                       else _none(dtype, 2),
                       np.empty((B, G), dtype=dtype))
