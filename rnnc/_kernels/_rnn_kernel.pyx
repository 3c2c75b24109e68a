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
from rnnc._kernels._layer_job cimport (LayerBackward, LayerForward, check_chunk_steps,
                                      is_double)
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


def rnn_forward(LayerForward job not None):
    """Run one Elman RNN layer in one direction over a packed sequence (the runner:
    rnnc/_engine/runners/kernel.py); job.relu selects relu over tanh.

    Reads x, batch_sizes, offsets, reverse, w_ih, w_hh, b_ih, b_hh, h, out, col0, xg,
    chunk_steps, h_prev, w_hh_packed, w_ih_packed and ih_per_panel (rnnc/_kernels/_layer_job.pyx).
    No b_ih/b_hh means no bias. h and the columns [col0, col0 + H) of out are written.
    An h_prev (training) receives the state before each step, and xg (then (N, H),
    chunk_steps = T) the activations. w_hh_packed / w_ih_packed (W^T in the small-batch
    kernel's panels) select that kernel for the recurrent / input product.
    """
    check_chunk_steps(job, "rnn_forward")
    if is_double(job.x):
        forward(job, <double>0)
    else:
        forward(job, <float>0)


cdef int forward(LayerForward job, floating kind) except -1:
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[::1] b_ih = job.b_ih
    cdef const floating[::1] b_hh = job.b_hh
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] xg = job.xg
    cdef floating[:, ::1] h_prev = job.h_prev
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef bint reverse = job.reverse, use_relu = job.relu, ih_per_panel = job.ih_per_panel
    cdef Py_ssize_t col0 = job.col0, chunk_steps = job.chunk_steps
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return 0
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
    return 0


def rnn_backward(LayerBackward job not None):
    """BPTT through one Elman RNN layer and direction after a training forward.

    Reads x, batch_sizes, offsets, reverse, relu, w_ih, w_hh, act, h_prev, dout, col0, dh, dx,
    add_dx, dw_ih, dw_hh, db_ih, db_hh, db_acc and w_hh_packed (rnnc/_kernels/_layer_job.pyx).
    act (N, H) holds the kept activations and is overwritten with dA; dh holds the gradient of
    h_n and receives that of h_0. No db_* means no bias; db_acc (H,) is workspace.
    """
    if is_double(job.x):
        backward(job, <double>0)
    else:
        backward(job, <float>0)


cdef int backward(LayerBackward job, floating kind) except -1:
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef floating[:, ::1] act = job.act
    cdef const floating[:, ::1] h_prev = job.h_prev
    cdef const floating[:, ::1] dout = job.dout
    cdef floating[:, ::1] dh = job.dh
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef floating[::1] db_acc = job.db_acc
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef bint reverse = job.reverse, use_relu = job.relu, add_dx = job.add_dx
    cdef Py_ssize_t col0 = job.col0
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dh.shape[1]
    if T == 0 or x.shape[0] == 0 or dh.shape[0] == 0:
        return 0
    cdef floating* dbi = &db_ih[0] if db_ih.shape[0] > 0 else NULL
    cdef floating* dbh = &db_hh[0] if db_hh.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    with nogil:
        rnn_sequence_backward(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0],
                              T, reverse, use_relu, &w_ih[0, 0], &w_hh[0, 0], H,
                              &act[0, 0], &h_prev[0, 0], &dout[0, col0], dout.shape[1],
                              &dh[0, 0], &dx[0, 0], dx.shape[1], add_dx,
                              &dw_ih[0, 0], &dw_hh[0, 0], dbi, dbh, &db_acc[0], wp)
    return 0


include "_configure.pxi"
