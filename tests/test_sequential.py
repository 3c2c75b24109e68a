"""rnnc.sequential.Sequential: forward, backward (finite differences), names, state_dict,
modes, errors, and use with the optimizers."""
import numpy as np
import pytest

import rnnc
from rnnc import losses, optim
from rnnc.sequential import Sequential


def mlp(dtype=np.float64):
    return Sequential(rnnc.Linear(3, 5, activation="tanh", dtype=dtype, seed=0),
                      rnnc.Linear(5, 4, activation="sigmoid", dtype=dtype, seed=1),
                      rnnc.Linear(4, 2, dtype=dtype, seed=2))


def param(layer, name):
    # Not getattr: Linear's ``bias`` attribute is the constructor flag, not the array.
    return dict(layer.named_parameters())[name]


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_forward_is_the_composition(rng):
    seq = mlp()
    x = rng.standard_normal((6, 2, 3))
    expected = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x), expected)
    assert len(seq) == 3 and list(seq) == [seq[0], seq[1], seq[2]]


def test_backward_matches_finite_differences(rng):
    seq = mlp().train()
    x = rng.standard_normal((4, 3, 3))
    r = rng.standard_normal((4, 3, 2))          # loss = sum(out * r): d loss / d out = r
    out = seq(x)
    dx, dh, grads = seq.backward(r)
    assert dh is None
    assert list(grads) == list(seq.state_dict())
    assert list(grads) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]

    def loss():
        return float(np.sum(seq(x) * r))

    seq.eval()
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for name, p in seq.named_parameters():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    assert out.shape == (4, 3, 2)


def test_grads_accumulate_and_zero_grad(rng):
    seq = mlp().train()
    x = rng.standard_normal((3, 2, 3))
    g = rng.standard_normal((3, 2, 2))
    seq(x)
    _, _, first = seq.backward(g)
    seq(x)
    seq.backward(g)
    acc = seq.grads
    assert list(acc) == list(first)
    for k in first:
        np.testing.assert_allclose(acc[k], 2 * first[k], rtol=1e-12)
    # The property is a view of the layers' live arrays.
    assert acc["1.weight"] is seq[1].grads["weight"]
    seq.zero_grad()
    assert list(seq.grads) == list(first) and all(not v.any() for v in seq.grads.values())


def test_named_parameters_are_live(rng):
    seq = mlp()
    names = [k for k, _ in seq.named_parameters()]
    assert names == list(seq.state_dict())
    params = dict(seq.named_parameters())
    assert params["2.bias"] is param(seq[2], "bias")
    params["2.bias"][:] = 7.0
    np.testing.assert_array_equal(seq[2].state_dict()["bias"], 7.0)
    # state_dict holds copies.
    sd = seq.state_dict()
    sd["0.weight"][:] = 0
    assert seq[0].weight.any()


def test_state_dict_round_trip(rng):
    a, b = mlp(), Sequential(*[rnnc.Linear(i, o, activation=act, seed=9)
                               for i, o, act in [(3, 5, "tanh"), (5, 4, "sigmoid"), (4, 2, None)]])
    x = rng.standard_normal((2, 3, 3))
    assert not np.allclose(a(x), b(x))
    assert b.load_state_dict(a.state_dict()) is b          # float64 -> float32 model
    np.testing.assert_allclose(b(x), a(x), rtol=1e-5, atol=1e-6)
    assert all(v.dtype == np.float32 for _, v in b.named_parameters())


def test_load_state_dict_reports_all_problems_and_changes_nothing():
    seq = mlp()
    before = seq.state_dict()
    bad = seq.state_dict()
    del bad["1.bias"]
    bad["2.weight"] = np.zeros((3, 3))
    bad["3.weight"] = np.zeros(2)
    bad["x.weight"] = np.zeros(2)
    bad["0.weight"] = np.zeros((5, 3)) + 1              # valid, must not be applied
    with pytest.raises(ValueError) as info:
        seq.load_state_dict(bad)
    msg = str(info.value)
    for part in ("'3.weight'", "'x.weight'", "layer 1 (Linear): missing key 'bias'",
                 "layer 2 (Linear): 'weight': expected shape (2, 4), got (3, 3)"):
        assert part in msg, msg
    for k, v in seq.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # Non-strict: unknown keys ignored, missing keys kept.
    seq.load_state_dict({"0.bias": np.ones(5), "9.foo": 1}, strict=False)
    np.testing.assert_array_equal(param(seq[0], "bias"), 1.0)
    with pytest.raises(TypeError, match="mapping"):
        seq.load_state_dict([("0.bias", np.ones(5))])


def test_train_eval_propagate():
    seq = mlp()
    assert not seq.training and not any(layer.training for layer in seq)
    assert seq.train() is seq
    assert seq.training and all(layer.training for layer in seq)
    assert seq.eval() is seq
    assert not seq.training and not any(layer.training for layer in seq)


def test_backward_errors(rng):
    seq = mlp()
    x = rng.standard_normal((3, 2, 3))
    g = np.ones((3, 2, 2))
    with pytest.raises(RuntimeError, match="training mode"):
        seq.backward(g)
    seq(x)                                    # inference forward keeps nothing
    with pytest.raises(RuntimeError, match="training mode"):
        seq.backward(g)
    seq.train()
    seq(x)
    with pytest.raises(ValueError, match="grad_output"):
        seq.backward(np.ones((3, 2, 3)))
    seq.backward(g)                           # the failed call consumed nothing
    with pytest.raises(RuntimeError, match="once per"):
        seq.backward(g)
    seq(x)
    with pytest.raises(ValueError, match="grad_h_n"):
        seq.backward(g, grad_h_n=np.zeros(1))
    seq.eval()
    with pytest.raises(RuntimeError):
        seq.backward(g)


def test_constructor_errors():
    with pytest.raises(TypeError, match="cell"):
        Sequential(rnnc.GRUCell(3, 4))
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(rnnc.Linear(3, 4), np.tanh)
    with pytest.raises(ValueError, match="merge_mode=None"):
        Sequential(rnnc.Bidirectional(rnnc.GRU(3, 4), merge_mode=None), rnnc.Linear(4, 2))


def test_getitem_slice_and_repr():
    seq = mlp()
    head = seq[1:]
    assert isinstance(head, Sequential) and len(head) == 2 and head[0] is seq[1]
    assert list(head.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    r = repr(seq)
    assert r.startswith("Sequential(\n  (0): Linear(3, 5") and r.endswith("\n)")
    assert repr(Sequential()) == "Sequential()"
    x = np.ones((2, 3))
    np.testing.assert_array_equal(Sequential()(x), x)


# -- recurrent layers --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_lengths_go_to_recurrent_layers(rng, mode):
    rnn = getattr(rnnc, mode)(3, 4, dtype=np.float64, seed=0)
    head = rnnc.Linear(4, 2, dtype=np.float64, seed=1)
    seq = Sequential(rnn, head)
    x = rng.standard_normal((5, 3, 3))
    lengths = [5, 2, 3]
    expected = head(rnn(x, lengths=lengths)[0])
    np.testing.assert_array_equal(seq(x, lengths=lengths), expected)
    assert not np.allclose(seq(x), expected)
    assert list(seq.state_dict())[0] == "0.weight_ih_l0"


def test_nested_sequential(rng):
    inner = Sequential(rnnc.GRU(3, 4, dtype=np.float64, seed=0),
                       rnnc.Linear(4, 4, activation="tanh", dtype=np.float64, seed=1))
    head = rnnc.Linear(4, 2, dtype=np.float64, seed=2)
    seq = Sequential(inner, head)
    x = rng.standard_normal((5, 2, 3))
    expected = head(inner(x, lengths=[5, 2]))
    seq.train()
    assert inner.training and inner[0].training
    out = seq(x, lengths=[5, 2])
    np.testing.assert_array_equal(out, expected)
    assert list(seq.state_dict())[:2] == ["0.0.weight_ih_l0", "0.0.weight_hh_l0"]
    _, _, grads = seq.backward(np.ones_like(out))
    assert list(grads) == list(seq.state_dict()) == list(seq.grads)


def test_bidirectional_in_sequential(rng):
    bi = rnnc.Bidirectional(rnnc.LSTM(3, 4, dtype=np.float64, seed=0))
    head = rnnc.Linear(8, 2, dtype=np.float64, seed=1)
    seq = Sequential(bi, head)
    x = rng.standard_normal((6, 2, 3))
    np.testing.assert_array_equal(seq(x, lengths=[6, 3]), head(bi(x, lengths=[6, 3])[0]))
    keys = list(seq.state_dict())
    assert keys[0] == "0.forward_layer.weight_ih_l0" and "0.backward_layer.bias_hh_l0" in keys
    assert keys[-2:] == ["1.weight", "1.bias"]
    other = Sequential(rnnc.Bidirectional(rnnc.LSTM(3, 4, dtype=np.float64, seed=5)),
                       rnnc.Linear(8, 2, dtype=np.float64, seed=6))
    other.load_state_dict(seq.state_dict())
    np.testing.assert_array_equal(other(x), seq(x))
    if hasattr(bi, "named_parameters"):
        assert [k for k, _ in seq.named_parameters()] == keys


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "Bidirectional-RNN"])
def test_recurrent_backward_matches_finite_differences(rng, mode):
    if mode.startswith("Bidirectional"):
        layer = rnnc.Bidirectional(rnnc.RNN(2, 3, dtype=np.float64, seed=0), merge_mode="sum")
    else:
        layer = getattr(rnnc, mode)(2, 3, dtype=np.float64, seed=0)
    if not callable(getattr(layer, "backward", None)):
        pytest.skip(f"{mode}.backward is not available yet")
    seq = Sequential(layer, rnnc.Linear(3, 2, activation="tanh", dtype=np.float64, seed=1))
    seq.train()
    x = rng.standard_normal((4, 2, 2))
    lengths = [4, 2]
    r = rng.standard_normal((4, 2, 2)) * losses.lengths_mask(lengths, 4)[..., None]
    seq(x, lengths=lengths)
    dx, _, grads = seq.backward(r)
    assert list(grads) == list(seq.state_dict())
    seq.eval()

    def loss():
        return float(np.sum(seq(x, lengths=lengths) * r))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-8)
    for name, p in seq.named_parameters():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, p), rtol=1e-5, atol=1e-8,
                                   err_msg=name)


# -- with the optimizers -----------------------------------------------------------------------
def test_optimizers_and_clipping_work_through_sequential(rng):
    seq = mlp().train()
    x = rng.standard_normal((8, 4, 3))
    y = np.tanh(x[..., :2])
    opt = optim.Adam(seq, lr=0.02)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss, g = losses.mse(seq(x), y)
        seq.backward(g)
        if first is None:
            first = loss
            layer_grad = seq[0].grads["weight"]
            before = layer_grad.copy()
            total = optim.clip_grad_norm(seq, 1e-3)
            assert total > 1e-3
            np.testing.assert_allclose(layer_grad, before * 1e-3 / (total + 1e-6))
        opt.step()
    assert loss < 0.5 * first
    assert {p.name for p in opt.state} == {k for k, _ in seq.named_parameters()}
    # SGD too, through the prefixed names, changing the layers' own arrays.
    w = seq[2].weight
    opt = optim.SGD(seq, lr=0.1, momentum=0.9)
    opt.zero_grad()
    seq(x)
    seq.backward(np.ones((8, 4, 2)))
    expected = w - 0.1 * seq.grads["2.weight"]
    opt.step()
    assert seq[2].weight is w
    np.testing.assert_allclose(w, expected, rtol=1e-12)
