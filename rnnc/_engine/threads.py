"""rnnc's threads. They are the BLAS library's (the one scipy.linalg.cython_blas calls for the
kernels, and NumPy's for the few NumPy products in the Python layer), plus helper threads of
rnnc's own that run the second part of a layer while BLAS is held at one thread: this module
owns them all. run_pair runs two callables, one on the caller and one on the helper (the
directions of a layer, the parts of a training split); split_begin / split_end lend the
compiled helper of rnnc/_kernels/_parallel_forward.pyx to one inference call at a time; each
split stream has a helper of its own (rnnc/_kernels/_stream_kernel.pyx). With
set_num_threads(1) no helper is used."""
import contextlib
import os
import threading

from threadpoolctl import threadpool_info, threadpool_limits

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
    global _hold_lock, _split_lock
    _hold_lock = threading.Lock()
    _split_lock = threading.Lock()     # its holder's thread is not in the child
    _hold["count"] = 0
    _end_hold()


def _end_hold():
    """Restore the setting the hold found, or apply the one asked for during it."""
    limiter, wanted = _hold["limiter"], _hold["wanted"]
    _hold.update(limiter=None, wanted=None)
    if wanted is not None:
        threadpool_limits(limits=wanted, user_api="blas")
    elif limiter is not None:
        limiter.restore_original_limits()


os.register_at_fork(after_in_child=_reset_after_fork)


def _set_blas_threads(n):
    """Apply n now, or when the current hold ends. Caller holds _hold_lock."""
    if _hold["count"]:
        _hold["wanted"] = n
    else:
        threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def blas_one_thread():
    """A context in which BLAS runs on one thread (for kernels that run on two threads of
    rnnc's own, each calling BLAS). Safe to enter from several threads at once: the process's
    setting is restored when the last of them leaves."""
    with _hold_lock:
        if _hold["count"] == 0:
            _hold["limiter"] = _controller().limit(limits=1, user_api="blas")
        _hold["count"] += 1
    try:
        yield
    finally:
        with _hold_lock:
            _hold["count"] -= 1
            if _hold["count"] == 0:
                _end_hold()


_controllers = []     # threadpoolctl's controller of the loaded libraries, made once
_controller_lock = threading.Lock()


def _controller():
    with _controller_lock:
        if not _controllers:
            from threadpoolctl import ThreadpoolController
            _controllers.append(ThreadpoolController())
        return _controllers[0]


def run_pair(first, second):
    """first() on the calling thread and second() on rnnc's helper thread, concurrently, with
    BLAS held at one thread each; returns when both are done. Both must release the GIL while
    they wait for each other: second is posted before first starts, so a pair of kernels
    that wait for each other at a barrier never finds its partner missing. The helper is the
    compiled one (split_begin); where no helper thread can be started, second runs on a
    Python thread of its own."""
    helper = split_begin(wait=True)
    try:
        with blas_one_thread():
            if helper is not None:
                helper.run_pair(first, second)
            else:
                _run_pair_python(first, second)
    finally:
        if helper is not None:
            split_end()


def _run_pair_python(first, second):
    errors = []

    def run():
        try:
            second()
        except BaseException as exc:    # noqa: BLE001 - re-raised on the caller's thread
            errors.append(exc)

    other = threading.Thread(target=run, name="rnnc-pair")
    other.start()
    try:
        first()
    finally:
        other.join()
    if errors:
        raise errors[0]


# The compiled helper thread of rnnc/_kernels/_parallel_forward.pyx (a Helper: the thread and
# the job descriptions it runs) serves one layer call at a time. [Helper, pid]: one per
# process; a forked child inherits the object but not its thread, so it makes its own.
_split_lock = threading.Lock()
_SPLIT_HELPER = []


def _split_helper():
    """This process's Helper (made on first use). Caller holds _split_lock."""
    if not _SPLIT_HELPER or _SPLIT_HELPER[1] != os.getpid():
        _SPLIT_HELPER[:] = [K.Helper(), os.getpid()]
    return _SPLIT_HELPER[0]


def split_begin(wait=False):
    """The compiled helper (rnnc/_kernels/_parallel_forward.pyx, Helper) if this call may use
    it now: it is running and no other call is using it; the caller then passes it to the
    kernel and calls split_end. Else None. wait: wait for another call to be done with it
    instead of answering None; None then only if no helper thread can be started."""
    if not _split_lock.acquire(blocking=wait):
        return None
    helper = _split_helper()
    if helper.ready():
        return helper
    _split_lock.release()
    return None


def split_end():
    _split_lock.release()
