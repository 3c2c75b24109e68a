"""Dense output layer y = g'(x W^T + b) over the last axis: one GEMM, then one fused pass that
adds the bias and applies the activation. GIL released, no allocation.
"""
from cython cimport floating
from libc.math cimport exp, expf, isnan

from rnnc._kernels._activations cimport relu, sigmoid_inplace, tanh_inplace
from rnnc._kernels._blas cimport gemm

cdef enum Activation:
    ACT_NONE = 0
    ACT_TANH = 1
    ACT_RELU = 2
    ACT_SIGMOID = 3
    ACT_SOFTMAX = 4

# Names accepted by rnnc.Linear(activation=...), mapped to the codes above.
ACTIVATIONS = {None: ACT_NONE, "tanh": ACT_TANH, "relu": ACT_RELU, "sigmoid": ACT_SIGMOID,
               "softmax": ACT_SOFTMAX}


cdef inline floating exp_(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef void softmax_row(floating* y, Py_ssize_t n) noexcept nogil:
    # Subtract the row maximum so exp never overflows; a NaN anywhere makes the row NaN.
    cdef Py_ssize_t j
    cdef floating m = y[0], s = 0
    for j in range(n):
        if isnan(y[j]) or y[j] > m:
            m = y[j]
            if isnan(m):
                break
    for j in range(n):
        y[j] = exp_(y[j] - m)
        s += y[j]
    for j in range(n):
        y[j] = y[j] / s


cdef void activate_rows(floating* y, Py_ssize_t N, Py_ssize_t M, int act) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating* row
    for r in range(N):
        row = y + r * M
        if act == ACT_TANH:
            tanh_inplace(row, M)
        elif act == ACT_RELU:
            for j in range(M):
                row[j] = relu(row[j])
        elif act == ACT_SIGMOID:
            sigmoid_inplace(row, M)
        elif act == ACT_SOFTMAX:
            softmax_row(row, M)


cdef void linear_rows(const floating* x,   # (N, K)
                      const floating* w,   # (M, K)
                      const floating* b,   # (M,) or NULL
                      floating* y,         # (N, M) out
                      Py_ssize_t N, Py_ssize_t K, Py_ssize_t M, int act) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating* row
    gemm(False, True, N, M, K, 1, x, K, w, K, 0, y, M)
    if b != NULL:
        for r in range(N):
            row = y + r * M
            for j in range(M):
                row[j] += b[j]
    activate_rows(y, N, M, act)


def linear_forward(const floating[:, ::1] x, const floating[:, ::1] w,
                   const floating[::1] b, floating[:, ::1] y, int act):
    """y (N, M) = act(x (N, K) @ w (M, K)^T + b); zero-size b means no bias."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0]
    if N == 0 or M == 0:
        return
    cdef const floating* bp = &b[0] if b.shape[0] > 0 else NULL
    with nogil:
        linear_rows(&x[0, 0], &w[0, 0], bp, &y[0, 0], N, K, M, act)


def activate(floating[:, ::1] y, int act):
    """Apply an activation (a code of ACTIVATIONS) to y in place, row by row, as the kernels
    do: the test hook for the activation functions."""
    if y.shape[0] == 0 or y.shape[1] == 0:
        return
    with nogil:
        activate_rows(&y[0, 0], y.shape[0], y.shape[1], act)


include "_configure.pxi"
