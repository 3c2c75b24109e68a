# Pointwise gate math of one time step, for a block of `b` batch rows.
#
# The recurrent product has already been added into the gate pre-activations by the caller
# (one GEMM for all gates). These functions apply the nonlinearities and the state update in a
# single pass over the gates, writing the new state and the layer output. Gate order and
# formulas are PyTorch's. Row strides are in elements.
from cython cimport floating
from rnnc._activations cimport sigmoid, tanh_, relu


cdef inline void rnn_pointwise(Py_ssize_t b, Py_ssize_t H, bint use_relu,
                               const floating* pre,   # (b, H) pre-activation, stride H
                               floating* h,           # (b, H) state out, stride H
                               floating* out, Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating v
    for r in range(b):
        for j in range(H):
            v = pre[r * H + j]
            v = relu(v) if use_relu else tanh_(v)
            h[r * H + j] = v
            out[r * ldo + j] = v


cdef inline void lstm_pointwise(Py_ssize_t b, Py_ssize_t H,
                                const floating* gates,  # (b, 4H) pre-activations i, f, g, o
                                floating* c,            # (b, H) cell state, updated in place
                                floating* hdst, Py_ssize_t ldh,  # (b, H) o * tanh(c')
                                floating* out, Py_ssize_t ldo   # (b, H) or NULL
                                ) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating* g
    cdef floating i_, f_, g_, o_, cn, hv
    for r in range(b):
        g = gates + r * 4 * H
        for j in range(H):
            i_ = sigmoid(g[j])
            f_ = sigmoid(g[H + j])
            g_ = tanh_(g[2 * H + j])
            o_ = sigmoid(g[3 * H + j])
            cn = f_ * c[r * H + j] + i_ * g_
            c[r * H + j] = cn
            hv = o_ * tanh_(cn)
            hdst[r * ldh + j] = hv
            if out != NULL:
                out[r * ldo + j] = hv


cdef inline void gru_pointwise_reset_after(
        Py_ssize_t b, Py_ssize_t H,
        const floating* xg,    # (b, 3H) input part r, z, n, with b_ih and b_hr, b_hz folded in
        const floating* hg,    # (b, 3H) recurrent part h @ W_hh^T, no bias
        const floating* b_hn,  # (H,) or NULL
        floating* h,           # (b, H) state, updated in place
        floating* out, Py_ssize_t ldo) noexcept nogil:
    # PyTorch's form: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    cdef Py_ssize_t r, j
    cdef floating r_, z_, n_, hn
    for r in range(b):
        for j in range(H):
            r_ = sigmoid(xg[r * 3 * H + j] + hg[r * 3 * H + j])
            z_ = sigmoid(xg[r * 3 * H + H + j] + hg[r * 3 * H + H + j])
            hn = hg[r * 3 * H + 2 * H + j]
            if b_hn != NULL:
                hn = hn + b_hn[j]
            n_ = tanh_(xg[r * 3 * H + 2 * H + j] + r_ * hn)
            hn = (1 - z_) * n_ + z_ * h[r * H + j]
            h[r * H + j] = hn
            out[r * ldo + j] = hn


cdef inline void gru_reset_gate_before(
        Py_ssize_t b, Py_ssize_t H,
        const floating* xg,   # (b, 3H) input part, all biases folded in
        floating* hg,         # (b, 3H) in: h @ W_hr,hz^T in columns [0, 2H); out: r, z there
        const floating* h,    # (b, H) current state
        floating* rh) noexcept nogil:  # (b, H) out: r * h, the operand of the W_hn product
    cdef Py_ssize_t r, j
    cdef floating r_
    for r in range(b):
        for j in range(H):
            r_ = sigmoid(xg[r * 3 * H + j] + hg[r * 3 * H + j])
            hg[r * 3 * H + H + j] = sigmoid(xg[r * 3 * H + H + j] + hg[r * 3 * H + H + j])
            hg[r * 3 * H + j] = r_
            rh[r * H + j] = r_ * h[r * H + j]


cdef inline void gru_update_before(
        Py_ssize_t b, Py_ssize_t H,
        const floating* xg,   # (b, 3H) input part, all biases folded in
        const floating* hg,   # (b, 3H) r, z in [0, 2H); W_hn (r * h) in [2H, 3H)
        floating* h,          # (b, H) state, updated in place
        floating* out, Py_ssize_t ldo) noexcept nogil:
    # Original form: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    cdef Py_ssize_t r, j
    cdef floating z_, n_, hn
    for r in range(b):
        for j in range(H):
            z_ = hg[r * 3 * H + H + j]
            n_ = tanh_(xg[r * 3 * H + 2 * H + j] + hg[r * 3 * H + 2 * H + j])
            hn = (1 - z_) * n_ + z_ * h[r * H + j]
            h[r * H + j] = hn
            out[r * ldo + j] = hn
