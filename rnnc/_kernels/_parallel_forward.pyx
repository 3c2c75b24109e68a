"""Inference forward of one layer and direction, split across n threads: by hidden units
(below), or by batch rows (rows_forward_py, further down: LSTM and RNN on the fused product, GRU
with reset_after on gru_rows_sequence).

Each thread owns a contiguous block of hidden units [u0, u0 + nu) and with it the rows of every
gate that feed them: it projects its own gate columns of the inputs, computes its own columns of
the recurrent product (the whole previous state times its rows of W_hh), applies the gate math
to its units and writes their part of the new state and the output. Nothing but the state is
shared, so the threads meet once per time step (rnnc/_kernels/_barrier.h), after which every
thread reads the whole new state. Two state buffers alternate (read one, write the other), so
that a thread may write step t's state while the others still read step t-1's.

Why: at small batches the recurrent product is a stream through the weights, and splitting the
weight rows puts a share of them in each core's cache (LSTM H1024: 16 MB of W_hh split in two)
where multi-threaded BLAS splits one small product per step and pays a fork/join each time.

Covers RNN, GRU (reset_after=True) and LSTM without projection; the layer's other forms, and
training (which keeps per-step caches in the unsplit layout), use the one-thread kernels. An
LSTM part may compute its gate columns of x W_ih^T + h W_hh^T + b as one product per step
(forward_part_fused; rnnc/_engine/plan.py decides as for the one-thread fused kernel).

Part 0 runs on the calling thread, part i on worker thread i of a Pool (rnnc/_kernels/_worker.h
threads, one pool per process, sized by rnnc/_engine/threads.py); each part gathers and packs
its own weight rows before its time loop (prepare_and_run). The GIL is released for the whole
sequence; nothing is allocated here.
"""
from cython cimport floating
from libc.string cimport memcpy, memset

cdef extern from "Python.h" nogil:
    ctypedef int PyGILState_STATE
    ctypedef struct PyThreadState:
        pass
    PyGILState_STATE PyGILState_UNLOCKED
    PyGILState_STATE PyGILState_Ensure()
    void PyGILState_Release(PyGILState_STATE state)
    PyThreadState* PyGILState_GetThisThreadState()
    void PyEval_RestoreThread(PyThreadState* tstate)
    void* PyEval_SaveThread()

from rnnc._kernels._blas cimport (RNNC_DGEMM_PANEL, RNNC_SGEMM_PANEL, gemm, pack_panels,
                                  recurrent_gemm, small_gemm, small_gemm_packing)
from rnnc._kernels._cell_math cimport (gru_pointwise_reset_after, gru_pointwise_reset_after_ld,
                              lstm_pointwise, rnn_pointwise_ld)
from rnnc._kernels._fused cimport fused_sequence, pack_fused
from rnnc._kernels._sequence cimport (check_one_panel, chunk_bounds, copy_rows, fill_rows,
                             project_inputs)


from rnnc._kernels._worker cimport (rnnc_barrier_wait, rnnc_count_claim, rnnc_count_load,
                           rnnc_count_publish, rnnc_count_wait, rnnc_worker, rnnc_worker_alive,
                           rnnc_worker_awake, rnnc_worker_post, rnnc_worker_start,
                           rnnc_worker_stop, rnnc_worker_wait, rnnc_worker_wake)


cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    GRU = 2
    LSTM = 3


# Most parts a layer splits into (rnnc's own threads: the caller and MAX_PARTS - 1 workers);
# the job descriptions of every part live in the pool, without allocation.
cdef enum:
    MAX_PARTS = 64


cdef inline void project_part(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I, Py_ssize_t nrows,
        const floating* w_ih,     # (GN, I): this part's rows of every gate block, or with
        Py_ssize_t gate_stride,   # > 0 the part's rows of gate 0 inside W_ih, gates this apart
        const floating* w_ih_packed,  # the part's rows in panels, or NULL
        const floating* bias,     # (GN,) this part's folded biases, or NULL
        Py_ssize_t GN, Py_ssize_t nu,
        floating* xg,             # (nrows, GN) out
        bint per_panel) noexcept nogil:   # w_ih_packed: one panel's buffer (project_inputs)
    """This part's gate columns of x @ W_ih^T + bias: with the small-batch kernel on the
    part's packed rows; else one GEMM on the gathered rows, or one per gate block read in
    place (large weights, where the gathered copy costs a pass over them through memory; for
    small ones BLAS packing the inputs once per gate block costs more,
    benchmarks/results/amd-epyc/tuning.md)."""
    cdef Py_ssize_t g
    cdef floating beta = 0
    if gate_stride == 0:    # contiguous rows: the layer kernels' projection
        project_inputs(x, ldx, I, nrows, w_ih, w_ih_packed, bias, <const floating*>NULL, GN,
                       0, xg, per_panel)
        return
    if bias != NULL:
        memcpy(xg, bias, GN * sizeof(floating))
        fill_rows(xg, GN, nrows)
        beta = 1
    if per_panel and w_ih_packed != NULL:
        # Each gate block's rows in place (nu fills whole panels: rnnc/_engine/plan.py).
        for g in range(GN // nu):
            if not small_gemm_packing(nrows, nu, I, x, ldx, w_ih + g * gate_stride, I, beta,
                                      xg + g * nu, GN, <floating*>w_ih_packed):
                break
        else:
            return
    elif small_gemm(nrows, GN, I, x, ldx, w_ih_packed, beta, xg, GN):
        return
    for g in range(GN // nu):
        gemm(False, True, nrows, nu, I, 1, x, ldx, w_ih + g * gate_stride, I, beta,
             xg + g * nu, GN)


# ---------------------------------------------------------------------------------------------
# Projection ahead. A layer too small to split (one step's product too short to repay a barrier)
# runs its time loop on the calling thread, and the helper projects the inputs of the next chunk
# of steps meanwhile: the projection, a large share of such a layer's time, leaves the critical
# path (pipelined_forward_py; benchmarks/results/amd-epyc/tuning.md). Chunks go through a ring of
# two
# buffers: chunk c may be written once the caller is done with chunk c - 2. Both threads take
# chunks from one queue (`next`): the helper takes the next one ahead, the caller takes the
# chunk it needs if the helper has not, and otherwise waits until the helper has written it
# (progress counts, rnnc/_kernels/_barrier.h). So a helper that starts late (or never) costs
# nothing but the caller's own projections, and the results do not depend on which thread
# projected what. The caller starts with chunk 0.
# ---------------------------------------------------------------------------------------------
cdef struct Ahead:
    bint is_double
    const void* x
    Py_ssize_t ldx, I
    const Py_ssize_t* batch_sizes
    const Py_ssize_t* offsets
    Py_ssize_t T, chunk_steps, n_chunks
    bint reverse
    const void* w_ih           # (GN, I)
    const void* w_ih_packed    # its panels
    const void* bias           # (GN,) folded input-side biases, or NULL
    Py_ssize_t GN
    void* ring[2]              # (chunk_steps * B, GN) each
    long next                  # the first chunk no thread has taken
    long written[2]            # 1 + the last chunk the helper wrote into each buffer
    long consumed              # chunks [0, consumed) done with (the caller)


cdef void project_chunk(Ahead* a, Py_ssize_t ci, floating kind) noexcept nogil:
    cdef Py_ssize_t t0 = 0, t1 = 0, row0
    chunk_bounds(ci, a.T, a.chunk_steps, a.reverse, &t0, &t1)
    row0 = a.offsets[t0]
    project_inputs(<const floating*>a.x + row0 * a.ldx, a.ldx, a.I,
                   a.offsets[t1 - 1] + a.batch_sizes[t1 - 1] - row0, <const floating*>a.w_ih,
                   <const floating*>a.w_ih_packed, <const floating*>a.bias,
                   <const floating*>NULL, a.GN, 0, <floating*>a.ring[ci & 1])


cdef void project_ahead(Ahead* a, floating kind) noexcept nogil:
    """The helper's job: the chunks the caller has not taken, in order, into the ring."""
    cdef long ci
    while True:
        ci = rnnc_count_load(&a.next)
        if ci >= a.n_chunks:
            return
        rnnc_count_wait(&a.consumed, ci - 1)      # chunk ci - 2 has left its buffer
        if rnnc_count_claim(&a.next, ci):
            project_chunk(a, ci, kind)
            rnnc_count_publish(&a.written[ci & 1], ci + 1)



cdef void forward_part(
        int mode,
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih,      # (G*nu, I) this part's rows of W_ih, or with
        Py_ssize_t w_ih_gate_stride,  # > 0 its rows of gate 0 in W_ih, the gates this apart
        const floating* w_ih_packed,  # this part's rows of W_ih in panels, or NULL
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
        int* bar, int n_threads,
        Ahead* ahead=NULL,     # whole layer (u0 = 0, nu = H, one thread): the inputs
                               # projected as in pipelined_forward_py
        bint ih_per_panel=False) noexcept nogil:  # w_ih_packed: one panel (project_part)
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
        if ahead == NULL:
            project_part(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                         w_ih, w_ih_gate_stride, w_ih_packed, bias, GN, nu, xg, ih_per_panel)
        else:
            if ci == 0 or rnnc_count_claim(&ahead.next, ci):
                project_chunk(ahead, ci, <floating>0)
            else:                   # the helper took it
                rnnc_count_wait(&ahead.written[ci & 1], ci + 1)
            xg = <floating*>ahead.ring[ci & 1]
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
                recurrent_gemm(b, GN, H, h_cur, H, w_hh, H, w_hh_packed, 0, hg, GN, s & 1)
                gru_pointwise_reset_after_ld(b, nu, gates, hg, b_hn, h_cur + u0, H,
                                             h_next + u0, H, out + offsets[t] * ldo + u0, ldo,
                                             <floating*>NULL)
            else:
                recurrent_gemm(b, GN, H, h_cur, H, w_hh, H, w_hh_packed, 1, gates, GN, s & 1)
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
        if ahead != NULL:
            rnnc_count_publish(&ahead.consumed, ci + 1)
    h_cur = hbuf + cur * B * H
    copy_rows(h + u0, H, h_cur + u0, H, B, nu)
    if mode == LSTM:
        copy_rows(c + u0, H, cpart, nu, B, nu)


cdef void forward_part_fused(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_packed,  # this part's [W_ih | W_hh | b] rows (G*nu, I + H + 1), panels
        Py_ssize_t H, Py_ssize_t u0, Py_ssize_t nu, Py_ssize_t B,
        floating* hbuf, floating* h, floating* c, floating* cpart,
        floating* out, Py_ssize_t ldo,
        floating* xh,              # (B, I + H + 1) workspace: [x<t> | h<t-1> | 1]
        floating* gates,           # (B, 4 nu) workspace
        int* bar, int n_threads) noexcept nogil:
    """forward_part for an LSTM part with one small-kernel product per step for its gate
    columns of x<t> W_ih^T + h<t-1> W_hh^T + b (rnnc/_kernels/_fused.pxd, fused_sequence,
    says when that pays); the whole previous state is copied into xh after each barrier."""
    cdef Py_ssize_t K = I + H + 1, GN = 4 * nu
    cdef Py_ssize_t s, t, b, r, b_prev = 0
    cdef int cur = 0, sense = 0
    cdef floating* h_cur
    cdef floating* h_next
    copy_rows(cpart, nu, c + u0, H, B, nu)
    for r in range(B):
        xh[r * K + I + H] = 1
    for s in range(T):
        t = T - 1 - s if reverse else s
        b = batch_sizes[t]
        if b == 0:
            continue
        h_cur = hbuf + cur * B * H
        h_next = hbuf + (1 - cur) * B * H
        if b < b_prev:      # rows that ended keep their final state in both buffers
            copy_rows(h_next + b * H + u0, H, h_cur + b * H + u0, H, b_prev - b, nu)
        copy_rows(xh, K, x + offsets[t] * ldx, ldx, b, I)
        copy_rows(xh + I, K, h_cur, H, b, H)
        small_gemm(b, GN, K, xh, K, w_packed, 0, gates, GN)
        lstm_pointwise(b, nu, gates, cpart, h_next + u0, H, out + offsets[t] * ldo + u0, ldo)
        if n_threads > 1:
            rnnc_barrier_wait(bar, n_threads, &sense)
        cur = 1 - cur
        b_prev = b
    h_cur = hbuf + cur * B * H
    copy_rows(h + u0, H, h_cur + u0, H, B, nu)
    copy_rows(c + u0, H, cpart, nu, B, nu)


# ---------------------------------------------------------------------------------------------
# Every part in one call: part 0 on the calling thread, part i on the Pool's worker i
# (rnnc/_kernels/_worker.h), which spins between jobs, then sleeps: posting to it costs far less
# than handing a part to a Python thread pool (benchmarks/results/amd-epyc/tuning.md). Each part
# also
# prepares its own weights (gathers its rows of W_ih, packs its rows of W_hh) before its time
# loop, so that this per-call work is shared by the threads instead of done by the caller
# before any starts (LSTM H1024: 32 MB of copies a call).
# ---------------------------------------------------------------------------------------------
cdef struct Part:
    int mode
    bint is_double
    const void* x
    Py_ssize_t ldx, I
    const Py_ssize_t* batch_sizes
    const Py_ssize_t* offsets
    Py_ssize_t T
    bint reverse
    const void* w_ih_src       # (G*H, I) the layer's W_ih
    void* w_ih                 # (G*nu, I) out: this part's rows of it, or NULL (read in place)
    const void* bias
    const void* b_hn
    const void* w_hh_src       # (G*H, H) the layer's W_hh
    void* w_hh                 # (G*nu, H) this part's rows of it, or NULL (packed from w_hh_src)
    void* w_hh_packed          # this part's rows in panels, or NULL (BLAS path: w_hh)
    void* w_ih_packed          # this part's rows of W_ih in panels, or NULL (BLAS projection)
    bint ih_per_panel          # w_ih_packed is one panel's buffer: W_ih is packed panel by
                               # panel as the projection reads it (one chunk, not kept)
    Py_ssize_t G, H, u0, nu, B
    void* hbuf
    void* h
    void* c
    void* cpart
    void* out
    Py_ssize_t ldo
    void* xg
    void* hg
    void* xh                   # (B, I + H + 1) LSTM fused product: w_ih is then the part's
                               # (G*nu, I + H + 1) [W_ih | W_hh | b] rows; else NULL
    Py_ssize_t chunk_steps
    int* bar
    int n_threads              # parts that meet at bar
    bint prepared              # w_ih / w_hh / the panels already hold this part's weights (a
                               # frozen module's, rnnc/_engine/workspace.py): nothing to gather


cdef inline void pack_part_rows(Py_ssize_t G, Py_ssize_t nu, Py_ssize_t K,
                                const floating* gathered,  # (G*nu, K) the part's rows, or NULL
                                const floating* src,       # (G*H, K) the layer's weights
                                Py_ssize_t H, Py_ssize_t u0, floating* out) noexcept nogil:
    """A part's rows of every gate block in panels: from its gathered rows (panels would
    straddle gate blocks), or straight from each gate block of the layer's weights when the
    part's units fill whole panels (gathered == NULL)."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL, g
    if gathered != NULL:
        pack_panels(G * nu, K, gathered, K, 1, out)
        return
    for g in range(G):
        pack_panels(nu, K, src + (g * H + u0) * K, K, 1, out + g * (nu // W) * K * W,
                    G * nu * K * sizeof(floating))


cdef void prepare_and_run(Part* p, floating kind) noexcept nogil:
    """Gather this part's weight rows (and pack them), then run its forward_part."""
    cdef Py_ssize_t G = p.G, H = p.H, I = p.I, u0 = p.u0, nu = p.nu, g
    cdef const floating* w_ih_src = <const floating*>p.w_ih_src
    cdef const floating* w_hh_src = <const floating*>p.w_hh_src
    cdef floating* w_ih = <floating*>p.w_ih
    cdef floating* w_hh = <floating*>p.w_hh
    cdef floating* packed = <floating*>p.w_hh_packed
    cdef floating* ih_packed = <floating*>p.w_ih_packed
    cdef const floating* bias = <const floating*>p.bias
    cdef Py_ssize_t K = I + H + 1, j, r
    if p.xh != NULL:
        for g in range(G if not p.prepared else 0):
            for j in range(nu):
                r = g * nu + j
                memcpy(w_ih + r * K, w_ih_src + (g * H + u0 + j) * I, I * sizeof(floating))
                memcpy(w_ih + r * K + I, w_hh_src + (g * H + u0 + j) * H, H * sizeof(floating))
                w_ih[r * K + I + H] = bias[r] if bias != NULL else 0
        if not p.prepared:
            pack_panels(G * nu, K, w_ih, K, 1, packed)
        forward_part_fused(<const floating*>p.x, p.ldx, I, p.batch_sizes, p.offsets, p.T,
                           p.reverse, packed, H, u0, nu, p.B, <floating*>p.hbuf,
                           <floating*>p.h, <floating*>p.c, <floating*>p.cpart,
                           <floating*>p.out, p.ldo, <floating*>p.xh, <floating*>p.xg, p.bar,
                           p.n_threads)
        return
    # Every gate block's rows of this part's units are contiguous: one copy per gate (W_ih's
    # only when the projection does not read them in place, w_ih == NULL).
    for g in range(G if not p.prepared else 0):
        if w_ih != NULL:
            memcpy(w_ih + g * nu * I, w_ih_src + (g * H + u0) * I, nu * I * sizeof(floating))
        if w_hh != NULL:
            memcpy(w_hh + g * nu * H, w_hh_src + (g * H + u0) * H, nu * H * sizeof(floating))
    if packed != NULL and not p.prepared:
        pack_part_rows(G, nu, H, w_hh, w_hh_src, H, u0, packed)
    if ih_packed != NULL and not p.prepared and not p.ih_per_panel:
        pack_part_rows(G, nu, I, w_ih, w_ih_src, H, u0, ih_packed)
    forward_part(p.mode, <const floating*>p.x, p.ldx, I, p.batch_sizes, p.offsets, p.T,
                 p.reverse, w_ih if w_ih != NULL else w_ih_src + u0 * I,
                 0 if w_ih != NULL else H * I, ih_packed, <const floating*>p.bias,
                 <const floating*>p.b_hn,
                 w_hh, packed, G, H, u0, nu, p.B, <floating*>p.hbuf, <floating*>p.h,
                 <floating*>p.c, <floating*>p.cpart, <floating*>p.out, p.ldo,
                 <floating*>p.xg, <floating*>p.hg, p.chunk_steps, p.bar, p.n_threads, NULL,
                 p.ih_per_panel)


cdef void run_part(Part* p) noexcept nogil:
    if p.is_double:
        prepare_and_run(p, <double>0)
    else:
        prepare_and_run(p, <float>0)


# ---------------------------------------------------------------------------------------------
# Split by batch rows. An LSTM or RNN layer on the fused product (fused_sequence), or a GRU
# (gru_rows_sequence: its n gate needs the state's product apart), with a batch of at least two
# row tiles runs blocks of its rows (n parts) as sequences of their own: rows never
# meet, so the threads share nothing while the steps run -- no barrier, no state crossing
# between the cores each step -- and each reads all the weights from its own cache (the fused
# product's weights fit it; rnnc/_engine/plan.py decides). So a part's time does not depend on
# how far apart the two cores are, where a split by units pays that distance every step
# (benchmarks/results/amd-epyc/tuning.md). Each part runs fused_sequence on its rows: the caller's
# offsets with the part's first row and its own batch sizes. With every part starting at a
# multiple of 4 rows (the kernel's row tiles) the parts give the bits of the one-thread kernel
# (GRU: where each step's rows fill whole tiles, see gru_rows_sequence).
#
# A call does not wait for a worker to start. Each part is claimed by whichever thread gets to
# it first (`taken`): the caller starts with part 0, worker i with part i (so each part and its
# buffers stay with one core from call to call, which is faster than parts changing threads;
# benchmarks/results/amd-epyc/tuning.md), and each goes on to the parts after its own that nobody
# has
# claimed. The caller waits only for parts a worker claimed. So a sleeping worker (slow to
# wake, rnnc/_kernels/_worker.h) is posted all the same: it takes a part if it wakes in time,
# and otherwise finds nothing left, by which time the call may have returned. That is why the
# job lives in the Pool and not on the caller's stack, and why claims name a generation (one a
# call): a worker that wakes during a later call can only claim that call's parts, whose
# descriptions are complete before the generation opens (`open`). Which thread ran a part
# never changes its bits.
# ---------------------------------------------------------------------------------------------
cdef struct Rows:
    int mode                        # LSTM, GRU (reset_after), RNN_TANH or RNN_RELU
    bint is_double
    const void* x                   # the part's first row of the packed input
    Py_ssize_t ldx, I
    const Py_ssize_t* batch_sizes   # the part's active rows at each step
    const Py_ssize_t* offsets       # the layer's
    Py_ssize_t T
    bint reverse
    const void* w_ih                # (G, I) the layer's weights and biases (or NULL)
    const void* w_hh
    const void* b_ih
    const void* b_hh
    void* w_packed                  # [W_ih | W_hh | b_ih + b_hh] in panels: the part's copy;
                                    # GRU: W_ih^T in panels
    void* w_hh_packed               # GRU: W_hh^T in panels, the part's copy; else NULL
    bint prepared                   # the panels hold them already (kept by a frozen module)
    Py_ssize_t H, B                 # B: the part's rows
    void* h                         # (B, H) the part's rows of the state
    void* c                         # (LSTM; else NULL)
    void* cwork                     # (B, H) the part's own copy of c while the steps run: the
                                    # parts' rows of c may share a cache line, written each step
    void* out                       # the part's first row of the output, at its column col0
    Py_ssize_t ldo
    void* xh                        # (B, I + H + 1) the part's workspace (GRU: NULL)
    void* gates                     # (B, G)
    void* hg                        # GRU: (B, 3H) the state's product; else NULL
    void* bias                      # GRU: (3H,) the folded input-side biases, filled by the
                                    # part (NULL without bias); else NULL


cdef struct RowJob:
    Rows parts[MAX_PARTS]
    long n_parts                    # parts of the open generation
    long open                       # the generation whose parts may be claimed
    long taken[MAX_PARTS]           # the last generation of which each part was claimed
    long done[MAX_PARTS]            # the last generation of which each part is done (parts
                                    # a generation does not have: claimed and done at its
                                    # opening, so a late worker can never claim them)


cdef void gru_rows_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_ih_packed,  # W_ih^T in panels (3H columns)
        const floating* w_hh_packed,  # W_hh^T in panels
        const floating* bias,         # (3H,) b_ih + b_hh's r and z parts, or NULL
        const floating* b_hn,         # (H,) b_hh's n part, or NULL
        Py_ssize_t H,
        floating* h,                  # (B, H) state in/out
        floating* out, Py_ssize_t ldo,
        floating* gx,                 # (B, 3H) workspace: the inputs' product
        floating* hg) noexcept nogil:  # (B, 3H) workspace: the state's product
    """A GRU (reset_after) part of a layer split by rows: the one-thread kernel's step
    (gru_sequence) on this part's rows, with each step's inputs projected at that step rather
    than a chunk of steps at once (the part's rows of a chunk are not contiguous). The same
    kernel, bias folding and order of sums as the one-thread kernel, except that the kernel
    sums a row left alone in its last 4-row tile in another order (two chains, even and odd k):
    where the one-thread projection's tiles straddle two steps (batches not a multiple of 4,
    varied lengths), a few results differ in the last bits."""
    cdef Py_ssize_t G = 3 * H, s, t, b, r
    cdef floating beta = 0 if bias == NULL else 1
    for s in range(T):
        t = T - 1 - s if reverse else s
        b = batch_sizes[t]
        if b == 0:
            continue
        if bias != NULL:
            for r in range(b):
                memcpy(gx + r * G, bias, G * sizeof(floating))
        small_gemm(b, G, I, x + offsets[t] * ldx, ldx, w_ih_packed, beta, gx, G)
        small_gemm(b, G, H, h, H, w_hh_packed, 0, hg, G, s & 1)
        gru_pointwise_reset_after(b, H, gx, hg, b_hn, h, out + offsets[t] * ldo, ldo,
                                  <floating*>NULL)


cdef void run_gru_rows(Rows* p, floating kind) noexcept nogil:
    cdef Py_ssize_t G = 3 * p.H, j
    cdef const floating* b_ih = <const floating*>p.b_ih
    cdef const floating* b_hh = <const floating*>p.b_hh
    cdef floating* bias = <floating*>p.bias
    if not p.prepared:
        pack_panels(G, p.I, <const floating*>p.w_ih, p.I, 1, <floating*>p.w_packed)
        pack_panels(G, p.H, <const floating*>p.w_hh, p.H, 1, <floating*>p.w_hh_packed)
    if bias != NULL:    # as project_inputs folds them
        for j in range(G):
            bias[j] = b_ih[j] + (b_hh[j] if j < 2 * p.H else 0)
    gru_rows_sequence(<const floating*>p.x, p.ldx, p.I, p.batch_sizes, p.offsets, p.T,
                      p.reverse, <const floating*>p.w_packed, <const floating*>p.w_hh_packed,
                      bias, b_hh + 2 * p.H if b_hh != NULL else NULL, p.H, <floating*>p.h,
                      <floating*>p.out, p.ldo, <floating*>p.gates, <floating*>p.hg)


cdef void run_rows(Rows* p, floating kind) noexcept nogil:
    if p.mode == GRU:
        run_gru_rows(p, kind)
        return
    if not p.prepared:
        pack_fused(4 * p.H if p.mode == LSTM else p.H, p.I, p.H, <const floating*>p.w_ih,
                   <const floating*>p.w_hh, <const floating*>p.b_ih, <const floating*>p.b_hh,
                   <floating*>p.w_packed)
    if p.mode == LSTM:
        memcpy(p.cwork, p.c, p.B * p.H * sizeof(floating))
    # The split kernels' mode codes are fused_sequence's cell codes (rnnc/_kernels/_fused.pxd).
    fused_sequence(<const floating*>p.x, p.ldx, p.I, p.batch_sizes, p.offsets, p.T, p.reverse,
                   <const floating*>p.w_packed, p.H, p.B, p.mode, <floating*>p.h,
                   <floating*>p.cwork, <floating*>p.out, p.ldo, <floating*>p.xh,
                   <floating*>p.gates)
    if p.mode == LSTM:
        memcpy(p.c, p.cwork, p.B * p.H * sizeof(floating))


cdef void take_rows(RowJob* job, int first) noexcept nogil:
    """Run the parts of the open generation that no thread has claimed, part `first` first,
    then the ones after it (every thread of the split calls this)."""
    cdef long g = rnnc_count_load(&job.open)
    cdef long n = rnnc_count_load(&job.n_parts)
    cdef long i, p
    for i in range(n):
        p = (first + i) % n
        if rnnc_count_claim(&job.taken[p], g - 1):
            if job.parts[p].is_double:
                run_rows(&job.parts[p], <double>0)
            else:
                run_rows(&job.parts[p], <float>0)
            rnnc_count_publish(&job.done[p], g)


# A pool of worker threads and the job descriptions they run, owned by a Pool;
# rnnc/_engine/threads.py makes one per process, sizes it to rnnc's thread setting and lends it
# to one call at a time (split_begin, a lock); the entry points below take it as an argument.
# Worker i (1 <= i < n) runs part i of an n-part job; the caller runs part 0. Each worker is a
# rnnc_worker of its own (rnnc/_kernels/_worker.h: spins briefly after a job, then sleeps), so
# a job posts to exactly the workers it needs and the others stay asleep. job_kind says what
# the posted workers run (set before posting): their split parts (parts[i]), the projection
# ahead (job_ahead, worker 1) or the parts of a row split (rows_job). A row-split call may
# return before a worker has run its job: a call that posts another kind first waits for every
# worker to be done with every earlier post (wait_workers), since those read their job's
# description without a queue.
cdef enum:
    JOB_SPLIT = 0
    JOB_AHEAD = 1
    JOB_ROWS = 2
    JOB_PYTHON = 3      # a Python callable per part (Pool.run_parts), run with the GIL


cdef struct Slot:
    rnnc_worker* worker     # NULL: no thread in this slot
    void* pool              # the PoolState the worker serves
    int index               # the part it runs
    bint has_thread_state   # the worker has a Python thread state of its own
    bint retire             # its next job: drop its Python thread state (it is being stopped)


cdef struct PoolState:
    int n_workers                   # slots [1, n_workers] hold running workers
    Slot slots[MAX_PARTS]           # slot 0 unused: part 0 is the caller's
    Part parts[MAX_PARTS]
    Ahead* job_ahead
    RowJob rows_job
    int job_kind
    void* owner             # the Pool (borrowed): JOB_PYTHON's callables and their errors


cdef class Pool


cdef void wait_workers(PoolState* s, int first, int last) noexcept nogil:
    """Wait until workers [first, last] are done with every post."""
    cdef int i
    for i in range(first, last + 1):
        rnnc_worker_wait(s.slots[i].worker)


cdef void post_workers(PoolState* s, int n_parts) noexcept nogil:
    """Post the job to the workers of parts [1, n_parts)."""
    cdef int i
    for i in range(1, n_parts):
        rnnc_worker_post(s.slots[i].worker)


cdef void retire_python(Slot* slot) noexcept nogil:
    """Drop this worker's Python thread state (made by run_python) before its thread ends:
    take the GIL with it, then release the state's last hold, which deletes it."""
    cdef PyThreadState* tstate
    if slot.has_thread_state:
        tstate = PyGILState_GetThisThreadState()
        PyEval_RestoreThread(tstate)
        PyGILState_Release(PyGILState_UNLOCKED)
        slot.has_thread_state = False


cdef void run_python(PoolState* s, Slot* slot) noexcept nogil:
    """Call the owner's callable of this worker's part with the GIL. The thread keeps one
    Python thread state for its life (made on its first Python job, the GIL then released), so
    that what Python keeps per thread (threading.local scratch buffers) lasts from one job to
    the next."""
    cdef PyGILState_STATE ignored
    if not slot.has_thread_state:
        ignored = PyGILState_Ensure()
        PyEval_SaveThread()
        slot.has_thread_state = True
    with gil:
        (<Pool>s.owner).call_job(slot.index)


cdef void worker_job(void* arg) noexcept nogil:
    cdef Slot* slot = <Slot*>arg
    cdef PoolState* s = <PoolState*>slot.pool
    if slot.retire:
        retire_python(slot)
    elif s.job_kind == JOB_ROWS:
        take_rows(&s.rows_job, slot.index)
    elif s.job_kind == JOB_PYTHON:
        run_python(s, slot)
    elif s.job_kind == JOB_AHEAD:
        if s.job_ahead.is_double:
            project_ahead(s.job_ahead, <double>0)
        else:
            project_ahead(s.job_ahead, <float>0)
    else:
        run_part(&s.parts[slot.index])


cdef class Pool:
    """Compiled worker threads (rnnc/_kernels/_worker.h) and the job descriptions they run.
    Sized by ready(); one caller at a time may use it (rnnc/_engine/threads.py lends it)."""
    cdef PoolState s
    cdef list jobs              # JOB_PYTHON: the callables of parts 1.., and what they raised
    cdef list errors

    def __cinit__(self):
        memset(&self.s, 0, sizeof(PoolState))
        self.s.job_kind = JOB_SPLIT
        self.s.owner = <void*>self
        self.jobs = []
        self.errors = []

    cdef void call_job(self, int index) noexcept:
        try:
            self.jobs[index]()
        except BaseException as exc:    # re-raised by run_parts on the caller's thread
            self.errors[index] = exc

    def run_parts(self, callables):
        """callables[0]() on the calling thread and callables[i]() on worker i, concurrently;
        returns when all are done, raising what the first of them raised. The caller holds
        the pool, and it has a worker for each part but the first (ready()). The workers'
        parts are posted before the first starts, so kernels that wait for each other at a
        barrier never find a partner missing; all must release the GIL while they wait."""
        cdef int n = len(callables)
        running_state(self, n - 1, "run_parts")
        with nogil:
            wait_workers(&self.s, 1, self.s.n_workers)   # done with earlier posts (rows')
        self.jobs = list(callables)
        self.errors = [None] * n
        self.s.job_kind = JOB_PYTHON
        try:
            with nogil:
                post_workers(&self.s, n)
            callables[0]()
        finally:
            with nogil:
                wait_workers(&self.s, 1, n - 1)
            errors = [e for e in self.errors if e is not None]
            self.jobs, self.errors = [], []
        if errors:
            raise errors[0]

    def ready(self, int workers=1):
        """Run exactly `workers` worker threads (at most MAX_PARTS - 1): start the missing
        ones (first use, more threads, a copy made by fork, whose threads are not in this
        process) and stop the others. False if one could not be started (the caller then
        runs the layer on one thread)."""
        cdef int i, n = max(0, min(workers, MAX_PARTS - 1))
        cdef Slot* slot
        for i in range(1, MAX_PARTS):       # a forked copy: its workers are only freed
            slot = &self.s.slots[i]
            if slot.worker != NULL and not rnnc_worker_alive(slot.worker):
                rnnc_worker_stop(slot.worker)
                slot.worker = NULL
                slot.has_thread_state = False
        for i in range(n + 1, MAX_PARTS):
            self._stop(i)
        self.s.n_workers = 0
        for i in range(1, n + 1):
            slot = &self.s.slots[i]
            if slot.worker == NULL:
                slot.pool = <void*>&self.s
                slot.index = i
                slot.has_thread_state = slot.retire = False
                slot.worker = rnnc_worker_start(worker_job, slot)
                if slot.worker == NULL:
                    return False
            self.s.n_workers = i
        return True

    cdef void _stop(self, int i):
        """Stop worker i after its posts: it first drops its Python thread state (the GIL is
        released while it does)."""
        cdef Slot* slot = &self.s.slots[i]
        if slot.worker == NULL:
            return
        with nogil:
            rnnc_worker_wait(slot.worker)
            if slot.has_thread_state:
                slot.retire = True
                rnnc_worker_post(slot.worker)
                rnnc_worker_wait(slot.worker)
            rnnc_worker_stop(slot.worker)
        slot.worker = NULL
        slot.retire = slot.has_thread_state = False

    @property
    def size(self):
        """Worker threads running in this process."""
        cdef int i, n = 0
        for i in range(1, MAX_PARTS):
            if self.s.slots[i].worker != NULL and rnnc_worker_alive(self.s.slots[i].worker):
                n += 1
        return n

    @property
    def running(self):
        """A worker thread runs in this process."""
        return self.size > 0

    def __dealloc__(self):
        # The threads read this object's descriptions: done with every post, then stopped.
        cdef int i
        for i in range(1, MAX_PARTS):
            if self.s.slots[i].worker == NULL:
                continue
            with nogil:
                if rnnc_worker_alive(self.s.slots[i].worker):
                    rnnc_worker_wait(self.s.slots[i].worker)
                rnnc_worker_stop(self.s.slots[i].worker)
            self.s.slots[i].worker = NULL


cdef PoolState* running_state(Pool pool, int workers, str name) except NULL:
    """pool's state, which the caller holds; it must run at least `workers` workers."""
    cdef int i
    if workers > MAX_PARTS - 1:
        raise ValueError(f"{name}: at most {MAX_PARTS} parts, got {workers + 1}")
    if pool.s.n_workers < workers:
        raise RuntimeError(f"{name}: the pool runs {pool.s.n_workers} worker threads, "
                           f"{workers} needed (call its ready() first)")
    for i in range(1, workers + 1):
        if not rnnc_worker_alive(pool.s.slots[i].worker):
            raise RuntimeError(f"{name}: the pool's worker threads are not running (call "
                               "its ready() first)")
    return &pool.s


cdef inline void* data_or_null(const char* data, Py_ssize_t size) noexcept:
    return <void*>data if size > 0 else NULL


# ---------------------------------------------------------------------------------------------
# The entry points take one job description each, filled by the plan's runner (attribute
# assignment, or keywords to the constructor): the arrays of the layer and of each part. The
# fillers below (describe_part, describe_rows, describe_ahead) turn them into the nogil structs
# above (Part, Rows, Ahead), checking each array's dtype, rank and contiguity as they go.
# ---------------------------------------------------------------------------------------------
cdef class _Described:
    """Attributes settable by keyword: Job(x=..., h=...)."""

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


cdef class SplitPart(_Described):
    """One part's arrays of a split by units (split_forward_py): bias its folded biases, b_hn
    its GRU b_hn, w_ih its (G*nu, I) rows to fill (zero-size: the projection reads W_ih's gate
    blocks in place), w_hh its (G*nu, H) rows to fill or zero-size when packed is packed
    straight from W_hh, packed its rows of W_hh in panels (zero-size: the BLAS path),
    ih_packed its rows of W_ih in panels to fill (packed from w_ih when that is not zero-size,
    else from W_ih's gate blocks, whole panels each) or zero-size for a BLAS projection;
    cpart (B, nu) LSTM cell workspace, xg (chunk_steps * B, G*nu), hg (B, G*nu) GRU, and
    xh (B, I + H + 1) LSTM fused product (w_ih is then (G*nu, I + H + 1), packed its panels,
    and bias goes into its last column). Zero-size arrays mean none."""
    cdef public object bias, b_hn, w_ih, w_hh, packed, ih_packed, cpart, xg, hg, xh


cdef class SplitJob(_Described):
    """A layer and direction split by units (split_forward_py) into n parts: units
    [bounds[i], bounds[i + 1]) are parts[i]'s (bounds rise from 0 to H). mode: 0 RNN tanh,
    1 RNN relu, 2 GRU (reset_after), 3 LSTM. x (N, I) the packed input, batch_sizes and
    offsets its layout, w_ih (G*H, I) and w_hh (G*H, H) the layer's weights, hbuf (2, B, H)
    both = h on entry, h (B, H) and c (B, H, LSTM; else zero-size) the state in/out, out the
    output at columns col0, bar a zeroed int32 barrier. prepared: the parts' w_ih, w_hh,
    packed and ih_packed already hold what this call would fill (kept from an earlier call on
    the same weights); the parts skip filling them. ih_per_panel: each part's ih_packed is one
    panel's buffer, (1, I, W), which the projection fills panel by panel as it goes (one chunk
    of steps: W_ih is read once); not with prepared."""
    cdef public int mode
    cdef public object x, batch_sizes, offsets, w_ih, w_hh, hbuf, h, c, out, bar
    cdef public bint reverse, prepared, ih_per_panel
    cdef public Py_ssize_t col0, chunk_steps
    cdef public object bounds, parts

    def __init__(self, **fields):
        self.bounds, self.parts = (), []
        _Described.__init__(self, **fields)


cdef class AheadJob(_Described):
    """A layer and direction run on one thread with the inputs projected ahead
    (pipelined_forward_py). Shapes as in SplitJob with one part of all H units: w_ih (G*H, I)
    and w_hh (G*H, H) with their panels w_ih_packed, w_hh_packed (the small-batch kernel: both
    required), bias (G*H,) folded (zero-size: none), b_hn (H,) GRU or zero-size, hbuf
    (2, B, H) both = h on entry, cpart (B, H) LSTM workspace, ring (2, chunk_steps * B, G*H),
    hg (B, G*H) GRU workspace."""
    cdef public int mode
    cdef public object x, batch_sizes, offsets, w_ih, w_ih_packed, bias, b_hn, w_hh
    cdef public object w_hh_packed, hbuf, h, c, cpart, out, ring, hg
    cdef public bint reverse
    cdef public Py_ssize_t col0, chunk_steps


cdef class RowsPart(_Described):
    """One part's arrays of a split by rows (rows_forward_py): batch_sizes its active rows at
    every step (the layout's, clipped to the part), packed its copy of the fused weights in
    panels (GRU: W_ih^T's), xh (rows, I + H + 1), gates (rows, G) and cwork (rows, H, LSTM)
    workspace; GRU: packed_hh its copy of W_hh^T's panels, hg (rows, 3H) and bias (3H,)
    (zero-size without bias) workspace. Zero-size arrays mean none."""
    cdef public object batch_sizes, packed, xh, gates, cwork, packed_hh, hg, bias


cdef class RowsJob(_Described):
    """A layer and direction split by batch rows (rows_forward_py) into n parts: rows
    [bounds[i], bounds[i + 1]) are parts[i]'s (bounds rise from 0 to B). Arrays as
    lstm_fused_forward's, plus the layer's weights (zero-size b_ih / b_hh: none); c zero-size
    for GRU and RNN. prepared: the parts' packed copies hold the weights already (kept from an
    earlier call by a frozen module)."""
    cdef public int mode
    cdef public object x, offsets, w_ih, w_hh, b_ih, b_hh, h, c, out
    cdef public bint reverse, prepared
    cdef public Py_ssize_t col0
    cdef public object bounds, parts

    def __init__(self, **fields):
        self.bounds, self.parts = (), []
        _Described.__init__(self, **fields)


cdef inline bint is_double(object array):
    return array.dtype.char == 'd'


cdef int describe_part(Part* q, SplitJob job, SplitPart part, Py_ssize_t u0, Py_ssize_t nu,
                       int n_threads, floating kind) except -1:
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[::1] bias = part.bias
    cdef const floating[::1] b_hn = part.b_hn
    cdef floating[:, ::1] w_ih_part = part.w_ih
    cdef floating[:, ::1] w_hh_part = part.w_hh
    cdef floating[:, :, ::1] packed = part.packed
    cdef floating[:, :, ::1] ih_packed = part.ih_packed
    cdef floating[:, :, ::1] hbuf = job.hbuf
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] c = job.c
    cdef floating[:, ::1] cpart = part.cpart
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] xg = part.xg
    cdef floating[:, ::1] hg = part.hg
    cdef floating[:, ::1] xh = part.xh
    cdef int[::1] bar = job.bar
    if job.ih_per_panel:
        check_one_panel(ih_packed, x.shape[1], "split_forward_py")
    q.mode = job.mode
    q.prepared = job.prepared
    q.ih_per_panel = job.ih_per_panel
    q.is_double = floating is double
    q.x = &x[0, 0]
    q.ldx = x.shape[1]
    q.I = x.shape[1]
    q.batch_sizes = &batch_sizes[0]
    q.offsets = &offsets[0]
    q.T = batch_sizes.shape[0]
    q.reverse = job.reverse
    q.w_ih_src = &w_ih[0, 0]
    q.w_ih = data_or_null(<const char*>w_ih_part._data, w_ih_part.shape[0])
    q.bias = data_or_null(<const char*>bias._data, bias.shape[0])
    q.b_hn = data_or_null(<const char*>b_hn._data, b_hn.shape[0])
    q.w_hh_src = &w_hh[0, 0]
    q.w_hh = data_or_null(<const char*>w_hh_part._data, w_hh_part.shape[0])
    q.w_hh_packed = data_or_null(<const char*>packed._data, packed.shape[0])
    q.w_ih_packed = data_or_null(<const char*>ih_packed._data, ih_packed.shape[0])
    q.G = w_ih.shape[0] // h.shape[1]
    q.H = h.shape[1]
    q.u0 = u0
    q.nu = nu
    q.B = h.shape[0]
    q.hbuf = &hbuf[0, 0, 0]
    q.h = &h[0, 0]
    q.c = data_or_null(<const char*>c._data, c.shape[0])
    q.cpart = data_or_null(<const char*>cpart._data, cpart.shape[0])
    q.out = &out[0, job.col0]
    q.ldo = out.shape[1]
    q.xg = &xg[0, 0]
    q.hg = data_or_null(<const char*>hg._data, hg.shape[0])
    q.xh = data_or_null(<const char*>xh._data, xh.shape[0])
    q.chunk_steps = job.chunk_steps
    q.bar = &bar[0]
    q.n_threads = n_threads
    return 0


cdef list checked_bounds(object bounds, Py_ssize_t end, Py_ssize_t n_parts, str name,
                         str what):
    """bounds as ints, checked: they rise from 0 to end, one part between each two."""
    cdef list b = [int(v) for v in bounds]
    if (len(b) < 2 or len(b) != n_parts + 1 or b[0] != 0 or b[len(b) - 1] != end
            or any(b[i] >= b[i + 1] for i in range(len(b) - 1))):
        raise ValueError(f"{name}: bounds must rise from 0 to {end} ({what}), one part between "
                         f"each two; got {b} for {n_parts} parts")
    return b


def split_forward_py(SplitJob job not None, Pool pool not None):
    """One layer and direction, inference, split by units: part 0 on this thread and part i on
    the pool's worker i, which the caller holds (its ready() must have returned True for at
    least n - 1 workers). rnnc._engine.runners.units validates and allocates everything (see
    SplitJob and SplitPart). The job's arrays must stay unchanged until the call returns."""
    cdef Py_ssize_t H = job.h.shape[1]
    cdef list bounds = checked_bounds(job.bounds, H, len(job.parts), "split_forward_py",
                                      "hidden_size")
    cdef int n = len(bounds) - 1, i
    if job.ih_per_panel and job.prepared:
        raise ValueError("split_forward_py: ih_per_panel packs W_ih as it goes; prepared "
                         "weights are packed already")
    if job.batch_sizes.shape[0] == 0 or job.x.shape[0] == 0 or job.h.shape[0] == 0:
        return
    cdef PoolState* s = running_state(pool, n - 1, "split_forward_py")
    with nogil:
        wait_workers(s, 1, s.n_workers)   # done with earlier posts (a row split's may be pending)
    cdef Py_ssize_t u0, nu
    cdef bint double = is_double(job.x)
    cdef SplitPart part
    for i in range(n):      # no worker reads the parts until they are posted
        u0, nu, part = bounds[i], bounds[i + 1] - bounds[i], job.parts[i]
        if double:
            describe_part(&s.parts[i], job, part, u0, nu, n, <double>0)
        else:
            describe_part(&s.parts[i], job, part, u0, nu, n, <float>0)
    s.job_kind = JOB_SPLIT
    with nogil:
        post_workers(s, n)
        run_part(&s.parts[0])
        wait_workers(s, 1, n - 1)


cdef int describe_ahead(Ahead* a, AheadJob job, floating kind) except -1:
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef const floating[::1] bias = job.bias
    cdef floating[:, :, ::1] ring = job.ring
    a.is_double = floating is double
    a.x = &x[0, 0]
    a.ldx = x.shape[1]
    a.I = x.shape[1]
    a.batch_sizes = &batch_sizes[0]
    a.offsets = &offsets[0]
    a.T = batch_sizes.shape[0]
    a.chunk_steps = job.chunk_steps
    a.n_chunks = (a.T + job.chunk_steps - 1) // job.chunk_steps
    a.reverse = job.reverse
    a.w_ih = &w_ih[0, 0]
    a.w_ih_packed = &w_ih_packed[0, 0, 0]
    a.bias = data_or_null(<const char*>bias._data, bias.shape[0])
    a.GN = (job.w_hh.shape[0] // job.h.shape[1]) * job.h.shape[1]    # G * H
    a.ring[0] = &ring[0, 0, 0]
    a.ring[1] = &ring[1, 0, 0]
    a.next = 1
    a.written[0] = 0
    a.written[1] = 0
    a.consumed = 0
    return 0


cdef int run_ahead(Ahead* a, AheadJob job, PoolState* s, floating kind) except -1:
    """pipelined_forward_py's time loop on this thread, a described; s: the pool's state (its
    worker 1 projects ahead), or NULL (no pool)."""
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = job.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, :, ::1] w_ih_packed = job.w_ih_packed
    cdef const floating[::1] b_hn = job.b_hn
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[:, :, ::1] w_hh_packed = job.w_hh_packed
    cdef floating[:, :, ::1] hbuf = job.hbuf
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] c = job.c
    cdef floating[:, ::1] cpart = job.cpart
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] hg = job.hg
    cdef Py_ssize_t H = h.shape[1], G = w_hh.shape[0] // h.shape[1], col0 = job.col0
    cdef Py_ssize_t chunk_steps = job.chunk_steps
    cdef int mode = job.mode
    cdef bint reverse = job.reverse
    cdef const floating* pb_hn = <const floating*>data_or_null(<const char*>b_hn._data,
                                                               b_hn.shape[0])
    cdef floating* pc = <floating*>data_or_null(<const char*>c._data, c.shape[0])
    cdef floating* pcpart = <floating*>data_or_null(<const char*>cpart._data, cpart.shape[0])
    cdef floating* phg = <floating*>data_or_null(<const char*>hg._data, hg.shape[0])
    # Only an awake helper gets the job (waking a sleeping one can take longer than this layer,
    # rnnc/_kernels/_worker.h); a sleeping one is woken for the calls that follow, and this
    # call projects every chunk.
    cdef bint post = s != NULL and rnnc_worker_awake(s.slots[1].worker)
    if s != NULL and not post:
        rnnc_worker_wake(s.slots[1].worker)
    if post:                # only the caller that holds the pool touches its job
        with nogil:
            wait_workers(s, 1, s.n_workers)   # done with earlier posts (a row split's)
        s.job_kind = JOB_AHEAD
        s.job_ahead = a
    with nogil:
        if post:
            post_workers(s, 2)
        forward_part(mode, &x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], a.T,
                     reverse, &w_ih[0, 0], 0, &w_ih_packed[0, 0, 0], <const floating*>a.bias,
                     pb_hn, &w_hh[0, 0], &w_hh_packed[0, 0, 0], G, H, 0, H, h.shape[0],
                     &hbuf[0, 0, 0], &h[0, 0], pc, pcpart, &out[0, col0], out.shape[1],
                     <floating*>NULL, phg, chunk_steps, <int*>NULL, 1, a)
        if post:
            wait_workers(s, 1, 1)
    if post:
        s.job_ahead = NULL
    return 0


def pipelined_forward_py(AheadJob job not None, Pool pool):
    """One layer and direction, inference, on this thread, with the pool's worker 1 projecting
    the next chunk of steps' inputs ahead (see Ahead) when a pool is given (the caller holds
    it: its ready() returned True) and the worker is awake; None, or else this thread projects
    every chunk,
    which gives the same results. See AheadJob for the arrays.
    mode: 0 RNN tanh, 1 RNN relu, 2 GRU (reset_after), 3 LSTM (no projection)."""
    if job.batch_sizes.shape[0] == 0 or job.x.shape[0] == 0 or job.h.shape[0] == 0:
        return
    if job.w_ih_packed.shape[0] == 0 or job.w_hh_packed.shape[0] == 0:
        raise ValueError("pipelined_forward_py: w_ih_packed and w_hh_packed are required")
    cdef PoolState* s = NULL
    if pool is not None:
        s = running_state(pool, 1, "pipelined_forward_py")
    cdef Ahead ahead
    if is_double(job.x):
        describe_ahead(&ahead, job, <double>0)
        run_ahead(&ahead, job, s, <double>0)
    else:
        describe_ahead(&ahead, job, <float>0)
        run_ahead(&ahead, job, s, <float>0)


cdef int describe_rows(Rows* q, RowsJob job, RowsPart part, Py_ssize_t row0, Py_ssize_t nrows,
                       floating kind) except -1:
    cdef const floating[:, ::1] x = job.x
    cdef const Py_ssize_t[::1] batch_sizes = part.batch_sizes
    cdef const Py_ssize_t[::1] offsets = job.offsets
    cdef const floating[:, ::1] w_ih = job.w_ih
    cdef const floating[:, ::1] w_hh = job.w_hh
    cdef const floating[::1] b_ih = job.b_ih
    cdef const floating[::1] b_hh = job.b_hh
    cdef floating[:, :, ::1] w_packed = part.packed
    cdef floating[:, ::1] h = job.h
    cdef floating[:, ::1] c = job.c
    cdef floating[:, ::1] out = job.out
    cdef floating[:, ::1] xh = part.xh
    cdef floating[:, ::1] gates = part.gates
    cdef floating[:, ::1] cwork = part.cwork
    cdef floating[:, :, ::1] packed_hh
    cdef floating[:, ::1] hg
    cdef floating[::1] bias
    q.w_hh_packed = q.hg = q.bias = NULL
    if job.mode == GRU:
        if part.packed_hh is None or part.hg is None or part.bias is None:
            raise ValueError("rows_forward_py: GRU needs each part's packed_hh, hg and bias")
        packed_hh = part.packed_hh
        hg = part.hg
        bias = part.bias
        q.w_hh_packed = &packed_hh[0, 0, 0]
        q.hg = &hg[0, 0]
        q.bias = data_or_null(<const char*>bias._data, bias.shape[0])
    q.mode = job.mode
    q.is_double = floating is double
    q.ldx = x.shape[1]
    q.I = x.shape[1]
    q.x = &x[0, 0] + row0 * q.ldx
    q.batch_sizes = &batch_sizes[0]
    q.offsets = &offsets[0]
    q.T = batch_sizes.shape[0]
    q.reverse = job.reverse
    q.w_ih = &w_ih[0, 0]
    q.w_hh = &w_hh[0, 0]
    q.b_ih = data_or_null(<const char*>b_ih._data, b_ih.shape[0])
    q.b_hh = data_or_null(<const char*>b_hh._data, b_hh.shape[0])
    q.w_packed = &w_packed[0, 0, 0]
    q.prepared = job.prepared
    q.H = h.shape[1]
    q.B = nrows
    q.h = &h[0, 0] + row0 * q.H
    q.c = &c[0, 0] + row0 * q.H if c.shape[0] > 0 else NULL
    q.ldo = out.shape[1]
    q.out = &out[0, job.col0] + row0 * q.ldo
    q.xh = data_or_null(<const char*>xh._data, xh.shape[0])
    q.gates = &gates[0, 0]
    q.cwork = &cwork[0, 0] if cwork.shape[0] > 0 else NULL
    return 0


def rows_forward_py(RowsJob job not None, Pool pool):
    """One LSTM (mode 3), GRU (2, reset_after) or RNN (0 tanh, 1 relu) layer and direction,
    inference without projection, its batch rows split into n parts (job.bounds) run as
    sequences of their own: part 0 on this thread, part i on the pool's worker i when a pool
    is given (the caller holds it) and the worker claims it in time, else (or with None, or
    beyond the pool's workers) on this thread too; the results are the same (see RowJob). See
    RowsJob and RowsPart for the arrays. GRU (gru_rows_sequence): each part's packed holds
    W_ih^T's panels and packed_hh W_hh^T's; its xh, c and cwork are zero-size."""
    cdef Py_ssize_t B = job.h.shape[0]
    cdef list bounds = checked_bounds(job.bounds, B, len(job.parts), "rows_forward_py",
                                      "the batch")
    cdef int n = len(bounds) - 1, i
    if n > MAX_PARTS:
        raise ValueError(f"rows_forward_py: at most {MAX_PARTS} parts, got {n}")
    if job.parts[0].batch_sizes.shape[0] == 0 or job.x.shape[0] == 0:
        return
    cdef PoolState* s = NULL
    if pool is not None:
        s = running_state(pool, 0, "rows_forward_py")
    cdef RowJob alone           # without the pool: this call's own queue
    cdef RowJob* q = &s.rows_job if s != NULL else &alone
    cdef long g
    if s == NULL:
        memset(&alone, 0, sizeof(RowJob))
    # The previous generation is closed (all its parts claimed and done): nobody reads the
    # parts until the next opens, and none can be claimed before.
    g = q.open + 1
    cdef Py_ssize_t row0, nrows
    cdef bint double = is_double(job.x)
    cdef RowsPart part
    for i in range(n):
        row0, nrows, part = bounds[i], bounds[i + 1] - bounds[i], job.parts[i]
        if double:
            describe_rows(&q.parts[i], job, part, row0, nrows, <double>0)
        else:
            describe_rows(&q.parts[i], job, part, row0, nrows, <float>0)
    for i in range(n, MAX_PARTS):
        rnnc_count_publish(&q.taken[i], g)
        rnnc_count_publish(&q.done[i], g)
    rnnc_count_publish(&q.n_parts, n)
    rnnc_count_publish(&q.open, g)
    if s != NULL:
        s.job_kind = JOB_ROWS
    with nogil:
        if s != NULL:
            post_workers(s, min(n, s.n_workers + 1))
        take_rows(q, 0)
        for i in range(n):
            rnnc_count_wait(&q.done[i], g)


include "_configure.pxi"
