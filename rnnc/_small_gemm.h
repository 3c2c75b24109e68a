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

__attribute__((target("avx512f")))
static void rnnc_sgemm_small_avx512(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                    const float* A, ptrdiff_t lda,
                                    const float* Bp, int beta,
                                    float* C, ptrdiff_t ldc) {
    for (ptrdiff_t i = 0; i < M; i += 4) {
        ptrdiff_t mr = M - i < 4 ? M - i : 4;
        const float* a0 = A + i * lda;
        const float* a1 = mr > 1 ? a0 + lda : a0;
        const float* a2 = mr > 2 ? a0 + 2 * lda : a0;
        const float* a3 = mr > 3 ? a0 + 3 * lda : a0;
        for (ptrdiff_t j = 0; j < N; j += 64) {
            ptrdiff_t nr = N - j < 64 ? N - j : 64;
            __mmask16 m[4];
            for (int q = 0; q < 4; q++) {
                ptrdiff_t left = nr - 16 * q;
                m[q] = left >= 16 ? (__mmask16)0xFFFF
                     : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
            }
            __m512 c[4][4];
            for (int r = 0; r < 4; r++)
                for (int q = 0; q < 4; q++)
                    c[r][q] = (beta && r < mr)
                        ? _mm512_maskz_loadu_ps(m[q], C + (i + r) * ldc + j + 16 * q)
                        : _mm512_setzero_ps();
            const float* b = Bp + (j / 64) * K * 64;
            for (ptrdiff_t k = 0; k < K; k++, b += 64) {
                __m512 b0 = _mm512_loadu_ps(b);
                __m512 b1 = _mm512_loadu_ps(b + 16);
                __m512 b2 = _mm512_loadu_ps(b + 32);
                __m512 b3 = _mm512_loadu_ps(b + 48);
                __m512 x;
                x = _mm512_set1_ps(a0[k]);
                c[0][0] = _mm512_fmadd_ps(x, b0, c[0][0]); c[0][1] = _mm512_fmadd_ps(x, b1, c[0][1]);
                c[0][2] = _mm512_fmadd_ps(x, b2, c[0][2]); c[0][3] = _mm512_fmadd_ps(x, b3, c[0][3]);
                x = _mm512_set1_ps(a1[k]);
                c[1][0] = _mm512_fmadd_ps(x, b0, c[1][0]); c[1][1] = _mm512_fmadd_ps(x, b1, c[1][1]);
                c[1][2] = _mm512_fmadd_ps(x, b2, c[1][2]); c[1][3] = _mm512_fmadd_ps(x, b3, c[1][3]);
                x = _mm512_set1_ps(a2[k]);
                c[2][0] = _mm512_fmadd_ps(x, b0, c[2][0]); c[2][1] = _mm512_fmadd_ps(x, b1, c[2][1]);
                c[2][2] = _mm512_fmadd_ps(x, b2, c[2][2]); c[2][3] = _mm512_fmadd_ps(x, b3, c[2][3]);
                x = _mm512_set1_ps(a3[k]);
                c[3][0] = _mm512_fmadd_ps(x, b0, c[3][0]); c[3][1] = _mm512_fmadd_ps(x, b1, c[3][1]);
                c[3][2] = _mm512_fmadd_ps(x, b2, c[3][2]); c[3][3] = _mm512_fmadd_ps(x, b3, c[3][3]);
            }
            for (int r = 0; r < 4; r++) {
                if (r >= mr) break;
                for (int q = 0; q < 4; q++)
                    _mm512_mask_storeu_ps(C + (i + r) * ldc + j + 16 * q, m[q], c[r][q]);
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
