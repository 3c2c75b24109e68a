"""Accuracy of the kernels' activation functions against float64 NumPy.

float32 sigmoid/tanh run vectorised (rnnc/_simd_math.h); the stated bound is a relative error of
at most 1e-6 wherever the exact result is a normal float32 (in practice ~1.5e-7, about 2 ulps).
float64 runs exact libm-based scalar code: ~1e-15. rnnc._linear_kernel.activate applies the same
in-place array functions that the recurrent kernels use.
"""
import numpy as np
import pytest

from rnnc._linear_kernel import ACTIVATIONS, activate

BOUND = {np.float32: 1e-6, np.float64: 1e-14}
TINY = {np.float32: np.finfo(np.float32).tiny, np.float64: np.finfo(np.float64).tiny}


def exact(name, x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return np.tanh(x) if name == "tanh" else 1 / (1 + np.exp(-x))


def apply(name, x, dtype):
    y = np.array(x, dtype=dtype, order="C")
    activate(y, ACTIVATIONS[name])
    return y


def sample(dtype):
    rng = np.random.default_rng(0)
    scales = [1e-30, 1e-8, 1e-4, 1e-2, 0.3, 0.6, 0.7, 1, 3, 9, 20, 50, 90, 110]
    x = np.concatenate([rng.uniform(-s, s, 4096) for s in scales])
    edges = [0.625, -0.625, 1e-4, -1e-4, 88.72, -88.72, 103.9, -103.9, 87.3, -87.3]
    x = np.concatenate([x, edges, np.nextafter(np.array(edges, dtype), np.inf)])
    x = np.concatenate([x, np.zeros(-len(x) % 64)])
    return x.astype(dtype).reshape(-1, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_relative_error_bound(name, dtype):
    x = sample(dtype)
    got = apply(name, x, dtype)
    want = exact(name, x)
    assert got.dtype == dtype
    normal = np.abs(want) >= TINY[dtype]
    rel = np.abs(got[normal] - want[normal]) / np.abs(want[normal])
    assert rel.max() <= BOUND[dtype], (name, dtype, rel.max(), x[normal][rel.argmax()])
    # Below the normal range the error is absolute and tiny.
    assert np.all(np.abs(got[~normal] - want[~normal]) <= TINY[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    # 8 specials, repeated so that both the vectorised body and the tail see them.
    x = np.tile(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 200.0], dtype=dtype),
                (1, 5))
    t = apply("tanh", x, dtype)[0]
    s = apply("sigmoid", x, dtype)[0]
    np.testing.assert_array_equal(t[[0, 2, 3, 5, 6, 7]], [0, 1, -1, 1, -1, 1])
    assert np.signbit(t[1]), "tanh(-0) is -0"
    np.testing.assert_array_equal(s[[0, 1, 2, 3, 5, 6, 7]], [0.5, 0.5, 1, 0, 1, 0, 1])
    assert np.isnan(t[4]) and np.isnan(s[4])


def test_vectorised_and_scalar_tails_agree():
    # Lengths that are not multiples of any vector width exercise the loop remainders.
    rng = np.random.default_rng(1)
    for n in (1, 3, 7, 15, 17, 33, 65):
        x = rng.uniform(-5, 5, (2, n)).astype(np.float32)
        got = apply("tanh", x, np.float32)
        np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=1e-6, atol=0)
