"""LSTM over a whole packed sequence, one layer and one direction per call: forward and BPTT.

Forward, per chunk of time steps: one GEMM projects the inputs of all its steps
(rnnc/_kernels/_sequence.pxd). Per step: one GEMM adds the recurrent product of all four gates,
h @ W_hh^T, into the gate pre-activations; one fused pass applies the gates and updates c and h
(rnnc/_kernels/_cell_math.pxd); with proj_size, one more GEMM projects h = (o * tanh(c)) @ W_hr^T.
In training the chunk is the whole sequence, the gate activations stay in the projection buffer,
and the previous h and c of every step are kept for the backward pass.

Backward walks the steps in the opposite order: per step one fused pass turns the kept
activations into the gradients of the gate pre-activations (dA, in place) and one GEMM carries
dA @ W_hh to the previous state; the weight and input gradients are then large GEMMs over all
steps at once. The GIL is released for the whole sequence and nothing is allocated: the plan
(rnnc/_engine/plan.py) decides how a layer runs, and its runner (rnnc/_engine/runners/kernel.py)
allocates every buffer passed here, from inputs validated before the call.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport gemm, recurrent_gemm, recurrent_gemm_nn, small_gemm
from rnnc._kernels._cell_math cimport lstm_pointwise, lstm_pointwise_backward
from rnnc._kernels._fused cimport FUSED_LSTM, fused_sequence, pack_fused
from rnnc._kernels._layer_job cimport (LayerBackward, LayerForward, check_chunk_steps,
                                      is_double)
from rnnc._kernels._sequence cimport (add_bias_grads, check_one_panel, chunk_bounds, copy_rows,
                             input_side_backward, project_inputs)


cdef void lstm_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes,  # (T,) active rows per step, non-increasing
        const Py_ssize_t* offsets,      # (T,) first packed row of each step
        Py_ssize_t T, bint reverse,
        const floating* w_ih,   # (4H, I)
        const floating* w_hh,   # (4H, P)
        const floating* b_ih,   # (4H,) or NULL
        const floating* b_hh,   # (4H,) or NULL
        const floating* w_hr,   # (P, H) or NULL (no projection: P == H)
        Py_ssize_t H, Py_ssize_t P,
        floating* h,            # (B, P) state in/out
        floating* c,            # (B, H) cell state in/out
        floating* out, Py_ssize_t ldo,  # (N, P) this direction's output columns, row stride ldo
        floating* xg,           # (chunk_steps * B, 4H) workspace; (N, 4H) activations in training
        floating* hbuf,         # (B, H) workspace for o * tanh(c) when projecting, else unused
        Py_ssize_t chunk_steps,
        floating* h_prev,       # (N, P) out: state before each step (training), or NULL
        floating* c_prev,       # (N, H) out: cell state before each step, or NULL
        const floating* w_hh_packed,    # W_hh^T in panels (_small_gemm.h), or NULL
        const floating* w_hr_packed,    # W_hr^T in panels, or NULL
        const floating* w_ih_packed,    # W_ih^T in panels, or NULL
        bint ih_per_panel) noexcept nogil:  # w_ih_packed: one panel (project_inputs)
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, r, row0
    cdef bint keep = h_prev != NULL
    cdef floating* gates
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, w_ih_packed, b_ih, b_hh, G, G, xg, ih_per_panel)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            if keep:
                memcpy(h_prev + offsets[t] * P, h, b * P * sizeof(floating))
                memcpy(c_prev + offsets[t] * H, c, b * H * sizeof(floating))
            gates = xg + (offsets[t] - row0) * G
            recurrent_gemm(b, G, P, h, P, w_hh, P, w_hh_packed, 1, gates, G, s & 1)
            if w_hr == NULL:
                lstm_pointwise(b, H, gates, c, h, H, out + offsets[t] * ldo, ldo)
            else:
                lstm_pointwise(b, H, gates, c, hbuf, H, <floating*>NULL, 0)
                recurrent_gemm(b, P, H, hbuf, H, w_hr, H, w_hr_packed, 0, h, P, s & 1)
                for r in range(b):
                    memcpy(out + (offsets[t] + r) * ldo, h + r * P, P * sizeof(floating))


cdef void lstm_fused_train_sequence(
        floating* xh,               # (N, I + H + 1) [x | h<t-1> | 1] per packed row: x and the
                                    # ones in; the states before each step written here
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_packed,   # [W_ih | W_hh | b_ih + b_hh]^T in panels, K = I + H + 1
        Py_ssize_t I, Py_ssize_t H,
        floating* h, floating* c,   # (B, H) state in/out
        floating* out, Py_ssize_t ldo,
        floating* act,              # (N, 4H) out: the gate activations of every step
        floating* c_prev) noexcept nogil:  # (N, H) out: the cell state before each step
    """The training forward of fused_sequence (inference's fused product, rnnc/_kernels/_fused.pxd):
    the states before each step are kept inside xh, next to the step's input, so that the
    backward gets [dW_ih | dW_hh | db] from one GEMM over xh (lstm_fused_sequence_backward)."""
    cdef Py_ssize_t K = I + H + 1, G = 4 * H
    cdef Py_ssize_t s, t, b, off
    for s in range(T):
        t = T - 1 - s if reverse else s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        copy_rows(xh + off * K + I, K, h, H, b, H)
        memcpy(c_prev + off * H, c, b * H * sizeof(floating))
        small_gemm(b, G, K, xh + off * K, K, w_packed, 0, act + off * G, G)
        lstm_pointwise(b, H, act + off * G, c, h, H, out + off * ldo, ldo)


cdef void lstm_fused_sequence_backward(
        const floating* xh,         # (N, I + H + 1) as the fused training forward left it
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih, const floating* w_hh,  # (4H, I), (4H, H)
        Py_ssize_t I, Py_ssize_t H,
        floating* act,              # (N, 4H) in: gate activations; out: dA
        const floating* c_prev,     # (N, H)
        const floating* dout, Py_ssize_t ldd,
        floating* dh, floating* dc,  # (B, H) in: grads of h_n, c_n; out: of h_0, c_0
        floating* dx, Py_ssize_t lddx, bint add_dx,
        floating* dw_cat,           # (4H, I + H + 1) workspace: [dW_ih | dW_hh | db]
        floating* dw_ih, floating* dw_hh,     # (4H, I), (4H, H) out
        floating* db_ih, floating* db_hh,     # (4H,) out (+=), or NULL without bias
        floating* tc_row,
        const floating* w_hh_packed,
        const floating* w_ih_packed) noexcept nogil:  # W_ih^T in panels, or NULL (BLAS)
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]   # packed rows (offsets ascend)
    lstm_fused_backward_steps(batch_sizes, offsets, T, reverse, w_hh, H, act, c_prev, dout, ldd,
                              dh, dc, tc_row, w_hh_packed)
    lstm_fused_backward_weights(xh, N, w_ih, I, H, act, dx, lddx, add_dx, dw_cat, dw_ih, dw_hh,
                                db_ih, db_hh, 0, N, 0, 4 * H, w_ih_packed)


cdef void lstm_fused_backward_steps(
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_hh, Py_ssize_t H, floating* act, const floating* c_prev,
        const floating* dout, Py_ssize_t ldd, floating* dh, floating* dc, floating* tc_row,
        const floating* w_hh_packed) noexcept nogil:
    """The time loop of lstm_fused_sequence_backward: dA of every step (in act) and the
    gradients of the initial state. Rows are independent here, so a layer split by batch rows
    runs it on each part's rows (rnnc/_engine/runners/rows.py)."""
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s, t, b, off
    for s in range(T):
        t = s if reverse else T - 1 - s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        lstm_pointwise_backward(b, H, act + off * G, c_prev + off * H, dc, dh, H,
                                dout + off * ldd, ldd, <floating*>NULL, tc_row, <floating*>NULL)
        recurrent_gemm_nn(b, H, G, act + off * G, G, w_hh, H, w_hh_packed, 0, dh, H)


cdef void lstm_fused_backward_weights(
        const floating* xh, Py_ssize_t N, const floating* w_ih, Py_ssize_t I, Py_ssize_t H,
        const floating* act, floating* dx, Py_ssize_t lddx, bint add_dx, floating* dw_cat,
        floating* dw_ih, floating* dw_hh, floating* db_ih, floating* db_hh,
        Py_ssize_t r0, Py_ssize_t r1,   # rows of the input gradient to compute
        Py_ssize_t g0, Py_ssize_t g1,   # gate rows of the weight gradients to compute
        const floating* w_ih_packed     # W_ih^T in panels, or NULL (BLAS for dx)
        ) noexcept nogil:
    """The GEMMs after lstm_fused_backward_steps (dA of all N rows in act): rows [r0, r1) of
    the input gradient and gate rows [g0, g1) of [dW_ih | dW_hh | db]. Two threads may each
    compute a share (rnnc/_engine/runners/rows.py)."""
    cdef Py_ssize_t K = I + H + 1, G = 4 * H
    # dx on the small-batch kernel where it runs: with W_ih packed already, it runs this product
    # closer to the CPU's peak than OpenBLAS (benchmarks/results/amd-epyc/tuning.md).
    if r1 > r0 and not small_gemm(r1 - r0, I, G, act + r0 * G, G, w_ih_packed,
                                  1 if add_dx else 0, dx + r0 * lddx, lddx):
        gemm(False, False, r1 - r0, I, G, 1, act + r0 * G, G, w_ih, I, 1 if add_dx else 0,
             dx + r0 * lddx, lddx)
    if g1 <= g0:
        return
    # One GEMM for all weight gradients: xh holds [x | h<t-1> | 1] of every row.
    gemm(True, False, g1 - g0, K, N, 1, act + g0, G, xh, K, 0, dw_cat + g0 * K, K)
    copy_rows(dw_ih + g0 * I, I, dw_cat + g0 * K, K, g1 - g0, I)
    copy_rows(dw_hh + g0 * H, H, dw_cat + g0 * K + I, K, g1 - g0, H)
    add_bias_grads(dw_cat + g0 * K + I + H, K, g1 - g0, db_ih + g0 if db_ih != NULL else NULL,
                   db_hh + g0 if db_hh != NULL else NULL)     # the ones column


cdef void lstm_sequence_backward(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) the layer's packed input
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih,   # (4H, I)
        const floating* w_hh,   # (4H, P)
        const floating* w_hr,   # (P, H) or NULL
        Py_ssize_t H, Py_ssize_t P,
        floating* act,          # (N, 4H) in: gate activations; out: dA
        const floating* h_prev,  # (N, P)
        const floating* c_prev,  # (N, H)
        const floating* dout, Py_ssize_t ldd,  # (N, P) gradient of this direction's output
        floating* dh,           # (B, P) in: grad of h_n; out: grad of h_0
        floating* dc,           # (B, H) in: grad of c_n; out: grad of c_0
        floating* dx, Py_ssize_t lddx, bint add_dx,  # (N, I) out (+= when add_dx)
        floating* dw_ih, floating* dw_hh,     # (4H, I), (4H, P) out
        floating* db_ih, floating* db_hh,     # (4H,) out (+=), or NULL without bias
        floating* dw_hr,        # (P, H) out, or NULL
        floating* dhh,          # (B, H) workspace (projection)
        floating* hbuf_all,     # (N, H) workspace (projection): o * tanh(c) of every step
        floating* dhp_all,      # (N, P) workspace (projection): grad of h
        floating* tc_row,       # (H,) workspace
        floating* db_acc,       # (4H,) workspace: the bias gradient, summed during the steps
        const floating* w_hh_packed,    # W_hh in panels (_small_gemm.h), or NULL
        const floating* w_hr_packed) noexcept nogil:  # W_hr in panels, or NULL
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]
    cdef Py_ssize_t s, t, b, r, j, off
    cdef floating* dhp
    # db_ih and db_hh both equal the column sums of dA: summed once, during the steps.
    cdef floating* acc = db_acc if (db_ih != NULL or db_hh != NULL) else NULL
    if acc != NULL:
        for j in range(G):
            acc[j] = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        if w_hr == NULL:
            lstm_pointwise_backward(b, H, act + off * G, c_prev + off * H, dc, dh, H,
                                    dout + off * ldd, ldd, <floating*>NULL, tc_row, acc)
        else:
            dhp = dhp_all + off * P
            for r in range(b):
                for j in range(P):
                    dhp[r * P + j] = dh[r * P + j] + dout[(off + r) * ldd + j]
            recurrent_gemm_nn(b, H, P, dhp, P, w_hr, H, w_hr_packed, 0, dhh, H)
            lstm_pointwise_backward(b, H, act + off * G, c_prev + off * H, dc, dhh, H,
                                    <floating*>NULL, 0, hbuf_all + off * H, tc_row, acc)
        recurrent_gemm_nn(b, P, G, act + off * G, G, w_hh, P, w_hh_packed, 0, dh, P)
    input_side_backward(act, G, N, x, ldx, I, w_ih, dx, lddx, add_dx, dw_ih, <floating*>NULL)
    gemm(True, False, G, P, N, 1, act, G, h_prev, P, 0, dw_hh, P)
    if acc != NULL:
        add_bias_grads(acc, 1, G, db_ih, db_hh)
    if w_hr != NULL:
        gemm(True, False, P, H, N, 1, dhp_all, P, hbuf_all, H, 0, dw_hr, H)


cdef inline floating* ptr_or_null(floating[:, ::1] a) noexcept:
    return &a[0, 0] if a.shape[0] > 0 else NULL


cdef inline floating* ptr1_or_null(floating[::1] a) noexcept:
    return &a[0] if a.shape[0] > 0 else NULL


def lstm_forward(LayerForward job not None):
    """Run one LSTM layer in one direction over a packed sequence (rnnc/_engine/runners/kernel.py).

    Reads x, batch_sizes, offsets, reverse, w_ih, w_hh, b_ih, b_hh, w_hr, h, c, out, col0, xg,
    hbuf, chunk_steps, h_prev, c_prev, w_hh_packed, w_hr_packed, w_ih_packed and ih_per_panel
    (rnnc/_kernels/_layer_job.pyx). No b_ih/b_hh means no bias; no w_hr no projection. h, c
    and the columns [col0, col0 + P) of out are written. h_prev/c_prev (training) receive the
    states before each step, and xg (then (N, 4H), chunk_steps = T) the gate activations.
    A w_hh_packed selects the small-batch recurrent kernel (and a w_hr_packed, W_hr^T in
    panels, the same for the projection; a w_ih_packed, W_ih^T in panels, for the input
    projection).
    """
    check_chunk_steps(job, "lstm_forward")
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
    cdef const floating[:, ::1] w_hr = job.w_hr
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] c = job.c
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] xg = job.xg
    cdef floating[:, ::1] hbuf = job.hbuf
    cdef floating[:, ::1] h_prev = job.h_prev
    cdef floating[:, ::1] c_prev = job.c_prev
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_hr_packed = job.w_hr_packed
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef bint reverse = job.reverse, ih_per_panel = job.ih_per_panel
    cdef Py_ssize_t col0 = job.col0, chunk_steps = job.chunk_steps
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = c.shape[1], P = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return 0
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    cdef const floating* wr = &w_hr[0, 0] if w_hr.shape[0] > 0 else NULL
    cdef floating* hb = ptr_or_null(hbuf)
    cdef floating* hp = ptr_or_null(h_prev)
    cdef floating* cp = ptr_or_null(c_prev)
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wrp = &w_hr_packed[0, 0, 0] if w_hr_packed.shape[0] > 0 else NULL
    if ih_per_panel:
        check_one_panel(w_ih_packed, x.shape[1], "lstm_forward")
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                      reverse, &w_ih[0, 0], &w_hh[0, 0], bi, bh, wr, H, P,
                      &h[0, 0], &c[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], hb,
                      chunk_steps, hp, cp, wp, wrp, wip, ih_per_panel)
    return 0


def lstm_fused_forward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                       const Py_ssize_t[::1] offsets, bint reverse,
                       const floating[:, :, ::1] w_packed,
                       floating[:, ::1] h, floating[:, ::1] c,
                       floating[:, ::1] out, Py_ssize_t col0,
                       floating[:, ::1] xh, floating[:, ::1] gates):
    """One LSTM layer and direction, inference without projection, with one product per step
    (fused_sequence, rnnc/_kernels/_fused.pxd). w_packed: [W_ih | W_hh | b_ih + b_hh]
    (4H, I + H + 1) in the small-batch kernel's panels (zero bias column without bias);
    xh (B, I + H + 1) and gates (B, 4H) are workspace. The caller has checked that the
    small-batch kernel runs on this CPU."""
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = c.shape[1], B = h.shape[0]
    if T == 0 or x.shape[0] == 0 or B == 0:
        return
    with nogil:
        fused_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                       reverse, &w_packed[0, 0, 0], H, B, FUSED_LSTM, &h[0, 0], &c[0, 0],
                       &out[0, col0], out.shape[1], &xh[0, 0], &gates[0, 0])


def pack_fused_into(const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                    const floating[::1] b_ih, const floating[::1] b_hh,
                    floating[:, :, ::1] out):
    """out = [W_ih | W_hh | b_ih + b_hh] (4H, I + H + 1) in the small-batch kernel's panels
    (pack_fused): the weights of lstm_fused_forward and lstm_fused_train_forward. Zero-size
    b_ih / b_hh: no bias (a zero column). The caller checked the shapes."""
    cdef Py_ssize_t G = w_ih.shape[0], I = w_ih.shape[1], H = w_hh.shape[1]
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    if G == 0:
        return
    with nogil:
        pack_fused(G, I, H, &w_ih[0, 0], &w_hh[0, 0], bi, bh, &out[0, 0, 0])


def lstm_cell_forward(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                      const floating[:, ::1] w_hh, const floating[::1] b_ih,
                      const floating[::1] b_hh, floating[:, ::1] h, floating[:, ::1] c,
                      floating[:, ::1] gates):
    """One LSTM step (the cell, inference): h and c (B, H) are updated in place (the caller
    passes copies); gates (B, 4H) is workspace; zero-size b_ih/b_hh mean no bias. Fewer
    arguments than lstm_forward with T = 1, and no sequence to walk: a cell's call is short, so
    converting each array argument is a noticeable part of it
    (benchmarks/results/amd-epyc/tuning.md)."""
    cdef Py_ssize_t B = h.shape[0], H = c.shape[1], I = x.shape[1], G = 4 * H, r, j
    cdef floating beta = 0
    if B == 0:
        return
    with nogil:
        if b_ih.shape[0] > 0:
            for r in range(B):
                for j in range(G):
                    gates[r, j] = b_ih[j] + b_hh[j]
            beta = 1
        gemm(False, True, B, G, I, 1, &x[0, 0], I, &w_ih[0, 0], I, beta, &gates[0, 0], G)
        gemm(False, True, B, G, H, 1, &h[0, 0], H, &w_hh[0, 0], H, 1, &gates[0, 0], G)
        lstm_pointwise(B, H, &gates[0, 0], &c[0, 0], &h[0, 0], H, <floating*>NULL, 0)


def lstm_fused_train_forward(floating[:, ::1] xh, const Py_ssize_t[::1] batch_sizes,
                             const Py_ssize_t[::1] offsets, bint reverse,
                             const floating[:, :, ::1] w_packed,
                             floating[:, ::1] h, floating[:, ::1] c,
                             floating[:, ::1] out, Py_ssize_t col0,
                             floating[:, ::1] act, floating[:, ::1] c_prev):
    """Training forward of one LSTM layer and direction without projection, one product per
    step (lstm_fused_train_sequence). xh (N, I + H + 1) holds the packed input in its first I
    columns and ones in its last on entry; act (N, 4H) and c_prev (N, H) are written (kept for
    lstm_fused_backward), and h, c and out as in lstm_forward."""
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = c.shape[1], I = xh.shape[1] - H - 1
    if T == 0 or xh.shape[0] == 0 or h.shape[0] == 0:
        return
    with nogil:
        lstm_fused_train_sequence(&xh[0, 0], &batch_sizes[0], &offsets[0], T, reverse,
                                  &w_packed[0, 0, 0], I, H, &h[0, 0], &c[0, 0],
                                  &out[0, col0], out.shape[1], &act[0, 0], &c_prev[0, 0])


def lstm_fused_backward(LayerBackward job not None):
    """BPTT after lstm_fused_train_forward: as lstm_backward, with xh in place of x and
    h_prev and no projection. Reads xh, batch_sizes, offsets, reverse, w_ih, w_hh, act,
    c_prev, dout, col0, dh, dc, dx, add_dx, dw_cat, dw_ih, dw_hh, db_ih, db_hh, tc_row,
    w_hh_packed and w_ih_packed (rnnc/_kernels/_layer_job.pyx); dw_cat (4H, I + H + 1) is
    workspace; w_ih_packed: W_ih^T in panels for the input gradient on the small-batch
    kernel, or none (BLAS)."""
    if is_double(job.xh):
        fused_backward(job, <double>0)
    else:
        fused_backward(job, <float>0)


cdef int fused_backward(LayerBackward job, floating kind) except -1:
    cdef const floating[:, ::1] xh = job.xh
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef floating[:, ::1] act = job.act
    cdef const floating[:, ::1] c_prev = job.c_prev
    cdef const floating[:, ::1] dout = job.dout
    cdef floating[:, ::1] dh = job.dh
    cdef floating[:, ::1] dc = job.dc
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_cat = job.dw_cat
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef floating[::1] tc_row = job.tc_row
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef bint reverse = job.reverse, add_dx = job.add_dx
    cdef Py_ssize_t col0 = job.col0
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dc.shape[1], I = xh.shape[1] - H - 1
    if T == 0 or xh.shape[0] == 0:
        return 0
    cdef floating* dbi = ptr1_or_null(db_ih)
    cdef floating* dbh = ptr1_or_null(db_hh)
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_fused_sequence_backward(&xh[0, 0], &batch_sizes[0], &offsets[0], T, reverse,
                                     &w_ih[0, 0], &w_hh[0, 0], I, H, &act[0, 0],
                                     &c_prev[0, 0], &dout[0, col0], dout.shape[1], &dh[0, 0],
                                     &dc[0, 0], &dx[0, 0], dx.shape[1], add_dx, &dw_cat[0, 0],
                                     &dw_ih[0, 0], &dw_hh[0, 0], dbi, dbh, &tc_row[0], wp,
                                     wip)
    return 0


def lstm_fused_backward_steps_py(const Py_ssize_t[::1] batch_sizes,
                                 const Py_ssize_t[::1] offsets, bint reverse,
                                 const floating[:, ::1] w_hh, floating[:, ::1] act,
                                 const floating[:, ::1] c_prev, const floating[:, ::1] dout,
                                 Py_ssize_t col0, floating[:, ::1] dh, floating[:, ::1] dc,
                                 floating[::1] tc_row, const floating[:, :, ::1] w_hh_packed):
    """The time loop of lstm_fused_backward alone (lstm_fused_backward_steps) -- on one part's
    rows of a layer split by batch rows: act, c_prev and dout start at the part's first row
    and batch_sizes are the part's, dh and dc its own (rows, H) copies."""
    cdef Py_ssize_t T = batch_sizes.shape[0], H = dc.shape[1]
    if T == 0 or dc.shape[0] == 0:
        return
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_fused_backward_steps(&batch_sizes[0], &offsets[0], T, reverse, &w_hh[0, 0], H,
                                  &act[0, 0], &c_prev[0, 0], &dout[0, col0], dout.shape[1],
                                  &dh[0, 0], &dc[0, 0], &tc_row[0], wp)


def lstm_fused_backward_weights_py(LayerBackward job not None, Py_ssize_t r0, Py_ssize_t r1,
                                   Py_ssize_t g0, Py_ssize_t g1):
    """The GEMMs that end lstm_fused_backward (lstm_fused_backward_weights), after
    lstm_fused_backward_steps_py has turned every part's rows of act into dA: rows [r0, r1)
    of dx and gate rows [g0, g1) of the weight and bias gradients. Reads xh, w_ih, act, dx,
    add_dx, dw_cat, dw_ih, dw_hh, db_ih, db_hh and w_ih_packed, as lstm_fused_backward."""
    if is_double(job.xh):
        fused_backward_weights(job, r0, r1, g0, g1, <double>0)
    else:
        fused_backward_weights(job, r0, r1, g0, g1, <float>0)


cdef int fused_backward_weights(LayerBackward job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t g0,
                                Py_ssize_t g1, floating kind) except -1:
    cdef const floating[:, ::1] xh = job.xh
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] act = job.act
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_cat = job.dw_cat
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef bint add_dx = job.add_dx
    cdef Py_ssize_t N = xh.shape[0], G = act.shape[1]
    cdef Py_ssize_t H = G // 4, I = w_ih.shape[1]
    if N == 0:
        return 0
    cdef floating* dbi = ptr1_or_null(db_ih)
    cdef floating* dbh = ptr1_or_null(db_hh)
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_fused_backward_weights(&xh[0, 0], N, &w_ih[0, 0], I, H, &act[0, 0], &dx[0, 0],
                                    dx.shape[1], add_dx, &dw_cat[0, 0], &dw_ih[0, 0],
                                    &dw_hh[0, 0], dbi, dbh, r0, r1, g0, g1, wip)
    return 0


def lstm_backward(LayerBackward job not None):
    """BPTT through one LSTM layer and direction after a training forward (the runner:
    rnnc/_engine/runners/kernel.py).

    Reads x, batch_sizes, offsets, reverse, w_ih, w_hh, w_hr, act, h_prev, c_prev, dout,
    col0, dh, dc, dx, add_dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dhh, hbuf_all, dhp_all,
    tc_row, db_acc, w_hh_packed and w_hr_packed (rnnc/_kernels/_layer_job.pyx).
    act (N, 4H) holds the kept gate activations and is overwritten with dA. dh/dc hold the
    gradients of the final states and receive those of the initial states. Weight gradients are
    written (db_* added to); dx is written, or added to when add_dx. No db_*/dw_hr means
    no bias / no projection. tc_row (H,) and db_acc (4H,) are workspace, and with a
    projection dhh, hbuf_all and dhp_all.
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
    cdef const floating[:, ::1] w_hr = job.w_hr
    cdef floating[:, ::1] act = job.act
    cdef const floating[:, ::1] h_prev = job.h_prev
    cdef const floating[:, ::1] c_prev = job.c_prev
    cdef const floating[:, ::1] dout = job.dout
    cdef floating[:, ::1] dh = job.dh
    cdef floating[:, ::1] dc = job.dc
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef floating[:, ::1] dw_hr = job.dw_hr
    cdef floating[:, ::1] dhh = job.dhh
    cdef floating[:, ::1] hbuf_all = job.hbuf_all
    cdef floating[:, ::1] dhp_all = job.dhp_all
    cdef floating[::1] tc_row = job.tc_row
    cdef floating[::1] db_acc = job.db_acc
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_hr_packed = job.w_hr_packed
    cdef bint reverse = job.reverse, add_dx = job.add_dx
    cdef Py_ssize_t col0 = job.col0
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dc.shape[1], P = dh.shape[1]
    if T == 0 or x.shape[0] == 0 or dh.shape[0] == 0:
        return 0
    cdef const floating* wr = &w_hr[0, 0] if w_hr.shape[0] > 0 else NULL
    cdef floating* dbi = ptr1_or_null(db_ih)
    cdef floating* dbh = ptr1_or_null(db_hh)
    cdef floating* dwr = ptr_or_null(dw_hr)
    cdef floating* dhh_p = ptr_or_null(dhh)
    cdef floating* hb = ptr_or_null(hbuf_all)
    cdef floating* dhp = ptr_or_null(dhp_all)
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wrp = &w_hr_packed[0, 0, 0] if w_hr_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_sequence_backward(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0],
                               T, reverse, &w_ih[0, 0], &w_hh[0, 0], wr, H, P,
                               &act[0, 0], &h_prev[0, 0], &c_prev[0, 0],
                               &dout[0, col0], dout.shape[1], &dh[0, 0], &dc[0, 0],
                               &dx[0, 0], dx.shape[1], add_dx, &dw_ih[0, 0], &dw_hh[0, 0],
                               dbi, dbh, dwr, dhh_p, hb, dhp, &tc_row[0], &db_acc[0], wp, wrp)
    return 0


include "_configure.pxi"
