"""Models from parts: ``backward(None, grad_h_n)`` (no gradient from the outputs) on every
recurrent module, what Sequential passes to its layers (lengths, the final state for
Pool('state'), the layout) and routes back, its construction checks and located errors, and a
classifier trained against PyTorch."""
import copy
import doctest

import numpy as np
import pytest

import rnnc
import rnnc.reference
from rnnc import Pool, Sequential, losses, optim

from conftest import DTYPES, MODES, assert_close

LENGTHS = [5, 2, 4, 1]


def random_state_grad(rng, state, dtype):
    if isinstance(state, tuple):
        return tuple(random_state_grad(rng, s, dtype) for s in state)
    return rng.standard_normal(state.shape).astype(dtype)


def zeros_like_output(out):
    if isinstance(out, tuple):
        return tuple(np.zeros_like(o) for o in out)
    return np.zeros_like(out)


def assert_same_tree(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b)


# -- backward(None, grad_h_n) ----------------------------------------------------------------------
def layer_cases(dtype):
    return {
        "GRU": lambda **kw: rnnc.GRU(3, 4, seed=0, dtype=dtype, **kw),
        "LSTM-bi-2": lambda **kw: rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1,
                                            dtype=dtype, **kw),
        "RNN-proj-free": lambda **kw: rnnc.RNN(3, 4, num_layers=2, seed=2, dtype=dtype, **kw),
        "LSTM-proj": lambda **kw: rnnc.LSTM(3, 5, proj_size=2, seed=3, dtype=dtype, **kw),
        "ref-LSTM": lambda **kw: rnnc.reference.LSTM(3, 4, bidirectional=True, seed=4,
                                                     dtype=dtype, **kw),
        "Bidirectional-mul": lambda **kw: rnnc.Bidirectional(
            rnnc.GRU(3, 4, seed=5, dtype=dtype, **kw), merge_mode="mul"),
        "Bidirectional-None": lambda **kw: rnnc.Bidirectional(
            rnnc.LSTM(3, 4, seed=6, dtype=dtype, **kw), merge_mode=None),
        "ref-Bidirectional": lambda **kw: rnnc.reference.Bidirectional(
            rnnc.reference.RNN(3, 4, seed=7, dtype=dtype, **kw), merge_mode="concat"),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["ragged", "batch-first", "unbatched"])
@pytest.mark.parametrize("name", list(layer_cases(np.float64)))
def test_backward_none_is_backward_with_zero_output_gradient(rng, name, shape, dtype):
    make = layer_cases(dtype)[name]
    kw = {"batch_first": True} if shape == "batch-first" else {}
    a, b = make(**kw).train(), make(**kw).train()
    if shape == "unbatched":
        x, lengths = rng.standard_normal((5, 3)).astype(dtype), None
    else:
        x = rng.standard_normal((4, 5, 3) if kw else (5, 4, 3)).astype(dtype)
        lengths = LENGTHS
    out, state = a(x, lengths=lengths)
    b(x, lengths=lengths)
    gh = random_state_grad(rng, state, dtype)
    with_none = a.backward(None, gh)
    with_zeros = b.backward(zeros_like_output(out), gh)
    assert_same_tree(with_none, with_zeros)
    assert np.any(with_none[0] != 0)        # the state's gradient reaches the input


def test_backward_none_allocates_no_output_gradient(rng, monkeypatch):
    # The compiled backend receives None and starts from packed zeros of its own.
    seen = []
    real = rnnc.LSTM._run_stack_backward

    def spy(cache, grad_out, *rest):
        seen.append(grad_out)
        return real(cache, grad_out, *rest)

    monkeypatch.setattr(rnnc.LSTM, "_run_stack_backward", staticmethod(spy))
    lstm = rnnc.LSTM(3, 4, batch_first=True, seed=0).train()
    _, (h_n, c_n) = lstm(rng.standard_normal((4, 5, 3)), lengths=LENGTHS)
    lstm.backward(None, (np.ones_like(h_n), None))
    assert seen == [None]


def test_backward_none_without_state_gradient_gives_zeros(rng):
    gru = rnnc.GRU(3, 4, dtype=np.float64, seed=0).train()
    gru(rng.standard_normal((5, 2, 3)))
    dx, dh0, grads = gru.backward(None)
    assert dx.shape == (5, 2, 3) and not dx.any() and not dh0.any()
    assert not any(g.any() for g in grads.values())


# -- what Sequential passes and routes ------------------------------------------------------------
class Recorder:
    """A duck-typed layer: the identity, recording what it was called with."""

    def __init__(self, takes_lengths):
        if takes_lengths:
            self.takes_lengths = True
        self.calls = []
        self.training = False

    def __call__(self, x, **kw):
        self.calls.append(kw)
        return x

    def state_dict(self):
        return {}

    def load_state_dict(self, sd, strict=True):
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def backward(self, g, grad_h_n=None):
        return g, None, {}


def test_lengths_go_to_layers_that_declare_takes_lengths(rng):
    yes, no = Recorder(True), Recorder(False)
    seq = Sequential(yes, rnnc.GRU(3, 4, seed=0), no, Pool("mean"))
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    seq(x, lengths=LENGTHS)
    assert len(yes.calls) == 1 and yes.calls[0]["lengths"] == LENGTHS
    assert no.calls == [{}]


@pytest.mark.parametrize("mode", MODES)
def test_state_pool_gradient_goes_to_grad_h_n_only(rng, mode):
    # Sequential(layer, Pool('state'), Linear).backward == layer.backward(None, grad_h_n)
    # with grad_h_n zero except the top layer, as written by hand.
    layer = getattr(rnnc, mode)(3, 4, num_layers=2, bidirectional=True, dtype=np.float64,
                                seed=0)
    head = rnnc.Linear(8, 2, dtype=np.float64, seed=1)
    seq = Sequential(copy.deepcopy(layer), Pool("state"), copy.deepcopy(head)).train()
    x = rng.standard_normal((5, 4, 3))
    g = rng.standard_normal((4, 2))
    seq(x, lengths=LENGTHS)
    dx, _, grads = seq.backward(g)

    layer.train()
    head.train()
    _, state = layer(x, lengths=LENGTHS)
    h_n = state[0] if mode == "LSTM" else state
    head(np.concatenate([h_n[-2], h_n[-1]], axis=1))
    dfeat, _, head_grads = head.backward(g)
    dh = np.zeros_like(h_n)
    dh[-2], dh[-1] = dfeat[:, :4], dfeat[:, 4:]
    dx_hand, _, layer_grads = layer.backward(np.zeros((5, 4, 8)),
                                             (dh, None) if mode == "LSTM" else dh)
    np.testing.assert_allclose(dx, dx_hand, rtol=1e-13, atol=1e-15)
    for k, v in layer_grads.items():
        np.testing.assert_allclose(grads[f"0.{k}"], v, rtol=1e-13, atol=1e-15, err_msg=k)
    for k, v in head_grads.items():
        np.testing.assert_allclose(grads[f"2.{k}"], v, rtol=1e-13, atol=1e-15, err_msg=k)


def test_pickle_after_a_training_forward_keeps_no_record_of_it(rng):
    import pickle
    seq = Sequential(rnnc.LSTM(3, 4, seed=0), Pool("state"), rnnc.Linear(4, 2)).train()
    seq(rng.standard_normal((5, 4, 3)), lengths=LENGTHS)
    clone = pickle.loads(pickle.dumps(seq))
    assert clone._trace is None and clone._out_shape is None and clone[1]._cache is None
    with pytest.raises(RuntimeError, match="training mode first"):
        clone.backward(np.ones((4, 2)))
    seq.backward(np.ones((4, 2)))           # the original is untouched


def test_bidirectional_wrapper_with_merge_none_can_feed_a_state_pool(rng):
    bi = rnnc.Bidirectional(rnnc.GRU(3, 4, dtype=np.float64, seed=0), merge_mode=None)
    seq = Sequential(bi, Pool("state"), rnnc.Linear(8, 2, dtype=np.float64, seed=1)).train()
    x = rng.standard_normal((5, 4, 3))
    out = seq(x, lengths=LENGTHS)
    _, (h_f, h_b) = copy.deepcopy(bi).eval()(x, lengths=LENGTHS)
    np.testing.assert_allclose(out, seq[2].eval()(np.concatenate([h_f[-1], h_b[-1]], 1)),
                               rtol=1e-14)
    seq.train()
    seq(x, lengths=LENGTHS)
    dx, _, _ = seq.backward(np.ones((4, 2)))
    assert dx.shape == x.shape and dx.any()


def test_backward_none_through_sequential_is_zero_output_gradient(rng):
    def build():
        return Sequential(rnnc.LSTM(3, 4, dtype=np.float64, seed=0),
                          rnnc.Linear(4, 2, dtype=np.float64, seed=1)).train()

    a, b = build(), build()
    x = rng.standard_normal((5, 4, 3))
    out = a(x, lengths=LENGTHS)
    b(x, lengths=LENGTHS)
    assert_same_tree(a.backward(None), b.backward(np.zeros_like(out)))
    # Layers that cannot take None get zeros of their output; a Pool passes None on.
    pooled = Sequential(Pool("mean"), rnnc.Linear(3, 2)).train()
    pooled(x.astype(np.float32))
    dx, _, grads = pooled.backward(None)
    assert dx.shape == x.shape and dx.dtype == np.float32 and not dx.any()
    assert not any(g.any() for g in grads.values())
    alone = Sequential(Pool("mean")).train()
    alone(x)
    assert alone.backward(None) == (None, None, {})   # no gradient reaches the input


def test_nested_sequential_pool_takes_the_outer_layout(rng):
    lstm = rnnc.LSTM(3, 4, batch_first=True, dtype=np.float64, seed=0)
    head = Sequential(Pool("mean"), rnnc.Linear(4, 2, dtype=np.float64, seed=1))
    seq = Sequential(lstm, head)
    assert seq.batch_first is True and head.batch_first is None
    x = rng.standard_normal((4, 5, 3))                # (B, T, I)
    out, _ = lstm(x, lengths=LENGTHS)
    mean = np.stack([out[b, :n].mean(axis=0) for b, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(seq(x, lengths=LENGTHS), head[1](mean), rtol=1e-13)


# -- construction checks and errors that name the layer -------------------------------------------
def test_size_mismatch_is_refused_at_construction_naming_both_layers():
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) takes 16 input features, but the "
                                         r"output of layer 0 \(LSTM\) has 8"):
        Sequential(rnnc.LSTM(3, 8), rnnc.Linear(16, 2))
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\) takes 8 .* layer 0 \(GRU\) has 16"):
        Sequential(rnnc.GRU(3, 8, bidirectional=True), Pool("max"), rnnc.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer 1 \(GRU\) takes 5 .* layer 0 \(Bidirectional\)"):
        Sequential(rnnc.Bidirectional(rnnc.LSTM(3, 4)), rnnc.GRU(5, 2))
    # The state of a Bidirectional is both directions, whatever its merge mode.
    Sequential(rnnc.Bidirectional(rnnc.LSTM(3, 4), merge_mode="sum"), Pool("state"),
               rnnc.Linear(8, 2))
    Sequential(rnnc.LSTM(3, 6, proj_size=2, bidirectional=True), Pool("state"),
               rnnc.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) takes 3 .* layer 0 \(Sequential\)"):
        Sequential(Sequential(rnnc.GRU(3, 4)), rnnc.Linear(3, 2))


def test_size_mismatch_of_unknown_layers_is_named_at_the_call(rng):
    seq = Sequential(rnnc.GRU(3, 4), Recorder(False), rnnc.Linear(5, 2))   # not checkable
    with pytest.raises(ValueError, match=r"^layer 2 \(Linear\): input must have 5 features"):
        seq(rng.standard_normal((5, 4, 3)))
    with pytest.raises(ValueError, match=r"^layer 0 \(GRU\): lengths must lie in"):
        seq(rng.standard_normal((5, 4, 3)), lengths=[9, 1, 1, 1])
    inner = Sequential(Sequential(rnnc.GRU(3, 4), Recorder(False), rnnc.Linear(5, 2)))
    with pytest.raises(ValueError, match=r"^layer 0 \(Sequential\): layer 2 \(Linear\)"):
        inner(rng.standard_normal((5, 4, 3)))


def test_backward_errors_name_the_layer(rng):
    seq = Sequential(rnnc.GRU(3, 4, seed=0), Recorder(False), rnnc.Linear(4, 2)).train()
    seq[1].backward = lambda g, grad_h_n=None: (g[..., :3], None, {})   # a wrong gradient
    seq(rng.standard_normal((5, 4, 3)))
    with pytest.raises(ValueError, match=r"^layer 0 \(GRU\): grad_output must have shape"):
        seq.backward(np.ones((5, 4, 2)))


def test_layout_conflicts_and_time_after_pool_are_refused():
    with pytest.raises(ValueError, match=r"layer 1 \(GRU\) has batch_first=False, but layer 0 "
                                         r"\(LSTM\) has batch_first=True"):
        Sequential(rnnc.LSTM(3, 4, batch_first=True), rnnc.GRU(4, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Pool\) has batch_first=False"):
        Sequential(rnnc.LSTM(3, 4, batch_first=True), Pool("mean", batch_first=False))
    with pytest.raises(ValueError, match=r"layer 2 \(GRU\) reads a time axis, but the output "
                                         r"of layer 1 \(Pool\) has none"):
        Sequential(rnnc.LSTM(3, 4), Pool("mean"), rnnc.GRU(4, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Pool\): Pool\('state'\) reads the final "
                                         r"state .* layer 0 is a Linear"):
        Sequential(rnnc.Linear(3, 4), Pool("state"))
    with pytest.raises(ValueError, match="it is the first layer"):
        Sequential(Pool("state"), rnnc.Linear(3, 4))
    with pytest.raises(ValueError, match="merge_mode=None"):
        Sequential(rnnc.Bidirectional(rnnc.GRU(3, 4), merge_mode=None), Pool("mean"))


def test_zero_lengths_reach_the_pool_error_through_sequential(rng):
    seq = Sequential(rnnc.GRU(3, 4), Pool("last"))
    with pytest.raises(ValueError, match=r"^layer 1 \(Pool\): .*lengths\[1\] is 0"):
        seq(rng.standard_normal((5, 2, 3)), lengths=[5, 0])
    # 'state' is defined for an empty sequence: the initial state, as the layer returns it.
    out = Sequential(rnnc.GRU(3, 4), Pool("state"))(rng.standard_normal((5, 2, 3)),
                                                   lengths=[5, 0])
    assert not out[1].any() and out[0].any()


# -- trained against PyTorch -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["last", "mean", "max", "state"])
def test_classifier_trains_like_torch(mode):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    T, B, I, H, C = 6, 5, 3, 4, 3
    lengths = [6, 3, 5, 1, 4]
    x = rng.standard_normal((B, T, I))                       # batch-first
    labels = rng.integers(0, C, size=B)

    tl = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    th = torch.nn.Linear(2 * H, C).double()
    model = Sequential(rnnc.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True,
                                 dtype=np.float64),
                       Pool(mode), rnnc.Linear(2 * H, C, dtype=np.float64))
    model[0].load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()})
    model[2].load_state_dict({k: v.detach().numpy() for k, v in th.state_dict().items()})

    def torch_logits():
        packed = pack_padded_sequence(torch.tensor(x), torch.tensor(lengths), batch_first=True,
                                      enforce_sorted=False)
        out, (h_n, _) = tl(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        n = torch.tensor(lengths)
        valid = (torch.arange(T)[None, :] < n[:, None])[..., None]
        if mode == "state":
            feat = torch.cat([h_n[-2], h_n[-1]], 1)
        elif mode == "last":
            feat = out[torch.arange(B), n - 1]
        elif mode == "mean":
            feat = (out * valid).sum(1) / n[:, None].double()
        else:
            feat = torch.amax(out.masked_fill(~valid, float("-inf")), dim=1)
        return th(feat)

    t_opt = torch.optim.SGD(list(tl.parameters()) + list(th.parameters()), lr=0.5)
    opt = optim.SGD(model, lr=0.5)
    model.train()
    for _ in range(4):
        t_opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(torch_logits(), torch.tensor(labels))
        t_loss.backward()
        t_opt.step()
        opt.zero_grad()
        loss, g = losses.softmax_cross_entropy(model(x, lengths=lengths), labels)
        model.backward(g)
        opt.step()
        assert loss == pytest.approx(t_loss.item(), rel=1e-10)
    expected = {f"0.{k}": v for k, v in tl.state_dict().items()}
    expected.update({f"2.{k}": v for k, v in th.state_dict().items()})
    got = model.state_dict()
    assert list(got) == list(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_model_matches_float64_model(rng, dtype):
    # The same classifier in float32 gives float64's logits to float32 rounding.
    def build(dt):
        return Sequential(rnnc.GRU(3, 4, bidirectional=True, dtype=dt, seed=0), Pool("max"),
                          rnnc.Linear(8, 2, dtype=dt, seed=1))

    x = rng.standard_normal((5, 4, 3))
    assert_close(build(dtype)(x.astype(dtype), lengths=LENGTHS),
                 build(np.float64)(x, lengths=LENGTHS), dtype)


@pytest.mark.parametrize("module", ["rnnc.pooling", "rnnc.sequential", "rnnc.data"])
def test_docstring_examples_run(module):
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# -- Review findings (2026-12-08) -------------------------------------------------------------
def test_pool_state_backward_with_an_empty_batch():
    p = rnnc.Pool("state").train()
    out = p(state=np.zeros((2, 0, 4)))
    assert out.shape == (0, 8)
    _, dstate, _ = p.backward(np.zeros((0, 8)))
    assert dstate.shape == (2, 0, 4)


def test_bidirectional_mul_drops_its_outputs_after_backward_and_eval():
    b = rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0), merge_mode="mul").train()
    out, _ = b(np.ones((5, 2, 3), np.float32))
    b.backward(np.ones_like(out))
    assert b._outputs is None
    b(np.ones((5, 2, 3), np.float32))
    b.eval()
    assert b._outputs is None


def test_bidirectional_mul_backward_refused_then_accepted():
    """A rejected backward (bad grad_h_n) changes nothing: the next one still runs."""
    b = rnnc.Bidirectional(rnnc.RNN(1, 1, dtype=np.float64, seed=0), merge_mode="mul").train()
    out, _ = b(np.ones((2, 3, 1)))
    with pytest.raises(TypeError, match="grad_h_n"):
        b.backward(np.ones_like(out), np.ones(3))
    dx, _, _ = b.backward(np.ones_like(out))
    assert dx.shape == (2, 3, 1) and b._outputs is None


def test_a_layer_cannot_appear_twice_in_a_sequential():
    lin = rnnc.Linear(3, 3, seed=0)
    with pytest.raises(ValueError, match="layer 1 is the same object as layer 0"):
        rnnc.Sequential(lin, lin)
