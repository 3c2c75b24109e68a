"""rnnc against PyTorch: a torch module's state_dict, converted to NumPy, loads unchanged into the
rnnc module built with the same constructor arguments, and both compute the same thing."""
import warnings

import numpy as np
import pytest

import rnnc

from conftest import DTYPES, TORCH_TOL, assert_close

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

# (mode, nonlinearity, use projection)
VARIANTS = [("RNN", "tanh", False), ("RNN", "relu", False), ("GRU", None, False),
            ("LSTM", None, False), ("LSTM", None, True)]
VARIANT_IDS = ["RNN-tanh", "RNN-relu", "GRU", "LSTM", "LSTM-proj"]

# (batch_first, bias, given initial state, variable lengths, unbatched)
SCENARIOS = [
    (False, True, False, False, False),
    (True, False, True, False, False),
    (False, True, True, True, False),
    (True, False, False, True, False),
    (False, True, True, False, True),
]


@pytest.fixture(autouse=True, scope="module")
def _torch_native_kernels():
    """torch's native RNN kernels instead of oneDNN (slow primitive creation per shape, and no
    LSTM projection), on one thread (these shapes are tiny; spinning intra-op threads only
    slow a loaded machine down)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flags = torch.backends.mkldnn.flags(enabled=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags.__enter__()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.__exit__(None, None, None)
        torch.set_num_threads(threads)


def to_np(t):
    return t.detach().cpu().numpy()


def close(actual, expected, dtype):
    assert_close(actual, expected, dtype, table=TORCH_TOL)


def make_modules(mode, nonlinearity, I, H, P, dtype, seed, spread=2.0, **kw):
    torch.manual_seed(seed)
    args = dict(kw)
    if mode == "RNN":
        args["nonlinearity"] = nonlinearity
    if P:
        args["proj_size"] = P
    tnet = getattr(torch.nn, mode)(I, H, **args).to(TORCH_DTYPE[np.dtype(dtype)])
    with torch.no_grad():          # wider than torch's init: leave the linear regions
        for p in tnet.parameters():
            p.mul_(spread)
    mod = getattr(rnnc, mode)(I, H, dtype=dtype, seed=seed + 1, **args)
    mod.load_state_dict({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    return tnet, mod


def torch_run(tnet, mode, x, hx, lengths, batch_first):
    tx = torch.from_numpy(x)
    if hx is not None:
        hx = tuple(torch.from_numpy(a) for a in hx) if mode == "LSTM" else torch.from_numpy(hx)
    with torch.no_grad():
        if lengths is None:
            out, st = tnet(tx, hx)
        else:
            packed = pack_padded_sequence(tx, torch.as_tensor(lengths, dtype=torch.int64),
                                          batch_first=batch_first, enforce_sorted=False)
            out_p, st = tnet(packed, hx)
            T = x.shape[1] if batch_first else x.shape[0]
            out, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    if mode == "LSTM":
        return to_np(out), (to_np(st[0]), to_np(st[1]))
    return to_np(out), to_np(st)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_layer_matches_torch(variant, num_layers, bidirectional, dtype):
    mode, nonlinearity, use_proj = variant
    for s, (batch_first, bias, given_hx, varlen, unbatched) in enumerate(SCENARIOS):
        rng = np.random.default_rng([s, num_layers, int(bidirectional),
                                     VARIANTS.index(variant), np.dtype(dtype).itemsize])
        T, B, I, H = (int(rng.integers(1, 7)), int(rng.integers(1, 5)),
                      int(rng.integers(1, 5)), int(rng.integers(2, 6)))
        P = int(rng.integers(1, H)) if use_proj else 0
        D = 2 if bidirectional else 1
        tnet, mod = make_modules(mode, nonlinearity, I, H, P, dtype, seed=s,
                                 num_layers=num_layers, bias=bias, batch_first=batch_first,
                                 bidirectional=bidirectional)
        assert [(k, v.shape) for k, v in mod.state_dict().items()] == \
            [(k, tuple(v.shape)) for k, v in tnet.state_dict().items()]
        if unbatched:
            x = rng.standard_normal((T, I)).astype(dtype)
            lead = (D * num_layers,)
        else:
            x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
            lead = (D * num_layers, B)
        hx = None
        if given_hx:
            h0 = (0.8 * rng.standard_normal(lead + (P or H,))).astype(dtype)
            c0 = (0.8 * rng.standard_normal(lead + (H,))).astype(dtype)
            hx = (h0, c0) if mode == "LSTM" else h0
        lengths = rng.integers(1, T + 1, size=B) if varlen else None
        exp_out, exp_st = torch_run(tnet, mode, x, hx, lengths, batch_first)
        out, st = mod(x, hx, lengths)
        close(out, exp_out, dtype)
        if mode == "LSTM":
            close(st[0], exp_st[0], dtype)
            close(st[1], exp_st[1], dtype)
        else:
            close(st, exp_st, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_longer_sequences_and_lengths_match_torch(variant, dtype):
    mode, nonlinearity, use_proj = variant
    rng = np.random.default_rng(VARIANTS.index(variant))
    T, B, I, H = 40, 6, 5, 8
    P = 3 if use_proj else 0
    tnet, mod = make_modules(mode, nonlinearity, I, H, P, dtype, seed=3, spread=1.0,
                             num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([40, 1, 17, 40, 33, 2])
    exp_out, exp_st = torch_run(tnet, mode, x, None, lengths, False)
    out, st = mod(x, None, lengths)
    close(out, exp_out, dtype)
    for a, e in zip(st if mode == "LSTM" else (st,), exp_st if mode == "LSTM" else (exp_st,)):
        close(a, e, dtype)


@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [("RNNCell", "tanh"), ("RNNCell", "relu"),
                                     ("GRUCell", None), ("LSTMCell", None)],
                         ids=["RNN-tanh", "RNN-relu", "GRU", "LSTM"])
def test_cell_matches_torch(variant, dtype, bias, batched, given_hx):
    name, nonlinearity = variant
    rng = np.random.default_rng([int(bias), int(batched), int(given_hx)])
    B, I, H = 3, 4, 5
    kw = {"nonlinearity": nonlinearity} if nonlinearity else {}
    torch.manual_seed(0)
    tcell = getattr(torch.nn, name)(I, H, bias=bias, **kw).to(TORCH_DTYPE[np.dtype(dtype)])
    with torch.no_grad():
        for p in tcell.parameters():
            p.mul_(2.0)
    cell = getattr(rnnc, name)(I, H, bias=bias, dtype=dtype, seed=1, **kw)
    assert [(k, v.shape) for k, v in cell.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in tcell.state_dict().items()]
    cell.load_state_dict({k: v.detach().numpy() for k, v in tcell.state_dict().items()})
    lead = (B,) if batched else ()
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    hx = None
    if given_hx:
        h = (0.8 * rng.standard_normal(lead + (H,))).astype(dtype)
        hx = (h, (0.8 * rng.standard_normal(lead + (H,))).astype(dtype)) \
            if name == "LSTMCell" else h
    with torch.no_grad():
        thx = None if hx is None else (tuple(torch.from_numpy(a) for a in hx)
                                       if isinstance(hx, tuple) else torch.from_numpy(hx))
        expected = tcell(torch.from_numpy(x), thx)
    got = cell(x, hx)
    if name == "LSTMCell":
        close(got[0], to_np(expected[0]), dtype)
        close(got[1], to_np(expected[1]), dtype)
    else:
        close(got, to_np(expected), dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_load_state_dict_accepts_torch_tensors(variant):
    mode, nonlinearity, use_proj = variant
    kw = dict(num_layers=2, bidirectional=True)
    if mode == "RNN":
        kw["nonlinearity"] = nonlinearity
    if use_proj:
        kw["proj_size"] = 2
    torch.manual_seed(0)
    tnet = getattr(torch.nn, mode)(3, 4, **kw)                      # float32 tensors
    for dtype in DTYPES:
        a = getattr(rnnc, mode)(3, 4, dtype=dtype, seed=1, **kw)
        a.load_state_dict(tnet.state_dict())                        # detached tensors
        b = getattr(rnnc, mode)(3, 4, dtype=dtype, seed=2, **kw)
        b.load_state_dict(dict(tnet.named_parameters()))            # requires_grad=True
        for k, v in tnet.state_dict().items():
            expected = v.numpy().astype(dtype)
            np.testing.assert_array_equal(a.state_dict()[k], expected)
            np.testing.assert_array_equal(b.state_dict()[k], expected)
            assert a.state_dict()[k].dtype == dtype
    # The module does not share memory with the tensors it was loaded from.
    c = getattr(rnnc, mode)(3, 4, dtype=np.float32, seed=1, **kw)
    c.load_state_dict(tnet.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    before = c(x)[0]
    with torch.no_grad():
        for p in tnet.parameters():
            p.zero_()
    np.testing.assert_array_equal(c(x)[0], before)


def test_cells_load_torch_tensors():
    torch.manual_seed(0)
    for name in ("RNNCell", "GRUCell", "LSTMCell"):
        tcell = getattr(torch.nn, name)(3, 4).double()
        cell = getattr(rnnc, name)(3, 4, dtype=np.float64, seed=5)
        cell.load_state_dict(dict(tcell.named_parameters()))
        x = np.random.default_rng(1).standard_normal((2, 3))
        with torch.no_grad():
            expected = tcell(torch.from_numpy(x))
        got = cell(x)
        if name == "LSTMCell":
            close(got[0], to_np(expected[0]), np.float64)
        else:
            close(got, to_np(expected), np.float64)
