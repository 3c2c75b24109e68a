"""rnnc.Pool: forward and backward of every mode against per-sequence NumPy loops (ragged
lengths, both layouts, unbatched), the tie rule of 'max', 'state' against the layers' own
final states, whole models by finite differences, and the module's errors."""
import copy
import pickle

import numpy as np
import pytest

import rnnc
from rnnc import Pool, Sequential, losses

from conftest import DTYPES, assert_close

MODES = ("last", "mean", "max")
LENGTHS = [5, 2, 4, 1, 5, 3]


# -- the oracle: one sequence at a time, in float64 -----------------------------------------------
def loop_pool(mode, seqs):
    """Pool each sequence (n_b, F) of the list ``seqs`` with plain loops; returns (B, F)."""
    out = []
    for s in seqs:
        s = np.asarray(s, dtype=np.float64)
        n, F = s.shape
        row = np.empty(F)
        for f in range(F):
            if mode == "last":
                row[f] = s[n - 1, f]
            elif mode == "mean":
                total = 0.0
                for t in range(n):
                    total += s[t, f]
                row[f] = total / n
            else:
                best = s[0, f]
                for t in range(1, n):
                    best = max(best, s[t, f])
                row[f] = best
        out.append(row)
    return np.array(out)


def loop_pool_grad(mode, seqs, g):
    """d(sum(g * pool(seqs))) / d seq for each sequence: a list of (n_b, F)."""
    grads = []
    for s, gb in zip(seqs, g):
        s = np.asarray(s, dtype=np.float64)
        n, F = s.shape
        d = np.zeros((n, F))
        for f in range(F):
            if mode == "last":
                d[n - 1, f] = gb[f]
            elif mode == "mean":
                for t in range(n):
                    d[t, f] = gb[f] / n
            else:
                best = max(s[t, f] for t in range(n))
                winners = [t for t in range(n) if s[t, f] == best]
                for t in winners:
                    d[t, f] = gb[f] / len(winners)
        grads.append(d)
    return grads


def padded(rng, lengths, F, dtype, batch_first, fill=None):
    """A padded batch (with garbage, not zeros, at padded steps) and its list of sequences."""
    T, B = max(lengths), len(lengths)
    x = rng.standard_normal((T, B, F)).astype(dtype)
    if fill is not None:
        for b, n in enumerate(lengths):
            x[n:, b] = fill
    seqs = [x[:n, b] for b, n in enumerate(lengths)]
    return (np.ascontiguousarray(x.swapaxes(0, 1)) if batch_first else x), seqs


# -- every mode against the loops ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "full"])
@pytest.mark.parametrize("mode", MODES)
def test_forward_and_backward_match_per_sequence_loops(rng, mode, ragged, batch_first, dtype):
    lengths = LENGTHS if ragged else [5] * len(LENGTHS)
    # Padded steps hold large values: a mask that let them through would show in every mode.
    x, seqs = padded(rng, lengths, 3, dtype, batch_first, fill=50.0)
    pool = Pool(mode, batch_first=batch_first).train()
    out = pool(x, lengths=lengths if ragged else None)
    assert_close(out, loop_pool(mode, seqs), dtype)
    g = rng.standard_normal(out.shape).astype(dtype)
    dx, dstate, grads = pool.backward(g)
    assert dstate is None and grads == {}
    assert dx.shape == x.shape and dx.flags.c_contiguous
    dxt = dx.swapaxes(0, 1) if batch_first else dx
    for b, (n, d) in enumerate(zip(lengths, loop_pool_grad(mode, seqs, g))):
        assert_close(np.ascontiguousarray(dxt[:n, b]), d, dtype, err_msg=f"sequence {b}")
        assert not dxt[n:, b].any(), "padded steps get no gradient"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_input_pools_to_one_vector(rng, mode, dtype):
    x = rng.standard_normal((6, 4)).astype(dtype)
    pool = Pool(mode).train()
    for lengths in (None, 4, [4]):
        n = 6 if lengths is None else 4
        out = pool(x, lengths=lengths)
        assert out.shape == (4,)
        assert_close(out, loop_pool(mode, [x[:n]])[0], dtype)
        g = rng.standard_normal(4).astype(dtype)
        dx, _, _ = pool.backward(g)
        expected = np.zeros((6, 4))
        expected[:n] = loop_pool_grad(mode, [x[:n]], [g])[0]
        assert_close(dx, expected, dtype)


def test_max_splits_the_gradient_evenly_among_ties():
    # Feature 0 of sequence 0 has its maximum 3.0 at steps 1 and 3; step 4 (padding) is larger.
    x = np.array([[1.0, 3.0, 2.0, 3.0, 9.0], [0.5, 0.5, 0.5, 0.5, 0.5]]).T[:, :, None]
    pool = Pool("max").train()
    np.testing.assert_array_equal(pool(x, lengths=[4, 3])[:, 0], [3.0, 0.5])
    dx, _, _ = pool.backward(np.array([[6.0], [3.0]]))
    np.testing.assert_array_equal(dx[:, 0, 0], [0, 3, 0, 3, 0])
    np.testing.assert_array_equal(dx[:, 1, 0], [1, 1, 1, 0, 0])


def test_max_tie_rule_is_torch_amax():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(7, 5, 4)).astype(np.float64)       # many ties
    lengths = [7, 3, 5, 1, 6]
    g = rng.standard_normal((5, 4))
    pool = Pool("max").train()
    out = pool(x, lengths=lengths)
    dx, _, _ = pool.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    rows = [torch.amax(xt[:n, b], dim=0) for b, n in enumerate(lengths)]
    torch.stack(rows).mul(torch.tensor(g)).sum().backward()
    np.testing.assert_array_equal(out, torch.stack(rows).detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-15, atol=0)


def test_sequences_of_length_zero_are_refused():
    x = np.ones((3, 2, 4))
    for mode in MODES:
        with pytest.raises(ValueError, match=r"lengths\[1\] is 0"):
            Pool(mode)(x, lengths=[3, 0])
        with pytest.raises(ValueError, match="0 time steps"):
            Pool(mode)(np.ones((0, 2, 4)))
    # B = 0 has nothing to refuse.
    assert Pool("mean")(np.ones((3, 0, 4)), lengths=[]).shape == (0, 4)


def test_keeps_float_dtypes_and_converts_integers():
    assert Pool("mean")(np.ones((2, 1, 3), np.float32)).dtype == np.float32
    assert Pool("last")(np.ones((2, 1, 3), np.int64)).dtype == np.float64


# -- 'state' ---------------------------------------------------------------------------------------
def top_hidden(layer, state):
    """What PyTorch users write: torch.cat([h_n[-2], h_n[-1]], 1), or h_n[-1]."""
    if isinstance(layer, rnnc.Bidirectional):
        hs = [s[0] if isinstance(s, tuple) else s for s in state]
        return np.concatenate([hs[0][-1], hs[1][-1]], axis=-1)
    h = state[0] if isinstance(state, tuple) else state
    if layer.bidirectional:
        return np.concatenate([h[-2], h[-1]], axis=-1)
    return h[-1]


def recurrent_layers(dtype, batch_first=False):
    kw = dict(dtype=dtype, batch_first=batch_first)
    return {
        "GRU": rnnc.GRU(3, 4, seed=0, **kw),
        "LSTM-2-layers-bidirectional": rnnc.LSTM(3, 4, num_layers=2, bidirectional=True,
                                                 seed=1, **kw),
        "RNN-bidirectional": rnnc.RNN(3, 4, bidirectional=True, seed=2, **kw),
        "LSTM-proj": rnnc.LSTM(3, 5, proj_size=2, num_layers=2, seed=3, **kw),
        "Bidirectional(LSTM)": rnnc.Bidirectional(rnnc.LSTM(3, 4, num_layers=2, seed=4, **kw),
                                                  merge_mode="sum"),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(recurrent_layers(np.float64)))
def test_state_mode_is_the_top_layers_final_state(rng, name, dtype):
    layer = recurrent_layers(dtype)[name]
    x = rng.standard_normal((5, 6, 3)).astype(dtype)
    out, state = layer(x, lengths=LENGTHS)
    expected = top_hidden(layer, state)
    model = Sequential(copy.deepcopy(layer), Pool("state"))
    got = model(x, lengths=LENGTHS)
    np.testing.assert_array_equal(got, expected)
    # Unidirectional layers end at the last valid step, so 'last' gives the same vector;
    # bidirectional ones do not (their reverse direction ends at step 0).
    last = Sequential(copy.deepcopy(layer), Pool("last"))(x, lengths=LENGTHS)
    if "idirectional" in name:
        assert got.shape[1] == 2 * last.shape[1] or not np.allclose(got, last)
    else:
        assert_close(last, expected, dtype)


def test_state_mode_standalone_takes_the_top_states():
    h = np.arange(12.0).reshape(2, 3, 2)              # (D, B, P)
    pool = Pool("state").train()
    out = pool(None, state=h)
    np.testing.assert_array_equal(out, np.concatenate([h[0], h[1]], axis=1))
    dx, dstate, _ = pool.backward(np.arange(12.0).reshape(3, 4))
    assert dx is None
    np.testing.assert_array_equal(dstate[0], np.arange(12.0).reshape(3, 4)[:, :2])
    np.testing.assert_array_equal(dstate[1], np.arange(12.0).reshape(3, 4)[:, 2:])
    np.testing.assert_array_equal(pool(None, state=h[:, 0]), h[:, 0].reshape(-1))


def test_state_mode_against_torch_pack_padded_sequence():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence
    rng = np.random.default_rng(7)
    tl = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    lstm = rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    lstm.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()})
    x = rng.standard_normal((5, 6, 3))
    packed = pack_padded_sequence(torch.tensor(x), torch.tensor(LENGTHS), enforce_sorted=False)
    _, (h_n, _) = tl(packed)
    expected = torch.cat([h_n[-2], h_n[-1]], 1).detach().numpy()
    got = Sequential(lstm, Pool("state"))(x, lengths=LENGTHS)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


# -- whole models ----------------------------------------------------------------------------------
def numeric_grad(f, arr, index, eps=1e-6):
    old = arr[index]
    arr[index] = old + eps
    fp = f()
    arr[index] = old - eps
    fm = f()
    arr[index] = old
    return (fp - fm) / (2 * eps)


def sample_indices(rng, shape, k=5):
    flat = rng.choice(int(np.prod(shape)), size=min(k, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("mode", ["last", "mean", "max", "state"])
def test_classifier_gradients_match_finite_differences(rng, mode, batch_first):
    # LSTM (2 layers, bidirectional) -> Pool -> Linear -> softmax cross-entropy, ragged.
    model = Sequential(
        rnnc.LSTM(2, 3, num_layers=2, bidirectional=True, batch_first=batch_first,
                  dtype=np.float64, seed=0),
        Pool(mode), rnnc.Linear(6, 3, dtype=np.float64, seed=1))
    lengths = [4, 2, 3, 1]
    x = rng.standard_normal((4, 4, 2))
    if batch_first:
        x = np.ascontiguousarray(x.swapaxes(0, 1))
    labels = np.array([0, 2, 1, 2])

    def loss():
        return losses.softmax_cross_entropy(model(x, lengths=lengths), labels)[0]

    model.train()
    value, g = losses.softmax_cross_entropy(model(x, lengths=lengths), labels)
    dx, _, grads = model.backward(g)
    assert list(grads) == list(model.state_dict())
    model.eval()
    assert loss() == pytest.approx(value, rel=1e-15)
    t_axis = 1 if batch_first else 0
    for b, n in enumerate(lengths):
        padding = dx[b, n:] if batch_first else dx[n:, b]
        assert not padding.any()
    checks = [(x, idx, dx[idx]) for idx in sample_indices(rng, x.shape, 12)
              if idx[t_axis] < lengths[idx[1 - t_axis]]]
    for name, p in model.named_parameters():
        checks += [(p, idx, grads[name][idx]) for idx in sample_indices(rng, p.shape)]
    for arr, idx, analytic in checks:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr, idx), rtol=1e-6,
                                   atol=1e-9)


# -- the module ------------------------------------------------------------------------------------
def test_module_interface():
    pool = Pool("max", batch_first=True)
    assert repr(pool) == "Pool('max', batch_first=True)" and repr(Pool()) == "Pool('last')"
    assert pool._config() == {"mode": "max", "batch_first": True}
    assert Pool(**pool._config())._config() == pool._config()
    assert pool.state_dict() == {} and pool.named_parameters() == [] and pool.grads == {}
    assert pool.load_state_dict({}) is pool
    pool.load_state_dict({"weight": 1}, strict=False)
    with pytest.raises(ValueError, match="unexpected key"):
        pool.load_state_dict({"weight": 1})
    with pytest.raises(TypeError, match="mapping"):
        pool.load_state_dict([1])
    assert pool.freeze() is pool and pool.frozen
    assert pool.unfreeze() is pool and not pool.frozen
    pool.zero_grad()
    assert pool.train() is pool and pool.training
    pool(np.ones((2, 3, 1)))
    clone = pickle.loads(pickle.dumps(pool))
    assert clone._cache is None and clone.training      # the training cache is not pickled
    assert copy.copy(pool)._cache is not pool._cache
    assert pool.eval() is pool and not pool.training and pool._cache is None


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="mode must be one of"):
        Pool("median")
    with pytest.raises(TypeError, match="batch_first"):
        Pool("last", batch_first="yes")
    with pytest.raises(ValueError, match="input must be 3-D"):
        Pool("mean")(np.ones(3))
    with pytest.raises(TypeError, match="input must have a real numeric dtype"):
        Pool("mean")(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        Pool("mean")(np.ones((3, 2, 1)), lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="lengths must lie in"):
        Pool("mean")(np.ones((3, 2, 1)), lengths=[4, 1])
    with pytest.raises(TypeError, match="needs state="):
        Pool("state")(np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match="state must have shape"):
        Pool("state")(None, state=np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match="only read by Pool\\('state'\\)"):
        Pool("mean")(np.ones((3, 2, 1)), state=np.ones((1, 2, 1)))


def test_backward_errors():
    pool = Pool("mean")
    with pytest.raises(RuntimeError, match="training mode"):
        pool.backward(np.ones((2, 1)))
    pool.train()
    pool(np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match=r"grad_output must have the output's shape \(2, 1\)"):
        pool.backward(np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match="grad_h_n must be None"):
        pool.backward(np.ones((2, 1)), np.ones(1))
    with pytest.raises(TypeError, match="grad_output"):
        pool.backward(np.array([["a"], ["b"]]))
    assert pool.backward(None) == (None, None, {})          # no gradient, consumes the call
    with pytest.raises(RuntimeError, match="once per forward"):
        pool.backward(np.ones((2, 1)))
