"""Check rnnc/reference/backward.py (the NumPy BPTT oracle) independently.

(a) against central finite differences of reference.run_stack, element by element, in float64,
    for every mode / option (tanh, relu, GRU reset_after True/False, LSTM with and without
    projection, bias=False, bidirectional, stacked, reverse_all, variable lengths incl. 0);
(b) against torch.autograd through torch.nn.RNN / GRU / LSTM (packed variable lengths, proj_size,
    bidirectional, 1-3 layers, bias=False, relu), reverse_all through torch on flipped input, and
    GRU reset_after=False through a hand-written torch loop;
(c) inter-layer dropout masks against finite differences and against a chain of one-layer torch
    modules with the masks applied between them.
Plus the padding / zero-length / dtype / argument-checking contracts.
"""

import itertools
import warnings

import numpy as np
import pytest

from rnnc import reference as ref
from rnnc.reference import backward as refb

# The oracle must be warning-free, including with NaN/inf padding.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

N_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

# (id, mode, extra options)
VARIANTS = [
    ("RNN-tanh", "RNN", {}),
    ("RNN-relu", "RNN", {"nonlinearity": "relu"}),
    ("GRU", "GRU", {}),
    ("GRU-reset_before", "GRU", {"reset_after": False}),
    ("LSTM", "LSTM", {}),
    ("LSTM-proj", "LSTM", {"proj_size": 1}),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def make_params(rng, mode, I, H, num_layers=1, bidirectional=False, bias=True, proj_size=0,
                scale=1.0, dtype=np.float64):
    """Random parameters with PyTorch's state_dict names; uniform(-scale, scale), wider than
    torch's default init so that the nonlinearities leave their linear region."""
    G, D, P = N_GATES[mode], 2 if bidirectional else 1, proj_size or H
    params = {}
    for k in range(num_layers):
        for d in range(D):
            sfx = "_reverse" if d == 1 else ""
            in_k = I if k == 0 else D * P
            params[f"weight_ih_l{k}{sfx}"] = rng.uniform(-scale, scale, (G * H, in_k))
            params[f"weight_hh_l{k}{sfx}"] = rng.uniform(-scale, scale, (G * H, P))
            if bias:
                params[f"bias_ih_l{k}{sfx}"] = rng.uniform(-scale, scale, (G * H,))
                params[f"bias_hh_l{k}{sfx}"] = rng.uniform(-scale, scale, (G * H,))
            if proj_size:
                params[f"weight_hr_l{k}{sfx}"] = rng.uniform(-scale, scale, (P, H))
    return {k: v.astype(dtype) for k, v in params.items()}


class Case:
    """A random network, input, initial state and loss weights (G, Gh, Gc)."""

    def __init__(self, rng, mode, opts, *, T=3, B=3, I=2, H=2, num_layers=1, bidirectional=False,
                 bias=True, reverse_all=False, lengths=None, masks_p=None):
        self.mode = mode
        self.kw = dict(num_layers=num_layers, bidirectional=bidirectional, reverse_all=reverse_all,
                       nonlinearity=opts.get("nonlinearity", "tanh"),
                       reset_after=opts.get("reset_after", True),
                       proj_size=opts.get("proj_size", 0))
        P = self.kw["proj_size"] or H
        D = 2 if bidirectional else 1
        self.params = make_params(rng, mode, I, H, num_layers, bidirectional, bias,
                                  self.kw["proj_size"])
        self.x = rng.standard_normal((T, B, I))
        self.h0 = 0.8 * rng.standard_normal((D * num_layers, B, P))
        self.c0 = 0.8 * rng.standard_normal((D * num_layers, B, H)) if mode == "LSTM" else None
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.masks = None
        if masks_p is not None:
            keep = 1 - masks_p
            self.masks = [(rng.random((T, B, D * P)) < keep) / keep
                          for _ in range(num_layers - 1)]
        self.G = rng.standard_normal((T, B, D * P))
        self.Gh = rng.standard_normal(self.h0.shape)
        self.Gc = rng.standard_normal(self.c0.shape) if mode == "LSTM" else None

    def forward(self):
        return refb.run_stack_dropout(self.mode, self.params, self.x, self.h0, self.c0,
                                      self.lengths, dropout_masks=self.masks, **self.kw)

    def loss(self):
        out, h_n, c_n = self.forward()
        value = np.sum(self.G * out) + np.sum(self.Gh * h_n)
        if c_n is not None:
            value += np.sum(self.Gc * c_n)
        return value

    def backward(self, **overrides):
        args = dict(grad_out=self.G, grad_h_n=self.Gh, grad_c_n=self.Gc, x=self.x)
        args.update(overrides)
        return refb.run_stack_backward(
            self.mode, self.params, args["x"], self.h0, self.c0, self.lengths, args["grad_out"],
            args["grad_h_n"], args["grad_c_n"], dropout_masks=self.masks, **self.kw)


def finite_diff(loss, a, eps=1e-6):
    """Central differences of loss() with respect to every element of array a (in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        orig = a[i]
        a[i] = orig + eps
        up = loss()
        a[i] = orig - eps
        down = loss()
        a[i] = orig
        grad[i] = (up - down) / (2 * eps)
    return grad


FD_TOL = dict(rtol=1e-6, atol=1e-7)


def check_against_finite_differences(case):
    dx, dh0, dc0, grads = case.backward()
    assert dx.shape == case.x.shape and dh0.shape == case.h0.shape
    assert list(grads) == list(case.params)
    np.testing.assert_allclose(dx, finite_diff(case.loss, case.x), err_msg="dx", **FD_TOL)
    np.testing.assert_allclose(dh0, finite_diff(case.loss, case.h0), err_msg="dh0", **FD_TOL)
    if case.mode == "LSTM":
        assert dc0.shape == case.c0.shape
        np.testing.assert_allclose(dc0, finite_diff(case.loss, case.c0), err_msg="dc0", **FD_TOL)
    else:
        assert dc0 is None
    for name, value in case.params.items():
        assert grads[name].shape == value.shape and grads[name].dtype == value.dtype
        np.testing.assert_allclose(grads[name], finite_diff(case.loss, value), err_msg=name,
                                   **FD_TOL)
    return dx, dh0, dc0, grads


# ---------------------------------------------------------------------------
# (a) Finite differences
# ---------------------------------------------------------------------------

# (id, Case keyword arguments)
FD_CONFIGS = [
    ("L1-uni-full", dict(T=4, B=2, I=3, H=3)),
    ("L1-uni-varlen-nobias", dict(T=4, B=3, bias=False, lengths=[4, 1, 2])),
    ("L2-bi-varlen0", dict(num_layers=2, bidirectional=True, lengths=[3, 0, 1])),
    ("L2-reverse_all-varlen0", dict(num_layers=2, reverse_all=True, lengths=[2, 3, 0])),
    ("L2-uni-nobias-varlen", dict(num_layers=2, bias=False, lengths=[1, 3, 2])),
]
FD_CONFIGS_KW = [c[1] for c in FD_CONFIGS]


@pytest.mark.parametrize("config", FD_CONFIGS_KW, ids=[c[0] for c in FD_CONFIGS])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_matches_finite_differences(variant, config):
    name, mode, opts = variant
    rng = np.random.default_rng([1, VARIANT_IDS.index(name), FD_CONFIGS_KW.index(config)])
    case = Case(rng, mode, opts, **config)
    dx, dh0, dc0, _ = check_against_finite_differences(case)
    if case.lengths is not None:
        for b, n in enumerate(case.lengths):
            assert np.all(dx[n:, b] == 0)
            if n == 0:
                # Nothing ran: h_n = h0, c_n = c0.
                np.testing.assert_array_equal(dh0[:, b], case.Gh[:, b])
                if dc0 is not None:
                    np.testing.assert_array_equal(dc0[:, b], case.Gc[:, b])


def test_finite_differences_single_scalar_chain():
    # T=4, B=1, I=H=1 tanh RNN with lengths: the smallest case, checked to tighter tolerance.
    rng = np.random.default_rng(42)
    case = Case(rng, "RNN", {}, T=4, B=1, I=1, H=1, lengths=[3])
    dx, dh0, _, grads = case.backward()
    np.testing.assert_allclose(dx, finite_diff(case.loss, case.x), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(grads["weight_hh_l0"],
                               finite_diff(case.loss, case.params["weight_hh_l0"]),
                               rtol=1e-8, atol=1e-9)
    assert dx[3, 0, 0] == 0


# ---------------------------------------------------------------------------
# Padding, zero lengths, defaults, dtypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_padding_content_and_padded_grad_out_are_ignored(variant):
    name, mode, opts = variant
    rng = np.random.default_rng([7, VARIANT_IDS.index(name)])
    case = Case(rng, mode, opts, T=4, B=4, I=2, H=3, num_layers=2, bidirectional=True,
                lengths=[4, 2, 0, 1])
    clean_x, clean_g = case.x.copy(), case.G.copy()
    for b, n in enumerate(case.lengths):
        clean_x[n:, b] = 0
        clean_g[n:, b] = 0
    expected = case.backward(x=clean_x, grad_out=clean_g)
    for fill in (np.nan, np.inf, -np.inf, 1e300):
        x, g = case.x.copy(), case.G.copy()
        for b, n in enumerate(case.lengths):
            x[n:, b] = fill
            g[n:, b] = fill
        got = case.backward(x=x, grad_out=g)
        for a, e in zip(got[:3], expected[:3]):
            if e is None:
                assert a is None
            else:
                np.testing.assert_array_equal(a, e)
        for k in case.params:
            np.testing.assert_array_equal(got[3][k], expected[3][k])
    dx = expected[0]
    assert np.all(np.isfinite(dx))
    for b, n in enumerate(case.lengths):
        assert np.all(dx[n:, b] == 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_zero_length_sequences_do_not_touch_the_weights(variant):
    name, mode, opts = variant
    rng = np.random.default_rng([8, VARIANT_IDS.index(name)])
    case = Case(rng, mode, opts, T=3, B=4, I=2, H=3, num_layers=2, bidirectional=True,
                lengths=[3, 0, 2, 0])
    dx, dh0, dc0, grads = case.backward()
    for b in (1, 3):
        assert np.all(dx[:, b] == 0)
        np.testing.assert_array_equal(dh0[:, b], case.Gh[:, b])
        if dc0 is not None:
            np.testing.assert_array_equal(dc0[:, b], case.Gc[:, b])
    # The weight gradients only come from the non-empty sequences.
    keep = np.array([0, 2])
    sub = refb.run_stack_backward(
        mode, case.params, case.x[:, keep], case.h0[:, keep],
        None if case.c0 is None else case.c0[:, keep], case.lengths[keep], case.G[:, keep],
        case.Gh[:, keep], None if case.Gc is None else case.Gc[:, keep], **case.kw)
    np.testing.assert_allclose(dx[:, keep], sub[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dh0[:, keep], sub[1], rtol=1e-13, atol=1e-14)
    for k in case.params:
        np.testing.assert_allclose(grads[k], sub[3][k], rtol=1e-13, atol=1e-14)


def test_all_lengths_zero():
    rng = np.random.default_rng(3)
    case = Case(rng, "LSTM", {"proj_size": 1}, num_layers=2, bidirectional=True, lengths=[0, 0, 0])
    dx, dh0, dc0, grads = case.backward()
    assert np.all(dx == 0)
    np.testing.assert_array_equal(dh0, case.Gh)
    np.testing.assert_array_equal(dc0, case.Gc)
    assert all(np.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_default_states_and_zero_state_gradients(mode):
    rng = np.random.default_rng(4)
    case = Case(rng, mode, {}, num_layers=2, bidirectional=True, lengths=[3, 1, 2])
    case.h0 = np.zeros_like(case.h0)
    case.c0 = None if case.c0 is None else np.zeros_like(case.c0)
    explicit = refb.run_stack_backward(
        mode, case.params, case.x, case.h0, case.c0, case.lengths, case.G,
        np.zeros_like(case.Gh), None if case.Gc is None else np.zeros_like(case.Gc), **case.kw)
    implicit = refb.run_stack_backward(mode, case.params, case.x, None, None, case.lengths,
                                       case.G, **case.kw)
    for a, e in zip(implicit[:3], explicit[:3]):
        if e is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, e)
    for k in case.params:
        np.testing.assert_array_equal(implicit[3][k], explicit[3][k])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_float32_is_preserved_and_close_to_float64(variant):
    name, mode, opts = variant
    rng = np.random.default_rng([9, VARIANT_IDS.index(name)])
    case = Case(rng, mode, opts, T=4, B=3, I=3, H=3, num_layers=2, bidirectional=True,
                lengths=[4, 2, 1])
    exp = case.backward()
    f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    params32 = {k: f32(v) for k, v in case.params.items()}
    got = refb.run_stack_backward(mode, params32, f32(case.x), f32(case.h0), f32(case.c0),
                                  case.lengths, f32(case.G), f32(case.Gh), f32(case.Gc), **case.kw)
    for a, e in zip(got[:3], exp[:3]):
        if e is None:
            assert a is None
            continue
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    for k in case.params:
        assert got[3][k].dtype == np.float32
        np.testing.assert_allclose(got[3][k], exp[3][k], rtol=1e-4, atol=1e-4)


def test_argument_errors():
    rng = np.random.default_rng(5)
    case = Case(rng, "GRU", {}, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="grad_out"):
        case.backward(grad_out=case.G[:, :, :1])
    with pytest.raises(ValueError, match="grad_h_n"):
        case.backward(grad_h_n=case.Gh[:1])
    with pytest.raises(ValueError, match="dropout_masks"):
        refb.run_stack_backward("GRU", case.params, case.x, None, None, None, case.G,
                                dropout_masks=[], **case.kw)
    with pytest.raises(ValueError, match="dropout_masks"):
        refb.run_stack_dropout("GRU", case.params, case.x, None,
                               dropout_masks=[np.ones((1, 1, 1))], **case.kw)
    with pytest.raises(ValueError, match="reverse_all"):
        refb.run_stack_backward("GRU", case.params, case.x, None, None, None, case.G,
                                num_layers=2, bidirectional=True, reverse_all=True)
    with pytest.raises(ValueError, match="lengths"):
        refb.run_stack_backward("GRU", case.params, case.x, None, None, [1, 2, 9], case.G,
                                **case.kw)


# ---------------------------------------------------------------------------
# (c) Dropout masks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_run_stack_dropout_without_masks_is_run_stack(mode):
    rng = np.random.default_rng(6)
    case = Case(rng, mode, {}, T=4, num_layers=3, bidirectional=True, lengths=[4, 2, 0])
    expected = ref.run_stack(mode, case.params, case.x, case.h0, case.c0, case.lengths, **case.kw)
    D, P = 2, 2
    ones = [np.ones((4, 3, D * P)) for _ in range(2)]
    for masks in (None, ones):
        got = refb.run_stack_dropout(mode, case.params, case.x, case.h0, case.c0, case.lengths,
                                     dropout_masks=masks, **case.kw)
        for a, e in zip(got, expected):
            if e is None:
                assert a is None
            else:
                np.testing.assert_array_equal(a, e)
    # All-ones masks give the same gradients as no masks.
    base = case.backward()
    case.masks = ones
    with_ones = case.backward()
    for k in case.params:
        np.testing.assert_array_equal(with_ones[3][k], base[3][k])
    np.testing.assert_array_equal(with_ones[0], base[0])


# Three layers with bidirectional masks are checked against torch (test_dropout_masks_match_
# chained_torch_layers); finite differences keep to smaller networks to stay fast.
DROPOUT_CONFIGS = [
    ("L3-uni", dict(num_layers=3, lengths=[3, 1, 2])),
    ("L2-bi", dict(num_layers=2, bidirectional=True, B=2, lengths=[3, 0])),
    ("L2-reverse_all", dict(num_layers=2, reverse_all=True, lengths=[2, 3, 1])),
]


@pytest.mark.parametrize("config", [c[1] for c in DROPOUT_CONFIGS],
                         ids=[c[0] for c in DROPOUT_CONFIGS])
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[5]],
                         ids=[VARIANT_IDS[1], VARIANT_IDS[3], VARIANT_IDS[5]])
def test_dropout_masks_match_finite_differences(variant, config):
    name, mode, opts = variant
    rng = np.random.default_rng([10, VARIANT_IDS.index(name), config["num_layers"],
                                 int(config.get("bidirectional", False))])
    case = Case(rng, mode, opts, masks_p=0.4, **config)
    assert any(np.any(m == 0) for m in case.masks)
    check_against_finite_differences(case)
    # The masks matter: the gradients differ from the unmasked network's.
    masked = case.backward()
    case.masks = None
    unmasked = case.backward()
    assert max(np.max(np.abs(masked[3][k] - unmasked[3][k])) for k in case.params) > 1e-3


# ---------------------------------------------------------------------------
# (b) torch.autograd
# ---------------------------------------------------------------------------

@pytest.fixture
def torch_env():
    """torch, with its native ATen RNN kernels (oneDNN builds a primitive per shape and cannot
    do LSTM projections)."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags = torch.backends.mkldnn.flags(enabled=False)
        flags.__enter__()
    try:
        yield torch
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.__exit__(None, None, None)


TORCH_TOL = dict(rtol=1e-10, atol=1e-10)


def _torch_net(torch, mode, I, H, num_layers, bidirectional, bias, nonlinearity, proj_size):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    if mode == "RNN":
        net = torch.nn.RNN(I, H, nonlinearity=nonlinearity, **kw)
    elif mode == "GRU":
        net = torch.nn.GRU(I, H, **kw)
    else:
        net = torch.nn.LSTM(I, H, proj_size=proj_size, **kw)
    net = net.double()
    with torch.no_grad():
        for w in net.parameters():
            w.mul_(2.0)   # beyond the linear region of the nonlinearities
    return net


def _torch_run(torch, net, mode, x, h0, c0, lengths):
    """out (padded, T steps), h_n, c_n of a torch module, with packing when lengths is given."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    hx = (h0, c0) if mode == "LSTM" else h0
    if lengths is None:
        out, hn = net(x, hx)
    else:
        packed = pack_padded_sequence(x, torch.as_tensor(lengths, dtype=torch.int64),
                                      enforce_sorted=False)
        out_p, hn = net(packed, hx)
        out, _ = pad_packed_sequence(out_p, total_length=x.shape[0])
    if mode == "LSTM":
        return out, hn[0], hn[1]
    return out, hn, None


def _leaf(torch, a):
    return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _loss(torch, out, hn, cn, G, Gh, Gc):
    loss = (out * torch.from_numpy(G)).sum() + (hn * torch.from_numpy(Gh)).sum()
    if cn is not None:
        loss = loss + (cn * torch.from_numpy(Gc)).sum()
    return loss


def _np(t):
    return t.detach().numpy()


# (mode, nonlinearity, proj)
TORCH_VARIANTS = [("RNN", "tanh", False), ("RNN", "relu", False), ("GRU", "tanh", False),
                  ("LSTM", "tanh", False), ("LSTM", "tanh", True)]
TORCH_CASES = list(itertools.product(TORCH_VARIANTS, [1, 2, 3], [False, True], [True, False],
                                     [False, True]))


@pytest.mark.parametrize(
    "variant,num_layers,bidirectional,bias,varlen", TORCH_CASES,
    ids=[f"{v[0]}-{v[1]}{'-proj' if v[2] else ''}-L{L}-{'bi' if bi else 'uni'}-"
         f"{'bias' if b else 'nobias'}-{'varlen' if vl else 'full'}"
         for v, L, bi, b, vl in TORCH_CASES])
def test_matches_torch_autograd(torch_env, variant, num_layers, bidirectional, bias, varlen):
    torch = torch_env
    mode, nonlinearity, use_proj = variant
    seed = TORCH_CASES.index((variant, num_layers, bidirectional, bias, varlen))
    rng = np.random.default_rng([11, seed])
    torch.manual_seed(seed)
    T, B, I = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    H = int(rng.integers(2, 5))
    P = int(rng.integers(1, H)) if use_proj else 0
    D = 2 if bidirectional else 1
    net = _torch_net(torch, mode, I, H, num_layers, bidirectional, bias, nonlinearity, P)
    params = {k: _np(v).copy() for k, v in net.state_dict().items()}

    x = rng.standard_normal((T, B, I))
    h0 = 0.8 * rng.standard_normal((D * num_layers, B, P or H))
    c0 = 0.8 * rng.standard_normal((D * num_layers, B, H)) if mode == "LSTM" else None
    lengths = rng.integers(1, T + 1, size=B) if varlen else None
    G = rng.standard_normal((T, B, D * (P or H)))
    Gh = rng.standard_normal(h0.shape)
    Gc = rng.standard_normal(c0.shape) if c0 is not None else None

    tx, th0, tc0 = _leaf(torch, x), _leaf(torch, h0), _leaf(torch, c0)
    _loss(torch, *_torch_run(torch, net, mode, tx, th0, tc0, lengths), G, Gh, Gc).backward()

    dx, dh0, dc0, grads = refb.run_stack_backward(
        mode, params, x, h0, c0, lengths, G, Gh, Gc, num_layers=num_layers,
        bidirectional=bidirectional, nonlinearity=nonlinearity, proj_size=P)
    np.testing.assert_allclose(dx, _np(tx.grad), err_msg="dx", **TORCH_TOL)
    np.testing.assert_allclose(dh0, _np(th0.grad), err_msg="dh0", **TORCH_TOL)
    if mode == "LSTM":
        np.testing.assert_allclose(dc0, _np(tc0.grad), err_msg="dc0", **TORCH_TOL)
    named = dict(net.named_parameters())
    assert set(grads) == set(named)
    for k, w in named.items():
        np.testing.assert_allclose(grads[k], _np(w.grad), err_msg=k, **TORCH_TOL)


def _flip_each(a, lengths):
    a = a.copy()
    for b, n in enumerate(lengths):
        a[:n, b] = a[:n, b][::-1].copy()
    return a


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("variant", TORCH_VARIANTS,
                         ids=[f"{m}-{n}{'-proj' if p else ''}" for m, n, p in TORCH_VARIANTS])
def test_reverse_all_matches_torch_on_flipped_input(torch_env, variant, num_layers):
    # reverse_all on x == torch on x flipped within each length, outputs flipped back.
    # sum(G * flip(out_torch)) = sum(flip(G) * out_torch), and dx = flip(dx_torch).
    torch = torch_env
    mode, nonlinearity, use_proj = variant
    rng = np.random.default_rng([12, num_layers, TORCH_VARIANTS.index(variant)])
    torch.manual_seed(12)
    T, B, I, H = 4, 3, 2, 3
    P = 2 if use_proj else 0
    net = _torch_net(torch, mode, I, H, num_layers, False, True, nonlinearity, P)
    params = {k: _np(v).copy() for k, v in net.state_dict().items()}
    x = rng.standard_normal((T, B, I))
    h0 = 0.8 * rng.standard_normal((num_layers, B, P or H))
    c0 = 0.8 * rng.standard_normal((num_layers, B, H)) if mode == "LSTM" else None
    lengths = np.array([4, 1, 3])
    G = rng.standard_normal((T, B, P or H))
    Gh = rng.standard_normal(h0.shape)
    Gc = rng.standard_normal(c0.shape) if c0 is not None else None

    tx, th0, tc0 = _leaf(torch, _flip_each(x, lengths)), _leaf(torch, h0), _leaf(torch, c0)
    _loss(torch, *_torch_run(torch, net, mode, tx, th0, tc0, lengths),
          _flip_each(G, lengths), Gh, Gc).backward()

    dx, dh0, dc0, grads = refb.run_stack_backward(
        mode, params, x, h0, c0, lengths, G, Gh, Gc, num_layers=num_layers,
        nonlinearity=nonlinearity, proj_size=P, reverse_all=True)
    np.testing.assert_allclose(dx, _flip_each(_np(tx.grad), lengths), **TORCH_TOL)
    np.testing.assert_allclose(dh0, _np(th0.grad), **TORCH_TOL)
    if mode == "LSTM":
        np.testing.assert_allclose(dc0, _np(tc0.grad), **TORCH_TOL)
    for k, w in net.named_parameters():
        np.testing.assert_allclose(grads[k], _np(w.grad), err_msg=k, **TORCH_TOL)


def _torch_gru_reset_before_stack(torch, params, x, h0, lengths, num_layers, bidirectional):
    """GRU with reset_after=False written with torch ops (autograd gives its gradient):
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)."""
    T = x.shape[0]
    D = 2 if bidirectional else 1
    active = torch.as_tensor(np.arange(T)[:, None] < np.asarray(lengths)[None, :])  # (T, B)
    layer_input = x
    h_n = []
    for k in range(num_layers):
        outs = []
        for d in range(D):
            sfx = "_reverse" if d == 1 else ""
            w_ih, w_hh = params[f"weight_ih_l{k}{sfx}"], params[f"weight_hh_l{k}{sfx}"]
            b_ih, b_hh = params[f"bias_ih_l{k}{sfx}"], params[f"bias_hh_l{k}{sfx}"]
            H = w_hh.shape[1]
            h = h0[k * D + d]
            out = [None] * T
            for t in (range(T - 1, -1, -1) if d == 1 else range(T)):
                gi = layer_input[t] @ w_ih.T + b_ih
                r = torch.sigmoid(gi[:, :H] + h @ w_hh[:H].T + b_hh[:H])
                z = torch.sigmoid(gi[:, H:2 * H] + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
                n = torch.tanh(gi[:, 2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
                a = active[t][:, None]
                h = torch.where(a, (1 - z) * n + z * h, h)
                out[t] = torch.where(a, h, torch.zeros_like(h))
            outs.append(torch.stack(out))
            h_n.append(h)
        layer_input = torch.cat(outs, dim=2)
    return layer_input, torch.stack(h_n)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_reset_before_matches_torch_autograd(torch_env, num_layers, bidirectional):
    torch = torch_env
    rng = np.random.default_rng([13, num_layers, int(bidirectional)])
    T, B, I, H = 4, 3, 3, 3
    D = 2 if bidirectional else 1
    params = make_params(rng, "GRU", I, H, num_layers, bidirectional)
    x = rng.standard_normal((T, B, I))
    h0 = 0.8 * rng.standard_normal((D * num_layers, B, H))
    lengths = np.array([4, 0, 2])
    G = rng.standard_normal((T, B, D * H))
    Gh = rng.standard_normal(h0.shape)

    tparams = {k: _leaf(torch, v) for k, v in params.items()}
    tx, th0 = _leaf(torch, x), _leaf(torch, h0)
    out, hn = _torch_gru_reset_before_stack(torch, tparams, tx, th0, lengths, num_layers,
                                            bidirectional)
    np.testing.assert_allclose(
        _np(out), ref.run_stack("GRU", params, x, h0, None, lengths, num_layers=num_layers,
                                bidirectional=bidirectional, reset_after=False)[0],
        **TORCH_TOL)
    _loss(torch, out, hn, None, G, Gh, None).backward()

    dx, dh0, _, grads = refb.run_stack_backward(
        "GRU", params, x, h0, None, lengths, G, Gh, num_layers=num_layers,
        bidirectional=bidirectional, reset_after=False)
    np.testing.assert_allclose(dx, _np(tx.grad), **TORCH_TOL)
    np.testing.assert_allclose(dh0, _np(th0.grad), **TORCH_TOL)
    for k, w in tparams.items():
        np.testing.assert_allclose(grads[k], _np(w.grad), err_msg=k, **TORCH_TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("variant", TORCH_VARIANTS,
                         ids=[f"{m}-{n}{'-proj' if p else ''}" for m, n, p in TORCH_VARIANTS])
def test_dropout_masks_match_chained_torch_layers(torch_env, variant, bidirectional):
    # A 3-layer network with masks == three 1-layer torch modules with the masks applied
    # between them (torch's own nn dropout is random and cannot take given masks).
    torch = torch_env
    mode, nonlinearity, use_proj = variant
    L, T, B, I, H = 3, 4, 3, 2, 3
    P = 2 if use_proj else 0
    D = 2 if bidirectional else 1
    rng = np.random.default_rng([14, TORCH_VARIANTS.index(variant), D])
    torch.manual_seed(14)
    params = make_params(rng, mode, I, H, L, bidirectional, True, P)
    x = rng.standard_normal((T, B, I))
    h0 = 0.8 * rng.standard_normal((D * L, B, P or H))
    c0 = 0.8 * rng.standard_normal((D * L, B, H)) if mode == "LSTM" else None
    lengths = np.array([4, 2, 3])
    masks = [(rng.random((T, B, D * (P or H))) < 0.6) / 0.6 for _ in range(L - 1)]
    G = rng.standard_normal((T, B, D * (P or H)))
    Gh = rng.standard_normal(h0.shape)
    Gc = rng.standard_normal(c0.shape) if c0 is not None else None

    tx, th0, tc0 = _leaf(torch, x), _leaf(torch, h0), _leaf(torch, c0)
    layer_input, hns, cns, nets = tx, [], [], []
    for k in range(L):
        net = _torch_net(torch, mode, layer_input.shape[2], H, 1, bidirectional, True,
                         nonlinearity, P)
        with torch.no_grad():
            for name, w in net.named_parameters():
                w.copy_(torch.from_numpy(params[name.replace("_l0", f"_l{k}")]))
        nets.append(net)
        sl = slice(k * D, (k + 1) * D)
        out, hn, cn = _torch_run(torch, net, mode, layer_input, th0[sl],
                                 None if tc0 is None else tc0[sl], lengths)
        hns.append(hn)
        cns.append(cn)
        layer_input = out * torch.from_numpy(masks[k]) if k < L - 1 else out
    out = layer_input
    hn = torch.cat(hns)
    cn = torch.cat(cns) if mode == "LSTM" else None

    ref_out, ref_hn, _ = refb.run_stack_dropout(
        mode, params, x, h0, c0, lengths, num_layers=L, bidirectional=bidirectional,
        nonlinearity=nonlinearity, proj_size=P, dropout_masks=masks)
    np.testing.assert_allclose(ref_out, _np(out), **TORCH_TOL)
    np.testing.assert_allclose(ref_hn, _np(hn), **TORCH_TOL)
    _loss(torch, out, hn, cn, G, Gh, Gc).backward()

    dx, dh0, dc0, grads = refb.run_stack_backward(
        mode, params, x, h0, c0, lengths, G, Gh, Gc, num_layers=L, bidirectional=bidirectional,
        nonlinearity=nonlinearity, proj_size=P, dropout_masks=masks)
    np.testing.assert_allclose(dx, _np(tx.grad), **TORCH_TOL)
    np.testing.assert_allclose(dh0, _np(th0.grad), **TORCH_TOL)
    if mode == "LSTM":
        np.testing.assert_allclose(dc0, _np(tc0.grad), **TORCH_TOL)
    for k, net in enumerate(nets):
        for name, w in net.named_parameters():
            full = name.replace("_l0", f"_l{k}")
            np.testing.assert_allclose(grads[full], _np(w.grad), err_msg=full, **TORCH_TOL)
