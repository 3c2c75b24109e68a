# Scalar activations, inlined into every kernel that cimports them.
#
# Exact libm functions in both precisions (tanhf/expf for float32): the kernels must agree with
# the NumPy reference to ~1e-12 in float64, and NaN/Inf must propagate as in the math.
from cython cimport floating
from libc.math cimport tanh, tanhf, exp, expf


cdef inline floating sigmoid(floating x) noexcept nogil:
    # 1 / (1 + e^-x): exp overflows to inf for x << 0 and the result is exactly 0, as in NumPy.
    if floating is float:
        return 1.0 / (1.0 + expf(-x))
    else:
        return 1.0 / (1.0 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating relu(floating x) noexcept nogil:
    # x > 0 is false for NaN, so written this way NaN would become 0; keep NaN as NaN.
    if x < 0:
        return 0
    return x
