"""Reverse-only layers (``reverse=True``, ONNX's direction="reverse"): every layer runs from each
sequence's own last step back to step 0, outputs aligned with the inputs. The oracle is the
forward layer with the same weights on each sequence reversed within its own length:
reverse(x) = flip(forward(flip(x))) for the outputs, and the final state of the forward run."""
import pickle

import numpy as np
import pytest

import rnnc
from rnnc import reference

F64 = np.float64


def flip(a, lengths):
    """Each sequence of a (T, B, F) array reversed within its own length; padding stays."""
    out = a.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = a[:n, b][::-1]
    return out


CONFIGS = [("RNN", {}), ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
           ("GRU", {}), ("GRU", {"reset_after": False, "num_layers": 2}),
           ("LSTM", {}), ("LSTM", {"num_layers": 3}), ("LSTM", {"proj_size": 3})]


def pair(ns, mode, kw, dtype, seed=0):
    fwd = getattr(ns, mode)(4, 6, dtype=dtype, seed=seed, **kw)
    rev = getattr(ns, mode)(4, 6, dtype=dtype, seed=seed, reverse=True, **kw)
    rev.load_state_dict(fwd.state_dict())
    return fwd, rev


def states(mode, result):
    out, hn = result
    return [out] + (list(hn) if mode == "LSTM" else [hn])


@pytest.mark.parametrize("ns", [rnnc, reference], ids=["compiled", "reference"])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (np.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("mode,kw", CONFIGS, ids=str)
def test_reverse_layer_is_the_forward_layer_on_each_sequence_reversed(ns, dtype, tol, mode, kw):
    rng = np.random.default_rng(0)
    fwd, rev = pair(ns, mode, kw, dtype)
    T, B = 7, 5
    lengths = np.array([7, 3, 5, 1, 6])
    x = rng.standard_normal((T, B, 4)).astype(dtype)
    got = states(mode, rev(x, lengths=lengths))
    want = states(mode, fwd(flip(x, lengths), lengths=lengths))
    want[0] = flip(want[0], lengths)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)
    assert np.all(got[0][lengths[3]:, 3] == 0)          # padded steps stay exactly zero


@pytest.mark.parametrize("mode,kw", CONFIGS, ids=str)
def test_compiled_reverse_layer_matches_the_reference(mode, kw):
    rng = np.random.default_rng(1)
    comp = getattr(rnnc, mode)(4, 6, dtype=F64, seed=0, reverse=True, batch_first=True, **kw)
    ref = getattr(reference, mode)(4, 6, dtype=F64, seed=0, reverse=True, batch_first=True,
                                   **kw)
    ref.load_state_dict(comp.state_dict())
    x = rng.standard_normal((5, 8, 4))
    lengths = [8, 2, 5, 8, 1]
    for g, w in zip(states(mode, comp(x, lengths=lengths)), states(mode, ref(x, lengths=lengths))):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
    # Unbatched, with an initial state.
    h0 = rng.standard_normal((kw.get("num_layers", 1), kw.get("proj_size") or 6))
    hx = (h0, rng.standard_normal((kw.get("num_layers", 1), 6))) if mode == "LSTM" else h0
    for g, w in zip(states(mode, comp(x[0], hx)), states(mode, ref(x[0], hx))):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,kw", CONFIGS, ids=str)
def test_reverse_layer_gradients_are_the_forward_layers_on_reversed_sequences(mode, kw):
    rng = np.random.default_rng(2)
    fwd, rev = pair(rnnc, mode, kw, F64)
    T, B = 6, 4
    lengths = np.array([6, 2, 4, 5])
    x = rng.standard_normal((T, B, 4))
    fwd.train()
    rev.train()
    out_r, hn_r = rev(x, lengths=lengths)
    out_f, _ = fwd(flip(x, lengths), lengths=lengths)
    g = rng.standard_normal(out_r.shape)
    gh = rng.standard_normal((hn_r[0] if mode == "LSTM" else hn_r).shape)
    ghn = (gh, None) if mode == "LSTM" else gh
    dx_r, dh_r, grads_r = rev.backward(g, ghn)
    dx_f, dh_f, grads_f = fwd.backward(flip(g, lengths), ghn)
    np.testing.assert_allclose(dx_r, flip(dx_f, lengths), rtol=0, atol=1e-12)
    for a, b in zip(np.atleast_1d(dh_r if mode != "LSTM" else dh_r[0]),
                    np.atleast_1d(dh_f if mode != "LSTM" else dh_f[0])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert grads_r.keys() == grads_f.keys()
    for k in grads_r:
        np.testing.assert_allclose(grads_r[k], grads_f[k], rtol=0, atol=1e-11, err_msg=k)


def test_reverse_layer_gradient_by_finite_differences():
    rng = np.random.default_rng(3)
    m = rnnc.LSTM(3, 4, num_layers=2, dtype=F64, seed=0, reverse=True).train()
    x = rng.standard_normal((5, 2, 3))
    lengths = [5, 3]
    w = rng.standard_normal((5, 2, 4))

    def loss(xv):
        m.eval()
        out, _ = m(xv, lengths=lengths)
        return float(np.sum(out * w))
    m.train()
    m(x, lengths=lengths)
    dx, _, _ = m.backward(w)
    eps = 1e-6
    for idx in [(0, 0, 0), (4, 0, 2), (2, 1, 1), (1, 1, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        np.testing.assert_allclose(dx[idx], (loss(xp) - loss(xm)) / (2 * eps), atol=1e-7)


def test_reverse_is_a_keyword_kept_by_repr_copies_and_files(tmp_path):
    m = rnnc.GRU(3, 4, num_layers=2, reverse=True, seed=0)
    assert repr(m) == "GRU(3, 4, num_layers=2, dtype='float32', reverse=True)"
    assert pickle.loads(pickle.dumps(m)).reverse
    assert m._config()["reverse"] is True and "reverse" not in rnnc.GRU(3, 4)._config()
    pytest.importorskip("safetensors")
    rnnc.save(m, tmp_path / "m.safetensors")
    assert rnnc.load(tmp_path / "m.safetensors").reverse


def test_reverse_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="with bidirectional=True both directions run"):
        rnnc.LSTM(3, 4, bidirectional=True, reverse=True)
    with pytest.raises(TypeError, match="reverse"):
        rnnc.RNN(3, 4, reverse="yes")
    with pytest.raises(ValueError, match="reverse=True"):
        rnnc.GRU(3, 4, reverse=True).stream()
    with pytest.raises(ValueError, match="the wrapper adds the reverse direction itself"):
        rnnc.Bidirectional(rnnc.LSTM(3, 4, reverse=True))
