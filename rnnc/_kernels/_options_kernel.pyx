"""RNN, GRU and LSTM layers with cell options, one layer and one direction per call: forward
and BPTT over a packed sequence.

The options (rnnc/_cell_options.py) are those of ONNX's operators and Keras' layers: an
activation for the gates (f), the candidate (g) and the LSTM's output (h) from the table below,
a cell clip (pre-activations bounded to [-clip, clip] before their activation; the LSTM's cell
state itself is not clipped, as in ONNX Runtime), LSTM peepholes w_p = [p_i, p_f, p_o] (the
previous cell state joins i and f, the new one o) and coupled input and forget gates
(f = 1 - i). A layer with PyTorch's cells never comes here: the cell kernels
(_rnn_kernel.pyx, _gru_kernel.pyx, _lstm_kernel.pyx) run it, with their vectorised gate math.

The structure is theirs: per chunk of steps one GEMM projects the inputs (all steps at once in
training); per step one GEMM adds the recurrent product and one pass applies the gates, keeping
the raw pre-activations (training). The activations are scalar functions chosen per element by
a code: one loop serves every option. Backward walks the steps in reverse, turning the kept
pre-activations into their gradients in place, then runs the input and weight gradients as
GEMMs over all steps. The GIL is released for the whole sequence; every buffer comes from the
runner (rnnc/_engine/runners/options.py), described by a LayerForward / LayerBackward
(rnnc/_kernels/_layer_job.pyx).
"""
from cython cimport floating
from libc.math cimport exp, expm1, fabs, log1p, tanh
from libc.string cimport memcpy

from rnnc._kernels._blas cimport gemm
from rnnc._kernels._layer_job cimport LayerBackward, LayerForward, check_chunk_steps, is_double
from rnnc._kernels._sequence cimport chunk_bounds, project_inputs


cdef struct Act:
    int code        # rnnc/_cell_options.py, ACTIVATIONS
    double alpha
    double beta


cdef struct Options:
    Act f           # gates
    Act g           # candidate
    Act h           # LSTM: output, of the cell state
    double clip     # 0: none
    bint input_forget


cdef inline double act_value(const Act* a, double v) noexcept nogil:
    cdef double u
    if a.code == 0:
        return tanh(v)
    if a.code == 1:
        return 1 / (1 + exp(-v))
    if a.code == 2:
        return 0 if v < 0 else v            # NaN stays NaN
    if a.code == 3:
        u = a.alpha * v + a.beta
        return 0 if u < 0 else (1 if u > 1 else u)
    if a.code == 4:
        return a.alpha * v + a.beta
    if a.code == 5:
        return a.alpha * v if v < 0 else v
    if a.code == 6:
        return v if v > a.alpha else 0      # NaN -> 0, as ONNX's x > alpha ? x : 0
    if a.code == 7:
        return a.alpha * tanh(a.beta * v)
    if a.code == 8:
        return a.alpha * expm1(v) if v < 0 else v
    if a.code == 9:
        return v / (1 + fabs(v))
    # 10: softplus, log(1 + e^v) without overflow
    return v + log1p(exp(-v)) if v > 0 else log1p(exp(v))


cdef inline double act_grad(const Act* a, double v, double y) noexcept nogil:
    """f'(v), where y = f(v)."""
    cdef double u
    if a.code == 0:
        return 1 - y * y
    if a.code == 1:
        return y * (1 - y)
    if a.code == 2:
        return 1 if v > 0 else 0
    if a.code == 3:
        u = a.alpha * v + a.beta
        return a.alpha if (u > 0 and u < 1) else 0
    if a.code == 4:
        return a.alpha
    if a.code == 5:
        return 1 if v >= 0 else a.alpha     # NaN: alpha, as the reference's np.where
    if a.code == 6:
        return 1 if v > a.alpha else 0
    if a.code == 7:
        u = tanh(a.beta * v)
        return a.alpha * a.beta * (1 - u * u)
    if a.code == 8:
        return 1 if v >= 0 else y + a.alpha     # NaN: NaN
    if a.code == 9:
        u = 1 + fabs(v)
        return 1 / (u * u)
    return 1 / (1 + exp(-v))


cdef inline double clipped(double v, double c) noexcept nogil:
    if c > 0:
        if v > c:
            return c
        if v < -c:
            return -c
    return v


cdef inline double gate(const Act* a, double v, double c) noexcept nogil:
    """The activation of a clipped pre-activation."""
    return act_value(a, clipped(v, c))


cdef inline double gate_grad(const Act* a, double v, double c, double* d) noexcept nogil:
    """The activation of a clipped pre-activation, and in d its derivative by v (0 where
    the clip cuts)."""
    cdef double w = clipped(v, c)
    cdef double y = act_value(a, w)
    # 0 where the clip cuts; a NaN pre-activation keeps its NaN derivative without a clip.
    d[0] = act_grad(a, w, y) if (c <= 0 or fabs(v) <= c) else 0
    return y


cdef Options read_options(const double[::1] spec):
    """spec: [f code, alpha, beta, g code, alpha, beta, h code, alpha, beta, clip,
    input_forget] (rnnc/_engine/runners/options.py)."""
    cdef Options o
    o.f.code, o.f.alpha, o.f.beta = <int>spec[0], spec[1], spec[2]
    o.g.code, o.g.alpha, o.g.beta = <int>spec[3], spec[4], spec[5]
    o.h.code, o.h.alpha, o.h.beta = <int>spec[6], spec[7], spec[8]
    o.clip = spec[9]
    o.input_forget = spec[10] != 0
    return o


cdef inline floating* ptr2(floating[:, ::1] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL


cdef inline const floating* cptr2(const floating[:, ::1] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL


cdef inline const floating* cptr1(const floating[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


# -- forward -------------------------------------------------------------------------------
cdef void rnn_step(const Options* o, Py_ssize_t b, Py_ssize_t H, const floating* h_in,
                   const floating* w_hh, floating* pre, floating* h, floating* out,
                   Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating y
    gemm(False, True, b, H, H, 1, h_in, H, w_hh, H, 1, pre, H)
    for r in range(b):
        for j in range(H):
            y = <floating>gate(&o.f, pre[r * H + j], o.clip)
            h[r * H + j] = y
            out[r * ldo + j] = y


cdef void gru_step(const Options* o, bint reset_after, Py_ssize_t b, Py_ssize_t H,
                   const floating* w_hh,    # (3H, H)
                   const floating* b_hn,    # (H,) or NULL (reset_after; else folded in pre)
                   floating* pre,           # (b, 3H) in: the input part; out: pre-activations
                   floating* h,             # (b, H) state in/out
                   floating* out, Py_ssize_t ldo,
                   floating* work,          # (b, 3H) workspace
                   floating* keep) noexcept nogil:  # (b, H) out: W_hn h + b_hn / r * h, or NULL
    cdef Py_ssize_t G = 3 * H, r, j
    cdef double rv, zv, nv, hn
    if reset_after:
        gemm(False, True, b, G, H, 1, h, H, w_hh, H, 0, work, G)
    else:
        gemm(False, True, b, 2 * H, H, 1, h, H, w_hh, H, 0, work, G)
    for r in range(b):
        for j in range(2 * H):
            pre[r * G + j] += work[r * G + j]
    if not reset_after:
        # a_n = W_in x + b_in + W_hn (r * h) + b_hn: r * h first, then its product.
        for r in range(b):
            for j in range(H):
                rv = gate(&o.f, pre[r * G + j], o.clip)
                work[r * G + 2 * H + j] = <floating>(rv * h[r * H + j])
                if keep != NULL:
                    keep[r * H + j] = work[r * G + 2 * H + j]
        gemm(False, True, b, H, H, 1, work + 2 * H, G, w_hh + 2 * H * H, H, 1, pre + 2 * H, G)
    for r in range(b):
        for j in range(H):
            rv = gate(&o.f, pre[r * G + j], o.clip)
            zv = gate(&o.f, pre[r * G + H + j], o.clip)
            if reset_after:
                hn = work[r * G + 2 * H + j] + (b_hn[j] if b_hn != NULL else 0)
                if keep != NULL:
                    keep[r * H + j] = <floating>hn
                pre[r * G + 2 * H + j] = <floating>(pre[r * G + 2 * H + j] + rv * hn)
            nv = gate(&o.g, pre[r * G + 2 * H + j], o.clip)
            h[r * H + j] = <floating>((1 - zv) * nv + zv * h[r * H + j])
            out[r * ldo + j] = h[r * H + j]


cdef void lstm_step(const Options* o, Py_ssize_t b, Py_ssize_t H, Py_ssize_t P,
                    const floating* w_hh,   # (4H, P)
                    const floating* w_hr,   # (P, H) or NULL
                    const floating* w_p,    # (3H,) or NULL
                    floating* pre,          # (b, 4H) in: the input part; out: pre-activations
                    floating* h,            # (b, P) state in/out
                    floating* c,            # (b, H) cell state in/out
                    floating* out, Py_ssize_t ldo,
                    floating* work,         # (b, 4H) workspace
                    floating* keep) noexcept nogil:  # (b, H) out: o * h(c') (projection), or NULL
    cdef Py_ssize_t G = 4 * H, r, j
    cdef double ci, iv, fv, gv, cn, ov, m
    cdef floating* row
    gemm(False, True, b, G, P, 1, h, P, w_hh, P, 1, pre, G)
    for r in range(b):
        row = pre + r * G
        for j in range(H):
            ci = c[r * H + j]
            if w_p != NULL:
                row[j] = <floating>(row[j] + w_p[j] * ci)
                row[H + j] = <floating>(row[H + j] + w_p[H + j] * ci)
            iv = gate(&o.f, row[j], o.clip)
            fv = 1 - iv if o.input_forget else gate(&o.f, row[H + j], o.clip)
            gv = gate(&o.g, row[2 * H + j], o.clip)
            cn = <floating>(fv * ci + iv * gv)
            c[r * H + j] = <floating>cn
            if w_p != NULL:
                row[3 * H + j] = <floating>(row[3 * H + j] + w_p[2 * H + j] * cn)
            ov = gate(&o.f, row[3 * H + j], o.clip)
            m = ov * act_value(&o.h, cn)
            if w_hr == NULL:
                h[r * P + j] = <floating>m
                out[r * ldo + j] = <floating>m
            else:
                work[r * H + j] = <floating>m
                if keep != NULL:
                    keep[r * H + j] = <floating>m
    if w_hr != NULL:
        gemm(False, True, b, P, H, 1, work, H, w_hr, H, 0, h, P)
        for r in range(b):
            memcpy(out + r * ldo, h + r * P, P * sizeof(floating))


def options_forward(int mode, LayerForward job not None):
    """Run one layer in one direction with cell options (mode 0 RNN, 1 GRU, 2 LSTM).

    Reads x, batch_sizes, offsets, reverse, w_ih, w_hh, b_ih, b_hh, w_hr, w_p, h, c, out,
    col0, xg (the pre-activations: (chunk_steps * B, G) workspace, or (N, G) in training, with
    chunk_steps = T, where they are kept), chunk_steps, hg (B, G) workspace, h_prev, c_prev,
    keep, reset_after and cell_spec (rnnc/_kernels/_layer_job.pyx). In training (h_prev given)
    h_prev / c_prev receive the states before each step and keep GRU's W_hn h + b_hn
    (reset_after) or r * h, or the projected LSTM's o * h(c')."""
    check_chunk_steps(job, "options_forward")
    if is_double(job.x):
        _forward(mode, job, <double>0)
    else:
        _forward(mode, job, <float>0)


cdef int _forward(int mode, LayerForward job, floating kind) except -1:
    cdef const double[::1] spec = job.cell_spec
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[::1] b_ih = job.b_ih
    cdef const floating[::1] b_hh = job.b_hh
    cdef const floating[:, ::1] w_hr = job.w_hr
    cdef const floating[::1] w_p = job.w_p
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] c = job.c
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] pre = job.xg
    cdef floating[:, ::1] work = job.hg
    cdef floating[:, ::1] h_prev = job.h_prev
    cdef floating[:, ::1] c_prev = job.c_prev
    cdef floating[:, ::1] keep = job.keep
    cdef bint reverse = job.reverse, reset_after = job.reset_after
    cdef Py_ssize_t col0 = job.col0, chunk_steps = job.chunk_steps
    cdef Options o = read_options(spec)
    cdef Py_ssize_t T = batch_sizes.shape[0], I = x.shape[1], G = w_hh.shape[0]
    cdef Py_ssize_t P = h.shape[1], H = G // (1 if mode == 0 else 3 if mode == 1 else 4)
    cdef Py_ssize_t ldo = out.shape[1], n_chunks, ci, s, t, b, off, row0, t0 = 0, t1 = 0
    cdef Py_ssize_t ldx = x.strides[0] // sizeof(floating)
    cdef Py_ssize_t n_fold = G if (mode != 1 or not reset_after) else 2 * H
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return 0
    cdef const floating* bi = cptr1(b_ih)
    cdef const floating* bh = cptr1(b_hh)
    cdef const floating* b_hn = bh + 2 * H if (bh != NULL and mode == 1) else NULL
    cdef const floating* wr = cptr2(w_hr)
    cdef const floating* wp = cptr1(w_p)
    cdef floating* hp = ptr2(h_prev)
    cdef floating* cp = ptr2(c_prev)
    cdef floating* kp = ptr2(keep)
    cdef floating* pr
    n_chunks = (T + chunk_steps - 1) // chunk_steps
    with nogil:
        for ci in range(n_chunks):
            chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
            row0 = offsets[t0]
            project_inputs(&x[0, 0] + row0 * ldx, ldx, I,
                           offsets[t1 - 1] + batch_sizes[t1 - 1] - row0, &w_ih[0, 0],
                           <floating*>NULL, bi, bh, G, n_fold, &pre[0, 0])
            for s in range(t1 - t0):
                t = t1 - 1 - s if reverse else t0 + s
                b = batch_sizes[t]
                if b == 0:
                    continue
                off = offsets[t]
                pr = &pre[0, 0] + (off - row0) * G
                if hp != NULL:
                    memcpy(hp + off * P, &h[0, 0], b * P * sizeof(floating))
                    if cp != NULL:
                        memcpy(cp + off * H, &c[0, 0], b * H * sizeof(floating))
                if mode == 0:
                    rnn_step(&o, b, H, &h[0, 0], &w_hh[0, 0], pr, &h[0, 0],
                             &out[0, 0] + off * ldo + col0, ldo)
                elif mode == 1:
                    gru_step(&o, reset_after, b, H, &w_hh[0, 0], b_hn, pr, &h[0, 0],
                             &out[0, 0] + off * ldo + col0, ldo, &work[0, 0],
                             kp + off * H if kp != NULL else NULL)
                else:
                    lstm_step(&o, b, H, P, &w_hh[0, 0], wr, wp, pr, &h[0, 0], &c[0, 0],
                              &out[0, 0] + off * ldo + col0, ldo, &work[0, 0],
                              kp + off * H if kp != NULL else NULL)
    return 0


# -- backward ------------------------------------------------------------------------------
cdef void rnn_back_step(const Options* o, Py_ssize_t b, Py_ssize_t H, const floating* w_hh,
                        floating* pre, const floating* dout, Py_ssize_t ldd,
                        floating* dh) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef double d
    for r in range(b):
        for j in range(H):
            gate_grad(&o.f, pre[r * H + j], o.clip, &d)
            pre[r * H + j] = <floating>((dh[r * H + j] + dout[r * ldd + j]) * d)
    gemm(False, False, b, H, H, 1, pre, H, w_hh, H, 0, dh, H)


cdef void gru_back_step(const Options* o, bint reset_after, Py_ssize_t b, Py_ssize_t H,
                        const floating* w_hh, floating* pre, const floating* h_prev,
                        floating* keep,     # in: hn (reset_after); out: its gradient
                        const floating* dout, Py_ssize_t ldd, floating* dh,
                        floating* work) noexcept nogil:
    cdef Py_ssize_t G = 3 * H, r, j
    cdef double gt, hp, rv, zv, nv, d_r, d_z, d_n, dn, dz, da_n, da_r, drh
    for r in range(b):
        for j in range(H):
            gt = dh[r * H + j] + dout[r * ldd + j]
            hp = h_prev[r * H + j]
            zv = gate_grad(&o.f, pre[r * G + H + j], o.clip, &d_z)
            nv = gate_grad(&o.g, pre[r * G + 2 * H + j], o.clip, &d_n)
            dn = gt * (1 - zv)                  # h' = (1 - z) n + z h
            dz = gt * (hp - nv)
            da_n = dn * d_n
            pre[r * G + H + j] = <floating>(dz * d_z)
            pre[r * G + 2 * H + j] = <floating>da_n
            dh[r * H + j] = <floating>(gt * zv)
            if reset_after:                     # a_n = ... + r * hn
                rv = gate_grad(&o.f, pre[r * G + j], o.clip, &d_r)
                pre[r * G + j] = <floating>(da_n * keep[r * H + j] * d_r)
                keep[r * H + j] = <floating>(da_n * rv)
                work[r * G + j] = pre[r * G + j]
                work[r * G + H + j] = pre[r * G + H + j]
                work[r * G + 2 * H + j] = keep[r * H + j]
    if reset_after:
        gemm(False, False, b, H, G, 1, work, G, w_hh, H, 1, dh, H)
        return
    # a_n = ... + W_hn (r * h): d(r * h) = da_n W_hn, then r's gradient.
    gemm(False, False, b, H, H, 1, pre + 2 * H, G, w_hh + 2 * H * H, H, 0, work, H)
    for r in range(b):
        for j in range(H):
            rv = gate_grad(&o.f, pre[r * G + j], o.clip, &d_r)
            drh = work[r * H + j]
            pre[r * G + j] = <floating>(drh * h_prev[r * H + j] * d_r)
            dh[r * H + j] = <floating>(dh[r * H + j] + drh * rv)
    gemm(False, False, b, H, 2 * H, 1, pre, G, w_hh, H, 1, dh, H)


cdef void lstm_back_step(const Options* o, Py_ssize_t b, Py_ssize_t H, Py_ssize_t P,
                         const floating* w_hh, const floating* w_hr, const floating* w_p,
                         floating* pre, const floating* c_prev,
                         const floating* dout, Py_ssize_t ldd,
                         floating* dh, floating* dc,
                         floating* dht,     # (b, P) out: the gradient of h' (projection), or NULL
                         floating* work,    # (b, 4H) workspace
                         floating* dw_p) noexcept nogil:   # (3H,) or NULL
    cdef Py_ssize_t G = 4 * H, r, j
    cdef double ci, iv, fv, gv, cn, ov, hc, d_i, d_f, d_g, d_o, dm, dct, da_o, di, dg, df
    cdef double da_i, da_f
    cdef floating* row
    if w_hr != NULL:
        for r in range(b):
            for j in range(P):
                dht[r * P + j] = dh[r * P + j] + dout[r * ldd + j]
        gemm(False, False, b, H, P, 1, dht, P, w_hr, H, 0, work, H)
    for r in range(b):
        row = pre + r * G
        for j in range(H):
            ci = c_prev[r * H + j]
            iv = gate_grad(&o.f, row[j], o.clip, &d_i)
            if o.input_forget:
                fv = 1 - iv
                d_f = 0
            else:
                fv = gate_grad(&o.f, row[H + j], o.clip, &d_f)
            gv = gate_grad(&o.g, row[2 * H + j], o.clip, &d_g)
            cn = <floating>(fv * ci + iv * gv)
            ov = gate_grad(&o.f, row[3 * H + j], o.clip, &d_o)
            hc = act_value(&o.h, cn)
            dm = work[r * H + j] if w_hr != NULL else dh[r * P + j] + dout[r * ldd + j]
            # m = o * h(c'); c' = f c + i g
            dct = dc[r * H + j] + dm * ov * act_grad(&o.h, cn, hc)
            da_o = dm * hc * d_o
            if w_p != NULL:
                dct += da_o * w_p[2 * H + j]
                if dw_p != NULL:
                    dw_p[2 * H + j] += <floating>(da_o * cn)
            di = dct * gv
            dg = dct * iv
            df = dct * ci
            if o.input_forget:                  # f = 1 - i
                di -= df
                da_f = 0
            else:
                da_f = df * d_f
            da_i = di * d_i
            dc[r * H + j] = <floating>(dct * fv)
            if w_p != NULL:
                dc[r * H + j] = <floating>(dc[r * H + j] + da_i * w_p[j] + da_f * w_p[H + j])
                if dw_p != NULL:
                    dw_p[j] += <floating>(da_i * ci)
                    dw_p[H + j] += <floating>(da_f * ci)
            row[j] = <floating>da_i
            row[H + j] = <floating>da_f
            row[2 * H + j] = <floating>(dg * d_g)
            row[3 * H + j] = <floating>da_o
    gemm(False, False, b, P, G, 1, pre, G, w_hh, P, 0, dh, P)


cdef void column_sums(const floating* a, Py_ssize_t lda, Py_ssize_t nrows, Py_ssize_t ncols,
                      floating* out1, floating* out2) noexcept nogil:
    """out1 (ncols,) and out2 += the column sums of a (either may be NULL)."""
    cdef Py_ssize_t r, j
    cdef double s
    for j in range(ncols):
        s = 0
        for r in range(nrows):
            s += a[r * lda + j]
        if out1 != NULL:
            out1[j] += <floating>s
        if out2 != NULL:
            out2[j] += <floating>s


def options_backward(int mode, LayerBackward job not None):
    """BPTT after options_forward (training), same layer and direction.

    Reads x, batch_sizes, offsets, reverse, w_ih, w_hh, w_hr, w_p, act (the kept
    pre-activations, overwritten with their gradients), h_prev, c_prev, keep (as the forward
    left it; overwritten), dout, col0, dh, dc, dx, add_dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr,
    dw_p, dhp_all (N, P) workspace with a projection, work (B, G), reset_after and cell_spec.
    Parameter gradients are added to."""
    if is_double(job.x):
        _backward(mode, job, <double>0)
    else:
        _backward(mode, job, <float>0)


cdef int _backward(int mode, LayerBackward job, floating kind) except -1:
    cdef const double[::1] spec = job.cell_spec
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[:, ::1] w_hr = job.w_hr
    cdef const floating[::1] w_p = job.w_p
    cdef floating[:, ::1] pre = job.act
    cdef const floating[:, ::1] h_prev = job.h_prev
    cdef const floating[:, ::1] c_prev = job.c_prev
    cdef floating[:, ::1] keep = job.keep
    cdef const floating[:, ::1] dout = job.dout
    cdef floating[:, ::1] dh = job.dh
    cdef floating[:, ::1] dc = job.dc
    cdef floating[:, ::1] dx = job.dx
    cdef floating[:, ::1] dw_ih = job.dw_ih
    cdef floating[:, ::1] dw_hh = job.dw_hh
    cdef floating[::1] db_ih = job.db_ih
    cdef floating[::1] db_hh = job.db_hh
    cdef floating[:, ::1] dw_hr = job.dw_hr
    cdef floating[::1] dw_p = job.dw_p
    cdef floating[:, ::1] dht = job.dhp_all
    cdef floating[:, ::1] work = job.work
    cdef bint reverse = job.reverse, reset_after = job.reset_after, add_dx = job.add_dx
    cdef Py_ssize_t col0 = job.col0
    cdef Options o = read_options(spec)
    cdef Py_ssize_t T = batch_sizes.shape[0], I = x.shape[1], G = w_hh.shape[0]
    cdef Py_ssize_t P = dh.shape[1], H = G // (1 if mode == 0 else 3 if mode == 1 else 4)
    cdef Py_ssize_t ldd = dout.shape[1], N, s, t, b, off
    cdef Py_ssize_t ldx = x.strides[0] // sizeof(floating)
    if T == 0 or x.shape[0] == 0 or dh.shape[0] == 0:
        return 0
    N = offsets[T - 1] + batch_sizes[T - 1]
    cdef const floating* wr = cptr2(w_hr)
    cdef const floating* wp = cptr1(w_p)
    cdef floating* dwp = &dw_p[0] if dw_p.shape[0] > 0 else NULL
    cdef floating* kp = ptr2(keep)
    cdef floating* dhtp = ptr2(dht)
    cdef floating* dbi = &db_ih[0] if db_ih.shape[0] > 0 else NULL
    cdef floating* dbh = &db_hh[0] if db_hh.shape[0] > 0 else NULL
    cdef floating* P0 = &pre[0, 0]
    with nogil:
        for s in range(T):
            t = s if reverse else T - 1 - s
            b = batch_sizes[t]
            if b == 0:
                continue
            off = offsets[t]
            if mode == 0:
                rnn_back_step(&o, b, H, &w_hh[0, 0], P0 + off * G,
                              &dout[0, 0] + off * ldd + col0, ldd, &dh[0, 0])
            elif mode == 1:
                gru_back_step(&o, reset_after, b, H, &w_hh[0, 0], P0 + off * G,
                              &h_prev[0, 0] + off * H, kp + off * H if kp != NULL else NULL,
                              &dout[0, 0] + off * ldd + col0, ldd, &dh[0, 0], &work[0, 0])
            else:
                lstm_back_step(&o, b, H, P, &w_hh[0, 0], wr, wp, P0 + off * G,
                               &c_prev[0, 0] + off * H, &dout[0, 0] + off * ldd + col0, ldd,
                               &dh[0, 0], &dc[0, 0],
                               dhtp + off * P if dhtp != NULL else NULL, &work[0, 0], dwp)
        # The input side: all rows' pre-activation gradients at once.
        gemm(False, False, N, I, G, 1, P0, G, &w_ih[0, 0], I, 1 if add_dx else 0,
             &dx[0, 0], I)
        gemm(True, False, G, I, N, 1, P0, G, &x[0, 0], ldx, 1, &dw_ih[0, 0], I)
        column_sums(P0, G, N, G, dbi, NULL)
        if mode == 1 and reset_after:
            # W_hr, W_hz see h with da_r, da_z; W_hn sees h with the gradient of hn (in keep).
            gemm(True, False, 2 * H, H, N, 1, P0, G, &h_prev[0, 0], H, 1, &dw_hh[0, 0], H)
            gemm(True, False, H, H, N, 1, kp, H, &h_prev[0, 0], H, 1,
                 &dw_hh[0, 0] + 2 * H * H, H)
            column_sums(P0, G, N, 2 * H, dbh, NULL)
            if dbh != NULL:
                column_sums(kp, H, N, H, dbh + 2 * H, NULL)
        elif mode == 1:
            # W_hn sees r * h (in keep); b_hn entered with b_in.
            gemm(True, False, 2 * H, H, N, 1, P0, G, &h_prev[0, 0], H, 1, &dw_hh[0, 0], H)
            gemm(True, False, H, H, N, 1, P0 + 2 * H, G, kp, H, 1,
                 &dw_hh[0, 0] + 2 * H * H, H)
            column_sums(P0, G, N, G, dbh, NULL)
        else:
            gemm(True, False, G, P, N, 1, P0, G, &h_prev[0, 0], P, 1, &dw_hh[0, 0], P)
            column_sums(P0, G, N, G, dbh, NULL)
        if wr != NULL:
            gemm(True, False, P, H, N, 1, dhtp, P, kp, H, 1, &dw_hr[0, 0], H)
    return 0
