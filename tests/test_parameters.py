"""Parameters as in PyTorch: parameters() / named_parameters() on every module, optimizers over
several modules, bare arrays, (name, array) pairs and parameter groups, and clip_grad_norm's one
global norm -- against torch.optim and torch.nn.utils.clip_grad_norm_ where torch is installed."""
import copy
import pickle

import numpy as np
import pytest

import rnnc
from rnnc import optim


def two_modules(dtype=np.float64):
    return rnnc.GRU(3, 5, num_layers=2, dtype=dtype, seed=0), rnnc.Linear(5, 2, dtype=dtype,
                                                                            seed=1)


def set_random_grads(rng, modules):
    for m in modules:
        m.grads = {k: rng.standard_normal(v.shape) for k, v in m.named_parameters()}


# -- parameters() ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2),
    lambda: rnnc.GRUCell(3, 4),
    lambda: rnnc.Linear(3, 4),
    lambda: rnnc.Linear(3, 4, bias=False),
    lambda: rnnc.Bidirectional(rnnc.RNN(3, 4)),
    lambda: rnnc.Sequential(rnnc.GRU(3, 4), rnnc.Sequential(rnnc.Linear(4, 2))),
], ids=["LSTM", "GRUCell", "Linear", "Linear-nobias", "Bidirectional", "Sequential"])
def test_parameters_are_the_live_arrays_in_state_dict_order(make):
    m = make()
    named = m.named_parameters()
    assert [k for k, _ in named] == list(m.state_dict())
    params = m.parameters()
    assert len(params) == len(named) and all(p is v for p, (_, v) in zip(params, named))
    assert m.num_parameters() == sum(v.size for v in m.state_dict().values())
    params[0][...] = 7.0                                   # live: the module sees it
    assert (next(iter(m.state_dict().values())) == 7.0).all()


def test_num_parameters_matches_torch():
    torch = pytest.importorskip("torch")
    m = rnnc.LSTM(7, 12, num_layers=3, bidirectional=True, proj_size=5)
    t = torch.nn.LSTM(7, 12, num_layers=3, bidirectional=True, proj_size=5)
    assert m.num_parameters() == sum(p.numel() for p in t.parameters())


# -- what an optimizer takes -------------------------------------------------------------------
def test_every_form_of_params_updates_the_same_parameters(rng):
    """One module, a list of modules, parameters(), named_parameters() and groups give the
    same update (SGD with momentum, two steps)."""
    seeds = rng.integers(1 << 30, size=2)
    results = []
    forms = [lambda g, h: [g, h],
             lambda g, h: g.parameters() + h.parameters(),
             lambda g, h: g.named_parameters() + h.named_parameters(),
             lambda g, h: [{"params": g}, {"params": h.parameters()}],
             lambda g, h: rnnc.Sequential(g, h)]
    for form in forms:
        g, h = two_modules()
        opt = optim.SGD(form(g, h), lr=0.1, momentum=0.9)
        for s in seeds:
            set_random_grads(np.random.default_rng(s), [g, h])
            opt.step()
        results.append({**g.state_dict(), **{f"head.{k}": v for k, v in h.state_dict().items()}})
    for other in results[1:]:
        for k, v in results[0].items():
            np.testing.assert_array_equal(other[k], v, err_msg=k)


def test_a_filtered_list_updates_only_those_parameters(rng):
    g, h = two_modules()
    before = {**g.state_dict(), **{f"h.{k}": v for k, v in h.state_dict().items()}}
    matrices = [p for p in g.parameters() + h.parameters() if p.ndim == 2]
    opt = optim.Adam(matrices, lr=0.1)
    set_random_grads(rng, [g, h])
    opt.step()
    after = {**g.state_dict(), **{f"h.{k}": v for k, v in h.state_dict().items()}}
    for k in before:
        changed = not np.array_equal(before[k], after[k])
        assert changed == (after[k].ndim == 2), k
    opt.zero_grad()                  # only the optimizer's parameters
    assert not g.grads["weight_hh_l1"].any() and g.grads["bias_hh_l1"].any()
    assert [p.name for p in opt.param_groups[0]["params"]][:2] == ["weight_ih_l0",
                                                                  "weight_hh_l0"]


def test_names_in_the_optimizer():
    g, h = two_modules()
    assert [p.name for p in optim.SGD(g).param_groups[0]["params"]][:2] == \
        ["weight_ih_l0", "weight_hh_l0"]
    names = [p.name for p in optim.SGD([g, h]).param_groups[0]["params"]]
    assert names[0] == "0.weight_ih_l0" and names[-1] == "1.bias"
    names = [p.name for p in optim.SGD([("w", h.weight)]).param_groups[0]["params"]]
    assert names == ["w"]
    assert "SGD(10 parameters" in repr(optim.SGD([g, h]))


def test_shared_parameters_are_updated_once(rng):
    g, _ = two_modules()
    ref, _ = two_modules()
    opt = optim.SGD([g, g, g.weight_hh_l0], lr=0.5)
    assert len(opt.param_groups[0]["params"]) == len(g.parameters())
    set_random_grads(rng, [g])
    ref.grads = copy.deepcopy(g.grads)
    opt.step()
    optim.SGD(ref, lr=0.5).step()
    np.testing.assert_array_equal(g.weight_hh_l0, ref.weight_hh_l0)


def test_parameter_groups_have_their_own_options_and_lr_sets_all():
    g, h = two_modules()
    opt = optim.Adam([{"params": g, "lr": 0.01}, {"params": h, "weight_decay": 0.1}],
                     lr=0.2, betas=(0.8, 0.9))
    assert [grp["lr"] for grp in opt.param_groups] == [0.01, 0.2]
    assert [grp["weight_decay"] for grp in opt.param_groups] == [0.0, 0.1]
    assert all(grp["betas"] == (0.8, 0.9) for grp in opt.param_groups)
    with pytest.raises(AttributeError, match="lr differs"):
        opt.lr
    assert opt.betas == (0.8, 0.9)
    opt.lr = 0.05
    assert [grp["lr"] for grp in opt.param_groups] == [0.05, 0.05] and opt.lr == 0.05
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 0.05                                  # a rejected value changes nothing
    opt.param_groups[1]["lr"] = 0.5                        # as in PyTorch (schedulers)
    assert opt.param_groups[1]["lr"] == 0.5


def test_add_param_group():
    g, h = two_modules()
    opt = optim.SGD(g, lr=0.1, momentum=0.9)
    opt.add_param_group({"params": h.parameters(), "lr": 0.01})
    assert [grp["lr"] for grp in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.9
    with pytest.raises(ValueError, match="already in parameter group 0"):
        opt.add_param_group({"params": [g.weight_ih_l0]})


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_parameter_groups_over_several_modules_match_torch(rng, kind):
    """Groups with their own lr and weight_decay over a GRU and a Linear, step for step
    against torch.optim with the same groups: float64, within 1e-12."""
    torch = pytest.importorskip("torch")
    g, h = two_modules()
    tg = [torch.tensor(v.copy()) for v in g.parameters()]
    th = [torch.tensor(v.copy()) for v in h.parameters()]
    if kind == "SGD":
        groups = [dict(lr=0.05, momentum=0.9, weight_decay=0.01), dict(weight_decay=0.1)]
        defaults = dict(lr=0.1, momentum=0.5, nesterov=False)
        make, tmake = optim.SGD, torch.optim.SGD
    else:
        groups = [dict(lr=0.01, weight_decay=0.05), dict(betas=(0.5, 0.9), amsgrad=True)]
        defaults = dict(lr=0.02)
        make, tmake = optim.Adam, torch.optim.Adam
    opt = make([{"params": g, **groups[0]}, {"params": h.parameters(), **groups[1]}],
               **defaults)
    topt = tmake([{"params": tg, **groups[0]}, {"params": th, **groups[1]}], **defaults)
    for _ in range(5):
        set_random_grads(rng, [g, h])
        for t, (k, _) in zip(tg, g.named_parameters()):
            t.grad = torch.tensor(g.grads[k])
        for t, (k, _) in zip(th, h.named_parameters()):
            t.grad = torch.tensor(h.grads[k])
        opt.step()
        topt.step()
        for mine, theirs in zip(g.parameters() + h.parameters(), tg + th):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-12)


def test_training_a_gru_and_a_head_with_groups_matches_torch(rng):
    """End to end: forward, loss, backward, one global clip and a grouped Adam step, three
    times, in rnnc and in PyTorch from the same weights (float64)."""
    torch = pytest.importorskip("torch")
    from rnnc import losses
    g, h = two_modules()
    tg = torch.nn.GRU(3, 5, num_layers=2).double()
    tg.load_state_dict({k: torch.tensor(v) for k, v in g.state_dict().items()})
    th = torch.nn.Linear(5, 2).double()
    th.load_state_dict({k: torch.tensor(v) for k, v in h.state_dict().items()})
    x = rng.standard_normal((6, 4, 3))
    y = rng.integers(0, 2, size=(6, 4))
    g.train(), h.train()
    opt = optim.Adam([{"params": g, "lr": 0.01}, {"params": h, "weight_decay": 0.1}], lr=0.03)
    topt = torch.optim.Adam([{"params": tg.parameters(), "lr": 0.01},
                             {"params": th.parameters(), "weight_decay": 0.1}], lr=0.03)
    for _ in range(3):
        opt.zero_grad()
        out, _ = g(x)
        logits = h(out)
        loss, grad = losses.softmax_cross_entropy(logits, y)
        dout, _, _ = h.backward(grad)
        g.backward(dout)
        total = rnnc.clip_grad_norm([g, h], 0.5)
        opt.step()
        topt.zero_grad()
        tout, _ = tg(torch.tensor(x))
        tloss = torch.nn.functional.cross_entropy(th(tout).reshape(-1, 2),
                                                  torch.tensor(y).reshape(-1))
        tloss.backward()
        ttotal = torch.nn.utils.clip_grad_norm_(list(tg.parameters()) + list(th.parameters()),
                                                0.5)
        topt.step()
        np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12)
        np.testing.assert_allclose(total, ttotal.item(), rtol=1e-10)
    for k, v in g.state_dict().items():
        np.testing.assert_allclose(v, tg.state_dict()[k].numpy(), rtol=1e-10, atol=1e-12)
    for k, v in h.state_dict().items():
        np.testing.assert_allclose(v, th.state_dict()[k].numpy(), rtol=1e-10, atol=1e-12)


# -- replaced and frozen parameters ------------------------------------------------------------
def test_the_optimizer_follows_parameters_replaced_by_load_state_dict():
    lstm = rnnc.LSTM(2, 3, dtype=np.float64, seed=0)
    opt = optim.SGD(lstm.parameters(), lr=0.5)
    old = lstm.weight_hh_l0
    old_copy = old.copy()
    lstm.load_state_dict({k: np.zeros_like(v) for k, v in lstm.state_dict().items()})
    lstm.grads = {"weight_hh_l0": np.ones_like(old)}
    opt.step()
    np.testing.assert_array_equal(lstm.weight_hh_l0, -0.5)     # the new array was updated
    np.testing.assert_array_equal(old, old_copy)               # the old one was not
    with pytest.raises(TypeError, match="not a live parameter.*load_state_dict replaces"):
        optim.SGD([old], lr=0.1)


def test_frozen_modules_are_refused_when_the_optimizer_is_made():
    lstm = rnnc.LSTM(2, 3).freeze()
    head = rnnc.Linear(3, 1)
    for params in (lstm, lstm.parameters(), [head, lstm],
                   [{"params": head}, {"params": lstm.named_parameters()}]):
        with pytest.raises(ValueError, match=r"weight_ih_l0' is read-only.*frozen.*unfreeze"):
            optim.Adam(params)
    lstm.unfreeze()
    opt = optim.Adam([head, lstm])
    lstm.freeze()                                      # frozen after: refused at step
    lstm.grads = {"bias_hh_l0": np.ones(12)}
    with pytest.raises(ValueError, match="read-only"):
        opt.step()


def test_copies_and_pickles_have_their_own_live_parameters(rng):
    lstm = rnnc.LSTM(2, 3, dtype=np.float64, seed=0)
    for other in (copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm))):
        opt = optim.SGD(other.parameters(), lr=1.0)
        other.grads = {"bias_ih_l0": np.ones(12)}
        opt.step()
        np.testing.assert_array_equal(other.bias_ih_l0, lstm.bias_ih_l0 - 1.0)


def test_modules_of_another_kind_still_work():
    """An object with named_parameters() and grads whose arrays are its own."""
    class Own:
        def __init__(self):
            self.w = np.ones(3)
            self.grads = {"w": np.full(3, 2.0)}

        def named_parameters(self):
            return [("w", self.w)]

        def zero_grad(self):
            self.grads = {"w": np.zeros(3)}

    m = Own()
    opt = optim.SGD(m, lr=0.5)
    assert rnnc.clip_grad_norm(m, 100.0) == pytest.approx(np.sqrt(12))
    opt.step()
    np.testing.assert_array_equal(m.w, 0.0)
    opt.zero_grad()
    assert not m.grads["w"].any()


# -- optimizer state ---------------------------------------------------------------------------
def test_state_dict_with_groups_round_trip(rng):
    g, h = two_modules()
    opt = optim.Adam([{"params": g, "lr": 0.01}, {"params": h, "amsgrad": True}], lr=0.1)
    seeds = rng.integers(1 << 30, size=4)
    for s in seeds[:2]:
        set_random_grads(np.random.default_rng(s), [g, h])
        opt.step()
    sd = opt.state_dict()
    assert [grp["params"] for grp in sd["param_groups"]] == [list(range(8)), [8, 9]]
    assert sd["param_groups"][1]["param_names"] == ["weight", "bias"]
    assert sorted(sd["state"]) == list(range(10)) and sd["state"][9]["step"] == 2
    g2, h2 = copy.deepcopy(g), copy.deepcopy(h)
    opt2 = optim.Adam([{"params": g2}, {"params": h2}], lr=0.5)
    opt2.load_state_dict(sd)
    assert [grp["lr"] for grp in opt2.param_groups] == [0.01, 0.1]
    assert opt2.param_groups[1]["amsgrad"] is True
    for s in seeds[2:]:
        for mods, o in (([g, h], opt), ([g2, h2], opt2)):
            set_random_grads(np.random.default_rng(s), mods)
            o.step()
    for a, b in zip(g.parameters() + h.parameters(), g2.parameters() + h2.parameters()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer 1"):
        optim.Adam([g2, h2]).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 1 has 2 parameters in state_dict, 1 here"):
        optim.Adam([{"params": g2}, {"params": [h2.weight]}]).load_state_dict(sd)


def test_state_dict_loads_pytorch_tensors(rng):
    """The layout is PyTorch's: torch.optim.SGD's state_dict loads (momentum buffers)."""
    torch = pytest.importorskip("torch")
    lin = rnnc.Linear(3, 2, dtype=np.float64, seed=0)
    t = [torch.tensor(v.copy()) for v in lin.parameters()]
    topt = torch.optim.SGD(t, lr=0.1, momentum=0.9)
    for p in t:
        p.grad = torch.ones_like(p)
    topt.step()
    sd = topt.state_dict()
    mine = {"state": sd["state"],
            "param_groups": [{k: v for k, v in grp.items() if k in optim.SGD._hyper + ("params",)}
                             for grp in sd["param_groups"]]}
    opt = optim.SGD(lin, lr=0.5)
    opt.load_state_dict(mine)
    assert opt.lr == 0.1
    buf = opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"]
    np.testing.assert_array_equal(buf, np.ones((2, 3)))


# -- clip_grad_norm ----------------------------------------------------------------------------
def test_clip_grad_norm_takes_one_global_norm_over_modules_like_torch(rng):
    torch = pytest.importorskip("torch")
    g, h = two_modules()
    set_random_grads(rng, [g, h])
    tensors = []
    for m in (g, h):
        for k, v in m.named_parameters():
            t = torch.zeros(v.shape, dtype=torch.float64, requires_grad=True)
            t.grad = torch.tensor(m.grads[k])
            tensors.append(t)
    before = {k: v.copy() for k, v in h.grads.items()}
    total = rnnc.clip_grad_norm([g, h], 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    np.testing.assert_allclose(total, ttotal.item(), rtol=1e-12)
    mine = [m.grads[k] for m in (g, h) for k, _ in m.named_parameters()]
    for a, t in zip(mine, tensors):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    # Not per module: the head alone had a smaller norm than the total.
    head_norm = np.sqrt(sum(np.sum(v * v) for v in before.values()))
    assert head_norm < total
    np.testing.assert_allclose(h.grads["weight"], before["weight"] / (total + 1e-6),
                               rtol=1e-12)


def test_clip_grad_norm_over_arrays_and_named_pairs(rng):
    g, h = two_modules()
    set_random_grads(rng, [g, h])
    expected = np.sqrt(np.sum(g.grads["weight_hh_l0"] ** 2) + np.sum(h.grads["bias"] ** 2))
    total = rnnc.clip_grad_norm([g.weight_hh_l0, ("b", h.bias)], 1e9)
    np.testing.assert_allclose(total, expected, rtol=1e-12)


# -- errors ------------------------------------------------------------------------------------
def test_params_errors():
    g, h = two_modules()
    with pytest.raises(ValueError, match="holds no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="mixes parameter groups"):
        optim.SGD([{"params": g}, h], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has no 'params'"):
        optim.SGD([{"lr": 0.1}])
    with pytest.raises(ValueError, match=r"unknown options \['learning_rate'\]"):
        optim.SGD([{"params": g, "learning_rate": 0.1}])
    with pytest.raises(ValueError, match="appears in parameter groups 0 and 1"):
        optim.SGD([{"params": g}, {"params": [g.bias_hh_l1]}])
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr must be"):
        optim.SGD([{"params": g}, {"params": h, "lr": -1.0}])
    with pytest.raises(TypeError, match=r"params\[1\] must be an rnnc module.*got str"):
        optim.Adam([g, "h"])
    with pytest.raises(TypeError, match=r"params\[0\] is an array that is not a live parameter"):
        optim.Adam(list(g.state_dict().values()))
    with pytest.raises(TypeError, match="params must be an rnnc module"):
        optim.Adam(3)
    with pytest.raises(TypeError, match="parameters must be an rnnc module"):
        rnnc.clip_grad_norm("model", 1.0)
