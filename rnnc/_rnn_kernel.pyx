"""Elman RNN forward over a whole packed sequence, one layer and one direction per call.

a<t> = g(x<t> W_ih^T + b_ih + a<t-1> W_hh^T + b_hh), g = tanh or relu.
Per chunk of steps one GEMM projects the inputs; per step one GEMM adds the recurrent product
and one pass applies g (rnnc/_cell_math.pxd). GIL released for the whole sequence, no allocation.
"""
from cython cimport floating

from rnnc._blas cimport gemm
from rnnc._cell_math cimport rnn_pointwise
from rnnc._sequence cimport chunk_bounds, project_inputs


cdef void rnn_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes,  # (T,) active rows per step, non-increasing
        const Py_ssize_t* offsets,      # (T,) first packed row of each step
        Py_ssize_t T, bint reverse, bint use_relu,
        const floating* w_ih,   # (H, I)
        const floating* w_hh,   # (H, H)
        const floating* b_ih,   # (H,) or NULL
        const floating* b_hh,   # (H,) or NULL
        Py_ssize_t H,
        floating* h,            # (B, H) state in/out
        floating* out, Py_ssize_t ldo,  # (N, H) this direction's output columns, row stride ldo
        floating* xg,           # (chunk_steps * B, H) workspace
        Py_ssize_t chunk_steps) noexcept nogil:
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, row0
    cdef floating* pre
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, b_ih, b_hh, H, H, xg)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            pre = xg + (offsets[t] - row0) * H
            gemm(False, True, b, H, H, 1, h, H, w_hh, H, 1, pre, H)
            rnn_pointwise(b, H, use_relu, pre, h, out + offsets[t] * ldo, ldo)


def rnn_forward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                const Py_ssize_t[::1] offsets, bint reverse, bint use_relu,
                const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] b_ih, const floating[::1] b_hh,
                floating[:, ::1] h, floating[:, ::1] out, Py_ssize_t col0,
                floating[:, ::1] xg, Py_ssize_t chunk_steps):
    """Run one Elman RNN layer in one direction over a packed sequence (see rnnc/_stack.py).

    Zero-size b_ih/b_hh mean no bias. h and the columns [col0, col0 + H) of out are written.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    with nogil:
        rnn_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                     reverse, use_relu, &w_ih[0, 0], &w_hh[0, 0], bi, bh, H,
                     &h[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], chunk_steps)
