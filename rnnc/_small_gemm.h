/* C (M, N) = beta * C + A (M, K) @ B for small M, float32, row-major A and C.
 * B is given packed: panels of 64 columns, panel p = B[:, 64p:64p+64] stored as (K, 64)
 * contiguous (zero-padded past N), so the k loop streams through memory.
 * The recurrent product of one time step: M is the (small) batch, Bt the transposed weights,
 * laid out once per call so that each k reads one contiguous row of Bt. OpenBLAS re-packs the
 * whole weight matrix on every call, which dominates for small M; this kernel reads it in place.
 * AVX-512 with runtime dispatch; returns 0 (and does nothing) where AVX-512 is not available,
 * so the caller falls back to BLAS. beta is 0 or 1. rnnc/_stack.py packs the weights (pack_panels)
 * once per call and layer, so in-place updates of the parameters are always seen.
 */
#ifndef RNNC_SMALL_GEMM_H
#define RNNC_SMALL_GEMM_H
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
#include <immintrin.h>

/* One tile: MR (1..4, a compile-time constant after inlining) rows of C, 64 columns. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_sgemm_tile(const int MR, ptrdiff_t K, const float* const a[4],
                                   const float* b, const __mmask16 m[4], int beta,
                                   float* const c_rows[4]) {
    __m512 c[4][4];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = beta ? _mm512_maskz_loadu_ps(m[q], c_rows[r] + 16 * q)
                           : _mm512_setzero_ps();
    for (ptrdiff_t k = 0; k < K; k++, b += 64) {
        __m512 b0 = _mm512_loadu_ps(b);
        __m512 b1 = _mm512_loadu_ps(b + 16);
        __m512 b2 = _mm512_loadu_ps(b + 32);
        __m512 b3 = _mm512_loadu_ps(b + 48);
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(a[r][k]);
            c[r][0] = _mm512_fmadd_ps(x, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(x, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_ps(x, b2, c[r][2]);
            c[r][3] = _mm512_fmadd_ps(x, b3, c[r][3]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++)
            _mm512_mask_storeu_ps(c_rows[r] + 16 * q, m[q], c[r][q]);
}

__attribute__((target("avx512f")))
static void rnnc_sgemm_small_avx512(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                    const float* A, ptrdiff_t lda,
                                    const float* Bp, int beta,
                                    float* C, ptrdiff_t ldc) {
    for (ptrdiff_t i = 0; i < M; i += 4) {
        ptrdiff_t mr = M - i < 4 ? M - i : 4;
        const float* a[4];
        for (int r = 0; r < 4; r++)
            a[r] = A + (i + (r < mr ? r : 0)) * lda;
        for (ptrdiff_t j = 0; j < N; j += 64) {
            ptrdiff_t nr = N - j < 64 ? N - j : 64;
            __mmask16 m[4];
            float* c_rows[4];
            for (int q = 0; q < 4; q++) {
                ptrdiff_t left = nr - 16 * q;
                m[q] = left >= 16 ? (__mmask16)0xFFFF
                     : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
            }
            for (int r = 0; r < 4; r++)
                c_rows[r] = C + (i + (r < mr ? r : 0)) * ldc + j;
            const float* b = Bp + (j / 64) * K * 64;
            /* Only the rows that exist: no wasted FMAs for a batch of 1 to 3. */
            switch (mr) {
                case 4: rnnc_sgemm_tile(4, K, a, b, m, beta, c_rows); break;
                case 3: rnnc_sgemm_tile(3, K, a, b, m, beta, c_rows); break;
                case 2: rnnc_sgemm_tile(2, K, a, b, m, beta, c_rows); break;
                default: rnnc_sgemm_tile(1, K, a, b, m, beta, c_rows); break;
            }
        }
    }
}

static int rnnc_sgemm_small(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda,
                            const float* Bp, int beta, float* C, ptrdiff_t ldc) {
    static int has_avx512 = -1;
    if (has_avx512 < 0) {
        __builtin_cpu_init();
        has_avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    if (!has_avx512) return 0;
    rnnc_sgemm_small_avx512(M, N, K, A, lda, Bp, beta, C, ldc);
    return 1;
}
#else
static int rnnc_sgemm_small(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda,
                            const float* Bp, int beta, float* C, ptrdiff_t ldc) {
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)Bp; (void)beta; (void)C;
    (void)ldc;
    return 0;
}
#endif
#endif
