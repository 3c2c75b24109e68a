"""Inference forward of one layer and direction, split by hidden units across threads.

Each thread owns a contiguous block of hidden units [u0, u0 + nu) and with it the rows of every
gate that feed them: it projects its own gate columns of the inputs, computes its own columns of
the recurrent product (the whole previous state times its rows of W_hh), applies the gate math
to its units and writes their part of the new state and the output. Nothing but the state is
shared, so the threads meet once per time step (rnnc/_barrier.h), after which every thread
reads the whole new state. Two state buffers alternate (read one, write the other), so that a
thread may write step t's state while the other still reads step t-1's.

Why: at small batches the recurrent product is a stream through the weights, and splitting the
weight rows puts half of them in each core's cache (LSTM H1024: 16 MB of W_hh split in two)
where multi-threaded BLAS splits one small product per step and pays a fork/join each time.

Covers RNN, GRU (reset_after=True) and LSTM without projection; the layer's other forms, and
training (which keeps per-step caches in the unsplit layout), use the one-thread kernels.
The GIL is released for the whole sequence; nothing is allocated here.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._blas cimport gemm, recurrent_gemm
from rnnc._cell_math cimport gru_pointwise_reset_after_ld, lstm_pointwise, rnn_pointwise_ld
from rnnc._sequence cimport chunk_bounds, copy_rows, fill_rows


cdef extern from "_barrier.h" nogil:
    void rnnc_barrier_wait(int* bar, int n_threads, int* sense)


cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    GRU = 2
    LSTM = 3


cdef inline void project_part(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I, Py_ssize_t nrows,
        const floating* w_ih,     # (GN, I): this part's rows of every gate block
        const floating* bias,     # (GN,) this part's folded biases, or NULL
        Py_ssize_t GN, floating* xg) noexcept nogil:  # (nrows, GN) out
    """This part's gate columns of x @ W_ih^T + bias, one GEMM (one call per gate block
    instead packed the input rows four times and cost LSTM B16 H128 30% more)."""
    if bias == NULL:
        gemm(False, True, nrows, GN, I, 1, x, ldx, w_ih, I, 0, xg, GN)
        return
    memcpy(xg, bias, GN * sizeof(floating))
    fill_rows(xg, GN, nrows)
    gemm(False, True, nrows, GN, I, 1, x, ldx, w_ih, I, 1, xg, GN)


cdef void forward_part(
        int mode,
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih,      # (G*nu, I) this part's rows of W_ih
        const floating* bias,      # (G*nu,) folded input-side biases of this part, or NULL
        const floating* b_hn,      # (nu,) GRU: this part's b_hn, or NULL
        const floating* w_hh,      # (G*nu, H) this part's rows of W_hh (BLAS path)
        const floating* w_hh_packed,  # the same in panels (_small_gemm.h), or NULL
        Py_ssize_t G, Py_ssize_t H, Py_ssize_t u0, Py_ssize_t nu, Py_ssize_t B,
        floating* hbuf,            # (2, B, H) shared state buffers, both = h0 on entry
        floating* h,               # (B, H) out: final state (this part's columns)
        floating* c,               # (B, H) LSTM cell state in/out (this part's columns)
        floating* cpart,           # (B, nu) LSTM workspace: this part's cell state
        floating* out, Py_ssize_t ldo,  # (N, H) the direction's output columns, row stride ldo
        floating* xg,              # (chunk_steps * B, G*nu) workspace
        floating* hg,              # (B, G*nu) GRU workspace: recurrent part
        Py_ssize_t chunk_steps,
        int* bar, int n_threads) noexcept nogil:
    cdef Py_ssize_t GN = G * nu
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, row0, b_prev = 0
    cdef int cur = 0, sense = 0
    cdef floating* h_cur
    cdef floating* h_next
    cdef floating* gates
    if mode == LSTM:
        copy_rows(cpart, nu, c + u0, H, B, nu)
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_part(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                     w_ih, bias, GN, xg)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            h_cur = hbuf + cur * B * H
            h_next = hbuf + (1 - cur) * B * H
            # Rows that ended at the previous step hold their final state in h_cur only:
            # copy this part's columns across so that both buffers keep it from now on.
            if b < b_prev:
                copy_rows(h_next + b * H + u0, H, h_cur + b * H + u0, H, b_prev - b, nu)
            gates = xg + (offsets[t] - row0) * GN
            if mode == GRU:
                recurrent_gemm(b, GN, H, h_cur, H, w_hh, H, w_hh_packed, 0, hg, GN)
                gru_pointwise_reset_after_ld(b, nu, gates, hg, b_hn, h_cur + u0, H,
                                             h_next + u0, H, out + offsets[t] * ldo + u0, ldo,
                                             <floating*>NULL)
            else:
                recurrent_gemm(b, GN, H, h_cur, H, w_hh, H, w_hh_packed, 1, gates, GN)
                if mode == LSTM:
                    lstm_pointwise(b, nu, gates, cpart, h_next + u0, H,
                                   out + offsets[t] * ldo + u0, ldo)
                else:
                    rnn_pointwise_ld(b, nu, mode == RNN_RELU, gates, h_next + u0, H,
                                     out + offsets[t] * ldo + u0, ldo)
            if n_threads > 1:
                rnnc_barrier_wait(bar, n_threads, &sense)
            cur = 1 - cur
            b_prev = b
    h_cur = hbuf + cur * B * H
    copy_rows(h + u0, H, h_cur + u0, H, B, nu)
    if mode == LSTM:
        copy_rows(c + u0, H, cpart, nu, B, nu)


def forward_part_py(int mode, const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                    const Py_ssize_t[::1] offsets, bint reverse,
                    const floating[:, ::1] w_ih, const floating[::1] bias,
                    const floating[::1] b_hn, const floating[:, ::1] w_hh,
                    const floating[:, :, ::1] w_hh_packed,
                    Py_ssize_t u0, Py_ssize_t nu,
                    floating[:, :, ::1] hbuf, floating[:, ::1] h, floating[:, ::1] c,
                    floating[:, ::1] cpart, floating[:, ::1] out, Py_ssize_t col0,
                    floating[:, ::1] xg, floating[:, ::1] hg, Py_ssize_t chunk_steps,
                    int[::1] bar, int n_threads):
    """One thread's part of a layer split by hidden units (see the module docstring and
    rnnc/_stack.py, which validates, allocates and starts the parts together).

    mode: 0 RNN tanh, 1 RNN relu, 2 GRU (reset_after), 3 LSTM. Zero-size bias/b_hn mean none;
    w_hh (this part's rows) is read only when w_hh_packed is zero-size (BLAS path). Every part must be given the same bar (zeroed int32,
    >= 2 entries) and n_threads, and all must run concurrently, or the first waits forever.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t G = w_ih.shape[0] // nu if nu > 0 else 1
    cdef Py_ssize_t H = h.shape[1], B = h.shape[0]
    if T == 0 or x.shape[0] == 0 or B == 0:
        return
    cdef const floating* bi = &bias[0] if bias.shape[0] > 0 else NULL
    cdef const floating* bn = &b_hn[0] if b_hn.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef floating* cp = &c[0, 0] if c.shape[0] > 0 else NULL
    cdef floating* cpp = &cpart[0, 0] if cpart.shape[0] > 0 else NULL
    cdef floating* hgp = &hg[0, 0] if hg.shape[0] > 0 else NULL
    cdef const floating* wh = &w_hh[0, 0] if w_hh.shape[0] > 0 else NULL
    if nu == 0:
        return
    with nogil:
        forward_part(mode, &x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                     reverse, &w_ih[0, 0], bi, bn, wh, wp, G, H, u0, nu, B,
                     &hbuf[0, 0, 0], &h[0, 0], cp, cpp, &out[0, col0], out.shape[1],
                     &xg[0, 0], hgp, chunk_steps, &bar[0], n_threads)
