# Declarations of rnnc/_kernels/_worker.h (a helper thread that runs one posted job at a time)
# and of the spinning barrier and progress counts of rnnc/_kernels/_barrier.h, for the kernels
# that split work between threads.
cdef extern from "_worker.h" nogil:
    ctypedef struct rnnc_worker:
        pass
    rnnc_worker* rnnc_worker_start(void (*job)(void*) noexcept nogil, void* arg)
    int rnnc_worker_alive(const rnnc_worker* w)
    int rnnc_worker_awake(rnnc_worker* w)
    void rnnc_worker_wake(rnnc_worker* w)
    void rnnc_worker_post(rnnc_worker* w)
    void rnnc_worker_wait(rnnc_worker* w)
    void rnnc_worker_stop(rnnc_worker* w)
    void rnnc_barrier_wait(int* bar, int n_threads, int* sense)
    void rnnc_prefetch_lines(const void* p, size_t bytes)
    void rnnc_count_publish(long* count, long value)
    void rnnc_count_wait(long* count, long at_least)
    int rnnc_count_claim(long* count, long expected)
    long rnnc_count_load(long* count)
