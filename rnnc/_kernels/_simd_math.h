/* Vectorisable float32 exp-based activations, applied in place to contiguous arrays.
 *
 * Written as plain, branch-free loops so the compiler vectorises them; on x86-64 each function
 * is compiled for AVX-512, AVX2 + FMA and the baseline and the one of the level in use
 * (rnnc_cpu_isa(), _cpu.h) runs; the forward rows also have AVX-512 versions written with
 * intrinsics (below). The kernels are built with -fno-trapping-math, which lets
 * the compiler evaluate both sides of a select; it changes no value (IEEE results, NaN and inf
 * as usual), unlike -ffast-math. Accuracy (checked by tests/test_activations.py against
 * float64 NumPy): within a few float32 ulps (relative error <= 1e-6) wherever the result is a
 * normal float32; NaN propagates; +-inf give the limits.
 *   exp: Cephes' expf range reduction and degree-5 polynomial.
 *   tanh: Eigen's float rational approximation, a 13/6 odd/even pair of polynomials (worst
 *   relative error 2.9e-7 with FMA, 4.1e-7 without), and +-1 from |x| >= 7.9053, where tanh
 *   rounds within 2.7e-7 of 1: no exp and one division, where an exp-based form needs two
 *   paths evaluated and blended (benchmarks/results/amd-epyc/tuning.md).
 */
#ifndef RNNC_SIMD_MATH_H
#define RNNC_SIMD_MATH_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>

#include "_cpu.h"

/* The plain loops below are compiled once per instruction-set level of _cpu.h, by
 * RNNC_AT_LEVELS: NAME_avx512 (AVX-512F), NAME_avx2 (AVX2 + FMA) and NAME_baseline (the
 * compiler's default target), each from the same body; the dispatchers further down pick one by
 * rnnc_cpu_isa() at every call, so that RNNC_MAX_CPU_ISA (and rnnc._engine.machine.use) decide
 * which code runs. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
#define RNNC_AT_LEVELS(NAME, PARAMS, ...)                                                     \
    __attribute__((target("avx512f"))) static void NAME##_avx512 PARAMS { __VA_ARGS__ }     \
    __attribute__((target("avx2,fma"))) static void NAME##_avx2 PARAMS { __VA_ARGS__ }      \
    static void NAME##_baseline PARAMS { __VA_ARGS__ }
/* The loops whose AVX-512 version is written with intrinsics further down: two levels. */
#define RNNC_BELOW_AVX512(NAME, PARAMS, ...)                                                  \
    __attribute__((target("avx2,fma"))) static void NAME##_avx2 PARAMS { __VA_ARGS__ }      \
    static void NAME##_baseline PARAMS { __VA_ARGS__ }
/* Calls NAME_<level> ARGS for the level in use. */
#define RNNC_CALL_AT_LEVEL(NAME, ARGS)                                                        \
    do {                                                                                      \
        switch (rnnc_cpu_isa()) {                                                             \
            case RNNC_ISA_AVX512: NAME##_avx512 ARGS; break;                                  \
            case RNNC_ISA_AVX2: NAME##_avx2 ARGS; break;                                      \
            default: NAME##_baseline ARGS; break;                                             \
        }                                                                                     \
    } while (0)
#else
#define RNNC_AT_LEVELS(NAME, PARAMS, ...) static void NAME##_baseline PARAMS { __VA_ARGS__ }
#define RNNC_BELOW_AVX512(NAME, PARAMS, ...) static void NAME##_baseline PARAMS { __VA_ARGS__ }
#define RNNC_CALL_AT_LEVEL(NAME, ARGS) NAME##_baseline ARGS
#endif

__attribute__((always_inline))
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

__attribute__((always_inline))
static inline float rnnc_sigmoidf_body(float x) {
    return 1.0f / (1.0f + rnnc_expf_body(-x));
}

/* The tanh approximation's coefficients (see the top of this file) and where it stops. */
#define RNNC_TANH_A13 -2.76076847742355e-16f
#define RNNC_TANH_A11 2.00018790482477e-13f
#define RNNC_TANH_A9 -8.60467152213735e-11f
#define RNNC_TANH_A7 5.12229709037114e-08f
#define RNNC_TANH_A5 1.48572235717979e-05f
#define RNNC_TANH_A3 6.37261928875436e-04f
#define RNNC_TANH_A1 4.89352455891786e-03f
#define RNNC_TANH_B6 1.19825839466702e-06f
#define RNNC_TANH_B4 1.18534705686654e-04f
#define RNNC_TANH_B2 2.26843463243900e-03f
#define RNNC_TANH_B0 4.89352518554385e-03f
#define RNNC_TANH_ONE 7.90531110763549805f   /* |x| from which the result is +-1 */
#define RNNC_TANH_TINY 4e-4f                  /* |x| below which the result is x */

__attribute__((always_inline))
static inline float rnnc_tanhf_body(float v) {
    float a = v < 0 ? -v : v;
    float z = v * v;
    float p = RNNC_TANH_A13;
    p = p * z + RNNC_TANH_A11;
    p = p * z + RNNC_TANH_A9;
    p = p * z + RNNC_TANH_A7;
    p = p * z + RNNC_TANH_A5;
    p = p * z + RNNC_TANH_A3;
    p = p * z + RNNC_TANH_A1;
    float q = RNNC_TANH_B6;
    q = q * z + RNNC_TANH_B4;
    q = q * z + RNNC_TANH_B2;
    q = q * z + RNNC_TANH_B0;
    float r = v * p / q;
    float one = v < 0 ? -1.0f : 1.0f;
    /* tiny |x|: tanh(x) rounds to x (and -0 stays -0); NaN fails both compares: r (NaN) */
    return a >= RNNC_TANH_ONE ? one : (a < RNNC_TANH_TINY ? v : r);
}

RNNC_BELOW_AVX512(rnnc_sigmoid_f32_loop, (float* x, ptrdiff_t n),
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = rnnc_sigmoidf_body(x[i]);
)

RNNC_BELOW_AVX512(rnnc_tanh_f32_loop, (float* x, ptrdiff_t n),
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = rnnc_tanhf_body(x[i]);
)

/* One batch row of an LSTM step in one vectorised pass (separate passes over the gate blocks
 * cost a call and a trip through memory each). g (4H): pre-activations i, f, g, o in,
 * activations out (kept for training); c (H) updated; h and out (H) receive o * tanh(c')
 * (out may be h). */
__attribute__((always_inline))
static inline void rnnc_lstm_row_body(ptrdiff_t H, float* restrict g, float* restrict c,
                                      float* restrict h, float* out) {
    for (ptrdiff_t j = 0; j < H; j++) {
        float i_ = rnnc_sigmoidf_body(g[j]);
        float f_ = rnnc_sigmoidf_body(g[H + j]);
        float g_ = rnnc_tanhf_body(g[2 * H + j]);
        float o_ = rnnc_sigmoidf_body(g[3 * H + j]);
        float cn = f_ * c[j] + i_ * g_;
        float hn = o_ * rnnc_tanhf_body(cn);
        g[j] = i_;
        g[H + j] = f_;
        g[2 * H + j] = g_;
        g[3 * H + j] = o_;
        c[j] = cn;
        h[j] = hn;
    }
    if (out != h)
        for (ptrdiff_t j = 0; j < H; j++)
            out[j] = h[j];
}

RNNC_BELOW_AVX512(rnnc_lstm_row_f32_loop, (ptrdiff_t H, float* g, float* c, float* h,
                                           float* out),
    rnnc_lstm_row_body(H, g, c, h, out);
)

/* One batch row of a GRU step, PyTorch's form n = tanh(x_n + r * (h W_hn^T + b_hn)), in one
 * pass. x (3H): input parts of r, z, n in (biases folded), activations out; hg (3H): the
 * recurrent products; b_hn (H) or NULL; h_old (H) -> h_new (may be h_old) and out (H);
 * hn_keep (H) or NULL: h W_hn^T + b_hn, kept for the backward pass. */
__attribute__((always_inline))
static inline void rnnc_gru_row_body(ptrdiff_t H, float* restrict x, const float* restrict hg,
                                     const float* restrict b_hn, const float* h_old,
                                     float* h_new, float* restrict out,
                                     float* restrict hn_keep, const int bias, const int keep) {
    for (ptrdiff_t j = 0; j < H; j++) {
        float r_ = rnnc_sigmoidf_body(x[j] + hg[j]);
        float z_ = rnnc_sigmoidf_body(x[H + j] + hg[H + j]);
        float hn = bias ? hg[2 * H + j] + b_hn[j] : hg[2 * H + j];
        float n_ = rnnc_tanhf_body(x[2 * H + j] + r_ * hn);
        float hv = (1 - z_) * n_ + z_ * h_old[j];
        x[j] = r_;
        x[H + j] = z_;
        x[2 * H + j] = n_;
        if (keep)
            hn_keep[j] = hn;
        h_new[j] = hv;
        out[j] = hv;
    }
}

RNNC_BELOW_AVX512(rnnc_gru_row_f32_loop, (ptrdiff_t H, float* x, const float* hg,
                                          const float* b_hn, const float* h_old, float* h_new,
                                          float* out, float* hn_keep),
    if (b_hn && hn_keep)
        rnnc_gru_row_body(H, x, hg, b_hn, h_old, h_new, out, hn_keep, 1, 1);
    else if (b_hn)
        rnnc_gru_row_body(H, x, hg, b_hn, h_old, h_new, out, hn_keep, 1, 0);
    else if (hn_keep)
        rnnc_gru_row_body(H, x, hg, b_hn, h_old, h_new, out, hn_keep, 0, 1);
    else
        rnnc_gru_row_body(H, x, hg, b_hn, h_old, h_new, out, hn_keep, 0, 0);
)

/* ---------------------------------------------------------------------------------------------
 * AVX-512 versions of the forward activations and rows, written with intrinsics, 16 lanes a
 * vector, same formulas and the same accuracy bound (tests/test_activations.py applies them
 * through rnnc_sigmoid_f32 / rnnc_tanh_f32). What the compiler could not find on its own, and
 * what makes them faster than the auto-vectorised loops above
 * (benchmarks/results/amd-epyc/tuning.md):
 *   - 2^n by vscalefps, which also gives inf on overflow and 0 / subnormals on underflow, so
 *     the two-factor scaling and the integer arithmetic of rnnc_expf_body are not needed;
 *   - rounding by vrndscaleps; the reduction x - n ln2 in two FMAs;
 *   - no clamping branch for x > hi: x is clamped to [-104, 89], where scalef overflows to inf
 *     and underflows to 0 by itself.
 * Masked loads and stores handle a row's last partial vector, so no scalar tail remains.
 * NaN: min/max return their second operand when either is NaN, so NaN inputs stay NaN.
 * ------------------------------------------------------------------------------------------- */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
#include <immintrin.h>
#define RNNC_AVX512_ROWS 1

#define RNNC_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline

RNNC_AVX512_INLINE __m512 rnnc_exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

RNNC_AVX512_INLINE __m512 rnnc_sigmoid16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = rnnc_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(one, _mm512_add_ps(one, e));
}

RNNC_AVX512_INLINE __m512 rnnc_tanh16(__m512 v) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512i vi = _mm512_castps_si512(v);
    __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, vi));
    __m512 z = _mm512_mul_ps(v, v);
    __m512 p = _mm512_fmadd_ps(z, _mm512_set1_ps(RNNC_TANH_A13), _mm512_set1_ps(RNNC_TANH_A11));
    p = _mm512_fmadd_ps(z, p, _mm512_set1_ps(RNNC_TANH_A9));
    p = _mm512_fmadd_ps(z, p, _mm512_set1_ps(RNNC_TANH_A7));
    p = _mm512_fmadd_ps(z, p, _mm512_set1_ps(RNNC_TANH_A5));
    p = _mm512_fmadd_ps(z, p, _mm512_set1_ps(RNNC_TANH_A3));
    p = _mm512_fmadd_ps(z, p, _mm512_set1_ps(RNNC_TANH_A1));
    __m512 q = _mm512_fmadd_ps(z, _mm512_set1_ps(RNNC_TANH_B6), _mm512_set1_ps(RNNC_TANH_B4));
    q = _mm512_fmadd_ps(z, q, _mm512_set1_ps(RNNC_TANH_B2));
    q = _mm512_fmadd_ps(z, q, _mm512_set1_ps(RNNC_TANH_B0));
    __m512 r = _mm512_div_ps(_mm512_mul_ps(v, p), q);
    /* +-1 with the sign of x */
    __m512 one = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0f)),
                                                     _mm512_and_si512(sign, vi)));
    /* tiny |x|: tanh(x) rounds to x (and -0 stays -0); NaN fails both compares: r (NaN) */
    __mmask16 is_one = _mm512_cmp_ps_mask(a, _mm512_set1_ps(RNNC_TANH_ONE), _CMP_GE_OQ);
    __mmask16 is_tiny = _mm512_cmp_ps_mask(a, _mm512_set1_ps(RNNC_TANH_TINY), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(is_one, _mm512_mask_blend_ps(is_tiny, r, v), one);
}

RNNC_AVX512_INLINE __mmask16 rnnc_tail_mask(ptrdiff_t j, ptrdiff_t n) {
    return n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
}

__attribute__((target("avx512f")))
static void rnnc_sigmoid_f32_avx512(float* x, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j += 16) {
        __mmask16 m = rnnc_tail_mask(j, n);
        _mm512_mask_storeu_ps(x + j, m, rnnc_sigmoid16(_mm512_maskz_loadu_ps(m, x + j)));
    }
}

__attribute__((target("avx512f")))
static void rnnc_tanh_f32_avx512(float* x, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j += 16) {
        __mmask16 m = rnnc_tail_mask(j, n);
        _mm512_mask_storeu_ps(x + j, m, rnnc_tanh16(_mm512_maskz_loadu_ps(m, x + j)));
    }
}

__attribute__((target("avx512f")))
static void rnnc_lstm_row_f32_avx512(ptrdiff_t H, float* g, float* c, float* h, float* out) {
    for (ptrdiff_t j = 0; j < H; j += 16) {
        __mmask16 m = rnnc_tail_mask(j, H);
        __m512 i_ = rnnc_sigmoid16(_mm512_maskz_loadu_ps(m, g + j));
        __m512 f_ = rnnc_sigmoid16(_mm512_maskz_loadu_ps(m, g + H + j));
        __m512 g_ = rnnc_tanh16(_mm512_maskz_loadu_ps(m, g + 2 * H + j));
        __m512 o_ = rnnc_sigmoid16(_mm512_maskz_loadu_ps(m, g + 3 * H + j));
        __m512 cn = _mm512_fmadd_ps(f_, _mm512_maskz_loadu_ps(m, c + j), _mm512_mul_ps(i_, g_));
        __m512 hn = _mm512_mul_ps(o_, rnnc_tanh16(cn));
        _mm512_mask_storeu_ps(g + j, m, i_);
        _mm512_mask_storeu_ps(g + H + j, m, f_);
        _mm512_mask_storeu_ps(g + 2 * H + j, m, g_);
        _mm512_mask_storeu_ps(g + 3 * H + j, m, o_);
        _mm512_mask_storeu_ps(c + j, m, cn);
        _mm512_mask_storeu_ps(h + j, m, hn);
        if (out != h)
            _mm512_mask_storeu_ps(out + j, m, hn);
    }
}

__attribute__((target("avx512f")))
static void rnnc_gru_row_f32_avx512(ptrdiff_t H, float* x, const float* hg, const float* b_hn,
                                    const float* h_old, float* h_new, float* out,
                                    float* hn_keep) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (ptrdiff_t j = 0; j < H; j += 16) {
        __mmask16 m = rnnc_tail_mask(j, H);
        __m512 r_ = rnnc_sigmoid16(_mm512_add_ps(_mm512_maskz_loadu_ps(m, x + j),
                                                 _mm512_maskz_loadu_ps(m, hg + j)));
        __m512 z_ = rnnc_sigmoid16(_mm512_add_ps(_mm512_maskz_loadu_ps(m, x + H + j),
                                                 _mm512_maskz_loadu_ps(m, hg + H + j)));
        __m512 hn = _mm512_maskz_loadu_ps(m, hg + 2 * H + j);
        if (b_hn)
            hn = _mm512_add_ps(hn, _mm512_maskz_loadu_ps(m, b_hn + j));
        __m512 n_ = rnnc_tanh16(_mm512_fmadd_ps(r_, hn, _mm512_maskz_loadu_ps(m, x + 2 * H + j)));
        __m512 ho = _mm512_maskz_loadu_ps(m, h_old + j);
        /* (1 - z) * n + z * h, rounded as the generic row computes it */
        __m512 hv = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(one, z_), n_),
                                  _mm512_mul_ps(z_, ho));
        _mm512_mask_storeu_ps(x + j, m, r_);
        _mm512_mask_storeu_ps(x + H + j, m, z_);
        _mm512_mask_storeu_ps(x + 2 * H + j, m, n_);
        if (hn_keep)
            _mm512_mask_storeu_ps(hn_keep + j, m, hn);
        _mm512_mask_storeu_ps(h_new + j, m, hv);
        _mm512_mask_storeu_ps(out + j, m, hv);
    }
}
/* ---- float64 sigmoid and tanh, 8 lanes a vector --------------------------------------------
 * Not approximations in the float32 sense: the same formulas as the scalar float64 functions of
 * rnnc/_kernels/_activations.pxd (sigmoid = 1 / (1 + exp(-x)), tanh(|x|) = -m / (m + 2) with
 * m = expm1(-2|x|)), with exp and expm1 evaluated to about an ulp instead of by libm:
 *   x = n ln2 + r, |r| <= ln2 / 2 (n by vrndscalepd, r by two FMAs with ln2 split in a high and
 *   a low part); expm1(r) = r + r^2 (1/2! + r/3! + ... + r^11/13!), Taylor to degree 13, whose
 *   truncation (|r|^14 / 14! < 5e-18) is far below an ulp; then
 *   exp(x) = 2^n (1 + expm1(r)) and expm1(x) = (2^n - 1) + 2^n expm1(r) (fdlibm's form: no
 *   cancellation for n != 0, and exactly expm1(r) for n = 0), 2^n by vscalefpd, which also
 *   gives inf on overflow and 0 / subnormals on underflow.
 * Within 2 ulp of NumPy's (glibc's) np.exp / np.expm1 / np.tanh and of the scalar forms
 * (tests/test_activations.py enforces the bound), and NaN, +-inf, +-0 and the overflow /
 * underflow limits as the scalar forms. The kernels call these through sigmoid_inplace /
 * tanh_inplace in float64, where libm's scalar exp and expm1 were a large part of a layer's
 * time (benchmarks/results/amd-epyc/tuning.md). */
RNNC_AVX512_INLINE __m512d rnnc_expm1_reduced8(__m512d r) {
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);                 /* 1/13! */
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 479001600.0));   /* 1/12! */
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    return _mm512_fmadd_pd(p, _mm512_mul_pd(r, r), r);
}

/* x = n ln2 + r; returns n, r in *r. x is clamped to [-746, 710] first (exp underflows to 0
 * below, overflows above), NaN kept (min/max return their second operand on NaN). */
RNNC_AVX512_INLINE __m512d rnnc_reduce8(__m512d x, __m512d* r) {
    x = _mm512_max_pd(_mm512_set1_pd(-746.0), _mm512_min_pd(_mm512_set1_pd(710.0), x));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d t = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    *r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), t);
    return n;
}

RNNC_AVX512_INLINE __m512d rnnc_exp8(__m512d x) {
    __m512d r;
    __m512d n = rnnc_reduce8(x, &r);
    return _mm512_scalef_pd(_mm512_add_pd(_mm512_set1_pd(1.0), rnnc_expm1_reduced8(r)), n);
}

RNNC_AVX512_INLINE __m512d rnnc_expm1_8(__m512d x) {
    __m512d r;
    __m512d n = rnnc_reduce8(x, &r);
    __m512d t = _mm512_scalef_pd(_mm512_set1_pd(1.0), n);                   /* 2^n */
    return _mm512_fmadd_pd(t, rnnc_expm1_reduced8(r), _mm512_sub_pd(t, _mm512_set1_pd(1.0)));
}

__attribute__((target("avx512f")))
static void rnnc_sigmoid_f64_avx512(double* x, ptrdiff_t n) {
    const __m512d one = _mm512_set1_pd(1.0);
    for (ptrdiff_t j = 0; j < n; j += 8) {
        __mmask8 m = n - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - j)) - 1);
        __m512d v = _mm512_maskz_loadu_pd(m, x + j);
        __m512d e = rnnc_exp8(_mm512_sub_pd(_mm512_setzero_pd(), v));
        _mm512_mask_storeu_pd(x + j, m, _mm512_div_pd(one, _mm512_add_pd(one, e)));
    }
}

__attribute__((target("avx512f")))
static void rnnc_tanh_f64_avx512(double* x, ptrdiff_t n) {
    const __m512i sign = _mm512_set1_epi64((long long)0x8000000000000000ull);
    for (ptrdiff_t j = 0; j < n; j += 8) {
        __mmask8 m = n - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - j)) - 1);
        __m512i vi = _mm512_castpd_si512(_mm512_maskz_loadu_pd(m, x + j));
        __m512d a = _mm512_castsi512_pd(_mm512_andnot_si512(sign, vi));
        __m512d e = rnnc_expm1_8(_mm512_mul_pd(a, _mm512_set1_pd(-2.0)));
        __m512d t = _mm512_div_pd(_mm512_sub_pd(_mm512_setzero_pd(), e),
                                  _mm512_add_pd(e, _mm512_set1_pd(2.0)));
        /* t >= 0 (or NaN): put x's sign on it */
        t = _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(t),
                                                _mm512_and_si512(sign, vi)));
        _mm512_mask_storeu_pd(x + j, m, t);
    }
}

/* The same float64 functions with AVX2 + FMA, 4 lanes a vector, bit for bit the AVX-512 ones
 * (tests/test_isa_kernels.py): the same reduction and polynomial; v * 2^n, without vscalefpd,
 * as (v * 2^n1) * 2^n2 with n1 = floor(n / 2) (rnnc_scale4), each factor a normal double built
 * in the exponent bits: the first product is exact, the second rounds once, as vscalefpd does,
 * and gives inf and 0 / subnormals past the limits. The last partial vector goes through a copy
 * (AVX2 has no masked arithmetic). libm's scalar exp and expm1, which the AVX2 level used
 * before, took 4.5 and 11 ns an element (benchmarks/results/amd-epyc/isa_kernels.md). */
#define RNNC_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

RNNC_AVX2_INLINE __m256d rnnc_expm1_reduced4(__m256d r) {
    __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 479001600.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
    return _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), r);
}

RNNC_AVX2_INLINE __m256d rnnc_reduce4(__m256d x, __m256d* r) {
    x = _mm256_max_pd(_mm256_set1_pd(-746.0), _mm256_min_pd(_mm256_set1_pd(710.0), x));
    __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d t = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
    *r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), t);
    return n;
}

/* v * 2^n, rounded once (v * 2^n1 is exact: |v| is within [0.5, 2] and n1 >= -538). */
RNNC_AVX2_INLINE __m256d rnnc_scale4(__m256d v, __m256d n) {
    const __m256d magic = _mm256_set1_pd(6755399441055744.0 + 1023.0);
    __m256d n1 = _mm256_round_pd(_mm256_mul_pd(n, _mm256_set1_pd(0.5)),
                                 _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256d s1 = _mm256_castsi256_pd(_mm256_slli_epi64(
        _mm256_castpd_si256(_mm256_add_pd(n1, magic)), 52));
    __m256d s2 = _mm256_castsi256_pd(_mm256_slli_epi64(
        _mm256_castpd_si256(_mm256_add_pd(_mm256_sub_pd(n, n1), magic)), 52));
    return _mm256_mul_pd(_mm256_mul_pd(v, s1), s2);
}

__attribute__((target("avx2,fma")))
static void rnnc_sigmoid_f64_avx2(double* x, ptrdiff_t n) {
    const __m256d one = _mm256_set1_pd(1.0);
    for (ptrdiff_t j = 0; j < n; j += 4) {
        double tail[4] = {0, 0, 0, 0};
        double* p = n - j >= 4 ? x + j : tail;
        if (p == tail) memcpy(tail, x + j, (size_t)(n - j) * sizeof(double));
        __m256d r;
        __m256d k = rnnc_reduce4(_mm256_sub_pd(_mm256_setzero_pd(), _mm256_loadu_pd(p)), &r);
        __m256d e = rnnc_scale4(_mm256_add_pd(one, rnnc_expm1_reduced4(r)), k);
        _mm256_storeu_pd(p, _mm256_div_pd(one, _mm256_add_pd(one, e)));
        if (p == tail) memcpy(x + j, tail, (size_t)(n - j) * sizeof(double));
    }
}

__attribute__((target("avx2,fma")))
static void rnnc_tanh_f64_avx2(double* x, ptrdiff_t n) {
    const __m256i sign = _mm256_set1_epi64x((long long)0x8000000000000000ull);
    const __m256d one = _mm256_set1_pd(1.0);
    for (ptrdiff_t j = 0; j < n; j += 4) {
        double tail[4] = {0, 0, 0, 0};
        double* p = n - j >= 4 ? x + j : tail;
        if (p == tail) memcpy(tail, x + j, (size_t)(n - j) * sizeof(double));
        __m256i vi = _mm256_castpd_si256(_mm256_loadu_pd(p));
        __m256d a = _mm256_castsi256_pd(_mm256_andnot_si256(sign, vi));
        __m256d r;
        __m256d k = rnnc_reduce4(_mm256_mul_pd(a, _mm256_set1_pd(-2.0)), &r);
        __m256d t2 = rnnc_scale4(one, k);                                     /* 2^k */
        __m256d e = _mm256_fmadd_pd(t2, rnnc_expm1_reduced4(r), _mm256_sub_pd(t2, one));
        __m256d t = _mm256_div_pd(_mm256_sub_pd(_mm256_setzero_pd(), e),
                                  _mm256_add_pd(e, _mm256_set1_pd(2.0)));
        t = _mm256_castsi256_pd(_mm256_or_si256(_mm256_castpd_si256(t),
                                                _mm256_and_si256(sign, vi)));
        _mm256_storeu_pd(p, t);
        if (p == tail) memcpy(x + j, tail, (size_t)(n - j) * sizeof(double));
    }
}
#endif


/* float64 (see above): 1 when done, 0 at the baseline level (the caller then loops over the
 * scalar functions of rnnc/_kernels/_activations.pxd, the same formulas with libm's exp /
 * expm1). */
static inline int rnnc_sigmoid_f64(double* x, ptrdiff_t n) {
#ifdef RNNC_AVX512_ROWS
    switch (rnnc_cpu_isa()) {
        case RNNC_ISA_AVX512: rnnc_sigmoid_f64_avx512(x, n); return 1;
        case RNNC_ISA_AVX2: rnnc_sigmoid_f64_avx2(x, n); return 1;
    }
#endif
    (void)x; (void)n;
    return 0;
}

static inline int rnnc_tanh_f64(double* x, ptrdiff_t n) {
#ifdef RNNC_AVX512_ROWS
    switch (rnnc_cpu_isa()) {
        case RNNC_ISA_AVX512: rnnc_tanh_f64_avx512(x, n); return 1;
        case RNNC_ISA_AVX2: rnnc_tanh_f64_avx2(x, n); return 1;
    }
#endif
    (void)x; (void)n;
    return 0;
}

/* The activations and rows the kernels call, for the level in use: AVX-512 intrinsics, else
 * the loops above compiled for AVX2 + FMA or the baseline. */
#ifdef RNNC_AVX512_ROWS
#define RNNC_ROW_AT_LEVEL(NAME, ARGS) RNNC_CALL_AT_LEVEL(NAME, ARGS)
#else
#define RNNC_ROW_AT_LEVEL(NAME, ARGS) NAME##_baseline ARGS
#endif
/* The AVX-512 level of these loops: the versions written with intrinsics. */
#define rnnc_sigmoid_f32_loop_avx512 rnnc_sigmoid_f32_avx512
#define rnnc_tanh_f32_loop_avx512 rnnc_tanh_f32_avx512
#define rnnc_lstm_row_f32_loop_avx512 rnnc_lstm_row_f32_avx512
#define rnnc_gru_row_f32_loop_avx512 rnnc_gru_row_f32_avx512

static inline void rnnc_sigmoid_f32(float* x, ptrdiff_t n) {
    RNNC_ROW_AT_LEVEL(rnnc_sigmoid_f32_loop, (x, n));
}

static inline void rnnc_tanh_f32(float* x, ptrdiff_t n) {
    RNNC_ROW_AT_LEVEL(rnnc_tanh_f32_loop, (x, n));
}

static inline void rnnc_lstm_row_f32(ptrdiff_t H, float* g, float* c, float* h, float* out) {
    RNNC_ROW_AT_LEVEL(rnnc_lstm_row_f32_loop, (H, g, c, h, out));
}

static inline void rnnc_gru_row_f32(ptrdiff_t H, float* x, const float* hg, const float* b_hn,
                                    const float* h_old, float* h_new, float* out,
                                    float* hn_keep) {
    RNNC_ROW_AT_LEVEL(rnnc_gru_row_f32_loop, (H, x, hg, b_hn, h_old, h_new, out, hn_keep));
}

/* ---------------------------------------------------------------------------------------------
 * Backward (BPTT) rows: one batch row of one step of the training backward, float32, in one
 * vectorised pass each. Same formulas as the float64 code of rnnc/_kernels/_cell_math.pxd (see
 * there for the derivation); db, when not NULL, accumulates the gradients of the gate
 * pre-activations (the bias gradients, summed over rows and steps) while they are in registers,
 * instead of one more pass over the whole (N, G) gradient afterwards.
 *
 * RNNC_IVDEP: the rows' arrays never overlap (each is a distinct buffer or a distinct block of
 * one), but GCC cannot prove that a[j] and a[H + j] differ for an unknown H and gave up once the
 * run-time overlap checks it would need passed ten (the bias accumulators), leaving scalar code.
 * ------------------------------------------------------------------------------------------- */
#if defined(__GNUC__) && !defined(__clang__)
#define RNNC_IVDEP _Pragma("GCC ivdep")
#else
#define RNNC_IVDEP
#endif

/* LSTM. a (4H): activations i, f, g, o in, dA out; c_prev (H); dc (H): dL/dc<t> in,
 * dL/dc<t-1> out; dhh (H) dL/d(o * tanh c<t>), plus dout (H) when not NULL; hbuf (H) or NULL:
 * out o * tanh(c<t>) (projection); db (4H) += dA, or NULL. */
__attribute__((always_inline))
static inline void rnnc_lstm_row_backward_body(
        ptrdiff_t H, float* restrict a, const float* restrict c_prev, float* restrict dc,
        const float* restrict dhh, const float* restrict dout, float* restrict hbuf,
        float* restrict db, const int has_dout, const int has_hbuf, const int has_db) {
    RNNC_IVDEP
    for (ptrdiff_t j = 0; j < H; j++) {
        float i_ = a[j], f_ = a[H + j], g_ = a[2 * H + j], o_ = a[3 * H + j];
        float cp = c_prev[j];
        /* c<t> recomputed from the kept gates */
        float tc = rnnc_tanhf_body(f_ * cp + i_ * g_);
        float dht = has_dout ? dhh[j] + dout[j] : dhh[j];
        float dct = dc[j] + dht * o_ * (1 - tc * tc);
        float da_i = dct * g_ * i_ * (1 - i_);
        float da_f = dct * cp * f_ * (1 - f_);
        float da_g = dct * i_ * (1 - g_ * g_);
        float da_o = dht * tc * o_ * (1 - o_);
        if (has_hbuf)
            hbuf[j] = o_ * tc;
        dc[j] = dct * f_;
        a[j] = da_i;
        a[H + j] = da_f;
        a[2 * H + j] = da_g;
        a[3 * H + j] = da_o;
        if (has_db) {
            db[j] += da_i;
            db[H + j] += da_f;
            db[2 * H + j] += da_g;
            db[3 * H + j] += da_o;
        }
    }
}

RNNC_AT_LEVELS(rnnc_lstm_row_backward_f32_loop,
               (ptrdiff_t H, float* a, const float* c_prev, float* dc, const float* dhh,
                const float* dout, float* hbuf, float* db),
    if (hbuf) {         /* projection: dout is already in dhh */
        if (db)
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 0, 1, 1);
        else
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 0, 1, 0);
    } else if (dout) {
        if (db)
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 1, 0, 1);
        else
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 1, 0, 0);
    } else {
        if (db)
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 0, 0, 1);
        else
            rnnc_lstm_row_backward_body(H, a, c_prev, dc, dhh, dout, hbuf, db, 0, 0, 0);
    }
)

static inline void rnnc_lstm_row_backward_f32(ptrdiff_t H, float* a, const float* c_prev,
                                              float* dc, const float* dhh, const float* dout,
                                              float* hbuf, float* db) {
    RNNC_CALL_AT_LEVEL(rnnc_lstm_row_backward_f32_loop, (H, a, c_prev, dc, dhh, dout, hbuf, db));
}

/* GRU, PyTorch's form (reset_after). a (3H): r, z, n in, dA w.r.t. the input projection out;
 * hn (H): W_hn h + b_hn in, its gradient r * dA_n out; h_prev (H); dh (H): dL/dh<t> from the
 * future in, z * (dh + dout) out; dout (H); dgh (3H) out: dA w.r.t. h W_hh^T + b_hh;
 * db (4H) += [dA_r, dA_z, dA_n, r * dA_n], or NULL. */
__attribute__((always_inline))
static inline void rnnc_gru_row_backward_body(
        ptrdiff_t H, float* restrict a, float* restrict hn, const float* restrict h_prev,
        float* restrict dh, const float* restrict dout, float* restrict dgh,
        float* restrict db, const int has_db) {
    RNNC_IVDEP
    for (ptrdiff_t j = 0; j < H; j++) {
        float r_ = a[j], z_ = a[H + j], n_ = a[2 * H + j];
        float g = dh[j] + dout[j];
        float dan = g * (1 - z_) * (1 - n_ * n_);
        float daz = g * (h_prev[j] - n_) * z_ * (1 - z_);
        float dar = dan * hn[j] * r_ * (1 - r_);
        float dhn = dan * r_;
        dh[j] = g * z_;
        a[j] = dar;
        a[H + j] = daz;
        a[2 * H + j] = dan;
        hn[j] = dhn;
        dgh[j] = dar;
        dgh[H + j] = daz;
        dgh[2 * H + j] = dhn;
        if (has_db) {
            db[j] += dar;
            db[H + j] += daz;
            db[2 * H + j] += dan;
            db[3 * H + j] += dhn;
        }
    }
}

RNNC_AT_LEVELS(rnnc_gru_row_backward_f32_loop,
               (ptrdiff_t H, float* a, float* hn, const float* h_prev, float* dh,
                const float* dout, float* dgh, float* db),
    if (db)
        rnnc_gru_row_backward_body(H, a, hn, h_prev, dh, dout, dgh, db, 1);
    else
        rnnc_gru_row_backward_body(H, a, hn, h_prev, dh, dout, dgh, db, 0);
)

static inline void rnnc_gru_row_backward_f32(ptrdiff_t H, float* a, float* hn,
                                             const float* h_prev, float* dh, const float* dout,
                                             float* dgh, float* db) {
    RNNC_CALL_AT_LEVEL(rnnc_gru_row_backward_f32_loop, (H, a, hn, h_prev, dh, dout, dgh, db));
}

/* Elman RNN. a (H): activations in, dA out; dh (H) from the future; dout (H);
 * db (H) += dA, or NULL. relu: dA = g where a > 0, else 0 (a NaN activation gives 0, as in
 * the float64 code). */
__attribute__((always_inline))
static inline void rnnc_rnn_row_backward_body(
        ptrdiff_t H, float* restrict a, const float* restrict dh, const float* restrict dout,
        float* restrict db, const int relu, const int has_db) {
    RNNC_IVDEP
    for (ptrdiff_t j = 0; j < H; j++) {
        float av = a[j];
        float g = dh[j] + dout[j];
        float d = relu ? (av > 0 ? g : 0.0f) : g * (1 - av * av);
        a[j] = d;
        if (has_db)
            db[j] += d;
    }
}

RNNC_AT_LEVELS(rnnc_rnn_row_backward_f32_loop,
               (ptrdiff_t H, int relu, float* a, const float* dh, const float* dout, float* db),
    if (relu) {
        if (db)
            rnnc_rnn_row_backward_body(H, a, dh, dout, db, 1, 1);
        else
            rnnc_rnn_row_backward_body(H, a, dh, dout, db, 1, 0);
    } else {
        if (db)
            rnnc_rnn_row_backward_body(H, a, dh, dout, db, 0, 1);
        else
            rnnc_rnn_row_backward_body(H, a, dh, dout, db, 0, 0);
    }
)

static inline void rnnc_rnn_row_backward_f32(ptrdiff_t H, int relu, float* a, const float* dh,
                                             const float* dout, float* db) {
    RNNC_CALL_AT_LEVEL(rnnc_rnn_row_backward_f32_loop, (H, relu, a, dh, dout, db));
}

#endif
