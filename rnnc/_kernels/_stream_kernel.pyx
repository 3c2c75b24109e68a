"""Streaming: one time step of a stacked, unidirectional RNN / GRU / LSTM per call.

Calling a layer with T = 1 pays on every step for what a sequence pays once: input checks and
conversion, the packed layout, bias folding, weight packing, a dozen memoryview arguments per
kernel call, several times the arithmetic of a small step (benchmarks/results/amd-epyc/tuning.md). A
StreamKernel is bound once to buffers that rnnc/stream.py allocates and fills (weight copies,
packed weight panels, folded biases, states, workspace); it keeps raw pointers to them, so a step
only checks x with NumPy's C macros, allocates the output and runs the layers with the GIL
released.

One step, per layer (the next layer's input is this layer's new h):
- every mode: gates = bias; gates += x @ W_ih^T (bias: b_ih + b_hh, folded where the gate math
  allows it, as in the sequence kernels);
- RNN, LSTM: gates += h @ W_hh^T, then the pointwise update of rnnc/_kernels/_cell_math.pxd; with
  proj_size, h = (o * tanh(c)) @ W_hr^T;
- GRU reset_after: hg = h @ W_hh^T, then gru_pointwise_reset_after (adds b_hn inside r * (.));
- GRU reset_after=False: hg[:, :2H] = h @ [W_hr; W_hz]^T, r * h, hg[:, 2H:] = (r * h) @ W_hn^T.
The input and recurrent products are two calls, not one over [x | h] stacked along K: the
same bytes of weights are read either way, and two calls need no copy of x.

Two threads (rnnc/_engine/plan.py, make_stream_plan, decides): the hidden units of every layer
are split in two halves; the helper thread of rnnc/_kernels/_worker.h computes the second half's
gate columns, state update and output while the caller computes the first, so each core reads
half the weights from its own L2. One spinning barrier between layers (the next layer reads
all of the new state); the new state goes to h_next, and the caller copies it into h once it
has waited for the helper's half (neither half may overwrite h while the other still reads it),
so the last layer needs no barrier: one sync point a step for a one-layer stream instead of
two.

Products: float32 on AVX-512 CPUs: the packed small-batch kernel of rnnc/_kernels/_small_gemm.h
(recurrent_gemm with packed weights); otherwise BLAS (make_stream_plan decides). At batch 1 a
step is bound by reading the weights from L2 once (LSTM H128 I128: 512 KB); the gate math and
the call itself (checks, output array, GIL) add little. Releasing the GIL costs a small fraction
of a step, so it is released, as in every other kernel (benchmarks/results/amd-epyc/tuning.md).
"""
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cython cimport floating
from libc.string cimport memcpy, memset

from rnnc._kernels._blas cimport recurrent_gemm, rnnc_sgemm_small_bias
from rnnc._kernels._cell_math cimport (gru_pointwise_reset_after, gru_pointwise_reset_after_ld,
                              gru_reset_gate_before, gru_update_before, lstm_pointwise,
                              rnn_pointwise, rnn_pointwise_ld)


from rnnc._kernels._worker cimport (rnnc_barrier_wait, rnnc_prefetch_lines, rnnc_worker,
                           rnnc_worker_alive, rnnc_worker_awake, rnnc_worker_post,
                           rnnc_worker_start, rnnc_worker_stop, rnnc_worker_wait,
                           rnnc_worker_wake)

import numpy as np

cnp.import_array()

cdef enum:
    MODE_RNN = 0
    MODE_GRU = 1
    MODE_LSTM = 2

_MODES = {"RNN": MODE_RNN, "GRU": MODE_GRU, "LSTM": MODE_LSTM}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


cdef struct StreamLayer:
    # Pointers into arrays owned by the Python Stream (kept alive by StreamKernel._owned).
    # Weights are of the kernel's dtype; *_packed are float32 panels (_small_gemm.h) or NULL.
    Py_ssize_t in_size        # input width: input_size for layer 0, P above
    const void* w_ih          # (G*H, I)
    const void* w_hh          # (G*H, P)
    const void* w_hr          # (P, H), or NULL (no projection)
    const void* w_ih_packed   # W_ih^T panels, or NULL (BLAS)
    const void* w_hh_packed   # W_hh^T panels (GRU reset_after=False: rows [0, 2H) only)
    const void* w_hn_packed   # GRU reset_after=False: W_hn^T panels, else NULL
    const void* w_hr_packed   # W_hr^T panels, or NULL
    const void* bias          # (G*H,) folded bias, or NULL (bias=False)
    const void* b_hn          # (H,) GRU reset_after with bias, else NULL
    void* h                   # (B, P) state, in/out
    void* c                   # (B, H) LSTM cell state, in/out, else NULL
    void* gates               # (B, G*H) workspace
    void* hg                  # (B, G*H) workspace (GRU), else NULL
    void* tmp                 # (B, H) workspace: o * tanh(c) (LSTM proj), r * h (GRU before)
    void* h_next              # (B, H) next state, when steps are split between threads


cdef struct StreamPart:
    # One thread's share of a layer whose hidden units are split between two threads: the
    # rows of every gate that feed units [u0, u0 + nu), and its own workspace.
    Py_ssize_t u0, nu
    const void* w_ih          # (G*nu, I) its rows of W_ih (BLAS path)
    const void* w_hh          # (G*nu, H) its rows of W_hh (BLAS path)
    const void* w_ih_packed   # the same in panels, or NULL (BLAS)
    const void* w_hh_packed
    const void* bias          # (G*nu,) folded bias, or NULL
    const void* b_hn          # (nu,) GRU reset_after with bias, else NULL
    void* gates               # (B, G*nu) workspace
    void* hg                  # (B, G*nu) GRU workspace, else NULL


cdef struct SplitStep:
    # What both threads of a split step read: set by the owner before it posts the step.
    const void* x
    void* y
    const StreamLayer* layers
    const StreamPart* parts   # (L, 2)
    Py_ssize_t L, B, H, n_in
    int mode, typenum
    bint use_relu
    int bar[32]               # the per-layer barrier (_barrier.h), its own cache lines
    int sense[2]              # each thread's barrier sense, kept across steps
    bint flip                 # alternates every step (see split_part_step)


cdef inline void gates_product(Py_ssize_t B, Py_ssize_t N, Py_ssize_t K, const floating* a,
                               const floating* w, const floating* w_packed,
                               const floating** bias, floating* beta, floating* gates,
                               bint flip) noexcept nogil:
    """gates (B, N) = beta * gates + a @ w^T, then beta = 1. The step's first product into
    gates gets the folded bias (bias[0], then set to NULL; with beta 0): on the packed float32
    kernel its accumulators start from it, which saves a pass laying it into every row first
    (same sums, same bits; benchmarks/results/amd-epyc/tuning.md)."""
    cdef Py_ssize_t r
    cdef const floating* b = bias[0]
    cdef floating beta_in = beta[0]
    beta[0] = 1
    bias[0] = NULL
    if b != NULL:
        if floating is float:
            if w_packed != NULL and rnnc_sgemm_small_bias(B, N, K, a, K, w_packed, b, gates,
                                                          N, flip):
                return
        for r in range(B):
            memcpy(gates + r * N, b, N * sizeof(floating))
        beta_in = 1
    recurrent_gemm(B, N, K, a, K, w, K, w_packed, beta_in, gates, N, flip)


cdef void split_part_step(const floating* x, floating* y, SplitStep* job, int p) noexcept nogil:
    """Part p of one step: every layer's gate columns of units [u0, u0 + nu), then the state
    update of those units into h_next (the other part reads h: finish_split_step copies
    h_next into h after both parts are done).
    GRU here is PyTorch's form (reset_after) and LSTM has no projection
    (rnnc/_engine/plan.py, make_stream_plan)."""
    cdef Py_ssize_t k
    cdef const floating* inp = x
    for k in range(job.L):
        split_layer_part(inp, y, job, k, p)
        # The next layer reads all of hn. After the last layer nobody waits here: the owner
        # waits for the helper's whole part (finish_split_step), which saves a barrier a step.
        if k < job.L - 1:
            rnnc_barrier_wait(job.bar, 2, &job.sense[p])
        inp = <const floating*>job.layers[k].h_next


cdef void split_step_alone(const floating* x, floating* y, SplitStep* job) noexcept nogil:
    """Both parts of one step on this thread, layer by layer: the same arithmetic as the two
    threads' split_part_step (same bits), for when the helper is asleep
    (rnnc/_kernels/_worker.h)."""
    cdef Py_ssize_t k
    cdef const floating* inp = x
    for k in range(job.L):
        split_layer_part(inp, y, job, k, 0)
        split_layer_part(inp, y, job, k, 1)
        inp = <const floating*>job.layers[k].h_next


cdef void split_layer_part(const floating* inp, floating* y, SplitStep* job, Py_ssize_t k,
                           int p) noexcept nogil:
    """Part p of layer k of one step (split_part_step); inp is the layer's input."""
    cdef Py_ssize_t r, I = job.n_in if k == 0 else job.H, B = job.B, H = job.H, u0, nu, GN
    cdef Py_ssize_t G1 = 4 if job.mode == MODE_LSTM else (3 if job.mode == MODE_GRU else 1)
    cdef const StreamLayer* lay
    cdef const StreamPart* part
    cdef floating* h
    cdef floating* hn
    cdef floating* gates
    cdef floating* outp
    cdef const floating* bias
    cdef floating beta
    lay = &job.layers[k]
    part = &job.parts[2 * k + p]
    u0, nu = part.u0, part.nu
    GN = G1 * nu
    gates = <floating*>part.gates
    h = <floating*>lay.h
    hn = <floating*>lay.h_next
    rnnc_prefetch_lines(inp, B * I * sizeof(floating))
    rnnc_prefetch_lines(h, B * H * sizeof(floating))
    bias = <const floating*>part.bias
    beta = 0
    # Every other step runs the two products in the opposite order, each reading its
    # panels backwards (flip): the step then starts on the weights the previous step read
    # last, still in L1 (a part's W_ih and W_hh, 256 KB at H128, stream through it from L2).
    if not job.flip:
        gates_product(B, GN, I, inp, <const floating*>part.w_ih,
                      <const floating*>part.w_ih_packed, &bias, &beta, gates, False)
    if job.mode == MODE_GRU:
        recurrent_gemm(B, GN, H, h, H, <const floating*>part.w_hh, H,
                       <const floating*>part.w_hh_packed, 0, <floating*>part.hg, GN,
                       job.flip)
    else:
        gates_product(B, GN, H, h, <const floating*>part.w_hh,
                      <const floating*>part.w_hh_packed, &bias, &beta, gates, job.flip)
    if job.flip:
        gates_product(B, GN, I, inp, <const floating*>part.w_ih,
                      <const floating*>part.w_ih_packed, &bias, &beta, gates, True)
    # The last layer writes y directly; the others write h_next twice (harmless).
    outp = (y if k == job.L - 1 else hn) + u0
    if job.mode == MODE_GRU:
        gru_pointwise_reset_after_ld(B, nu, gates, <floating*>part.hg,
                                     <const floating*>part.b_hn, h + u0, H, hn + u0, H,
                                     outp, H, <floating*>NULL)
    else:
        if job.mode == MODE_LSTM:
            for r in range(B):  # row by row: c's rows are H apart, this part's gates nu
                lstm_pointwise(1, nu, gates + r * GN, <floating*>lay.c + r * H + u0,
                               hn + r * H + u0, H, outp + r * H, H)
        else:
            rnn_pointwise_ld(B, nu, job.use_relu, gates, hn + u0, H, outp, H)


cdef void finish_split_step(SplitStep* job, Py_ssize_t itemsize) noexcept nogil:
    """After both parts of a step are done (the owner waited for the helper): every layer's
    new state becomes its state (no part may overwrite h while the other still reads it)."""
    cdef Py_ssize_t k
    for k in range(job.L):
        memcpy(job.layers[k].h, job.layers[k].h_next, job.B * job.H * itemsize)


cdef void split_helper_job(void* arg) noexcept nogil:
    """The helper thread's part (1) of a posted step (rnnc/_kernels/_worker.h)."""
    cdef SplitStep* job = <SplitStep*>arg
    if job.typenum == cnp.NPY_FLOAT32:
        split_part_step(<const float*>job.x, <float*>job.y, job, 1)
    else:
        split_part_step(<const double*>job.x, <double*>job.y, job, 1)


cdef void stream_step(const floating* x,     # (B, I0) this step's input
                      floating* y,           # (B, P) out: the last layer's h
                      const StreamLayer* layers, Py_ssize_t L, Py_ssize_t B,
                      Py_ssize_t H, Py_ssize_t P, int mode, bint use_relu,
                      bint reset_after, bint flip) noexcept nogil:
    # flip: every other step, the products of RNN, LSTM without projection and GRU
    # (reset_after) run in the opposite order with their panels read backwards, as in
    # split_part_step (the step starts on the weights the previous one read last).
    cdef Py_ssize_t k, I
    cdef Py_ssize_t G = 4 * H if mode == MODE_LSTM else (3 * H if mode == MODE_GRU else H)
    cdef const StreamLayer* lay
    cdef const floating* inp = x
    cdef const floating* w_hh
    cdef const floating* bias
    cdef floating* gates
    cdef floating* h
    cdef floating* hg
    cdef floating* tmp
    cdef floating beta
    cdef bint swap
    if B == 0:      # the state buffers are empty (NULL pointers): nothing to do
        return
    for k in range(L):
        lay = &layers[k]
        I = lay.in_size
        gates = <floating*>lay.gates
        h = <floating*>lay.h
        hg = <floating*>lay.hg
        tmp = <floating*>lay.tmp
        w_hh = <const floating*>lay.w_hh
        bias = <const floating*>lay.bias
        beta = 0
        # GRU reset_after=False multiplies by W_hh in two products around its gate math below.
        swap = flip and lay.w_hr == NULL and (mode != MODE_GRU or reset_after)
        if not swap:
            gates_product(B, G, I, inp, <const floating*>lay.w_ih,
                          <const floating*>lay.w_ih_packed, &bias, &beta, gates, False)
        if mode == MODE_LSTM or mode == MODE_RNN:
            gates_product(B, G, P, h, w_hh, <const floating*>lay.w_hh_packed, &bias, &beta,
                          gates, swap)
        elif reset_after:
            recurrent_gemm(B, G, H, h, H, w_hh, H, <const floating*>lay.w_hh_packed, 0, hg, G,
                           swap)
        if swap:
            gates_product(B, G, I, inp, <const floating*>lay.w_ih,
                          <const floating*>lay.w_ih_packed, &bias, &beta, gates, True)
        if mode == MODE_LSTM:
            if lay.w_hr == NULL:
                lstm_pointwise(B, H, gates, <floating*>lay.c, h, H, <floating*>NULL, 0)
            else:
                lstm_pointwise(B, H, gates, <floating*>lay.c, tmp, H, <floating*>NULL, 0)
                recurrent_gemm(B, P, H, tmp, H, <const floating*>lay.w_hr, H,
                               <const floating*>lay.w_hr_packed, 0, h, P)
        elif mode == MODE_RNN:
            # Every layer also writes y (the pointwise math needs an output): the last layer's
            # values are the ones left.
            rnn_pointwise(B, H, use_relu, gates, h, y, H)
        elif reset_after:
            gru_pointwise_reset_after(B, H, gates, hg, <const floating*>lay.b_hn, h, y, H,
                                      <floating*>NULL)
        else:
            recurrent_gemm(B, 2 * H, H, h, H, w_hh, H, <const floating*>lay.w_hh_packed, 0,
                           hg, G)
            gru_reset_gate_before(B, H, gates, hg, h, tmp)
            recurrent_gemm(B, H, H, tmp, H, w_hh + 2 * H * H, H,
                           <const floating*>lay.w_hn_packed, 0, hg + 2 * H, G)
            gru_update_before(B, H, gates, hg, h, y, H)
        inp = h
    if mode == MODE_LSTM:
        memcpy(y, inp, B * P * sizeof(floating))


cdef void* _pointer(dict buffers, str name, tuple shape, int typenum, bint optional) except? NULL:
    """The data pointer of buffers[name], checked: an ndarray of exactly `shape`, `typenum`,
    C-contiguous, aligned, native byte order and writeable (so that a wrong binding is an
    error, never a stray write). NULL for an absent optional buffer."""
    arr = buffers.get(name)
    if arr is None:
        if optional:
            return NULL
        raise ValueError(f"StreamKernel.bind: buffer {name!r} is missing")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"StreamKernel.bind: buffer {name!r} must be an ndarray, got "
                        f"{type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if cnp.PyArray_TYPE(a) != typenum or arr.shape != shape \
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISBEHAVED(a):
        expected = "float32" if typenum == cnp.NPY_FLOAT32 else "float64"
        raise ValueError(f"StreamKernel.bind: buffer {name!r} must be a writeable, aligned, "
                         f"C-contiguous {expected} array of shape {shape}, got {arr.dtype} "
                         f"{arr.shape}")
    if arr.size == 0:
        return NULL
    return cnp.PyArray_DATA(a)


cdef class StreamKernel:
    """Compiled core of rnnc.stream.Stream: ``bind`` once, then ``step`` per time step.

    Not meant to be used on its own: rnnc.stream.Stream subclasses it, allocates and fills the
    buffers, and documents the API.
    """
    cdef StreamLayer* layers
    cdef Py_ssize_t L, B, H, P, n_in   # (<complex.h> defines I as a macro)
    cdef int mode, typenum
    cdef bint use_relu, reset_after, unbatched, busy, flip
    cdef object _dtype
    cdef list _owned       # the bound buffers, kept alive while their pointers are in use
    cdef StreamPart* parts     # (L, 2) when steps are split between two threads, else NULL
    cdef SplitStep* job
    cdef rnnc_worker* worker   # the helper thread of a split stream, or NULL

    def __cinit__(self, *args, **kwargs):
        self.layers = NULL
        self.parts = NULL
        self.job = NULL
        self.worker = NULL
        self.L = 0
        self.busy = False

    def __dealloc__(self):
        rnnc_worker_stop(self.worker)   # joins the thread before its job's memory goes
        PyMem_Free(self.job)
        PyMem_Free(self.parts)
        PyMem_Free(self.layers)

    @property
    def threads(self):
        """Threads a step runs on: 2 when the hidden units are split with a helper thread."""
        return 2 if self.worker != NULL and rnnc_worker_alive(self.worker) else 1

    def _bind_parts(self, list parts):
        """Bind the two parts of every layer (rnnc/stream.py) and start the helper thread.
        Without a thread (none could be started) steps stay on the caller's thread."""
        cdef Py_ssize_t L = self.L, B = self.B, H = self.H, k, p, G1, I, nu
        cdef int typenum = self.typenum, f32 = cnp.NPY_FLOAT32
        cdef StreamPart* part
        if self.layers == NULL or self.parts != NULL:
            raise RuntimeError("StreamKernel._bind_parts: bind() first, and only once")
        if self.P != H or (self.mode == MODE_GRU and not self.reset_after) or len(parts) != L:
            raise ValueError("StreamKernel._bind_parts: needs one pair of parts per layer, "
                             "no projection, and GRU with reset_after")
        G1 = 4 if self.mode == MODE_LSTM else (3 if self.mode == MODE_GRU else 1)
        cdef StreamPart* arr = <StreamPart*>PyMem_Malloc(2 * L * sizeof(StreamPart))
        cdef SplitStep* job = <SplitStep*>PyMem_Malloc(sizeof(SplitStep))
        if arr == NULL or job == NULL:
            PyMem_Free(arr)
            PyMem_Free(job)
            raise MemoryError()
        memset(arr, 0, 2 * L * sizeof(StreamPart))
        memset(job, 0, sizeof(SplitStep))
        try:
            for k in range(L):
                I = self.n_in if k == 0 else H
                self.layers[k].h_next = _pointer(self._owned[k], "h_next", (B, H), typenum,
                                                 False)
                if len(parts[k]) != 2:
                    raise ValueError("StreamKernel._bind_parts: two parts per layer")
                for p in range(2):
                    buf = parts[k][p]
                    part = &arr[2 * k + p]
                    part.u0, part.nu = buf["u0"], buf["nu"]
                    nu = part.nu
                    if nu < 1 or part.u0 != (0 if p == 0 else arr[2 * k].nu) \
                            or (p == 1 and part.u0 + nu != H):
                        raise ValueError("StreamKernel._bind_parts: the parts must cover the "
                                         "hidden units in order")
                    part.w_ih = _pointer(buf, "w_ih", (G1 * nu, I), typenum, False)
                    part.w_hh = _pointer(buf, "w_hh", (G1 * nu, H), typenum, False)
                    part.w_ih_packed = _pointer(buf, "w_ih_packed",
                                                ((G1 * nu + 63) // 64, I, 64), f32, True)
                    part.w_hh_packed = _pointer(buf, "w_hh_packed",
                                                ((G1 * nu + 63) // 64, H, 64), f32, True)
                    part.bias = _pointer(buf, "bias", (G1 * nu,), typenum, True)
                    part.b_hn = _pointer(buf, "b_hn", (nu,), typenum, True)
                    part.gates = _pointer(buf, "gates", (B, G1 * nu), typenum, False)
                    part.hg = _pointer(buf, "hg", (B, G1 * nu), typenum,
                                       self.mode != MODE_GRU)
                    if typenum != f32 and (part.w_ih_packed != NULL
                                           or part.w_hh_packed != NULL):
                        raise ValueError("StreamKernel._bind_parts: packed weights are float32 "
                                         "only")
        except BaseException:
            PyMem_Free(arr)
            PyMem_Free(job)
            for k in range(L):
                self.layers[k].h_next = NULL
            raise
        self._owned.append([[dict(b) for b in pair] for pair in parts])
        job.layers = self.layers
        job.parts = arr
        job.L, job.B, job.H, job.n_in = L, B, H, self.n_in
        job.mode, job.typenum, job.use_relu = self.mode, typenum, self.use_relu
        self.parts = arr
        self.job = job
        if B > 0:
            self.worker = rnnc_worker_start(split_helper_job, job)

    def bind(self, str mode, dtype, Py_ssize_t batch_size, bint unbatched, Py_ssize_t input_size,
             Py_ssize_t hidden_size, Py_ssize_t proj_size, bint use_relu, bint reset_after,
             list layers):
        """Bind the buffers of every layer (a list of dicts of arrays, see rnnc/stream.py).

        Shapes, dtypes and layouts are checked here; the step trusts them. proj_size is the
        state width P (hidden_size without projection). Can be called once.
        """
        if self.layers != NULL:
            raise RuntimeError("StreamKernel.bind: already bound")
        if mode not in _MODES:
            raise ValueError(f"StreamKernel.bind: mode must be one of {list(_MODES)}, got "
                             f"{mode!r}")
        dt = np.dtype(dtype)
        if dt != np.float32 and dt != np.float64:
            raise TypeError(f"StreamKernel.bind: dtype must be float32 or float64, got {dt}")
        cdef Py_ssize_t L = len(layers), B = batch_size, H = hidden_size, P = proj_size
        cdef Py_ssize_t G = _GATES[mode] * H, I, k
        if L < 1 or B < 0 or H < 1 or P < 1 or P > H or input_size < 1 \
                or (unbatched and B != 1) or (P != H and mode != "LSTM"):
            raise ValueError(f"StreamKernel.bind: invalid sizes L={L}, B={B}, I={input_size}, "
                             f"H={H}, P={P}, unbatched={unbatched}")
        cdef int typenum = cnp.NPY_FLOAT32 if dt == np.float32 else cnp.NPY_FLOAT64
        cdef int f32 = cnp.NPY_FLOAT32
        cdef StreamLayer* lay
        cdef StreamLayer* arr = <StreamLayer*>PyMem_Malloc(L * sizeof(StreamLayer))
        if arr == NULL:
            raise MemoryError()
        memset(arr, 0, L * sizeof(StreamLayer))
        try:
            for k in range(L):
                buf = layers[k]
                if not isinstance(buf, dict):
                    raise TypeError("StreamKernel.bind: layers must be dicts of arrays")
                I = input_size if k == 0 else P
                lay = &arr[k]
                lay.in_size = I
                lay.w_ih = _pointer(buf, "w_ih", (G, I), typenum, False)
                lay.w_hh = _pointer(buf, "w_hh", (G, P), typenum, False)
                lay.bias = _pointer(buf, "bias", (G,), typenum, True)
                lay.h = _pointer(buf, "h", (B, P), typenum, False)
                lay.gates = _pointer(buf, "gates", (B, G), typenum, False)
                lay.w_ih_packed = _pointer(buf, "w_ih_packed", ((G + 63) // 64, I, 64), f32,
                                           True)
                if mode == "LSTM":
                    lay.c = _pointer(buf, "c", (B, H), typenum, False)
                    lay.w_hh_packed = _pointer(buf, "w_hh_packed", ((G + 63) // 64, P, 64), f32,
                                               True)
                    if P != H:
                        lay.w_hr = _pointer(buf, "w_hr", (P, H), typenum, False)
                        lay.w_hr_packed = _pointer(buf, "w_hr_packed", ((P + 63) // 64, H, 64),
                                                   f32, True)
                        lay.tmp = _pointer(buf, "tmp", (B, H), typenum, False)
                elif mode == "RNN":
                    lay.w_hh_packed = _pointer(buf, "w_hh_packed", ((H + 63) // 64, H, 64), f32,
                                               True)
                else:
                    lay.hg = _pointer(buf, "hg", (B, G), typenum, False)
                    if reset_after:
                        lay.w_hh_packed = _pointer(buf, "w_hh_packed", ((G + 63) // 64, H, 64),
                                                   f32, True)
                        lay.b_hn = _pointer(buf, "b_hn", (H,), typenum, True)
                    else:
                        lay.w_hh_packed = _pointer(buf, "w_hh_packed",
                                                   ((2 * H + 63) // 64, H, 64), f32, True)
                        lay.w_hn_packed = _pointer(buf, "w_hn_packed", ((H + 63) // 64, H, 64),
                                                   f32, True)
                        lay.tmp = _pointer(buf, "tmp", (B, H), typenum, False)
                if typenum != f32 and (lay.w_ih_packed != NULL or lay.w_hh_packed != NULL
                                       or lay.w_hn_packed != NULL or lay.w_hr_packed != NULL):
                    raise ValueError("StreamKernel.bind: packed weights are float32 only")
        except BaseException:
            PyMem_Free(arr)
            raise
        self._owned = [dict(buf) for buf in layers]    # the very arrays whose pointers we hold
        self.layers = arr
        self.L, self.B, self.H, self.P, self.n_in = L, B, H, P, input_size
        self.mode = _MODES[mode]
        self.typenum = typenum
        self._dtype = dt
        self.use_relu = use_relu
        self.reset_after = reset_after
        self.unbatched = unbatched

    def _acquire(self):
        """Mark the stream busy (reset and refresh write its buffers): a step, reset or
        refresh from another thread meanwhile raises instead of racing."""
        if self.busy:
            raise RuntimeError("this stream is in use by another thread; use one stream per "
                               "thread")
        self.busy = True

    def _release(self):
        self.busy = False

    def _restart(self):
        """A new sequence starts: the order of the products (flip) starts over too, so that a
        stream's outputs depend only on its state and inputs since reset (bit for bit)."""
        self.flip = False
        if self.job != NULL:
            self.job.flip = False

    def convert_input(self, x):
        """x as an array of the stream's dtype, for step; here TypeError (a subclass may
        convert)."""
        if not cnp.PyArray_Check(x):
            raise TypeError(f"x must be a numpy.ndarray of dtype {self._dtype}, got "
                            f"{type(x).__name__}")
        raise TypeError(f"x must have dtype {self._dtype} (the stream's dtype), got {x.dtype}")

    def step(self, x, out=None):
        """Run one time step: returns this step's output of the last layer (its new h).

        Parameters
        ----------
        x : ndarray (B, input_size), or (input_size,) for an unbatched stream
            Of the stream's dtype (float32 or float64); anything else goes through
            ``self.convert_input(x)`` first, which a subclass defines (rnnc.stream.Stream:
            rnnc's dtype policy) and which here raises TypeError. Non-contiguous arrays are
            copied.
        out : ndarray (B, P), or (P,), optional
            Written instead of allocating a new array: C-contiguous, writeable, the stream's
            dtype. It may be x itself (when input_size == P).

        Returns
        -------
        y : ndarray (B, P) or (P,); P = proj_size or hidden_size. ``out`` when given.
        """
        if self.layers == NULL:
            raise RuntimeError("stream used before bind()")
        cdef cnp.ndarray xa, ya
        cdef cnp.npy_intp* dims
        cdef cnp.npy_intp ydims[2]
        if not cnp.PyArray_Check(x) or cnp.PyArray_TYPE(<cnp.ndarray>x) != self.typenum:
            # Off the fast path only: a subclass converts (or refuses) what is not exactly
            # the stream's dtype.
            x = self.convert_input(x)
            if not cnp.PyArray_Check(x) or cnp.PyArray_TYPE(<cnp.ndarray>x) != self.typenum:
                raise TypeError(f"convert_input must return a numpy.ndarray of dtype "
                                f"{self._dtype}, got {type(x).__name__}")
        xa = <cnp.ndarray>x
        dims = cnp.PyArray_DIMS(xa)
        if self.unbatched:
            if cnp.PyArray_NDIM(xa) != 1 or dims[0] != self.n_in:
                raise ValueError(f"x must have shape ({self.n_in},) (unbatched stream: "
                                 f"input_size), got {x.shape}")
        elif cnp.PyArray_NDIM(xa) != 2 or dims[0] != self.B or dims[1] != self.n_in:
            raise ValueError(f"x must have shape ({self.B}, {self.n_in}) (batch_size, "
                             f"input_size), got {x.shape}")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(xa) and cnp.PyArray_ISBEHAVED_RO(xa)):
            # Strided, misaligned or byte-swapped: one native C-contiguous copy.
            xa = np.array(xa, dtype=self._dtype, order="C", copy=True)
        if out is None:
            ydims[0] = self.B
            ydims[1] = self.P
            if self.unbatched:
                ydims[0] = self.P
            ya = <cnp.ndarray>cnp.PyArray_EMPTY(1 if self.unbatched else 2, ydims,
                                                self.typenum, 0)
        else:
            ya = self._check_out(out)
        if self.busy:
            raise RuntimeError("this stream is in use by another thread; use one stream per "
                               "thread")
        cdef char* px = <char*>cnp.PyArray_DATA(xa)
        cdef char* py = <char*>cnp.PyArray_DATA(ya)
        cdef SplitStep* job = self.job
        if (self.parts != NULL and px < py + cnp.PyArray_NBYTES(ya)
                and py < px + cnp.PyArray_NBYTES(xa)):
            # out overlaps x: one part would write its outputs while the other still reads x.
            xa = np.array(xa, copy=True)
            px = <char*>cnp.PyArray_DATA(xa)
        self.busy = True
        if self.worker != NULL and rnnc_worker_awake(self.worker):
            job.x = px
            job.y = py
            job.flip = not job.flip
            with nogil:
                rnnc_worker_post(self.worker)
                if self.typenum == cnp.NPY_FLOAT32:
                    split_part_step(<const float*>px, <float*>py, job, 0)
                else:
                    split_part_step(<const double*>px, <double*>py, job, 0)
                rnnc_worker_wait(self.worker)
                finish_split_step(job, 4 if self.typenum == cnp.NPY_FLOAT32 else 8)
        elif self.parts != NULL:
            # The helper is asleep (waking it can take longer than many steps, _worker.h),
            # or there is none (a forked child, or none could be started): this step runs
            # both parts on this thread, with the same bits; a sleeping helper is woken for
            # the steps that follow.
            job.flip = not job.flip
            with nogil:
                rnnc_worker_wake(self.worker)
                if self.typenum == cnp.NPY_FLOAT32:
                    split_step_alone(<const float*>px, <float*>py, job)
                else:
                    split_step_alone(<const double*>px, <double*>py, job)
                finish_split_step(job, 4 if self.typenum == cnp.NPY_FLOAT32 else 8)
        elif self.typenum == cnp.NPY_FLOAT32:
            self.flip = not self.flip
            with nogil:
                stream_step(<const float*>px, <float*>py, self.layers, self.L, self.B,
                            self.H, self.P, self.mode, self.use_relu, self.reset_after,
                            self.flip)
        else:
            self.flip = not self.flip
            with nogil:
                stream_step(<const double*>px, <double*>py, self.layers, self.L, self.B,
                            self.H, self.P, self.mode, self.use_relu, self.reset_after,
                            self.flip)
        self.busy = False
        return ya

    cdef cnp.ndarray _check_out(self, out):
        if not cnp.PyArray_Check(out):
            raise TypeError(f"out must be a numpy.ndarray of dtype {self._dtype}, got "
                            f"{type(out).__name__}")
        cdef cnp.ndarray ya = <cnp.ndarray>out
        if cnp.PyArray_TYPE(ya) != self.typenum:
            raise TypeError(f"out must have dtype {self._dtype} (the stream's dtype), got "
                            f"{out.dtype}")
        cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(ya)
        if self.unbatched:
            if cnp.PyArray_NDIM(ya) != 1 or dims[0] != self.P:
                raise ValueError(f"out must have shape ({self.P},), got {out.shape}")
        elif cnp.PyArray_NDIM(ya) != 2 or dims[0] != self.B or dims[1] != self.P:
            raise ValueError(f"out must have shape ({self.B}, {self.P}), got {out.shape}")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(ya) and cnp.PyArray_ISBEHAVED(ya)):
            raise ValueError("out must be a writeable, aligned, C-contiguous array in native "
                             f"byte order, got flags {out.flags!r}")
        return ya


include "_configure.pxi"
