# Scalar activations, inlined into every kernel that cimports them.
#
# Accuracy first: the kernels must agree with the NumPy reference to ~1e-12 in float64 and to
# float32 rounding in float32, and NaN/Inf must propagate as in the math. The scalar functions
# here use libm; the vectorised array forms have stated, tested bounds (tests/test_activations).
#
# Speed: glibc's tanhf/tanh go through expm1, which costs more than everything else in a small
# LSTM step (benchmarks/results/amd-epyc/tuning.md). tanh(|x|) = (1 - e) / (1 + e) with e =
# exp(-2|x|) is
# as accurate wherever 1 - e does not cancel:
# - float32: evaluated in double, the cancellation costs at most ~1e-16 / |x| relative, far
#   below float32 rounding for |x| >= 1e-6; below that tanh(x) rounds to x in float32.
# - float64: expm1 keeps full precision near 0: tanh(|x|) = -m / (m + 2), m = expm1(-2|x|).
#
# The array forms (sigmoid_inplace, tanh_inplace) are what the kernels use on whole gate blocks:
# in float32 they call the vectorised functions of _simd_math.h (runtime CPU dispatch, a few
# ulps); in float64 the vectorised float64 functions there (AVX-512: the same formulas as the
# scalar functions below, with exp / expm1 evaluated to about an ulp; within 2 ulp of libm),
# else a loop over the scalar functions below.
from cython cimport floating
from libc.math cimport exp, expf, expm1, fabs, copysign


cdef extern from "_simd_math.h" nogil:
    void rnnc_sigmoid_f32(float* x, Py_ssize_t n)
    void rnnc_tanh_f32(float* x, Py_ssize_t n)
    bint rnnc_sigmoid_f64(double* x, Py_ssize_t n)
    bint rnnc_tanh_f64(double* x, Py_ssize_t n)
    void rnnc_lstm_row_f32(Py_ssize_t H, float* g, float* c, float* h, float* out)
    void rnnc_gru_row_f32(Py_ssize_t H, float* x, const float* hg, const float* b_hn,
                          const float* h_old, float* h_new, float* out, float* hn_keep)


cdef inline floating sigmoid(floating x) noexcept nogil:
    # 1 / (1 + e^-x): exp overflows to inf for x << 0 and the result is exactly 0, as in NumPy.
    if floating is float:
        return 1 / (1 + expf(-x))
    else:
        return 1 / (1 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    cdef double a = fabs(x), e
    if floating is float:
        if a < 1e-6:
            return x
        e = exp(-2 * a)
        return <float>copysign((1 - e) / (1 + e), <double>x)
    else:
        e = expm1(-2 * a)
        # NaN: e is NaN and so is the result. Inf: e = -1, result +-1.
        return copysign(-e / (e + 2), x)


cdef inline floating relu(floating x) noexcept nogil:
    # Written so that NaN stays NaN (`x if x > 0 else 0` would turn NaN into 0).
    if x < 0:
        return 0
    return x


cdef inline void sigmoid_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if floating is float:
        rnnc_sigmoid_f32(x, n)
    elif not rnnc_sigmoid_f64(x, n):
        for i in range(n):
            x[i] = sigmoid(x[i])


cdef inline void tanh_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if floating is float:
        rnnc_tanh_f32(x, n)
    elif not rnnc_tanh_f64(x, n):
        for i in range(n):
            x[i] = tanh_(x[i])
