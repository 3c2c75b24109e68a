/* The machine as the kernels see it: the instruction set they may use and the cache sizes they
 * block for. Every kernel module includes this header, so each has its own copy; each copy is
 * set when its module is imported, by rnnc/_engine/machine.py through the module's _configure
 * (rnnc/_kernels/_configure.pxi), which applies RNNC_MAX_CPU_ISA. rnnc_cpu_configure never
 * grants an instruction set the CPU lacks. */
#ifndef RNNC_CPU_H
#define RNNC_CPU_H
#include <stddef.h>

#define RNNC_ISA_BASELINE 0     /* no kernel of rnnc's own ISA code: BLAS and portable C */
#define RNNC_ISA_AVX2 1         /* AVX2 and FMA */
#define RNNC_ISA_AVX512 2       /* AVX-512F */

typedef struct {
    int isa;                    /* RNNC_ISA_*; -1 until first asked */
    ptrdiff_t l1d, l2, l3;      /* data cache bytes of one core (L3: shared), > 0 */
} rnnc_machine_t;

/* Until configured: the CPU's own instruction set and typical cache sizes. */
static rnnc_machine_t rnnc_machine = {-1, 32 << 10, 1 << 20, 16 << 20};

static int rnnc_cpu_supported_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RNNC_NO_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return RNNC_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return RNNC_ISA_AVX2;
#endif
    return RNNC_ISA_BASELINE;
}

/* A benign race when first asked: every thread stores the same value. */
static inline int rnnc_cpu_isa(void) {
    if (rnnc_machine.isa < 0) rnnc_machine.isa = rnnc_cpu_supported_isa();
    return rnnc_machine.isa;
}

static inline int rnnc_cpu_has_avx512(void) { return rnnc_cpu_isa() >= RNNC_ISA_AVX512; }
static inline int rnnc_cpu_has_avx2(void) { return rnnc_cpu_isa() >= RNNC_ISA_AVX2; }

/* Set this module's copy: isa is capped at what the CPU supports; a size <= 0 keeps the one
 * before. Called with the GIL held, never while a kernel of the module runs. */
static void rnnc_cpu_configure(int isa, ptrdiff_t l1d, ptrdiff_t l2, ptrdiff_t l3) {
    int supported = rnnc_cpu_supported_isa();
    rnnc_machine.isa = isa < RNNC_ISA_BASELINE ? RNNC_ISA_BASELINE
                     : isa > supported ? supported : isa;
    if (l1d > 0) rnnc_machine.l1d = l1d;
    if (l2 > 0) rnnc_machine.l2 = l2;
    if (l3 > 0) rnnc_machine.l3 = l3;
}
#endif
