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

/* The packed operand of rnnc_sgemm_small: out[p][k][i] = W[64p + i][k] for the logical
 * (N, K) matrix W whose element (n, k) sits at w[n * sn + k * sk], zero past N. When sn != 1
 * this is a transpose, done in blocks of 16 k: each source cache line is read once, whole, and
 * the 4 KB of output it feeds stays in L1 (walking k with 64 rows 4 KB apart thrashed L1).
 * Portable version; rnnc_pack_panels below uses AVX-512 16 x 16 transposes where it can. */
static void rnnc_pack_panels_scalar(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                             ptrdiff_t sk, float* out) {
    for (ptrdiff_t j = 0; j < N; j += 64, out += K * 64) {
        ptrdiff_t nr = N - j < 64 ? N - j : 64;
        const float* wj = w + j * sn;
        for (ptrdiff_t k0 = 0; k0 < K; k0 += 16) {
            ptrdiff_t kn = K - k0 < 16 ? K - k0 : 16;
            float* o = out + k0 * 64;
            if (sn == 1) {
                for (ptrdiff_t kk = 0; kk < kn; kk++)
                    for (ptrdiff_t i = 0; i < nr; i++)
                        o[kk * 64 + i] = wj[(k0 + kk) * sk + i];
            } else {
                for (ptrdiff_t i = 0; i < nr; i++) {
                    const float* src = wj + i * sn + k0 * sk;
                    for (ptrdiff_t kk = 0; kk < kn; kk++)
                        o[kk * 64 + i] = src[kk * sk];
                }
            }
            for (ptrdiff_t kk = 0; kk < kn; kk++)
                for (ptrdiff_t i = nr; i < 64; i++)
                    o[kk * 64 + i] = 0.0f;
        }
    }
}


#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
#include <immintrin.h>

/* dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 block: the classic three-stage
 * unpack / shuffle / lane-shuffle transpose (48 shuffles instead of 256 scalar moves). */
__attribute__((target("avx512f")))
static void rnnc_transpose16(const float* src, ptrdiff_t lds, float* dst, ptrdiff_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

/* rnnc_pack_panels_scalar's layout. The transposing case (k contiguous in w, the forward
 * pass's W_hh) goes through 16 x 16 register transposes for the whole blocks. */
__attribute__((target("avx512f")))
static void rnnc_pack_panels_avx512(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                                    float* out) {
    ptrdiff_t N16 = N / 16 * 16, K16 = K / 16 * 16;
    for (ptrdiff_t n0 = 0; n0 < N16; n0 += 16) {
        float* o = out + (n0 / 64) * K * 64 + n0 % 64;
        for (ptrdiff_t k0 = 0; k0 < K16; k0 += 16)
            rnnc_transpose16(w + n0 * sn + k0, sn, o + k0 * 64, 64);
        for (ptrdiff_t k = K16; k < K; k++)
            for (ptrdiff_t i = 0; i < 16; i++)
                o[k * 64 + i] = w[(n0 + i) * sn + k];
    }
    for (ptrdiff_t n = N16; n < (N + 63) / 64 * 64; n++) {
        float* o = out + (n / 64) * K * 64 + n % 64;
        for (ptrdiff_t k = 0; k < K; k++)
            o[k * 64] = n < N ? w[n * sn + k] : 0.0f;
    }
}

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

/* One row of C (a batch of 1), 64 columns: even and odd k feed separate accumulators, so that
 * eight independent FMA chains hide the FMA latency (four chains would halve the throughput). */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_sgemm_row(ptrdiff_t K, const float* a, const float* b,
                                  const __mmask16 m[4], int beta, float* c_row) {
    __m512 c[2][4];
    for (int q = 0; q < 4; q++) {
        c[0][q] = beta ? _mm512_maskz_loadu_ps(m[q], c_row + 16 * q) : _mm512_setzero_ps();
        c[1][q] = _mm512_setzero_ps();
    }
    ptrdiff_t k = 0;
    for (; k + 1 < K; k += 2, b += 128) {
        __m512 x0 = _mm512_set1_ps(a[k]);
        __m512 x1 = _mm512_set1_ps(a[k + 1]);
        for (int q = 0; q < 4; q++) {
            c[0][q] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(b + 16 * q), c[0][q]);
            c[1][q] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(b + 64 + 16 * q), c[1][q]);
        }
    }
    if (k < K) {
        __m512 x0 = _mm512_set1_ps(a[k]);
        for (int q = 0; q < 4; q++)
            c[0][q] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(b + 16 * q), c[0][q]);
    }
    for (int q = 0; q < 4; q++)
        _mm512_mask_storeu_ps(c_row + 16 * q, m[q], _mm512_add_ps(c[0][q], c[1][q]));
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
                default: rnnc_sgemm_row(K, a[0], b, m, beta, c_rows[0]); break;
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

/* The packed operand of rnnc_sgemm_small (see rnnc_pack_panels_scalar). */
static void rnnc_pack_panels(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                             ptrdiff_t sk, float* out) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
    if (sk == 1 && __builtin_cpu_supports("avx512f")) {
        rnnc_pack_panels_avx512(N, K, w, sn, out);
        return;
    }
#endif
    rnnc_pack_panels_scalar(N, K, w, sn, sk, out);
}
#endif
