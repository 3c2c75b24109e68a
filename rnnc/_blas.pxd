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
