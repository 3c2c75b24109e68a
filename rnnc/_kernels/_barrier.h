/* A spinning barrier for the threads that share one recurrent layer
 * (rnnc/_kernels/_parallel_forward.pyx). They meet once per time step, one short step apart, so
 * waiting by spinning (with the CPU's pause hint) is far cheaper than sleeping on a futex; after
 * 2000 spins a waiter yields its core instead, in case the other thread is not running (more
 * threads than cores; benchmarks/results/tuning.md).
 * Sense-reversing: bar[0] counts arrivals, bar[1] flips when the last one arrives; every thread
 * keeps its own `sense`, starting at 0 like bar[1]. bar must start zeroed. */
#ifndef RNNC_BARRIER_H
#define RNNC_BARRIER_H
#include <sched.h>
#include <stddef.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RNNC_PAUSE() _mm_pause()
#else
#define RNNC_PAUSE() ((void)0)
#endif

/* Ask for every cache line of [p, p + bytes) at once: lines another core wrote last (the state
 * of a split step) then arrive in parallel, instead of one miss after another as a loop reaches
 * them. */
static inline void rnnc_prefetch_lines(const void* p, size_t bytes) {
    const char* c = (const char*)p;
    for (size_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(c + i, 0, 3);
}

static inline void rnnc_barrier_wait(int* bar, int n_threads, int* sense) {
    int s = !*sense;
    *sense = s;
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n_threads) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[1], s, __ATOMIC_RELEASE);
        return;
    }
    unsigned spins = 0;
    while (__atomic_load_n(&bar[1], __ATOMIC_ACQUIRE) != s) {
        if (++spins < 2000)
            RNNC_PAUSE();
        else
            sched_yield();
    }
}
/* Progress counts one thread publishes and another waits on, and a queue two threads take items
 * from (the projection-ahead pipeline of rnnc/_kernels/_parallel_forward.pyx): release / acquire,
 * so what the publisher wrote before it is visible to the waiter after. Waiting spins like the
 * barrier, then yields. */
static inline void rnnc_count_publish(long* count, long value) {
    __atomic_store_n(count, value, __ATOMIC_RELEASE);
}

static inline long rnnc_count_load(long* count) {
    return __atomic_load_n(count, __ATOMIC_ACQUIRE);
}

/* Take item `expected` of a queue whose next free item is *count: 1 if this thread got it. */
static inline int rnnc_count_claim(long* count, long expected) {
    return __atomic_compare_exchange_n(count, &expected, expected + 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

static inline void rnnc_count_wait(long* count, long at_least) {
    unsigned spins = 0;
    while (__atomic_load_n(count, __ATOMIC_ACQUIRE) < at_least) {
        if (++spins < 2000)
            RNNC_PAUSE();
        else
            sched_yield();
    }
}
#endif
