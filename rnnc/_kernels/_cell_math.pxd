# Pointwise gate math of one time step, for a block of `b` batch rows.
#
# The recurrent product has already been added into the gate pre-activations by the caller
# (one GEMM for all gates). These functions apply the nonlinearities and the state update in a
# single pass over the gates, writing the new state and the layer output. Gate order and
# formulas are PyTorch's. Row strides are in elements.
from cython cimport floating
from rnnc._kernels._activations cimport (relu, rnnc_gru_row_f32, rnnc_lstm_row_f32, sigmoid_inplace,
                               tanh_inplace)


cdef inline void rnn_pointwise(Py_ssize_t b, Py_ssize_t H, bint use_relu,
                               floating* pre,         # (b, H) in: pre-activation; out: a<t>
                               floating* h,           # (b, H) state out, stride H
                               floating* out, Py_ssize_t ldo) noexcept nogil:
    rnn_pointwise_ld(b, H, use_relu, pre, h, H, out, ldo)


cdef inline void rnn_pointwise_ld(Py_ssize_t b, Py_ssize_t H, bint use_relu,
                                  floating* pre,         # (b, H) in: pre-activation; out: a<t>
                                  floating* h, Py_ssize_t ldh,  # (b, H) state out
                                  floating* out, Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating* p
    for r in range(b):
        p = pre + r * H
        if use_relu:
            for j in range(H):
                p[j] = relu(p[j])
        else:
            tanh_inplace(p, H)
        for j in range(H):
            h[r * ldh + j] = p[j]
            out[r * ldo + j] = p[j]


cdef inline void lstm_pointwise(Py_ssize_t b, Py_ssize_t H,
                                floating* gates,  # (b, 4H) in: pre-activations i, f, g, o;
                                                  # out: the activations
                                floating* c,            # (b, H) cell state, updated in place
                                floating* hdst, Py_ssize_t ldh,  # (b, H) out: o * tanh(c')
                                floating* out, Py_ssize_t ldo   # (b, H) or NULL
                                ) noexcept nogil:
    # Whole-row passes, so that the exp-based activations run vectorised.
    cdef Py_ssize_t r, j
    cdef floating* g
    cdef floating* hr
    if floating is float:       # one fused vectorised pass per row (rnnc/_kernels/_simd_math.h)
        for r in range(b):
            rnnc_lstm_row_f32(H, gates + r * 4 * H, c + r * H, hdst + r * ldh,
                              out + r * ldo if out != NULL else hdst + r * ldh)
        return
    for r in range(b):
        g = gates + r * 4 * H
        hr = hdst + r * ldh
        sigmoid_inplace(g, 2 * H)          # i, f
        tanh_inplace(g + 2 * H, H)         # g
        sigmoid_inplace(g + 3 * H, H)      # o
        for j in range(H):
            c[r * H + j] = g[H + j] * c[r * H + j] + g[j] * g[2 * H + j]
            hr[j] = c[r * H + j]
        tanh_inplace(hr, H)
        for j in range(H):
            hr[j] = g[3 * H + j] * hr[j]
        if out != NULL:
            for j in range(H):
                out[r * ldo + j] = hr[j]


cdef inline void gru_pointwise_reset_after(
        Py_ssize_t b, Py_ssize_t H,
        floating* xg,          # (b, 3H) in: input part r, z, n, with b_ih and b_hr, b_hz
                               # folded in; out: the activations r, z, n
        const floating* hg,    # (b, 3H) recurrent part h @ W_hh^T, no bias
        const floating* b_hn,  # (H,) or NULL
        floating* h,           # (b, H) state, updated in place
        floating* out, Py_ssize_t ldo,
        floating* hn_keep) noexcept nogil:  # (b, H) W_hn h + b_hn for backward, or NULL
    gru_pointwise_reset_after_ld(b, H, xg, hg, b_hn, h, H, h, H, out, ldo, hn_keep)


cdef inline void gru_pointwise_reset_after_ld(
        Py_ssize_t b, Py_ssize_t H,
        floating* xg, const floating* hg, const floating* b_hn,   # as above
        const floating* h_old, Py_ssize_t ldh_old,  # (b, H) state before the step
        floating* h_new, Py_ssize_t ldh_new,        # (b, H) out: state after (may be h_old)
        floating* out, Py_ssize_t ldo,
        floating* hn_keep) noexcept nogil:
    # PyTorch's form: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    cdef Py_ssize_t r, j
    cdef floating* x
    cdef const floating* hr
    cdef floating hn, z_
    if floating is float:       # one fused vectorised pass per row (rnnc/_kernels/_simd_math.h)
        for r in range(b):
            rnnc_gru_row_f32(H, xg + r * 3 * H, hg + r * 3 * H, b_hn, h_old + r * ldh_old,
                             h_new + r * ldh_new, out + r * ldo,
                             hn_keep + r * H if hn_keep != NULL else <float*>NULL)
        return
    for r in range(b):
        x = xg + r * 3 * H
        hr = hg + r * 3 * H
        for j in range(2 * H):
            x[j] = x[j] + hr[j]
        sigmoid_inplace(x, 2 * H)          # r, z
        for j in range(H):
            hn = hr[2 * H + j]
            if b_hn != NULL:
                hn = hn + b_hn[j]
            if hn_keep != NULL:
                hn_keep[r * H + j] = hn
            x[2 * H + j] = x[2 * H + j] + x[j] * hn
        tanh_inplace(x + 2 * H, H)         # n
        for j in range(H):
            z_ = x[H + j]
            hn = (1 - z_) * x[2 * H + j] + z_ * h_old[r * ldh_old + j]
            h_new[r * ldh_new + j] = hn
            out[r * ldo + j] = hn


cdef inline void gru_reset_gate_before(
        Py_ssize_t b, Py_ssize_t H,
        floating* xg,         # (b, 3H) in: input part, all biases folded in; out: r, z in [0, 2H)
        const floating* hg,   # (b, 3H) h @ W_hr,hz^T in columns [0, 2H)
        const floating* h,    # (b, H) current state
        floating* rh) noexcept nogil:  # (b, H) out: r * h, the operand of the W_hn product
    cdef Py_ssize_t r, j
    cdef floating* x
    for r in range(b):
        x = xg + r * 3 * H
        for j in range(2 * H):
            x[j] = x[j] + hg[r * 3 * H + j]
        sigmoid_inplace(x, 2 * H)
        for j in range(H):
            rh[r * H + j] = x[j] * h[r * H + j]


cdef inline void gru_update_before(
        Py_ssize_t b, Py_ssize_t H,
        floating* xg,         # (b, 3H) in: r, z, input part of n; out: r, z, n
        const floating* hg,   # (b, 3H) W_hn (r * h) in [2H, 3H)
        floating* h,          # (b, H) state, updated in place
        floating* out, Py_ssize_t ldo) noexcept nogil:
    # Original form: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    cdef Py_ssize_t r, j
    cdef floating* x
    cdef floating z_, hn
    for r in range(b):
        x = xg + r * 3 * H
        for j in range(H):
            x[2 * H + j] = x[2 * H + j] + hg[r * 3 * H + 2 * H + j]
        tanh_inplace(x + 2 * H, H)
        for j in range(H):
            z_ = x[H + j]
            hn = (1 - z_) * x[2 * H + j] + z_ * h[r * H + j]
            h[r * H + j] = hn
            out[r * ldo + j] = hn


# ---------------------------------------------------------------------------------------------
# Backward (BPTT) of one step. The forward kept the gate activations (overwritten here, in
# place, by the gradients w.r.t. the gate pre-activations, dA) and the previous states.
# `dh` holds the gradient reaching this step's state from the future (from the next step, or
# grad_h_n); `dout` the gradient of this step's output. On return `dh` holds the part of the
# gradient w.r.t. the previous state that does not go through a recurrent GEMM (the caller adds
# the GEMM part), or is left for the caller to overwrite. `db`, when not NULL, accumulates the
# column sums of dA (the bias gradients) while the values are at hand. float32 runs one fused,
# vectorised pass per row (rnnc/_kernels/_simd_math.h), float64 the loops below (same formulas).
# ---------------------------------------------------------------------------------------------

cdef extern from "_simd_math.h" nogil:
    # The float32 backward rows (vectorised, runtime-dispatched); see rnnc/_kernels/_simd_math.h.
    void rnnc_lstm_row_backward_f32(Py_ssize_t H, float* a, const float* c_prev, float* dc,
                                    const float* dhh, const float* dout, float* hbuf,
                                    float* db)
    void rnnc_gru_row_backward_f32(Py_ssize_t H, float* a, float* hn, const float* h_prev,
                                   float* dh, const float* dout, float* dgh, float* db)
    void rnnc_rnn_row_backward_f32(Py_ssize_t H, int relu, float* a, const float* dh,
                                   const float* dout, float* db)


cdef inline void rnn_pointwise_backward(
        Py_ssize_t b, Py_ssize_t H, bint use_relu,
        floating* act,                         # (b, H) in: a<t>; out: dA
        const floating* dh,                    # (b, H) from the future
        const floating* dout, Py_ssize_t ldd,
        floating* db) noexcept nogil:          # (H,) += column sums of dA, or NULL
    cdef Py_ssize_t r, j
    cdef floating a, g
    if floating is float:
        for r in range(b):
            rnnc_rnn_row_backward_f32(H, use_relu, act + r * H, dh + r * H, dout + r * ldd, db)
        return
    for r in range(b):
        for j in range(H):
            a = act[r * H + j]
            g = dh[r * H + j] + dout[r * ldd + j]
            if use_relu:
                act[r * H + j] = g if a > 0 else 0
            else:
                act[r * H + j] = g * (1 - a * a)
        if db != NULL:
            for j in range(H):
                db[j] += act[r * H + j]


cdef inline void lstm_pointwise_backward(
        Py_ssize_t b, Py_ssize_t H,
        floating* act,            # (b, 4H) in: i, f, g, o; out: dA
        const floating* c_prev,   # (b, H) c<t-1>
        floating* dc,             # (b, H) in: dL/dc<t> from the future; out: dL/dc<t-1>
        const floating* dhh,      # (b, H) dL/d(o * tanh c<t>), stride ldh
        Py_ssize_t ldh,
        const floating* dout, Py_ssize_t ldd,  # (b, H) added to dhh, or NULL (projection)
        floating* hbuf,           # (b, H) out: o * tanh(c<t>) (projection), or NULL
        floating* tc_row,         # (H,) workspace: tanh(c<t>) of one row (float64)
        floating* db) noexcept nogil:  # (4H,) += column sums of dA, or NULL
    cdef Py_ssize_t r, j
    cdef floating* a
    cdef floating i_, f_, g_, o_, cp, tc, dht, dct
    if floating is float:       # one fused vectorised pass per row (rnnc/_kernels/_simd_math.h)
        for r in range(b):
            rnnc_lstm_row_backward_f32(H, act + r * 4 * H, c_prev + r * H, dc + r * H,
                                       dhh + r * ldh,
                                       dout + r * ldd if dout != NULL else <float*>NULL,
                                       hbuf + r * H if hbuf != NULL else <float*>NULL, db)
        return
    for r in range(b):
        a = act + r * 4 * H
        # c<t> is recomputed from the kept gates; its tanh runs as one pass.
        for j in range(H):
            tc_row[j] = a[H + j] * c_prev[r * H + j] + a[j] * a[2 * H + j]
        tanh_inplace(tc_row, H)
        for j in range(H):
            i_ = a[j]
            f_ = a[H + j]
            g_ = a[2 * H + j]
            o_ = a[3 * H + j]
            cp = c_prev[r * H + j]
            tc = tc_row[j]
            if hbuf != NULL:
                hbuf[r * H + j] = o_ * tc
            dht = dhh[r * ldh + j]
            if dout != NULL:
                dht = dht + dout[r * ldd + j]
            dct = dc[r * H + j] + dht * o_ * (1 - tc * tc)
            dc[r * H + j] = dct * f_
            a[j] = dct * g_ * i_ * (1 - i_)
            a[H + j] = dct * cp * f_ * (1 - f_)
            a[2 * H + j] = dct * i_ * (1 - g_ * g_)
            a[3 * H + j] = dht * tc * o_ * (1 - o_)
        if db != NULL:
            for j in range(4 * H):
                db[j] += a[j]


cdef inline void gru_pointwise_backward_after(
        Py_ssize_t b, Py_ssize_t H,
        floating* act,            # (b, 3H) in: r, z, n; out: dA w.r.t. x W_ih^T + b_ih
        floating* hn,             # (b, H) in: W_hn h + b_hn; out: its gradient r * dA_n
        const floating* h_prev,   # (b, H)
        floating* dh,             # (b, H) in: from the future; out: z * (dh + dout)
        const floating* dout, Py_ssize_t ldd,
        floating* dgh,            # (b, 3H) out: dA w.r.t. h W_hh^T + b_hh
        floating* db) noexcept nogil:  # (4H,) += column sums of [dA, r * dA_n], or NULL
    cdef Py_ssize_t r, j
    cdef floating* a
    cdef floating r_, z_, n_, g, dan, dar, daz
    if floating is float:       # one fused vectorised pass per row (rnnc/_kernels/_simd_math.h)
        for r in range(b):
            rnnc_gru_row_backward_f32(H, act + r * 3 * H, hn + r * H, h_prev + r * H,
                                      dh + r * H, dout + r * ldd, dgh + r * 3 * H, db)
        return
    for r in range(b):
        a = act + r * 3 * H
        for j in range(H):
            r_ = a[j]
            z_ = a[H + j]
            n_ = a[2 * H + j]
            g = dh[r * H + j] + dout[r * ldd + j]
            # h' = (1 - z) n + z h;  n = tanh(a_n),  a_n = x_n + r * hn
            dan = g * (1 - z_) * (1 - n_ * n_)
            daz = g * (h_prev[r * H + j] - n_) * z_ * (1 - z_)
            dar = dan * hn[r * H + j] * r_ * (1 - r_)
            dh[r * H + j] = g * z_
            a[j] = dar
            a[H + j] = daz
            a[2 * H + j] = dan
            hn[r * H + j] = dan * r_
            dgh[r * 3 * H + j] = dar
            dgh[r * 3 * H + H + j] = daz
            dgh[r * 3 * H + 2 * H + j] = dan * r_
        if db != NULL:
            for j in range(3 * H):
                db[j] += a[j]
            for j in range(H):
                db[3 * H + j] += hn[r * H + j]


cdef inline void gru_pointwise_backward_before_n(
        Py_ssize_t b, Py_ssize_t H,
        floating* act,            # (b, 3H) in: r, z, n; out: z and n slots hold dA_z, dA_n
        const floating* h_prev,   # (b, H)
        floating* dh,             # (b, H) in: from the future; out: z * (dh + dout)
        const floating* dout, Py_ssize_t ldd,
        floating* rh) noexcept nogil:   # (b, H) out: r * h_prev (operand of dW_hn)
    cdef Py_ssize_t r, j
    cdef floating* a
    cdef floating z_, n_, g
    for r in range(b):
        a = act + r * 3 * H
        for j in range(H):
            z_ = a[H + j]
            n_ = a[2 * H + j]
            g = dh[r * H + j] + dout[r * ldd + j]
            rh[r * H + j] = a[j] * h_prev[r * H + j]
            dh[r * H + j] = g * z_
            a[H + j] = g * (h_prev[r * H + j] - n_) * z_ * (1 - z_)
            a[2 * H + j] = g * (1 - z_) * (1 - n_ * n_)


cdef inline void gru_pointwise_backward_before_r(
        Py_ssize_t b, Py_ssize_t H,
        floating* act,            # (b, 3H) in: r slot holds r; out: dA_r
        const floating* h_prev,   # (b, H)
        const floating* drh,      # (b, H) dL/d(r * h_prev) = dA_n @ W_hn
        floating* dh) noexcept nogil:   # (b, H) += r * drh
    cdef Py_ssize_t r, j
    cdef floating r_
    for r in range(b):
        for j in range(H):
            r_ = act[r * 3 * H + j]
            dh[r * H + j] += drh[r * H + j] * r_
            act[r * 3 * H + j] = drh[r * H + j] * h_prev[r * H + j] * r_ * (1 - r_)
