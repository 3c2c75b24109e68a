"""The reference classes' backward, checked by central finite differences in float64.

rnnc.reference is the oracle the compiled backward is tested against, so its own gradients are
checked here independently: for every reference class with a backward (RNN, GRU, LSTM, the
cells, Linear, the Bidirectional wrapper, and a Sequential of reference layers), the gradients
of the loss

    L = sum(out * R) + sum(h_n * S) (+ sum(c_n * S_c))

with fixed random R, S are compared element by element with central differences of L, for the
input, the initial state(s) and every parameter. The loss for the differences is evaluated in
inference mode (for the cells that is the plain cell functions, a separate code path from the
training forward).

Central differences with eps = 1e-6 in float64 agree with the exact derivative to ~1e-9 here
(truncation ~eps^2, rounding ~1e-16 * |L| / eps), hence FD_TOL. Sizes are small (T=4, B=3, I=3,
H=3) so that the module runs in a few seconds.
"""
import itertools

import numpy as np
import pytest

import rnnc
import rnnc.reference as ref
from rnnc.sequential import Sequential

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

EPS = 1e-6
FD_TOL = dict(rtol=1e-6, atol=1e-7)
T, B, I, H = 4, 3, 3, 3
LENGTHS = [4, 0, 2]          # a full, an empty and a partial sequence

# (id, class name, constructor options)
VARIANTS = [
    ("RNN-tanh", "RNN", {}),
    ("RNN-relu", "RNN", {"nonlinearity": "relu"}),
    ("GRU-reset_after", "GRU", {}),
    ("GRU-reset_before", "GRU", {"reset_after": False}),
    ("LSTM", "LSTM", {}),
    ("LSTM-proj", "LSTM", {"proj_size": 2}),
]
VARIANT_IDS = [v[0] for v in VARIANTS]
MERGE_MODES = ["concat", "sum", "mul", "ave", None]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def like(rng, obj):
    """Random normal arrays with the structure of obj (arrays, tuples of them, None)."""
    if obj is None:
        return None
    if isinstance(obj, tuple):
        return tuple(like(rng, o) for o in obj)
    return rng.standard_normal(np.shape(obj))


def dot(obj, weights):
    """sum(obj * weights), summed over matching nested tuples."""
    if obj is None:
        return 0.0
    if isinstance(obj, tuple):
        return sum(dot(o, w) for o, w in zip(obj, weights))
    return float(np.sum(obj * weights))


def leaves(obj):
    """The arrays of a nested tuple, in order (None skipped)."""
    if obj is None:
        return []
    if isinstance(obj, tuple):
        return [a for o in obj for a in leaves(o)]
    return [obj]


def zeros_like_state(layer, batch):
    """The explicit zero initial state that hx=None stands for."""
    lead = (layer.num_directions * layer.num_layers,) + (() if batch is None else (batch,))
    h = np.zeros(lead + (layer.proj_size or layer.hidden_size,))
    return (h, np.zeros(lead + (layer.hidden_size,))) if layer.mode == "LSTM" else h


def finite_diff(loss, a, eps=EPS):
    """Central differences of loss() with respect to every element of a (perturbed in place)."""
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


def randomise(module, rng, scale=1.0):
    """Parameters from U(-scale, scale), wider than the default init, so that the
    nonlinearities leave their linear region (written into the live arrays)."""
    for _, p in module.named_parameters():
        p[...] = rng.uniform(-scale, scale, p.shape)


def check_module(module, call, x, hx, grad_h_n_wanted=True, seed=0):
    """Train-mode call + backward against finite differences of the inference-mode loss.

    call(module, x, hx) -> (output, state) (state None for stateless modules).
    hx = (given, fd_hx): ``given`` is the initial state of the analytic call (may be None),
    ``fd_hx`` the same state as explicit arrays (zeros for None), perturbed by the differences.
    Returns (dx, dhx, grads, errors), errors the maximum absolute error of every checked
    gradient, keyed by name.
    """
    rng = np.random.default_rng(seed)
    given_hx, fd_hx = hx
    module.train()
    out, state = call(module, x, given_hx)
    R = like(rng, out)
    S = like(rng, state) if grad_h_n_wanted else None
    dx, dhx, grads = module.backward(R, S)
    module.eval()

    def loss():
        o, s = call(module, x, fd_hx)
        return dot(o, R) + (dot(s, S) if S is not None else 0.0)

    errors = {}
    checked = [("dx", dx, x)]
    checked += [(f"dhx[{k}]", g, a) for k, (g, a) in
                enumerate(zip(leaves(dhx), leaves(fd_hx)))]
    assert len(leaves(dhx)) == len(leaves(fd_hx))
    params = dict(module.named_parameters())
    assert sorted(grads) == sorted(params)
    checked += [(name, grads[name], params[name]) for name in params]
    for name, analytic, array in checked:
        assert analytic.shape == array.shape and analytic.dtype == np.float64, name
        numeric = finite_diff(loss, array)
        errors[name] = float(np.max(np.abs(analytic - numeric), initial=0.0))
        np.testing.assert_allclose(analytic, numeric, err_msg=name, **FD_TOL)
    return dx, dhx, grads, errors


def call_recurrent(lengths):
    def call(module, x, hx):
        return module(x, hx, lengths)
    return call


# ---------------------------------------------------------------------------
# RNN / GRU / LSTM layers
# ---------------------------------------------------------------------------

# Six configurations in which every pair of options takes all four value combinations
# (a covering array: each option is a column whose True rows pairwise intersect but differ).
LAYER_CONFIGS = [
    # (id, num_layers, bidirectional, lengths, bias, batch_first, hx)
    ("L2-bi-lengths-nobias-bf-hx", 2, True, True, False, True, True),
    ("L2-uni-lengths-bias-bf", 2, False, True, True, True, False),
    ("L2-uni-nobias-hx", 2, False, False, False, False, True),
    ("L1-bi-lengths-bias-hx", 1, True, True, True, False, True),
    ("L1-bi-nobias-bf", 1, True, False, False, True, False),
    ("L1-uni-bias", 1, False, False, True, False, False),
]


def test_layer_configs_cover_every_pair_of_options():
    columns = list(zip(*[c[1:] for c in LAYER_CONFIGS]))
    for a, b in itertools.combinations(columns, 2):
        assert len(set(zip(a, b))) == 4


@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=[c[0] for c in LAYER_CONFIGS])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_layer_gradients(variant, config):
    _, mode, kw = variant
    _, L, bidirectional, with_lengths, bias, batch_first, with_hx = config
    rng = np.random.default_rng(1301)
    layer = getattr(ref, mode)(I, H, num_layers=L, bias=bias, batch_first=batch_first,
                               bidirectional=bidirectional, dtype=np.float64, seed=7, **kw)
    randomise(layer, rng)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    lengths = LENGTHS if with_lengths else None
    fd_hx = zeros_like_state(layer, B)
    if with_hx:
        fd_hx = tuple(0.8 * rng.standard_normal(a.shape) for a in leaves(fd_hx))
        fd_hx = fd_hx if mode == "LSTM" else fd_hx[0]
    hx = (fd_hx if with_hx else None, fd_hx)
    dx, dhx, _, _ = check_module(layer, call_recurrent(lengths), x, hx, seed=13)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert np.all((dx[b, n:] if batch_first else dx[n:, b]) == 0)


# ---------------------------------------------------------------------------
# Bidirectional wrapper
# ---------------------------------------------------------------------------

def make_ref_bi(mode, kw, merge_mode, rng, **layer_kw):
    bi = ref.Bidirectional(getattr(ref, mode)(I, H, dtype=np.float64, seed=3, **kw, **layer_kw),
                           merge_mode=merge_mode)
    randomise(bi, rng)
    return bi


def bi_case(bi, rng, layout, with_lengths=True, with_hx=True):
    """x, lengths and (hx given, hx for the differences) for a layout: 'time-major',
    'batch-first' or 'unbatched'."""
    layer = bi.forward_layer
    batch = None if layout == "unbatched" else B
    if layout == "unbatched":
        x, lengths = rng.standard_normal((T, I)), 2
    elif layout == "batch-first":
        x, lengths = rng.standard_normal((B, T, I)), LENGTHS
    else:
        x, lengths = rng.standard_normal((T, B, I)), LENGTHS

    def state():
        s = tuple(0.8 * rng.standard_normal(a.shape)
                  for a in leaves(zeros_like_state(layer, batch)))
        return s if layer.mode == "LSTM" else s[0]

    fd_hx = (state(), state()) if with_hx else (zeros_like_state(layer, batch),
                                                zeros_like_state(layer, batch))
    return x, lengths if with_lengths else None, (fd_hx if with_hx else None, fd_hx)


def test_bidirectional_backward_reproducer():
    """Issue 13: reference.Bidirectional ran its backward layer on the flipped input, but its
    backward (inherited from rnnc.Bidirectional, whose backward layer runs reversed on the
    unflipped input) passed that layer the unflipped output gradient and returned the gradient
    of the flipped input as is. Before the fix: max error 1.4 in dx, 4.4 in the weights."""
    rng = np.random.default_rng(2024)
    bi = make_ref_bi("GRU", {}, "concat", rng)
    x, lengths, hx = bi_case(bi, rng, "time-major")
    _, _, _, errors = check_module(bi, call_recurrent(lengths), x, hx, seed=5)
    assert max(errors.values()) < 1e-7


# Every merge mode, variant and layout, stacked or not, with and without bias, lengths, hx.
BI_CASES = [
    # (variant, merge_mode, layout, num_layers, bias, lengths, hx)
    ("RNN-tanh", "concat", "time-major", 1, True, True, True),
    ("RNN-relu", "sum", "batch-first", 1, False, True, True),
    ("GRU-reset_after", "mul", "unbatched", 1, True, True, False),
    ("GRU-reset_before", "ave", "time-major", 2, True, False, True),
    ("LSTM", None, "batch-first", 1, True, True, True),
    ("LSTM-proj", "concat", "unbatched", 2, False, False, True),
    ("LSTM", "mul", "time-major", 1, False, True, True),
    ("GRU-reset_after", None, "time-major", 1, True, True, True),
    ("RNN-tanh", "ave", "unbatched", 1, True, True, True),
    ("LSTM-proj", "sum", "time-major", 1, True, True, False),
    ("GRU-reset_before", "concat", "batch-first", 1, True, False, False),
    ("RNN-relu", "mul", "batch-first", 2, True, True, False),
]
BI_IDS = ["-".join([c[0], str(c[1]), c[2], f"L{c[3]}"] + ["nobias"] * (not c[4])
                   + ["lengths"] * c[5] + ["hx"] * c[6]) for c in BI_CASES]


@pytest.mark.parametrize("case", BI_CASES, ids=BI_IDS)
def test_bidirectional_gradients(case):
    variant, merge_mode, layout, num_layers, bias, with_lengths, with_hx = case
    _, mode, kw = VARIANTS[VARIANT_IDS.index(variant)]
    rng = np.random.default_rng(4242)
    bi = make_ref_bi(mode, kw, merge_mode, rng, num_layers=num_layers, bias=bias,
                     batch_first=layout == "batch-first")
    x, lengths, hx = bi_case(bi, rng, layout, with_lengths, with_hx)
    dx, _, _, _ = check_module(bi, call_recurrent(lengths), x, hx, seed=17)
    if lengths is not None and layout != "unbatched":
        for b, n in enumerate(lengths):
            assert np.all((dx[b, n:] if layout == "batch-first" else dx[n:, b]) == 0)


def test_bidirectional_cases_cover_every_merge_mode_variant_and_layout():
    assert {c[1] for c in BI_CASES} == set(MERGE_MODES)
    assert {c[0] for c in BI_CASES} == set(VARIANT_IDS)
    assert {c[2] for c in BI_CASES} == {"time-major", "batch-first", "unbatched"}
    for column in range(3, 7):
        assert len({c[column] for c in BI_CASES}) == 2


@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_compiled_bidirectional_backward_matches_reference(variant, merge_mode):
    _, mode, kw = variant
    rng = np.random.default_rng(99)
    batch_first = MERGE_MODES.index(merge_mode) % 2 == 1
    bi = rnnc.Bidirectional(getattr(rnnc, mode)(I, H, num_layers=2, batch_first=batch_first,
                                                dtype=np.float64, seed=1, **kw),
                            merge_mode=merge_mode)
    randomise(bi, rng)
    rbi = ref.Bidirectional(getattr(ref, mode)(I, H, num_layers=2, batch_first=batch_first,
                                               dtype=np.float64, seed=2, **kw),
                            merge_mode=merge_mode)
    rbi.load_state_dict(bi.state_dict())
    x, lengths, (hx, _) = bi_case(bi, rng, "batch-first" if batch_first else "time-major")
    results = []
    for m in (bi, rbi):
        m.train()
        out, state = m(x, hx, lengths)
        g_rng = np.random.default_rng(5)
        results.append(m.backward(like(g_rng, out), like(g_rng, state)))
    (dx, dhx, grads), (r_dx, r_dhx, r_grads) = results
    np.testing.assert_allclose(dx, r_dx, rtol=1e-10, atol=1e-10, err_msg="dx")
    for k, (a, b) in enumerate(zip(leaves(dhx), leaves(r_dhx))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=f"dhx[{k}]")
    assert list(grads) == list(r_grads)
    for name in grads:
        np.testing.assert_allclose(grads[name], r_grads[name], rtol=1e-10, atol=1e-10,
                                   err_msg=name)


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

CELL_VARIANTS = [
    ("RNNCell-tanh", "RNNCell", {}),
    ("RNNCell-relu", "RNNCell", {"nonlinearity": "relu"}),
    ("GRUCell-reset_after", "GRUCell", {}),
    ("GRUCell-reset_before", "GRUCell", {"reset_after": False}),
    ("LSTMCell", "LSTMCell", {}),
]


def call_cell(cell, x, hx):
    # A cell's output is its new state; the loss weights the output only.
    return cell(x, hx), None


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=[v[0] for v in CELL_VARIANTS])
def test_cell_gradients(variant, bias, batched):
    _, name, kw = variant
    rng = np.random.default_rng(31)
    cell = getattr(ref, name)(I, H, bias=bias, dtype=np.float64, seed=4, **kw)
    randomise(cell, rng)
    lead = (B,) if batched else ()
    x = rng.standard_normal(lead + (I,))
    h = 0.8 * rng.standard_normal(lead + (H,))
    hx = (h, 0.8 * rng.standard_normal(lead + (H,))) if name == "LSTMCell" else h
    check_module(cell, call_cell, x, (hx, hx), grad_h_n_wanted=False, seed=37)


# ---------------------------------------------------------------------------
# Linear and Sequential
# ---------------------------------------------------------------------------

def call_plain(module, x, hx):
    return module(x), None


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", [None, "tanh", "relu", "sigmoid", "softmax"])
def test_linear_gradients(activation, bias):
    rng = np.random.default_rng(41)
    lin = ref.Linear(I, H, bias=bias, activation=activation, dtype=np.float64, seed=6)
    randomise(lin, rng)
    x = rng.standard_normal((T, B, I))
    check_module(lin, call_plain, x, (None, None), grad_h_n_wanted=False, seed=43)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_sequential_gradients(lengths):
    rng = np.random.default_rng(53)
    model = Sequential(
        ref.LSTM(I, H, proj_size=2, dtype=np.float64, seed=1),
        ref.Bidirectional(ref.GRU(2, 3, batch_first=False, dtype=np.float64, seed=2),
                          merge_mode="concat"),
        ref.Linear(6, 2, activation="tanh", dtype=np.float64, seed=3),
    )
    randomise(model, rng)
    x = rng.standard_normal((T, B, I))

    def call(module, x, hx):
        return module(x, lengths), None

    dx, _, _, _ = check_module(model, call, x, (None, None), grad_h_n_wanted=False, seed=59)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert np.all(dx[n:, b] == 0)
