"""The training (backward) path: train(), backward(), grads / zero_grad(), dropout, TBPTT.

* Finite differences (float64, central, eps 1e-6) of L = sum(Go * out) + sum(Gh * h_n)
  (+ sum(Gc * c_n)), evaluated with the module in eval() mode, against backward() for every
  class and option: dx, dhx (dh0 and dc0) and every parameter element.
* Parity with torch.autograd (same weights, inputs, initial states and upstream gradients).
* Dropout: reproducibility, eval() without dropout, the training forward recomputed layer by
  layer with the cached masks, and finite differences with those masks fixed.
* Truncated and full BPTT over chunks of a sequence.
* Error paths.
"""
import re
import warnings
import zlib

import numpy as np
import pytest

import rnnc

EPS = 1e-6
FD_TOL = dict(rtol=1e-6, atol=1e-6)

VARIANTS = [
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
    ("GRU", {}),
    ("GRU", {"reset_after": False}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": 2}),
]
VARIANT_IDS = ["RNN-tanh", "RNN-relu", "GRU", "GRU-reset_before", "LSTM", "LSTM-proj"]

CELL_VARIANTS = [
    ("RNNCell", {}),
    ("RNNCell", {"nonlinearity": "relu"}),
    ("GRUCell", {}),
    ("GRUCell", {"reset_after": False}),
    ("LSTMCell", {}),
]
CELL_IDS = ["RNNCell-tanh", "RNNCell-relu", "GRUCell", "GRUCell-reset_before", "LSTMCell"]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _seed(*parts):
    """A reproducible seed from strings / numbers (hash() of str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


def _dot(a, b):
    """sum(a * b) over arrays or (nested) pairs of arrays; None on either side counts as 0."""
    if a is None or b is None:
        return 0.0
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        return sum(_dot(x, y) for x, y in zip(a, b))
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def _like(rng, a):
    """Random array(s) shaped like a (or like each entry of a pair)."""
    if isinstance(a, (tuple, list)):
        return tuple(_like(rng, x) for x in a)
    return rng.standard_normal(np.shape(a))


def numeric_grad(f, arr):
    """Central differences of the scalar f() with respect to every element of arr, which is
    perturbed in place (and restored)."""
    g = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + EPS
        fp = f()
        arr[idx] = orig - EPS
        fm = f()
        arr[idx] = orig
        g[idx] = (fp - fm) / (2 * EPS)
    return g


def check_inputs_fd(loss, pairs):
    """pairs: (name, array perturbed by FD, analytic gradient)."""
    for name, arr, analytic in pairs:
        assert isinstance(analytic, np.ndarray), name
        assert analytic.shape == arr.shape, (name, analytic.shape, arr.shape)
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), err_msg=name, **FD_TOL)


def check_params_fd(loss, named_params, grads):
    """Every parameter element of named_params (live arrays) against grads[name]."""
    named_params = list(named_params)
    assert set(grads) == {n for n, _ in named_params}
    for name, p in named_params:
        g = grads[name]
        assert isinstance(g, np.ndarray) and g.shape == p.shape and g.dtype == p.dtype, name
        np.testing.assert_allclose(g, numeric_grad(loss, p), err_msg=name, **FD_TOL)


def make_layer(mode, kw, I, H, dtype=np.float64, seed=0, **opts):
    return getattr(rnnc, mode)(I, H, **opts, **kw, dtype=dtype, seed=seed)


def random_hx(rng, m, B, unbatched=False):
    D, L = m.num_directions, m.num_layers
    lead = (D * L,) if unbatched else (D * L, B)
    P = m.proj_size or m.hidden_size
    h0 = 0.8 * rng.standard_normal(lead + (P,))
    if m.mode == "LSTM":
        return h0, 0.8 * rng.standard_normal(lead + (m.hidden_size,))
    return h0


def zeros_hx(m, B, unbatched=False):
    hx = random_hx(np.random.default_rng(0), m, B, unbatched)
    return tuple(np.zeros_like(a) for a in hx) if isinstance(hx, tuple) else np.zeros_like(hx)


def padded_mask(T, lengths, batch_first=False, unbatched=False):
    """Boolean mask of the padded positions, in the input's (leading-axes) layout."""
    if lengths is None:
        return None
    if unbatched:
        return np.arange(T) >= int(np.reshape(lengths, ()))
    lengths = np.asarray(lengths)
    mask = np.arange(T)[:, None] >= lengths[None, :]          # (T, B)
    return mask.T if batch_first else mask


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def copy_grads(grads):
    return {k: v.copy() for k, v in grads.items()}


def assert_grads_equal(a, b, **tol):
    assert set(a) == set(b)
    for k in a:
        if tol:
            np.testing.assert_allclose(a[k], b[k], err_msg=k, **tol)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# finite differences: RNN / GRU / LSTM layers
# ----------------------------------------------------------------------------------------------
LAYER_CONFIGS = {
    "L1": dict(T=4, B=3, L=1),
    "L2-bi-lengths": dict(T=4, B=3, L=2, bi=True, lengths=[3, 0, 4]),
    "L3-batch_first-lengths-no_hx": dict(T=4, B=3, L=3, bf=True, lengths=[2, 4, 1], hx=False),
    "L2-bi-unbatched": dict(T=4, L=2, bi=True, unbatched=True),
    "L2-bi-no_bias-full_lengths": dict(T=3, B=2, L=2, bi=True, bias=False, lengths=[3, 3]),
    # batch_first has no effect on unbatched input (PyTorch's rule)
    "L1-bi-unbatched-batch_first-length": dict(T=5, L=1, bi=True, bf=True, unbatched=True,
                                               lengths=2),
    "L2-bi-batch_first-zero_lengths": dict(T=3, B=2, L=2, bi=True, bf=True, lengths=[0, 0]),
}


@pytest.mark.parametrize("cfg_name", list(LAYER_CONFIGS))
@pytest.mark.parametrize("mode,kw", VARIANTS, ids=VARIANT_IDS)
def test_layer_finite_differences(mode, kw, cfg_name):
    cfg = dict(B=1, bi=False, bf=False, unbatched=False, hx=True, lengths=None, bias=True)
    cfg.update(LAYER_CONFIGS[cfg_name])
    T, B, unbatched, lengths = cfg["T"], cfg["B"], cfg["unbatched"], cfg["lengths"]
    I, H = 2, 3
    rng = np.random.default_rng(_seed((mode, cfg_name)))
    m = make_layer(mode, kw, I, H, num_layers=cfg["L"], bidirectional=cfg["bi"],
                   batch_first=cfg["bf"], bias=cfg["bias"])
    if unbatched:
        x = rng.standard_normal((T, I))
    else:
        x = rng.standard_normal((B, T, I) if cfg["bf"] else (T, B, I))
    hx = random_hx(rng, m, B, unbatched) if cfg["hx"] else zeros_hx(m, B, unbatched)

    m.train()
    out, state = m(x, hx if cfg["hx"] else None, lengths)
    Go, Gh = _like(rng, out), _like(rng, state)
    dx, dhx, grads = m.backward(Go, Gh)
    m.eval()

    assert dx.dtype == np.float64 and dx.shape == x.shape
    pad = padded_mask(T, lengths, cfg["bf"], unbatched)
    if pad is not None:
        assert np.all(dx[pad] == 0), "dx must be exactly 0 at padded positions"

    def loss():
        o, s = m(x, hx, lengths)
        return _dot(o, Go) + _dot(s, Gh)

    checks = [("dx", x, dx)]
    if mode == "LSTM":
        assert isinstance(dhx, tuple) and len(dhx) == 2
        checks += [("dh0", hx[0], dhx[0]), ("dc0", hx[1], dhx[1])]
    else:
        checks += [("dh0", hx, dhx)]
    check_inputs_fd(loss, checks)
    check_params_fd(loss, m.named_parameters(), grads)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode,kw", VARIANTS, ids=VARIANT_IDS)
def test_padded_positions_carry_no_gradient(mode, kw, batch_first):
    """dx is exactly 0 at padded steps and grad_output there changes nothing, bit for bit."""
    T, B, I, H = 5, 4, 3, 3
    lengths = [2, 5, 0, 3]
    rng = np.random.default_rng(5)
    m = make_layer(mode, kw, I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    hx = random_hx(rng, m, B)
    m.train()
    out, state = m(x, hx, lengths)
    Go, Gh = _like(rng, out), _like(rng, state)
    pad = padded_mask(T, lengths, batch_first)
    assert np.all(out[pad] == 0)
    dx, dhx, grads = m.backward(Go, Gh)
    assert np.all(dx[pad] == 0)

    Go2 = Go.copy()
    Go2[pad] = 1e3 * rng.standard_normal(Go2[pad].shape)
    m(x, hx, lengths)
    dx2, dhx2, grads2 = m.backward(Go2, Gh)
    np.testing.assert_array_equal(dx2, dx)
    for a, b in zip(as_tuple(dhx2), as_tuple(dhx)):
        np.testing.assert_array_equal(a, b)
    assert_grads_equal(grads2, grads)

    # x at padded positions is ignored as well: same gradients with garbage there.
    x3 = x.copy()
    x3[pad] = 1e3
    m(x3, hx, lengths)
    dx3, _, grads3 = m.backward(Go, Gh)
    np.testing.assert_array_equal(dx3, dx)
    assert_grads_equal(grads3, grads)


@pytest.mark.parametrize("mode,kw", VARIANTS, ids=VARIANT_IDS)
def test_empty_sequence_backward(mode, kw):
    """T = 0: h_n = h_0, so dh0 = grad_h_n, dx is empty and parameter gradients are 0."""
    rng = np.random.default_rng(1)
    m = make_layer(mode, kw, 2, 3, num_layers=2, bidirectional=True)
    x = np.zeros((0, 2, 2))
    hx = random_hx(rng, m, 2)
    m.train()
    out, state = m(x, hx)
    Gh = _like(rng, state)
    dx, dhx, grads = m.backward(np.zeros(out.shape), Gh)
    assert dx.shape == (0, 2, 2)
    for a, b in zip(as_tuple(dhx), as_tuple(Gh)):
        np.testing.assert_array_equal(a, b)
    for name, p in m.named_parameters():
        assert grads[name].shape == p.shape and not np.any(grads[name])


@pytest.mark.parametrize("mode,kw", [("GRU", {}), ("LSTM", {"proj_size": 2})], ids=["GRU", "LSTM-proj"])
def test_lstm_partial_state_gradients(mode, kw):
    """grad_h_n=None, and for LSTM (dh_n, None) / (None, dc_n): None counts as zero."""
    rng = np.random.default_rng(2)
    m = make_layer(mode, kw, 2, 3, num_layers=2)
    x, hx = rng.standard_normal((3, 2, 2)), random_hx(rng, m, 2)
    m.train()
    out, state = m(x, hx)
    Go, Gh = _like(rng, out), _like(rng, state)
    variants = [(None, None)]
    if mode == "LSTM":
        variants += [((Gh[0], None), (Gh[0], np.zeros_like(Gh[1]))),
                     ((None, Gh[1]), (np.zeros_like(Gh[0]), Gh[1])),
                     ((None, None), (np.zeros_like(Gh[0]), np.zeros_like(Gh[1])))]
        variants[0] = (None, (np.zeros_like(Gh[0]), np.zeros_like(Gh[1])))
    else:
        variants[0] = (None, np.zeros_like(Gh))
    for given, explicit in variants:
        m(x, hx)
        dx_a, dhx_a, g_a = m.backward(Go, given)
        m(x, hx)
        dx_b, dhx_b, g_b = m.backward(Go, explicit)
        np.testing.assert_array_equal(dx_a, dx_b)
        for a, b in zip(as_tuple(dhx_a), as_tuple(dhx_b)):
            np.testing.assert_array_equal(a, b)
        assert_grads_equal(g_a, g_b)


# ----------------------------------------------------------------------------------------------
# finite differences: cells
# ----------------------------------------------------------------------------------------------
CELL_CONFIGS = {
    "batched-hx": dict(bias=True, unbatched=False, hx=True),
    "unbatched-hx-no_bias": dict(bias=False, unbatched=True, hx=True),
    "batched-no_hx": dict(bias=True, unbatched=False, hx=False),
    "unbatched-no_hx": dict(bias=True, unbatched=True, hx=False),
}


@pytest.mark.parametrize("cfg_name", list(CELL_CONFIGS))
@pytest.mark.parametrize("name,kw", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_finite_differences(name, kw, cfg_name):
    cfg = CELL_CONFIGS[cfg_name]
    B, I, H = 3, 3, 4
    rng = np.random.default_rng(_seed((name, cfg_name)))
    cell = getattr(rnnc, name)(I, H, bias=cfg["bias"], **kw, dtype=np.float64, seed=3)
    lead = () if cfg["unbatched"] else (B,)
    x = rng.standard_normal(lead + (I,))
    if cfg["hx"]:
        h = 0.8 * rng.standard_normal(lead + (H,))
    else:
        h = np.zeros(lead + (H,))
    c = 0.8 * rng.standard_normal(lead + (H,)) if cfg["hx"] else np.zeros(lead + (H,))
    hx = (h, c) if name == "LSTMCell" else h

    cell.train()
    res = cell(x, hx if cfg["hx"] else None)
    G = _like(rng, res)
    dx, dhx, grads = cell.backward(G)
    cell.eval()

    def loss():
        return _dot(cell(x, hx), G)

    checks = [("dx", x, dx)]
    if name == "LSTMCell":
        checks += [("dh", h, dhx[0]), ("dc", c, dhx[1])]
    else:
        checks += [("dh", h, dhx)]
    check_inputs_fd(loss, checks)
    check_params_fd(loss, cell.named_parameters(), grads)


def test_lstm_cell_grad_output_forms():
    """LSTMCell.backward takes dh', (dh', dc'), (dh', None) or (None, dc')."""
    rng = np.random.default_rng(4)
    cell = rnnc.LSTMCell(3, 4, dtype=np.float64, seed=0)
    x, h, c = (rng.standard_normal((2, k)) for k in (3, 4, 4))
    dh, dc = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    z = np.zeros((2, 4))
    cell.train()

    def run(g):
        cell(x, (h, c))
        return cell.backward(g)

    for given, explicit in [(dh, (dh, z)), ((dh, None), (dh, z)), ((None, dc), (z, dc)),
                            ([dh, dc], (dh, dc))]:
        a, b = run(given), run(explicit)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1][0], b[1][0])
        np.testing.assert_array_equal(a[1][1], b[1][1])
        assert_grads_equal(a[2], b[2])


# ----------------------------------------------------------------------------------------------
# finite differences: Bidirectional wrapper
# ----------------------------------------------------------------------------------------------
BI_LAYERS = {
    "LSTM-proj-L2-lengths": dict(mode="LSTM", kw={"proj_size": 2}, L=2, bf=False,
                                 lengths=[3, 1, 0], hx=True),
    "GRU-reset_before-batch_first": dict(mode="GRU", kw={"reset_after": False}, L=1, bf=True,
                                         lengths=None, hx=True),
    "RNN-relu-no_hx-lengths": dict(mode="RNN", kw={"nonlinearity": "relu"}, L=1, bf=False,
                                   lengths=[2, 3, 3], hx=False),
}


@pytest.mark.parametrize("layer_name", list(BI_LAYERS))
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_finite_differences(merge_mode, layer_name):
    spec = BI_LAYERS[layer_name]
    T, B, I, H = 3, 3, 2, 3
    rng = np.random.default_rng(_seed((str(merge_mode), layer_name)))
    layer = make_layer(spec["mode"], spec["kw"], I, H, num_layers=spec["L"],
                       batch_first=spec["bf"], seed=11)
    bi = rnnc.Bidirectional(layer, merge_mode=merge_mode)
    x = rng.standard_normal((B, T, I) if spec["bf"] else (T, B, I))
    if spec["hx"]:
        hx = (random_hx(rng, layer, B), random_hx(rng, layer, B))
    else:
        hx = (zeros_hx(layer, B), zeros_hx(layer, B))
    lengths = spec["lengths"]

    bi.train()
    out, states = bi(x, hx if spec["hx"] else None, lengths)
    Go, Gh = _like(rng, out), _like(rng, states)
    dx, (dhx_f, dhx_b), grads = bi.backward(Go, Gh)
    bi.eval()
    assert set(grads) == set(bi.state_dict())
    pad = padded_mask(T, lengths, spec["bf"])
    if pad is not None:
        assert np.all(dx[pad] == 0)

    def loss():
        o, s = bi(x, hx, lengths)
        return _dot(o, Go) + _dot(s, Gh)

    checks = [("dx", x, dx)]
    for tag, h, d in (("fwd", hx[0], dhx_f), ("bwd", hx[1], dhx_b)):
        if spec["mode"] == "LSTM":
            checks += [(f"dh0_{tag}", h[0], d[0]), (f"dc0_{tag}", h[1], d[1])]
        else:
            checks += [(f"dh0_{tag}", h, d)]
    check_inputs_fd(loss, checks)
    check_params_fd(loss, bi.named_parameters(), grads)


# ----------------------------------------------------------------------------------------------
# finite differences: Linear
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 2), (4,)], ids=["TB", "vector"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "tanh", "relu", "sigmoid", "softmax"])
def test_linear_finite_differences(activation, bias, shape):
    rng = np.random.default_rng(_seed((str(activation), bias, shape)))
    I, O = 4, 3
    lin = rnnc.Linear(I, O, bias=bias, activation=activation, dtype=np.float64, seed=0)
    x = rng.standard_normal(shape + (I,) if len(shape) > 1 else (I,))
    lin.train()
    y = lin(x)
    G = rng.standard_normal(y.shape)
    dx, none, grads = lin.backward(G)
    lin.eval()
    assert none is None

    def loss():
        return _dot(lin(x), G)

    check_inputs_fd(loss, [("dx", x, dx)])
    check_params_fd(loss, lin.named_parameters(), grads)


# ----------------------------------------------------------------------------------------------
# grads accumulation and zero_grad
# ----------------------------------------------------------------------------------------------
def _layer_case(rng):
    m = rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64,
                  seed=0)
    fresh = rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64,
                      seed=99).load_state_dict(m.state_dict())

    def step(mod):
        x = rng.standard_normal((4, 2, 3))
        hx = random_hx(rng, mod, 2)
        lengths = [4, 2]
        out_g = rng.standard_normal((4, 2, 4))

        def run(target):
            target.train()
            out, st = target(x, hx, lengths)
            return target.backward(out_g, (np.ones_like(st[0]), None))
        return run
    return m, fresh, step


def _cell_case(rng):
    m = rnnc.GRUCell(3, 4, dtype=np.float64, seed=0)
    fresh = rnnc.GRUCell(3, 4, dtype=np.float64, seed=5).load_state_dict(m.state_dict())

    def step(mod):
        x, h, g = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), \
            rng.standard_normal((2, 4))

        def run(target):
            target.train()
            target(x, h)
            return target.backward(g)
        return run
    return m, fresh, step


def _bi_case(rng):
    m = rnnc.Bidirectional(rnnc.RNN(3, 4, dtype=np.float64, seed=0), merge_mode="mul")
    fresh = rnnc.Bidirectional(rnnc.RNN(3, 4, dtype=np.float64, seed=7), merge_mode="mul")
    fresh.load_state_dict(m.state_dict())

    def step(mod):
        x, g = rng.standard_normal((3, 2, 3)), rng.standard_normal((3, 2, 4))

        def run(target):
            target.train()
            target(x)
            return target.backward(g)
        return run
    return m, fresh, step


def _linear_case(rng):
    m = rnnc.Linear(3, 4, activation="tanh", dtype=np.float64, seed=0)
    fresh = rnnc.Linear(3, 4, activation="tanh", dtype=np.float64, seed=1)
    fresh.load_state_dict(m.state_dict())

    def step(mod):
        x, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))

        def run(target):
            target.train()
            target(x)
            return target.backward(g)
        return run
    return m, fresh, step


@pytest.mark.parametrize("case", [_layer_case, _cell_case, _bi_case, _linear_case],
                         ids=["LSTM", "GRUCell", "Bidirectional", "Linear"])
def test_grads_accumulate_and_zero_grad(case):
    rng = np.random.default_rng(8)
    m, fresh, step = case(rng)
    keys = set(m.state_dict())
    run1, run2, run3 = step(m), step(m), step(m)

    _, _, g1 = run1(m)
    g1_copy = copy_grads(g1)
    assert set(m.grads) == keys
    assert_grads_equal(m.grads, g1)
    _, _, g2 = run2(m)
    # Returned grads are this call's gradient only: those of a fresh module with the same
    # weights on the same data.
    _, _, g2_fresh = run2(fresh)
    assert_grads_equal(g2, g2_fresh, rtol=1e-14, atol=1e-14)
    # m.grads holds the sum; the first call's returned dict is untouched.
    assert_grads_equal(g1, g1_copy)
    assert set(m.grads) == keys
    for k in keys:
        np.testing.assert_allclose(m.grads[k], g1_copy[k] + g2[k], rtol=1e-14, atol=1e-14,
                                   err_msg=k)

    m.zero_grad()
    assert set(m.grads) == keys
    for k, p in m.state_dict().items():
        assert m.grads[k].shape == p.shape and m.grads[k].dtype == p.dtype
        assert not np.any(m.grads[k]), k
    _, _, g3 = run3(m)
    assert_grads_equal(m.grads, g3)


# ----------------------------------------------------------------------------------------------
# parity with torch.autograd
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    """torch (the test is skipped without it), on one thread for the test's duration: on a
    loaded machine torch's spinning worker threads make these tiny problems ~50x slower."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # torch.backends.mkldnn.flags() warns about Intel GPUs on some builds.
            warnings.filterwarnings("ignore", message=".*TF32.*", category=UserWarning)
            yield torch
    finally:
        torch.set_num_threads(threads)


TORCH_GRAD_TOL = {np.dtype(np.float64): dict(rtol=1e-9, atol=1e-9),
                  np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4)}

TORCH_CONFIGS = {
    "RNN-L1": dict(mode="RNN", kw={}, L=1),
    "RNN-relu-L2-bi": dict(mode="RNN", kw={"nonlinearity": "relu"}, L=2, bi=True),
    "GRU-L3-batch_first": dict(mode="GRU", kw={}, L=3, bf=True),
    "LSTM-L2-bi-proj": dict(mode="LSTM", kw={"proj_size": 3}, L=2, bi=True),
    "LSTM-no_bias-batch_first": dict(mode="LSTM", kw={}, L=2, bf=True, bias=False),
    "GRU-bi-unbatched": dict(mode="GRU", kw={}, L=2, bi=True, unbatched=True),
    "LSTM-proj-unbatched-no_hx": dict(mode="LSTM", kw={"proj_size": 2}, L=1, unbatched=True,
                                      hx=False),
    "RNN-L3-bi-lengths": dict(mode="RNN", kw={}, L=3, bi=True, lengths=[3, 7, 1, 5]),
    "GRU-L2-bi-batch_first-lengths": dict(mode="GRU", kw={}, L=2, bi=True, bf=True,
                                          lengths=[2, 2, 7, 4]),
    "LSTM-proj-L2-bi-lengths-no_bias": dict(mode="LSTM", kw={"proj_size": 2}, L=2, bi=True,
                                            bias=False, lengths=[6, 1, 7, 3]),
    "LSTM-batch_first-lengths-no_hx": dict(mode="LSTM", kw={}, L=1, bf=True, hx=False,
                                           lengths=[5, 7, 7, 2]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg_name", list(TORCH_CONFIGS))
def test_layer_backward_matches_torch(torch, cfg_name, dtype):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    cfg = dict(bi=False, bf=False, bias=True, unbatched=False, hx=True, lengths=None)
    cfg.update(TORCH_CONFIGS[cfg_name])
    mode, kw, L, bi, bf = cfg["mode"], cfg["kw"], cfg["L"], cfg["bi"], cfg["bf"]
    T, B, I, H = 7, 4, 3, 5
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    targs = dict(num_layers=L, bias=cfg["bias"], batch_first=bf, bidirectional=bi,
                 dtype=tdtype)
    if mode == "RNN":
        targs["nonlinearity"] = kw.get("nonlinearity", "tanh")
    if mode == "LSTM":
        targs["proj_size"] = kw.get("proj_size", 0)
    tm = getattr(torch.nn, mode)(I, H, **targs)
    m = make_layer(mode, kw, I, H, dtype=dtype, seed=42, num_layers=L, bias=cfg["bias"],
                   batch_first=bf, bidirectional=bi)
    m.load_state_dict(tm.state_dict())

    rng = np.random.default_rng(_seed(cfg_name))
    unbatched = cfg["unbatched"]
    if unbatched:
        x = rng.standard_normal((T, I))
    else:
        x = rng.standard_normal((B, T, I) if bf else (T, B, I))
    x = x.astype(dtype)
    hx = random_hx(rng, m, B, unbatched)
    hx = tuple(a.astype(dtype) for a in hx) if mode == "LSTM" else hx.astype(dtype)
    lengths = cfg["lengths"]

    m.train()
    out, state = m(x, hx if cfg["hx"] else None, lengths)
    Go = rng.standard_normal(out.shape).astype(dtype)
    Gh = tuple(g.astype(dtype) for g in _like(rng, as_tuple(state)))
    Gh_arg = Gh if mode == "LSTM" else Gh[0]
    dx, dhx, grads = m.backward(Go, Gh_arg)

    with torch.backends.mkldnn.flags(enabled=False):
        xt = torch.tensor(x, requires_grad=True)
        hts = [torch.tensor(a, requires_grad=True) for a in as_tuple(hx)]
        thx = None
        if cfg["hx"]:
            thx = tuple(hts) if mode == "LSTM" else hts[0]
        if lengths is not None:
            packed = pack_padded_sequence(xt, torch.tensor(lengths, dtype=torch.int64),
                                          batch_first=bf, enforce_sorted=False)
            out_p, tstate = tm(packed, thx)
            tout, _ = pad_packed_sequence(out_p, batch_first=bf, total_length=T)
        else:
            tout, tstate = tm(xt, thx)
        loss = (tout * torch.from_numpy(Go)).sum()
        for s, g in zip(as_tuple(tstate), Gh):
            loss = loss + (s * torch.from_numpy(g)).sum()
        loss.backward()

    tol = TORCH_GRAD_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol, err_msg="output")
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol, err_msg="dx")
    if cfg["hx"]:
        for name, a, t in zip(("dh0", "dc0"), as_tuple(dhx), hts):
            assert a.dtype == dtype and a.shape == tuple(t.shape)
            np.testing.assert_allclose(a, t.grad.numpy(), **tol, err_msg=name)
    tparams = dict(tm.named_parameters())
    assert set(grads) == set(tparams)
    for name, p in tparams.items():
        assert grads[name].dtype == dtype
        np.testing.assert_allclose(grads[name], p.grad.numpy(), **tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name,kw", [c for c in CELL_VARIANTS if c[1] != {"reset_after": False}]
                         + [("RNNCell", {"bias": False})],
                         ids=["RNNCell-tanh", "RNNCell-relu", "GRUCell", "LSTMCell",
                              "RNNCell-no_bias"])
def test_cell_backward_matches_torch(torch, name, kw, unbatched, dtype):
    B, I, H = 3, 4, 5
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(1)
    tcell = getattr(torch.nn, name)(I, H, **kw, dtype=tdtype)
    cell = getattr(rnnc, name)(I, H, **kw, dtype=dtype, seed=3)
    cell.load_state_dict(tcell.state_dict())
    rng = np.random.default_rng(7)
    lead = () if unbatched else (B,)
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    hs = [rng.standard_normal(lead + (H,)).astype(dtype)
          for _ in range(2 if name == "LSTMCell" else 1)]
    Gs = [rng.standard_normal(lead + (H,)).astype(dtype) for _ in hs]

    cell.train()
    cell(x, tuple(hs) if name == "LSTMCell" else hs[0])
    dx, dhx, grads = cell.backward(tuple(Gs) if name == "LSTMCell" else Gs[0])

    with torch.backends.mkldnn.flags(enabled=False):
        xt = torch.tensor(x, requires_grad=True)
        hts = [torch.tensor(h, requires_grad=True) for h in hs]
        res = tcell(xt, tuple(hts) if name == "LSTMCell" else hts[0])
        loss = sum((r * torch.from_numpy(g)).sum() for r, g in zip(as_tuple(res), Gs))
        loss.backward()

    tol = TORCH_GRAD_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol, err_msg="dx")
    for a, t in zip(as_tuple(dhx), hts):
        assert a.shape == tuple(t.shape)
        np.testing.assert_allclose(a, t.grad.numpy(), **tol)
    tparams = dict(tcell.named_parameters())
    assert set(grads) == set(tparams)
    for pname, p in tparams.items():
        np.testing.assert_allclose(grads[pname], p.grad.numpy(), **tol, err_msg=pname)


# ----------------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^(.*)_l(\d+)(_reverse)?$")


def single_layers(m):
    """One 1-layer, dropout-free module per layer of m, with that layer's weights, and for each
    a map from the sub-module's parameter names to m's."""
    D, P = m.num_directions, m.proj_size or m.hidden_size
    opts = dict(num_layers=1, bias=m.bias, batch_first=m.batch_first,
                bidirectional=m.bidirectional, dtype=m.dtype, seed=0)
    if m.mode == "RNN":
        opts["nonlinearity"] = m.nonlinearity
    if m.mode == "GRU":
        opts["reset_after"] = m.reset_after
    if m.mode == "LSTM":
        opts["proj_size"] = m.proj_size
    subs, names = [], []
    for k in range(m.num_layers):
        sub = type(m)(m.input_size if k == 0 else D * P, m.hidden_size, **opts)
        sd, nm = {}, {}
        for name, arr in m.named_parameters():
            base, layer, rev = _LAYER_RE.match(name).groups()
            if int(layer) == k:
                sub_name = f"{base}_l0{rev or ''}"
                sd[sub_name] = arr
                nm[sub_name] = name
        sub.load_state_dict(sd)
        subs.append(sub)
        names.append(nm)
    return subs, names


def run_layers(subs, x, hx, lengths, masks, batch_first, mode, D):
    """The stack recomputed one layer at a time, masks (T, B, D*P) multiplying the input of
    layers 1..L-1."""
    inp, hs, cs = x, [], []
    for k, sub in enumerate(subs):
        if k > 0 and masks is not None:
            mk = masks[k - 1]
            inp = inp * (mk.transpose(1, 0, 2) if batch_first else mk)
        sl = slice(k * D, (k + 1) * D)
        if hx is None:
            hk = None
        elif mode == "LSTM":
            hk = (hx[0][sl], hx[1][sl])
        else:
            hk = hx[sl]
        inp, st = sub(inp, hk, lengths)
        hs.append(as_tuple(st)[0])
        if mode == "LSTM":
            cs.append(st[1])
    h_n = np.concatenate(hs, axis=0)
    return inp, ((h_n, np.concatenate(cs, axis=0)) if mode == "LSTM" else h_n)


DROPOUT_VARIANTS = [("RNN", {}), ("GRU", {}), ("LSTM", {"proj_size": 2})]
DROPOUT_IDS = ["RNN", "GRU", "LSTM-proj"]


@pytest.mark.parametrize("mode,kw", DROPOUT_VARIANTS, ids=DROPOUT_IDS)
def test_dropout_same_seed_same_result(mode, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2))
    a = make_layer(mode, kw, 2, 3, seed=7, num_layers=3, dropout=0.5, bidirectional=True)
    b = make_layer(mode, kw, 2, 3, seed=7, num_layers=3, dropout=0.5, bidirectional=True)
    a.train()
    b.train()
    out_a, st_a = a(x)
    masks_a = [mk.copy() for mk in a._cache[0].dropout_masks]
    out_b, st_b = b(x)
    np.testing.assert_array_equal(out_a, out_b)
    for u, v in zip(as_tuple(st_a), as_tuple(st_b)):
        np.testing.assert_array_equal(u, v)
    assert len(masks_a) == 2
    P = 2 if mode == "LSTM" else 3
    for ma, mb in zip(masks_a, b._cache[0].dropout_masks):
        assert ma.shape == (5, 3, 2 * P)
        np.testing.assert_array_equal(ma, mb)
        assert set(np.unique(ma)) <= {0.0, 2.0}
    # The generator moves on: the next training forward draws other masks.
    a(x)
    assert any(not np.array_equal(m1, m2)
               for m1, m2 in zip(masks_a, a._cache[0].dropout_masks))
    # And the dropout actually changes the output relative to inference.
    a.eval()
    assert not np.allclose(a(x)[0], out_a)


@pytest.mark.parametrize("mode,kw", DROPOUT_VARIANTS, ids=DROPOUT_IDS)
def test_dropout_off_in_eval(mode, kw):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 2))
    a = make_layer(mode, kw, 2, 3, seed=7, num_layers=3, dropout=0.5)
    ref = make_layer(mode, kw, 2, 3, seed=8, num_layers=3, dropout=0.0)
    ref.load_state_dict(a.state_dict())
    a.train()
    a(x)                 # a training forward first: eval must not keep anything of it
    a.eval()
    out, st = a(x, lengths=[5, 2, 4])
    out_r, st_r = ref(x, lengths=[5, 2, 4])
    np.testing.assert_array_equal(out, out_r)
    for u, v in zip(as_tuple(st), as_tuple(st_r)):
        np.testing.assert_array_equal(u, v)
    # and a dropout=0 module in training mode computes the inference result
    ref.train()
    out_t, _ = ref(x, lengths=[5, 2, 4])
    assert ref._cache[0].dropout_masks is None
    np.testing.assert_allclose(out_t, out_r, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode,kw", DROPOUT_VARIANTS, ids=DROPOUT_IDS)
def test_dropout_forward_and_finite_differences_with_fixed_masks(mode, kw, batch_first):
    T, B, I, H = 4, 3, 2, 3
    lengths = [4, 1, 3]
    rng = np.random.default_rng(2 + batch_first)
    m = make_layer(mode, kw, I, H, seed=5, num_layers=3, bidirectional=True, dropout=0.5,
                   batch_first=batch_first)
    D = 2
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    hx = random_hx(rng, m, B)
    m.train()
    out, state = m(x, hx, lengths)
    masks = [mk.copy() for mk in m._cache[0].dropout_masks]
    assert len(masks) == 2
    assert all(mk.shape == (T, B, D * (m.proj_size or H)) for mk in masks)
    assert any(not np.all(mk) for mk in masks)   # something is actually dropped
    Go, Gh = _like(rng, out), _like(rng, state)
    dx, dhx, grads = m.backward(Go, Gh)
    m.eval()

    subs, names = single_layers(m)
    out_l, state_l = run_layers(subs, x, hx, lengths, masks, batch_first, mode, D)
    np.testing.assert_allclose(out, out_l, rtol=1e-12, atol=1e-12)
    for u, v in zip(as_tuple(state), as_tuple(state_l)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)

    def loss():
        o, s = run_layers(subs, x, hx, lengths, masks, batch_first, mode, D)
        return _dot(o, Go) + _dot(s, Gh)

    checks = [("dx", x, dx)]
    if mode == "LSTM":
        checks += [("dh0", hx[0], dhx[0]), ("dc0", hx[1], dhx[1])]
    else:
        checks += [("dh0", hx, dhx)]
    check_inputs_fd(loss, checks)
    for sub, nm in zip(subs, names):
        check_params_fd(loss, sub.named_parameters(), {k: grads[v] for k, v in nm.items()})
    covered = {v for nm in names for v in nm.values()}
    assert covered == set(grads)


# ----------------------------------------------------------------------------------------------
# truncated / full BPTT over chunks
# ----------------------------------------------------------------------------------------------
TBPTT_VARIANTS = [("RNN", {}), ("GRU", {"reset_after": False}), ("LSTM", {"proj_size": 2})]
CHUNKS = [(0, 2), (2, 5), (5, 7)]


def _chunk_setup(mode, kw):
    rng = np.random.default_rng(9)
    T, B, I, H = 7, 2, 3, 4
    m = make_layer(mode, kw, I, H, seed=1, num_layers=2)
    x = rng.standard_normal((T, B, I))
    hx = random_hx(rng, m, B)
    Go = rng.standard_normal((T, B, m.proj_size or H))
    Gh = _like(rng, hx)
    return m, x, hx, Go, Gh


@pytest.mark.parametrize("mode,kw", TBPTT_VARIANTS, ids=["RNN", "GRU-reset_before", "LSTM-proj"])
def test_truncated_bptt_last_chunk(mode, kw):
    m, x, hx, Go, _ = _chunk_setup(mode, kw)
    m.train()
    m.zero_grad()
    state, per_chunk = hx, []
    for a, b in CHUNKS:
        out, new_state = m(x[a:b], state)
        res = m.backward(Go[a:b])
        per_chunk.append((state, res))
        state = new_state                # carried as plain arrays
    carried, (dx, dhx, grads) = per_chunk[-1]

    fresh = make_layer(mode, kw, 3, 4, seed=77, num_layers=2).load_state_dict(m.state_dict())
    fresh.train()
    a, b = CHUNKS[-1]
    fresh(x[a:b], carried)
    dx_f, dhx_f, grads_f = fresh.backward(Go[a:b])
    np.testing.assert_allclose(dx, dx_f, rtol=1e-14, atol=1e-14)
    for u, v in zip(as_tuple(dhx), as_tuple(dhx_f)):
        np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-14)
    assert_grads_equal(grads, grads_f, rtol=1e-14, atol=1e-14)
    # m.grads accumulated all chunks
    for k in grads:
        total = sum(r[2][k] for _, r in per_chunk)
        np.testing.assert_allclose(m.grads[k], total, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("mode,kw", TBPTT_VARIANTS, ids=["RNN", "GRU-reset_before", "LSTM-proj"])
def test_full_bptt_over_chunks_equals_whole_sequence(mode, kw):
    m, x, hx, Go, Gh = _chunk_setup(mode, kw)
    m.train()
    out_full, st_full = m(x, hx)
    dx_full, dhx_full, grads_full = m.backward(Go, Gh)

    # Forward chunk by chunk, keeping each chunk's initial state.
    starts, state, outs = [], hx, []
    for a, b in CHUNKS:
        starts.append(state)
        out, state = m(x[a:b], state)
        m.backward(np.zeros_like(out))   # consume the cache; only the states matter here
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs), out_full, rtol=1e-13, atol=1e-13)
    for u, v in zip(as_tuple(state), as_tuple(st_full)):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-13)

    # Backward in reverse, re-running each chunk's forward; dhx of chunk k+1 is chunk k's
    # grad_h_n.
    m.zero_grad()
    g_next, dxs, total = Gh, [None] * len(CHUNKS), None
    for i in reversed(range(len(CHUNKS))):
        a, b = CHUNKS[i]
        m(x[a:b], starts[i])
        dxs[i], g_next, grads = m.backward(Go[a:b], g_next)
        total = copy_grads(grads) if total is None else \
            {k: total[k] + grads[k] for k in total}
    np.testing.assert_allclose(np.concatenate(dxs), dx_full, rtol=1e-10, atol=1e-10)
    for u, v in zip(as_tuple(g_next), as_tuple(dhx_full)):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-10)
    assert_grads_equal(total, grads_full, rtol=1e-10, atol=1e-10)
    assert_grads_equal(m.grads, grads_full, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# error paths
# ----------------------------------------------------------------------------------------------
def _modules():
    return {
        "RNN": (rnnc.RNN(3, 4, seed=0), np.ones((2, 2, 3), np.float32)),
        "LSTM": (rnnc.LSTM(3, 4, proj_size=2, seed=0), np.ones((2, 2, 3), np.float32)),
        "GRUCell": (rnnc.GRUCell(3, 4, seed=0), np.ones((2, 3), np.float32)),
        "LSTMCell": (rnnc.LSTMCell(3, 4, seed=0), np.ones((2, 3), np.float32)),
        "Bidirectional": (rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0)),
                          np.ones((2, 2, 3), np.float32)),
        "Linear": (rnnc.Linear(3, 4, seed=0), np.ones((2, 3), np.float32)),
    }


def _output_of(res):
    """The first output of a forward: layer (out, state), cell h' or (h', c'), Linear y."""
    if isinstance(res, tuple):
        return res[0]
    return res


MODULE_NAMES = list(_modules())


def _grad_for(name, res):
    out = _output_of(res)
    return np.ones_like(out)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_backward_before_any_forward_raises(name):
    m, _ = _modules()[name]
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(np.ones((2, 2, 4), np.float32))
    m.train()
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(np.ones((2, 2, 4), np.float32))


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_backward_twice_raises(name):
    m, x = _modules()[name]
    m.train()
    g = _grad_for(name, m(x))
    m.backward(g)
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(g)
    # a new forward makes backward possible again
    m(x)
    m.backward(g)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_backward_after_eval_forward_raises(name):
    m, x = _modules()[name]
    m.train()
    g = _grad_for(name, m(x))
    m.eval()
    m(x)
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(g)
    # eval() alone drops what a training forward kept
    m.train()
    m(x)
    m.eval()
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(g)
    # never trained at all
    m2, _ = _modules()[name]
    m2(x)
    with pytest.raises(RuntimeError, match="backward"):
        m2.backward(g)


def _shape_error(expected, got, name="grad_output"):
    return re.escape(name) + ".*" + re.escape(str(tuple(expected))) + ".*" + \
        re.escape(str(tuple(got)))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_wrong_grad_output_shape(mode, batch_first):
    m = getattr(rnnc, mode)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                            seed=0)
    x = np.ones((2, 5, 3) if batch_first else (5, 2, 3), np.float32)
    m.train()
    out, state = m(x)
    for bad in [out.shape[:-1] + (4,), out.shape[::-1], out.shape[:-1],
                (out.shape[1], out.shape[0], out.shape[2])]:
        with pytest.raises(ValueError, match=_shape_error(out.shape, bad)):
            m.backward(np.ones(bad, np.float32))
    # the failed calls consumed nothing: a correct backward still works
    dx, _, _ = m.backward(np.ones_like(out))
    assert dx.shape == x.shape


def test_wrong_grad_output_shape_unbatched_cell_linear():
    m = rnnc.GRU(3, 4, seed=0).train()
    out, _ = m(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match=_shape_error((5, 4), (5, 1, 4))):
        m.backward(np.ones((5, 1, 4), np.float32))
    cell = rnnc.RNNCell(3, 4, seed=0).train()
    cell(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=_shape_error((2, 4), (2, 5))):
        cell.backward(np.ones((2, 5), np.float32))
    lcell = rnnc.LSTMCell(3, 4, seed=0).train()
    lcell(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dc'.*\(2, 4\).*\(2, 3\)"):
        lcell.backward((np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)))
    lin = rnnc.Linear(3, 4, seed=0).train()
    lin(np.ones((6, 3), np.float32))
    with pytest.raises(ValueError, match=_shape_error((6, 4), (6, 3))):
        lin.backward(np.ones((6, 3), np.float32))


@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_wrong_grad_h_n_shape(mode):
    m = getattr(rnnc, mode)(3, 4, num_layers=2, seed=0).train()
    out, state = m(np.ones((5, 2, 3), np.float32))
    h_n = as_tuple(state)[0]
    bad = np.ones((2, 2, 5), np.float32)
    with pytest.raises(ValueError, match=_shape_error(h_n.shape, bad.shape, "grad_h_n")):
        m.backward(np.ones_like(out), (bad, None) if mode == "LSTM" else bad)
    if mode == "LSTM":
        with pytest.raises(ValueError, match=_shape_error(state[1].shape, bad.shape,
                                                          "grad_c_n")):
            m.backward(np.ones_like(out), (None, bad))
    dx, _, _ = m.backward(np.ones_like(out), None)
    assert dx.shape == (5, 2, 3)


def test_lstm_grad_h_n_not_a_pair():
    m = rnnc.LSTM(3, 4, seed=0).train()
    out, (h_n, c_n) = m(np.ones((5, 2, 3), np.float32))
    for bad in [h_n, (h_n,), (h_n, c_n, c_n)]:
        with pytest.raises(TypeError, match="grad_h_n"):
            m.backward(np.ones_like(out), bad)


def test_bidirectional_grad_errors():
    bi = rnnc.Bidirectional(rnnc.LSTM(3, 4, seed=0), merge_mode="concat").train()
    out, _ = bi(np.ones((5, 2, 3), np.float32))
    assert out.shape == (5, 2, 8)
    with pytest.raises(ValueError, match=_shape_error((5, 2, 8), (5, 2, 4))):
        bi.backward(np.ones((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        bi.backward(np.ones((5, 2, 9), np.float32))
    dx, _, _ = bi.backward(np.ones((5, 2, 8), np.float32))
    assert dx.shape == (5, 2, 3)

    bi = rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0), merge_mode=None).train()
    out, _ = bi(np.ones((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="grad_output"):
        bi.backward(np.ones((5, 2, 4), np.float32))
    bi = rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0), merge_mode="sum").train()
    bi(np.ones((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=_shape_error((5, 2, 4), (5, 2, 8))):
        bi.backward(np.ones((5, 2, 8), np.float32))


def _arrays(obj):
    if obj is None:
        return []
    if isinstance(obj, (tuple, list)):
        return [a for o in obj for a in _arrays(o)]
    return [obj]


@pytest.mark.parametrize("name", ["GRU-lengths", "LSTM-proj", "LSTM-batch_first", "GRUCell",
                                  "LSTMCell", "Bidirectional-mul", "Linear"])
def test_backward_does_not_modify_arguments(name):
    """Neither forward nor backward writes into the caller's arrays (x, hx, grad_output,
    grad_h_n) or into the results of the forward (out, h_n, c_n) or the parameters."""
    rng = np.random.default_rng(_seed(name))
    lengths, hx = None, None
    if name == "GRU-lengths":
        m = rnnc.GRU(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
        x, lengths = rng.standard_normal((3, 2, 3)), [1, 3]
        hx = random_hx(rng, m, 2)
    elif name.startswith("LSTM-"):
        bf = name == "LSTM-batch_first"
        m = rnnc.LSTM(3, 4, num_layers=2, proj_size=0 if bf else 2, batch_first=bf,
                      dtype=np.float64, seed=0)
        x = rng.standard_normal((3, 2, 3))
        hx = random_hx(rng, m, 2 if not bf else 3)
    elif name == "GRUCell":
        m = rnnc.GRUCell(3, 4, dtype=np.float64, seed=0)
        x, hx = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    elif name == "LSTMCell":
        m = rnnc.LSTMCell(3, 4, dtype=np.float64, seed=0)
        x, hx = rng.standard_normal((2, 3)), (rng.standard_normal((2, 4)),
                                              rng.standard_normal((2, 4)))
    elif name == "Bidirectional-mul":
        m = rnnc.Bidirectional(rnnc.LSTM(3, 4, dtype=np.float64, seed=0), merge_mode="mul")
        x = rng.standard_normal((3, 2, 3))
        hx = (random_hx(rng, m.forward_layer, 2), random_hx(rng, m.backward_layer, 2))
    else:
        m = rnnc.Linear(3, 4, activation="softmax", dtype=np.float64, seed=0)
        x = rng.standard_normal((3, 2, 3))
    params = copy_grads(m.state_dict())
    args_before = [a.copy() for a in _arrays((x, hx))]
    m.train()
    if name == "Linear":
        res = m(x)
    elif "Cell" in name:
        res = m(x, hx)
    else:
        res = m(x, hx, lengths)
    res_before = [a.copy() for a in _arrays(res)]
    if name == "Linear" or "Cell" in name:
        g, gh = _like(rng, res), None
    else:
        g, gh = _like(rng, res[0]), _like(rng, res[1])
    g_before = [a.copy() for a in _arrays((g, gh))]
    m.backward(g, gh)
    for before, after in [(args_before, _arrays((x, hx))), (res_before, _arrays(res)),
                          (g_before, _arrays((g, gh)))]:
        assert len(before) == len(after)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
    assert_grads_equal(m.state_dict(), params)


@pytest.mark.parametrize("case", ["LSTM-grad_c_n", "GRU-grad_output", "LSTMCell-dc",
                                  "Linear-grad_output", "Bidirectional-grad_h_n-backward",
                                  "Bidirectional-None-grad_output-backward"])
def test_rejected_backward_changes_nothing(case):
    """A backward call refused with ValueError has no effect: the forward's buffers are still
    there (a correct backward then works and gives the same result as on a fresh module) and
    nothing was added to .grads."""
    rng = np.random.default_rng(_seed(case))
    x3, x2 = rng.standard_normal((4, 2, 3)), rng.standard_normal((2, 3))

    def build(seed_shift=0):
        if case.startswith("LSTM-"):
            return rnnc.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0), x3
        if case.startswith("GRU-"):
            return rnnc.GRU(3, 4, bidirectional=True, dtype=np.float64, seed=0), x3
        if case.startswith("LSTMCell"):
            return rnnc.LSTMCell(3, 4, dtype=np.float64, seed=0), x2
        if case.startswith("Linear"):
            return rnnc.Linear(3, 4, activation="sigmoid", dtype=np.float64, seed=0), x2
        mm = None if "None" in case else "concat"
        return rnnc.Bidirectional(rnnc.GRU(3, 4, dtype=np.float64, seed=0),
                                  merge_mode=mm), x3

    m, x = build()
    m.train()
    res = m(x)
    if case == "LSTM-grad_c_n":
        good = (rng.standard_normal(res[0].shape), (None, rng.standard_normal((2, 2, 4))))
        bad = (good[0], (None, np.ones((2, 2, 5))))
    elif case == "GRU-grad_output":
        good = (rng.standard_normal(res[0].shape), None)
        bad = (np.ones((4, 2, 4)), None)
    elif case == "LSTMCell-dc":
        good = ((rng.standard_normal((2, 4)), rng.standard_normal((2, 4))),)
        bad = ((good[0][0], np.ones((2, 5))),)
    elif case == "Linear-grad_output":
        good = (rng.standard_normal((2, 4)),)
        bad = (np.ones((2, 5)),)
    elif case == "Bidirectional-grad_h_n-backward":
        out, (hf, hb) = res
        good = (rng.standard_normal(out.shape), (np.ones_like(hf), np.ones_like(hb)))
        bad = (good[0], (np.ones_like(hf), np.ones((1, 2, 5))))       # backward half wrong
    else:
        (of, ob), _ = res
        good = ((rng.standard_normal(of.shape), rng.standard_normal(ob.shape)),)
        bad = ((good[0][0], np.ones((4, 2, 5))),)                      # backward half wrong
    with pytest.raises(ValueError):
        m.backward(*bad)
    assert all(not np.any(g) for g in m.grads.values()), \
        f"a rejected backward added to .grads: {sorted(m.grads)}"
    dx, _, grads = m.backward(*good)           # the forward's buffers are still usable

    ref, _ = build()
    ref.train()
    ref(x)
    dx_ref, _, grads_ref = ref.backward(*good)
    np.testing.assert_array_equal(dx, dx_ref)
    assert_grads_equal(grads, grads_ref)
    assert_grads_equal(m.grads, grads_ref)
