"""rnnc.Bidirectional against rnnc.reference.Bidirectional, which flips every sequence within its
own length, runs the backward layer forward in time and flips its outputs back (an independent
path from the compiled layer's reverse_all run)."""
import numpy as np
import pytest

import rnnc
import rnnc.reference

from conftest import DTYPES, MODES, assert_close, assert_states_close, nan_padded

MERGE_MODES = ["concat", "sum", "mul", "ave", None]
LAYER_KW = {"RNN": [{}, {"nonlinearity": "relu"}], "GRU": [{}, {"reset_after": False}],
            "LSTM": [{}, {"proj_size": 2}]}


def make_bi(mode, I, H, merge_mode, seed=0, **kw):
    layer = getattr(rnnc, mode)(I, H, seed=seed, **kw)
    bi = rnnc.Bidirectional(layer, merge_mode=merge_mode)
    ref_layer = getattr(rnnc.reference, mode)(I, H, seed=seed + 1000, **kw)
    ref = rnnc.reference.Bidirectional(ref_layer, merge_mode=merge_mode)
    ref.load_state_dict(bi.state_dict())
    return bi, ref


def random_hx(rng, layer, B, dtype, unbatched=False):
    lead = (layer.num_layers,) if unbatched else (layer.num_layers, B)
    h = (0.8 * rng.standard_normal(lead + (layer.proj_size or layer.hidden_size,))).astype(dtype)
    if layer.mode == "LSTM":
        return h, (0.8 * rng.standard_normal(lead + (layer.hidden_size,))).astype(dtype)
    return h


def assert_output_close(got, expected, dtype):
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == 2
        assert_close(got[0], expected[0], dtype)
        assert_close(got[1], expected[1], dtype)
    else:
        assert_close(got, expected, dtype)


def assert_pair_states_close(got, expected, dtype):
    assert isinstance(got, tuple) and len(got) == 2
    assert_states_close(got[0], expected[0], dtype)
    assert_states_close(got[1], expected[1], dtype)


@pytest.mark.parametrize("variant", [0, 1], ids=["default", "variant"])
@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, dtype, merge_mode, variant, rng):
    kw = LAYER_KW[mode][variant]
    for seed in range(3):
        num_layers = 1 + seed % 2 + (seed == 2)       # 1, 2, 3
        batch_first = seed == 1
        T, B, I, H = 6, 4, 3, 4
        bi, ref = make_bi(mode, I, H, merge_mode, seed=seed, num_layers=num_layers,
                          batch_first=batch_first, bias=seed != 2, dtype=dtype, **kw)
        layer = bi.forward_layer
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
        lengths = [None, [6, 2, 0, 4], np.array([1, 6, 6, 3])][seed]
        hx = None if seed == 0 else (random_hx(rng, layer, B, dtype),
                                     random_hx(rng, layer, B, dtype))
        out, states = bi(nan_padded(x, lengths, batch_first), hx, lengths)
        r_out, r_states = ref(x, hx, lengths)
        assert_output_close(out, r_out, dtype)
        assert_pair_states_close(states, r_states, dtype)
        P = layer.proj_size or H
        shape = (B, T, P) if batch_first else (T, B, P)
        if merge_mode == "concat":
            assert out.shape == shape[:2] + (2 * P,)
        elif merge_mode is None:
            assert out[0].shape == shape and out[1].shape == shape
        else:
            assert out.shape == shape
        if lengths is not None:
            for o in (out if isinstance(out, tuple) else (out,)):
                for b, n in enumerate(lengths):
                    assert np.all((o[b, n:] if batch_first else o[n:, b]) == 0)
                    assert np.all(np.isfinite(o))


@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
@pytest.mark.parametrize("mode", MODES)
def test_merge_modes_combine_the_two_directions(mode, merge_mode, rng):
    bi, _ = make_bi(mode, 3, 4, None, seed=5, num_layers=2, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    lengths = [5, 3]
    (f, b), states = bi(x, None, lengths)
    # The forward half is the layer itself.
    out_f, st_f = bi.forward_layer(x, None, lengths)
    np.testing.assert_array_equal(f, out_f)
    assert_states_close(states[0], st_f, np.float64)
    bi.merge_mode = merge_mode
    merged, _ = bi(x, None, lengths)
    expected = {"concat": np.concatenate([f, b], axis=-1), "sum": f + b, "mul": f * b,
                "ave": (f + b) / 2, None: (f, b)}[merge_mode]
    assert_output_close(merged, expected, np.float64)


@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_unbatched(mode, dtype, given_state, merge_mode, rng):
    bi, ref = make_bi(mode, 3, 4, merge_mode, seed=2, num_layers=2, dtype=dtype)
    layer = bi.forward_layer
    x = rng.standard_normal((5, 3)).astype(dtype)
    hx = (random_hx(rng, layer, None, dtype, True), random_hx(rng, layer, None, dtype, True)) \
        if given_state else None
    out, states = bi(x, hx)
    r_out, r_states = ref(x, hx)
    assert_output_close(out, r_out, dtype)
    assert_pair_states_close(states, r_states, dtype)
    for n in (3, [3]):
        out, states = bi(x, hx, n)
        r_out, r_states = ref(x, hx, n)
        assert_output_close(out, r_out, dtype)
        assert_pair_states_close(states, r_states, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_single_layer_concat_equals_bidirectional_layer(mode, rng):
    """With one layer, the wrapper is torch's bidirectional=True with the backward layer's
    weights as the *_reverse parameters."""
    bi, _ = make_bi(mode, 3, 4, "concat", seed=4, dtype=np.float64)
    both = getattr(rnnc, mode)(3, 4, bidirectional=True, dtype=np.float64, seed=0)
    sd = {k.split(".", 1)[1]: v for k, v in bi.state_dict().items()
          if k.startswith("forward_layer.")}
    sd.update({k.split(".", 1)[1] + "_reverse": v for k, v in bi.state_dict().items()
               if k.startswith("backward_layer.")})
    both.load_state_dict(sd)
    x = rng.standard_normal((6, 3, 3))
    lengths = [6, 1, 4]
    out, (st_f, st_b) = bi(x, None, lengths)
    out2, st2 = both(x, None, lengths)
    assert_close(out, out2, np.float64)
    if mode == "LSTM":
        assert_close(np.concatenate([st_f[0], st_b[0]]), st2[0], np.float64)
        assert_close(np.concatenate([st_f[1], st_b[1]]), st2[1], np.float64)
    else:
        assert_close(np.concatenate([st_f, st_b]), st2, np.float64)


@pytest.mark.parametrize("mode", MODES)
def test_empty_inputs(mode):
    bi, _ = make_bi(mode, 3, 4, "concat", num_layers=2, dtype=np.float64)
    out, (sf, sb) = bi(np.zeros((0, 2, 3)))
    assert out.shape == (0, 2, 8)
    out, _ = bi(np.zeros((4, 0, 3)), None, [])
    assert out.shape == (4, 0, 8)
    out, _ = bi(np.zeros((3, 2, 3)), None, [0, 0])
    assert out.shape == (3, 2, 8) and np.all(out == 0)


def test_state_dict_keys_and_round_trip(rng):
    bi, _ = make_bi("LSTM", 3, 4, "concat", num_layers=2, proj_size=2, dtype=np.float64)
    sd = bi.state_dict()
    inner = list(bi.forward_layer.state_dict())
    assert list(sd) == [f"forward_layer.{k}" for k in inner] + \
        [f"backward_layer.{k}" for k in inner]
    for k, v in sd.items():
        layer = bi.forward_layer if k.startswith("forward_layer.") else bi.backward_layer
        np.testing.assert_array_equal(v, layer.state_dict()[k.split(".", 1)[1]])
    x = rng.standard_normal((4, 2, 3))
    expected, _ = bi(x)
    for v in sd.values():
        v[...] = 0                                   # copies
    np.testing.assert_array_equal(bi(x)[0], expected)
    other = rnnc.Bidirectional(rnnc.LSTM(3, 4, num_layers=2, proj_size=2, dtype=np.float64,
                                         seed=99))
    src = bi.state_dict()
    other.load_state_dict(src)
    for v in src.values():
        v[...] = 1                                   # load copied
    np.testing.assert_array_equal(other(x)[0], expected)
    # An invalid dict changes neither half.
    bad = bi.state_dict()
    bad["backward_layer.weight_ih_l0"] = np.zeros((1, 1))
    bad["forward_layer.weight_ih_l0"] = bad["forward_layer.weight_ih_l0"] + 1
    with pytest.raises(ValueError):
        other.load_state_dict(bad)
    np.testing.assert_array_equal(other(x)[0], expected)
    with pytest.raises(ValueError):
        other.load_state_dict({**bi.state_dict(), "nonsense": np.zeros(1)})


@pytest.mark.parametrize("mode", MODES)
def test_backward_layer_weights_differ_and_are_reproducible(mode, rng):
    def build(seed):
        return rnnc.Bidirectional(getattr(rnnc, mode)(3, 4, num_layers=2, seed=seed))

    a, b, c = build(7), build(7), build(8)
    fa, ba = a.forward_layer.state_dict(), a.backward_layer.state_dict()
    assert list(fa) == list(ba)
    for k in fa:
        assert fa[k].shape == ba[k].shape and ba[k].dtype == fa[k].dtype
        assert not np.array_equal(fa[k], ba[k])
        assert np.all(np.abs(ba[k]) <= 1 / np.sqrt(4))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
        assert not np.array_equal(v, c.state_dict()[k])
    # The backward layer is configured like the forward one.
    assert repr(a.backward_layer) == repr(a.forward_layer)
    assert isinstance(repr(a), str)
    # The forward layer keeps the weights its seed gave it.
    plain = getattr(rnnc, mode)(3, 4, num_layers=2, seed=7).state_dict()
    for k in plain:
        np.testing.assert_array_equal(plain[k], fa[k])


@pytest.mark.parametrize("merge_mode", ["concat", None])
@pytest.mark.parametrize("mode", MODES)
def test_backward_layer_argument(mode, merge_mode, rng):
    fwd = getattr(rnnc, mode)(3, 4, num_layers=2, batch_first=True, dtype=np.float64, seed=1)
    bwd = getattr(rnnc, mode)(3, 4, num_layers=2, batch_first=True, dtype=np.float64, seed=2)
    bi = rnnc.Bidirectional(fwd, merge_mode=merge_mode, backward_layer=bwd)
    assert bi.backward_layer is bwd and bi.forward_layer is fwd
    for k, v in bwd.state_dict().items():
        np.testing.assert_array_equal(bi.state_dict()[f"backward_layer.{k}"], v)
    ref = rnnc.reference.Bidirectional(
        getattr(rnnc.reference, mode)(3, 4, num_layers=2, batch_first=True, dtype=np.float64),
        merge_mode=merge_mode,
        backward_layer=getattr(rnnc.reference, mode)(3, 4, num_layers=2, batch_first=True,
                                                     dtype=np.float64))
    ref.load_state_dict(bi.state_dict())
    x = rng.standard_normal((3, 5, 3))
    lengths = [2, 5, 4]
    out, states = bi(x, None, lengths)
    r_out, r_states = ref(x, None, lengths)
    assert_output_close(out, r_out, np.float64)
    assert_pair_states_close(states, r_states, np.float64)
    # A backward layer configured differently is refused.
    with pytest.raises(ValueError):
        rnnc.Bidirectional(fwd, backward_layer=getattr(rnnc, mode)(3, 5, num_layers=2,
                                                                   batch_first=True,
                                                                   dtype=np.float64))
    other_mode = {"RNN": "GRU", "GRU": "LSTM", "LSTM": "RNN"}[mode]
    with pytest.raises(ValueError):
        rnnc.Bidirectional(fwd, backward_layer=getattr(rnnc, other_mode)(
            3, 4, num_layers=2, batch_first=True, dtype=np.float64))


def test_bad_arguments():
    with pytest.raises(ValueError):
        rnnc.Bidirectional(rnnc.GRU(2, 3), merge_mode="max")
    with pytest.raises(TypeError):
        rnnc.Bidirectional(rnnc.Linear(2, 3))
    bi = rnnc.Bidirectional(rnnc.GRU(2, 3))
    with pytest.raises(TypeError):
        bi(np.zeros((2, 1, 2), np.float32), np.zeros((1, 1, 3), np.float32))


def test_compiled_run_stack_refuses_reverse_all_with_bidirectional():
    """rnnc._engine.stack.run_stack has "the same signature and semantics as
    rnnc.reference.run_stack", which refuses reverse_all=True with bidirectional=True."""
    from rnnc._engine import stack

    layer = rnnc.GRU(2, 3, bidirectional=True, dtype=np.float64, seed=0)
    x = np.zeros((2, 1, 2))
    h0 = np.zeros((2, 1, 3))
    with pytest.raises(ValueError):
        rnnc.reference.run_stack("GRU", layer.state_dict(), x, h0, bidirectional=True,
                                 reverse_all=True)
    with pytest.raises(ValueError):
        stack.run_stack("GRU", layer.state_dict(), x, h0, bidirectional=True,
                         reverse_all=True)


@pytest.mark.parametrize("mode", MODES)
def test_wrapping_a_bidirectional_layer_is_refused_or_correct(mode, rng):
    """Bidirectional(layer with bidirectional=True): either an error, or what the reference
    computes (the backward layer run on every sequence flipped within its length)."""
    x = rng.standard_normal((5, 2, 2))
    lengths = [5, 3]
    try:
        bi = rnnc.Bidirectional(getattr(rnnc, mode)(2, 3, bidirectional=True, dtype=np.float64,
                                                    seed=0))
        out, states = bi(x, None, lengths)
    except (ValueError, TypeError):
        return
    ref = rnnc.reference.Bidirectional(getattr(rnnc.reference, mode)(
        2, 3, bidirectional=True, dtype=np.float64))
    ref.load_state_dict(bi.state_dict())
    r_out, r_states = ref(x, None, lengths)
    assert_output_close(out, r_out, np.float64)
    assert_pair_states_close(states, r_states, np.float64)


@pytest.mark.parametrize("mode", MODES)
def test_one_seed_gives_the_same_wrapper_in_both_dtypes(mode):
    a = rnnc.Bidirectional(getattr(rnnc, mode)(3, 4, seed=5, dtype=np.float32)).state_dict()
    b = rnnc.Bidirectional(getattr(rnnc, mode)(3, 4, seed=5, dtype=np.float64)).state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].astype(np.float32))


@pytest.mark.parametrize("mode", MODES)
def test_initial_state_for_one_direction_only(mode, rng):
    bi, ref = make_bi(mode, 3, 4, "sum", num_layers=2, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    hb = random_hx(rng, bi.forward_layer, 2, np.float64)
    for hx in ((None, hb), [hb, None]):
        out, states = bi(x, hx, [5, 2])
        r_out, r_states = ref(x, hx, [5, 2])
        assert_output_close(out, r_out, np.float64)
        assert_pair_states_close(states, r_states, np.float64)
