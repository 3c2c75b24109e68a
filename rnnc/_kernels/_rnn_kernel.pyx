"""Elman RNN over a whole packed sequence, one layer and one direction per call: forward and BPTT.

a<t> = g(x<t> W_ih^T + b_ih + a<t-1> W_hh^T + b_hh), g = tanh or relu.
Forward: per chunk of steps one GEMM projects the inputs; per step one GEMM adds the recurrent
product and one pass applies g (rnnc/_kernels/_cell_math.pxd). In training the chunk is the whole
sequence, the activations stay in the projection buffer and the previous states are kept.
Backward: per step one pass for dA = d(pre-activation) and one GEMM dA @ W_hh; then the weight
and input gradients as GEMMs over all steps. GIL released for the whole sequence, no allocation.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport gemm, recurrent_gemm, recurrent_gemm_nn
from rnnc._kernels._cell_math cimport rnn_pointwise, rnn_pointwise_backward
from rnnc._kernels._sequence cimport (add_bias_grads, check_one_panel, chunk_bounds,
                             input_side_backward, project_inputs)


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
        floating* xg,           # (chunk_steps * B, H) workspace; (N, H) activations in training
        Py_ssize_t chunk_steps,
        floating* h_prev,       # (N, H) out: state before each step, or NULL
        const floating* w_hh_packed,    # W_hh^T in panels (_small_gemm.h), or NULL
        const floating* w_ih_packed,    # W_ih^T in panels, or NULL
        bint ih_per_panel) noexcept nogil:  # w_ih_packed: one panel (project_inputs)
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, row0
    cdef bint keep = h_prev != NULL
    cdef floating* pre
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, w_ih_packed, b_ih, b_hh, H, H, xg, ih_per_panel)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            if keep:
                memcpy(h_prev + offsets[t] * H, h, b * H * sizeof(floating))
            pre = xg + (offsets[t] - row0) * H
            recurrent_gemm(b, H, H, h, H, w_hh, H, w_hh_packed, 1, pre, H, s & 1)
            rnn_pointwise(b, H, use_relu, pre, h, out + offsets[t] * ldo, ldo)


cdef void rnn_sequence_backward(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) the layer's packed input
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        bint use_relu,
        const floating* w_ih,   # (H, I)
        const floating* w_hh,   # (H, H)
        Py_ssize_t H,
        floating* act,          # (N, H) in: activations; out: dA
        const floating* h_prev,  # (N, H)
        const floating* dout, Py_ssize_t ldd,  # (N, H) gradient of this direction's output
        floating* dh,           # (B, H) in: grad of h_n; out: grad of h_0
        floating* dx, Py_ssize_t lddx, bint add_dx,  # (N, I) out (+= when add_dx)
        floating* dw_ih, floating* dw_hh,     # (H, I), (H, H) out
        floating* db_ih, floating* db_hh,  # (H,) out (+=), or NULL
        floating* db_acc,       # (H,) workspace: the bias gradient, summed during the steps
        const floating* w_hh_packed) noexcept nogil:  # W_hh in panels (_small_gemm.h), or NULL
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]
    cdef Py_ssize_t s, t, b, off, j
    # db_ih and db_hh both equal the column sums of dA: summed once, during the steps.
    cdef floating* acc = db_acc if (db_ih != NULL or db_hh != NULL) else NULL
    if acc != NULL:
        for j in range(H):
            acc[j] = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        rnn_pointwise_backward(b, H, use_relu, act + off * H, dh, dout + off * ldd, ldd, acc)
        recurrent_gemm_nn(b, H, H, act + off * H, H, w_hh, H, w_hh_packed, 0, dh, H)
    input_side_backward(act, H, N, x, ldx, I, w_ih, dx, lddx, add_dx, dw_ih, <floating*>NULL)
    gemm(True, False, H, H, N, 1, act, H, h_prev, H, 0, dw_hh, H)
    if acc != NULL:
        add_bias_grads(acc, 1, H, db_ih, db_hh)


def rnn_forward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                const Py_ssize_t[::1] offsets, bint reverse, bint use_relu,
                const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] b_ih, const floating[::1] b_hh,
                floating[:, ::1] h, floating[:, ::1] out, Py_ssize_t col0,
                floating[:, ::1] xg, Py_ssize_t chunk_steps, floating[:, ::1] h_prev,
                const floating[:, :, ::1] w_hh_packed, const floating[:, :, ::1] w_ih_packed,
                bint ih_per_panel=False):
    """Run one Elman RNN layer in one direction over a packed sequence (the runner:
    rnnc/_engine/runners/kernel.py).

    Zero-size b_ih/b_hh mean no bias. h and the columns [col0, col0 + H) of out are written.
    A non-empty h_prev (training) receives the state before each step, and xg (then (N, H),
    chunk_steps = T) the activations. Non-empty w_hh_packed / w_ih_packed (W^T in the
    small-batch kernel's panels) select that kernel for the recurrent / input product.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    cdef floating* hp = &h_prev[0, 0] if h_prev.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    if ih_per_panel:
        check_one_panel(w_ih_packed, x.shape[1], "rnn_forward")
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    with nogil:
        rnn_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                     reverse, use_relu, &w_ih[0, 0], &w_hh[0, 0], bi, bh, H,
                     &h[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], chunk_steps, hp, wp, wip,
                     ih_per_panel)


def rnn_backward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                 const Py_ssize_t[::1] offsets, bint reverse, bint use_relu,
                 const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 floating[:, ::1] act, const floating[:, ::1] h_prev,
                 const floating[:, ::1] dout, Py_ssize_t col0, floating[:, ::1] dh,
                 floating[:, ::1] dx, bint add_dx,
                 floating[:, ::1] dw_ih, floating[:, ::1] dw_hh,
                 floating[::1] db_ih, floating[::1] db_hh, floating[::1] db_acc,
                 const floating[:, :, ::1] w_hh_packed):
    """BPTT through one Elman RNN layer and direction after a training forward.

    act (N, H) holds the kept activations and is overwritten with dA; dh holds the gradient of
    h_n and receives that of h_0. Zero-size db_* mean no bias; db_acc (H,) is workspace.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dh.shape[1]
    if T == 0 or x.shape[0] == 0 or dh.shape[0] == 0:
        return
    cdef floating* dbi = &db_ih[0] if db_ih.shape[0] > 0 else NULL
    cdef floating* dbh = &db_hh[0] if db_hh.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    with nogil:
        rnn_sequence_backward(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0],
                              T, reverse, use_relu, &w_ih[0, 0], &w_hh[0, 0], H,
                              &act[0, 0], &h_prev[0, 0], &dout[0, col0], dout.shape[1],
                              &dh[0, 0], &dx[0, 0], dx.shape[1], add_dx,
                              &dw_ih[0, 0], &dw_hh[0, 0], dbi, dbh, &db_acc[0], wp)
