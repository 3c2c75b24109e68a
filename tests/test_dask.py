"""rnnc.dask.apply: batch inference on Dask arrays and bags, on Dask's threaded scheduler and
on a LocalCluster of two worker processes. Expected values come from direct calls of the module
on the same rows at one thread (the tasks' thread count here)."""
import contextlib
import copy
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
from rnnc import losses, optim  # noqa: E402
from rnnc._engine.threads import thread_setting  # noqa: E402

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


def test_bag_without_bucketing_runs_batches_in_the_partition_order():
    module = rnnc.GRU(I, H, seed=0)
    rng = np.random.default_rng(7)
    seqs = [rng.standard_normal((T, I)).astype(np.float32) for T in rng.integers(1, 12, 11)]
    got = rnnc.dask.apply(module, db.from_sequence(seqs, npartitions=1), batch_size=4,
                          bucket=False).compute(scheduler="threads")
    with one_thread():
        for start in range(0, 11, 4):
            padded, lens = rnnc.pad_sequences(seqs[start:start + 4])
            out, h_n = module(padded, lengths=lens)
            for j in range(len(lens)):
                np.testing.assert_array_equal(got[start + j][0], out[:lens[j], j])
                np.testing.assert_array_equal(got[start + j][1], h_n[:, j])
    with pytest.raises(TypeError, match="bucket must be a bool"):
        rnnc.dask.apply(module, db.from_sequence(seqs), bucket="no")


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


def test_thread_setting_is_held_while_blocks_overlap_and_restored_by_the_last():
    before = rnnc.get_num_threads()
    first, second = thread_setting(1), thread_setting(1)
    first.__enter__()
    second.__enter__()
    assert rnnc.get_num_threads() == 1
    first.__exit__(None, None, None)        # out of order: the other block still runs
    assert rnnc.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert rnnc.get_num_threads() == before
    assert rnnc.dask._task_threads() == 1   # not on a distributed worker


def test_thread_setting_nested_gives_the_inner_count_then_the_outer_then_the_original():
    with two_threads_set():
        with thread_setting(1):
            with thread_setting(2):
                assert rnnc.get_num_threads() == 2
            assert rnnc.get_num_threads() == 1
            with thread_setting(None):          # None changes nothing
                assert rnnc.get_num_threads() == 1
        assert rnnc.get_num_threads() == 2


def test_thread_setting_is_restored_after_an_error_and_checks_its_argument():
    with two_threads_set():
        with pytest.raises(KeyError, match="inside"):
            with thread_setting(1):
                assert rnnc.get_num_threads() == 1
                raise KeyError("inside")
        assert rnnc.get_num_threads() == 2
        with pytest.raises(ValueError, match="n_threads"):
            with thread_setting(0):
                pass
        assert rnnc.get_num_threads() == 2


def test_sklearn_uses_the_same_thread_setting():
    _params = pytest.importorskip("rnnc.sklearn._params")
    assert _params.thread_setting is thread_setting


def thread_probe(fail_above=None):
    """A module-like callable that returns rnnc's thread count inside the call (T, B, 1), and
    raises on a block of more than ``fail_above`` rows. Made here, so that cloudpickle sends
    the class by value to the workers (they cannot import this file)."""
    class ThreadProbe:
        def __call__(self, x, lengths=None):
            if fail_above is not None and x.shape[1] > fail_above:
                raise RuntimeError("probe failed on purpose")
            return np.full(x.shape[:2] + (1,), rnnc.get_num_threads(), np.float32)
    return ThreadProbe()


@contextlib.contextmanager
def two_threads_set():
    found = rnnc.get_num_threads()
    rnnc.set_num_threads(2)
    try:
        yield
    finally:
        rnnc.set_num_threads(found)


def test_threaded_scheduler_tasks_run_at_one_thread_and_restore_the_setting():
    x = da.zeros((3, 40, I), chunks=(3, 5, I), dtype=np.float32)
    with two_threads_set():
        counts = rnnc.dask.apply(thread_probe(), x).compute(scheduler="threads", num_workers=2)
        assert counts.shape == (3, 40, 1) and set(np.unique(counts)) == {1.0}
        assert rnnc.get_num_threads() == 2
        # A failing task restores it too (one task: Dask raises the first error at once, while
        # other tasks may still run).
        with pytest.raises(RuntimeError, match="on purpose"):
            rnnc.dask.apply(thread_probe(fail_above=4), x.rechunk((3, 40, I))).compute(
                scheduler="threads")
        assert rnnc.get_num_threads() == 2


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
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 6\] \(x's time steps\), "
                                         r"got min 1, max 7"):
        rnnc.dask.apply(rnnc.LSTM(I, H), x, lengths=np.arange(1, 9) % 7 + 1)
    with pytest.raises(ValueError, match="x must be a 3-D"):
        rnnc.dask.apply(rnnc.LSTM(I, H), da.zeros((6, I), chunks=3))
    with pytest.raises(ValueError, match="bag carry their own lengths"):
        rnnc.dask.apply(rnnc.LSTM(I, H), db.from_sequence([np.zeros((2, I))]), lengths=[2])


def test_import_rnnc_does_not_import_dask():
    code = "import sys, rnnc; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


# -- data-parallel training ----------------------------------------------------------------------
# float64 throughout: the shards' gradients, weighted and summed, equal one process's
# full-batch gradient up to rounding (about 1e-15 relative), so 1e-10 is a tight bound.
def full_batch(module, loss, xn, y, lengths):
    """The loss and gradients of one process: a training forward on all rows, the loss with
    the mask of the valid steps, one backward."""
    m = copy.deepcopy(module).train()
    out = m(xn) if lengths is None else m(xn, lengths=lengths)
    pred = out[0] if isinstance(out, tuple) else out
    bf = batch_first_of(module)
    mask = None
    if lengths is not None and pred.ndim == 3:
        mask = losses.lengths_mask(lengths, pred.shape[1 if bf else 0], bf)
    value, grad = loss(pred, y, mask)
    _, _, grads = m.backward(grad)
    return value, grads


def assert_grads_equal(got, expected, module):
    assert list(got) == [name for name, _ in module.named_parameters()]
    assert set(got) == set(expected)
    for name, g in got.items():
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, expected[name], rtol=1e-10, atol=1e-13, err_msg=name)


F64 = np.float64
T_, N_ = 7, 37
TRAIN_CASES = {
    # name: (module, loss, target kind, lengths?)
    "lstm-2l-bi-mse-steps": (lambda: rnnc.LSTM(I, H, num_layers=2, bidirectional=True,
                                               dtype=F64, seed=0), losses.mse, "steps", True),
    "gru-bf-proj-mse-steps": (lambda: rnnc.LSTM(I, H, proj_size=3, batch_first=True, dtype=F64,
                                                seed=1), "mse", "steps", True),
    "rnn-ce-labels-per-step": (lambda: rnnc.RNN(I, 4, dtype=F64, seed=2),
                               "softmax_cross_entropy", "step-labels", True),
    "bidirectional-wrapper-no-lengths": (lambda: rnnc.Bidirectional(rnnc.GRU(I, H, dtype=F64,
                                                                             seed=3)),
                                         "mse", "steps", False),
    "seq-state-pool-ce": (lambda: rnnc.Sequential(rnnc.GRU(I, H, dtype=F64, seed=4),
                                                  rnnc.Pool("state"),
                                                  rnnc.Linear(H, 3, dtype=F64, seed=5)),
                          losses.softmax_cross_entropy, "labels", True),
    "seq-mean-pool-mse-bf": (lambda: rnnc.Sequential(rnnc.LSTM(I, H, batch_first=True,
                                                               dtype=F64, seed=6),
                                                     rnnc.Pool("mean"),
                                                     rnnc.Linear(H, 2, dtype=F64, seed=7)),
                             "mse", "rows", True),
}


def train_data(module, kind, seed=0):
    """x (T, N, I) or (N, T, I), ragged lengths and targets of the kind asked for, float64."""
    bf = batch_first_of(module)
    rng = np.random.default_rng(seed)
    xn = rng.standard_normal((N_, T_, I) if bf else (T_, N_, I))
    lengths = rng.integers(1, T_ + 1, N_)
    out = module.eval()(xn[:, :1] if bf else xn[:1])
    width = (out[0] if isinstance(out, tuple) else out).shape[-1]
    steps = (N_, T_) if bf else (T_, N_)
    y = {"steps": lambda: rng.standard_normal(steps + (width,)),
         "step-labels": lambda: rng.integers(0, width, steps),
         "labels": lambda: rng.integers(0, width, N_),
         "rows": lambda: rng.standard_normal((N_, width))}[kind]()
    return xn, lengths, y


LOSS_FN = {"mse": losses.mse, "softmax_cross_entropy": losses.softmax_cross_entropy}


@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_gradients_equal_the_full_batch_gradient_in_float64(name):
    make, loss, kind, ragged = TRAIN_CASES[name]
    module = make()
    xn, lengths, y = train_data(module, kind)
    lengths = lengths if ragged else None
    b_ax = 0 if batch_first_of(module) else 1
    x = da.from_array(xn, chunks={b_ax: (10, 17, 10)})
    before = copy.deepcopy(module.state_dict())
    value, grads = rnnc.dask.gradients(module, loss, x, y, lengths=lengths, batch_size=4)
    expected_value, expected = full_batch(module, LOSS_FN.get(loss, loss), xn, y, lengths)
    assert value == pytest.approx(expected_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)
    # The module given is unchanged: weights, mode, accumulated gradients.
    assert not module.training
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert all(not np.any(g) for g in module.grads.values())


def test_gradients_of_a_bag_of_pairs_equal_the_full_batch_gradient():
    module = rnnc.Sequential(rnnc.LSTM(I, H, bidirectional=True, dtype=F64, seed=0),
                             rnnc.Pool("mean"), rnnc.Linear(2 * H, 3, dtype=F64, seed=1))
    rng = np.random.default_rng(4)
    seqs = [rng.standard_normal((T, I)) for T in rng.integers(1, 12, 29)]
    labels = rng.integers(0, 3, 29)
    bag = db.from_sequence(list(zip(seqs, labels)), npartitions=3)
    value, grads = rnnc.dask.gradients(module, "cross_entropy", bag, batch_size=5)
    xn, lengths = rnnc.pad_sequences(seqs)
    e_value, expected = full_batch(module, losses.softmax_cross_entropy, xn, labels, lengths)
    assert value == pytest.approx(e_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)


def test_gradients_of_a_bag_with_per_step_targets_pad_the_targets():
    module = rnnc.GRU(I, H, batch_first=True, dtype=F64, seed=0)
    rng = np.random.default_rng(5)
    seqs = [rng.standard_normal((T, I)) for T in rng.integers(1, 9, 17)]
    targets = [rng.standard_normal((len(s), H)) for s in seqs]
    bag = db.from_sequence(list(zip(seqs, targets)), npartitions=2)
    value, grads = rnnc.dask.gradients(module, losses.mse, bag, batch_size=4)
    xn, lengths = rnnc.pad_sequences(seqs, batch_first=True)
    yn, _ = rnnc.pad_sequences(targets, batch_first=True)
    e_value, expected = full_batch(module, losses.mse, xn, yn, lengths)
    assert value == pytest.approx(e_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)


def test_custom_losses_sum_or_weighted_mean():
    module = rnnc.LSTM(I, H, dtype=F64, seed=0)
    xn, lengths, y = train_data(module, "steps", seed=1)
    x = da.from_array(xn, chunks=(T_, 9, I))

    def sum_of_squares(pred, target, mask):
        diff = np.where(mask[..., None], pred - target, 0.0)
        return float(np.sum(diff ** 2)), 2 * diff

    def mean_with_weight(pred, target, mask):
        value, grad = losses.mse(pred, target, mask)
        return value, grad, int(mask.sum()) * pred.shape[-1]

    value, grads = rnnc.dask.gradients(module, sum_of_squares, x, y, lengths=lengths)
    e_value, expected = full_batch(module, sum_of_squares, xn, y, lengths)
    assert value == pytest.approx(e_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)
    value, grads = rnnc.dask.gradients(module, mean_with_weight, x, y, lengths=lengths)
    e_value, expected = full_batch(module, losses.mse, xn, y, lengths)
    assert value == pytest.approx(e_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)


def serial_training(module, optimizer, loss, X, y, lengths, epochs, batch_size, seed,
                    clip=None):
    """The documented equivalent of fit: rnnc.batches with one generator for the run, one
    forward, backward and step per batch. y: one entry per sequence along its first axis
    (per-step targets (N, T, ...)). Returns the losses and each batch's weight."""
    rng = np.random.default_rng(seed)
    module.train()
    bf = batch_first_of(module)
    history = []
    for _ in range(epochs):
        for xb, lb, yb in rnnc.batches(X, y, lengths=lengths, batch_size=batch_size,
                                       shuffle=True, seed=rng, batch_first=bf):
            optimizer.zero_grad()
            pred = module(xb, lengths=lb)
            pred = pred[0] if isinstance(pred, tuple) else pred
            if pred.ndim == 3:
                mask = losses.lengths_mask(lb, pred.shape[1 if bf else 0], bf)
                yb = yb[:, :pred.shape[1 if bf else 0]]
                yb = yb if bf else np.swapaxes(yb, 0, 1)
                value, grad = loss(pred, yb, mask)
                weight = mask.sum() * (pred.shape[-1] if loss is losses.mse else 1)
            else:
                value, grad = loss(pred, yb)
                weight = len(lb)
            module.backward(grad)
            if clip is not None:
                optim.clip_grad_norm(module, clip)
            optimizer.step()
            history.append((value, weight))
    return history


def test_fit_takes_the_steps_of_serial_training_on_an_array():
    make = TRAIN_CASES["seq-state-pool-ce"][0]
    module, serial = make(), make()
    xn, lengths, labels = train_data(module, "labels", seed=2)
    x = da.from_array(xn, chunks=(T_, (10, 17, 10), I))
    opt = optim.Adam(module, lr=0.05)
    history = rnnc.dask.fit(module, "softmax_cross_entropy", opt, x, labels, lengths=lengths,
                            epochs=2, batch_size=8, seed=3, clip_grad_norm=0.5, progress=False)
    steps = serial_training(serial, optim.Adam(serial, lr=0.05), losses.softmax_cross_entropy,
                            xn, labels, lengths, 2, 8, 3, clip=0.5)
    for (name, got), want in zip(module.named_parameters(), serial.parameters()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)
    assert not np.allclose(module.parameters()[0], make().parameters()[0])   # it trained
    # History: each step's loss, and per epoch the mean over every sequence of the epoch.
    batch = [v for epoch in history["batch_loss"] for v in epoch]
    np.testing.assert_allclose(batch, [v for v, _ in steps], rtol=1e-10)
    for e in range(2):
        part = steps[5 * e:5 * e + 5]
        mean = sum(v * w for v, w in part) / sum(w for _, w in part)
        assert history["loss"][e] == pytest.approx(mean, rel=1e-12)
    assert len(history["loss"]) == 2 and [len(b) for b in history["batch_loss"]] == [5, 5]


def test_fit_on_a_bag_with_per_step_targets_takes_the_serial_steps():
    make = lambda: rnnc.GRU(I, H, dtype=F64, seed=8)  # noqa: E731
    module, serial = make(), make()
    rng = np.random.default_rng(6)
    seqs = [rng.standard_normal((T, I)) for T in rng.integers(1, 10, 23)]
    targets = [rng.standard_normal((len(s), H)) for s in seqs]
    bag = db.from_sequence(list(zip(seqs, targets)), npartitions=3)
    opt = optim.SGD(module, lr=0.1, momentum=0.9)
    rnnc.dask.fit(module, "mse", opt, bag, epochs=2, batch_size=6, seed=7, progress=False)
    yn, _ = rnnc.pad_sequences(targets)
    steps = serial_training(serial, optim.SGD(serial, lr=0.1, momentum=0.9), losses.mse, seqs,
                            np.swapaxes(yn, 0, 1), None, 2, 6, 7)
    assert len(steps) == 8
    for (name, got), want in zip(module.named_parameters(), serial.parameters()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_fit_shows_a_progress_bar_when_asked(capsys):
    pytest.importorskip("tqdm")
    module = rnnc.Linear(I, 2, dtype=F64, seed=0)
    x = da.from_array(np.ones((3, 8, I)), chunks=(3, 4, I))
    rnnc.dask.fit(module, "mse", optim.SGD(module, lr=0.1), x, np.zeros((3, 8, 2)),
                  batch_size=4, progress=True)
    assert "epoch 1/1" in capsys.readouterr().err
    rnnc.dask.fit(module, "mse", optim.SGD(module, lr=0.1), x, np.zeros((3, 8, 2)),
                  batch_size=4, progress=False)
    assert capsys.readouterr().err == ""


def test_training_arguments_are_checked_naming_them():
    module = rnnc.GRU(I, H, seed=0)
    x = da.zeros((4, 6, I), chunks=(4, 3, I), dtype=np.float32)
    y = np.zeros((4, 6, H), np.float32)
    opt = optim.SGD(module, lr=0.1)
    fit = rnnc.dask.fit
    with pytest.raises(ValueError, match="loss must be one of"):
        rnnc.dask.gradients(module, "hinge", x, y)
    with pytest.raises(TypeError, match="loss must be one of"):
        rnnc.dask.gradients(module, 3, x, y)
    with pytest.raises(ValueError, match="y is required"):
        rnnc.dask.gradients(module, "mse", x)
    with pytest.raises(ValueError, match=r"y must have shape \(T, N, ...\) with N = 6, T = 4"):
        rnnc.dask.gradients(module, "mse", x, np.zeros((4, 5, H)))
    with pytest.raises(TypeError, match="x must be a dask.array.Array"):
        rnnc.dask.gradients(module, "mse", np.zeros((4, 6, I)), y)
    with pytest.raises(TypeError, match="module must be a trainable rnnc module"):
        rnnc.dask.gradients(object(), "mse", x, y)
    with pytest.raises(ValueError, match="batch_size"):
        rnnc.dask.gradients(module, "mse", x, y, batch_size=0)
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        rnnc.dask.gradients(module, "mse", x, y, client="tcp://scheduler:8786")
    bag = db.from_sequence([(np.zeros((2, I)), np.zeros((2, H)))])
    with pytest.raises(ValueError, match="y is for x given as a Dask array"):
        rnnc.dask.gradients(module, "mse", bag, y)
    with pytest.raises(TypeError, match=r"bag of \(sequence, target\) pairs, got an item of "
                                        r"type ndarray"):
        rnnc.dask.gradients(module, "mse", db.from_sequence([np.zeros((2, I))]))
    with pytest.raises(TypeError, match="optimizer must be an rnnc optimizer"):
        fit(module, "mse", "adam", x, y, progress=False)
    with pytest.raises(ValueError, match="not a parameter of module"):
        fit(module, "mse", optim.SGD(rnnc.GRU(I, H), lr=0.1), x, y, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(module, "mse", opt, x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit(module, "mse", opt, x, y, clip_grad_norm=-1.0, progress=False)
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        fit(module, "mse", opt, x, y, shuffle="yes", progress=False)

    def sometimes_weighted(pred, target, mask):
        value, grad = losses.mse(pred, target, mask)
        return (value, grad, 1.0) if pred.shape[1] == 3 else (value, grad)

    x2 = da.zeros((4, 6, I), chunks=(4, (3, 3), I), dtype=np.float32)
    with pytest.raises(TypeError, match="weight .* for some batches and not for others"):
        rnnc.dask.gradients(module, sometimes_weighted, x2.rechunk((4, (2, 4), I)), y,
                            batch_size=3)


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


def test_cluster_tasks_run_at_the_workers_thread_count_and_restore_it(client):
    found = client.run(rnnc.get_num_threads)
    client.run(rnnc.set_num_threads, 2)
    try:
        x = da.zeros((3, 40, I), chunks=(3, 5, I), dtype=np.float32)
        counts = rnnc.dask.apply(thread_probe(), x).compute()
        # The workers have one thread each (nthreads=1), whatever their process had set.
        assert set(np.unique(counts)) == {1.0}
        assert set(client.run(rnnc.get_num_threads).values()) == {2}
        with pytest.raises(RuntimeError, match="on purpose"):
            rnnc.dask.apply(thread_probe(fail_above=4), x.rechunk((3, 40, I))).compute()
        assert set(client.run(rnnc.get_num_threads).values()) == {2}
    finally:
        for address, n in found.items():
            client.run(rnnc.set_num_threads, n, workers=[address])


def test_cluster_gradients_equal_the_full_batch_gradient_and_weights_go_to_every_worker(
        client):
    make, loss, kind, _ = TRAIN_CASES["lstm-2l-bi-mse-steps"]
    module = make()
    xn, lengths, y = train_data(module, kind, seed=9)
    x = da.from_array(xn, chunks=(T_, (9, 10, 9, 9), I))
    value, grads = rnnc.dask.gradients(module, loss, x, y, lengths=lengths, batch_size=5)
    e_value, expected = full_batch(module, losses.mse, xn, y, lengths)
    assert value == pytest.approx(e_value, rel=1e-12)
    assert_grads_equal(grads, expected, module)
    # What a step ships: the weights, scattered once to both workers (a future, not a value
    # in each task).
    shards = rnnc.dask._Shards(module, loss, x, y, lengths, 5, client, persist=False)
    shipped = shards.ship(module)
    assert isinstance(shipped, distributed.Future)
    assert len(client.who_has([shipped])[shipped.key]) == 2
    task = shards.task(0, shipped, None, [0, 0])
    graph = dict(task.__dask_graph__())
    largest = max(module.parameters(), key=lambda p: p.nbytes).tobytes()
    assert largest in pickle.dumps(module)              # the search finds weights
    assert not [k for k, v in graph.items() if largest in pickle.dumps(v)]     # no weights


def test_cluster_fit_takes_the_steps_of_serial_training(client):
    make = TRAIN_CASES["seq-mean-pool-mse-bf"][0]
    module, serial = make(), make()
    xn, lengths, y = train_data(module, "rows", seed=10)
    x = da.from_array(xn, chunks=((19, 18), T_, I))
    opt = optim.Adam(module, lr=0.02)
    history = rnnc.dask.fit(module, losses.mse, opt, x, y, lengths=lengths, epochs=2,
                            batch_size=16, seed=11, progress=False)
    steps = serial_training(serial, optim.Adam(serial, lr=0.02), losses.mse, xn, y, lengths,
                            2, 16, 11)
    for (name, got), want in zip(module.named_parameters(), serial.parameters()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(sum(history["batch_loss"], []), [v for v, _ in steps],
                               rtol=1e-10)
