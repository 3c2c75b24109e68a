"""Shared helpers for rnnc's tests: tolerances, a seeded generator, module pairs.

The compiled classes (rnnc.RNN, ...) are checked against the NumPy reference classes
(rnnc.reference.RNN, ...), which share their API and parameter handling but compute everything
with plain NumPy loops. ``make_pair`` builds one of each with identical weights.
"""
import os
import zlib

# The plans' rules, not measurements, unless a test asks (tests/test_tune.py): the rules are
# what tests/test_plan.py checks, and measuring would make the suite's plans depend on the load.
os.environ.setdefault("RNNC_TUNE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnnc  # noqa: E402
import rnnc.reference  # noqa: E402

DTYPES = [np.float64, np.float32]

# Compiled vs reference. float64: both sides round differently (BLAS blocking, bias folding), the
# differences stay ~1e-15 per step; 1e-12 leaves room for stacks of 3 layers x 2 directions.
TOL = {
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
}

# Against PyTorch (test_torch_parity.py): torch's own kernels round differently again.
TORCH_TOL = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
}

MODES = ("RNN", "GRU", "LSTM")
CELL_OF = {"RNN": "RNNCell", "GRU": "GRUCell", "LSTM": "LSTMCell"}


def tol(dtype, table=TOL):
    return table[np.dtype(dtype)]


def assert_close(actual, expected, dtype, table=TOL, err_msg=""):
    """actual is an ndarray of exactly `dtype`, with expected's shape, and close to it."""
    assert isinstance(actual, np.ndarray), f"expected an ndarray, got {type(actual).__name__}"
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != {np.dtype(dtype)}"
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, **tol(dtype, table))


def assert_states_close(actual, expected, dtype, table=TOL):
    """Compare h_n, or (h_n, c_n) pairs for LSTM."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == 2
        assert_close(actual[0], expected[0], dtype, table, err_msg="h_n")
        assert_close(actual[1], expected[1], dtype, table, err_msg="c_n")
    else:
        assert not isinstance(actual, tuple)
        assert_close(actual, expected, dtype, table, err_msg="h_n")


def assert_same_result(a, b):
    """Bit-for-bit equal (out, state) results, state an array or an (h, c) pair."""
    out_a, st_a = a
    out_b, st_b = b
    np.testing.assert_array_equal(out_a, out_b)
    if isinstance(st_a, tuple):
        np.testing.assert_array_equal(st_a[0], st_b[0])
        np.testing.assert_array_equal(st_a[1], st_b[1])
    else:
        np.testing.assert_array_equal(st_a, st_b)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's module and name (with its parameters): reproducible,
    different for each test, and the same from whatever folder the tests are run."""
    name = f"{request.node.module.__name__}::{request.node.name}"
    return np.random.default_rng(zlib.crc32(name.encode()))


def make_pair(name, *args, seed=0, **kwargs):
    """(compiled, reference) instances of class `name` with identical weights.

    The reference is built with another seed so that only load_state_dict makes them agree.
    """
    mod = getattr(rnnc, name)(*args, seed=seed, **kwargs)
    ref = getattr(rnnc.reference, name)(*args, seed=seed + 1000, **kwargs)
    ref.load_state_dict(mod.state_dict())
    return mod, ref


# (mode, extra constructor kwargs) of every kernel variant; "proj" is resolved per hidden size.
VARIANTS = [
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
    ("GRU", {}),
    ("GRU", {"reset_after": False}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": "proj"}),
]
VARIANT_IDS = ["RNN-tanh", "RNN-relu", "GRU", "GRU-reset_before", "LSTM", "LSTM-proj"]


def resolve_kwargs(kwargs, H, rng=None):
    """Replace the "proj" placeholder by a valid proj_size (1 <= P < H, H >= 2)."""
    kwargs = dict(kwargs)
    if kwargs.get("proj_size") == "proj":
        assert H >= 2
        kwargs["proj_size"] = 1 if rng is None else int(rng.integers(1, H))
    return kwargs


def random_initial_state(rng, mod, B, dtype, unbatched=False):
    """hx of the right shapes for a (compiled or reference) layer: h0, or (h0, c0) for LSTM."""
    D = 2 if mod.bidirectional else 1
    lead = (D * mod.num_layers,) if unbatched else (D * mod.num_layers, B)
    P = mod.proj_size or mod.hidden_size
    h0 = (0.8 * rng.standard_normal(lead + (P,))).astype(dtype)
    if mod.mode == "LSTM":
        c0 = (0.8 * rng.standard_normal(lead + (mod.hidden_size,))).astype(dtype)
        return h0, c0
    return h0


def nan_padded(x, lengths, batch_first=False, fill=np.nan):
    """Copy of x with `fill` at every padded position (t >= lengths[b])."""
    x = np.array(x, copy=True)
    if lengths is None:
        return x
    for b, n in enumerate(lengths):
        if batch_first:
            x[b, int(n):] = fill
        else:
            x[int(n):, b] = fill
    return x


@pytest.fixture
def force_plan(monkeypatch):
    """force_plan(**decisions) makes every layer plan of this test take these decisions
    (fields of rnnc._engine.plan.LayerPlan or StreamPlan, and ``threads``: the thread setting
    the plans assume), whatever the thresholds and the machine say. A forced strategy applies
    to the layers the kernels can run with it; the others keep their own. Returns the list of
    (strategy, training, "forward" | "backward") of the runners called so far, filled as they
    run."""
    from rnnc._engine import plan as plan_module
    from rnnc._engine import stack
    ran = []

    class Logged:
        def __init__(self, runner):
            self.runner = runner

        def forward(self, plan, job):
            ran.append((plan.strategy, plan.training, "forward"))
            return self.runner.forward(plan, job)

        def backward(self, plan, job):
            ran.append((plan.strategy, plan.training, "backward"))
            return self.runner.backward(plan, job)

    monkeypatch.setattr(stack, "RUNNERS", {k: Logged(v) for k, v in stack.RUNNERS.items()})

    def force(**decisions):
        monkeypatch.setattr(plan_module, "_forced", tuple(sorted(decisions.items())))
        return ran

    return force


@pytest.fixture
def force_split(force_plan):
    """Inference splits every layer it can by hidden units between two threads
    (rnnc/_kernels/_parallel_forward.pyx), whatever the machine, the layer size and the
    helper's state; returns the list of the runners called (see force_plan)."""
    return force_plan(strategy="units", threads=2)
