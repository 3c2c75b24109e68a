"""Python threads sharing one module: every result is the serial result, bit for bit, and the
process's thread settings are what they were.

Eight threads call one module (and, separately, one frozen module) a few times each at
``rnnc.set_num_threads(2)``, on layers big enough to take the two-thread paths: a bidirectional
LSTM (its directions run concurrently, each split by batch rows), a GRU and a vanilla RNN split
by batch rows (batch 8 and 16), and an LSTM with batch 4, split by hidden units. Each thread
has its own input, so a result that went to the wrong caller is caught too. Afterwards
``rnnc.get_num_threads()`` and the BLAS thread count threadpoolctl reports are unchanged.
"""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import rnnc

N_THREADS = 8
CALLS = 6

# (id, constructor, input shape (T, B, I)); float32, seeded.
LAYERS = [
    ("LSTM-bidirectional-B16", lambda: rnnc.LSTM(32, 256, bidirectional=True, seed=0),
     (20, 16, 32)),
    ("GRU-B8", lambda: rnnc.GRU(64, 256, seed=0), (30, 8, 64)),
    ("RNN-B16", lambda: rnnc.RNN(64, 256, seed=0), (30, 16, 64)),
    ("LSTM-B4-units", lambda: rnnc.LSTM(128, 256, seed=0), (50, 4, 128)),
]
IDS = [name for name, _, _ in LAYERS]


def blas_threads():
    """The thread count of every BLAS library loaded (threadpoolctl)."""
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                  if i.get("user_api") == "blas")


@pytest.fixture
def two_threads():
    """rnnc at 2 threads for the test; the setting before it is restored afterwards."""
    before = rnnc.get_num_threads()
    rnnc.set_num_threads(2)
    try:
        yield
    finally:
        rnnc.set_num_threads(before)


def run_concurrently(module, inputs):
    """Each of N_THREADS threads calls module on its own input CALLS times, all starting
    together; returns {thread: [results]} and the exceptions raised."""
    start = threading.Barrier(N_THREADS)
    results = {k: [] for k in range(N_THREADS)}
    errors = []

    def work(k):
        try:
            start.wait()
            for _ in range(CALLS):
                out, state = module(inputs[k])
                results[k].append((out, state))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append((k, exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in 120 s"
    return results, errors


def flatten(result):
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


def differences(results, serial):
    """Descriptions of the results that are not the serial result bit for bit."""
    bad = []
    for k, calls in results.items():
        for i, r in enumerate(calls):
            for name, a, b in zip(("out", "h_n", "c_n"), flatten(r), flatten(serial[k])):
                if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
                    diff = np.abs(a.astype(np.float64) - b).max() if a.shape == b.shape \
                        else "shape"
                    bad.append(f"thread {k} call {i} {name}: max difference {diff}")
    return bad


def make(ctor, shape, frozen):
    m = ctor()
    if frozen:
        m.freeze()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(N_THREADS)]
    return m, inputs


@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen"])
@pytest.mark.parametrize("name, ctor, shape", LAYERS, ids=IDS)
def test_shared_module_gives_serial_bits(two_threads, name, ctor, shape, frozen):
    m, inputs = make(ctor, shape, frozen)
    serial = [m(x) for x in inputs]         # one caller at a time, at 2 threads
    serial = [tuple(np.copy(a) if not isinstance(a, tuple) else tuple(map(np.copy, a))
                    for a in r) for r in serial]
    results, errors = run_concurrently(m, inputs)
    assert not errors, f"calls raised: {errors[:3]}"
    assert all(len(v) == CALLS for v in results.values())
    bad = differences(results, serial)
    assert not bad, f"{len(bad)} of {N_THREADS * CALLS * len(flatten(serial[0]))} arrays " \
                    f"differ from the serial result: {bad[:5]}"


@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen"])
@pytest.mark.parametrize("name, ctor, shape", LAYERS, ids=IDS)
def test_concurrent_calls_leave_thread_settings(two_threads, name, ctor, shape, frozen):
    m, inputs = make(ctor, shape, frozen)
    m(inputs[0])                            # warm: the helper threads exist
    rnnc_before, blas_before = rnnc.get_num_threads(), blas_threads()
    assert rnnc_before == 2
    _, errors = run_concurrently(m, inputs)
    assert not errors, f"calls raised: {errors[:3]}"
    assert rnnc.get_num_threads() == rnnc_before, \
        f"rnnc.get_num_threads() {rnnc_before} -> {rnnc.get_num_threads()}"
    assert blas_threads() == blas_before, f"BLAS threads {blas_before} -> {blas_threads()}"



# -- thread_setting (an estimator's n_threads, a Dask task) beside a BLAS hold ----------------
def test_thread_setting_beside_a_blas_hold_restores_the_blas_counts(two_threads):
    """A block entered and left while another thread holds BLAS at one thread (a split
    layer's parts) must not record that 1 as the libraries' own count."""
    from rnnc._engine import threads
    before = blas_threads()
    holding, release = threading.Event(), threading.Event()

    def hold():
        with threads.blas_one_thread():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(10)
    with threads.thread_setting(1):
        assert rnnc.get_num_threads() == 1
    release.set()
    t.join(10)
    assert rnnc.get_num_threads() == 2
    assert blas_threads() == before


def test_thread_setting_that_fails_to_apply_leaves_no_block_behind(two_threads, monkeypatch):
    from rnnc._engine import threads
    real = threads.set_num_threads

    def broken(n):
        raise RuntimeError("cannot set threads")

    monkeypatch.setattr(threads, "set_num_threads", broken)
    with pytest.raises(RuntimeError, match="cannot set threads"):
        with threads.thread_setting(1):
            pass
    monkeypatch.setattr(threads, "set_num_threads", real)
    with threads.thread_setting(1):
        assert rnnc.get_num_threads() == 1
    assert rnnc.get_num_threads() == 2      # the failed block did not keep the last one in
