"""Edge cases: never a crash, never a silent wrong answer.

Empty batches and sequences, NaN / Inf / huge values, degenerate and unusual ``lengths``,
unusual input layouts and dtypes, a case large enough to cross the input-projection chunking,
and concurrent calls from several threads. The oracle is ``rnnc.reference`` (plain NumPy) with
the same parameters, or the same rnnc module on a plain contiguous input.
"""
import concurrent.futures

import numpy as np
import pytest

import rnnc
from rnnc import reference as ref
from rnnc._engine.plan import make_plan

TOL = {np.float64: dict(rtol=1e-11, atol=1e-11), np.float32: dict(rtol=2e-5, atol=2e-5)}
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]

# (mode, extra constructor arguments)
CONFIGS = [
    pytest.param("RNN", {}, id="RNN-tanh"),
    pytest.param("RNN", {"nonlinearity": "relu"}, id="RNN-relu"),
    pytest.param("GRU", {}, id="GRU"),
    pytest.param("GRU", {"reset_after": False}, id="GRU-reset-before"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("LSTM", {"proj_size": 3}, id="LSTM-proj"),
]
SATURATING = [c for c in CONFIGS if c.id != "RNN-relu"]
I, H = 3, 5


def make(mode, kw, dtype=np.float64, reference=False, seed=0, **extra):
    """An rnnc layer, or its reference twin with the same parameters."""
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=seed, **kw, **extra)
    if reference:
        r = getattr(ref, mode)(I, H, dtype=dtype, seed=seed + 1, **kw, **extra)
        r.load_state_dict(m.state_dict())
        return m, r
    return m


def initial_state(m, B, rng, unbatched=False):
    """Random (h0) or (h0, c0) for layer m."""
    DL = m.num_layers * (2 if m.bidirectional else 1)
    P = m.proj_size or m.hidden_size
    lead = (DL,) if unbatched else (DL, B)
    h0 = rng.standard_normal(lead + (P,)).astype(m.dtype)
    if m.mode == "LSTM":
        return h0, rng.standard_normal(lead + (m.hidden_size,)).astype(m.dtype)
    return h0


def run(m, x, hx=None, lengths=None):
    """(out, h_n, c_n or None) of any layer."""
    out, state = m(x, hx, lengths)
    if m.mode == "LSTM":
        return out, state[0], state[1]
    return out, state, None


def assert_same(a, b, dtype=None, exact=False):
    """Compare (out, h, c) triples: NaN where the other has NaN, Inf where it has Inf."""
    for u, v in zip(a, b):
        if u is None or v is None:
            assert u is None and v is None
            continue
        assert u.shape == v.shape, (u.shape, v.shape)
        if exact:
            np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, equal_nan=True, **TOL[dtype])


def out_width(m):
    P = (m.proj_size or m.hidden_size) if m.mode == "LSTM" else m.hidden_size
    return P * (2 if m.bidirectional else 1)


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# ==========================================================================================
# Empty sequences and batches
# ==========================================================================================

@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_layer_empty_time_or_batch(mode, kw, bidirectional, batch_first, T, B):
    rng = np.random.default_rng(0)
    m = make(mode, kw, np.float32, num_layers=2, bidirectional=bidirectional,
             batch_first=batch_first)
    x = np.zeros((B, T, I) if batch_first else (T, B, I), dtype=np.float32)
    hx = initial_state(m, B, rng)
    hx_copy = [a.copy() for a in (hx if isinstance(hx, tuple) else (hx,))]
    for lengths in [None, np.zeros(B, dtype=np.int64), [0] * B]:
        out, h_n, c_n = run(m, x, hx, lengths)
        assert out.shape == ((B, T, out_width(m)) if batch_first else (T, B, out_width(m)))
        assert out.dtype == np.float32
        h0 = hx[0] if mode == "LSTM" else hx
        np.testing.assert_array_equal(h_n, h0)
        assert h_n.dtype == np.float32 and not np.shares_memory(h_n, h0)
        if mode == "LSTM":
            np.testing.assert_array_equal(c_n, hx[1])
            assert not np.shares_memory(c_n, hx[1])
        # Without hx the states are zeros of the right shape.
        out, h_n, c_n = run(m, x, None, lengths)
        assert h_n.shape == h0.shape and not h_n.any()
        if mode == "LSTM":
            assert c_n.shape == hx[1].shape and not c_n.any()
    for a, b in zip(hx if isinstance(hx, tuple) else (hx,), hx_copy):
        np.testing.assert_array_equal(a, b)      # the caller's states are never written


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_unbatched_empty_sequence(mode, kw, bidirectional):
    rng = np.random.default_rng(1)
    m = make(mode, kw, np.float64, num_layers=2, bidirectional=bidirectional)
    hx = initial_state(m, None, rng, unbatched=True)
    for lengths in [None, 0, [0]]:
        out, h_n, c_n = run(m, np.zeros((0, I)), hx, lengths)
        assert out.shape == (0, out_width(m))
        np.testing.assert_array_equal(h_n, hx[0] if mode == "LSTM" else hx)
        if mode == "LSTM":
            np.testing.assert_array_equal(c_n, hx[1])
    out, h_n, c_n = run(m, np.zeros((0, I)))
    assert h_n.shape == (m.num_layers * (2 if bidirectional else 1), out_width(m) //
                         (2 if bidirectional else 1)) and not h_n.any()


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_bidirectional_wrapper_empty(mode, kw, merge_mode, T, B):
    rng = np.random.default_rng(2)
    layer = make(mode, kw, np.float32, batch_first=True)
    bi = rnnc.Bidirectional(layer, merge_mode=merge_mode)
    hx = (initial_state(layer, B, rng), initial_state(layer, B, rng))
    out, (s_f, s_b) = bi(np.zeros((B, T, I), dtype=np.float32), hx, np.zeros(B, dtype=int))
    P = out_width(layer)
    if merge_mode is None:
        assert out[0].shape == out[1].shape == (B, T, P)
    else:
        assert out.shape == (B, T, 2 * P if merge_mode == "concat" else P)
    for got, given in [(s_f, hx[0]), (s_b, hx[1])]:
        if mode == "LSTM":
            np.testing.assert_array_equal(got[0], given[0])
            np.testing.assert_array_equal(got[1], given[1])
        else:
            np.testing.assert_array_equal(got, given)


@pytest.mark.parametrize("cls", [rnnc.RNNCell, rnnc.GRUCell, rnnc.LSTMCell])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cell_empty_batch(cls, dtype):
    cell = cls(I, H, dtype=dtype, seed=0)
    x = np.zeros((0, I), dtype=dtype)
    for hx in [None, (np.zeros((0, H)), np.zeros((0, H))) if cls is rnnc.LSTMCell
               else np.zeros((0, H))]:
        res = cell(x, hx)
        for r in (res if cls is rnnc.LSTMCell else (res,)):
            assert r.shape == (0, H) and r.dtype == dtype


@pytest.mark.parametrize("activation", [None, "tanh", "relu", "sigmoid", "softmax"])
@pytest.mark.parametrize("shape", [(0, I), (4, 0, I), (0, 0, I), (0, 2, 3, I)])
def test_linear_zero_rows(activation, shape):
    lin = rnnc.Linear(I, 4, activation=activation, seed=0)
    y = lin(np.zeros(shape, dtype=np.float32))
    assert y.shape == shape[:-1] + (4,) and y.dtype == np.float32


# ==========================================================================================
# NaN and Inf
# ==========================================================================================

def _poisoned(rng, T, B, dtype):
    x = rand(rng, (T, B, I), dtype)
    x[2, 1, 0] = np.nan
    x[4, 2, 1] = np.inf
    x[1, 3, 2] = -np.inf
    x[3, 4, :] = np.inf
    return x


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_and_inf_propagate_like_reference(mode, kw, bidirectional, dtype):
    rng = np.random.default_rng(3)
    m, r = make(mode, kw, dtype, reference=True, num_layers=2, bidirectional=bidirectional)
    T, B = 7, 6
    x = _poisoned(rng, T, B, dtype)
    hx = initial_state(m, B, rng)
    with np.errstate(all="ignore"):
        want = run(r, x, hx)
    got = run(m, x, hx)
    assert_same(got, want, dtype)
    out = got[0]
    # Row 1 saw a NaN at t = 2: the forward half of its output is NaN from then on.
    P = out_width(m) // (2 if bidirectional else 1)
    assert np.isnan(out[2:, 1, :P]).all()
    if bidirectional:
        assert np.isnan(out[:3, 1, P:]).all()
    # Rows 0 and 5 are clean and independent of the others: finite, and as in a clean batch.
    clean = x.copy()
    clean[:, 1:5] = 0
    ref_clean = run(m, clean, hx)
    for b in (0, 5):
        assert np.isfinite(out[:, b]).all()
        np.testing.assert_allclose(out[:, b], ref_clean[0][:, b], **TOL[dtype])


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("merge_mode", ["concat", "mul", None])
def test_nan_and_inf_propagate_bidirectional_wrapper(mode, kw, merge_mode):
    rng = np.random.default_rng(31)
    layer = make(mode, kw, np.float64, num_layers=2)
    bi = rnnc.Bidirectional(layer, merge_mode=merge_mode)
    rbi = ref.Bidirectional(make(mode, kw, np.float64, reference=True, num_layers=2)[1],
                            merge_mode=merge_mode)
    rbi.load_state_dict(bi.state_dict())
    x = _poisoned(rng, 7, 6, np.float64)
    lengths = [7, 5, 3, 7, 4, 0]
    got, (s_f, s_b) = bi(x, lengths=lengths)
    with np.errstate(all="ignore"):
        want, (r_f, r_b) = rbi(x, lengths=lengths)
    for g, w in [(got, want), (s_f, r_f), (s_b, r_b)]:
        for gg, ww in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple) else (w,)):
            np.testing.assert_allclose(gg, ww, equal_nan=True, **TOL[np.float64])


@pytest.mark.parametrize("mode,kw", [c for c in CONFIGS if "proj_size" not in c.values[1]])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("T,B", [(1, 1), (2, 1), (1, 3)])
def test_smallest_sizes_match_reference(mode, kw, bidirectional, T, B):
    """input_size = hidden_size = 1 (1x1 weights, 1-wide GEMMs), single steps and rows."""
    rng = np.random.default_rng(32)
    m = getattr(rnnc, mode)(1, 1, num_layers=2, bidirectional=bidirectional, dtype=np.float64,
                            seed=0, **kw)
    r = getattr(ref, mode)(1, 1, num_layers=2, bidirectional=bidirectional, dtype=np.float64,
                           seed=1, **kw)
    r.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, 1))
    hx = initial_state(m, B, rng)
    for lengths in [None, rng.integers(0, T + 1, size=B)]:
        assert_same(run(m, x, hx, lengths), run(r, x, hx, lengths), np.float64)
    assert_same(run(m, x[:, 0]), run(r, x[:, 0]), np.float64)


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_in_initial_state_propagates(mode, kw, dtype):
    rng = np.random.default_rng(4)
    m, r = make(mode, kw, dtype, reference=True)
    x = rand(rng, (5, 3, I), dtype)
    hx = initial_state(m, 3, rng)
    (hx[0] if mode == "LSTM" else hx)[0, 1, 0] = np.nan
    if mode == "LSTM":
        hx[1][0, 2, 1] = np.inf
    with np.errstate(all="ignore"):
        want = run(r, x, hx)
    got = run(m, x, hx)
    assert_same(got, want, dtype)
    assert np.isnan(got[0][:, 1]).all()
    assert np.isfinite(got[0][:, 0]).all()


@pytest.mark.parametrize("mode,kw", [c for c in CONFIGS if "proj_size" not in c.values[1]])
@pytest.mark.parametrize("cell_dtype", DTYPES, ids=DTYPE_IDS)
def test_cells_nan_and_inf_like_reference(mode, kw, cell_dtype):
    rng = np.random.default_rng(5)
    cls = getattr(rnnc, mode + "Cell")
    cell = cls(I, H, dtype=cell_dtype, seed=0, **kw)
    rcell = getattr(ref, mode + "Cell")(I, H, dtype=cell_dtype, seed=1, **kw)
    rcell.load_state_dict(cell.state_dict())
    x = rand(rng, (4, I), cell_dtype)
    x[1, 0], x[2, 1], x[3] = np.nan, np.inf, -np.inf
    hx = rand(rng, (4, H), cell_dtype)
    hx = (hx, hx * 2) if mode == "LSTM" else hx
    with np.errstate(all="ignore"):
        want = rcell(x, hx)
    got = cell(x, hx)
    for g, w in zip(got if mode == "LSTM" else (got,), want if mode == "LSTM" else (want,)):
        np.testing.assert_allclose(g, w, equal_nan=True, **TOL[cell_dtype])
    assert np.isnan((got[0] if mode == "LSTM" else got)[1]).all()


@pytest.mark.parametrize("activation", [None, "tanh", "relu", "sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_linear_nan_inf_like_reference(activation, dtype):
    rng = np.random.default_rng(6)
    lin = rnnc.Linear(I, 4, activation=activation, dtype=dtype, seed=0)
    rlin = ref.Linear(I, 4, activation=activation, dtype=dtype, seed=1)
    rlin.load_state_dict(lin.state_dict())
    x = rand(rng, (6, I), dtype)
    x[1, 0], x[2, 1], x[3, 2], x[4] = np.nan, np.inf, -np.inf, 1e30
    with np.errstate(all="ignore"):
        want = rlin(x)
    got = lin(x)
    np.testing.assert_allclose(got, want, equal_nan=True, **TOL[dtype])
    assert np.isnan(got[1]).all()            # NaN poisons its own row (relu included) ...
    assert np.isfinite(got[[0, 5]]).all()    # ... and only its own row


# -- NaN / Inf / huge values in the padding never leak ---------------------------------------

@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_padding_never_leaks(mode, kw, bidirectional, batch_first, dtype):
    rng = np.random.default_rng(7)
    m = make(mode, kw, dtype, num_layers=2, bidirectional=bidirectional,
             batch_first=batch_first)
    T, lengths = 6, np.array([6, 0, 3, 1, 6, 5])
    B = len(lengths)
    clean = rand(rng, (T, B, I), dtype)
    pad = np.arange(T)[:, None] >= lengths[None, :]          # (T, B)
    clean[pad] = 0
    hx = initial_state(m, B, rng)
    tr = (lambda a: a.swapaxes(0, 1)) if batch_first else (lambda a: a)
    base = run(m, tr(clean), hx, lengths)
    assert np.isfinite(base[0]).all()
    for fill in [np.nan, np.inf, -np.inf, 1e30, -3e38]:
        dirty = clean.copy()
        with np.errstate(over="ignore"):
            dirty[pad] = fill
        got = run(m, tr(dirty), hx, lengths)
        assert_same(got, base, exact=True)
        assert np.all(tr(got[0])[pad] == 0)
    # The reference agrees.
    r = make(mode, kw, dtype, reference=True, num_layers=2, bidirectional=bidirectional,
             batch_first=batch_first)[1]
    dirty = clean.copy()
    dirty[pad] = np.nan
    assert_same(base, run(r, tr(dirty), hx, lengths), dtype)


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_padding_never_leaks_bidirectional_wrapper(mode, kw, dtype):
    rng = np.random.default_rng(8)
    bi = rnnc.Bidirectional(make(mode, kw, dtype, num_layers=2))
    T, lengths = 5, [2, 5, 0, 4]
    x = rand(rng, (T, 4, I), dtype)
    pad = np.arange(T)[:, None] >= np.array(lengths)[None, :]
    x[pad] = 0
    out, _ = bi(x, lengths=lengths)
    x[pad] = np.nan
    out_nan, _ = bi(x, lengths=lengths)
    np.testing.assert_array_equal(out_nan, out)
    assert np.isfinite(out).all() and np.all(out[pad] == 0)


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_padding_never_leaks_unbatched(mode, kw):
    rng = np.random.default_rng(9)
    m = make(mode, kw, np.float64, bidirectional=True)
    x = rand(rng, (6, I))
    x[4:] = 0
    base = run(m, x, None, 4)
    x[4:] = np.nan
    got = run(m, x, None, 4)
    assert_same(got, base, exact=True)
    assert np.all(got[0][4:] == 0) and np.isfinite(got[0]).all()


# ==========================================================================================
# Huge values
# ==========================================================================================

@pytest.mark.parametrize("mode,kw", SATURATING)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("magnitude", [1e30, 1e300], ids=["1e30", "1e300"])
def test_huge_inputs_saturate_without_nan(mode, kw, dtype, magnitude):
    if dtype == np.float32 and magnitude > 1e38:
        magnitude = 1e37     # near float32's max, without overflowing x @ W_ih^T itself
    rng = np.random.default_rng(10)
    m, r = make(mode, kw, dtype, reference=True, num_layers=2, bidirectional=True)
    T, B = 8, 4
    x = (np.sign(rand(rng, (T, B, I))) * magnitude).astype(dtype)
    x[:, 0] = magnitude                      # all positive
    x[:, 1] = -magnitude                     # all negative
    got = run(m, x)
    for a in got:
        if a is not None:
            assert np.isfinite(a).all()
    if not kw.get("proj_size"):
        assert np.abs(got[0]).max() <= 1
    with np.errstate(all="ignore"):
        want = run(r, x)
    assert_same(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softmax"])
def test_linear_huge_inputs_saturate(dtype, activation):
    lin = rnnc.Linear(I, 4, activation=activation, dtype=dtype, seed=0)
    rlin = ref.Linear(I, 4, activation=activation, dtype=dtype, seed=1)
    rlin.load_state_dict(lin.state_dict())
    x = np.array([[1e30, -1e30, 1e30], [-1e30] * 3, [1e30] * 3], dtype=dtype)
    y = lin(x)
    assert np.isfinite(y).all()
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(y, rlin(x), **TOL[dtype])
    if activation == "softmax":
        np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_relu_rnn_keeps_nan_as_nan(dtype, bidirectional):
    """relu(NaN) is NaN, not 0: a NaN input must not be silently turned into a clean zero."""
    rng = np.random.default_rng(11)
    m, r = make("RNN", {"nonlinearity": "relu"}, dtype, reference=True,
                bidirectional=bidirectional)
    x = rand(rng, (6, 3, I), dtype)
    x[2, 1, :] = np.nan
    out, h_n, _ = run(m, x)
    assert np.isnan(out[2:, 1, :H]).all()
    assert np.isnan(h_n[0, 1]).all()
    if bidirectional:
        assert np.isnan(out[:3, 1, H:]).all() and np.isnan(h_n[1, 1]).all()
    assert not np.isnan(out[:, [0, 2]]).any()
    with np.errstate(all="ignore"):
        assert_same((out, h_n, None), run(r, x), dtype)
    # Same for the cell and for Linear's relu.
    cell = rnnc.RNNCell(I, H, nonlinearity="relu", dtype=dtype, seed=0)
    assert np.isnan(cell(np.full(I, np.nan, dtype=dtype))).all()
    lin = rnnc.Linear(I, 4, activation="relu", dtype=dtype, seed=0)
    assert np.isnan(lin(np.full((2, I), np.nan, dtype=dtype))).all()


# ==========================================================================================
# lengths
# ==========================================================================================

@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_all_lengths_zero(mode, kw, bidirectional):
    rng = np.random.default_rng(12)
    m = make(mode, kw, np.float32, num_layers=2, bidirectional=bidirectional)
    x = rand(rng, (5, 3, I), np.float32)
    hx = initial_state(m, 3, rng)
    out, h_n, c_n = run(m, x, hx, [0, 0, 0])
    assert out.shape == (5, 3, out_width(m)) and not out.any()
    np.testing.assert_array_equal(h_n, hx[0] if mode == "LSTM" else hx)
    if mode == "LSTM":
        np.testing.assert_array_equal(c_n, hx[1])


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_one_empty_sequence_in_a_batch(mode, kw, bidirectional):
    rng = np.random.default_rng(13)
    m, r = make(mode, kw, np.float64, reference=True, num_layers=2,
                bidirectional=bidirectional)
    x = rand(rng, (5, 3, I))
    hx = initial_state(m, 3, rng)
    lengths = [5, 0, 3]
    got = run(m, x, hx, lengths)
    assert_same(got, run(r, x, hx, lengths), np.float64)
    assert not got[0][:, 1].any()
    np.testing.assert_array_equal(got[1][:, 1], (hx[0] if mode == "LSTM" else hx)[:, 1])
    if mode == "LSTM":
        np.testing.assert_array_equal(got[2][:, 1], hx[1][:, 1])


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_full_lengths_equal_no_lengths(mode, kw, bidirectional):
    rng = np.random.default_rng(14)
    m = make(mode, kw, np.float64, num_layers=2, bidirectional=bidirectional)
    x = rand(rng, (5, 3, I))
    hx = initial_state(m, 3, rng)
    assert_same(run(m, x, hx, [5, 5, 5]), run(m, x, hx), exact=True)


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_unsorted_lengths_match_each_sequence_alone(mode, kw, bidirectional):
    rng = np.random.default_rng(15)
    m, r = make(mode, kw, np.float64, reference=True, num_layers=2,
                bidirectional=bidirectional)
    lengths = np.array([2, 6, 0, 4, 6, 1, 4])
    T, B = 6, len(lengths)
    x = rand(rng, (T, B, I))
    hx = initial_state(m, B, rng)
    got = run(m, x, hx, lengths)
    assert_same(got, run(r, x, hx, lengths), np.float64)
    for b, n in enumerate(lengths):
        hx_b = tuple(a[:, b:b + 1] for a in hx) if mode == "LSTM" else hx[:, b:b + 1]
        alone = run(m, x[:n, b:b + 1], hx_b)
        np.testing.assert_allclose(got[0][:n, b:b + 1], alone[0], **TOL[np.float64])
        assert not got[0][n:, b].any()
        np.testing.assert_allclose(got[1][:, b:b + 1], alone[1], **TOL[np.float64])
        if mode == "LSTM":
            np.testing.assert_allclose(got[2][:, b:b + 1], alone[2], **TOL[np.float64])


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_lengths_container_types(mode, kw):
    rng = np.random.default_rng(16)
    m = make(mode, kw, np.float32, bidirectional=True)
    base_len = [3, 5, 0, 2]
    x = rand(rng, (5, 4, I), np.float32)
    base = run(m, x, None, np.array(base_len, dtype=np.intp))
    for lengths in [base_len, tuple(base_len), np.array(base_len, dtype=np.int32),
                    np.array(base_len, dtype=np.uint8), np.array(base_len, dtype=np.int64),
                    np.array(base_len, dtype=np.uint64), np.array(base_len, dtype=np.int16),
                    np.array(base_len, dtype=np.float64), [np.int64(v) for v in base_len],
                    np.repeat(base_len, 2)[::2], np.array(base_len)[None, :][0]]:
        assert_same(run(m, x, None, lengths), base, exact=True)
    # Unbatched: a scalar, a 1-element sequence, a NumPy integer.
    base = run(m, x[:, 1], None, [4])
    for lengths in [4, (4,), np.int32(4), np.array(4, dtype=np.uint8), np.array([4])]:
        assert_same(run(m, x[:, 1], None, lengths), base, exact=True)


def test_lengths_are_not_modified():
    m = rnnc.LSTM(I, H, bidirectional=True, seed=0)
    lengths = np.array([3, 1, 4], dtype=np.int32)
    m(np.ones((4, 3, I)), lengths=lengths)
    np.testing.assert_array_equal(lengths, [3, 1, 4])


# ==========================================================================================
# Input dtypes and memory layouts
# ==========================================================================================

@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("src", [np.int64, np.int32, np.uint8, np.float16, np.float64,
                                 np.float32], ids=lambda d: d.__name__)
def test_input_dtype_is_converted(mode, kw, src):
    rng = np.random.default_rng(17)
    m = make(mode, kw, np.float32, num_layers=2, batch_first=True)
    x = (rand(rng, (3, 5, I)) * 4).astype(src)
    hx = initial_state(m, 3, rng)
    hx_src = tuple(a.astype(src) for a in hx) if mode == "LSTM" else hx.astype(src)
    got = run(m, x, hx_src, [5, 2, 4])
    want = run(m, x.astype(np.float32),
               tuple(a.astype(src).astype(np.float32) for a in hx) if mode == "LSTM"
               else hx.astype(src).astype(np.float32), [5, 2, 4])
    assert_same(got, want, exact=True)
    for a in got:
        assert a is None or a.dtype == np.float32


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_float32_input_into_float64_module(mode, kw):
    rng = np.random.default_rng(18)
    m = make(mode, kw, np.float64)
    x = rand(rng, (4, 2, I), np.float32)
    got = run(m, x)
    assert got[0].dtype == np.float64
    assert_same(got, run(m, x.astype(np.float64)), exact=True)


def _layouts(a):
    """Differently laid out views / copies of the same values as `a` (C-contiguous)."""
    yield "fortran", np.asfortranarray(a)
    rev = np.ascontiguousarray(a[::-1])[::-1]           # negative stride on axis 0
    assert rev.strides[0] < 0
    yield "negative-stride", rev
    if a.ndim > 1:
        rev_last = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
        yield "negative-stride-last-axis", rev_last
    big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
    big[tuple(slice(None, None, 2) for _ in a.shape)] = a
    yield "strided", big[tuple(slice(None, None, 2) for _ in a.shape)]
    ro = a.copy()
    ro.setflags(write=False)
    yield "read-only", ro
    ro_f = np.asfortranarray(a)
    ro_f.setflags(write=False)
    yield "read-only-fortran", ro_f
    yield "nested-list", a.tolist()


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_input_layouts_match_contiguous(mode, kw, batch_first, with_lengths):
    rng = np.random.default_rng(19)
    m = make(mode, kw, np.float32, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = rand(rng, (4, 6, I) if batch_first else (6, 4, I), np.float32)
    lengths = [6, 2, 0, 5] if with_lengths else None
    hx = initial_state(m, 4, rng)
    base = run(m, x, hx, lengths)
    x_before = x.copy()
    for _, xv in _layouts(x):
        assert_same(run(m, xv, hx, lengths), base, exact=True)
    for _, hv in _layouts(hx[0] if mode == "LSTM" else hx):
        h_arg = (hv, hx[1]) if mode == "LSTM" else hv
        assert_same(run(m, x, h_arg, lengths), base, exact=True)
    if mode == "LSTM":
        for _, cv in _layouts(hx[1]):
            assert_same(run(m, x, (hx[0], cv), lengths), base, exact=True)
    np.testing.assert_array_equal(x, x_before)
    # Unbatched, from a non-contiguous column of the batch.
    col = (x[1] if batch_first else x[:, 1])
    h_col = tuple(a[:, 1] for a in hx) if mode == "LSTM" else hx[:, 1]
    base_u = run(m, np.ascontiguousarray(col), h_col)
    for xv in [col, np.asfortranarray(col), col[::-1][::-1]]:
        assert_same(run(m, xv, h_col), base_u, exact=True)


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_broadcast_input_and_state(mode, kw):
    """Zero-stride (broadcast, read-only) arrays work like their materialised copies."""
    rng = np.random.default_rng(20)
    m = make(mode, kw, np.float64, bidirectional=True)
    x = np.broadcast_to(rand(rng, (1, 1, I)), (5, 3, I))
    hx = initial_state(m, 1, rng)
    hx = tuple(np.broadcast_to(a, (a.shape[0], 3, a.shape[2])) for a in hx) \
        if mode == "LSTM" else np.broadcast_to(hx, (hx.shape[0], 3, hx.shape[2]))
    got = run(m, x, hx)
    want = run(m, np.ascontiguousarray(x),
               tuple(np.ascontiguousarray(a) for a in hx) if mode == "LSTM"
               else np.ascontiguousarray(hx))
    assert_same(got, want, exact=True)


@pytest.mark.parametrize("cls", [rnnc.RNNCell, rnnc.GRUCell, rnnc.LSTMCell])
def test_cell_layouts_and_dtypes(cls):
    rng = np.random.default_rng(21)
    cell = cls(I, H, seed=0)
    x = rand(rng, (4, I), np.float32)
    h = rand(rng, (4, H), np.float32)
    hx = (h, h * 0.5) if cls is rnnc.LSTMCell else h
    base = cell(x, hx)
    base = base if isinstance(base, tuple) else (base,)
    for _, xv in list(_layouts(x)) + [("float64", x.astype(np.float64))]:
        got = cell(xv, hx)
        for g, b in zip(got if isinstance(got, tuple) else (got,), base):
            np.testing.assert_array_equal(g, b)
    for _, hv in _layouts(h):
        got = cell(x, (hv, h * 0.5) if cls is rnnc.LSTMCell else hv)
        for g, b in zip(got if isinstance(got, tuple) else (got,), base):
            np.testing.assert_array_equal(g, b)
    for src in [np.float16, np.int64]:
        xs = (x * 3).astype(src)
        got, want = cell(xs, hx), cell(xs.astype(np.float32), hx)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_linear_layouts_and_dtypes(activation):
    rng = np.random.default_rng(22)
    lin = rnnc.Linear(I, 4, activation=activation, seed=0)
    x = rand(rng, (5, 2, I), np.float32)
    base = lin(x)
    for _, xv in list(_layouts(x)) + [("int", (x * 10).astype(np.int64))]:
        want = base if not np.issubdtype(np.asarray(xv).dtype, np.integer) \
            else lin((x * 10).astype(np.int64).astype(np.float32))
        got = lin(xv)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_bidirectional_wrapper_layouts():
    rng = np.random.default_rng(23)
    bi = rnnc.Bidirectional(rnnc.LSTM(I, H, batch_first=True, seed=0))
    x = rand(rng, (3, 6, I), np.float32)
    base, _ = bi(x, lengths=[6, 1, 4])
    for _, xv in _layouts(x):
        np.testing.assert_array_equal(bi(xv, lengths=[6, 1, 4])[0], base)


# ==========================================================================================
# A moderately large case, and the chunking of the input projection
# ==========================================================================================

def _chunk_steps(mode, I_, H_, B, T):
    """Steps of each input-projection chunk of an inference layer (rnnc/_engine/plan.py)."""
    return make_plan(mode, I_, H_, 0, True, False, B, T, np.float64, False, False).chunk_steps


def test_large_lstm_matches_reference():
    rng = np.random.default_rng(24)
    T, B, Hl, Il = 300, 33, 65, 7
    m = rnnc.LSTM(Il, Hl, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    r = ref.LSTM(Il, Hl, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    r.load_state_dict(m.state_dict())
    # This case must cross the chunking of the input projection (several chunks per layer).
    assert _chunk_steps("LSTM", Il, Hl, B, T) < T // 2
    x = rng.standard_normal((T, B, Il))
    lengths = rng.integers(0, T + 1, size=B)
    lengths[[0, 5]] = T
    lengths[[3, 9]] = 0
    lengths[7] = 1
    h0 = rng.standard_normal((4, B, Hl))
    c0 = rng.standard_normal((4, B, Hl))
    out, (h_n, c_n) = m(x, (h0, c0), lengths)
    r_out, (r_h, r_c) = r(x, (h0, c0), lengths)
    np.testing.assert_allclose(out, r_out, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(h_n, r_h, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(c_n, r_c, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("mode,kw", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_chunking_does_not_change_results(force_plan, mode, kw, dtype, with_lengths):
    """Tiny chunks (one step per projection GEMM, or 7 steps: not a divisor of T) give the
    results of the unchunked run.

    Not bit-for-bit: the chunks change the row count M of each input-projection GEMM, and
    OpenBLAS's rounding for a given row depends on M (gemm_py of the first rows of a matrix
    differs from the same rows of a larger product by ~1 ulp). So the check is to a few ulps.
    """
    rng = np.random.default_rng(25)
    m = make(mode, kw, dtype, num_layers=2, bidirectional=True)
    T, B = 40, 6
    x = rand(rng, (T, B, I), dtype)
    lengths = np.array([40, 3, 0, 40, 17, 39]) if with_lengths else None
    hx = initial_state(m, B, rng)
    assert _chunk_steps(mode, I, H, B, T) == T          # the default runs unchunked here
    base = run(m, x, hx, lengths)
    tol = dict(rtol=1e-13, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for chunk_steps in [1, 7]:
        force_plan(chunk_steps=chunk_steps)
        got = run(m, x, hx, lengths)
        for g, b in zip(got, base):
            if g is not None:
                np.testing.assert_allclose(g, b, **tol)
        if lengths is not None:
            pad = np.arange(T)[:, None] >= lengths[None, :]
            assert np.all(got[0][pad] == 0)


def test_chunking_large_lstm_matches_reference(force_plan):
    """The large bidirectional case with 5-step chunks still matches the reference."""
    rng = np.random.default_rng(26)
    T, B = 60, 9
    m = rnnc.LSTM(I, 17, num_layers=2, bidirectional=True, proj_size=6, dtype=np.float64,
                  seed=0)
    r = ref.LSTM(I, 17, num_layers=2, bidirectional=True, proj_size=6, dtype=np.float64,
                 seed=1)
    r.load_state_dict(m.state_dict())
    force_plan(chunk_steps=5)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([60, 0, 13, 59, 1, 60, 30, 5, 44])
    out, (h_n, c_n) = m(x, lengths=lengths)
    r_out, (r_h, r_c) = r(x, lengths=lengths)
    for a, b in [(out, r_out), (h_n, r_h), (c_n, r_c)]:
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


# ==========================================================================================
# Threads
# ==========================================================================================

def _thread_jobs(rng, n, T, B, Il):
    jobs = []
    for i in range(n):
        x = rng.standard_normal((T, B, Il)).astype(np.float32)
        lengths = rng.integers(0, T + 1, size=B)
        lengths[0] = T
        jobs.append((x, lengths))
    return jobs


@pytest.mark.parametrize("mode,kw", CONFIGS)
def test_threads_match_sequential(mode, kw):
    rng = np.random.default_rng(27)
    m = make(mode, kw, np.float32, num_layers=2, bidirectional=True)
    jobs = _thread_jobs(rng, 12, 60, 7, I)

    def work(job):
        return run(m, job[0], None, job[1])

    sequential = [work(j) for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            concurrent_results = list(pool.map(work, jobs))
            for got, want in zip(concurrent_results, sequential):
                assert_same(got, want, exact=True)
            # All threads on the very same input at once.
            same = list(pool.map(work, [jobs[0]] * 8))
            for got in same:
                assert_same(got, sequential[0], exact=True)


def test_threads_other_modules():
    rng = np.random.default_rng(28)
    bi = rnnc.Bidirectional(rnnc.GRU(I, H, num_layers=2, seed=0), merge_mode="ave")
    cell = rnnc.LSTMCell(I, H, seed=0)
    lin = rnnc.Linear(I, 4, activation="softmax", seed=0)
    jobs = _thread_jobs(rng, 8, 30, 5, I)
    calls = [lambda j: bi(j[0], lengths=j[1])[0],
             lambda j: cell(j[0][0])[1],
             lambda j: lin(j[0])]
    work = [(c, j) for c in calls for j in jobs]
    sequential = [c(j) for c, j in work]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda cj: cj[0](cj[1]), work))
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)
