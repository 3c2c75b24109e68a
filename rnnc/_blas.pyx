"""Row-major GEMM on top of scipy.linalg.cython_blas.

Everything in rnnc that multiplies matrices goes through ``gemm`` here. ``gemm_py`` exposes it to
Python for the shim's own tests only.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


import numpy as np


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
    if M == 0 or N == 0:
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


def has_small_gemm():
    """Whether the packed small-batch float32 kernel runs on this CPU (AVX-512)."""
    cdef float a = 1, b[64], c = 0
    cdef int i
    for i in range(64):
        b[i] = 0
    return bool(rnnc_sgemm_small(1, 1, 1, &a, 1, b, 0, &c, 1))


def pack_panels_into(const float[:, :] w, float[:, :, ::1] out):
    """out (ceil(N / 64), K, 64) = w^T (w is (N, K), any strides) in the small-batch kernel's
    panel layout, zero-padded past N. Compiled because NumPy's strided transpose copy cost
    18 ms for a 4096 x 1024 matrix (this: a few ms)."""
    cdef Py_ssize_t N = w.shape[0], K = w.shape[1]
    if out.shape[0] != (N + 63) // 64 or out.shape[1] != K or out.shape[2] != 64:
        raise ValueError(f"pack_panels_into: out has shape ({out.shape[0]}, {out.shape[1]}, "
                         f"{out.shape[2]}), expected ({(N + 63) // 64}, {K}, 64)")
    if N == 0 or K == 0:
        return
    with nogil:
        rnnc_pack_panels(N, K, &w[0, 0], w.strides[0] // sizeof(float),
                         w.strides[1] // sizeof(float), &out[0, 0, 0])
