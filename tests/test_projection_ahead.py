"""Projection ahead (rnnc/_parallel_forward.pyx, pipelined_forward_py): a layer that runs on one
thread while rnnc may use two has the helper thread project the next chunk of steps' inputs.
Forced here on small shapes: results must match the NumPy reference as tightly as the
one-thread kernels do, and must not depend on whether the helper took part."""
import numpy as np
import pytest

import rnnc
from rnnc import _stack, reference


@pytest.fixture
def force_pipeline(monkeypatch):
    monkeypatch.setattr(_stack, "PIPELINE_MIN_STEPS", 2)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    monkeypatch.setattr(_stack, "SPLIT_MIN_HIDDEN", 1 << 30)     # never split instead
    calls = []
    run = _stack._run_pipelined

    def spy(*args, **kwargs):
        calls.append(args[-1])          # whether the helper was held
        return run(*args, **kwargs)

    monkeypatch.setattr(_stack, "_run_pipelined", spy)
    return calls


def flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


CASES = [  # mode, input, hidden, batch, steps, kwargs
    ("LSTM", 7, 24, 1, 30, {}),
    ("LSTM", 5, 40, 3, 17, dict(num_layers=2, bidirectional=True)),
    ("GRU", 6, 33, 2, 25, {}),
    ("GRU", 6, 16, 5, 9, dict(bias=False, bidirectional=True)),
    ("RNN", 9, 20, 4, 20, dict(nonlinearity="relu", num_layers=2)),
    ("RNN", 3, 64, 1, 40, {}),
]


@pytest.mark.parametrize("mode,I,H,B,T,kw", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variable", [False, True])
def test_projection_ahead_matches_reference(force_pipeline, mode, I, H, B, T, kw, dtype,
                                            variable):
    rng = np.random.default_rng(H * 7 + B)
    m = getattr(rnnc, mode)(I, H, dtype=dtype, seed=H, **kw)
    ref = getattr(reference, mode)(I, H, dtype=dtype, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = None
    if variable:    # at least 4 steps in all (the small-batch kernel's minimum), zeros included
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = max(lengths[0], 4)
    got = m(x, lengths=lengths)
    if not _stack._K.has_small_gemm():
        assert not force_pipeline          # it needs the small-batch kernel
        return
    assert len(force_pipeline) == m.num_layers * m.num_directions
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, e in zip(flat(got), flat(ref(x, lengths=lengths))):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_projection_ahead_bits_do_not_depend_on_the_helper(force_pipeline, monkeypatch, mode):
    rng = np.random.default_rng(0)
    m = getattr(rnnc, mode)(12, 48, num_layers=2, seed=1)
    x = rng.standard_normal((50, 3, 12)).astype(np.float32)
    with_helper = [flat(m(x)) for _ in range(5)]      # the helper when it is awake
    monkeypatch.setattr(_stack, "_split_begin", lambda: False)
    alone = flat(m(x))
    if not _stack._K.has_small_gemm():
        return
    assert False in force_pipeline
    for run in with_helper:
        for a, b in zip(run, alone):
            np.testing.assert_array_equal(a, b)


def test_no_projection_ahead_on_one_thread_in_training_or_when_split(monkeypatch):
    calls = []
    monkeypatch.setattr(_stack, "_run_pipelined", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(_stack, "PIPELINE_MIN_STEPS", 2)
    x = np.ones((20, 2, 4), np.float32)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 1)
    rnnc.LSTM(4, 8, seed=0)(x)
    monkeypatch.setattr(_stack, "cached_num_threads", lambda: 2)
    m = rnnc.LSTM(4, 8, seed=0, proj_size=3)
    m(x)                                      # projection: no split form
    m = rnnc.LSTM(4, 8, seed=0).train()
    m(x)
    assert not calls
