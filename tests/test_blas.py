"""The row-major GEMM shim (rnnc/_kernels/_blas.pyx) against NumPy.

``gemm_py(A, B, C, trans_a, trans_b, alpha, beta)`` computes
C = alpha * op(A) @ op(B) + beta * C in place on C-contiguous arrays, op(X) = X^T when trans_x.
Every matrix product of the kernels goes through the same ``gemm``, so its argument plumbing
(row-major <-> column-major swap, leading dimensions, transposes) is checked here on its own.
"""
import itertools

import numpy as np
import pytest

from rnnc._kernels._blas import gemm_py

DTYPES = [np.float32, np.float64]
TRANSPOSES = list(itertools.product([False, True], repeat=2))
# Tolerances relative to the float64 product (float32 accumulates in float32).
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}

# (M, N, K): degenerate vectors (1xN, Nx1, rank-1 K=1), odd sizes, and sizes that are not
# multiples of any BLAS blocking factor.
SHAPES = [(1, 1, 1), (1, 9, 5), (9, 1, 5), (1, 1, 7), (6, 8, 1), (5, 7, 3), (13, 17, 19),
          (33, 65, 31), (2, 260, 65), (70, 3, 129)]
ALPHA_BETA = [(1.0, 0.0), (2.5, 0.0), (1.0, 1.0), (-0.75, 0.5), (0.0, 2.0), (1.5, -1.25)]


def _operands(rng, M, N, K, trans_a, trans_b, dtype):
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    C = rng.standard_normal((M, N)).astype(dtype)
    return A, B, C


def _expected(A, B, C, trans_a, trans_b, alpha, beta):
    """The same product in float64 NumPy."""
    a = A.astype(np.float64)
    b = B.astype(np.float64)
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    return alpha * (a @ b) + beta * C.astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matches_numpy(dtype, trans_a, trans_b, M, N, K):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    for alpha, beta in ALPHA_BETA:
        A, B, C = _operands(rng, M, N, K, trans_a, trans_b, dtype)
        A0, B0 = A.copy(), B.copy()
        want = _expected(A, B, C, trans_a, trans_b, alpha, beta)
        result = gemm_py(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
        assert result is None
        assert C.dtype == dtype
        np.testing.assert_allclose(C, want, **TOL[dtype],
                                   err_msg=f"alpha={alpha} beta={beta}")
        # A and B are read-only operands.
        np.testing.assert_array_equal(A, A0)
        np.testing.assert_array_equal(B, B0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_positional_arguments_and_defaults(dtype, trans_a, trans_b):
    rng = np.random.default_rng(3)
    A, B, C = _operands(rng, 4, 6, 5, trans_a, trans_b, dtype)
    want = _expected(A, B, C, trans_a, trans_b, 0.5, 2.0)
    gemm_py(A, B, C, trans_a, trans_b, 0.5, 2.0)
    np.testing.assert_allclose(C, want, **TOL[dtype])
    # Defaults: no transposes, alpha=1, beta=0 (C is overwritten).
    A, B, C = _operands(rng, 4, 6, 5, False, False, dtype)
    gemm_py(A, B, C)
    np.testing.assert_allclose(C, _expected(A, B, C, False, False, 1.0, 0.0), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("K", [1, 4, 37])
def test_beta_zero_never_reads_c(dtype, trans_a, trans_b, K):
    """beta = 0 means C is write-only (BLAS semantics): NaN/Inf garbage in C must not leak.

    The kernels rely on this: their GEMM outputs are np.empty workspaces."""
    rng = np.random.default_rng(K)
    A, B, _ = _operands(rng, 5, 7, K, trans_a, trans_b, dtype)
    C = np.full((5, 7), np.nan, dtype=dtype)
    C[0, 0] = np.inf
    C[1, 1] = -np.inf
    gemm_py(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0)
    assert np.isfinite(C).all()
    np.testing.assert_allclose(C, _expected(A, B, np.zeros((5, 7)), trans_a, trans_b, 1.0, 0.0),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5, -3.0])
def test_k_zero_scales_c_by_beta(dtype, trans_a, trans_b, beta):
    """K = 0: op(A) @ op(B) is an (M, N) matrix of zeros, so C = beta * C."""
    M, N = 3, 4
    A = np.empty((0, M) if trans_a else (M, 0), dtype=dtype)
    B = np.empty((N, 0) if trans_b else (0, N), dtype=dtype)
    C = np.arange(1, M * N + 1, dtype=dtype).reshape(M, N)
    want = beta * C.astype(np.float64)
    gemm_py(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=2.0, beta=beta)
    np.testing.assert_allclose(C, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_zero_beta_zero_never_reads_c(dtype):
    """K = 0 with beta = 0 must give C = 0 like BLAS ?gemm (and like K > 0 with beta = 0), not
    0 * C, which turns NaN garbage in an uninitialised C into NaN."""
    M, N = 3, 4
    A = np.empty((M, 0), dtype=dtype)
    B = np.empty((0, N), dtype=dtype)
    C = np.full((M, N), np.nan, dtype=dtype)
    gemm_py(A, B, C, alpha=1.0, beta=0.0)
    np.testing.assert_array_equal(C, np.zeros((M, N), dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("M,N", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("K", [0, 3])
def test_empty_output_is_a_no_op(dtype, trans_a, trans_b, M, N, K):
    A = np.ones((K, M) if trans_a else (M, K), dtype=dtype)
    B = np.ones((N, K) if trans_b else (K, N), dtype=dtype)
    C = np.empty((M, N), dtype=dtype)
    gemm_py(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.5)
    assert C.shape == (M, N)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_k_accuracy(dtype):
    """A long inner dimension (blocked by BLAS) is summed correctly."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((7, 3001)).astype(dtype)
    B = rng.standard_normal((3001, 5)).astype(dtype)
    C = np.zeros((7, 5), dtype=dtype)
    gemm_py(A, B, C)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else TOL[dtype]
    np.testing.assert_allclose(C, A.astype(np.float64) @ B.astype(np.float64), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate(dtype):
    A = np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.5]], dtype=dtype)
    B = np.array([[1.0, -1.0, 0.5], [2.0, 3.0, -4.0]], dtype=dtype)
    C = np.zeros((3, 3), dtype=dtype)
    gemm_py(A, B, C)
    with np.errstate(invalid="ignore"):
        want = A.astype(np.float64) @ B.astype(np.float64)
    np.testing.assert_allclose(C, want, equal_nan=True, **TOL[dtype])
    assert np.isnan(C[1]).all()
    np.testing.assert_array_equal(C[2], [np.inf, -np.inf, np.inf])


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_operands_are_accepted(dtype):
    rng = np.random.default_rng(5)
    A, B, C = _operands(rng, 4, 3, 6, False, True, dtype)
    A.setflags(write=False)
    B.setflags(write=False)
    want = _expected(A, B, C, False, True, 1.0, 1.0)
    gemm_py(A, B, C, trans_b=True, beta=1.0)
    np.testing.assert_allclose(C, want, **TOL[dtype])


# -- shape and layout errors --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape,b_shape,c_shape,trans_a,trans_b", [
    ((3, 4), (5, 6), (3, 6), False, False),   # inner dimensions 4 != 5
    ((3, 4), (4, 6), (3, 5), False, False),   # C has the wrong number of columns
    ((3, 4), (4, 6), (2, 6), False, False),   # C has the wrong number of rows
    ((3, 4), (4, 6), (6, 3), False, False),   # C transposed
    ((3, 4), (4, 6), (3, 6), True, False),    # op(A) = A^T is (4, 3): 3 != 4
    ((3, 4), (4, 6), (3, 6), False, True),    # op(B) = B^T is (6, 4): 4 != 6
    ((4, 3), (6, 4), (3, 6), True, False),    # op(A) (3, 4) @ B (6, 4): 4 != 6
    ((3, 4), (4, 6), (3, 4), True, True),     # (4, 3) @ (6, 4): 3 != 6
    ((0, 4), (5, 6), (0, 6), False, False),   # M = 0 does not excuse a K mismatch
    ((3, 0), (4, 6), (3, 6), False, False),   # K = 0 vs 4
])
def test_shape_mismatch_raises(dtype, a_shape, b_shape, c_shape, trans_a, trans_b):
    A = np.ones(a_shape, dtype=dtype)
    B = np.ones(b_shape, dtype=dtype)
    C = np.full(c_shape, 7.0, dtype=dtype)
    with pytest.raises(ValueError, match="incompatible shapes"):
        gemm_py(A, B, C, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_array_equal(C, np.full(c_shape, 7.0, dtype=dtype))  # untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_mismatch_message_shows_the_shapes(dtype):
    A = np.ones((3, 4), dtype=dtype)
    B = np.ones((5, 6), dtype=dtype)
    C = np.ones((3, 6), dtype=dtype)
    with pytest.raises(ValueError, match=r"A\(3, 4\) B\(5, 6\) C\(3, 6\)"):
        gemm_py(A, B, C)


@pytest.mark.parametrize("which", ["A", "B", "C"])
def test_non_contiguous_arrays_are_refused(which):
    """The shim only takes C-contiguous arrays: it never silently works on a copy of C."""
    arrays = {"A": np.ones((3, 4)), "B": np.ones((4, 5)), "C": np.zeros((3, 5))}
    arrays[which] = np.asfortranarray(arrays[which])
    assert not arrays[which].flags.c_contiguous
    with pytest.raises(ValueError, match="contiguous"):
        gemm_py(arrays["A"], arrays["B"], arrays["C"])


def test_read_only_output_is_refused():
    C = np.zeros((3, 5))
    C.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        gemm_py(np.ones((3, 4)), np.ones((4, 5)), C)
    np.testing.assert_array_equal(C, 0)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64, np.float64),
                                    (np.float64, np.float32, np.float64),
                                    (np.float64, np.float64, np.float32),
                                    (np.int64, np.int64, np.int64)])
def test_mixed_or_non_float_dtypes_are_refused(dtypes):
    da, db, dc = dtypes
    A, B, C = np.ones((3, 4), da), np.ones((4, 5), db), np.zeros((3, 5), dc)
    with pytest.raises((TypeError, ValueError)):
        gemm_py(A, B, C)
    np.testing.assert_array_equal(C, 0)
