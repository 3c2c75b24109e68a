"""Check rnnc/reference.py (the NumPy specification) against PyTorch.

Every function of the reference is compared with its torch counterpart:
cells against torch.nn.RNNCell / GRUCell / LSTMCell (and a one-step
torch.nn.LSTM for the projection), ``run_stack`` against torch.nn.RNN / GRU /
LSTM, with variable lengths compared against packed sequences.  GRU with
reset_after=False has no torch counterpart and is checked against a
hand-written step instead.
"""

import importlib.util
import itertools
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402


def _load_reference():
    """Import reference.py by path (works while the compiled package is mid-build);
    fall back to the installed ``rnnc.reference``."""
    path = pathlib.Path(__file__).resolve().parents[1] / "rnnc" / "reference.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("rnnc_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from rnnc import reference as module
    return module


ref = _load_reference()

# The reference must be warning-free, including with NaN/inf padding.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.fixture(autouse=True, scope="module")
def _torch_native_kernels():
    """Use torch's native ATen RNN kernels, not oneDNN: oneDNN builds a new primitive for
    every shape (seconds for this many small cases) and cannot do LSTM projections anyway."""
    flags = torch.backends.mkldnn.flags(enabled=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TF32 acceleration on top of oneDNN ..." notice
        flags.__enter__()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.__exit__(None, None, None)

TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-10),
    np.float32: dict(rtol=1e-5, atol=1e-5),
}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
DTYPES = [np.float64, np.float32]
SEEDS = [0, 1, 2]


def assert_close(actual, expected, dtype):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def to_np(t):
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------
# sigmoid
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_matches_torch_and_is_quiet(dtype):
    x = np.concatenate([np.linspace(-20, 20, 101), [-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4]])
    x = x.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ref.sigmoid(x)
    expected = to_np(torch.sigmoid(torch.from_numpy(x)))
    assert_close(y, expected, dtype)
    assert np.all(np.isfinite(y))
    assert y[-1] == 1 and y[-7] == 0


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

def _cell_params(cell, dtype):
    sd = {k: to_np(v).astype(dtype) for k, v in cell.state_dict().items()}
    return sd["weight_ih"], sd["weight_hh"], sd.get("bias_ih"), sd.get("bias_hh")


def _shapes(rng):
    return int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 6))  # B, I, H


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("seed", SEEDS)
def test_rnn_cell(seed, nonlinearity, bias, dtype):
    rng = np.random.default_rng(seed)
    B, I, H = _shapes(rng)
    torch.manual_seed(seed)
    cell = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity).to(TORCH_DTYPE[dtype])
    w_ih, w_hh, b_ih, b_hh = _cell_params(cell, dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    got = ref.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity)
    expected = to_np(cell(torch.from_numpy(x), torch.from_numpy(h)))
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_gru_cell(seed, bias, dtype):
    rng = np.random.default_rng(seed)
    B, I, H = _shapes(rng)
    torch.manual_seed(seed)
    cell = torch.nn.GRUCell(I, H, bias=bias).to(TORCH_DTYPE[dtype])
    w_ih, w_hh, b_ih, b_hh = _cell_params(cell, dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    got = ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)  # reset_after=True is the default
    expected = to_np(cell(torch.from_numpy(x), torch.from_numpy(h)))
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_lstm_cell(seed, bias, dtype):
    rng = np.random.default_rng(seed)
    B, I, H = _shapes(rng)
    torch.manual_seed(seed)
    cell = torch.nn.LSTMCell(I, H, bias=bias).to(TORCH_DTYPE[dtype])
    w_ih, w_hh, b_ih, b_hh = _cell_params(cell, dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    c = rng.standard_normal((B, H)).astype(dtype)
    got_h, got_c = ref.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    exp_h, exp_c = cell(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    assert_close(got_h, to_np(exp_h), dtype)
    assert_close(got_c, to_np(exp_c), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_lstm_cell_projection(seed, bias, dtype):
    # torch has no LSTMCell with projection; use a one-step, one-layer nn.LSTM.
    rng = np.random.default_rng(seed)
    B, I = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    H = int(rng.integers(2, 6))
    P = int(rng.integers(1, H))
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, bias=bias, proj_size=P).to(TORCH_DTYPE[dtype])
    sd = {k: to_np(v).astype(dtype) for k, v in lstm.state_dict().items()}
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, P)).astype(dtype)
    c = rng.standard_normal((B, H)).astype(dtype)
    got_h, got_c = ref.lstm_cell(x, h, c, sd["weight_ih_l0"], sd["weight_hh_l0"],
                                 sd.get("bias_ih_l0"), sd.get("bias_hh_l0"), w_hr=sd["weight_hr_l0"])
    _, (exp_h, exp_c) = lstm(torch.from_numpy(x)[None],
                             (torch.from_numpy(h)[None], torch.from_numpy(c)[None]))
    assert got_h.shape == (B, P) and got_c.shape == (B, H)
    assert_close(got_h, to_np(exp_h[0]), dtype)
    assert_close(got_c, to_np(exp_c[0]), dtype)


# ---------------------------------------------------------------------------
# GRU reset_after=False (no torch counterpart): hand-derived step
# ---------------------------------------------------------------------------

def _hand_gru_step_reset_before(x, h, w_ih, w_hh, b_ih, b_hh):
    """Cho et al. GRU written out element by element-ish, independently of the reference."""
    H = h.shape[-1]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    r = sig(x @ w_ih[:H].T + b_ih[:H] + h @ w_hh[:H].T + b_hh[:H])
    z = sig(x @ w_ih[H:2 * H].T + b_ih[H:2 * H] + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
    # n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
    n = np.tanh(x @ w_ih[2 * H:].T + b_ih[2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
    return (1 - z) * n + z * h


def _tiny_gru_case(dtype):
    rng = np.random.default_rng(123)
    B, I, H = 2, 3, 2
    w_ih = rng.uniform(-1, 1, (3 * H, I)).astype(dtype)
    w_hh = rng.uniform(-1, 1, (3 * H, H)).astype(dtype)
    b_ih = rng.uniform(-1, 1, (3 * H,)).astype(dtype)
    b_hh = rng.uniform(-1, 1, (3 * H,)).astype(dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    return x, h, w_ih, w_hh, b_ih, b_hh


def test_gru_reset_before_scalar_by_hand():
    # H = 1, I = 1, B = 1: every quantity is a number that can be followed on paper.
    s = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    x, h = 0.5, -0.8
    Wir, Wiz, Win = 0.3, -0.6, 0.9
    Whr, Whz, Whn = 0.7, 0.2, -1.1
    bir, biz, bin_ = 0.1, -0.2, 0.05
    bhr, bhz, bhn = -0.3, 0.4, 0.25
    r = s(Wir * x + bir + Whr * h + bhr)
    z = s(Wiz * x + biz + Whz * h + bhz)
    n_before = np.tanh(Win * x + bin_ + Whn * (r * h) + bhn)
    n_after = np.tanh(Win * x + bin_ + r * (Whn * h + bhn))
    expected_before = (1 - z) * n_before + z * h
    expected_after = (1 - z) * n_after + z * h

    arr = lambda *v: np.array(v, dtype=np.float64)  # noqa: E731
    args = (arr(x)[None], arr(h)[None], arr(Wir, Wiz, Win)[:, None], arr(Whr, Whz, Whn)[:, None],
            arr(bir, biz, bin_), arr(bhr, bhz, bhn))
    got_before = ref.gru_cell(*args, reset_after=False)
    got_after = ref.gru_cell(*args, reset_after=True)
    np.testing.assert_allclose(got_before[0, 0], expected_before, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(got_after[0, 0], expected_after, rtol=1e-14, atol=1e-14)
    assert abs(got_before[0, 0] - got_after[0, 0]) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_cell_reset_before_by_hand(dtype):
    x, h, w_ih, w_hh, b_ih, b_hh = _tiny_gru_case(dtype)
    got = ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, reset_after=False)
    expected = _hand_gru_step_reset_before(x, h, w_ih, w_hh, b_ih, b_hh)
    assert_close(got, expected.astype(dtype), dtype)
    after = ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, reset_after=True)
    assert np.max(np.abs(got - after)) > 1e-3

    # Without biases the two variants still differ (W_hn (r*h) != r * (W_hn h) in general).
    nb = ref.gru_cell(x, h, w_ih, w_hh, reset_after=False)
    zeros = np.zeros_like(b_ih)
    assert_close(nb, _hand_gru_step_reset_before(x, h, w_ih, w_hh, zeros, zeros).astype(dtype), dtype)
    assert np.max(np.abs(nb - ref.gru_cell(x, h, w_ih, w_hh, reset_after=True))) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_run_stack_gru_reset_before_by_hand(dtype):
    # Two time steps, one layer, forward and bidirectional, checked against chained hand steps.
    rng = np.random.default_rng(7)
    T, B, I, H = 3, 2, 3, 2
    params = {}
    for sfx in ("", "_reverse"):
        params[f"weight_ih_l0{sfx}"] = rng.uniform(-1, 1, (3 * H, I)).astype(dtype)
        params[f"weight_hh_l0{sfx}"] = rng.uniform(-1, 1, (3 * H, H)).astype(dtype)
        params[f"bias_ih_l0{sfx}"] = rng.uniform(-1, 1, (3 * H,)).astype(dtype)
        params[f"bias_hh_l0{sfx}"] = rng.uniform(-1, 1, (3 * H,)).astype(dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2, B, H)).astype(dtype)

    def p(sfx):
        return (params[f"weight_ih_l0{sfx}"], params[f"weight_hh_l0{sfx}"],
                params[f"bias_ih_l0{sfx}"], params[f"bias_hh_l0{sfx}"])

    fwd, h = [], h0[0]
    for t in range(T):
        h = _hand_gru_step_reset_before(x[t], h, *p(""))
        fwd.append(h)
    bwd, hb = [None] * T, h0[1]
    for t in reversed(range(T)):
        hb = _hand_gru_step_reset_before(x[t], hb, *p("_reverse"))
        bwd[t] = hb
    expected_out = np.concatenate([np.stack(fwd), np.stack(bwd)], axis=2).astype(dtype)

    out, h_n, c_n = ref.run_stack("GRU", params, x, h0, bidirectional=True, reset_after=False)
    assert c_n is None
    assert_close(out, expected_out, dtype)
    assert_close(h_n, np.stack([h, hb]).astype(dtype), dtype)

    out_after, _, _ = ref.run_stack("GRU", params, x, h0, bidirectional=True, reset_after=True)
    assert np.max(np.abs(out - out_after)) > 1e-3


# ---------------------------------------------------------------------------
# run_stack against torch.nn.RNN / GRU / LSTM
# ---------------------------------------------------------------------------

# (mode, nonlinearity, use_proj)
VARIANTS = [
    ("RNN", "tanh", False),
    ("RNN", "relu", False),
    ("GRU", "tanh", False),
    ("LSTM", "tanh", False),
    ("LSTM", "tanh", True),
]


def _make_torch(mode, I, H, num_layers, bidirectional, bias, nonlinearity, proj_size, dtype):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    if mode == "RNN":
        net = torch.nn.RNN(I, H, nonlinearity=nonlinearity, **kwargs)
    elif mode == "GRU":
        net = torch.nn.GRU(I, H, **kwargs)
    else:
        net = torch.nn.LSTM(I, H, proj_size=proj_size, **kwargs)
    net = net.to(TORCH_DTYPE[dtype])
    # Spread the weights a little wider than torch's default init so that the
    # nonlinearities are exercised beyond their linear region.
    with torch.no_grad():
        for w in net.parameters():
            w.mul_(2.0)
    params = {k: to_np(v).astype(dtype).copy() for k, v in net.state_dict().items()}
    return net, params


def _random_case(rng, mode, use_proj, num_layers, bidirectional, dtype, varlen, given_init):
    T = int(rng.integers(1, 6))
    B = int(rng.integers(1, 5))
    I = int(rng.integers(1, 5))
    H = int(rng.integers(2, 5))
    P = int(rng.integers(1, H)) if use_proj else 0
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hP = P or H
    if given_init:
        h0 = (0.8 * rng.standard_normal((D * num_layers, B, hP))).astype(dtype)
        c0 = (0.8 * rng.standard_normal((D * num_layers, B, H))).astype(dtype) if mode == "LSTM" else None
    else:
        h0 = np.zeros((D * num_layers, B, hP), dtype=dtype)
        c0 = np.zeros((D * num_layers, B, H), dtype=dtype) if mode == "LSTM" else None
    lengths = rng.integers(1, T + 1, size=B) if varlen else None
    return T, B, I, H, P, x, h0, c0, lengths


def _torch_forward(net, mode, x, h0, c0, lengths):
    tx = torch.from_numpy(x)
    hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if mode == "LSTM" else torch.from_numpy(h0)
    with torch.no_grad():
        if lengths is None:
            out, hn = net(tx, hx)
        else:
            packed = pack_padded_sequence(tx, torch.as_tensor(lengths, dtype=torch.int64),
                                          enforce_sorted=False)
            out_packed, hn = net(packed, hx)
            out, _ = pad_packed_sequence(out_packed, total_length=x.shape[0])
    if mode == "LSTM":
        return to_np(out), to_np(hn[0]), to_np(hn[1])
    return to_np(out), to_np(hn), None


def _nan_padded(x, lengths):
    """Copy of x with NaN wherever t >= lengths[b] (padding must never matter)."""
    x = x.copy()
    if lengths is not None:
        for b, n in enumerate(lengths):
            x[n:, b] = np.nan
    return x


STACK_CASES = list(itertools.product(VARIANTS, [1, 2, 3], [False, True], [True, False]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "varlen"])
@pytest.mark.parametrize("given_init", [False, True], ids=["zero_init", "given_init"])
@pytest.mark.parametrize(
    "variant,num_layers,bidirectional,bias", STACK_CASES,
    ids=[f"{v[0]}-{v[1]}{'-proj' if v[2] else ''}-L{L}-{'bi' if bi else 'uni'}-{'bias' if b else 'nobias'}"
         for v, L, bi, b in STACK_CASES])
def test_run_stack_matches_torch(variant, num_layers, bidirectional, bias, given_init, varlen, dtype):
    mode, nonlinearity, use_proj = variant
    for seed in SEEDS:
        rng = np.random.default_rng(
            [seed, num_layers, int(bidirectional), int(bias), int(given_init), int(varlen)])
        torch.manual_seed(seed)
        T, B, I, H, P, x, h0, c0, lengths = _random_case(
            rng, mode, use_proj, num_layers, bidirectional, dtype, varlen, given_init)
        net, params = _make_torch(mode, I, H, num_layers, bidirectional, bias, nonlinearity, P, dtype)
        if not bias:
            assert not any(k.startswith("bias") for k in params)
        if use_proj:
            assert any(k.startswith("weight_hr") for k in params)

        exp_out, exp_h, exp_c = _torch_forward(net, mode, x, h0, c0, lengths)
        # The reference sees NaN in the padding; torch sees the original values.
        out, h_n, c_n = ref.run_stack(
            mode, params, _nan_padded(x, lengths), h0, c0, lengths,
            num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity,
            proj_size=P)
        D = 2 if bidirectional else 1
        assert out.shape == (T, B, D * (P or H))
        assert_close(out, exp_out, dtype)
        assert_close(h_n, exp_h, dtype)
        if mode == "LSTM":
            assert c_n.shape == (D * num_layers, B, H)
            assert_close(c_n, exp_c, dtype)
        else:
            assert c_n is None
        if lengths is not None:
            for b, n in enumerate(lengths):
                assert np.all(out[n:, b] == 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=[f"{m}-{n}{'-proj' if p else ''}" for m, n, p in VARIANTS])
def test_run_stack_default_initial_state_is_zero(variant):
    # h0=None / c0=None behave like zeros and like torch with hx omitted.
    mode, nonlinearity, use_proj = variant
    rng = np.random.default_rng(11)
    T, B, I, H, P, x, h0, c0, lengths = _random_case(rng, mode, use_proj, 2, True, np.float64, True, False)
    torch.manual_seed(11)
    net, params = _make_torch(mode, I, H, 2, True, True, nonlinearity, P, np.float64)
    packed = pack_padded_sequence(torch.from_numpy(x), torch.as_tensor(lengths), enforce_sorted=False)
    with torch.no_grad():
        out_p, hn = net(packed)
    exp_out, _ = pad_packed_sequence(out_p, total_length=T)
    out, h_n, c_n = ref.run_stack(mode, params, x, None, None, lengths, num_layers=2,
                                  bidirectional=True, nonlinearity=nonlinearity, proj_size=P)
    assert_close(out, to_np(exp_out), np.float64)
    assert_close(h_n, to_np(hn[0] if mode == "LSTM" else hn), np.float64)
    if mode == "LSTM":
        assert_close(c_n, to_np(hn[1]), np.float64)


# ---------------------------------------------------------------------------
# Length-0 sequences and padding isolation (torch cannot pack length 0)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=[f"{m}-{n}{'-proj' if p else ''}" for m, n, p in VARIANTS])
def test_zero_length_sequences(variant, dtype):
    mode, nonlinearity, use_proj = variant
    rng = np.random.default_rng(5)
    L, T, B, I, H = 2, 4, 4, 3, 3
    P = 2 if use_proj else 0
    torch.manual_seed(5)
    net, params = _make_torch(mode, I, H, L, True, True, nonlinearity, P, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2 * L, B, P or H)).astype(dtype)
    c0 = rng.standard_normal((2 * L, B, H)).astype(dtype) if mode == "LSTM" else None
    lengths = np.array([3, 0, T, 0])
    kw = dict(num_layers=L, bidirectional=True, nonlinearity=nonlinearity, proj_size=P)
    out, h_n, c_n = ref.run_stack(mode, params, _nan_padded(x, lengths), h0, c0, lengths, **kw)

    assert np.all(np.isfinite(out)) and np.all(np.isfinite(h_n))
    for b in (1, 3):
        assert np.all(out[:, b] == 0)
        assert np.array_equal(h_n[:, b], h0[:, b])
        if mode == "LSTM":
            assert np.array_equal(c_n[:, b], c0[:, b])

    # The non-empty sequences agree with torch run on them alone.
    keep = np.array([0, 2])
    exp_out, exp_h, exp_c = _torch_forward(
        net, mode, x[:, keep], np.ascontiguousarray(h0[:, keep]),
        None if c0 is None else np.ascontiguousarray(c0[:, keep]), lengths[keep])
    assert_close(out[:, keep], exp_out, dtype)
    assert_close(h_n[:, keep], exp_h, dtype)
    if mode == "LSTM":
        assert_close(c_n[:, keep], exp_c, dtype)


@pytest.mark.parametrize("reverse_all", [False, True])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_padding_content_is_irrelevant(mode, reverse_all):
    rng = np.random.default_rng(9)
    L, T, B, I, H = 2, 5, 3, 2, 3
    torch.manual_seed(9)
    bidirectional = not reverse_all
    _, params = _make_torch(mode, I, H, L, bidirectional, True, "tanh", 0, np.float64)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([2, 5, 1])
    kw = dict(num_layers=L, bidirectional=bidirectional, reverse_all=reverse_all)
    results = []
    for fill in (0.0, np.nan, np.inf, -np.inf, 1e300):
        xp = x.copy()
        for b, n in enumerate(lengths):
            xp[n:, b] = fill
        results.append(ref.run_stack(mode, params, xp, None, None, lengths, **kw))
    for out, h_n, c_n in results[1:]:
        assert np.array_equal(out, results[0][0])
        assert np.array_equal(h_n, results[0][1])
        if mode == "LSTM":
            assert np.array_equal(c_n, results[0][2])


# ---------------------------------------------------------------------------
# reverse_all (Keras-style backward layer): equals torch on per-sequence flipped input
# ---------------------------------------------------------------------------

def _flip_each(a, lengths):
    """Reverse the first lengths[b] steps of every sequence b; leave padding in place."""
    a = a.copy()
    for b, n in enumerate(lengths):
        a[:n, b] = a[:n, b][::-1].copy()
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "varlen"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=[f"{m}-{n}{'-proj' if p else ''}" for m, n, p in VARIANTS])
def test_reverse_all_matches_torch_on_flipped_input(variant, num_layers, varlen, dtype):
    mode, nonlinearity, use_proj = variant
    for seed in SEEDS:
        rng = np.random.default_rng([seed, num_layers, int(varlen), 99])
        torch.manual_seed(seed)
        T, B, I, H, P, x, h0, c0, lengths = _random_case(
            rng, mode, use_proj, num_layers, False, dtype, varlen, True)
        net, params = _make_torch(mode, I, H, num_layers, False, True, nonlinearity, P, dtype)
        eff_lengths = np.full(B, T) if lengths is None else lengths

        exp_out, exp_h, exp_c = _torch_forward(net, mode, _flip_each(x, eff_lengths), h0, c0, lengths)
        exp_out = _flip_each(exp_out, eff_lengths)

        out, h_n, c_n = ref.run_stack(
            mode, params, _nan_padded(x, lengths), h0, c0, lengths, num_layers=num_layers,
            nonlinearity=nonlinearity, proj_size=P, reverse_all=True)
        assert_close(out, exp_out, dtype)
        assert_close(h_n, exp_h, dtype)
        if mode == "LSTM":
            assert_close(c_n, exp_c, dtype)


def test_reverse_all_rejects_bidirectional():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    _, params = _make_torch("GRU", 2, 3, 1, True, True, "tanh", 0, np.float64)
    with pytest.raises(ValueError):
        ref.run_stack("GRU", params, rng.standard_normal((2, 1, 2)), None,
                      bidirectional=True, reverse_all=True)


def test_bidirectional_single_layer_reverse_half_equals_reverse_all():
    # The reverse direction of a bidirectional layer is exactly a reverse_all layer.
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 3, 2, 4
    torch.manual_seed(3)
    _, params = _make_torch("LSTM", I, H, 1, True, True, "tanh", 0, np.float64)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([5, 2, 3])
    out, h_n, c_n = ref.run_stack("LSTM", params, x, None, None, lengths, bidirectional=True)
    rev_params = {k.replace("_reverse", ""): v for k, v in params.items() if k.endswith("_reverse")}
    out_r, h_r, c_r = ref.run_stack("LSTM", rev_params, x, None, None, lengths, reverse_all=True)
    np.testing.assert_array_equal(out[:, :, H:], out_r)
    np.testing.assert_array_equal(h_n[1], h_r[0])
    np.testing.assert_array_equal(c_n[1], c_r[0])


# ---------------------------------------------------------------------------
# dtype preservation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_dtype_is_preserved(mode, dtype):
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    _, params = _make_torch(mode, 2, 3, 2, True, True, "tanh", 0, dtype)
    x = rng.standard_normal((3, 2, 2)).astype(dtype)
    out, h_n, c_n = ref.run_stack(mode, params, x, None, None, np.array([3, 1]),
                                  num_layers=2, bidirectional=True)
    assert out.dtype == dtype and h_n.dtype == dtype
    if mode == "LSTM":
        assert c_n.dtype == dtype
