/* A barrier for the threads that share one recurrent layer (rnnc/_kernels/_parallel_forward.pyx,
 * _parallel_train.pyx). They meet once per time step, one short step apart, so a waiter first
 * spins (with the CPU's pause hint): far cheaper than sleeping when the others are running.
 * When they are not (another process has their core), spinning keeps this core busy, so the
 * kernel cannot move the late thread here and it waits for the next scheduler tick, every step
 * (benchmarks/results/amd-epyc/busy.md). So a waiter spins about half as long as its own share
 * of the step took (at least RNNC_SPIN_MIN_NS), then sleeps on a futex (Linux; sched_yield
 * elsewhere): its core goes idle and can take the late thread.
 * Sense-reversing: bar[0] counts arrivals, bar[1] flips when the last one arrives, bar[2]
 * counts sleepers; every thread keeps its own `sense`, starting at 0 like bar[1]. bar must
 * start zeroed. */
#ifndef RNNC_BARRIER_H
#define RNNC_BARRIER_H
#include <sched.h>
#include <stddef.h>
#include <time.h>
#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
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

/* Spin at least this long before sleeping (a few times a futex wake-up's own cost), and at
 * most a quarter of a 250 Hz scheduler tick. */
#define RNNC_SPIN_MIN_NS 20000L
#define RNNC_SPIN_MAX_NS 1000000L

static inline long rnnc_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

/* When this thread last left a barrier (0: not in a sequence of steps yet). */
static __thread long rnnc_barrier_left_ns = 0;

static inline void rnnc_barrier_sleep(int* word, int value) {
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word; (void)value;
    sched_yield();
#endif
}

static inline void rnnc_barrier_wake(int* word) {
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static inline void rnnc_barrier_wait(int* bar, int n_threads, int* sense) {
    int s = !*sense;
    *sense = s;
    if (__atomic_add_fetch(&bar[0], 1, __ATOMIC_ACQ_REL) == n_threads) {
        __atomic_store_n(&bar[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar[1], s, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&bar[2], __ATOMIC_SEQ_CST))
            rnnc_barrier_wake(&bar[1]);
        rnnc_barrier_left_ns = rnnc_now_ns();
        return;
    }
    long start = rnnc_now_ns(), budget = (start - rnnc_barrier_left_ns) / 2;
    if (rnnc_barrier_left_ns == 0 || budget > RNNC_SPIN_MAX_NS)
        budget = RNNC_SPIN_MAX_NS;      /* the first step of a call, or a long one */
    if (budget < RNNC_SPIN_MIN_NS)
        budget = RNNC_SPIN_MIN_NS;
    unsigned spins = 0;
    while (__atomic_load_n(&bar[1], __ATOMIC_ACQUIRE) != s) {
        if (++spins % 64 || rnnc_now_ns() - start < budget) {
            RNNC_PAUSE();
            continue;
        }
        /* Announce, then look again: the last arrival stores bar[1] before it reads bar[2]
         * (both sequentially consistent), so either it wakes us or we see its store. */
        __atomic_add_fetch(&bar[2], 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&bar[1], __ATOMIC_SEQ_CST) != s)
            rnnc_barrier_sleep(&bar[1], !s);
        __atomic_sub_fetch(&bar[2], 1, __ATOMIC_SEQ_CST);
    }
    rnnc_barrier_left_ns = rnnc_now_ns();
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
