"""Property tests: random shapes, lengths and options; compiled vs reference and invariants."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnc
import rnnc.reference

from conftest import MODES, assert_close

# About 10 s for the whole file on 2 cores (the limit is 30 s).
SETTINGS = settings(max_examples=100, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])
SETTINGS_INVARIANTS = settings(SETTINGS, max_examples=60)
DTYPE = np.float64


@st.composite
def cases(draw, mode):
    T = draw(st.integers(0, 12))
    B = draw(st.integers(0, 5))
    case = dict(
        mode=mode, T=T, B=B,
        I=draw(st.integers(1, 8)), H=draw(st.integers(1, 8)),
        num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()), batch_first=draw(st.booleans()),
        given_hx=draw(st.booleans()),
        lengths=draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    extra = {}
    if mode == "RNN":
        extra["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    elif mode == "GRU":
        extra["reset_after"] = draw(st.booleans())
    elif case["H"] > 1:
        extra["proj_size"] = draw(st.integers(0, case["H"] - 1))
    case["extra"] = extra
    return case


def build(case, cls_module=rnnc):
    return getattr(cls_module, case["mode"])(
        case["I"], case["H"], num_layers=case["num_layers"], bias=case["bias"],
        batch_first=case["batch_first"], bidirectional=case["bidirectional"], dtype=DTYPE,
        seed=case["seed"] % 1000, **case["extra"])


def data(case, mod):
    rng = np.random.default_rng(case["seed"])
    T, B, I = case["T"], case["B"], case["I"]
    x = rng.standard_normal((B, T, I) if case["batch_first"] else (T, B, I))
    hx = None
    if case["given_hx"]:
        D = 2 if mod.bidirectional else 1
        h0 = 0.8 * rng.standard_normal((D * mod.num_layers, B, mod.proj_size or mod.hidden_size))
        c0 = 0.8 * rng.standard_normal((D * mod.num_layers, B, mod.hidden_size))
        hx = (h0, c0) if mod.mode == "LSTM" else h0
    lengths = None if case["lengths"] is None else np.array(case["lengths"], dtype=np.int64)
    return x, hx, lengths


def states(st_):
    return list(st_) if isinstance(st_, tuple) else [st_]


def time_major(out, case):
    return out.swapaxes(0, 1) if case["batch_first"] else out


def take_batch(hx, idx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(np.ascontiguousarray(a[:, idx]) for a in hx)
    return np.ascontiguousarray(hx[:, idx])


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(data_=st.data())
def test_compiled_matches_reference(mode, data_):
    case = data_.draw(cases(mode))
    mod = build(case)
    ref = build(case, rnnc.reference)
    ref.load_state_dict(mod.state_dict())
    x, hx, lengths = data(case, mod)
    xin = x.copy()
    if lengths is not None:         # the compiled side sees NaN in the padding
        tm = time_major(xin, case)
        for b, n in enumerate(lengths):
            tm[n:, b] = np.nan
    out, st_ = mod(xin, hx, lengths)
    r_out, r_st = ref(x, hx, lengths)
    assert_close(out, r_out, DTYPE)
    for a, e in zip(states(st_), states(r_st)):
        assert_close(a, e, DTYPE)
    D = 2 if case["bidirectional"] else 1
    P = mod.proj_size or case["H"]
    T, B = case["T"], case["B"]
    assert out.shape == ((B, T, D * P) if case["batch_first"] else (T, B, D * P))
    assert np.all(np.isfinite(out))
    if lengths is not None:
        tm_out = time_major(out, case)
        for b, n in enumerate(lengths):
            assert np.all(tm_out[n:, b] == 0)
    if T == 0:
        h0s = states(hx) if hx is not None else [np.zeros_like(a) for a in states(st_)]
        for a, a0 in zip(states(st_), h0s):
            np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS_INVARIANTS
@given(data_=st.data())
def test_permuting_the_batch_permutes_the_results(mode, data_):
    case = data_.draw(cases(mode))
    mod = build(case)
    x, hx, lengths = data(case, mod)
    perm = np.array(data_.draw(st.permutations(range(case["B"]))), dtype=np.intp)
    out, st_ = mod(x, hx, lengths)
    xp = x[perm] if case["batch_first"] else x[:, perm]
    out_p, st_p = mod(xp, take_batch(hx, perm), None if lengths is None else lengths[perm])
    assert_close(out_p, out[perm] if case["batch_first"] else out[:, perm], DTYPE)
    for a, ap in zip(states(st_), states(st_p)):
        assert_close(ap, a[:, perm], DTYPE)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS_INVARIANTS
@given(data_=st.data())
def test_a_sequence_does_not_depend_on_the_rest_of_the_batch(mode, data_):
    case = data_.draw(cases(mode))
    if case["B"] == 0:
        return
    mod = build(case)
    x, hx, lengths = data(case, mod)
    b = data_.draw(st.integers(0, case["B"] - 1))
    out, st_ = mod(x, hx, lengths)
    idx = [b]
    xb = x[idx] if case["batch_first"] else x[:, idx]
    # Alone, with its length (padding kept)...
    out_b, st_b = mod(xb, take_batch(hx, idx), None if lengths is None else lengths[idx])
    assert_close(out_b, out[idx] if case["batch_first"] else out[:, idx], DTYPE)
    for a, ab in zip(states(st_), states(st_b)):
        assert_close(ab, a[:, idx], DTYPE)
    # ...and alone, truncated to its length, without lengths at all.
    n = case["T"] if lengths is None else int(lengths[b])
    xt = xb[:, :n] if case["batch_first"] else xb[:n]
    out_t, st_t = mod(xt, take_batch(hx, idx))
    tm = time_major(out, case)
    assert_close(time_major(out_t, case), tm[:n, idx], DTYPE)
    for a, at in zip(states(st_), states(st_t)):
        assert_close(at, a[:, idx], DTYPE)
    # Changing every other sequence changes nothing for this one.
    if case["B"] > 1:
        x2 = np.random.default_rng(case["seed"] + 1).standard_normal(x.shape)
        if case["batch_first"]:
            x2[b] = x[b]
        else:
            x2[:, b] = x[:, b]
        out2, st2 = mod(x2, hx, lengths)
        assert_close(out2[idx] if case["batch_first"] else out2[:, idx],
                     out[idx] if case["batch_first"] else out[:, idx], DTYPE)
        for a, a2 in zip(states(st_), states(st2)):
            assert_close(a2[:, idx], a[:, idx], DTYPE)
