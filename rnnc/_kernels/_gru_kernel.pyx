"""GRU over a whole packed sequence, one layer and one direction per call: forward and BPTT.

Gate order r, z, n as in PyTorch. Per chunk of steps one GEMM projects the inputs (with b_ih and
the r, z parts of b_hh folded in). Per step:
- reset_after=True (PyTorch): one GEMM h @ W_hh^T for all three gates, one fused pass.
- reset_after=False (original form, ONNX's default): the reset gate multiplies h *before* the
  W_hn product, so a step needs two GEMMs: h @ [W_hr; W_hz]^T, then (r * h) @ W_hn^T.
In training the chunk is the whole sequence and the activations r, z, n stay in the projection
buffer, with the previous states (and W_hn h + b_hn for reset_after). Backward walks the steps
in the opposite order with the same number of GEMMs per step, then computes the weight and input
gradients as GEMMs over all steps. GIL released for the whole sequence, no allocation.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport gemm, recurrent_gemm, recurrent_gemm_nn
from rnnc._kernels._cell_math cimport (gru_pointwise_reset_after, gru_reset_gate_before,
                              gru_update_before, gru_pointwise_backward_after,
                              gru_pointwise_backward_before_n, gru_pointwise_backward_before_r)
from rnnc._kernels._layer_job cimport (LayerBackward, LayerForward, check_chunk_steps,
                                      is_double)
from rnnc._kernels._sequence cimport (add_column_sums, check_one_panel, chunk_bounds,
                             input_side_backward, project_inputs)


cdef void gru_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes,  # (T,) active rows per step, non-increasing
        const Py_ssize_t* offsets,      # (T,) first packed row of each step
        Py_ssize_t T, bint reverse, bint reset_after,
        const floating* w_ih,   # (3H, I)
        const floating* w_hh,   # (3H, H)
        const floating* b_ih,   # (3H,) or NULL
        const floating* b_hh,   # (3H,) or NULL
        Py_ssize_t H,
        floating* h,            # (B, H) state in/out
        floating* out, Py_ssize_t ldo,  # (N, H) this direction's output columns, row stride ldo
        floating* xg,           # (chunk_steps * B, 3H) workspace; (N, 3H) r, z, n in training
        floating* hg,           # (B, 3H) workspace
        floating* rh,           # (B, H) workspace (reset_after=False only)
        Py_ssize_t chunk_steps,
        floating* h_prev,       # (N, H) out: state before each step (training), or NULL
        floating* hn_keep,      # (N, H) out: W_hn h + b_hn (training, reset_after)
        const floating* w_hh_packed,    # W_hh^T in panels, or NULL; [W_hr; W_hz]^T when
                                        # not reset_after
        const floating* w_hn_packed,    # not reset_after: W_hn^T in panels, or NULL
        const floating* w_ih_packed,    # W_ih^T in panels, or NULL
        bint ih_per_panel) noexcept nogil:  # w_ih_packed: one panel (project_inputs)
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, row0
    cdef bint keep = h_prev != NULL
    cdef floating* xs
    # With reset_after the n part of b_hh sits inside r * (W_hn h + b_hn) and cannot be folded.
    cdef Py_ssize_t n_fold = 2 * H if reset_after else G
    cdef const floating* b_hn = b_hh + 2 * H if (reset_after and b_hh != NULL) else NULL
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, w_ih_packed, b_ih, b_hh, G, n_fold, xg, ih_per_panel)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            if keep:
                memcpy(h_prev + offsets[t] * H, h, b * H * sizeof(floating))
            xs = xg + (offsets[t] - row0) * G
            if reset_after:
                recurrent_gemm(b, G, H, h, H, w_hh, H, w_hh_packed, 0, hg, G, s & 1)
                gru_pointwise_reset_after(b, H, xs, hg, b_hn, h, out + offsets[t] * ldo, ldo,
                                          hn_keep + offsets[t] * H if keep else NULL)
            else:
                recurrent_gemm(b, 2 * H, H, h, H, w_hh, H, w_hh_packed, 0, hg, G, s & 1)
                gru_reset_gate_before(b, H, xs, hg, h, rh)
                recurrent_gemm(b, H, H, rh, H, w_hh + 2 * H * H, H, w_hn_packed, 0, hg + 2 * H,
                               G, s & 1)
                gru_update_before(b, H, xs, hg, h, out + offsets[t] * ldo, ldo)


cdef void gru_sequence_backward(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) the layer's packed input
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        bint reset_after,
        const floating* w_ih,   # (3H, I)
        const floating* w_hh,   # (3H, H)
        Py_ssize_t H,
        floating* act,          # (N, 3H) in: r, z, n; out: dA w.r.t. the input projection
        const floating* h_prev,  # (N, H)
        floating* hn,           # (N, H) reset_after: in W_hn h + b_hn, out its gradient;
                                # reset_after=False: out r * h_prev
        const floating* dout, Py_ssize_t ldd,  # (N, H) gradient of this direction's output
        floating* dh,           # (B, H) in: grad of h_n; out: grad of h_0
        floating* dx, Py_ssize_t lddx, bint add_dx,  # (N, I) out (+= when add_dx)
        floating* dw_ih, floating* dw_hh,     # (3H, I), (3H, H) out
        floating* db_ih, floating* db_hh,     # (3H,) out (+=), or NULL
        floating* work,                       # (B, 3H) workspace
        floating* db_acc,                     # (4H,) workspace (reset_after): bias sums
        const floating* w_hh_packed,    # W_hh in panels, or NULL; [W_hr; W_hz] when not
                                        # reset_after
        const floating* w_hn_packed) noexcept nogil:  # not reset_after: W_hn in panels, or NULL
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]
    cdef Py_ssize_t s, t, b, off, j
    # reset_after: the bias gradients [dA_r, dA_z, dA_n, r * dA_n] are summed during the steps.
    cdef floating* acc = db_acc if (reset_after and (db_ih != NULL or db_hh != NULL)) else NULL
    if acc != NULL:
        for j in range(4 * H):
            acc[j] = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        if reset_after:
            gru_pointwise_backward_after(b, H, act + off * G, hn + off * H, h_prev + off * H,
                                         dh, dout + off * ldd, ldd, work, acc)
            recurrent_gemm_nn(b, H, G, work, G, w_hh, H, w_hh_packed, 1, dh, H)
        else:
            gru_pointwise_backward_before_n(b, H, act + off * G, h_prev + off * H, dh,
                                            dout + off * ldd, ldd, hn + off * H)
            # d(r * h_prev) = dA_n @ W_hn
            recurrent_gemm_nn(b, H, H, act + off * G + 2 * H, G, w_hh + 2 * H * H, H,
                              w_hn_packed, 0, work, H)
            gru_pointwise_backward_before_r(b, H, act + off * G, h_prev + off * H, work, dh)
            recurrent_gemm_nn(b, H, 2 * H, act + off * G, G, w_hh, H, w_hh_packed, 1, dh, H)
    input_side_backward(act, G, N, x, ldx, I, w_ih, dx, lddx, add_dx, dw_ih,
                        <floating*>NULL if reset_after else db_ih)
    # dW_hr, dW_hz: their pre-activation gradients equal the input side's.
    gemm(True, False, 2 * H, H, N, 1, act, G, h_prev, H, 0, dw_hh, H)
    if reset_after:
        # dW_hn from the gradient of W_hn h + b_hn kept in hn.
        gemm(True, False, H, H, N, 1, hn, H, h_prev, H, 0, dw_hh + 2 * H * H, H)
        if acc != NULL:
            for j in range(G):
                if db_ih != NULL:
                    db_ih[j] += acc[j]
                if db_hh != NULL:
                    db_hh[j] += acc[j] if j < 2 * H else acc[H + j]
    else:
        gemm(True, False, H, H, N, 1, act + 2 * H, G, hn, H, 0, dw_hh + 2 * H * H, H)
        if db_hh != NULL:
            add_column_sums(act, G, N, G, db_hh)


def gru_forward(LayerForward job not None):
    """Run one GRU layer in one direction over a packed sequence (rnnc/_engine/runners/kernel.py).

    Reads x, batch_sizes, offsets, reverse, reset_after, w_ih, w_hh, b_ih, b_hh, h, out, col0,
    xg, hg, rh, chunk_steps, h_prev, hn_keep, w_hh_packed, w_hn_packed, w_ih_packed and
    ih_per_panel (rnnc/_kernels/_layer_job.pyx). No b_ih/b_hh means no bias. h and the
    columns [col0, col0 + H) of out are written. An h_prev (training) receives the state
    before each step, hn_keep W_hn h + b_hn (reset_after), and xg (then (N, 3H),
    chunk_steps = T) the activations r, z, n. w_hh_packed / w_ih_packed (W^T in the
    small-batch kernel's panels) select that kernel for the recurrent / input product; with
    reset_after=False w_hh_packed holds [W_hr; W_hz]^T and w_hn_packed W_hn^T (the two
    products of a step).
    """
    check_chunk_steps(job, "gru_forward")
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
    cdef floating[:, ::1] hg = job.hg
    cdef floating[:, ::1] rh = job.rh
    cdef floating[:, ::1] h_prev = job.h_prev
    cdef floating[:, ::1] hn_keep = job.hn_keep
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_hn_packed = job.w_hn_packed
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef bint reverse = job.reverse, reset_after = job.reset_after
    cdef bint ih_per_panel = job.ih_per_panel
    cdef Py_ssize_t col0 = job.col0, chunk_steps = job.chunk_steps
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return 0
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    cdef floating* hp = &h_prev[0, 0] if h_prev.shape[0] > 0 else NULL
    cdef floating* hk = &hn_keep[0, 0] if hn_keep.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    if ih_per_panel:
        check_one_panel(w_ih_packed, x.shape[1], "gru_forward")
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    cdef const floating* wnp = &w_hn_packed[0, 0, 0] if w_hn_packed.shape[0] > 0 else NULL
    with nogil:
        gru_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                     reverse, reset_after, &w_ih[0, 0], &w_hh[0, 0], bi, bh, H,
                     &h[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], &hg[0, 0], &rh[0, 0],
                     chunk_steps, hp, hk, wp, wnp, wip, ih_per_panel)
    return 0


def gru_backward(LayerBackward job not None):
    """BPTT through one GRU layer and direction after a training forward.

    Reads x, batch_sizes, offsets, reverse, reset_after, w_ih, w_hh, act, h_prev, hn, dout,
    col0, dh, dx, add_dx, dw_ih, dw_hh, db_ih, db_hh, work, db_acc, w_hh_packed and
    w_hn_packed (rnnc/_kernels/_layer_job.pyx). act (N, 3H) holds the kept activations and is
    overwritten; hn (N, H) holds W_hn h + b_hn (reset_after) or is workspace. dh holds the
    gradient of h_n and receives that of h_0. work (B, 3H) and db_acc (4H,) are workspace.
    w_hh_packed (W_hh in the small-batch kernel's panels; [W_hr; W_hz] when not reset_after)
    and w_hn_packed (W_hn, not reset_after) select that kernel for the recurrent products.
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
    cdef floating[:, ::1] hn = job.hn
    cdef const floating[:, ::1] dout = job.dout
    cdef floating[:, ::1] dh = job.dh
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef floating[:, ::1] work = job.work
    cdef floating[::1] db_acc = job.db_acc
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef const floating[:, :, ::1] w_hn_packed = job.w_hn_packed
    cdef bint reverse = job.reverse, reset_after = job.reset_after, add_dx = job.add_dx
    cdef Py_ssize_t col0 = job.col0
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dh.shape[1]
    if T == 0 or x.shape[0] == 0 or dh.shape[0] == 0:
        return 0
    cdef floating* dbi = &db_ih[0] if db_ih.shape[0] > 0 else NULL
    cdef floating* dbh = &db_hh[0] if db_hh.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wnp = &w_hn_packed[0, 0, 0] if w_hn_packed.shape[0] > 0 else NULL
    with nogil:
        gru_sequence_backward(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0],
                              T, reverse, reset_after, &w_ih[0, 0], &w_hh[0, 0], H,
                              &act[0, 0], &h_prev[0, 0], &hn[0, 0], &dout[0, col0],
                              dout.shape[1], &dh[0, 0], &dx[0, 0], dx.shape[1], add_dx,
                              &dw_ih[0, 0], &dw_hh[0, 0], dbi, dbh, &work[0, 0],
                              &db_acc[0], wp, wnp)
    return 0


include "_configure.pxi"
