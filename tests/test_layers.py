"""rnnc.RNN / GRU / LSTM (compiled) against rnnc.reference.RNN / GRU / LSTM (NumPy loops).

Both sides share argument handling and parameters; every number is computed independently.
"""
import itertools

import numpy as np
import pytest

import rnnc
import rnnc.reference

from conftest import (DTYPES, MODES, TOL, VARIANT_IDS, VARIANTS, assert_close, assert_same_result,
                      assert_states_close, make_pair, nan_padded, random_initial_state,
                      resolve_kwargs)

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def build(variant, I, H, rng=None, seed=0, **kwargs):
    mode, extra = variant
    kw = resolve_kwargs(extra, H, rng)
    kw.update(kwargs)
    return make_pair(mode, I, H, seed=seed, **kw)


def same_config(mod, **overrides):
    """A new compiled layer configured like `mod` (from its public attributes)."""
    kw = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first,
              bidirectional=mod.bidirectional, dtype=mod.dtype)
    if mod.mode == "RNN":
        kw["nonlinearity"] = mod.nonlinearity
    if mod.mode == "GRU":
        kw["reset_after"] = mod.reset_after
    if mod.mode == "LSTM":
        kw["proj_size"] = mod.proj_size
    kw.update(overrides)
    return getattr(rnnc, mod.mode)(mod.input_size, mod.hidden_size, **kw)


def padded_zero(out, lengths, batch_first=False):
    for b, n in enumerate(lengths):
        pad = out[b, int(n):] if batch_first else out[int(n):, b]
        assert np.all(pad == 0), f"padding of sequence {b} (length {n}) is not 0"


def expected_names_and_shapes(mode, I, H, num_layers=1, bidirectional=False, bias=True,
                              proj_size=0):
    """torch.nn.RNN/GRU/LSTM's state_dict keys, in order, with shapes (from torch's docs)."""
    G = GATES[mode]
    P = proj_size or H
    D = 2 if bidirectional else 1
    items = []
    for k in range(num_layers):
        for sfx in ("", "_reverse")[:D]:
            items.append((f"weight_ih_l{k}{sfx}", (G * H, I if k == 0 else D * P)))
            items.append((f"weight_hh_l{k}{sfx}", (G * H, P)))
            if bias:
                items.append((f"bias_ih_l{k}{sfx}", (G * H,)))
                items.append((f"bias_hh_l{k}{sfx}", (G * H,)))
            if proj_size:
                items.append((f"weight_hr_l{k}{sfx}", (P, H)))
    return items


# ---------------------------------------------------------------------------------------------
# Broad random comparison
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_matches_reference(variant, num_layers, bidirectional, dtype):
    # Seeds 0..3 walk through bias on/off, batch_first, given states and lengths.
    for seed in range(4):
        rng = np.random.default_rng([seed, num_layers, int(bidirectional),
                                     VARIANTS.index(variant), np.dtype(dtype).itemsize])
        T, B, I, H = (int(rng.integers(1, 7)), int(rng.integers(1, 5)),
                      int(rng.integers(1, 6)), int(rng.integers(2, 6)))
        bias = seed != 1
        batch_first = seed in (2, 3)
        mod, ref = build(variant, I, H, rng, seed=seed, num_layers=num_layers, bias=bias,
                         bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
        hx = random_initial_state(rng, mod, B, dtype) if seed >= 1 else None
        lengths = rng.integers(0, T + 1, size=B) if seed >= 2 else None
        out, state = mod(x, hx, lengths)
        r_out, r_state = ref(x, hx, lengths)
        assert_close(out, r_out, dtype)
        assert_states_close(state, r_state, dtype)
        D = 2 if bidirectional else 1
        P = mod.proj_size or H
        assert out.shape == ((B, T, D * P) if batch_first else (T, B, D * P))
        if lengths is not None:
            padded_zero(out, lengths, batch_first)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_matches_reference_several_seeds_larger(variant, dtype):
    for seed in (10, 11, 12):
        rng = np.random.default_rng(seed)
        T, B, I, H = 9, 5, 7, 8
        mod, ref = build(variant, I, H, rng, seed=seed, num_layers=2, bidirectional=True,
                         dtype=dtype)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        hx = random_initial_state(rng, mod, B, dtype)
        lengths = [9, 3, 0, 9, 5]
        out, state = mod(x, hx, lengths)
        r_out, r_state = ref(x, hx, lengths)
        assert_close(out, r_out, dtype)
        assert_states_close(state, r_state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_bias_false(variant, dtype, rng):
    mod, ref = build(variant, 3, 4, rng, num_layers=2, bidirectional=True, bias=False,
                     dtype=dtype)
    assert not any(k.startswith("bias") for k in mod.state_dict())
    x = rng.standard_normal((5, 2, 3)).astype(dtype)
    hx = random_initial_state(rng, mod, 2, dtype)
    out, state = mod(x, hx, [5, 2])
    r_out, r_state = ref(x, hx, [5, 2])
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)
    # Without bias and with zero input and zero state, everything stays exactly zero
    # (tanh(0) = relu(0) = 0, and the gated updates of GRU/LSTM keep 0 at 0).
    out0, st0 = mod(np.zeros((4, 2, 3), dtype))
    assert np.all(out0 == 0)
    for s in (st0 if isinstance(st0, tuple) else (st0,)):
        assert np.all(s == 0)


def test_relu_differs_from_tanh_and_is_nonnegative(rng):
    tanh_m, _ = make_pair("RNN", 3, 6, dtype=np.float64, seed=3)
    relu_m, relu_r = make_pair("RNN", 3, 6, nonlinearity="relu", dtype=np.float64, seed=3)
    x = 3 * rng.standard_normal((6, 4, 3))
    out_relu, h_relu = relu_m(x)
    assert np.all(out_relu >= 0) and np.any(out_relu > 1)     # tanh could never exceed 1
    assert np.any(out_relu == 0)
    assert not np.allclose(out_relu, tanh_m(x)[0])
    assert_close(out_relu, relu_r(x)[0], np.float64)


def test_gru_reset_after_false_differs(rng):
    a, _ = make_pair("GRU", 3, 4, dtype=np.float64, seed=5)
    b, b_ref = make_pair("GRU", 3, 4, reset_after=False, dtype=np.float64, seed=5)
    assert a.state_dict().keys() == b.state_dict().keys()
    x = rng.standard_normal((6, 2, 3))
    out_a, _ = a(x)
    out_b, h_b = b(x)
    assert np.max(np.abs(out_a - out_b)) > 1e-3
    r_out, r_h = b_ref(x)
    assert_close(out_b, r_out, np.float64)
    assert_close(h_b, r_h, np.float64)


# ---------------------------------------------------------------------------------------------
# batch_first, unbatched, initial states
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_batch_first(variant, dtype, rng):
    mod_bf, ref_bf = build(variant, 3, 4, rng, num_layers=2, bidirectional=True,
                           batch_first=True, dtype=dtype)
    mod_tm = same_config(mod_bf, batch_first=False)
    mod_tm.load_state_dict(mod_bf.state_dict())
    B, T = 3, 5
    x_bf = rng.standard_normal((B, T, 3)).astype(dtype)
    hx = random_initial_state(rng, mod_bf, B, dtype)      # states stay (D*L, B, H)
    lengths = [2, 5, 0]
    out_bf, st_bf = mod_bf(x_bf, hx, lengths)
    out_tm, st_tm = mod_tm(np.ascontiguousarray(x_bf.transpose(1, 0, 2)), hx, lengths)
    assert out_bf.shape == (B, T, 2 * (mod_bf.proj_size or 4))
    np.testing.assert_array_equal(out_bf, out_tm.transpose(1, 0, 2))
    assert_same_result((out_bf, st_bf), (out_tm.transpose(1, 0, 2), st_tm))
    r_out, r_st = ref_bf(x_bf, hx, lengths)
    assert_close(out_bf, r_out, dtype)
    assert_states_close(st_bf, r_st, dtype)
    padded_zero(out_bf, lengths, batch_first=True)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_unbatched(variant, dtype, bidirectional, given_state, batch_first, rng):
    L, T, I, H = 2, 5, 3, 4
    mod, ref = build(variant, I, H, rng, num_layers=L, bidirectional=bidirectional,
                     batch_first=batch_first, dtype=dtype)
    D, P = (2 if bidirectional else 1), mod.proj_size or H
    x = rng.standard_normal((T, I)).astype(dtype)
    hx = random_initial_state(rng, mod, None, dtype, unbatched=True) if given_state else None
    out, state = mod(x, hx)
    assert out.shape == (T, D * P)
    h_n = state[0] if variant[0] == "LSTM" else state
    assert h_n.shape == (D * L, P)
    if variant[0] == "LSTM":
        assert state[1].shape == (D * L, H)
    r_out, r_state = ref(x, hx)
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)

    # Same as a batch of one (the batch axis where batch_first puts it).
    xb = x[None] if batch_first else x[:, None]
    if hx is None:
        hb = None
    elif isinstance(hx, tuple):
        hb = (hx[0][:, None], hx[1][:, None])
    else:
        hb = hx[:, None]
    out_b, state_b = mod(xb, hb)
    np.testing.assert_array_equal(out, out_b[0] if batch_first else out_b[:, 0])
    if isinstance(state, tuple):
        np.testing.assert_array_equal(state[0], state_b[0][:, 0])
        np.testing.assert_array_equal(state[1], state_b[1][:, 0])
    else:
        np.testing.assert_array_equal(state, state_b[:, 0])

    # Unbatched with a length (scalar or one-element list): the tail is padding.
    for n in (3, [3], np.int64(3), 0):
        out_n, state_n = mod(nan_padded(x[:, None], [int(np.ravel(n)[0])])[:, 0], hx, n)
        r_out_n, r_state_n = ref(x, hx, n)
        assert_close(out_n, r_out_n, dtype)
        assert_states_close(state_n, r_state_n, dtype)
        assert np.all(out_n[int(np.ravel(n)[0]):] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_given_initial_state(variant, dtype, rng):
    mod, ref = build(variant, 2, 5, rng, num_layers=3, bidirectional=True, dtype=dtype)
    x = rng.standard_normal((4, 3, 2)).astype(dtype)
    hx = random_initial_state(rng, mod, 3, dtype)
    out, state = mod(x, hx)
    r_out, r_state = ref(x, hx)
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)
    # The state matters...
    out0, _ = mod(x)
    assert np.max(np.abs(out - out0)) > 1e-4
    # ...and hx=None means zeros.
    zeros = tuple(np.zeros_like(a) for a in hx) if isinstance(hx, tuple) else np.zeros_like(hx)
    assert_same_result(mod(x), mod(x, zeros))
    # hx as a list for LSTM, and as nested lists.
    if isinstance(hx, tuple):
        assert_same_result(mod(x, list(hx)), (out, state))
        assert_same_result(mod(x, (hx[0].tolist(), hx[1].tolist())), (out, state))
    else:
        assert_same_result(mod(x, hx.tolist()), (out, state))


# ---------------------------------------------------------------------------------------------
# Variable lengths
# ---------------------------------------------------------------------------------------------

LENGTH_CASES = {
    "mixed": lambda T, B: np.array([T, 1, 3, 0, 2])[:B],
    "with_zeros": lambda T, B: np.array([0, T, 0, 2, 0])[:B],
    "all_zero": lambda T, B: np.zeros(B, dtype=np.int64),
    "all_full": lambda T, B: np.full(B, T),
    "all_equal_short": lambda T, B: np.full(B, 3),
    "unsorted": lambda T, B: np.array([2, 5, 1, 6, 3])[:B],
    "increasing": lambda T, B: np.array([1, 2, 3, 4, 5])[:B],
    "list": lambda T, B: [4, 6, 2, 6, 1][:B],
    "tuple_int32": lambda T, B: tuple(np.array([3, 1, 6, 0, 6], dtype=np.int32)[:B]),
    "uint8": lambda T, B: np.array([6, 0, 4, 4, 2], dtype=np.uint8)[:B],
    "whole_floats": lambda T, B: np.array([2.0, 6.0, 5.0, 1.0, 0.0])[:B],
}


@pytest.mark.parametrize("case", list(LENGTH_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_lengths(variant, dtype, case, rng):
    T, B, I, H = 6, 5, 3, 4
    lengths = LENGTH_CASES[case](T, B)
    n = np.asarray(lengths).astype(int)
    mod, ref = build(variant, I, H, rng, num_layers=2, bidirectional=True, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = random_initial_state(rng, mod, B, dtype)
    out, state = mod(nan_padded(x, n), hx, lengths)
    r_out, r_state = ref(x, hx, lengths)
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)
    assert np.all(np.isfinite(out))
    padded_zero(out, n)
    # Zero-length sequences keep their initial state exactly.
    h0s = hx if isinstance(hx, tuple) else (hx,)
    sts = state if isinstance(state, tuple) else (state,)
    for b in np.flatnonzero(n == 0):
        for s, s0 in zip(sts, h0s):
            np.testing.assert_array_equal(s[:, b], s0[:, b])
    # Full lengths are the same as no lengths at all.
    if case == "all_full":
        assert_same_result((out, state), mod(x, hx))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_final_state_at_each_sequences_own_last_step(variant, bidirectional, rng):
    """Each sequence of a padded batch gives what it gives when run alone, truncated."""
    dtype = np.float64
    T, B, I, H = 7, 5, 3, 4
    mod, _ = build(variant, I, H, rng, num_layers=2, bidirectional=bidirectional, dtype=dtype)
    x = rng.standard_normal((T, B, I))
    hx = random_initial_state(rng, mod, B, dtype)
    lengths = np.array([3, 7, 0, 1, 5])
    out, state = mod(nan_padded(x, lengths), hx, lengths)
    for b, n in enumerate(lengths):
        hb = tuple(a[:, b:b + 1] for a in hx) if isinstance(hx, tuple) else hx[:, b:b + 1]
        out_b, state_b = mod(x[:n, b:b + 1], hb)
        assert_close(out[:n, b:b + 1], out_b, dtype)
        assert np.all(out[n:, b] == 0)
        if isinstance(state, tuple):
            assert_close(state[0][:, b:b + 1], state_b[0], dtype)
            assert_close(state[1][:, b:b + 1], state_b[1], dtype)
        else:
            assert_close(state[:, b:b + 1], state_b, dtype)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, 1e30])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_padding_content_never_leaks(mode, batch_first, fill, rng):
    dtype = np.float32 if fill == 1e30 else np.float64
    mod, _ = make_pair(mode, 2, 3, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=dtype, seed=4)
    T, B = 5, 4
    x = rng.standard_normal((B, T, 2) if batch_first else (T, B, 2)).astype(dtype)
    lengths = [5, 2, 0, 3]
    clean = mod(nan_padded(x, lengths, batch_first, fill=0.0), None, lengths)
    dirty = mod(nan_padded(x, lengths, batch_first, fill=fill), None, lengths)
    assert_same_result(clean, dirty)
    out, state = dirty
    assert np.all(np.isfinite(out))
    for s in (state if isinstance(state, tuple) else (state,)):
        assert np.all(np.isfinite(s))
    padded_zero(out, lengths, batch_first)


# ---------------------------------------------------------------------------------------------
# Empty inputs: T = 0, B = 0
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_empty_time_and_batch(variant, dtype, bidirectional, rng):
    L, I, H = 2, 3, 4
    mod, ref = build(variant, I, H, rng, num_layers=L, bidirectional=bidirectional, dtype=dtype)
    D, P = (2 if bidirectional else 1), mod.proj_size or H
    lstm = variant[0] == "LSTM"

    def states(st):
        return st if lstm else (st,)

    # T = 0, B = 3: output (0, 3, D*P), final state = initial state.
    B = 3
    hx = random_initial_state(rng, mod, B, dtype)
    for lengths in (None, [0, 0, 0], np.zeros(3, dtype=np.int32)):
        x = np.zeros((0, B, I), dtype=dtype)
        out, st = mod(x, hx, lengths)
        assert out.shape == (0, B, D * P) and out.dtype == dtype
        for s, s0 in zip(states(st), states(hx)):
            assert s.dtype == dtype
            np.testing.assert_array_equal(s, s0)
            assert not np.shares_memory(s, s0)
        r_out, r_st = ref(x, hx, lengths)
        assert r_out.shape == out.shape
        assert_states_close(st, r_st, dtype)
    # hx omitted: zero state.
    out, st = mod(np.zeros((0, B, I), dtype=dtype))
    assert out.shape == (0, B, D * P)
    for s, size in zip(states(st), (P, H)):
        assert s.shape == (D * L, B, size) and np.all(s == 0)

    # B = 0, T = 4: output (4, 0, D*P), states (D*L, 0, .).
    for lengths in (None, [], np.zeros(0, dtype=np.int64)):
        out, st = mod(np.zeros((4, 0, I), dtype=dtype), None, lengths)
        assert out.shape == (4, 0, D * P) and out.dtype == dtype
        for s, size in zip(states(st), (P, H)):
            assert s.shape == (D * L, 0, size) and s.dtype == dtype
    hx0 = random_initial_state(rng, mod, 0, dtype)
    out, st = mod(np.zeros((4, 0, I), dtype=dtype), hx0)
    assert out.shape == (4, 0, D * P)
    # T = 0 and B = 0 at once.
    out, st = mod(np.zeros((0, 0, I), dtype=dtype))
    assert out.shape == (0, 0, D * P)

    # batch_first: (B, 0, I) -> (B, 0, D*P).
    mod_bf = same_config(mod, batch_first=True)
    out, st = mod_bf(np.zeros((B, 0, I), dtype=dtype), hx)
    assert out.shape == (B, 0, D * P)
    for s, s0 in zip(states(st), states(hx)):
        np.testing.assert_array_equal(s, s0)

    # Unbatched T = 0: (0, I) -> (0, D*P), state (D*L, P) = h0.
    hxu = random_initial_state(rng, mod, None, dtype, unbatched=True)
    out, st = mod(np.zeros((0, I), dtype=dtype), hxu)
    assert out.shape == (0, D * P)
    for s, s0 in zip(states(st), states(hxu)):
        assert s.shape == s0.shape
        np.testing.assert_array_equal(s, s0)
    out, st = mod(np.zeros((0, I), dtype=dtype), hxu, 0)
    assert out.shape == (0, D * P)


# ---------------------------------------------------------------------------------------------
# Input-projection chunks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("varlen", [False, True], ids=["full", "varlen"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("chunk_steps", [1, 2, 7])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_long_sequences_cross_chunk_boundaries(variant, chunk_steps, bidirectional, varlen,
                                               force_plan, rng):
    dtype = np.float64
    T, B, I, H = 23, 3, 2, 3
    mod, ref = build(variant, I, H, rng, num_layers=2, bidirectional=bidirectional,
                     dtype=dtype)
    x = rng.standard_normal((T, B, I))
    hx = random_initial_state(rng, mod, B, dtype)
    lengths = np.array([17, 23, 8]) if varlen else None
    unchunked = mod(x, hx, lengths)
    force_plan(chunk_steps=chunk_steps)     # several chunks, the last one partial
    out, state = mod(nan_padded(x, lengths), hx, lengths)
    r_out, r_state = ref(x, hx, lengths)
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)
    assert_close(out, unchunked[0], dtype)
    assert_states_close(state, unchunked[1], dtype)
    if varlen:
        padded_zero(out, lengths)


# ---------------------------------------------------------------------------------------------
# Input dtypes and memory layouts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_dtype", [np.int64, np.int32, np.uint8, np.float16, "other"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_input_dtypes_are_converted(mode, dtype, in_dtype, rng):
    if in_dtype == "other":
        in_dtype = np.float32 if dtype == np.float64 else np.float64
    mod, ref = make_pair(mode, 3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=2)
    if np.dtype(in_dtype).kind in "iu":
        x = rng.integers(0, 4, size=(5, 2, 3)).astype(in_dtype)
    else:
        x = rng.standard_normal((5, 2, 3)).astype(in_dtype)
    hx = random_initial_state(rng, mod, 2, np.float64)
    hx_in = tuple(a.astype(np.float16) for a in hx) if isinstance(hx, tuple) \
        else hx.astype(np.float16)
    hx_cast = tuple(a.astype(np.float16).astype(dtype) for a in hx) if isinstance(hx, tuple) \
        else hx.astype(np.float16).astype(dtype)
    out, state = mod(x, hx_in, [5, 3])
    assert out.dtype == dtype
    for s in (state if isinstance(state, tuple) else (state,)):
        assert s.dtype == dtype
    assert_same_result((out, state), mod(x.astype(dtype), hx_cast, [5, 3]))
    r_out, r_state = ref(x, hx_in, [5, 3])
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)


def _layouts(a):
    """Views of the same values with other memory layouts."""
    strided = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
    view = strided[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    readonly = a.copy()
    readonly.setflags(write=False)
    backwards = a[::-1].copy()[::-1]
    axes = tuple(range(a.ndim))[::-1]
    transposed = np.ascontiguousarray(a.transpose(axes)).transpose(axes)
    return {"strided": view, "fortran": np.asfortranarray(a), "readonly": readonly,
            "negative_strides": backwards, "transposed_view": transposed}


@pytest.mark.parametrize("layout", ["strided", "fortran", "readonly", "negative_strides",
                                    "transposed_view"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_memory_layouts(mode, dtype, batch_first, layout, rng):
    mod, ref = make_pair(mode, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                         dtype=dtype, seed=6)
    T, B = 5, 3
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3)).astype(dtype)
    hx = random_initial_state(rng, mod, B, dtype)
    lengths = np.array([5, 1, 3])
    expected = mod(x, hx, lengths)
    x_l = _layouts(x)[layout]
    hx_l = tuple(_layouts(a)[layout] for a in hx) if isinstance(hx, tuple) \
        else _layouts(hx)[layout]
    len_l = _layouts(lengths)[layout]
    x_before = x_l.copy()
    got = mod(x_l, hx_l, len_l)
    assert_same_result(got, expected)
    np.testing.assert_array_equal(x_l, x_before)           # input untouched
    r_out, r_state = ref(x_l, hx_l, len_l)
    assert_close(got[0], r_out, dtype)
    assert_states_close(got[1], r_state, dtype)
    # Unbatched, from a non-contiguous 2-D view.
    xu = _layouts(x[:, 0] if not batch_first else x[0])[layout]
    assert_close(mod(xu)[0], ref(xu)[0], dtype)


# ---------------------------------------------------------------------------------------------
# Aliasing: results are fresh arrays
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["full", "lengths", "unbatched", "batch_first", "empty_T",
                                  "empty_B"])
@pytest.mark.parametrize("mode", MODES)
def test_outputs_do_not_alias_inputs_or_module(mode, case, rng):
    dtype = np.float64
    mod, _ = make_pair(mode, 3, 4, num_layers=2, bidirectional=True,
                       batch_first=case == "batch_first", dtype=dtype, seed=8)
    T, B = {"empty_T": (0, 3), "empty_B": (4, 0)}.get(case, (4, 3))
    if case == "unbatched":
        x = rng.standard_normal((T, 3))
        hx = random_initial_state(rng, mod, None, dtype, unbatched=True)
    else:
        x = rng.standard_normal((B, T, 3) if case == "batch_first" else (T, B, 3))
        hx = random_initial_state(rng, mod, B, dtype)
    lengths = [4, 0, 2] if case == "lengths" else None
    hx_list = list(hx) if isinstance(hx, tuple) else [hx]
    x_copy, hx_copies = x.copy(), [a.copy() for a in hx_list]
    params_before = mod.state_dict()

    out, state = mod(x, hx, lengths)
    results = [out] + (list(state) if isinstance(state, tuple) else [state])
    for r in results:
        for src in [x] + hx_list + [v for _, v in mod.named_parameters()]:
            assert not np.shares_memory(r, src)
    for r1, r2 in itertools.combinations(results, 2):
        assert not np.shares_memory(r1, r2)
    # Inputs untouched by the call.
    np.testing.assert_array_equal(x, x_copy)
    for a, a0 in zip(hx_list, hx_copies):
        np.testing.assert_array_equal(a, a0)

    expected = [r.copy() for r in results]
    for r in results:                       # scribble over what was returned
        r[...] = 123.0
    for k, v in mod.state_dict().items():
        np.testing.assert_array_equal(v, params_before[k])
    for a, a0 in zip(hx_list, hx_copies):
        np.testing.assert_array_equal(a, a0)
    out2, state2 = mod(x, hx, lengths)
    results2 = [out2] + (list(state2) if isinstance(state2, tuple) else [state2])
    for r, e in zip(results2, expected):
        np.testing.assert_array_equal(r, e)


# ---------------------------------------------------------------------------------------------
# Parameters: names, shapes, copies, initialisation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_state_dict_names_and_shapes(variant, num_layers, bidirectional, bias):
    mode, extra = variant
    I, H = 5, 6
    kw = resolve_kwargs(extra, H)
    for dtype in DTYPES:
        mod = getattr(rnnc, mode)(I, H, num_layers=num_layers, bidirectional=bidirectional,
                                  bias=bias, dtype=dtype, seed=0, **kw)
        sd = mod.state_dict()
        expected = expected_names_and_shapes(mode, I, H, num_layers, bidirectional, bias,
                                             kw.get("proj_size", 0))
        assert [(k, v.shape) for k, v in sd.items()] == expected
        assert [k for k, _ in mod.named_parameters()] == [k for k, _ in expected]
        for k, v in sd.items():
            assert isinstance(v, np.ndarray) and v.dtype == dtype
            assert v.flags.c_contiguous
            np.testing.assert_array_equal(getattr(mod, k), v)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_state_dict_round_trip_and_copies(variant, rng):
    mod, _ = build(variant, 3, 4, rng, num_layers=2, bidirectional=True, dtype=np.float64,
                   seed=1)
    other = same_config(mod, seed=2)
    x = rng.standard_normal((5, 2, 3))
    expected = mod(x)

    # state_dict returns copies: changing them changes nothing.
    sd = mod.state_dict()
    for k, v in mod.named_parameters():
        assert not np.shares_memory(sd[k], v)
    for v in sd.values():
        v[...] = 7.0
    assert_same_result(mod(x), expected)

    # Round trip into another module.
    src = mod.state_dict()
    assert not all(np.array_equal(src[k], v) for k, v in other.state_dict().items())
    assert other.load_state_dict(src) is other
    assert_same_result(other(x), expected)
    # load_state_dict copies: mutating the source afterwards changes nothing.
    for k, v in other.named_parameters():
        assert not np.shares_memory(src[k], v)
    for v in src.values():
        v[...] = -3.0
    assert_same_result(other(x), expected)
    for k, v in mod.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)

    # Lists and other dtypes are accepted and converted.
    f32 = same_config(mod, dtype=np.float32, seed=9)
    f32.load_state_dict({k: v.tolist() for k, v in mod.state_dict().items()})
    for k, v in f32.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, mod.state_dict()[k].astype(np.float32))


def test_load_state_dict_validates_everything_first():
    mod = rnnc.LSTM(3, 4, num_layers=2, seed=0, dtype=np.float64)
    before = mod.state_dict()
    sd = mod.state_dict()
    bad = {k: v + 1 for k, v in sd.items()}
    bad["weight_hh_l1"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match="weight_hh_l1"):
        mod.load_state_dict(bad)
    missing = {k: v + 1 for k, v in sd.items() if k != "bias_ih_l0"}
    with pytest.raises(ValueError, match="bias_ih_l0"):
        mod.load_state_dict(missing)
    with pytest.raises(ValueError, match="weight_hr_l0"):
        mod.load_state_dict({**sd, "weight_hr_l0": np.zeros((2, 4))})
    for k, v in mod.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # strict=False: partial update.
    mod.load_state_dict({"bias_ih_l0": np.ones(16)}, strict=False)
    np.testing.assert_array_equal(mod.bias_ih_l0, np.ones(16))
    # Attribute assignment goes through the same path (copy + checks).
    new = np.full((16, 4), 0.5)
    mod.weight_hh_l0 = new
    new[...] = 0
    np.testing.assert_array_equal(mod.weight_hh_l0, np.full((16, 4), 0.5))
    with pytest.raises(ValueError):
        mod.weight_hh_l0 = np.zeros((4, 4))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_seed_reproducibility(variant):
    mode, extra = variant
    kw = dict(resolve_kwargs(extra, 5), num_layers=2, bidirectional=True)
    a = getattr(rnnc, mode)(3, 5, seed=42, **kw).state_dict()
    b = getattr(rnnc, mode)(3, 5, seed=42, **kw).state_dict()
    c = getattr(rnnc, mode)(3, 5, seed=43, **kw).state_dict()
    r = getattr(rnnc.reference, mode)(3, 5, seed=42, **kw).state_dict()
    d64 = getattr(rnnc, mode)(3, 5, seed=42, dtype=np.float64, **kw).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], r[k])            # reference initialises alike
        assert not np.array_equal(a[k], c[k])
        # One seed, one model in both dtypes (drawn in float64, then rounded).
        np.testing.assert_array_equal(a[k], d64[k].astype(np.float32))
    n1 = getattr(rnnc, mode)(3, 5, **kw).state_dict()
    n2 = getattr(rnnc, mode)(3, 5, **kw).state_dict()
    assert not all(np.array_equal(n1[k], n2[k]) for k in n1)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_initialisation_is_uniform_in_bound(variant):
    from scipy import stats

    mode, extra = variant
    H = 16
    kw = resolve_kwargs(extra, H)
    if "proj_size" in kw:
        kw["proj_size"] = 8
    mod = getattr(rnnc, mode)(20, H, num_layers=2, bidirectional=True, seed=123,
                              dtype=np.float64, **kw)
    bound = 1 / np.sqrt(H)
    allv = []
    for k, v in mod.named_parameters():
        assert np.all(np.abs(v) <= bound), k
        assert v.size < 30 or np.max(np.abs(v)) > 0.8 * bound, k
        allv.append(v.ravel())
    allv = np.concatenate(allv)
    assert allv.size > 2000
    assert stats.kstest(allv, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-4
    assert abs(allv.mean()) < 0.05 * bound
    assert np.max(allv) > 0.99 * bound and np.min(allv) < -0.99 * bound


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_repr_is_a_string(variant):
    mode, extra = variant
    for kw in ({}, dict(num_layers=2, bidirectional=True, bias=False, batch_first=True,
                        dtype=np.float64)):
        mod = getattr(rnnc, mode)(3, 4, **resolve_kwargs(extra, 4), **kw)
        text = repr(mod)
        assert isinstance(text, str) and text.startswith(mode + "(")
        assert isinstance(str(mod), str)
        assert isinstance(repr(getattr(rnnc.reference, mode)(3, 4, **kw)), str)


# ---------------------------------------------------------------------------------------------
# Argument checking (the boundary the kernels rely on)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_bad_arguments_raise(mode):
    mod = getattr(rnnc, mode)(3, 4, num_layers=2, seed=0)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError):
        mod(np.zeros((5, 2, 4), np.float32))                  # wrong input_size
    with pytest.raises(ValueError):
        mod(np.zeros((5, 2, 3, 1), np.float32))               # 4-D
    with pytest.raises(ValueError):
        mod(x, None, [6, 1])                                  # length > T
    with pytest.raises(ValueError):
        mod(x, None, [-1, 1])                                 # negative length
    with pytest.raises(ValueError):
        mod(x, None, [1, 2, 3])                               # wrong number of lengths
    with pytest.raises(TypeError):
        mod(x, None, [1.5, 2])                                # fractional lengths
    with pytest.raises(TypeError):
        mod(x.astype(complex))
    bad_h = np.zeros((1, 2, 4), np.float32)                   # needs (2, 2, 4)
    with pytest.raises((ValueError, TypeError)):
        mod(x, (bad_h, bad_h) if mode == "LSTM" else bad_h)
    with pytest.raises(TypeError):
        getattr(rnnc, mode)(3, 4, dtype=np.int32)
    if mode != "LSTM":
        with pytest.raises((ValueError, TypeError)):
            getattr(rnnc, mode)(3, 4, proj_size=2)
    else:
        with pytest.raises(ValueError):
            rnnc.LSTM(3, 4, proj_size=4)


# ---------------------------------------------------------------------------------------------
# Activations at extreme values, NaN propagation, larger shapes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_is_exact_elementwise(dtype, nonlinearity):
    """A 1x1 RNN with W_ih = 1, W_hh = 0 and no bias computes g(x) for every batch entry:
    g must be the correctly rounded tanh / relu from 1e-40 to inf, NaN propagating."""
    mod = rnnc.RNN(1, 1, nonlinearity=nonlinearity, bias=False, dtype=dtype, seed=0)
    mod.load_state_dict({"weight_ih_l0": [[1.0]], "weight_hh_l0": [[0.0]]})
    v = np.concatenate([np.logspace(-40, 4, 300), [0.0, 0.5, 1, 3, 9, 9.1, 19, 20, 1e30, np.inf]])
    v = np.concatenate([v, -v, [np.nan]]).astype(dtype)
    out, h_n = mod(v[None, :, None])
    expected = np.tanh(v) if nonlinearity == "tanh" else np.maximum(v, 0)
    got = out[0, :, 0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])
    np.testing.assert_allclose(got[finite], expected[finite], rtol=4 * np.finfo(dtype).eps,
                               atol=0)
    np.testing.assert_array_equal(h_n[0, :, 0], got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_saturating_inputs_match_reference(variant, dtype):
    # A relu layer does not saturate: its outputs reach 1e30 and some cancel to small values,
    # whose error is relative to the terms summed, not to the result. The bound for a sum of
    # n products of weights |w| <= 1: n * eps * the terms' scale (max |output|), n = I + H + 2
    # (inputs, state, two biases); 300 seeds of each variant stayed within 2 eps * scale.
    for seed in range(8):
        rng = np.random.default_rng([seed, VARIANTS.index(variant), np.dtype(dtype).itemsize])
        mod, ref = build(variant, 3, 4, rng, num_layers=2, bidirectional=True, dtype=dtype)
        x = (rng.standard_normal((6, 3, 3)) * np.array([1e2, 1e4, 1e30])).astype(dtype)
        out, state = mod(x, None, [6, 4, 5])
        r_out, r_state = ref(x, None, [6, 4, 5])
        tol = dict(TOL[np.dtype(dtype)])
        states = zip(state, r_state) if isinstance(state, tuple) else [(state, r_state)]
        for got, want in [(out, r_out), *states]:
            scale = np.abs(want[np.isfinite(want)]).max(initial=0)
            atol = max(tol["atol"], (3 + 4 + 2) * np.finfo(dtype).eps * scale)
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=atol,
                                       err_msg=f"seed {seed}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_nan_in_a_valid_position_propagates_within_its_sequence_only(variant, rng):
    dtype = np.float64
    mod, ref = build(variant, 3, 4, rng, dtype=dtype)
    x = rng.standard_normal((6, 3, 3))
    x[2, 1, 0] = np.nan
    out, state = mod(x, None, [6, 6, 4])
    assert np.all(np.isnan(out[2:, 1])) and not np.any(np.isnan(out[:2, 1]))
    assert np.all(np.isfinite(out[:, [0, 2]]))
    for s in (state if isinstance(state, tuple) else (state,)):
        assert np.all(np.isnan(s[:, 1])) and np.all(np.isfinite(s[:, [0, 2]]))
    r_out, r_state = ref(x, None, [6, 6, 4])
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_larger_shapes(mode, dtype, rng):
    mod, ref = make_pair(mode, 37, 48, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    x = rng.standard_normal((7, 19, 37)).astype(dtype)
    lengths = rng.integers(0, 8, size=19)
    out, state = mod(x, None, lengths)
    r_out, r_state = ref(x, None, lengths)
    assert_close(out, r_out, dtype)
    assert_states_close(state, r_state, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_calls_from_threads(mode, rng):
    """The kernels release the GIL; concurrent calls on one module must not share buffers."""
    from concurrent.futures import ThreadPoolExecutor

    mod = getattr(rnnc, mode)(4, 8, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    inputs = [(rng.standard_normal((12, 5, 4)), rng.integers(0, 13, size=5)) for _ in range(8)]
    expected = [mod(x, None, n) for x, n in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda a: mod(a[0], None, a[1]), inputs))
            for g, e in zip(got, expected):
                assert_same_result(g, e)
