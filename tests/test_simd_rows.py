"""The float32 backward runs the fused, vectorised rows of rnnc/_kernels/_simd_math.h
(rnnc_{lstm,gru,rnn}_row_backward_f32, which also sum the bias gradients); float64 runs the
Cython loops of rnnc/_kernels/_cell_math.pxd. Both must give the same gradients: here float32
is checked against float64 on the same weights and inputs, with hidden sizes that run whole
vectors (16 floats with AVX-512, 8 with AVX2) and remainders, every option that selects a
different row variant (bias or not, projection, output gradient), and variable lengths. The
tolerance is float32 rounding through a few steps of BPTT."""
import numpy as np
import pytest

import rnnc

VARIANTS = [
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
    ("RNN", {"bias": False}),
    ("GRU", {}),
    ("GRU", {"bias": False}),
    ("LSTM", {}),
    ("LSTM", {"bias": False}),
    ("LSTM", {"proj_size": 7}),
]
IDS = ["RNN", "RNN-relu", "RNN-no_bias", "GRU", "GRU-no_bias", "LSTM", "LSTM-no_bias",
       "LSTM-proj"]


def train_step(mode, kw, H, dtype, x, hx, lengths, g, gh):
    m = getattr(rnnc, mode)(x.shape[2], H, dtype=dtype, seed=3, **kw)
    m.train()
    m(x.astype(dtype), tuple(a.astype(dtype) for a in hx) if mode == "LSTM"
      else hx.astype(dtype), lengths=lengths)
    gh = tuple(a.astype(dtype) for a in gh) if mode == "LSTM" else gh.astype(dtype)
    dx, dhx, grads = m.backward(g.astype(dtype), gh)
    dhx = dhx if mode == "LSTM" else (dhx,)
    return [dx, *dhx] + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("H", [16, 37, 64, 130])
@pytest.mark.parametrize("mode,kw", VARIANTS, ids=IDS)
@pytest.mark.parametrize("variable", [False, True], ids=["full", "lengths"])
def test_float32_backward_rows_match_float64(mode, kw, H, variable):
    rng = np.random.default_rng(H)
    T, B, I = 6, 5, 9
    P = kw.get("proj_size", H)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 3, 6, 1, 4]) if variable else None
    h0 = 0.5 * rng.standard_normal((1, B, P))
    hx = (h0, 0.5 * rng.standard_normal((1, B, H))) if mode == "LSTM" else h0
    g = rng.standard_normal((T, B, P))
    gh = (rng.standard_normal((1, B, P)), rng.standard_normal((1, B, H))) \
        if mode == "LSTM" else rng.standard_normal((1, B, P))
    single = train_step(mode, kw, H, np.float32, x, hx, lengths, g, gh)
    double = train_step(mode, kw, H, np.float64, x, hx, lengths, g, gh)
    assert len(single) == len(double)
    for a, e in zip(single, double):
        assert a.dtype == np.float32 and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(e).max()))
