"""Row-major GEMM on top of scipy.linalg.cython_blas.

Everything in rnnc that multiplies matrices goes through ``gemm`` here (or, for the recurrent
product, ``recurrent_gemm`` of _blas.pxd). ``gemm_py`` and ``recurrent_gemm_py`` expose them to
Python for their own tests only.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


import numpy as np


cdef extern from "_cpu.h" nogil:
    ctypedef struct rnnc_machine_t:
        Py_ssize_t l2
    rnnc_machine_t rnnc_machine     # this module's copy of the machine (_configure.pxi sets it)


cdef void gemm(bint trans_a, bint trans_b, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
               floating alpha, const floating* A, Py_ssize_t lda,
               const floating* B, Py_ssize_t ldb,
               floating beta, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, all row-major.

    lda, ldb, ldc are row strides in elements. op(X) = X^T when trans_x.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int m = <int>M, n = <int>N, k = <int>K
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    cdef int inc_a = <int>lda if trans_a else 1, one = 1
    cdef char gt = b'T' if trans_b else b'N'
    if M == 0 or N == 0:
        return
    if M == 1 and K > 0:
        # One row (a cell's step at batch 1): BLAS's matrix-vector product reads the weights in
        # place, where its GEMM packs them first, a large part of a short call
        # (benchmarks/results/amd-epyc/tuning.md).
        # C row = a @ op(B): in column-major terms op(B)^T a, with B (N, K) seen as (K, N)
        # when trans_b and B (K, N) seen as (N, K) otherwise.
        if trans_b:
            m, n = k, n
        else:
            m, n = n, k
        if floating is float:
            sgemv(&gt, &m, &n, &alpha, <float*>B, &ildb, <float*>A, &inc_a, &beta, C, &one)
        else:
            dgemv(&gt, &m, &n, &alpha, <double*>B, &ildb, <double*>A, &inc_a, &beta, C, &one)
        return
    # Column-major view: C^T (N, M) = op(B)^T (N, K) @ op(A)^T (K, M).
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>B, &ildb, <float*>A, &ilda,
              &beta, C, &ildc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>B, &ildb, <double*>A, &ilda,
              &beta, C, &ildc)


def gemm_py(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
            bint trans_a=False, bint trans_b=False, double alpha=1.0, double beta=0.0):
    """Test hook: C = alpha * op(A) @ op(B) + beta * C on C-contiguous arrays (shapes unchecked
    beyond what is needed to stay in bounds)."""
    cdef Py_ssize_t M = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t K = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t KB = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t N = B.shape[0] if trans_b else B.shape[1]
    if K != KB or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"gemm_py: incompatible shapes A({A.shape[0]}, {A.shape[1]}) "
                         f"B({B.shape[0]}, {B.shape[1]}) C({C.shape[0]}, {C.shape[1]})")
    if M == 0 or N == 0:
        return
    if K == 0:
        # With k == 0 BLAS only scales C by beta, and beta == 0 means C = 0 even over NaN.
        if beta == 0:
            np.asarray(C)[...] = 0
        else:
            np.asarray(C)[...] *= beta
        return
    with nogil:
        gemm(trans_a, trans_b, M, N, K, <floating>alpha, &A[0, 0], A.shape[1],
             &B[0, 0], B.shape[1], <floating>beta, &C[0, 0], C.shape[1])


def recurrent_gemm_py(const floating[:, ::1] h, const floating[:, ::1] w,
                      const floating[:, :, ::1] w_packed, floating[:, ::1] C, bint beta=False):
    """Test hook: C (M, N) = h (M, K) @ w (N, K)^T, plus C when beta, through recurrent_gemm:
    the small-batch kernel when w_packed (= pack_panels(w) of rnnc/_engine/workspace.py) is not
    zero-size and the instruction set in use has it (AVX2 or AVX-512), else BLAS."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL
    cdef Py_ssize_t M = h.shape[0], K = h.shape[1], N = w.shape[0]
    if K == 0 or w.shape[1] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"recurrent_gemm_py: incompatible shapes h({M}, {K}) "
                         f"w({w.shape[0]}, {w.shape[1]}) C({C.shape[0]}, {C.shape[1]})")
    if w_packed.shape[0] and (w_packed.shape[0] != (N + W - 1) // W
                              or w_packed.shape[1] != K or w_packed.shape[2] != W):
        raise ValueError(f"recurrent_gemm_py: w_packed has shape ({w_packed.shape[0]}, "
                         f"{w_packed.shape[1]}, {w_packed.shape[2]}), expected "
                         f"({(N + W - 1) // W}, {K}, {W})")
    if M == 0 or N == 0:
        return
    cdef const floating* wp = &w_packed[0, 0, 0] if w_packed.shape[0] else NULL
    with nogil:
        recurrent_gemm(M, N, K, &h[0, 0], K, &w[0, 0], K, wp, <floating>(1 if beta else 0),
                       &C[0, 0], N)


def has_small_gemm():
    """Whether the packed small-batch kernels (float32 and float64) run at the instruction set
    in use (rnnc._engine.machine: AVX2 + FMA or AVX-512; not at the baseline level)."""
    cdef float a = 1, b[RNNC_SGEMM_PANEL], c = 0
    cdef double ad = 1, bd[RNNC_DGEMM_PANEL], cd = 0
    cdef int i
    for i in range(RNNC_SGEMM_PANEL):
        b[i] = 0
    for i in range(RNNC_DGEMM_PANEL):
        bd[i] = 0
    return bool(rnnc_sgemm_small(1, 1, 1, &a, 1, b, 0, &c, 1, 0)
                and rnnc_dgemm_small(1, 1, 1, &ad, 1, bd, 0, &cd, 1, 0))


def small_gemm_py(const floating[:, ::1] a, const floating[:, :, ::1] w_packed,
                  floating[:, ::1] C, bint beta=False, const floating[::1] bias=None,
                  bint flip=False):
    """Test hook: C (M, N) = a (M, K) @ W^T (+ C when beta, + bias on every row when bias is
    given, float32 only) straight through the packed kernel, W^T in w_packed's panels; `flip`
    as a step loop gives it. Returns whether the kernel ran (False at the baseline instruction
    set: C untouched)."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = C.shape[1]
    cdef int done
    if (C.shape[0] != M or K == 0 or M == 0 or N == 0 or w_packed.shape[0] != (N + W - 1) // W
            or w_packed.shape[1] != K or w_packed.shape[2] != W):
        raise ValueError("small_gemm_py: incompatible shapes")
    if bias is not None and (bias.shape[0] != N or floating is double or beta):
        raise ValueError("small_gemm_py: bias is float32, (N,), without beta")
    with nogil:
        if floating is float:
            if bias is not None:
                done = rnnc_sgemm_small_bias(M, N, K, &a[0, 0], K, &w_packed[0, 0, 0],
                                             &bias[0], &C[0, 0], N, flip)
            else:
                done = rnnc_sgemm_small(M, N, K, &a[0, 0], K, &w_packed[0, 0, 0], beta,
                                        &C[0, 0], N, flip)
        else:
            done = rnnc_dgemm_small(M, N, K, &a[0, 0], K, &w_packed[0, 0, 0], beta, &C[0, 0],
                                    N, flip)
    return done != 0


def small_gemm_blocking(dtype, Py_ssize_t K, l2=None):
    """Panels of a block of the packed kernel's loops (_small_gemm.h) for a dtype and K: as
    many as fill half of an L2 of `l2` bytes (default: the L2 the kernels are configured for,
    rnnc._engine.machine), at least 1."""
    cdef Py_ssize_t W = panel_width(dtype)
    cdef Py_ssize_t item = np.dtype(dtype).itemsize
    cdef Py_ssize_t size = rnnc_machine.l2 if l2 is None else l2
    if K < 1 or size < 1:
        raise ValueError(f"small_gemm_blocking: K and l2 must be >= 1, got {K}, {size}")
    return rnnc_small_gemm_block_panels(K, W * item, size)


def panel_width(dtype):
    """Columns of one panel of the small-batch kernel's packed weights for a dtype: 64 float32
    or 32 float64 (256 bytes a row either way, four AVX-512 registers)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return RNNC_SGEMM_PANEL
    if dtype == np.float64:
        return RNNC_DGEMM_PANEL
    raise TypeError(f"panel_width: dtype must be float32 or float64, not {dtype}")


def pack_panels_into(const floating[:, :] w, floating[:, :, ::1] out):
    """out (ceil(N / W), K, W) = w^T (w is (N, K), any strides) in the small-batch kernel's
    panel layout, zero-padded past N, with W = panel_width(dtype): 64 float32, 32 float64.
    w and out must have the same dtype. Compiled because NumPy's strided transpose copy is
    several times slower (benchmarks/results/amd-epyc/tuning.md)."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL
    cdef Py_ssize_t N = w.shape[0], K = w.shape[1]
    # Strides in elements; the cast keeps negative strides negative (size_t division would not).
    cdef Py_ssize_t item = <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sn = w.strides[0] // item, sk = w.strides[1] // item
    if out.shape[0] != (N + W - 1) // W or out.shape[1] != K or out.shape[2] != W:
        raise ValueError(f"pack_panels_into: out has shape ({out.shape[0]}, {out.shape[1]}, "
                         f"{out.shape[2]}), expected ({(N + W - 1) // W}, {K}, {W})")
    if N == 0 or K == 0:
        return
    with nogil:
        if floating is float:
            rnnc_pack_panels(N, K, &w[0, 0], sn, sk, &out[0, 0, 0], 0)
        else:
            rnnc_dpack_panels(N, K, &w[0, 0], sn, sk, &out[0, 0, 0], 0)


include "_configure.pxi"
