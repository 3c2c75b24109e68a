"""Accuracy of the kernels' activation functions against float64 NumPy.

float32 sigmoid/tanh run vectorised (rnnc/_kernels/_simd_math.h); the stated bound is a
relative error of at most 1e-6 wherever the exact result is a normal float32 (in practice
~3e-7, about 4 ulps). float64 runs the same formulas as the scalar libm-based code (vectorised
with AVX-512, exp and expm1 to about an ulp): within 3 ulp of the exact function, as accurate
as the libm form. rnnc._kernels._linear_kernel.activate applies the same in-place array
functions that the recurrent kernels use.
"""
import numpy as np
import pytest

from rnnc._kernels._linear_kernel import ACTIVATIONS, activate

BOUND = {np.float32: 1e-6, np.float64: 1e-15}
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_and_scalar_tails_agree(dtype):
    # Lengths that are not multiples of any vector width exercise the loop remainders.
    rng = np.random.default_rng(1)
    for n in (1, 3, 7, 9, 15, 17, 33, 65):
        x = rng.uniform(-5, 5, (2, n)).astype(dtype)
        for name in ("tanh", "sigmoid"):
            got = apply(name, x, dtype)
            np.testing.assert_allclose(got, exact(name, x), rtol=BOUND[dtype], atol=0)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="needs extended precision")
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_float64_ulp_error_against_extended_precision(name):
    # Against the exact function (evaluated in x87 extended precision), the float64 arrays are
    # within 3 ulp, as the libm-based scalar form (measured: 2.5 ulp tanh, 2.3 sigmoid, both).
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-s, s, 20000)
                        for s in (1e-8, 1e-3, 0.1, 0.35, 0.7, 1, 2, 5, 10, 20, 40, 200, 745)])
    got = apply(name, x[None, :], np.float64)[0]
    xl = x.astype(np.longdouble)
    truth = np.tanh(xl) if name == "tanh" else 1 / (1 + np.exp(-xl))
    normal = np.abs(truth) >= np.finfo(np.float64).tiny
    ulps = (np.abs(got[normal].astype(np.longdouble) - truth[normal])
            / np.spacing(np.abs(truth[normal]).astype(np.float64)))
    assert ulps.max() <= 3, (name, float(ulps.max()), x[normal][ulps.argmax()])
