/* Whether the CPU runs AVX-512F, asked once (a benign race: every thread stores the same).
 * Shared by the small-batch GEMM (_small_gemm.h) and the activations (_simd_math.h), which
 * pick their AVX-512 code with it at run time. */
#ifndef RNNC_CPU_H
#define RNNC_CPU_H
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
static int rnnc_cpu_has_avx512(void) {
    static int has_avx512 = -1;
    if (has_avx512 < 0) {
        __builtin_cpu_init();
        has_avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return has_avx512;
}
#endif
#endif
