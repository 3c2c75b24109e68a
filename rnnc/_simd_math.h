/* Vectorisable float32 exp-based activations, applied in place to contiguous arrays.
 *
 * Written as plain, branch-free loops so the compiler vectorises them; on x86-64 each function
 * is compiled for AVX-512, AVX2 and the baseline and the best one is picked at load time
 * (target_clones: runtime CPU dispatch). The kernels are built with -fno-trapping-math, which lets
 * the compiler evaluate both sides of a select; it changes no value (IEEE results, NaN and inf
 * as usual), unlike -ffast-math. Accuracy (checked by tests/test_activations.py against
 * float64 NumPy): within a few float32 ulps (relative error <= 1e-6) wherever the result is a
 * normal float32; NaN propagates; +-inf give the limits.
 *   exp: Cephes' expf range reduction and degree-5 polynomial.
 *   tanh: Cephes' tanhf: an odd polynomial for |x| < 0.625, 1 - 2 / (exp(2|x|) + 1) beyond.
 */
#ifndef RNNC_SIMD_MATH_H
#define RNNC_SIMD_MATH_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(RNNC_NO_DISPATCH)
#define RNNC_DISPATCH __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define RNNC_DISPATCH
#endif

static inline float rnnc_expf_body(float x) {
    /* exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]. */
    const float hi = 88.72283935546875f, lo = -103.97208404541016f;
    float xc = x > hi ? hi : x;          /* comparisons are false for NaN: NaN stays NaN */
    xc = xc < lo ? lo : xc;
    float nf = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
    int32_t n = (int32_t)nf;
    float r = xc - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    float y = p * r2 + r + 1.0f;
    /* 2^n in two factors so that n down to -149 (subnormal results) and up to 128 work. */
    int32_t n1 = n / 2, n2 = n - n / 2;
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    y = y * s1 * s2;
    return x > hi ? __builtin_inff() : y;   /* exp(x > hi) = inf; NaN stays NaN */
}

RNNC_DISPATCH
static void rnnc_sigmoid_f32(float* x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = 1.0f / (1.0f + rnnc_expf_body(-x[i]));
}

RNNC_DISPATCH
static void rnnc_tanh_f32(float* x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        float a = v < 0 ? -v : v;
        /* |x| >= 0.625 */
        float big = 1.0f - 2.0f / (rnnc_expf_body(2.0f * a) + 1.0f);
        big = v < 0 ? -big : big;
        /* |x| < 0.625 */
        float z = v * v;
        float p = -5.70498872745E-3f;
        p = p * z + 2.06390887954E-2f;
        p = p * z - 5.37397155531E-2f;
        p = p * z + 1.33314422036E-1f;
        p = p * z - 3.33332819422E-1f;
        float small = p * z * v + v;
        /* tiny |x|: tanh(x) rounds to x (and -0 stays -0) */
        x[i] = a >= 0.625f ? big : (a < 1e-4f ? v : small);
    }
}

#endif
