"""Module.freeze(): read-only parameters, and the kernels' packed weights kept between calls
(rnnc/_engine/stack.py, ``packs``). A frozen module must compute exactly what the unfrozen one
does, bit for bit, on every path that packs weights (small-batch kernel, fused LSTM product,
split layers, GRU reset_after=False, projections), on the first call and on later ones; and
nothing may change its parameters without the cache being dropped."""
import copy
import pickle
import threading

import numpy as np
import pytest

import rnnc
from rnnc import reference
from rnnc._engine.kernels import K
from rnnc.bidirectional import Bidirectional
from rnnc.optim import SGD, Adam
from rnnc.sequential import Sequential

from conftest import assert_same_result

HAS_KERNEL = K.has_small_gemm()


def _result(m, x, hx=None, lengths=None):
    out, st = m(x, hx, lengths=lengths)
    return out, (tuple(a.copy() for a in st) if isinstance(st, tuple) else st.copy())


CASES = [  # mode, input, hidden, batch, steps, kwargs
    ("LSTM", 7, 40, 3, 9, dict(num_layers=2)),                     # small-batch kernel
    ("LSTM", 16, 24, 8, 6, {}),                                    # fused product (B >= 4)
    ("LSTM", 9, 33, 2, 5, dict(proj_size=7, bidirectional=True)),  # W_hr panels
    ("LSTM", 5, 20, 70, 4, dict(bias=False)),                      # batch > 64
    ("GRU", 6, 36, 2, 7, dict(bidirectional=True)),
    ("GRU", 6, 36, 5, 7, dict(reset_after=False, num_layers=2)),   # W_hn packed apart
    ("RNN", 10, 19, 1, 12, dict(nonlinearity="relu")),
    ("RNN", 10, 64, 4, 3, {}),                                     # T < 4: BLAS, nothing kept
    ("LSTM", 4, 16, 2, 1, {}),                                     # one step
]


@pytest.mark.parametrize("mode,I,H,B,T,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_frozen_matches_unfrozen_and_reference(mode, I, H, B, T, kw, dtype, threads):
    rng = np.random.default_rng(H + B)
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=3, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    f = copy.deepcopy(m).freeze()
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    previous = rnnc.get_num_threads()
    rnnc.set_num_threads(threads)
    try:
        for ln in (None, lengths, None):      # the second and third calls find the panels kept
            expected = _result(m, x, lengths=ln)
            assert_same_result(_result(f, x, lengths=ln), expected)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            out_ref = ref(x, lengths=ln)[0]
            np.testing.assert_allclose(expected[0], out_ref, rtol=tol, atol=tol)
    finally:
        rnnc.set_num_threads(previous)
    if HAS_KERNEL and B <= 16 and T >= 4:
        assert f._packs, "a frozen call on the small-batch kernel keeps its panels"


@pytest.mark.parametrize("mode,H,B,kw", [
    ("LSTM", 40, 3, {}),          # unequal halves: gathered rows
    ("LSTM", 128, 1, {}),         # whole panels: packed from the gate blocks in place
    ("LSTM", 48, 8, {}),          # fused parts
    ("LSTM", 33, 70, {}),         # batch > 64: BLAS on gathered W_hh rows
    ("GRU", 64, 2, dict(bias=False)),
    ("RNN", 96, 3, dict(nonlinearity="relu", num_layers=2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_split(force_split, mode, H, B, kw, dtype):
    rng = np.random.default_rng(H)
    m = getattr(rnnc, mode)(11, H, dtype=dtype, seed=5, **kw)
    f = copy.deepcopy(m).freeze()
    x = rng.standard_normal((6, B, 11)).astype(dtype)
    for _ in range(3):
        assert_same_result(_result(f, x), _result(m, x))
    assert force_split == [("units", False, "forward")] * (6 * m.num_layers)
    assert any(k[2] == "split" for k in f._packs)
    # New weights: the parts pack again, and the result follows them.
    m.load_state_dict(getattr(rnnc, mode)(11, H, dtype=dtype, seed=6, **kw).state_dict())
    f.load_state_dict(m.state_dict())
    assert not f._packs
    for _ in range(2):
        assert_same_result(_result(f, x), _result(m, x))


def test_parameters_are_read_only_while_frozen():
    m = rnnc.LSTM(3, 8, seed=0).freeze()
    assert m.frozen
    with pytest.raises(ValueError, match="read-only"):
        m.weight_hh_l0[0, 0] = 1.0
    for _, p in m.named_parameters():
        assert not p.flags.writeable
    m.unfreeze()
    assert not m.frozen and m._packs is None
    m.weight_hh_l0[0, 0] = 1.0        # allowed again
    assert m.weight_hh_l0[0, 0] == 1.0


@pytest.mark.parametrize("how", ["load_state_dict", "setattr"])
def test_new_weights_drop_the_kept_panels(how):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 2, 6)).astype(np.float32)
    f = rnnc.GRU(6, 32, seed=0).freeze()
    f(x)
    other = rnnc.GRU(6, 32, seed=1)
    if how == "load_state_dict":
        f.load_state_dict(other.state_dict())
    else:
        f.weight_hh_l0 = other.weight_hh_l0
        f.weight_ih_l0 = other.weight_ih_l0
        f.bias_ih_l0 = other.bias_ih_l0
        f.bias_hh_l0 = other.bias_hh_l0
    assert f.frozen and not f.weight_hh_l0.flags.writeable
    assert_same_result(_result(f, x), _result(other, x))


def test_unfreeze_then_in_place_update_is_seen():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 5)).astype(np.float32)
    m = rnnc.LSTM(5, 24, seed=2).freeze()
    before = _result(m, x)
    m.unfreeze()
    m.weight_hh_l0 *= 0.5
    after = _result(m, x)
    assert not np.array_equal(before[0], after[0])
    fresh = rnnc.LSTM(5, 24, seed=2)
    fresh.load_state_dict(m.state_dict())
    assert_same_result(after, _result(fresh, x))


@pytest.mark.parametrize("opt", [lambda m: SGD(m, lr=0.1), lambda m: Adam(m)])
def test_optimizer_refuses_a_frozen_module(opt):
    m = rnnc.RNN(3, 4, seed=0)
    m.train()
    x = np.ones((5, 2, 3), dtype=np.float32)
    m.zero_grad()
    m(x)
    m.backward(np.ones((5, 2, 4), dtype=np.float32))
    m.freeze()
    before = m.state_dict()
    with pytest.raises(ValueError, match=r"'weight_ih_l0' is read-only.*unfreeze\(\)"):
        opt(m).step()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    m.unfreeze()
    opt(m).step()
    assert not np.array_equal(m.weight_ih_l0, before["weight_ih_l0"])


@pytest.mark.parametrize("clone", [copy.deepcopy, copy.copy,
                                   lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_of_a_frozen_module_are_frozen(clone):
    x = np.random.default_rng(2).standard_normal((6, 2, 4)).astype(np.float32)
    m = rnnc.LSTM(4, 16, seed=0).freeze()
    expected = _result(m, x)
    c = clone(m)
    assert c.frozen and c._packs is not m._packs
    with pytest.raises(ValueError, match="read-only"):
        c.weight_ih_l0[0, 0] = 0
    assert_same_result(_result(c, x), expected)


def test_containers_freeze_their_layers():
    x = np.random.default_rng(3).standard_normal((7, 2, 5)).astype(np.float32)
    seq = Sequential(Bidirectional(rnnc.GRU(5, 8, seed=0)), rnnc.LSTM(16, 6, seed=1),
                     rnnc.Linear(6, 2, seed=2))
    expected = seq(x)
    assert not seq.frozen
    seq.freeze()
    assert seq.frozen and seq[0].frozen and seq[0].backward_layer.frozen
    np.testing.assert_array_equal(seq(x), expected)
    np.testing.assert_array_equal(seq(x), expected)
    with pytest.raises(ValueError, match="read-only"):
        seq[2].weight[0, 0] = 0
    seq.unfreeze()
    assert not seq.frozen and not seq[0].forward_layer.frozen


def test_threads_share_a_frozen_module():
    rng = np.random.default_rng(4)
    m = rnnc.LSTM(12, 48, num_layers=2, seed=0)
    f = copy.deepcopy(m).freeze()
    xs = [rng.standard_normal((9, b, 12)).astype(np.float32) for b in (1, 3, 8, 20)]
    expected = [_result(m, x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                assert_same_result(_result(f, xs[i]), expected[i])
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_training_forward_on_a_frozen_module_is_unchanged():
    # Training calls pack afresh (packs are for inference), and backward works.
    x = np.random.default_rng(5).standard_normal((6, 3, 4)).astype(np.float64)
    m = rnnc.LSTM(4, 10, dtype=np.float64, seed=0)
    f = copy.deepcopy(m).freeze()
    m.train()
    f.train()
    assert_same_result(_result(f, x), _result(m, x))
    g = np.ones((6, 3, 10))
    for a, b in zip(f.backward(g)[2].values(), m.backward(g)[2].values()):
        np.testing.assert_array_equal(a, b)
