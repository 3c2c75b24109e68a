# Sequence plumbing shared by the recurrent kernels: the packed layout and the input projection.
#
# Packed layout (PyTorch's PackedSequence): the batch is sorted by decreasing length, and step t
# holds the rows of the batch_sizes[t] sequences still running, at packed rows
# [offsets[t], offsets[t] + batch_sizes[t]). A full-length batch is the special case
# batch_sizes[t] = B, offsets[t] = t * B, i.e. a plain (T * B, features) array, so one code path
# serves both. Because the active rows at every step are a prefix of the sorted batch, the
# recurrent product of a step is one GEMM on the first batch_sizes[t] rows of the state.
#
# The input projection x W_ih^T + b is one GEMM per chunk of `chunk_steps` time steps (all steps
# of the chunk at once). Chunking bounds the workspace: a long sequence needs little memory beyond
# its output.
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport (RNNC_DGEMM_PANEL, RNNC_SGEMM_PANEL, gemm, small_gemm,
                                  small_gemm_packing)


cdef inline void chunk_bounds(Py_ssize_t c, Py_ssize_t T, Py_ssize_t chunk_steps, bint reverse,
                              Py_ssize_t* t0, Py_ssize_t* t1) noexcept nogil:
    """Steps [t0, t1) of chunk number c, in processing order (from the end when reverse)."""
    if reverse:
        t1[0] = T - c * chunk_steps
        t0[0] = t1[0] - chunk_steps if t1[0] > chunk_steps else 0
    else:
        t0[0] = c * chunk_steps
        t1[0] = t0[0] + chunk_steps if t0[0] + chunk_steps < T else T


cdef inline void project_inputs(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (nrows, I) packed input rows, stride ldx
        Py_ssize_t nrows,
        const floating* w_ih,   # (GH, I)
        const floating* w_ih_packed,  # W_ih^T in the small-batch kernel's panels, or NULL
        const floating* b_ih,   # (GH,) or NULL
        const floating* b_hh,   # (GH,) or NULL; only its first n_fold entries are added
        Py_ssize_t GH, Py_ssize_t n_fold,
        floating* xg,           # (nrows, GH) out
        bint per_panel=False) noexcept nogil:  # w_ih_packed is one panel's buffer, to fill
    """xg = x @ w_ih^T + b_ih + b_hh[:n_fold] (b_hh terms that commute with the gate math).
    With packed weights the product runs on the small-batch kernel (one thread), else BLAS.
    per_panel: W_ih is packed panel by panel as the product goes (small_gemm_packing), for a
    projection that reads it once."""
    cdef Py_ssize_t j
    cdef floating* row0 = xg
    cdef floating beta = 0
    if b_ih != NULL or b_hh != NULL:
        # The summed bias is laid into every row and the product adds onto it (beta = 1): one
        # pass of plain copies instead of two read-modify-write passes after it.
        for j in range(GH):
            row0[j] = ((b_ih[j] if b_ih != NULL else 0)
                       + (b_hh[j] if b_hh != NULL and j < n_fold else 0))
        fill_rows(xg, GH, nrows)
        beta = 1
    if per_panel and w_ih_packed != NULL:
        if small_gemm_packing(nrows, GH, I, x, ldx, w_ih, I, beta, xg, GH,
                              <floating*>w_ih_packed):
            return
    elif small_gemm(nrows, GH, I, x, ldx, w_ih_packed, beta, xg, GH):
        return
    gemm(False, True, nrows, GH, I, 1, x, ldx, w_ih, I, beta, xg, GH)


cdef inline int check_one_panel(const floating[:, :, ::1] panel, Py_ssize_t K,
                                str name) except -1:
    """A per-panel projection's buffer must hold one (K, W) panel (or be zero-size: BLAS)."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL
    if panel.shape[0] != 0 and (panel.shape[1] != K or panel.shape[2] != W):
        raise ValueError(f"{name}: with ih_per_panel, w_ih_packed must be one panel of shape "
                         f"(1, {K}, {W}), got ({panel.shape[0]}, {panel.shape[1]}, "
                         f"{panel.shape[2]})")
    return 0


cdef inline void copy_rows(floating* dst, Py_ssize_t ldd, const floating* src, Py_ssize_t lds,
                           Py_ssize_t nrows, Py_ssize_t ncols) noexcept nogil:
    """dst[r, :ncols] = src[r, :ncols] for r < nrows (row strides ldd, lds): the column block of
    one part of a split layer, moved between its private buffer and the shared state."""
    cdef Py_ssize_t r
    for r in range(nrows):
        memcpy(dst + r * ldd, src + r * lds, ncols * sizeof(floating))


cdef inline void fill_rows(floating* a, Py_ssize_t ncols, Py_ssize_t nrows) noexcept nogil:
    """Rows 1..nrows-1 of a (nrows, ncols), contiguous, = its row 0."""
    cdef Py_ssize_t r
    for r in range(1, nrows):
        memcpy(a + r * ncols, a, ncols * sizeof(floating))


cdef inline void add_bias_grads(const floating* sums, Py_ssize_t stride, Py_ssize_t n,
                                floating* db_ih, floating* db_hh) noexcept nogil:
    """db_ih[j] += sums[j * stride] and the same for db_hh (either may be NULL): where b_ih
    and b_hh enter the gates as one sum, their gradients are the same vector."""
    cdef Py_ssize_t j
    for j in range(n):
        if db_ih != NULL:
            db_ih[j] += sums[j * stride]
        if db_hh != NULL:
            db_hh[j] += sums[j * stride]


cdef inline void add_column_sums(const floating* a, Py_ssize_t lda, Py_ssize_t nrows,
                                 Py_ssize_t ncols, floating* out) noexcept nogil:
    """out (ncols,) += sum over rows of a (nrows, ncols), row stride lda."""
    cdef Py_ssize_t r, j
    for r in range(nrows):
        for j in range(ncols):
            out[j] += a[r * lda + j]


cdef inline void input_side_backward(
        const floating* dA, Py_ssize_t GH, Py_ssize_t N,  # (N, GH) d(gate pre-activations)
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) the layer's packed input
        const floating* w_ih,                              # (GH, I)
        floating* dx, Py_ssize_t lddx, bint add_dx,       # (N, I) out (+=, when add_dx)
        floating* dw_ih,                                   # (GH, I) out
        floating* db_ih) noexcept nogil:                   # (GH,) out (+=), or NULL
    """The gradients of the input projection x W_ih^T + b_ih, each one GEMM over all steps."""
    gemm(False, False, N, I, GH, 1, dA, GH, w_ih, I, 1 if add_dx else 0, dx, lddx)
    gemm(True, False, GH, I, N, 1, dA, GH, x, ldx, 0, dw_ih, I)
    if db_ih != NULL:
        add_column_sums(dA, GH, N, GH, db_ih)
