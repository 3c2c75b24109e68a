"""rnnc.RNNCell / GRUCell / LSTMCell against the reference cells, and against the layers."""
import numpy as np
import pytest

import rnnc
import rnnc.reference

from conftest import DTYPES, assert_close, make_pair

# (cell class, extra kwargs)
CELL_VARIANTS = [
    ("RNNCell", {}),
    ("RNNCell", {"nonlinearity": "relu"}),
    ("GRUCell", {}),
    ("GRUCell", {"reset_after": False}),
    ("LSTMCell", {}),
]
CELL_IDS = ["RNN-tanh", "RNN-relu", "GRU", "GRU-reset_before", "LSTM"]
LAYER_OF = {"RNNCell": "RNN", "GRUCell": "GRU", "LSTMCell": "LSTM"}


def random_hx(rng, name, lead, H, dtype):
    h = (0.8 * rng.standard_normal(lead + (H,))).astype(dtype)
    if name == "LSTMCell":
        return h, (0.8 * rng.standard_normal(lead + (H,))).astype(dtype)
    return h


def assert_cell_close(got, expected, dtype):
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == 2
        assert_close(got[0], expected[0], dtype)
        assert_close(got[1], expected[1], dtype)
    else:
        assert_close(got, expected, dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_matches_reference(variant, dtype, batched, given_hx, bias, rng):
    name, extra = variant
    for seed in range(3):
        B, I, H = int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 6))
        cell, ref = make_pair(name, I, H, bias=bias, dtype=dtype, seed=seed, **extra)
        lead = (B,) if batched else ()
        x = (2 * rng.standard_normal(lead + (I,))).astype(dtype)
        hx = random_hx(rng, name, lead, H, dtype) if given_hx else None
        got = cell(x, hx)
        expected = ref(x, hx)
        assert_cell_close(got, expected, dtype)
        for a in (got if isinstance(got, tuple) else (got,)):
            assert a.shape == lead + (H,)
        if not given_hx:
            zeros = random_hx(rng, name, lead, H, dtype)
            zeros = tuple(np.zeros_like(a) for a in zeros) if isinstance(zeros, tuple) \
                else np.zeros_like(zeros)
            assert_cell_close(cell(x, zeros), got, dtype)


@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_state_dict_names_and_copies(variant, rng):
    name, extra = variant
    G = {"RNNCell": 1, "GRUCell": 3, "LSTMCell": 4}[name]
    cell = getattr(rnnc, name)(3, 5, seed=0, dtype=np.float64, **extra)
    sd = cell.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == [
        ("weight_ih", (G * 5, 3)), ("weight_hh", (G * 5, 5)), ("bias_ih", (G * 5,)),
        ("bias_hh", (G * 5,))]
    bound = 1 / np.sqrt(5)
    for v in sd.values():
        assert np.all(np.abs(v) <= bound)
    nob = getattr(rnnc, name)(3, 5, bias=False, seed=0, **extra)
    assert list(nob.state_dict()) == ["weight_ih", "weight_hh"]
    assert isinstance(repr(cell), str) and isinstance(repr(nob), str)

    x = rng.standard_normal((2, 3))
    before = cell(x)
    for v in sd.values():
        v[...] = 0.25          # returned copies
    src = {k: v.copy() for k, v in sd.items()}
    other = getattr(rnnc, name)(3, 5, seed=1, dtype=np.float64, **extra)
    other.load_state_dict(src)
    for v in src.values():
        v[...] = 9.0           # load_state_dict copied
    after = cell(x)
    (np.testing.assert_array_equal(before[0], after[0]) if isinstance(before, tuple)
     else np.testing.assert_array_equal(before, after))
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, np.full_like(v, 0.25))
    # Same seed, same cell; other seed, other cell.
    again = getattr(rnnc, name)(3, 5, seed=0, dtype=np.float64, **extra).state_dict()
    third = getattr(rnnc, name)(3, 5, seed=7, dtype=np.float64, **extra).state_dict()
    for k in again:
        np.testing.assert_array_equal(again[k], cell.state_dict()[k])
        assert not np.array_equal(third[k], again[k])


@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_does_not_alias_or_modify_hx(variant, rng):
    name, extra = variant
    cell = getattr(rnnc, name)(3, 4, seed=0, dtype=np.float64, **extra)
    x = rng.standard_normal((2, 3))
    hx = random_hx(rng, name, (2,), 4, np.float64)
    hxs = hx if isinstance(hx, tuple) else (hx,)
    copies = [a.copy() for a in hxs]
    got = cell(x, hx)
    gots = got if isinstance(got, tuple) else (got,)
    for g in gots:
        for a in hxs + (x,):
            assert not np.shares_memory(g, a)
        for _, p in cell.named_parameters():
            assert not np.shares_memory(g, p)
    if len(gots) == 2:
        assert not np.shares_memory(gots[0], gots[1])
    for a, a0 in zip(hxs, copies):
        np.testing.assert_array_equal(a, a0)
    expected = [g.copy() for g in gots]
    for g in gots:
        g[...] = 5.0
    again = cell(x, hx)
    for g, e in zip(again if isinstance(again, tuple) else (again,), expected):
        np.testing.assert_array_equal(g, e)
    # LSTMCell without hx: h and c start from separate zero states.
    if name == "LSTMCell":
        h, c = cell(x)
        assert not np.shares_memory(h, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_input_conversion_and_layouts(variant, dtype, rng):
    name, extra = variant
    cell, ref = make_pair(name, 3, 4, dtype=dtype, seed=3, **extra)
    x = rng.integers(-2, 3, size=(3, 5)).T              # int, non-contiguous (5, 3)
    x.setflags(write=False)
    got = cell(x)
    expected = cell(np.ascontiguousarray(x, dtype=dtype))
    assert_cell_close(got, expected, dtype)
    assert_cell_close(got, ref(x), dtype)
    got16 = cell(x.astype(np.float16))
    assert_cell_close(got16, expected, dtype)
    # Empty batch.
    empty = cell(np.zeros((0, 3), dtype=dtype))
    for a in (empty if isinstance(empty, tuple) else (empty,)):
        assert a.shape == (0, 4) and a.dtype == dtype


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_stepped_equals_layer(variant, dtype, bias, rng):
    name, extra = variant
    T, B, I, H = 7, 3, 4, 5
    cell = getattr(rnnc, name)(I, H, bias=bias, dtype=dtype, seed=11, **extra)
    layer = getattr(rnnc, LAYER_OF[name])(I, H, bias=bias, dtype=dtype, seed=12, **extra)
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = random_hx(rng, name, (B,), H, dtype)
    state = hx
    outs = []
    for t in range(T):
        state = cell(x[t], state)
        outs.append(state[0] if isinstance(state, tuple) else state)
    layer_hx = tuple(a[None] for a in hx) if isinstance(hx, tuple) else hx[None]
    out, h_n = layer(x, layer_hx)
    assert_close(out, np.stack(outs), dtype)
    if isinstance(state, tuple):
        assert_close(h_n[0][0], state[0], dtype)
        assert_close(h_n[1][0], state[1], dtype)
    else:
        assert_close(h_n[0], state, dtype)

    # Unbatched stepping equals the unbatched layer, too.
    state = tuple(a[0] for a in hx) if isinstance(hx, tuple) else hx[0]
    for t in range(T):
        state = cell(x[t, 0], state)
    out_u, h_u = layer(x[:, 0], tuple(a[:, 0] for a in layer_hx) if isinstance(hx, tuple)
                       else layer_hx[:, 0])
    if isinstance(state, tuple):
        assert_close(h_u[0][0], state[0], dtype)
        assert_close(h_u[1][0], state[1], dtype)
    else:
        assert_close(h_u[0], state, dtype)


@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=CELL_IDS)
def test_cell_bad_arguments(variant):
    name, extra = variant
    cell = getattr(rnnc, name)(3, 4, seed=0, **extra)
    with pytest.raises(ValueError):
        cell(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError):
        cell(np.zeros((2, 2, 3), np.float32))
    bad = np.zeros((3, 4), np.float32)
    with pytest.raises((ValueError, TypeError)):
        cell(np.zeros((2, 3), np.float32), (bad, bad) if name == "LSTMCell" else bad)
