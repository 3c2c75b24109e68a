# BLAS shims for row-major (C-ordered) arrays, float32 and float64 through one fused type.
#
# scipy.linalg.cython_blas is column-major. A row-major C = op(A) op(B) is the column-major
# C^T = op(B)^T op(A)^T, so the shim swaps the operands instead of transposing anything in memory.
# Sizes are Py_ssize_t everywhere in rnnc; the Python layer checks that every size passed here fits
# BLAS's 32-bit int (see rnnc._validation.check_blas_size), so the narrowing below cannot overflow.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
               floating alpha, const floating* A, Py_ssize_t lda,
               const floating* B, Py_ssize_t ldb,
               floating beta, floating* C, Py_ssize_t ldc) noexcept nogil


cdef extern from "_small_gemm.h" nogil:
    enum:
        RNNC_SGEMM_PANEL    # columns of a float32 panel (64)
        RNNC_DGEMM_PANEL    # columns of a float64 panel (32)
    int rnnc_sgemm_small(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                         const float* Bp, int beta, float* C, Py_ssize_t ldc, int flip)
    int rnnc_dgemm_small(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A,
                         Py_ssize_t lda, const double* Bp, int beta, double* C, Py_ssize_t ldc,
                         int flip)
    int rnnc_sgemm_small_bias(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A,
                              Py_ssize_t lda, const float* Bp, const float* bias, float* C,
                              Py_ssize_t ldc, int flip)
    Py_ssize_t rnnc_small_gemm_block_panels(Py_ssize_t K, Py_ssize_t row_bytes, Py_ssize_t l2)
    void rnnc_pack_panels(Py_ssize_t N, Py_ssize_t K, const float* w, Py_ssize_t sn,
                          Py_ssize_t sk, float* out, Py_ssize_t of_bytes)
    void rnnc_dpack_panels(Py_ssize_t N, Py_ssize_t K, const double* w, Py_ssize_t sn,
                           Py_ssize_t sk, double* out, Py_ssize_t of_bytes)


cdef inline void pack_panels(Py_ssize_t N, Py_ssize_t K, const floating* w, Py_ssize_t sn,
                             Py_ssize_t sk, floating* out,
                             Py_ssize_t of_bytes=0) noexcept nogil:
    """out = w^T (w (N, K) with element strides sn, sk) in the small-batch kernel's panels.
    of_bytes: the size of the whole pack when this call packs one piece of it (large packs are
    written with streaming stores, _small_gemm.h), else 0."""
    if floating is float:
        rnnc_pack_panels(N, K, w, sn, sk, out, of_bytes)
    else:
        rnnc_dpack_panels(N, K, w, sn, sk, out, of_bytes)


cdef inline bint small_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                             const floating* a, Py_ssize_t lda, const floating* w_packed,
                             floating beta, floating* C, Py_ssize_t ldc,
                             bint flip=False) noexcept nogil:
    """C (M, N) = beta * C + a @ (the packed operand) with the kernel of _small_gemm.h for this
    dtype; False (nothing done) without packed weights or at the baseline instruction set: the
    caller uses BLAS.
    flip: the parity of the time step, for a step loop (the kernel alternates the order in which
    it reads the panels, for cache reuse between steps)."""
    if w_packed == NULL:
        return False
    if floating is float:
        return rnnc_sgemm_small(M, N, K, a, lda, w_packed, beta != 0, C, ldc, flip) != 0
    else:
        return rnnc_dgemm_small(M, N, K, a, lda, w_packed, beta != 0, C, ldc, flip) != 0


cdef inline bint small_gemm_packing(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                                    const floating* a, Py_ssize_t lda,
                                    const floating* w, Py_ssize_t ldw,  # (N, K) row-major
                                    floating beta, floating* C, Py_ssize_t ldc,
                                    floating* panel) noexcept nogil:
    """C (M, N) = beta * C + a @ w^T on the small-batch kernel, each panel of w packed into
    `panel` (one panel's buffer, 64-byte aligned) just before every row of `a` uses it, while
    it is in L2: for weights read once (the input projection of a sequence that fits in one
    chunk), where packing all of w first wrote it out and read it back through memory. The
    same sums in the same order as small_gemm on w packed whole: the same bits. False (nothing
    done) at the baseline instruction set: the caller uses BLAS."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL, q, j, n
    for q in range((N + W - 1) // W):
        j = q * W
        n = N - j if N - j < W else W
        pack_panels(n, K, w + j * ldw, ldw, 1, panel)
        if not small_gemm(M, n, K, a, lda, panel, beta, C + j, ldc):
            return False
    return True


cdef inline void recurrent_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                                const floating* h, Py_ssize_t ldh,  # (M, K) state rows
                                const floating* w, Py_ssize_t ldw,  # (N, K) weights, row-major
                                const floating* w_packed,           # w^T in panels, or NULL
                                floating beta, floating* C, Py_ssize_t ldc,
                                bint flip=False) noexcept nogil:
    """C (M, N) = beta * C + h @ w^T: the recurrent product of one step. With packed weights
    (panels of 64 float32 or 32 float64 columns, pack_panels of rnnc/_engine/workspace.py),
    the small-batch kernel of _small_gemm.h (no per-call weight packing); else, or at the
    baseline instruction set, BLAS.
    flip: the parity of the step (see small_gemm)."""
    if not small_gemm(M, N, K, h, ldh, w_packed, beta, C, ldc, flip):
        gemm(False, True, M, N, K, 1, h, ldh, w, ldw, beta, C, ldc)


cdef inline void recurrent_gemm_nn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                                   const floating* a, Py_ssize_t lda,  # (M, K) gate gradients
                                   const floating* w, Py_ssize_t ldw,  # (K, N) weights
                                   const floating* w_packed,           # w in panels, or NULL
                                   floating beta, floating* C, Py_ssize_t ldc,
                                   bint flip=False) noexcept nogil:
    """C (M, N) = beta * C + a @ w: the recurrent product of one backward step (see above)."""
    if not small_gemm(M, N, K, a, lda, w_packed, beta, C, ldc, flip):
        gemm(False, False, M, N, K, 1, a, lda, w, ldw, beta, C, ldc)
