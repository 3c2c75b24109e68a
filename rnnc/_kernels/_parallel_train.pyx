"""Training forward and backward (BPTT) of one LSTM layer and direction, split by hidden units
across threads.

The one-thread kernels (rnnc/_kernels/_lstm_kernel.pyx) run every step's recurrence on one
thread, so at two threads only the large GEMMs before and after the time loop use both cores.
Here each thread owns a block of hidden units [u0, u0 + nu) -- the rows of every gate that feed
them -- for the whole training step:

Forward (lstm_train_forward_part): as the inference split (rnnc/_kernels/_parallel_forward.pyx),
each thread projects its gate columns of the inputs (step by step with the small-batch kernel),
multiplies the whole previous state by its rows of W_hh, applies the gate math to its units and
writes their part of the new state; the threads meet once per step (rnnc/_kernels/_barrier.h)
and two state buffers alternate. What training keeps is written where the backward wants it:
the gate activations go to the shared (N, 4H) buffer in *part order* -- thread p's columns
[4 u0, 4 u0 + 4 nu) hold its i, f, g, o blocks of nu units each -- the states before each step
to the columns [u0, u0 + nu) of c_prev and of h_prev, which sits next to a copy of the input in
one (N, I + H) buffer [x | h_prev].

Backward (lstm_backward_part), per step: each thread turns its columns of the kept activations
into dA (it needs only its own columns of dh and dc, which it alone computes); the threads meet;
then each computes its columns of the gradient of the previous state, dh[:, units] = dA (all
4H columns, this step's rows of the shared buffer) @ W_hh[:, units] with W_hh's rows in part
order, which only this thread reads at the next step. One barrier per step: the next step
writes other rows of the shared buffer. After the last step every thread has all of dA and
computes its share of the large GEMMs: [dW_ih | dW_hh] for its units' rows (one GEMM with
[x | h_prev]) and the input gradient for its share of the rows, with BLAS at one thread each.

Any number of threads may split a layer (n_threads, each with its units and its share of the
rows; rnnc/_engine/runners/units.py runs them on rnnc's pool). Part order is a permutation of
the gate rows, [part 0: i f g o | part 1: i f g o | ...]; the caller
(rnnc/_engine/runners/units.py) hands over the weights in that order and the kernels write the
weight and bias gradients back in the parameters' order. The GIL is released for the whole
sequence; nothing is allocated here.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport gemm, recurrent_gemm, recurrent_gemm_nn
from rnnc._kernels._cell_math cimport lstm_pointwise, lstm_pointwise_backward
from rnnc._kernels._sequence cimport copy_rows


cdef extern from "_barrier.h" nogil:
    void rnnc_barrier_wait(int* bar, int n_threads, int* sense)


cdef void lstm_train_forward_part(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih,      # (4nu, I) this part's rows of W_ih, gate-major
        const floating* w_ih_packed,  # the same in panels (_small_gemm.h), or NULL
        const floating* bias,      # (4nu,) this part's b_ih + b_hh, or NULL
        const floating* w_hh,      # (4nu, H) this part's rows of W_hh (BLAS path)
        const floating* w_hh_packed,  # the same in panels (_small_gemm.h), or NULL
        Py_ssize_t H, Py_ssize_t u0, Py_ssize_t nu, Py_ssize_t B, Py_ssize_t col,
        floating* hbuf,            # (2, B, H) shared state buffers, both = h0 on entry
        floating* h,               # (B, H) out: final state (this part's columns)
        floating* c,               # (B, H) cell state in/out (this part's columns)
        floating* cpart,           # (B, nu) workspace: this part's cell state
        floating* out, Py_ssize_t ldo,  # (N, H) the direction's output columns, row stride ldo
        floating* act,             # (N, 4H) out: activations, columns [col, col + 4nu)
        floating* xh,              # (N, I + H) out: [x | state before each step]: this part
                                   # writes the state's columns [I + u0, I + u0 + nu) and x's
        Py_ssize_t xrow0, Py_ssize_t xrow1,  # rows [xrow0, xrow1)
        floating* c_prev,          # (N, H) out: cell state before each step, [u0, u0 + nu)
        int* bar, int n_threads) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, GN = 4 * nu, ldxh = I + H
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]
    cdef Py_ssize_t s, t, b, r, off, b_prev = 0
    cdef int cur = 0, sense = 0
    cdef floating* h_cur
    cdef floating* h_next
    cdef floating* gates
    cdef floating* h_prev = xh + I
    for r in range(xrow0, xrow1):
        memcpy(xh + r * ldxh, x + r * ldx, I * sizeof(floating))
    copy_rows(cpart, nu, c + u0, H, B, nu)
    # This part's gate columns of x @ W_ih^T + bias, onto bias-filled rows: with the
    # small-batch kernel, step by step (it runs closer to the CPU's peak than BLAS on the whole
    # sequence; benchmarks/results/amd-epyc/tuning.md); with BLAS, for all steps at once here.
    if w_ih_packed == NULL:
        if bias != NULL:
            for r in range(N):
                memcpy(act + r * G + col, bias, GN * sizeof(floating))
        gemm(False, True, N, GN, I, 1, x, ldx, w_ih, I, 1 if bias != NULL else 0, act + col, G)
    for s in range(T):
        t = T - 1 - s if reverse else s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        h_cur = hbuf + cur * B * H
        h_next = hbuf + (1 - cur) * B * H
        # Rows that ended at the previous step hold their final state in h_cur only.
        if b < b_prev:
            copy_rows(h_next + b * H + u0, H, h_cur + b * H + u0, H, b_prev - b, nu)
        copy_rows(h_prev + off * ldxh + u0, ldxh, h_cur + u0, H, b, nu)
        copy_rows(c_prev + off * H + u0, H, cpart, nu, b, nu)
        gates = act + off * G + col
        if w_ih_packed != NULL:
            if bias != NULL:
                for r in range(b):
                    memcpy(gates + r * G, bias, GN * sizeof(floating))
            recurrent_gemm(b, GN, I, x + off * ldx, ldx, w_ih, I, w_ih_packed,
                           1 if bias != NULL else 0, gates, G)
        recurrent_gemm(b, GN, H, h_cur, H, w_hh, H, w_hh_packed, 1, gates, G)
        for r in range(b):
            lstm_pointwise(1, nu, gates + r * G, cpart + r * nu, h_next + r * H + u0, H,
                           out + (off + r) * ldo + u0, ldo)
        if n_threads > 1:
            rnnc_barrier_wait(bar, n_threads, &sense)
        cur = 1 - cur
        b_prev = b
    h_cur = hbuf + cur * B * H
    copy_rows(h + u0, H, h_cur + u0, H, B, nu)
    copy_rows(c + u0, H, cpart, nu, B, nu)


cdef inline Py_ssize_t param_row(Py_ssize_t r, Py_ssize_t H, Py_ssize_t u0,
                                 Py_ssize_t nu) noexcept nogil:
    """The gate row (of W_ih, W_hh, the biases) of row r of a part's block in part order."""
    return (r // nu) * H + u0 + r % nu


cdef void lstm_backward_part(
        Py_ssize_t I,              # input size
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih_perm,   # (4H, I) W_ih, rows in part order
        const floating* w_hh_cols,   # (4H, nu) W_hh[:, u0:u0+nu], rows in part order (BLAS)
        const floating* w_hh_packed,  # the same in panels (_small_gemm.h), or NULL
        Py_ssize_t H, Py_ssize_t u0, Py_ssize_t nu, Py_ssize_t B, Py_ssize_t col,
        Py_ssize_t row0, Py_ssize_t row1,  # this part's rows of dx
        floating* act,             # (N, 4H) in: activations (part order); out: dA, this
                                   # part's columns [col, col + 4nu)
        const floating* xh,        # (N, I + H) [x | state before each step]
        const floating* c_prev,    # (N, H)
        const floating* dout, Py_ssize_t ldd,  # (N, H) gradient of the direction's output
        floating* dh,              # (B, H) in: grad of h_n; out: grad of h_0 (this part's
        floating* dc,              # (B, H)      columns of both)
        floating* dhp,             # (B, nu) workspace: this part's dh
        floating* dcp,             # (B, nu) workspace: this part's dc
        floating* dx, Py_ssize_t lddx, bint add_dx,  # (N, I) out (+= when add_dx), rows
                                                     # [row0, row1)
        floating* dw_ih, floating* dw_hh,  # (4H, I), (4H, H) out: this part's units' rows
        floating* db_ih, floating* db_hh,  # (4H,) out (+=): this part's entries, or NULL
        floating* acc,             # (4nu,) workspace: bias sums
        floating* wtmp,            # (4nu, I + H) workspace
        floating* tc_row,          # (nu,) workspace
        int* bar, int n_threads) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, GN = 4 * nu
    cdef Py_ssize_t N = offsets[T - 1] + batch_sizes[T - 1]
    cdef Py_ssize_t s, t, b, r, j, off
    cdef int sense = 0
    cdef bint bias = db_ih != NULL or db_hh != NULL
    copy_rows(dhp, nu, dh + u0, H, B, nu)
    copy_rows(dcp, nu, dc + u0, H, B, nu)
    for j in range(GN):
        acc[j] = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        b = batch_sizes[t]
        if b == 0:
            continue
        off = offsets[t]
        for r in range(b):
            lstm_pointwise_backward(1, nu, act + (off + r) * G + col, c_prev + (off + r) * H + u0,
                                    dcp + r * nu, dhp + r * nu, nu,
                                    dout + (off + r) * ldd + u0, ldd, <floating*>NULL, tc_row,
                                    acc if bias else NULL)
        if n_threads > 1:
            rnnc_barrier_wait(bar, n_threads, &sense)
        # This part's columns of dA (all gates and units of the step) @ W_hh.
        recurrent_gemm_nn(b, nu, G, act + off * G, G, w_hh_cols, nu, w_hh_packed, 0, dhp, nu)
    copy_rows(dh + u0, H, dhp, nu, B, nu)
    copy_rows(dc + u0, H, dcp, nu, B, nu)
    # All of dA is complete (each thread wrote its columns before the last barrier).
    if row1 > row0:
        gemm(False, False, row1 - row0, I, G, 1, act + row0 * G, G, w_ih_perm, I,
             1 if add_dx else 0, dx + row0 * lddx, lddx)
    # [dW_ih | dW_hh] for this part's rows in one GEMM: dA is read once, and the wider product
    # runs faster than two narrower ones (benchmarks/results/amd-epyc/tuning.md).
    gemm(True, False, GN, I + H, N, 1, act + col, G, xh, I + H, 0, wtmp, I + H)
    for r in range(GN):
        j = param_row(r, H, u0, nu)
        memcpy(dw_ih + j * I, wtmp + r * (I + H), I * sizeof(floating))
        memcpy(dw_hh + j * H, wtmp + r * (I + H) + I, H * sizeof(floating))
    if bias:
        for r in range(GN):
            j = param_row(r, H, u0, nu)
            if db_ih != NULL:
                db_ih[j] += acc[r]
            if db_hh != NULL:
                db_hh[j] += acc[r]


cdef class _Described:
    """Attributes settable by keyword: Part(x=..., h=...)."""

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


cdef class TrainForwardPart(_Described):
    """One thread's part of an LSTM training forward split by hidden units
    (lstm_train_forward_part_py): units [u0, u0 + nu).

    w_ih (4nu, I) and w_hh (4nu, H) are this part's rows, gate-major, and w_ih_packed,
    w_hh_packed the same in panels for the small-batch kernel, or zero-size (BLAS: w_ih
    projects all steps at once; w_hh is read only then); a zero-size bias means none. x (N, I)
    the packed input with its layout (batch_sizes, offsets), hbuf (2, B, H) both = h on
    entry, h and c (B, H) the state in/out, cpart (B, nu) workspace, out the output at columns
    col0. The part's activations go to act's columns [4 u0, 4 u0 + 4nu), the states before
    each step to c_prev's columns [u0, u0 + nu) and xh's columns [I + u0, I + u0 + nu), and
    the rows [xrow0, xrow1) of x to xh's first I columns. Every part must be given the same
    bar (zeroed int32, >= 2 entries) and n_threads, and all must run concurrently."""
    cdef public object x, batch_sizes, offsets, w_ih, w_ih_packed, bias, w_hh, w_hh_packed
    cdef public object hbuf, h, c, cpart, out, act, xh, c_prev, bar
    cdef public bint reverse
    cdef public Py_ssize_t u0, nu, col0, xrow0, xrow1
    cdef public int n_threads


cdef class BackwardPart(_Described):
    """One thread's part of an LSTM backward split by hidden units, after
    lstm_train_forward_part (lstm_backward_part_py): units [u0, u0 + nu).

    w_ih_perm (4H, I) is W_ih with its rows in part order; w_hh_cols (4H, nu) this part's
    columns of W_hh, rows in part order (read only when w_hh_packed is zero-size). The part
    writes its columns of dh/dc, its units' rows of dw_ih/dw_hh (db_* added to; zero-size
    means no bias) and the rows [row0, row1) of dx (added to when add_dx). act, xh
    (N, I + H) = [x | state before each step] and c_prev as written by the forward, dout the
    output gradient at columns col0. dhp, dcp (B, nu), acc (4nu,), wtmp (4nu, I + H) and
    tc_row (nu,) are this part's workspace. bar and n_threads as in TrainForwardPart."""
    cdef public object batch_sizes, offsets, w_ih_perm, w_hh_cols, w_hh_packed, act, xh
    cdef public object c_prev, dout, dh, dc, dhp, dcp, dx, dw_ih, dw_hh, db_ih, db_hh, acc
    cdef public object wtmp, tc_row, bar
    cdef public bint reverse, add_dx
    cdef public Py_ssize_t u0, nu, row0, row1, col0
    cdef public int n_threads


cdef inline bint is_double(object array):
    return array.dtype.char == 'd'


cdef int train_forward_part(TrainForwardPart part, floating kind) except -1:
    cdef const floating[:, ::1] x = part.x
    cdef const Py_ssize_t[::1] batch_sizes = part.batch_sizes
    cdef const Py_ssize_t[::1] offsets = part.offsets
    cdef const floating[:, ::1] w_ih = part.w_ih
    cdef const floating[:, :, ::1] w_ih_packed = part.w_ih_packed
    cdef const floating[::1] bias = part.bias
    cdef const floating[:, ::1] w_hh = part.w_hh
    cdef const floating[:, :, ::1] w_hh_packed = part.w_hh_packed
    cdef floating[:, :, ::1] hbuf = part.hbuf
    cdef floating[:, ::1] h = part.h
    cdef floating[:, ::1] c = part.c
    cdef floating[:, ::1] cpart = part.cpart
    cdef floating[:, ::1] out = part.out
    cdef floating[:, ::1] act = part.act
    cdef floating[:, ::1] xh = part.xh
    cdef floating[:, ::1] c_prev = part.c_prev
    cdef int[::1] bar = part.bar
    cdef bint reverse = part.reverse
    cdef Py_ssize_t u0 = part.u0, nu = part.nu, col0 = part.col0
    cdef Py_ssize_t xrow0 = part.xrow0, xrow1 = part.xrow1
    cdef int n_threads = part.n_threads
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1], B = h.shape[0]
    if T == 0 or x.shape[0] == 0 or B == 0 or nu == 0:
        return 0
    cdef const floating* bi = &bias[0] if bias.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wh = &w_hh[0, 0] if w_hh.shape[0] > 0 else NULL
    cdef const floating* wip = &w_ih_packed[0, 0, 0] if w_ih_packed.shape[0] > 0 else NULL
    with nogil:
        lstm_train_forward_part(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0],
                                T, reverse, &w_ih[0, 0], wip, bi, wh, wp, H, u0, nu, B, 4 * u0,
                                &hbuf[0, 0, 0], &h[0, 0], &c[0, 0], &cpart[0, 0],
                                &out[0, col0], out.shape[1], &act[0, 0], &xh[0, 0],
                                xrow0, xrow1, &c_prev[0, 0], &bar[0], n_threads)
    return 0


def lstm_train_forward_part_py(TrainForwardPart part not None):
    """One thread's part of an LSTM training forward split by hidden units (see the module
    docstring and TrainForwardPart; rnnc._engine.runners.units validates, allocates and
    starts the parts together)."""
    if is_double(part.x):
        train_forward_part(part, <double>0)
    else:
        train_forward_part(part, <float>0)


cdef int backward_part(BackwardPart part, floating kind) except -1:
    cdef const Py_ssize_t[::1] batch_sizes = part.batch_sizes
    cdef const Py_ssize_t[::1] offsets = part.offsets
    cdef const floating[:, ::1] w_ih_perm = part.w_ih_perm
    cdef const floating[:, ::1] w_hh_cols = part.w_hh_cols
    cdef const floating[:, :, ::1] w_hh_packed = part.w_hh_packed
    cdef floating[:, ::1] act = part.act
    cdef const floating[:, ::1] xh = part.xh
    cdef const floating[:, ::1] c_prev = part.c_prev
    cdef const floating[:, ::1] dout = part.dout
    cdef floating[:, ::1] dh = part.dh
    cdef floating[:, ::1] dc = part.dc
    cdef floating[:, ::1] dhp = part.dhp
    cdef floating[:, ::1] dcp = part.dcp
    cdef floating[:, ::1] dx = part.dx
    cdef floating[:, ::1] dw_ih = part.dw_ih
    cdef floating[:, ::1] dw_hh = part.dw_hh
    cdef floating[::1] db_ih = part.db_ih
    cdef floating[::1] db_hh = part.db_hh
    cdef floating[::1] acc = part.acc
    cdef floating[:, ::1] wtmp = part.wtmp
    cdef floating[::1] tc_row = part.tc_row
    cdef int[::1] bar = part.bar
    cdef bint reverse = part.reverse, add_dx = part.add_dx
    cdef Py_ssize_t u0 = part.u0, nu = part.nu, row0 = part.row0, row1 = part.row1
    cdef Py_ssize_t col0 = part.col0
    cdef int n_threads = part.n_threads
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = dh.shape[1], B = dh.shape[0]
    cdef Py_ssize_t I = w_ih_perm.shape[1]
    if T == 0 or act.shape[0] == 0 or B == 0 or nu == 0:
        return 0
    cdef floating* dbi = &db_ih[0] if db_ih.shape[0] > 0 else NULL
    cdef floating* dbh = &db_hh[0] if db_hh.shape[0] > 0 else NULL
    cdef const floating* wp = &w_hh_packed[0, 0, 0] if w_hh_packed.shape[0] > 0 else NULL
    cdef const floating* wc = &w_hh_cols[0, 0] if w_hh_cols.shape[0] > 0 else NULL
    with nogil:
        lstm_backward_part(I, &batch_sizes[0], &offsets[0], T,
                           reverse, &w_ih_perm[0, 0], wc, wp, H, u0, nu, B, 4 * u0,
                           row0, row1, &act[0, 0], &xh[0, 0], &c_prev[0, 0],
                           &dout[0, col0], dout.shape[1], &dh[0, 0], &dc[0, 0],
                           &dhp[0, 0], &dcp[0, 0], &dx[0, 0], dx.shape[1], add_dx,
                           &dw_ih[0, 0], &dw_hh[0, 0], dbi, dbh, &acc[0], &wtmp[0, 0],
                           &tc_row[0], &bar[0], n_threads)
    return 0


def lstm_backward_part_py(BackwardPart part not None):
    """One thread's part of an LSTM backward split by hidden units, after
    lstm_train_forward_part (see the module docstring and BackwardPart)."""
    if is_double(part.act):
        backward_part(part, <double>0)
    else:
        backward_part(part, <float>0)


include "_configure.pxi"
