"""rnnc.dask.apply: batch inference on Dask arrays and bags, on Dask's threaded scheduler and
on a LocalCluster of two worker processes. Expected values come from direct calls of the module
on the same rows at one thread (the tasks' thread count here)."""
import contextlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import rnnc

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")
import rnnc.dask  # noqa: E402 - after the skips

I, H = 5, 8  # noqa: E741 - the project's dimension letters


@contextlib.contextmanager
def one_thread():
    """The expected values' thread count: the tasks run at one thread (threaded scheduler, and
    workers of one thread), and a GRU's or RNN's last bits may depend on the count."""
    found = rnnc.get_num_threads()
    rnnc.set_num_threads(1)
    try:
        yield
    finally:
        rnnc.set_num_threads(found)


def data(N=40, T=6, batch_first=False, seed=0):
    rng = np.random.default_rng(seed)
    xn = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(np.float32)
    return xn, rng.integers(1, T + 1, N)


def rows(a, sl, axis):
    index = [slice(None)] * a.ndim
    index[axis] = sl
    return a[tuple(index)]


def leaves(tree):
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in leaves(item)]
    return [tree]


MODULES = {
    "lstm": lambda: rnnc.LSTM(I, H, seed=0),
    "lstm-bf-2l-bi-proj": lambda: rnnc.LSTM(I, H, num_layers=2, bidirectional=True,
                                            batch_first=True, proj_size=3, seed=1),
    "gru-bi": lambda: rnnc.GRU(I, H, bidirectional=True, seed=2),
    "rnn-relu-reverse": lambda: rnnc.RNN(I, H, nonlinearity="relu", reverse=True, seed=3),
    "bidirectional-wrapper": lambda: rnnc.Bidirectional(rnnc.GRU(I, H, seed=4)),
    "seq-pool-linear": lambda: rnnc.Sequential(rnnc.LSTM(I, H, bidirectional=True, seed=5),
                                               rnnc.Pool("state"), rnnc.Linear(2 * H, 3, seed=6)),
    "seq-layers": lambda: rnnc.Sequential(rnnc.GRU(I, H, batch_first=True, seed=7),
                                          rnnc.Linear(H, 2, seed=8)),
}


def batch_first_of(module):
    layer = getattr(module, "forward_layer", module)
    return bool(getattr(layer, "batch_first", False))


def batch_axis(expected_leaf, module, n_rows):
    """The batch axis of an expected array: 1 for states (D*L, N, H), else the layout's."""
    if expected_leaf.ndim == 2:
        return 0                                # (N, F) after a Pool
    if expected_leaf.shape[0] != n_rows and expected_leaf.shape[1] == n_rows and \
            not batch_first_of(module):
        return 1
    return 0 if batch_first_of(module) and expected_leaf.shape[0] == n_rows else 1


# -- threaded scheduler ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODULES))
def test_array_results_equal_per_chunk_calls_bit_for_bit(name):
    module = MODULES[name]()
    bf = batch_first_of(module)
    xn, lengths = data(batch_first=bf)
    b_ax = 0 if bf else 1
    chunks = (10, 20, 10)
    x = da.from_array(xn, chunks={b_ax: chunks})
    result = rnnc.dask.apply(module, x, lengths=lengths)
    got = dask.compute(result, scheduler="threads")[0]
    start = 0
    with one_thread():
        for n in chunks:
            sl = slice(start, start + n)
            expected = module(rows(xn, sl, b_ax), lengths=lengths[sl])
            for g, e in zip(leaves(got), leaves(expected)):
                # States (D*L, N, H) have their batch on axis 1; outputs on the layout's.
                ax = 1 if (e.ndim == 3 and e.shape[1] == n and (not bf or e.shape[0] != n)) \
                    else 0
                np.testing.assert_array_equal(rows(g, sl, ax), e)
            start += n
    # The structure and the chunks of the dask arrays.
    assert len(leaves(result)) == len(leaves(expected))
    for r in leaves(result):
        assert chunks in r.chunks


def test_array_results_match_the_whole_batch_call_within_float32_rounding():
    module = rnnc.GRU(I, H, num_layers=2, seed=0)
    xn, lengths = data(N=64)
    out, h_n = rnnc.dask.apply(module, da.from_array(xn, chunks=(6, 16, I)), lengths=lengths)
    out, h_n = dask.compute(out, h_n, scheduler="threads")
    expected_out, expected_h = module(xn, lengths=lengths)
    # Other batch sizes may round differently in the last bits (float32): 1e-6 holds.
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_n, expected_h, rtol=1e-5, atol=1e-6)


def test_lengths_as_dask_array_with_other_chunks_are_aligned_to_the_batch_chunks():
    module = rnnc.LSTM(I, H, seed=0)
    xn, lengths = data()
    x = da.from_array(xn, chunks=(6, 20, I))
    got = rnnc.dask.apply(module, x, lengths=da.from_array(lengths, chunks=7))
    out, (h_n, c_n) = dask.compute(got, scheduler="threads")[0]
    with one_thread():
        e_out, (e_h, e_c) = module(xn[:, 20:], lengths=lengths[20:])
    np.testing.assert_array_equal(out[:, 20:], e_out)
    np.testing.assert_array_equal(c_n[:, 20:], e_c)
    assert h_n.shape == (1, 40, H)


def test_module_is_one_key_of_the_graph_and_the_users_module_is_unchanged():
    module = rnnc.LSTM(I, H, seed=0).train()
    xn, _ = data()
    out, _ = rnnc.dask.apply(module, da.from_array(xn, chunks=(6, 5, I)))
    graph = dict(out.__dask_graph__())
    weights = sum(p.nbytes for p in module.parameters())
    holders = [k for k, v in graph.items() if len(pickle.dumps(v)) > weights]
    assert len(holders) == 1, holders          # 8 tasks, one copy of the weights
    assert module.training and not module.frozen
    assert all(p.flags.writeable for p in module.parameters())


def test_bag_gives_per_sequence_results_in_input_order():
    module = rnnc.LSTM(I, H, bidirectional=True, seed=0)
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((T, I)).astype(np.float32) for T in rng.integers(1, 12, 30)]
    result = rnnc.dask.apply(module, db.from_sequence(seqs, npartitions=2), batch_size=4)
    got = result.compute(scheduler="threads")
    assert len(got) == len(seqs)
    parts = [list(p) for p in dask.compute(*db.from_sequence(seqs, npartitions=2)
                                           .to_delayed(), scheduler="threads")]
    assert sum(parts, []) is not None and sum(len(p) for p in parts) == len(seqs)
    k = 0
    with one_thread():
        for part in parts:
            # The documented batching: sorted by decreasing length (stable), 4 rows a batch.
            order = np.argsort([-len(s) for s in part], kind="stable")
            for start in range(0, len(part), 4):
                idx = order[start:start + 4]
                padded, lens = rnnc.pad_sequences([part[i] for i in idx])
                out, (h_n, c_n) = module(padded, lengths=lens)
                for j, i in enumerate(idx):
                    g_out, (g_h, g_c) = got[k + i]
                    np.testing.assert_array_equal(g_out, out[:lens[j], j])
                    np.testing.assert_array_equal(g_h, h_n[:, j])
                    np.testing.assert_array_equal(g_c, c_n[:, j])
            k += len(part)
    # Alone, a sequence gives the same up to float32 rounding.
    alone, _ = module(seqs[7][:, None, :])
    np.testing.assert_allclose(got[7][0], alone[:, 0], rtol=1e-5, atol=1e-6)


def test_bag_of_a_pool_linear_sequential_gives_one_vector_per_sequence():
    module = MODULES["seq-pool-linear"]()
    rng = np.random.default_rng(2)
    seqs = [rng.standard_normal((T, I)).astype(np.float32) for T in rng.integers(1, 9, 10)]
    got = rnnc.dask.apply(module, db.from_sequence(seqs, npartitions=1),
                          batch_size=64).compute(scheduler="threads")
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    padded, lens = rnnc.pad_sequences([seqs[i] for i in order])
    with one_thread():
        expected = module(padded, lengths=lens)
    for j, i in enumerate(order):
        assert got[i].shape == (3,)
        np.testing.assert_array_equal(got[i], expected[j])


def test_task_thread_setting_is_held_while_tasks_overlap_and_restored_by_the_last():
    before = rnnc.get_num_threads()
    first, second = rnnc.dask._TaskThreads(1), rnnc.dask._TaskThreads(1)
    first.__enter__()
    second.__enter__()
    assert rnnc.get_num_threads() == 1
    first.__exit__(None, None, None)        # out of order: the other task still runs
    assert rnnc.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert rnnc.get_num_threads() == before
    assert rnnc.dask._task_threads() == 1   # not on a distributed worker


def test_threaded_scheduler_run_leaves_the_thread_setting_as_it_was():
    module = rnnc.RNN(I, H, seed=0)
    xn, _ = data()
    before = rnnc.get_num_threads()
    rnnc.dask.apply(module, da.from_array(xn, chunks=(6, 10, I)))[0].compute(
        scheduler="threads", num_workers=2)
    assert rnnc.get_num_threads() == before


@pytest.mark.parametrize("x, match", [
    (np.zeros((6, 4, I), np.float32), "dask.array.Array"),
])
def test_non_dask_input_is_refused(x, match):
    with pytest.raises(TypeError, match=match):
        rnnc.dask.apply(rnnc.LSTM(I, H), x)


def test_chunks_along_time_are_refused_naming_the_axis():
    x = da.zeros((6, 8, I), chunks=(3, 4, I), dtype=np.float32)
    with pytest.raises(ValueError, match=r"time axis 0 has chunks \(3, 3\)"):
        rnnc.dask.apply(rnnc.LSTM(I, H), x)


def test_bad_lengths_are_refused():
    x = da.zeros((6, 8, I), chunks=(6, 4, I), dtype=np.float32)
    with pytest.raises(ValueError, match=r"lengths must have shape \(8,\)"):
        rnnc.dask.apply(rnnc.LSTM(I, H), x, lengths=np.ones(5, int))
    with pytest.raises(TypeError, match="lengths must hold integers"):
        rnnc.dask.apply(rnnc.LSTM(I, H), x, lengths=np.ones(8))
    with pytest.raises(ValueError, match="x must be a 3-D"):
        rnnc.dask.apply(rnnc.LSTM(I, H), da.zeros((6, I), chunks=3))
    with pytest.raises(ValueError, match="bag carry their own lengths"):
        rnnc.dask.apply(rnnc.LSTM(I, H), db.from_sequence([np.zeros((2, I))]), lengths=[2])


def test_import_rnnc_does_not_import_dask():
    code = "import sys, rnnc; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


# -- LocalCluster: two worker processes of one thread ------------------------------------------
@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, timeout="20s")
    cl = distributed.Client(cluster, timeout="20s")
    try:
        yield cl
    finally:
        cl.close(timeout=10)
        cluster.close(timeout=10)


def test_cluster_workers_import_this_rnnc(client):
    paths = client.run(lambda: __import__("rnnc").__file__)
    assert len(paths) == 2
    assert set(paths.values()) == {rnnc.__file__}


def test_cluster_array_results_equal_per_chunk_calls_and_the_module_is_broadcast(client):
    module = rnnc.GRU(I, H, num_layers=2, bidirectional=True, seed=0)
    xn, lengths = data(N=40)
    x = da.from_array(xn, chunks=(6, 10, I))
    out, h_n = rnnc.dask.apply(module, x, lengths=lengths)
    # The module is scattered to both workers: no task of the graph carries the weights.
    graph = dict(out.__dask_graph__())
    weights = sum(p.nbytes for p in module.parameters())
    assert not [k for k, v in graph.items() if len(pickle.dumps(v)) > weights]
    holders = client.who_has()
    assert any(len(w) == 2 for w in holders.values())
    out, h_n = dask.compute(out, h_n)
    with one_thread():
        for start in range(0, 40, 10):
            sl = slice(start, start + 10)
            e_out, e_h = module(xn[:, sl], lengths=lengths[sl])
            np.testing.assert_array_equal(out[:, sl], e_out)
            np.testing.assert_array_equal(h_n[:, sl], e_h)


def test_cluster_bag_of_sequences_matches_direct_calls(client):
    module = rnnc.LSTM(I, H, batch_first=True, seed=0)
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((T, I)).astype(np.float32) for T in rng.integers(1, 10, 20)]
    got = rnnc.dask.apply(module, db.from_sequence(seqs, npartitions=2), batch_size=3).compute()
    assert len(got) == 20
    with one_thread():
        for i in (0, 13, 19):
            alone, (h_n, c_n) = module(seqs[i][None])
            # Another batch composition: float32 rounding only.
            np.testing.assert_allclose(got[i][0], alone[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[i][1][1], c_n[:, 0], rtol=1e-5, atol=1e-6)


def test_cluster_tasks_run_at_the_workers_thread_count(client):
    def probe_threads():
        import rnnc.dask as rd
        with rd._TaskThreads(rd._task_threads()):
            return rnnc.get_num_threads()
    counts = client.run(probe_threads)
    assert list(counts.values()) == [1, 1]
