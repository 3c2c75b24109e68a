/* C (M, N) = beta * C + A (M, K) @ B for small M, row-major A and C, float32 and float64.
 * B is given packed: panels of W = RNNC_SGEMM_PANEL (64) float32 or RNNC_DGEMM_PANEL (32)
 * float64 columns, panel p = B[:, Wp:Wp+W] stored as (K, W) contiguous (zero-padded past N), so
 * the k loop streams through memory. Either width makes a panel row 256 bytes: four zmm
 * registers, eight ymm.
 * The recurrent product of one time step: M is the (small) batch, Bt the transposed weights,
 * laid out once per call so that each k reads one contiguous row of Bt. OpenBLAS re-packs the
 * whole weight matrix on every call, which dominates for small M; this kernel reads it in place.
 * Run-time dispatch by rnnc_cpu_isa() (_cpu.h): AVX-512 and AVX2 + FMA versions of the same
 * products on the same packed layout (packed weights serve either); at the baseline level the
 * products return 0 (and do nothing), so the caller falls back to BLAS. beta is 0 or 1.
 * rnnc/_engine/workspace.py (pack_panels) packs the weights once per call and layer (a frozen
 * module keeps them), so in-place updates of an unfrozen module's parameters are always seen.
 *
 * Loop order (both dtypes, every ISA): blocks of panels sized from the L2 (see
 * rnnc_small_gemm_block_panels), row tiles of 4 rows inside a block, the block's panels inside
 * a row tile: a block is read from memory or L3 once per step and by every other row tile from
 * L2. Looping over all the panels for each row tile re-read every weight from L3 once per 4 rows
 * of the batch when the weights exceed L2 (an issue report on a Xeon: LSTM float32 B64 H512
 * slower than float64). Each output element is one tile's sum over the whole of k, in the same
 * order whatever the blocking: the results do not depend on the cache sizes, bit for bit. A row's
 * result does not depend on the other rows either, as long as the row tiles start at multiples
 * of 4 (the engine's row split, plan.ROW_TILE, relies on it).
 */
#ifndef RNNC_SMALL_GEMM_H
#define RNNC_SMALL_GEMM_H
#include <stddef.h>
#include "_cpu.h"

#define RNNC_SGEMM_PANEL 64
#define RNNC_DGEMM_PANEL 32

/* Panels of a block of the loop order above: as many as fill half of an L2 of `l2` bytes with
 * panels of K rows of `row_bytes` each (the other half holds the rows of A and C and what the
 * prefetchers bring in), at least 1. A pure function of its arguments, for tests
 * (_blas.small_gemm_blocking). */
static inline ptrdiff_t rnnc_small_gemm_block_panels(ptrdiff_t K, ptrdiff_t row_bytes,
                                                     ptrdiff_t l2) {
    ptrdiff_t panel = (K > 0 ? K : 1) * (row_bytes > 0 ? row_bytes : 1);
    ptrdiff_t n = (l2 / 2) / panel;
    return n > 1 ? n : 1;
}

/* The blocked loops of both dtypes and every ISA, calling `tile` for each (row tile, panel).
 * `flip` (the parity of the time step) reverses the order of the blocks and alternates the
 * direction in which successive row tiles walk a block's panels: the panels read last by one
 * walk are the first read by the next, from L1/L2, where walks in one direction would have
 * evicted them before reuse; and a step starts with the block the step before ended with, still
 * in L2. Each column's sum runs in the same order either way (same results, bit for bit). It
 * pays at batch 1, where a step is bound by reading the weights; larger batches are bound by
 * the FMAs (benchmarks/results/amd-epyc/tuning.md). */
#define RNNC_SMALL_GEMM_DRIVE(T, W, tile, M, N, K, A, lda, Bp, beta, init, C, ldc, flip)       \
    do {                                                                                      \
        ptrdiff_t panels_ = ((N) + (W) - 1) / (W), tiles_ = ((M) + 3) / 4;                    \
        ptrdiff_t bp_ = rnnc_small_gemm_block_panels((K), (W) * (ptrdiff_t)sizeof(T),         \
                                                     rnnc_machine.l2);                        \
        ptrdiff_t blocks_ = (panels_ + bp_ - 1) / bp_;                                        \
        for (ptrdiff_t s_ = 0; s_ < blocks_; s_++) {                                          \
            ptrdiff_t p0_ = bp_ * ((flip) ? blocks_ - 1 - s_ : s_);                           \
            ptrdiff_t np_ = panels_ - p0_ < bp_ ? panels_ - p0_ : bp_;                        \
            for (ptrdiff_t t_ = 0; t_ < tiles_; t_++) {                                       \
                ptrdiff_t i_ = 4 * t_, mr_ = (M) - i_ < 4 ? (M) - i_ : 4;                     \
                const T* a_[4];                                                               \
                for (int r_ = 0; r_ < 4; r_++)                                                \
                    a_[r_] = (A) + (i_ + (r_ < mr_ ? r_ : 0)) * (lda);                        \
                int back_ = (int)((t_ + ((flip) ? tiles_ : 0)) & 1);                          \
                for (ptrdiff_t q_ = 0; q_ < np_; q_++) {                                      \
                    ptrdiff_t j_ = (W) * (p0_ + (back_ ? np_ - 1 - q_ : q_));                 \
                    T* c_[4];                                                                 \
                    for (int r_ = 0; r_ < 4; r_++)                                            \
                        c_[r_] = (C) + (i_ + (r_ < mr_ ? r_ : 0)) * (ldc) + j_;               \
                    tile((int)mr_, (K), a_, (Bp) + j_ * (K), (N) - j_ < (W) ? (N) - j_ : (W), \
                         (beta), (init) ? (init) + j_ : NULL, c_);                             \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* The packed operand of rnnc_sgemm_small: out[p][k][i] = W[64p + i][k] for the logical
 * (N, K) matrix W whose element (n, k) sits at w[n * sn + k * sk], zero past N. When sn != 1
 * this is a transpose, done in blocks of 16 k: each source cache line is read once, whole, and
 * the 4 KB of output it feeds stays in L1 (walking k across 64 rows 4 KB apart thrashes L1).
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


/* The packed operand of rnnc_dgemm_small: the float64 counterpart of the above with panels of
 * 32 columns, out[p][k][i] = W[32p + i][k], zero past N. Blocks of 8 k: one 64-byte line of
 * doubles. Portable version; rnnc_dpack_panels below uses AVX-512 where it can. */
static void rnnc_dpack_panels_scalar(ptrdiff_t N, ptrdiff_t K, const double* w, ptrdiff_t sn,
                                     ptrdiff_t sk, double* out) {
    for (ptrdiff_t j = 0; j < N; j += 32, out += K * 32) {
        ptrdiff_t nr = N - j < 32 ? N - j : 32;
        const double* wj = w + j * sn;
        for (ptrdiff_t k0 = 0; k0 < K; k0 += 8) {
            ptrdiff_t kn = K - k0 < 8 ? K - k0 : 8;
            double* o = out + k0 * 32;
            if (sn == 1) {
                for (ptrdiff_t kk = 0; kk < kn; kk++)
                    for (ptrdiff_t i = 0; i < nr; i++)
                        o[kk * 32 + i] = wj[(k0 + kk) * sk + i];
            } else {
                for (ptrdiff_t i = 0; i < nr; i++) {
                    const double* src = wj + i * sn + k0 * sk;
                    for (ptrdiff_t kk = 0; kk < kn; kk++)
                        o[kk * 32 + i] = src[kk * sk];
                }
            }
            for (ptrdiff_t kk = 0; kk < kn; kk++)
                for (ptrdiff_t i = nr; i < 32; i++)
                    o[kk * 32 + i] = 0.0;
        }
    }
}


#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
#include <immintrin.h>

/* dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 block: the classic three-stage
 * unpack / shuffle / lane-shuffle transpose (48 shuffles instead of 256 scalar moves). */
__attribute__((target("avx512f")))
static void rnnc_transpose16(const float* src, ptrdiff_t lds, float* dst, ptrdiff_t ldd,
                             int nt) {
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
    if (nt)
        for (int i = 0; i < 16; i++) _mm512_stream_ps(dst + i * ldd, r[i]);
    else
        for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

/* Packed float32 weights of at least this many bytes are written with streaming stores, as the
 * float64 ones are (RNNC_DPACK_STREAM_BYTES below): too large to stay cached for the first
 * step, they would cost a read of every output line before its write
 * (benchmarks/results/amd-epyc/tuning.md). */
#define RNNC_PACK_STREAM_BYTES ((ptrdiff_t)8 << 20)

/* rnnc_pack_panels_scalar's layout. The transposing case (k contiguous in w, the forward
 * pass's W_hh) goes through 16 x 16 register transposes for the whole blocks. */
__attribute__((target("avx512f")))
static void rnnc_pack_panels_avx512(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                                    float* out, ptrdiff_t of_bytes) {
    ptrdiff_t N16 = N / 16 * 16, K16 = K / 16 * 16;
    ptrdiff_t bytes = (N + 63) / 64 * 64 * K * (ptrdiff_t)sizeof(float);
    int nt = (bytes > of_bytes ? bytes : of_bytes) >= RNNC_PACK_STREAM_BYTES
             && ((size_t)out & 63) == 0;
    for (ptrdiff_t n0 = 0; n0 < N16; n0 += 16) {
        float* o = out + (n0 / 64) * K * 64 + n0 % 64;
        for (ptrdiff_t k0 = 0; k0 < K16; k0 += 16)
            rnnc_transpose16(w + n0 * sn + k0, sn, o + k0 * 64, 64, nt);
        for (ptrdiff_t k = K16; k < K; k++)
            for (ptrdiff_t i = 0; i < 16; i++)
                o[k * 64 + i] = w[(n0 + i) * sn + k];
    }
    for (ptrdiff_t n = N16; n < (N + 63) / 64 * 64; n++) {
        float* o = out + (n / 64) * K * 64 + n % 64;
        for (ptrdiff_t k = 0; k < K; k++)
            o[k * 64] = n < N ? w[n * sn + k] : 0.0f;
    }
    if (nt) _mm_sfence();   /* streaming stores are weakly ordered: publish them */
}

/* One tile: MR (1..4, a compile-time constant after inlining) rows of C, 64 columns. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_sgemm_tile(const int MR, ptrdiff_t K, const float* const a[4],
                                   const float* b, const __mmask16 m[4], int beta,
                                   const float* init, float* const c_rows[4]) {
    __m512 c[4][4];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = init ? _mm512_maskz_loadu_ps(m[q], init + 16 * q)
                    : beta ? _mm512_maskz_loadu_ps(m[q], c_rows[r] + 16 * q)
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
                                  const __mmask16 m[4], int beta, const float* init,
                                  float* c_row) {
    __m512 c[2][4];
    for (int q = 0; q < 4; q++) {
        c[0][q] = init ? _mm512_maskz_loadu_ps(m[q], init + 16 * q)
                : beta ? _mm512_maskz_loadu_ps(m[q], c_row + 16 * q) : _mm512_setzero_ps();
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

/* One (row tile, panel) of the loops of RNNC_SMALL_GEMM_DRIVE: mr rows, nr (1..64) columns. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_sgemm_panel_avx512(int mr, ptrdiff_t K, const float* const a[4],
                                           const float* b, ptrdiff_t nr, int beta,
                                           const float* init, float* const c_rows[4]) {
    __mmask16 m[4];
    for (int q = 0; q < 4; q++) {
        ptrdiff_t left = nr - 16 * q;
        m[q] = left >= 16 ? (__mmask16)0xFFFF
             : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
    }
    /* Only the rows that exist: no wasted FMAs for a batch of 1 to 3. */
    switch (mr) {
        case 4: rnnc_sgemm_tile(4, K, a, b, m, beta, init, c_rows); break;
        case 3: rnnc_sgemm_tile(3, K, a, b, m, beta, init, c_rows); break;
        case 2: rnnc_sgemm_tile(2, K, a, b, m, beta, init, c_rows); break;
        default: rnnc_sgemm_row(K, a[0], b, m, beta, init, c_rows[0]); break;
    }
}

__attribute__((target("avx512f")))
static void rnnc_sgemm_small_avx512(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                    const float* A, ptrdiff_t lda,
                                    const float* Bp, int beta, const float* init,
                                    float* C, ptrdiff_t ldc, int flip) {
    RNNC_SMALL_GEMM_DRIVE(float, RNNC_SGEMM_PANEL, rnnc_sgemm_panel_avx512,
                          M, N, K, A, lda, Bp, beta, init, C, ldc, flip);
}

/* ---- float64 ---------------------------------------------------------------------------------
 * The same design with 8 doubles a zmm register: panels of 32 columns keep a row of the panel at
 * 256 bytes (4 registers), so a 4-row tile still holds 16 accumulators and the batch-1 row
 * kernel still runs eight FMA chains. The packer differs: its transposes are 8 x 8 and masked,
 * so edge blocks (N or K not a multiple of 8, the zero padding past N) take the same vector path
 * instead of scalar loops. */

/* Packed weights of at least this many bytes are written with non-temporal (streaming) stores:
 * too large to stay cached until the first time step reads them (LSTM H1024: 32 MB), they would
 * cost a read of every output line before its write. Smaller outputs keep plain stores, which
 * were as fast or faster there (benchmarks/results/amd-epyc/tuning.md). */
#define RNNC_DPACK_STREAM_BYTES ((ptrdiff_t)8 << 20)

/* One 64-byte line of packed output; `nt` asks for a streaming store (dst then 64-byte aligned). */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_dpack_store(double* dst, __m512d v, int nt) {
    if (nt)
        _mm512_stream_pd(dst, v);
    else
        _mm512_storeu_pd(dst, v);
}

/* dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block of doubles, of which only the first
 * `rows` rows (0..8) and `cols` columns (1..8) of src are read (the others count as zero) and
 * only the first `cols` rows of dst are written, whole. Three stages of 8 shuffles: unpack pairs
 * of rows, then gather 128-bit lanes twice (0x88 picks lanes 0 and 2 of each source, 0xdd 1, 3). */
__attribute__((target("avx512f")))
static void rnnc_transpose8d(const double* src, ptrdiff_t lds, int rows, int cols,
                             double* dst, ptrdiff_t ldd, int nt) {
    __m512d r[8], t[8];
    __mmask8 m = (__mmask8)((1u << cols) - 1);
    for (int i = 0; i < 8; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_pd(m, src + i * lds) : _mm512_setzero_pd();
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);      /* a0 b0 a2 b2 a4 b4 a6 b6 */
        t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);  /* a1 b1 a3 b3 a5 b5 a7 b7 */
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0x88);      /* a0 b0 a4 b4 c0 d0 c4 d4 */
        r[i + 1] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0xdd);  /* a2 b2 a6 b6 c2 d2 c6 d6 */
        r[i + 2] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0x88);  /* columns 1 and 5 */
        r[i + 3] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0xdd);  /* columns 3 and 7 */
    }
    static const int col_of[4] = {0, 2, 1, 3};   /* the low column each r[i], r[i + 4] holds */
    for (int i = 0; i < 4; i++) {
        int lo = col_of[i];
        if (lo < cols)
            rnnc_dpack_store(dst + lo * ldd, _mm512_shuffle_f64x2(r[i], r[i + 4], 0x88), nt);
        if (lo + 4 < cols)
            rnnc_dpack_store(dst + (lo + 4) * ldd, _mm512_shuffle_f64x2(r[i], r[i + 4], 0xdd),
                             nt);
    }
}

/* Whether a packed output of `bytes` at `out` takes streaming stores (see above). */
static inline int rnnc_dpack_streams(const double* out, ptrdiff_t bytes, ptrdiff_t of_bytes) {
    return (bytes > of_bytes ? bytes : of_bytes) >= RNNC_DPACK_STREAM_BYTES
           && ((size_t)out & 63) == 0;
}

/* rnnc_dpack_panels_scalar's layout when k is contiguous in w (the forward pass's W_hh): per
 * group of 8 rows of w, 8 x 8 transposes along k, each writing 8 whole 64-byte lines; the
 * groups past N (up to the panel's end) write the zero padding. Reading 8 rows at a time is
 * faster than walking k across a panel's 32 rows (benchmarks/results/amd-epyc/tuning.md). */
__attribute__((target("avx512f")))
static void rnnc_dpack_panels_transpose_avx512(ptrdiff_t N, ptrdiff_t K, const double* w,
                                               ptrdiff_t sn, double* out,
                                               ptrdiff_t of_bytes) {
    ptrdiff_t Np = (N + 31) / 32 * 32;
    int nt = rnnc_dpack_streams(out, Np * K * (ptrdiff_t)sizeof(double), of_bytes);
    for (ptrdiff_t n0 = 0; n0 < Np; n0 += 8) {
        int rows = N - n0 >= 8 ? 8 : N - n0 <= 0 ? 0 : (int)(N - n0);
        const double* src = rows ? w + n0 * sn : w;
        double* o = out + (n0 / 32) * K * 32 + n0 % 32;
        for (ptrdiff_t k0 = 0; k0 < K; k0 += 8)
            rnnc_transpose8d(src + (rows ? k0 : 0), sn, rows, K - k0 < 8 ? (int)(K - k0) : 8,
                             o + k0 * 32, 32, nt);
    }
    if (nt) _mm_sfence();   /* streaming stores are weakly ordered: publish them */
}

/* The same layout when n is contiguous in w (the backward pass's W_hh^T, a view of W_hh): each
 * output row is 32 consecutive elements of one source row, four masked 8-wide copies (the masks
 * also write the zero padding past N; masked-off lanes are never read, so never fault). Source
 * rows outer, so that w is read in order: panel by panel, each pass would read 256 bytes of
 * every row (8 KB apart for W_hh^T of LSTM H1024: a TLB miss per row;
 * benchmarks/results/amd-epyc/tuning.md). */
__attribute__((target("avx512f")))
static void rnnc_dpack_panels_copy_avx512(ptrdiff_t N, ptrdiff_t K, const double* w,
                                          ptrdiff_t sk, double* out, ptrdiff_t of_bytes) {
    ptrdiff_t n_panels = (N + 31) / 32;
    int nt = rnnc_dpack_streams(out, n_panels * 32 * K * (ptrdiff_t)sizeof(double), of_bytes);
    __mmask8 last[4];   /* the last panel's masks; every other panel is full */
    for (int q = 0; q < 4; q++) {
        ptrdiff_t left = N - (n_panels - 1) * 32 - 8 * q;
        last[q] = left >= 8 ? (__mmask8)0xFF
                : left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1);
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        const double* src = w + k * sk;
        for (ptrdiff_t p = 0; p < n_panels; p++, src += 32) {
            double* o = out + (p * K + k) * 32;
            for (int q = 0; q < 4; q++) {
                __mmask8 m = p + 1 < n_panels ? (__mmask8)0xFF : last[q];
                rnnc_dpack_store(o + 8 * q, _mm512_maskz_loadu_pd(m, m ? src + 8 * q : w), nt);
            }
        }
    }
    if (nt) _mm_sfence();
}

/* One tile: MR (1..4, a compile-time constant after inlining) rows of C, 32 columns. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_dgemm_tile(const int MR, ptrdiff_t K, const double* const a[4],
                                   const double* b, const __mmask8 m[4], int beta,
                                   double* const c_rows[4]) {
    __m512d c[4][4];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = beta ? _mm512_maskz_loadu_pd(m[q], c_rows[r] + 8 * q)
                           : _mm512_setzero_pd();
    for (ptrdiff_t k = 0; k < K; k++, b += 32) {
        __m512d b0 = _mm512_loadu_pd(b);
        __m512d b1 = _mm512_loadu_pd(b + 8);
        __m512d b2 = _mm512_loadu_pd(b + 16);
        __m512d b3 = _mm512_loadu_pd(b + 24);
        for (int r = 0; r < MR; r++) {
            __m512d x = _mm512_set1_pd(a[r][k]);
            c[r][0] = _mm512_fmadd_pd(x, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_pd(x, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_pd(x, b2, c[r][2]);
            c[r][3] = _mm512_fmadd_pd(x, b3, c[r][3]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++)
            _mm512_mask_storeu_pd(c_rows[r] + 8 * q, m[q], c[r][q]);
}

/* One row of C (a batch of 1), 32 columns: even and odd k feed separate accumulators, so that
 * eight independent FMA chains hide the FMA latency, as in rnnc_sgemm_row. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_dgemm_row(ptrdiff_t K, const double* a, const double* b,
                                  const __mmask8 m[4], int beta, double* c_row) {
    __m512d c[2][4];
    for (int q = 0; q < 4; q++) {
        c[0][q] = beta ? _mm512_maskz_loadu_pd(m[q], c_row + 8 * q) : _mm512_setzero_pd();
        c[1][q] = _mm512_setzero_pd();
    }
    ptrdiff_t k = 0;
    for (; k + 1 < K; k += 2, b += 64) {
        __m512d x0 = _mm512_set1_pd(a[k]);
        __m512d x1 = _mm512_set1_pd(a[k + 1]);
        for (int q = 0; q < 4; q++) {
            c[0][q] = _mm512_fmadd_pd(x0, _mm512_loadu_pd(b + 8 * q), c[0][q]);
            c[1][q] = _mm512_fmadd_pd(x1, _mm512_loadu_pd(b + 32 + 8 * q), c[1][q]);
        }
    }
    if (k < K) {
        __m512d x0 = _mm512_set1_pd(a[k]);
        for (int q = 0; q < 4; q++)
            c[0][q] = _mm512_fmadd_pd(x0, _mm512_loadu_pd(b + 8 * q), c[0][q]);
    }
    for (int q = 0; q < 4; q++)
        _mm512_mask_storeu_pd(c_row + 8 * q, m[q], _mm512_add_pd(c[0][q], c[1][q]));
}

/* One (row tile, panel) of the loops of RNNC_SMALL_GEMM_DRIVE: mr rows, nr (1..32) columns. */
__attribute__((target("avx512f"), always_inline))
static inline void rnnc_dgemm_panel_avx512(int mr, ptrdiff_t K, const double* const a[4],
                                           const double* b, ptrdiff_t nr, int beta,
                                           const double* init, double* const c_rows[4]) {
    (void)init;
    __mmask8 m[4];
    for (int q = 0; q < 4; q++) {
        ptrdiff_t left = nr - 8 * q;
        m[q] = left >= 8 ? (__mmask8)0xFF
             : left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1);
    }
    switch (mr) {
        case 4: rnnc_dgemm_tile(4, K, a, b, m, beta, c_rows); break;
        case 3: rnnc_dgemm_tile(3, K, a, b, m, beta, c_rows); break;
        case 2: rnnc_dgemm_tile(2, K, a, b, m, beta, c_rows); break;
        default: rnnc_dgemm_row(K, a[0], b, m, beta, c_rows[0]); break;
    }
}

__attribute__((target("avx512f")))
static void rnnc_dgemm_small_avx512(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                    const double* A, ptrdiff_t lda,
                                    const double* Bp, int beta,
                                    double* C, ptrdiff_t ldc, int flip) {
    const double* init = NULL;
    RNNC_SMALL_GEMM_DRIVE(double, RNNC_DGEMM_PANEL, rnnc_dgemm_panel_avx512,
                          M, N, K, A, lda, Bp, beta, init, C, ldc, flip);
}

/* ---- AVX2 + FMA ------------------------------------------------------------------------------
 * The same products on the same panels with 16 ymm registers: a panel row is 8 ymm (8 float32
 * or 4 float64 each), too many to hold 4 rows' accumulators, so a panel is walked in strips of
 * NV ymm columns with MR x NV accumulators: for 3 or 4 rows, strips of 3, 3 and 2 ymm (12 FMA
 * chains with 3 loads and 4 broadcasts for 16 registers; 4 x 2 had only the 8 chains that just
 * cover the FMA latency, and stalled), 2 x 4 for 2 rows, 1 x 8 for one. Every
 * element is one FMA chain over k in order, whatever MR and NV: each row's result is the same
 * whichever tile it falls in. The strips past the last column of a partial panel are skipped;
 * partial vectors use masked loads and stores (the packed panels themselves are zero-padded). */
#define RNNC_AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline

/* Lanes of a vector whose first `left` lanes exist (float32: 8 lanes; float64: 4). */
RNNC_AVX2 __m256i rnnc_mask8_avx2(ptrdiff_t left) {
    int n = left < 0 ? 0 : left > 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

RNNC_AVX2 __m256i rnnc_mask4_avx2(ptrdiff_t left) {
    long long n = left < 0 ? 0 : left > 4 ? 4 : (long long)left;
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* One strip: MR rows of C, NV vectors of columns; b points at the strip's first column of the
 * panel (rows 64 floats apart); left: columns of the strip that exist (> 0). */
RNNC_AVX2 void rnnc_sgemm_strip_avx2(const int MR, const int NV, ptrdiff_t K,
                                     const float* const a[4], const float* b, ptrdiff_t left,
                                     int beta, const float* init, float* const c_rows[4],
                                     ptrdiff_t col) {
    __m256 c[4][8];
    __m256i m[8];
    for (int v = 0; v < NV; v++)
        m[v] = rnnc_mask8_avx2(left - 8 * v);
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            c[r][v] = init ? _mm256_maskload_ps(init + col + 8 * v, m[v])
                    : beta ? _mm256_maskload_ps(c_rows[r] + col + 8 * v, m[v])
                           : _mm256_setzero_ps();
    for (ptrdiff_t k = 0; k < K; k++, b += RNNC_SGEMM_PANEL) {
        __m256 bv[8];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm256_loadu_ps(b + 8 * v);
        for (int r = 0; r < MR; r++) {
            __m256 x = _mm256_broadcast_ss(a[r] + k);
            for (int v = 0; v < NV; v++)
                c[r][v] = _mm256_fmadd_ps(x, bv[v], c[r][v]);
        }
    }
    /* Masked stores are slow on some CPUs (AMD): plain ones for whole vectors. */
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            if (left - 8 * v >= 8)
                _mm256_storeu_ps(c_rows[r] + col + 8 * v, c[r][v]);
            else if (left - 8 * v > 0)
                _mm256_maskstore_ps(c_rows[r] + col + 8 * v, m[v], c[r][v]);
        }
}

RNNC_AVX2 void rnnc_sgemm_panel_avx2(int mr, ptrdiff_t K, const float* const a[4],
                                     const float* b, ptrdiff_t nr, int beta,
                                     const float* init, float* const c_rows[4]) {
    switch (mr) {
        case 4:     /* strips of 24, 24 and 16 columns */
            for (ptrdiff_t col = 0; col < nr && col < 48; col += 24)
                rnnc_sgemm_strip_avx2(4, 3, K, a, b + col, nr - col, beta, init, c_rows, col);
            if (nr > 48)
                rnnc_sgemm_strip_avx2(4, 2, K, a, b + 48, nr - 48, beta, init, c_rows, 48);
            break;
        case 3:
            for (ptrdiff_t col = 0; col < nr && col < 48; col += 24)
                rnnc_sgemm_strip_avx2(3, 3, K, a, b + col, nr - col, beta, init, c_rows, col);
            if (nr > 48)
                rnnc_sgemm_strip_avx2(3, 2, K, a, b + 48, nr - 48, beta, init, c_rows, 48);
            break;
        case 2:
            for (ptrdiff_t col = 0; col < nr; col += 32)
                rnnc_sgemm_strip_avx2(2, 4, K, a, b + col, nr - col, beta, init, c_rows, col);
            break;
        default:
            rnnc_sgemm_strip_avx2(1, 8, K, a, b, nr, beta, init, c_rows, 0);
            break;
    }
}

__attribute__((target("avx2,fma")))
static void rnnc_sgemm_small_avx2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                  const float* A, ptrdiff_t lda,
                                  const float* Bp, int beta, const float* init,
                                  float* C, ptrdiff_t ldc, int flip) {
    RNNC_SMALL_GEMM_DRIVE(float, RNNC_SGEMM_PANEL, rnnc_sgemm_panel_avx2,
                          M, N, K, A, lda, Bp, beta, init, C, ldc, flip);
}

/* float64: the same strips, 4 doubles a vector (rows of the panel 32 doubles apart). */
RNNC_AVX2 void rnnc_dgemm_strip_avx2(const int MR, const int NV, ptrdiff_t K,
                                     const double* const a[4], const double* b,
                                     ptrdiff_t left, int beta, double* const c_rows[4],
                                     ptrdiff_t col) {
    __m256d c[4][8];
    __m256i m[8];
    for (int v = 0; v < NV; v++)
        m[v] = rnnc_mask4_avx2(left - 4 * v);
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            c[r][v] = beta ? _mm256_maskload_pd(c_rows[r] + col + 4 * v, m[v])
                           : _mm256_setzero_pd();
    for (ptrdiff_t k = 0; k < K; k++, b += RNNC_DGEMM_PANEL) {
        __m256d bv[8];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm256_loadu_pd(b + 4 * v);
        for (int r = 0; r < MR; r++) {
            __m256d x = _mm256_broadcast_sd(a[r] + k);
            for (int v = 0; v < NV; v++)
                c[r][v] = _mm256_fmadd_pd(x, bv[v], c[r][v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            if (left - 4 * v >= 4)
                _mm256_storeu_pd(c_rows[r] + col + 4 * v, c[r][v]);
            else if (left - 4 * v > 0)
                _mm256_maskstore_pd(c_rows[r] + col + 4 * v, m[v], c[r][v]);
        }
}

RNNC_AVX2 void rnnc_dgemm_panel_avx2(int mr, ptrdiff_t K, const double* const a[4],
                                     const double* b, ptrdiff_t nr, int beta,
                                     const double* init, double* const c_rows[4]) {
    (void)init;
    switch (mr) {
        case 4:     /* strips of 12, 12 and 8 columns */
            for (ptrdiff_t col = 0; col < nr && col < 24; col += 12)
                rnnc_dgemm_strip_avx2(4, 3, K, a, b + col, nr - col, beta, c_rows, col);
            if (nr > 24)
                rnnc_dgemm_strip_avx2(4, 2, K, a, b + 24, nr - 24, beta, c_rows, 24);
            break;
        case 3:
            for (ptrdiff_t col = 0; col < nr && col < 24; col += 12)
                rnnc_dgemm_strip_avx2(3, 3, K, a, b + col, nr - col, beta, c_rows, col);
            if (nr > 24)
                rnnc_dgemm_strip_avx2(3, 2, K, a, b + 24, nr - 24, beta, c_rows, 24);
            break;
        case 2:
            for (ptrdiff_t col = 0; col < nr; col += 16)
                rnnc_dgemm_strip_avx2(2, 4, K, a, b + col, nr - col, beta, c_rows, col);
            break;
        default:
            rnnc_dgemm_strip_avx2(1, 8, K, a, b, nr, beta, c_rows, 0);
            break;
    }
}

__attribute__((target("avx2,fma")))
static void rnnc_dgemm_small_avx2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                  const double* A, ptrdiff_t lda,
                                  const double* Bp, int beta,
                                  double* C, ptrdiff_t ldc, int flip) {
    const double* init = NULL;
    RNNC_SMALL_GEMM_DRIVE(double, RNNC_DGEMM_PANEL, rnnc_dgemm_panel_avx2,
                          M, N, K, A, lda, Bp, beta, init, C, ldc, flip);
}

/* rnnc_pack_panels_scalar's layout when k is contiguous in w (the forward pass's W_hh), with
 * AVX 8 x 8 transposes for the whole blocks: the scalar loops were 2-3 times slower for
 * float32 (benchmarks/results/amd-epyc/isa_kernels.md); streaming stores as in
 * rnnc_pack_panels_avx512. */
__attribute__((target("avx2,fma")))
static void rnnc_pack_panels_avx2(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                                  float* out, ptrdiff_t of_bytes) {
    ptrdiff_t N8 = N / 8 * 8, K8 = K / 8 * 8;
    ptrdiff_t bytes = (N + 63) / 64 * 64 * K * (ptrdiff_t)sizeof(float);
    int nt = (bytes > of_bytes ? bytes : of_bytes) >= RNNC_PACK_STREAM_BYTES
             && ((size_t)out & 63) == 0;
    for (ptrdiff_t n0 = 0; n0 < N8; n0 += 8) {
        float* o = out + (n0 / 64) * K * 64 + n0 % 64;
        const float* src = w + n0 * sn;
        for (ptrdiff_t k0 = 0; k0 < K8; k0 += 8) {
            __m256 r[8], t[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * sn + k0);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int i = 0; i < 4; i++) {   /* columns i and i + 4 of the 8 rows */
                t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
                t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
            }
            for (int i = 0; i < 8; i++) {
                if (nt)
                    _mm256_stream_ps(o + (k0 + i) * 64, t[i]);
                else
                    _mm256_storeu_ps(o + (k0 + i) * 64, t[i]);
            }
        }
        for (ptrdiff_t k = K8; k < K; k++)
            for (ptrdiff_t i = 0; i < 8; i++)
                o[k * 64 + i] = src[i * sn + k];
    }
    for (ptrdiff_t n = N8; n < (N + 63) / 64 * 64; n++) {
        float* o = out + (n / 64) * K * 64 + n % 64;
        for (ptrdiff_t k = 0; k < K; k++)
            o[k * 64] = n < N ? w[n * sn + k] : 0.0f;
    }
    if (nt) _mm_sfence();   /* streaming stores are weakly ordered: publish them */
}
#define RNNC_SMALL_GEMM_KERNELS 1
#endif

/* The products the kernels call: 1 when done, 0 (nothing done) at the baseline level, where the
 * caller uses BLAS. */
static int rnnc_sgemm_small(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda,
                            const float* Bp, int beta, float* C, ptrdiff_t ldc, int flip) {
#ifdef RNNC_SMALL_GEMM_KERNELS
    switch (rnnc_cpu_isa()) {
        case RNNC_ISA_AVX512:
            rnnc_sgemm_small_avx512(M, N, K, A, lda, Bp, beta, NULL, C, ldc, flip);
            return 1;
        case RNNC_ISA_AVX2:
            rnnc_sgemm_small_avx2(M, N, K, A, lda, Bp, beta, NULL, C, ldc, flip);
            return 1;
    }
#endif
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)Bp; (void)beta; (void)C;
    (void)ldc; (void)flip;
    return 0;
}

/* C (M, N) = bias + A @ B, bias (N,) added to every row: the accumulators start from it, so the
 * sums are those of C = bias then rnnc_sgemm_small with beta = 1, bit for bit, without the pass
 * that lays the bias into C first (a step of a stream, rnnc/_kernels/_stream_kernel.pyx). */
static inline int rnnc_sgemm_small_bias(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A,
                                        ptrdiff_t lda, const float* Bp, const float* bias,
                                        float* C, ptrdiff_t ldc, int flip) {
#ifdef RNNC_SMALL_GEMM_KERNELS
    switch (rnnc_cpu_isa()) {
        case RNNC_ISA_AVX512:
            rnnc_sgemm_small_avx512(M, N, K, A, lda, Bp, 0, bias, C, ldc, flip);
            return 1;
        case RNNC_ISA_AVX2:
            rnnc_sgemm_small_avx2(M, N, K, A, lda, Bp, 0, bias, C, ldc, flip);
            return 1;
    }
#endif
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)Bp; (void)bias; (void)C;
    (void)ldc; (void)flip;
    return 0;
}

static int rnnc_dgemm_small(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const double* A,
                            ptrdiff_t lda, const double* Bp, int beta, double* C,
                            ptrdiff_t ldc, int flip) {
#ifdef RNNC_SMALL_GEMM_KERNELS
    switch (rnnc_cpu_isa()) {
        case RNNC_ISA_AVX512:
            rnnc_dgemm_small_avx512(M, N, K, A, lda, Bp, beta, C, ldc, flip);
            return 1;
        case RNNC_ISA_AVX2:
            rnnc_dgemm_small_avx2(M, N, K, A, lda, Bp, beta, C, ldc, flip);
            return 1;
    }
#endif
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)Bp; (void)beta; (void)C;
    (void)ldc; (void)flip;
    return 0;
}

/* The packed operand of rnnc_sgemm_small (see rnnc_pack_panels_scalar). `of_bytes`: the size
 * of the whole pack this call is a piece of (a split part packs its rows gate block by gate
 * block), for the choice of streaming stores; 0 when the call is the whole pack. */
static void rnnc_pack_panels(ptrdiff_t N, ptrdiff_t K, const float* w, ptrdiff_t sn,
                             ptrdiff_t sk, float* out, ptrdiff_t of_bytes) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
    if (sk == 1 && rnnc_cpu_isa() == RNNC_ISA_AVX512) {
        rnnc_pack_panels_avx512(N, K, w, sn, out, of_bytes);
        return;
    }
    if (sk == 1 && rnnc_cpu_isa() == RNNC_ISA_AVX2) {
        rnnc_pack_panels_avx2(N, K, w, sn, out, of_bytes);
        return;
    }
#endif
    (void)of_bytes;
    rnnc_pack_panels_scalar(N, K, w, sn, sk, out);
}

/* The packed operand of rnnc_dgemm_small (see rnnc_dpack_panels_scalar); of_bytes as in
 * rnnc_pack_panels. */
static void rnnc_dpack_panels(ptrdiff_t N, ptrdiff_t K, const double* w, ptrdiff_t sn,
                              ptrdiff_t sk, double* out, ptrdiff_t of_bytes) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
    if (rnnc_cpu_has_avx512()) {
        if (sk == 1) {
            rnnc_dpack_panels_transpose_avx512(N, K, w, sn, out, of_bytes);
            return;
        }
        if (sn == 1) {
            rnnc_dpack_panels_copy_avx512(N, K, w, sk, out, of_bytes);
            return;
        }
    }
#endif
    (void)of_bytes;
    rnnc_dpack_panels_scalar(N, K, w, sn, sk, out);
}
#endif
