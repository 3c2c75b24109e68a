"""rnnc.optim: SGD / Adam step for step against torch.optim, clip_grad_norm against
torch.nn.utils.clip_grad_norm_, training a Linear regression, hyper-parameter errors."""
import copy

import numpy as np
import pytest

import rnnc
from rnnc import losses, optim
from rnnc._module import Module

SHAPES = {"weight": (3, 4), "bias": (3,), "scale": (2, 2, 2)}


class Fake(Module):
    """Parameters only; gradients are set by the tests."""

    def __init__(self, dtype=np.float64, seed=0, shapes=SHAPES):
        super().__init__(dtype, seed)
        self._init_uniform(shapes, 1.0)


def grad_sequence(rng, steps, shapes=SHAPES):
    return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


def run_both(torch, rnnc_opt_factory, torch_opt_factory, grads_seq, dtype=np.float64):
    """Apply the same gradients with both optimizers; compare parameters after every step."""
    mod = Fake(dtype)
    live = dict(mod.named_parameters())
    tparams = {k: torch.tensor(v.copy()) for k, v in mod.named_parameters()}
    opt = rnnc_opt_factory(mod)
    topt = torch_opt_factory(list(tparams.values()))
    for grads in grads_seq:
        mod.grads = {k: g.astype(dtype) for k, g in grads.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k].astype(dtype))
        opt.step()
        topt.step()
        for k, t in tparams.items():
            assert dict(mod.named_parameters())[k] is live[k], "not updated in place"
            np.testing.assert_allclose(live[k], t.numpy(), rtol=1e-12, atol=1e-12, err_msg=k)
    return mod, opt


SGD_CONFIGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.05),
    dict(momentum=0.5, weight_decay=0.1),
    dict(momentum=0.8, weight_decay=0.01, nesterov=True),
    dict(momentum=0.9, dampening=0.3, weight_decay=0.02),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                    c.items()) or "plain")
def test_sgd_matches_torch(rng, cfg):
    torch = pytest.importorskip("torch")
    run_both(torch, lambda m: optim.SGD(m, lr=0.1, **cfg),
             lambda ps: torch.optim.SGD(ps, lr=0.1, **cfg), grad_sequence(rng, 6))


ADAM_CONFIGS = [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99)),
    dict(lr=0.02, weight_decay=0.1),
    dict(lr=0.01, eps=1e-3, amsgrad=True),
    dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, betas=(0.0, 0.5), weight_decay=0.01, amsgrad=True),
    dict(lr=0.01, betas=(0.6, 0.9)),     # 1 - beta1 >= 0.5: torch's other lerp formula
]


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                     c.items()) or "default")
def test_adam_matches_torch(rng, cfg):
    torch = pytest.importorskip("torch")
    run_both(torch, lambda m: optim.Adam(m, **cfg),
             lambda ps: torch.optim.Adam(ps, **cfg), grad_sequence(rng, 8))


def test_float32_parameters_stay_float32(rng):
    for make in (lambda m: optim.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01),
                 lambda m: optim.Adam(m, lr=0.01, weight_decay=0.01)):
        mod = Fake(np.float32)
        before = {k: v.copy() for k, v in mod.named_parameters()}
        opt = make(mod)
        for grads in grad_sequence(rng, 3):
            mod.grads = {k: g.astype(np.float32) for k, g in grads.items()}
            opt.step()
        for k, v in mod.named_parameters():
            assert v.dtype == np.float32 and not np.array_equal(v, before[k])
        for st in opt.state.values():
            assert all(a.dtype == np.float32 for a in st.values() if isinstance(a, np.ndarray))


def test_missing_grads_are_skipped(rng):
    mod = Fake()
    before = {k: v.copy() for k, v in mod.named_parameters()}
    opt = optim.Adam(mod, lr=0.1)
    mod.grads = {"bias": np.ones(3)}
    opt.step()
    np.testing.assert_array_equal(mod.weight, before["weight"])
    np.testing.assert_array_equal(mod.scale, before["scale"])
    assert not np.array_equal(mod.bias, before["bias"])
    assert [p.name for p in opt.state] == ["bias"]


def test_zero_grad_and_grad_shape_error():
    mod = Fake()
    opt = optim.SGD(mod, lr=0.1)
    mod.grads = {"weight": np.ones((3, 4))}
    opt.zero_grad()
    assert set(mod.grads) == set(SHAPES) and all(not g.any() for g in mod.grads.values())
    mod.grads = {"weight": np.ones((4, 3))}
    with pytest.raises(ValueError, match="'weight'.*shape"):
        opt.step()


def test_parameters_replaced_by_load_state_dict_are_still_updated():
    mod = Fake()
    opt = optim.SGD(mod, lr=0.5, momentum=0.9)
    mod.grads = {k: np.ones(s) for k, s in SHAPES.items()}
    opt.step()
    mod.load_state_dict({k: np.zeros(s) for k, s in SHAPES.items()})   # new arrays
    opt.step()
    np.testing.assert_allclose(mod.bias, -0.5 * 1.9)     # buf = 0.9 * 1 + 1


def test_optimizer_state_dict_round_trip(rng):
    grads = grad_sequence(rng, 5)
    mods, opts = [], []
    for _ in range(2):
        mods.append(Fake())
        opts.append(optim.Adam(mods[-1], lr=0.01, amsgrad=True))
    for g in grads[:2]:
        for m, o in zip(mods, opts):
            m.grads = dict(g)
            o.step()
    sd = opts[0].state_dict()
    fresh_mod = Fake()
    fresh_mod.load_state_dict(mods[0].state_dict())
    fresh = optim.Adam(fresh_mod, lr=0.5)
    fresh.load_state_dict(sd)
    assert fresh.lr == 0.01
    for g in grads[2:]:
        for m, o in ((mods[0], opts[0]), (fresh_mod, fresh)):
            m.grads = dict(g)
            o.step()
    for k, v in mods[0].named_parameters():
        np.testing.assert_array_equal(v, getattr(fresh_mod, k))
    with pytest.raises(ValueError, match="unknown parameter"):
        fresh.load_state_dict({"state": {7: {"step": 1}}, "param_groups": sd["param_groups"]})
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        fresh.load_state_dict(bad)
    # rnnc 0.1's layout (one group, state by parameter name) still loads.
    with pytest.raises(ValueError, match="unknown parameter"):
        fresh.load_state_dict({"hyper": {}, "state": {"nope": {"step": 1}}})
    old = {"hyper": {"lr": 0.02}, "state": {"bias": {"step": 3, "exp_avg": np.ones(3),
                                                     "exp_avg_sq": np.ones(3),
                                                     "max_exp_avg_sq": np.ones(3)}}}
    fresh.load_state_dict(old)
    assert fresh.lr == 0.02 and [p.name for p in fresh.state] == ["bias"]


# -- clip_grad_norm ----------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm, norm_type", [(1.0, 2.0), (100.0, 2.0), (0.5, 1.0),
                                                 (0.3, float("inf")), (2.0, 3.0)])
def test_clip_grad_norm_matches_torch(rng, max_norm, norm_type):
    torch = pytest.importorskip("torch")
    mod = Fake()
    grads = grad_sequence(rng, 1)[0]
    mod.grads = {k: g.copy() for k, g in grads.items()}
    arrays = dict(mod.grads)
    tparams = []
    for k in SHAPES:
        t = torch.zeros(SHAPES[k], dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(grads[k])
        tparams.append(t)
    total = optim.clip_grad_norm(mod, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, ttotal.item(), rtol=1e-12)
    for k, t in zip(SHAPES, tparams):
        assert mod.grads[k] is arrays[k], "gradients must be scaled in place"
        np.testing.assert_allclose(mod.grads[k], t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_edge_cases():
    mod = Fake()
    mod.grads = {}
    assert optim.clip_grad_norm(mod, 1.0) == 0.0
    mod.grads = {"bias": np.array([3.0, 4.0, 0.0])}
    assert optim.clip_grad_norm(mod, 10.0) == 5.0
    np.testing.assert_array_equal(mod.grads["bias"], [3.0, 4.0, 0.0])   # not scaled up
    assert optim.clip_grad_norm(mod, 1.0) == 5.0
    np.testing.assert_allclose(mod.grads["bias"], [0.6, 0.8, 0.0], rtol=1e-6)
    mod.grads = {"bias": np.array([np.nan, 1.0, 0.0])}
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        optim.clip_grad_norm(mod, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(mod, -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm(mod, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="module"):
        optim.clip_grad_norm(object(), 1.0)


# -- training ----------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m, lr=0.1),
    "sgd-momentum": lambda m: optim.SGD(m, lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda m: optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True,
                                           weight_decay=1e-4),
    "adam": lambda m: optim.Adam(m, lr=0.05),
    "adamw-amsgrad": lambda m: optim.Adam(m, lr=0.05, weight_decay=1e-3, amsgrad=True,
                                          decoupled_weight_decay=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_regression_loss_goes_down(rng, name, dtype):
    x = rng.standard_normal((10, 8, 4)).astype(dtype)          # (T, B, F)
    w_true = rng.standard_normal((4, 2))
    y = (x @ w_true + 0.5 + 0.01 * rng.standard_normal((10, 8, 2))).astype(dtype)
    lin = rnnc.Linear(4, 2, dtype=dtype, seed=0).train()
    opt = OPTIMIZERS[name](lin)
    history = []
    for _ in range(200):    # adamw-amsgrad float64 (|w_true| up to 3.8) needs more than 150
        opt.zero_grad()
        loss, g = losses.mse(lin(x), y)
        lin.backward(g)
        optim.clip_grad_norm(lin, 5.0)
        opt.step()
        history.append(loss)
    assert history[-1] < 0.01 * history[0]
    assert lin.weight.dtype == np.dtype(dtype)
    np.testing.assert_allclose(lin.weight, w_true.T, atol=0.05)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (dict(lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (dict(lr=0.1, dampening=-1), ValueError, "dampening"),
    (dict(lr=0.1, nesterov=True), ValueError, "nesterov"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
])
def test_sgd_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        optim.SGD(Fake(), **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(lr=True), TypeError, "lr"),
])
def test_adam_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        optim.Adam(Fake(), **kwargs)


def test_optimizer_needs_a_module():
    with pytest.raises(TypeError, match="module"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="module"):
        optim.Adam(object())


def test_clip_grad_norm_inf_sees_a_nan_in_any_gradient():
    a, b = Fake(), Fake()
    a.grads = {"weight": np.ones((3, 4)), "bias": np.full(3, 0.1)}
    b.grads = {"weight": np.full((3, 4), 4.0), "bias": np.array([np.nan, 0.0, 0.0])}
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        optim.clip_grad_norm([a, b], 1.0, norm_type=float("inf"), error_if_nonfinite=True)
    assert np.isnan(optim.clip_grad_norm([a, b], 1.0, norm_type=float("inf")))
