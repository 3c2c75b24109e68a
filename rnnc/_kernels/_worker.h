/* A helper thread owned by one object (a stream, rnnc/_kernels/_stream_kernel.pyx, or a worker
 * slot of the pool of rnnc/_kernels/_parallel_forward.pyx) that runs the same job again and
 * again, each time the owner posts it, one short step apart.
 *
 * Why not a thread pool or a Python thread: handing work to a Python thread costs many times a
 * streamed layer's time step (benchmarks/results/amd-epyc/tuning.md). Here the owner publishes a
 * sequence
 * number and the helper, spinning on it, starts almost at once; after RNNC_WORKER_SPINS pauses
 * without work it sleeps on a condition variable, so an idle stream costs no CPU. The owner
 * waits for `done` by spinning (the helper's share of a step is as short as its own).
 *
 * fork(): a child inherits the struct but not the thread. A fork handler bumps a generation
 * counter; rnnc_worker_alive() is false in the child, which then runs the job itself and never
 * joins the thread it does not have.
 *
 * Lost wake-ups: the helper sets `sleeping` and then re-reads `seq` under the mutex before it
 * waits; the owner stores `seq` and then reads `sleeping` (both sequentially consistent), so
 * either the helper sees the new `seq` or the owner sees `sleeping` and signals under the mutex.
 *
 * Waking a sleeping helper can take far longer than a stream step or a small layer
 * (benchmarks/results/amd-epyc/tuning.md). So streams and the projection ahead post only to an
 * awake
 * helper (rnnc_worker_awake: spinning or working), and otherwise do the work on their own
 * thread and rnnc_worker_wake() it, which makes it spin again for the calls that follow,
 * without a job. A layer split by rows posts all the same but never waits for a helper that
 * has not started (rnnc/_kernels/_parallel_forward.pyx, RowJob); one split by hidden units
 * still waits (its parts meet every step: rnnc/_engine/runners/units.py).
 */
#ifndef RNNC_WORKER_H
#define RNNC_WORKER_H
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include "_barrier.h"

static long rnnc_fork_generation = 0;
static int rnnc_fork_handler_set = 0;

static void rnnc_after_fork_in_child(void) {
    rnnc_fork_generation++;
}

typedef struct rnnc_worker {
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    void (*job)(void* arg);
    void* arg;
    long seq;        /* posted jobs (owner writes) */
    long done;       /* finished jobs (helper writes) */
    long wakes;      /* rnnc_worker_wake calls (owner writes) */
    int sleeping;
    int quit;
    long generation;  /* rnnc_fork_generation when started */
} rnnc_worker;

/* How long an idle helper spins before it sleeps, in pauses (their length depends on the CPU):
 * long enough to bridge the gap between calls that follow each other, short enough to give the
 * core back soon. Spinning much longer (so that a loop of calls that ran on one thread would
 * find it awake) made split layers slow and erratic (benchmarks/results/amd-epyc/tuning.md). */
#define RNNC_WORKER_SPINS 20000

static void* rnnc_worker_main(void* p) {
    rnnc_worker* w = (rnnc_worker*)p;
    long seen = 0;
    for (;;) {
        unsigned spins = 0;
        while (__atomic_load_n(&w->seq, __ATOMIC_SEQ_CST) == seen
               && !__atomic_load_n(&w->quit, __ATOMIC_SEQ_CST)) {
            if (++spins < RNNC_WORKER_SPINS) {
                RNNC_PAUSE();
                continue;
            }
            pthread_mutex_lock(&w->mutex);
            __atomic_store_n(&w->sleeping, 1, __ATOMIC_SEQ_CST);
            long wakes = __atomic_load_n(&w->wakes, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&w->seq, __ATOMIC_SEQ_CST) == seen
                   && __atomic_load_n(&w->wakes, __ATOMIC_SEQ_CST) == wakes
                   && !__atomic_load_n(&w->quit, __ATOMIC_SEQ_CST))
                pthread_cond_wait(&w->cond, &w->mutex);
            __atomic_store_n(&w->sleeping, 0, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&w->mutex);
            spins = 0;          /* woken without a job: spin again */
        }
        if (__atomic_load_n(&w->quit, __ATOMIC_SEQ_CST))
            return NULL;
        seen = __atomic_load_n(&w->seq, __ATOMIC_SEQ_CST);
        w->job(w->arg);
        __atomic_store_n(&w->done, seen, __ATOMIC_RELEASE);
    }
}

/* A started helper, or NULL (no memory, no thread): the caller then runs the job itself. */
static rnnc_worker* rnnc_worker_start(void (*job)(void*), void* arg) {
    if (!rnnc_fork_handler_set) {    /* called with the GIL held: no race on the flag */
        if (pthread_atfork(NULL, NULL, rnnc_after_fork_in_child) != 0)
            return NULL;
        rnnc_fork_handler_set = 1;
    }
    rnnc_worker* w = (rnnc_worker*)calloc(1, sizeof(rnnc_worker));
    if (w == NULL)
        return NULL;
    w->generation = rnnc_fork_generation;
    w->job = job;
    w->arg = arg;
    pthread_mutex_init(&w->mutex, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (pthread_create(&w->thread, NULL, rnnc_worker_main, w) != 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->mutex);
        free(w);
        return NULL;
    }
    return w;
}

/* The helper thread exists in this process (not a forked copy of the struct). */
static int rnnc_worker_alive(const rnnc_worker* w) {
    return w != NULL && w->generation == rnnc_fork_generation;
}

/* The helper is spinning or running a job (not asleep): a job posted now starts at once. */
static int rnnc_worker_awake(rnnc_worker* w) {
    return rnnc_worker_alive(w) && !__atomic_load_n(&w->sleeping, __ATOMIC_SEQ_CST);
}

/* Wake a sleeping helper without a job: it spins again before it sleeps. */
static void rnnc_worker_wake(rnnc_worker* w) {
    if (!rnnc_worker_alive(w))
        return;
    __atomic_add_fetch(&w->wakes, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&w->mutex);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->mutex);
    }
}

static void rnnc_worker_post(rnnc_worker* w) {
    __atomic_add_fetch(&w->seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&w->mutex);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->mutex);
    }
}

static void rnnc_worker_wait(rnnc_worker* w) {
    long s = __atomic_load_n(&w->seq, __ATOMIC_RELAXED);
    unsigned spins = 0;
    while (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE) != s) {
        if (++spins < 2000)
            RNNC_PAUSE();
        else
            sched_yield();
    }
}

static void rnnc_worker_stop(rnnc_worker* w) {
    if (w == NULL)
        return;
    if (!rnnc_worker_alive(w)) {    /* a forked child: no thread to stop, mutexes unusable */
        free(w);
        return;
    }
    pthread_mutex_lock(&w->mutex);
    __atomic_store_n(&w->quit, 1, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mutex);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->mutex);
    free(w);
}
#endif
