# Declarations of rnnc/_worker.h (a helper thread that runs one posted job at a time) and of
# the spinning barrier of rnnc/_barrier.h, for the kernels that split work between threads.
cdef extern from "_worker.h" nogil:
    ctypedef struct rnnc_worker:
        pass
    rnnc_worker* rnnc_worker_start(void (*job)(void*) noexcept nogil, void* arg)
    int rnnc_worker_alive(const rnnc_worker* w)
    void rnnc_worker_post(rnnc_worker* w)
    void rnnc_worker_wait(rnnc_worker* w)
    void rnnc_worker_stop(rnnc_worker* w)
    void rnnc_barrier_wait(int* bar, int n_threads, int* sense)
