"""rnnc's threads. They are the BLAS library's (the one scipy.linalg.cython_blas calls for the
kernels, and NumPy's for the few NumPy products in the Python layer), plus a pool of worker
threads of rnnc's own that run the other parts of a layer split n ways while BLAS is held at
one thread: this module owns them all. With set_num_threads(n) the pool (a Pool of
rnnc/_kernels/_parallel_forward.pyx) has n - 1 workers, grown or shrunk at the next call that
uses it; split_begin / split_end lend it to one call at a time; run_parts runs n callables, one
on the caller and one on each worker (the directions of a layer, the parts of a training
split). Each split stream has a helper of its own (rnnc/_kernels/_stream_kernel.pyx). With
set_num_threads(1) no worker is used (the pool's threads are stopped)."""
import contextlib
import functools
import os
import threading

from threadpoolctl import threadpool_info

from rnnc._engine.kernels import K
from rnnc._validation import check_size

# The last count set through set_num_threads (or read once), for cheap per-call decisions.
_known = []


def set_num_threads(n):
    """Use ``n`` threads for everything rnnc runs (every loaded BLAS library)."""
    n = check_size(n, "n")
    import scipy.linalg  # noqa: F401 - make sure the BLAS rnnc calls is loaded, so it is limited
    with _hold_lock:
        _set_blas_threads(n)
        _known[:] = [n]
    # Resize the pool now if no call is using it (else the next call that uses it does), so
    # that threads not wanted any more stop at once.
    if _split_lock.acquire(blocking=False):
        try:
            if _POOL and _POOL[1] == os.getpid():
                _POOL[0].ready(n - 1)
            if _LANES and _LANES[1] == os.getpid():
                for lane in _LANES[0]:
                    lane.ready(n // 2 - 1)
        finally:
            _split_lock.release()


def blas_libraries():
    """threadpoolctl's records of the BLAS libraries loaded in this process, the one
    scipy.linalg.cython_blas (and so rnnc) calls first."""
    import scipy.linalg  # noqa: F401 - loads the BLAS that rnnc calls
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    libs.sort(key=lambda i: "scipy" not in i.get("filepath", "").split("/")[-2])
    return libs


def get_num_threads():
    """Threads rnnc uses: those of the BLAS that scipy.linalg.cython_blas calls (the setting
    outside any call that holds BLAS at one thread while it runs)."""
    with _hold_lock:
        if _hold["count"]:
            if _hold["wanted"] is not None:
                return _hold["wanted"]
            return _hold["limiter"].get_original_num_threads().get("blas") or 1
    libs = blas_libraries()
    return int(libs[0]["num_threads"]) if libs else 1


def cached_num_threads():
    """get_num_threads() without its cost (a threadpoolctl query): the value set through
    set_num_threads, or read once. Threads changed behind rnnc's back (threadpoolctl,
    environment) after the first read are not seen; this only steers the plans, never a
    result."""
    if not _known:
        _known.append(get_num_threads())
    return _known[0]


# BLAS's thread count is one setting for the whole process. Calls that run two of rnnc's own
# threads hold it at one while they run; concurrent calls share one hold, counted, so that the
# last one out restores what the first one found (nested per-call limits, undone out of order,
# would leave the process at one thread). set_num_threads during a hold takes effect when the
# hold ends.
_hold_lock = threading.Lock()
_hold = {"count": 0, "limiter": None, "wanted": None}


def _reset_after_fork():
    # A child forked during a hold has no thread that will end it.
    global _hold_lock, _split_lock, _setting_lock
    _hold_lock = threading.Lock()
    _split_lock = threading.Lock()     # its holder's thread is not in the child
    _hold["count"] = 0
    _end_hold()
    # Nor a thread_setting block: the child keeps the setting it was forked with (the
    # block's, if it forked inside one).
    _setting_lock = threading.Lock()
    _setting.update(active=[], saved=None, limiter=None, current=None)


def _end_hold():
    """Restore the setting the hold found, or apply the one asked for during it."""
    limiter, wanted = _hold["limiter"], _hold["wanted"]
    _hold.update(limiter=None, wanted=None)
    if wanted is not None:
        _set_all_blas(wanted)
    elif limiter is not None:
        limiter.restore_original_limits()


os.register_at_fork(after_in_child=_reset_after_fork)


def _set_blas_threads(n):
    """Apply n now, or when the current hold ends. Caller holds _hold_lock."""
    if _hold["count"]:
        _hold["wanted"] = n
    else:
        _set_all_blas(n)


# threadpoolctl (3.8) lets one thread of the process set a pthreads OpenBLAS, the first that
# sets it, and ignores the others; rnnc's setting is the process's, set by whichever thread
# calls (a Dask task runs on a thread of the worker's pool, not on the main thread).
def _force_set(lib, n):
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n)


def _set_all_blas(n):
    """Every loaded BLAS library at n threads (a fresh scan, as threadpool_limits does)."""
    from threadpoolctl import ThreadpoolController
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        _force_set(lib, n)


class _BlasRecord:
    """Each BLAS library's thread count, to limit and restore from any thread (threadpoolctl's
    limiter, without its one controlling thread)."""

    def __init__(self, controller):
        self.libs = [(lib, lib.get_num_threads()) for lib in controller.lib_controllers
                     if lib.user_api == "blas"]

    def limit(self, n):
        for lib, _ in self.libs:
            _force_set(lib, n)
        return self

    def get_original_num_threads(self):
        found = [n for _, n in self.libs if n is not None]
        return {"blas": min(found) if found else None}

    def restore_original_limits(self):
        for lib, n in self.libs:
            if n is not None:
                _force_set(lib, n)


@contextlib.contextmanager
def blas_one_thread():
    """A context in which BLAS runs on one thread (for kernels that run on several threads of
    rnnc's own, each calling BLAS). Safe to enter from several threads at once: the process's
    setting is restored when the last of them leaves."""
    with _hold_lock:
        if _hold["count"] == 0:
            _hold["limiter"] = _BlasRecord(_controller()).limit(1)
        _hold["count"] += 1
    try:
        yield
    finally:
        with _hold_lock:
            _hold["count"] -= 1
            if _hold["count"] == 0:
                _end_hold()


# -- a setting held for a call --------------------------------------------------------------
# rnnc's thread setting is one per process. Blocks that set it for a call (an estimator's
# n_threads, a Dask task) may overlap on several threads; they share one record of the blocks
# running, so that the last one out restores what the first one found (per-block
# set-and-restore, undone out of order, would leave the process at another block's count).
_setting_lock = threading.Lock()
_setting = {"active": [], "saved": None, "limiter": None, "current": None}


@contextlib.contextmanager
def thread_setting(n_threads):
    """Run rnnc (and every BLAS library) at ``n_threads`` threads inside the block, and put
    back what was set before when the last block running at the same time leaves, also on an
    error: the setting is never a lasting side effect on the process. None changes nothing.

    Blocks may nest or overlap (threads of one process: estimators in a threaded
    ``GridSearchCV``, tasks of a Dask worker). The first one in records rnnc's setting and each
    BLAS library's own (threadpoolctl); while blocks run, the setting is that of the latest one
    still running (a nested block's, then its parent's again); the last one out restores what
    the first one found."""
    if n_threads is None:
        yield
        return
    n_threads = check_size(n_threads, "n_threads")
    token = _setting_enter(n_threads)
    try:
        yield
    finally:
        _setting_exit(token)


def _setting_enter(n):
    token = object()
    with _setting_lock:
        if not _setting["active"]:
            saved = get_num_threads()
            _setting.update(saved=saved, limiter=None, current=None)
            # Already at n (and known to be): nothing to set.
            if saved == n and cached_num_threads() == n:
                _setting["current"] = n
        _setting["active"].append((token, n))
        try:
            _setting_apply(n)
        except BaseException:
            _setting["active"].pop()
            if not _setting["active"]:
                _setting.update(saved=None, limiter=None, current=None)
            raise
    return token


def _setting_apply(n):
    """Set n unless it is set. Caller holds _setting_lock."""
    if _setting["current"] == n:
        return
    if _setting["limiter"] is None:
        # Before the first change: each BLAS library's own setting, restored on the last exit,
        # as rnnc's setting is one number for all.
        _setting["limiter"] = _record_blas()
    set_num_threads(n)
    _setting["current"] = n


def _setting_exit(token):
    with _setting_lock:
        active = _setting["active"]
        active[:] = [entry for entry in active if entry[0] is not token]
        if active:
            _setting_apply(active[-1][1])
            return
        saved, limiter, current = _setting["saved"], _setting["limiter"], _setting["current"]
        _setting.update(saved=None, limiter=None, current=None)
        try:
            if current != saved:
                set_num_threads(saved)
        finally:
            if limiter is not None:
                _restore_blas(limiter)


def _record_blas():
    """Each BLAS library's thread count as the process has it. While another thread holds
    BLAS at one thread (blas_one_thread), the libraries read 1: the counts are then those the
    hold found (or the setting asked for during it), which it puts back when it ends."""
    from threadpoolctl import ThreadpoolController
    with _hold_lock:
        limiter = _hold["limiter"] if _hold["count"] else None
        if limiter is None:
            return _BlasRecord(ThreadpoolController())
        record = _BlasRecord.__new__(_BlasRecord)
        wanted = _hold["wanted"]
        record.libs = [(lib, n if wanted is None else wanted) for lib, n in limiter.libs]
        return record


def _restore_blas(record):
    """Put the libraries back at the record's counts: now, or, while a hold runs, when it
    ends (setting them under a hold would undo it for the kernels inside)."""
    with _hold_lock:
        if _hold["count"]:
            _hold.update(limiter=record, wanted=None)
        else:
            record.restore_original_limits()


_controllers = []     # threadpoolctl's controller of the loaded libraries, made once
_controller_lock = threading.Lock()


def _controller():
    with _controller_lock:
        if not _controllers:
            from threadpoolctl import ThreadpoolController
            _controllers.append(ThreadpoolController())
        return _controllers[0]


def run_pair(first, second, lanes=False):
    """run_parts([first, second], lanes)."""
    run_parts([first, second], lanes)


def run_parts(callables, lanes=False):
    """callables[0]() on the calling thread and callables[i]() on the pool's worker i, all
    concurrently, with BLAS held at one thread each; returns when all are done. All must
    release the GIL while they wait for each other: the workers' parts are posted before the
    first starts, so kernels that wait for each other at a barrier never find a partner
    missing. Waits for another call using the pool; where the pool's threads cannot be
    started, the other parts run on Python threads of their own.

    lanes: each callable may split its own work further (the directions of a layer, with four
    threads or more): while it runs, split_begin on its thread lends it a pool of its own
    (a lane), so that the parts' splits run side by side, each on its own workers."""
    if len(callables) == 1:
        callables[0]()
        return
    pool = split_begin(wait=True, parts=len(callables))
    try:
        if pool is not None and lanes:
            callables = [functools.partial(_in_lane, lane, fn)
                         for lane, fn in zip(_lanes(len(callables)), callables)]
        with blas_one_thread():
            if pool is not None:
                pool.run_parts(callables)
            else:
                _run_parts_python(callables)
    finally:
        if pool is not None:
            split_end()


def _in_lane(lane, fn):
    _lane.pool = lane
    try:
        fn()
    finally:
        _lane.pool = None


def _run_parts_python(callables):
    errors = []

    def run(fn):
        try:
            fn()
        except BaseException as exc:    # noqa: BLE001 - re-raised on the caller's thread
            errors.append(exc)

    others = [threading.Thread(target=run, args=(fn,), name="rnnc-part")
              for fn in callables[1:]]
    for other in others:
        other.start()
    try:
        callables[0]()
    finally:
        for other in others:
            other.join()
    if errors:
        raise errors[0]


# The compiled worker threads of rnnc/_kernels/_parallel_forward.pyx (a Pool: the threads and
# the job descriptions they run) serve one layer call at a time. [Pool, pid]: one per process;
# a forked child inherits the object but not its threads, so it starts its own.
_split_lock = threading.Lock()
_POOL = []
# [[Pool, ...], pid]: the lanes of run_parts(lanes=True), one pool per part, lent by the call
# that holds the main pool (so under _split_lock); _lane.pool: this thread's lane meanwhile.
_LANES = []
_lane = threading.local()


def _lanes(n):
    """n lane pools of this process (made on first use). Caller holds _split_lock."""
    if not _LANES or _LANES[1] != os.getpid():
        _LANES[:] = [[], os.getpid()]
    while len(_LANES[0]) < n:
        _LANES[0].append(K.Pool())
    return _LANES[0][:n]


def _pool():
    """This process's Pool (made on first use). Caller holds _split_lock."""
    if not _POOL or _POOL[1] != os.getpid():
        _POOL[:] = [K.Pool(), os.getpid()]
    return _POOL[0]


def split_begin(wait=False, parts=2):
    """The compiled pool (rnnc/_kernels/_parallel_forward.pyx, Pool) if this call may use it
    now: no other call is using it, and it runs max(rnnc's threads, parts) - 1 workers
    (started or stopped to match); the caller then passes it to the kernel and calls
    split_end. Else None. wait: wait for another call to be done with it instead of answering
    None; None then only if its threads cannot be started."""
    lane = getattr(_lane, "pool", None)
    if lane is not None:        # this thread's own while its run_parts call lasts
        return lane if lane.ready(parts - 1) else None
    if not _split_lock.acquire(blocking=wait):
        return None
    pool = _pool()
    if pool.ready(max(cached_num_threads(), parts) - 1):
        return pool
    _split_lock.release()
    return None


def split_end():
    if getattr(_lane, "pool", None) is None:
        _split_lock.release()
