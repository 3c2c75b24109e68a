"""Every way a layer may run, against the NumPy reference.

A layer's plan (rnnc/_engine/plan.py) names its strategy: ``kernel`` (the layer kernel of the
cell), ``fused`` (LSTM on one product per step, [x | h | 1] @ [W_ih | W_hh | b]^T), ``units``
(the hidden units split between two threads), ``rows`` (the batch rows split between two
threads) or ``pipelined`` (the helper thread projects the next chunk's inputs), and whether two
directions run concurrently. Which layers get which is tests/test_plan.py's part; here each
strategy is forced (conftest.force_plan) on small shapes, in float32 and float64, with and
without variable lengths, and must

- compute what the reference computes, forward, and backward where the strategy trains
  (kernel and fused; units and rows for LSTM);
- run where it was forced, and leave the layers it cannot run to their own strategy;
- give the same bits whether or not the helper thread takes part, frozen or not (weights kept
  packed), with W_ih packed panel by panel as the projection goes or whole; the row split (at
  a multiple of the kernel's 4-row tiles) gives the one-thread kernel's bits;
- survive repeated, concurrent and forked calls.
"""
import copy
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

import rnnc
from rnnc import reference
from rnnc._engine import threads
from rnnc._engine.kernels import K
from rnnc._engine.layout import PackedLayout, _row_boundary
from rnnc._engine.plan import ROW_TILE, make_plan

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# Strategies that run on the packed small-batch kernel only (AVX-512).
PACKED_ONLY = {"fused", "rows", "pipelined"}
needs_small = pytest.mark.skipif(not K.has_small_gemm(),
                                 reason="needs the packed small-batch kernel (AVX-512)")


def tol(dtype):
    t = TOL[np.dtype(dtype)]
    return dict(rtol=t, atol=t)


def flat(result):
    """(out, state) -> [out, h] or [out, h, c], copies."""
    out, state = result
    return [a.copy() for a in (out, *(state if isinstance(state, tuple) else (state,)))]


def assert_bits(got, expected):
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)


def assert_close(got, expected, dtype, scale=1):
    assert len(got) == len(expected)
    t = TOL[np.dtype(dtype)] * scale
    for a, e in zip(got, expected):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, rtol=t, atol=t)


class Case:
    """A layer (mode, input, hidden, kwargs), a batch and steps, and the decisions forced
    beside the strategy (threads: the setting the plan assumes)."""

    def __init__(self, mode, I, H, B, T, kw=None, **force):
        self.mode, self.I, self.H, self.B, self.T = mode, I, H, B, T
        self.kw = kw or {}
        self.force = {"threads": 2, **force}
        self.D = 2 if self.kw.get("bidirectional") else 1
        self.L = self.kw.get("num_layers", 1)
        self.P = self.kw.get("proj_size") or H

    def id(self):
        kw = "-".join(f"{k}={v}" for k, v in self.kw.items())
        force = "-".join(f"{k}={v}" for k, v in self.force.items())
        return "-".join(s for s in (f"{self.mode}-I{self.I}-H{self.H}-B{self.B}-T{self.T}",
                                    kw, force) if s)

    def build(self, dtype, seed=0):
        """The rnnc layer and the reference with its weights."""
        m = getattr(rnnc, self.mode)(self.I, self.H, dtype=dtype, seed=seed, **self.kw)
        ref = getattr(reference, self.mode)(self.I, self.H, dtype=dtype, **self.kw)
        ref.load_state_dict(m.state_dict())
        return m, ref

    def first_plan(self, dtype, training):
        """The plan of the first layer (the decisions forced now included), all T steps run."""
        return make_plan(self.mode, self.I, self.H, self.kw.get("proj_size", 0),
                         self.kw.get("reset_after", True), self.D == 2, self.B, self.T, dtype,
                         training, False, nonlinearity=self.kw.get("nonlinearity", "tanh"))

    def inputs(self, rng, dtype, lengths):
        """x, hx and lengths: None ("full"); lengths in [0, T], one of them T ("varied"); or
        T for the first 4 rows and 0 for the others ("tail_empty": the second part of a row
        split never runs)."""
        T, B = self.T, self.B
        shape = (B, T, self.I) if self.kw.get("batch_first") else (T, B, self.I)
        x = rng.standard_normal(shape).astype(dtype)
        h0 = rng.standard_normal((self.D * self.L, B, self.P)).astype(dtype)
        hx = h0
        if self.mode == "LSTM":
            hx = (h0, rng.standard_normal((self.D * self.L, B, self.H)).astype(dtype))
        ln = None
        if lengths == "varied":
            ln = rng.integers(0, T + 1, B)
            ln[B // 2] = T
        elif lengths == "tail_empty":
            ln = np.zeros(B, dtype=np.intp)
            ln[:4] = T
        return x, hx, ln


def cases(strategy, table, lengths=("full", "varied")):
    marks = needs_small if strategy in PACKED_ONLY else ()
    return [pytest.param(strategy, case, kind, id=f"{strategy}-{case.id()}-{kind}", marks=marks)
            for case in table for kind in lengths]


BIDIR2 = dict(num_layers=2, bidirectional=True)

# The two directions of each cell on two threads (inference and training alike).
CONCURRENT = [
        Case("LSTM", 4, 6, 5, 7, BIDIR2, directions_concurrent=True),
        Case("LSTM", 4, 6, 5, 7, dict(proj_size=3, **BIDIR2), directions_concurrent=True),
        Case("GRU", 4, 6, 5, 7, BIDIR2, directions_concurrent=True),
        Case("GRU", 4, 6, 5, 7, dict(reset_after=False, **BIDIR2),
             directions_concurrent=True),
        Case("RNN", 4, 6, 5, 7, BIDIR2, directions_concurrent=True),
]

INFERENCE = (
    cases("kernel", [
        Case("LSTM", 13, 40, 3, 9, threads=1),          # 160 gate columns: 2.5 float32 panels
        Case("LSTM", 70, 24, 2, 6, dict(num_layers=2), threads=1),
        Case("LSTM", 9, 20, 70, 4),                     # 70 rows beside 2 threads: BLAS
        Case("LSTM", 4, 6, 5, 7, dict(proj_size=3, **BIDIR2)),
        Case("GRU", 19, 40, 5, 7),
        Case("GRU", 8, 24, 3, 8, dict(reset_after=False, bias=False), threads=1),
        Case("RNN", 17, 100, 4, 6),
        Case("RNN", 5, 33, 9, 5, dict(nonlinearity="relu", bidirectional=True), threads=1),
        # the two directions on two threads
        *CONCURRENT,
    ])
    + cases("fused", [
        Case("LSTM", 11, 32, 1, 9, threads=1),
        Case("LSTM", 7, 40, 5, 6, dict(num_layers=2), threads=1),   # I = H in layer 2
        Case("LSTM", 64, 64, 16, 5, dict(bidirectional=True), threads=1),
        Case("LSTM", 64, 64, 16, 5, dict(bidirectional=True), directions_concurrent=True),
        Case("LSTM", 3, 17, 9, 4, dict(bias=False), threads=1),      # zero bias column
        Case("LSTM", 130, 96, 64, 4, threads=1),
    ])
    + cases("units", [
        Case("LSTM", 11, 32, 1, 9),
        Case("LSTM", 11, 40, 3, 7, dict(num_layers=2)),     # unequal halves: 16 + 24 units
        Case("LSTM", 11, 130, 17, 5, dict(bias=False)),     # 64 + 66: one part whole panels
        Case("LSTM", 11, 33, 70, 4, parts_small_gemm=False),     # BLAS, gathered W_hh rows
        Case("LSTM", 11, 64, 5, 6, dict(num_layers=3, bidirectional=True)),
        Case("LSTM", 11, 128, 3, 6, units_fused=False),     # W_ih read in place, per panel
        Case("GRU", 11, 48, 4, 8),
        Case("GRU", 11, 130, 2, 5, dict(num_layers=2, bidirectional=True, bias=False)),
        Case("GRU", 11, 64, 66, 3),                         # 3 steps: BLAS
        Case("GRU", 20, 128, 2, 5),
        Case("RNN", 11, 32, 6, 10),
        Case("RNN", 11, 96, 3, 7, dict(num_layers=2, nonlinearity="relu")),
        Case("RNN", 11, 256, 70, 3),
        # each part's projection reads its rows of W_ih's gate blocks in place (BLAS)
        *(Case(mode, 13, 40, 5, 6, dict(num_layers=2), units_big_ih=True,
               units_fused=False, parts_small_gemm=False) for mode in ("LSTM", "GRU", "RNN")),
    ])
    + cases("rows", [
        Case("LSTM", 16, 32, 8, 12),
        Case("LSTM", 5, 40, 12, 9, dict(bias=False)),
        Case("LSTM", 24, 24, 19, 7, dict(num_layers=2)),
        Case("LSTM", 9, 48, 64, 5, dict(batch_first=True)),
        Case("LSTM", 6, 20, 16, 10, dict(bidirectional=True)),   # each direction split
        Case("RNN", 16, 32, 8, 12),
        Case("RNN", 5, 40, 12, 9, dict(bias=False, nonlinearity="relu")),
        Case("RNN", 24, 24, 19, 7, dict(num_layers=2)),
        Case("RNN", 6, 20, 16, 10, dict(bidirectional=True, nonlinearity="relu")),
        Case("GRU", 16, 32, 8, 12),
        Case("GRU", 5, 40, 13, 9, dict(bias=False)),
        Case("GRU", 24, 24, 20, 7, dict(num_layers=2)),
        Case("GRU", 6, 20, 16, 10, dict(bidirectional=True)),
        # no fused row kernel: each part runs the layer kernel on its gathered rows
        Case("LSTM", 16, 32, 8, 12, dict(proj_size=16)),
        Case("LSTM", 9, 40, 13, 7, dict(proj_size=8, num_layers=2, bias=False)),
        Case("LSTM", 6, 20, 16, 10, dict(proj_size=12, bidirectional=True)),
        Case("GRU", 16, 32, 8, 12, dict(reset_after=False)),
        Case("GRU", 6, 20, 16, 10, dict(reset_after=False, bidirectional=True, bias=False)),
    ], lengths=("full", "varied", "tail_empty"))
    + cases("pipelined", [
        Case("LSTM", 7, 24, 1, 30),
        Case("LSTM", 5, 40, 3, 17, BIDIR2),
        Case("GRU", 6, 33, 2, 25),
        Case("GRU", 6, 16, 5, 9, dict(bias=False, bidirectional=True)),
        Case("RNN", 9, 20, 4, 20, dict(nonlinearity="relu", num_layers=2)),
        Case("RNN", 3, 64, 1, 40),
    ])
)


@pytest.fixture
def one_thread(force_plan):
    """one_thread(run): run() as on one thread (plans and BLAS alike)."""
    def call(run):
        previous = rnnc.get_num_threads()
        rnnc.set_num_threads(1)
        force_plan(threads=1)
        try:
            return run()
        finally:
            rnnc.set_num_threads(previous)
    return call


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_chunked_projection_gives_the_same_bits(force_plan, mode):
    """Chunks of 3 steps pack W_ih whole once and project a chunk at a time; one chunk packs
    it panel by panel as the projection goes: the same sums in the same order."""
    m = getattr(rnnc, mode)(12, 40, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 2, 12)).astype(np.float32)
    force_plan(strategy="kernel", threads=1)
    expected = flat(m(x))
    force_plan(strategy="kernel", threads=1, chunk_steps=3)
    assert_bits(flat(m(x)), expected)


def no_helper(monkeypatch):
    """The compiled helper thread unavailable (held by another call): the split layers then
    run both parts on the calling thread (units: its one-thread strategy), and pairs of
    callables (concurrent directions) a Python thread."""
    monkeypatch.setattr(threads, "split_begin", lambda wait=False, parts=2: None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy,case,lengths", INFERENCE)
def test_inference_matches_reference(force_plan, one_thread, monkeypatch, strategy, case,
                                     lengths, dtype):
    rng = np.random.default_rng(case.H * 100 + case.B)
    m, ref = case.build(dtype, seed=case.H)
    x, hx, ln = case.inputs(rng, dtype, lengths)
    ran = force_plan(strategy=strategy, **case.force)
    got = flat(m(x, hx, lengths=ln))
    assert ran == [(strategy, False, "forward")] * (case.D * case.L)
    assert_close(got, flat(ref(x, hx, lengths=ln)), dtype)
    if strategy == "kernel" and case.force["threads"] == 1 and K.has_small_gemm():
        # The comparison with W_ih packed whole below is one: the projection packs it panel
        # by panel (one chunk of steps, on the packed kernel).
        p = case.first_plan(dtype, training=False)
        assert p.packed_projection and p.ih_per_panel

    # Frozen (the weights kept packed, W_ih whole): the same bits, first call and later ones.
    frozen = copy.deepcopy(m).freeze()
    for _ in range(2):
        assert_bits(flat(frozen(x, hx, lengths=ln)), got)
    # W_ih packed whole before the projection rather than panel by panel as it goes.
    force_plan(strategy=strategy, ih_per_panel=False, **case.force)
    assert_bits(flat(m(x, hx, lengths=ln)), got)

    if strategy == "rows":
        # The parts start at a multiple of 4 rows: the one-thread kernel's bits (LSTM: the
        # fused product, as each part runs). RNN's parts run the fused product, which the
        # one-thread kernel does not; GRU's project step by step rather than by chunks,
        # the same sums where every step's rows fill whole 4-row tiles.
        # Parts on the layer kernel (a projected LSTM, GRU in the original form) run its
        # products on their own rows: the same sums where every step's rows fill whole tiles.
        by_kernel = case.kw.get("proj_size") or case.kw.get("reset_after") is False
        one = one_thread(lambda: flat(m(x, hx, lengths=ln)))
        if (case.mode == "LSTM" and not by_kernel) or (
                case.mode in ("GRU", "LSTM") and ln is None and case.B % 4 == 0):
            assert_bits(got, one)
        assert_close(got, one, dtype)
        force_plan(strategy=strategy, **case.force)

    # The helper thread unavailable: the same bits, both parts on this thread; a layer split
    # by units runs its one-thread strategy (here the kernel) instead.
    no_helper(monkeypatch)
    del ran[:]
    alone = flat(m(x, hx, lengths=ln))
    assert ran == [(strategy, False, "forward")] * (case.D * case.L)
    if strategy == "units":
        force_plan(strategy="kernel", **case.force)
        assert_bits(alone, flat(m(x, hx, lengths=ln)))
    else:
        assert_bits(alone, got)


TRAINING = (
    cases("kernel", [
        Case("RNN", 10, 40, 3, 7, dict(num_layers=2), threads=1),
        Case("RNN", 5, 33, 4, 6, dict(nonlinearity="relu", bidirectional=True)),
        Case("GRU", 10, 40, 3, 7, dict(num_layers=2), threads=1),
        Case("GRU", 8, 24, 3, 8, dict(reset_after=False, bias=False)),
        Case("LSTM", 10, 40, 3, 7, dict(num_layers=2), threads=1),
        Case("LSTM", 9, 20, 70, 4),
        *CONCURRENT,
    ])
    + cases("fused", [
        Case("LSTM", 11, 32, 1, 9, threads=1),
        Case("LSTM", 7, 40, 5, 6, dict(num_layers=2), threads=1),
        Case("LSTM", 64, 64, 16, 5, dict(bidirectional=True), threads=1),
        Case("LSTM", 64, 64, 16, 5, dict(bidirectional=True), directions_concurrent=True),
        Case("LSTM", 3, 17, 9, 4, dict(bias=False), threads=1),
        Case("LSTM", 130, 96, 64, 4, threads=1),
    ])
    + cases("units", [
        Case("LSTM", 11, 32, 1, 9),
        Case("LSTM", 11, 40, 3, 7, dict(num_layers=2)),         # 16 + 24 units
        Case("LSTM", 5, 130, 17, 5, dict(bias=False)),
        Case("LSTM", 11, 33, 70, 4),
        Case("LSTM", 64, 64, 5, 6, BIDIR2),                     # each direction split in turn
        Case("LSTM", 11, 48, 4, 1),                             # one step
        Case("LSTM", 7, 48, 4, 6, parts_small_gemm=False),      # the parts' products on BLAS
    ])
    + cases("rows", [
        Case("LSTM", 11, 32, 8, 9),
        Case("LSTM", 5, 40, 17, 7, dict(bias=False)),
        Case("LSTM", 24, 24, 12, 6, dict(num_layers=2)),
        Case("LSTM", 6, 20, 16, 5, dict(bidirectional=True)),
        # each part the layer kernel's forward and backward on its gathered rows
        Case("GRU", 11, 32, 8, 9),
        Case("GRU", 5, 40, 17, 7, dict(bias=False, reset_after=False)),
        Case("GRU", 6, 20, 16, 5, dict(bidirectional=True, num_layers=2)),
        Case("RNN", 11, 32, 8, 9, dict(nonlinearity="relu")),
        Case("RNN", 24, 24, 12, 6, dict(num_layers=2, bias=False)),
        Case("LSTM", 9, 40, 13, 7, dict(proj_size=8, num_layers=2)),
    ])
)


def train_step(m, x, hx, lengths, g, ghx):
    """Forward and backward of a training step: [out, h_n(, c_n)], [dx, dh0(, dc0)] and the
    parameter gradients by name."""
    m.train()
    states = flat(m(x, hx, lengths=lengths))
    dx, dhx, grads = m.backward(g, ghx)
    return states, [dx, *(dhx if isinstance(dhx, tuple) else (dhx,))], grads


def training_inputs(case, rng, dtype, lengths):
    x, hx, ln = case.inputs(rng, dtype, lengths)
    g = rng.standard_normal((case.T, case.B, case.D * case.P)).astype(dtype)
    gh = rng.standard_normal((case.D * case.L, case.B, case.P)).astype(dtype)
    ghx = gh
    if case.mode == "LSTM":
        ghx = (gh, rng.standard_normal((case.D * case.L, case.B, case.H)).astype(dtype))
    return x, hx, ln, g, ghx


def all_of(step):
    states, state_grads, grads = step
    return states + state_grads + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy,case,lengths", TRAINING)
def test_training_matches_reference(force_plan, one_thread, strategy, case, lengths, dtype):
    rng = np.random.default_rng(case.H * 10 + case.B)
    m, ref = case.build(dtype, seed=case.H)
    x, hx, ln, g, ghx = training_inputs(case, rng, dtype, lengths)
    ran = force_plan(strategy=strategy, **case.force)
    got = train_step(m, x, hx, ln, g, ghx)
    runs = case.D * case.L
    assert ran == [(strategy, True, "forward")] * runs + [(strategy, True, "backward")] * runs
    expected = train_step(ref, x, hx, ln, g, ghx)
    assert sorted(got[2]) == sorted(expected[2])
    assert_close(all_of(got), all_of(expected), dtype)

    # W_ih packed whole rather than panel by panel: the same bits, gradients included.
    force_plan(strategy=strategy, ih_per_panel=False, **case.force)
    assert_bits(all_of(train_step(m, x, hx, ln, g, ghx)), all_of(got))

    if strategy == "rows":
        # Each part runs the one-thread loops on its rows: the states and the top layer's
        # state gradients are the one-thread bits. The input and weight gradients come from
        # GEMMs over all rows in two shares, whose boundary need not fall on a 4-row tile: a
        # row there may sum in another order, and the layers below see that input gradient.
        # Parts on the layer kernel (GRU, RNN, a projected LSTM) project their own rows, in
        # other tiles than the one-thread kernel: the same to rounding.
        one = one_thread(lambda: train_step(m, x, hx, ln, g, ghx))
        top = slice(-case.D, None)
        if case.mode == "LSTM" and not case.kw.get("proj_size"):
            assert_bits(got[0] + [a[top] for a in got[1][1:]],
                        one[0] + [a[top] for a in one[1][1:]])
        assert_close(all_of(got), all_of(one), dtype)
        # and the same bits on every call
        force_plan(strategy=strategy, **case.force)
        assert_bits(all_of(train_step(m, x, hx, ln, g, ghx)), all_of(got))


@pytest.mark.parametrize("dtype", DTYPES)
def test_units_training_agrees_with_the_kernel(force_plan, dtype):
    case = Case("LSTM", 20, 96, 6, 12)
    x, hx, ln, g, ghx = training_inputs(case, np.random.default_rng(7), dtype, "full")
    force_plan(strategy="units", threads=2)
    split = all_of(train_step(case.build(dtype, seed=3)[0], x, hx, ln, g, ghx))
    ran = force_plan(strategy="kernel", threads=2)
    whole = all_of(train_step(case.build(dtype, seed=3)[0], x, hx, ln, g, ghx))
    assert ran[-1] == ("kernel", True, "backward")
    t = 1e-5 if dtype == np.float32 else 1e-13
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a, b, rtol=t, atol=t)


TRAINING_STRATEGIES = ["kernel", pytest.param("fused", marks=needs_small), "units",
                       pytest.param("rows", marks=needs_small)]


@pytest.mark.parametrize("variable", [False, True])
@pytest.mark.parametrize("strategy", TRAINING_STRATEGIES)
def test_training_reverse_in_time(force_plan, strategy, variable):
    # What rnnc.Bidirectional's backward layer runs: every sequence from its last step.
    rng = np.random.default_rng(11)
    case = Case("LSTM", 6, 40, 8, 7)
    m, ref = case.build(np.float64, seed=4)
    x = rng.standard_normal((7, 8, 6))
    lengths = np.array([7, 2, 5, 7, 1, 0, 3, 6]) if variable else None
    g = rng.standard_normal((7, 8, 40))
    ran = force_plan(strategy=strategy, threads=2)
    results = []
    for net in (m, ref):
        net.train()
        out, (h, c) = net._forward(x, None, lengths, reverse_all=True)
        dx, (dh0, dc0), grads = net.backward(g)
        results.append([out, h, c, dx, dh0, dc0] + [grads[k] for k in sorted(grads)])
    assert ran == [(strategy, True, "forward"), (strategy, True, "backward")]
    assert_close(results[0], results[1], np.float64)


@pytest.mark.parametrize("strategy", TRAINING_STRATEGIES)
def test_gradients_accumulate_over_calls(force_plan, strategy):
    # Two backward passes add their gradients, the biases' included.
    rng = np.random.default_rng(5)
    m = rnnc.LSTM(4, 32, seed=1, dtype=np.float64)
    x = rng.standard_normal((5, 8, 4))
    g = rng.standard_normal((5, 8, 32))
    ran = force_plan(strategy=strategy, threads=2)
    m.train()
    m.zero_grad()
    m(x)
    _, _, first = m.backward(g)
    m(x)
    m.backward(g)
    for name, grad in first.items():
        np.testing.assert_allclose(m.grads[name], 2 * grad, rtol=1e-12, atol=1e-12)
    assert ran == [(strategy, True, "forward"), (strategy, True, "backward")] * 2


STRATEGIES = ["kernel", pytest.param("fused", marks=needs_small), "units",
              pytest.param("rows", marks=needs_small), pytest.param("pipelined",
                                                                    marks=needs_small)]


@pytest.mark.parametrize("strategy,mode", [
    pytest.param(s, mode, id=f"{s}-{mode}", marks=needs_small if s in PACKED_ONLY else ())
    for s in ("kernel", "fused", "units", "rows", "pipelined") for mode in ("LSTM", "GRU")
    if (s, mode) != ("fused", "GRU")])
def test_repeated_calls_give_the_same_bits(force_plan, strategy, mode):
    """Later calls find the helper awake (it sleeps ~0.5 ms after a call): the same bits as
    the first; the initial state is read, not written."""
    rng = np.random.default_rng(3)
    m = getattr(rnnc, mode)(10, 64, num_layers=2, seed=2)
    x = rng.standard_normal((20, 16, 10)).astype(np.float32)
    hx = rng.standard_normal((2, 16, 64)).astype(np.float32)
    if mode == "LSTM":
        hx = (hx, rng.standard_normal((2, 16, 64)).astype(np.float32))
    before = copy.deepcopy(hx)
    ran = force_plan(strategy=strategy, threads=2)
    expected = flat(m(x, hx))
    for _ in range(5):
        assert_bits(flat(m(x, hx)), expected)
    assert_bits(flat((x, hx)), flat((x, before)))
    assert set(ran) == {(strategy, False, "forward")}


@needs_small
def test_calls_after_a_sleeping_helper(force_plan):
    """Calls far apart post to a sleeping helper and do not wait for it to wake: a call may
    return before the helper has looked at its job. Later calls (split by rows or projecting
    ahead, which waits for it) must not be disturbed by that late helper."""
    rng = np.random.default_rng(5)
    rows = rnnc.LSTM(8, 32, seed=4)
    ahead = rnnc.LSTM(64, 64, seed=5)
    x = rng.standard_normal((12, 16, 8)).astype(np.float32)
    x2 = rng.standard_normal((40, 4, 64)).astype(np.float32)
    force_plan(threads=1)
    expected = flat(rows(x))
    ran = force_plan(threads=2)
    # Projected ahead or not (the helper asleep: the caller projects), the same sums.
    expected2 = flat(ahead(x2))
    del ran[:]
    for i in range(6):
        time.sleep(0.02)                    # the helper sleeps after ~0.5 ms idle
        assert_bits(flat(rows(x)), expected)
        if i % 2:
            assert_bits(flat(ahead(x2)), expected2)
    assert set(ran) == {("rows", False, "forward"), ("pipelined", False, "forward")}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_in_place_weight_updates_are_seen(force_plan, strategy):
    # Unfrozen, the weights are packed on every call: in-place updates take effect.
    m = rnnc.LSTM(6, 32, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 8, 6))
    ran = force_plan(strategy=strategy, threads=2)
    first = flat(m(x))
    m.weight_hh_l0[...] *= -0.5
    m.bias_ih_l0[...] += 0.25
    ref = reference.LSTM(6, 32, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    got = flat(m(x))
    assert_close(got, flat(ref(x)), np.float64)
    assert not np.allclose(got[0], first[0])
    assert ran == [(strategy, False, "forward")] * 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_first_and_unbatched(force_plan, strategy):
    m = rnnc.LSTM(5, 48, batch_first=True, seed=1, dtype=np.float64)
    ref = reference.LSTM(5, 48, batch_first=True, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).standard_normal((6, 7, 5))
    ran = force_plan(strategy=strategy, threads=2)
    assert_close(flat(m(x)), flat(ref(x)), np.float64)
    assert ran == [(strategy, False, "forward")]
    assert_close(flat(m(x[0])), flat(ref(x[0])), np.float64)      # one row: never by rows
    assert ran[1] == ("kernel" if strategy == "rows" else strategy, False, "forward")


# Layers a strategy cannot run keep their own: (strategy, layer, training), the layer as
# (mode, hidden, batch, kwargs).
CANNOT = [
    *((s, ("LSTM", 32, 8, dict(proj_size=8)), False) for s in ("fused", "units", "pipelined")),
    *((s, ("GRU", 32, 8, dict(reset_after=False)), False) for s in ("units", "pipelined")),
    ("fused", ("GRU", 32, 8, {}), False),
    ("fused", ("LSTM", 32, 8, dict(proj_size=8)), True),
    ("units", ("RNN", 16, 8, {}), False),       # below 32 units, one part would be empty
    ("units", ("GRU", 32, 8, {}), True),        # training splits LSTM only
    ("units", ("LSTM", 32, 8, dict(proj_size=8)), True),
    ("rows", ("LSTM", 32, 4, {}), False),       # one 4-row tile: nothing to split
    ("pipelined", ("LSTM", 32, 8, {}), True),   # inference only
    # The strategies that use the helper thread never beside concurrent directions (the
    # helper runs the second direction).
    *((s, ("LSTM", 32, 8, dict(bidirectional=True)), training)
      for s in ("units", "rows", "pipelined") for training in (False, True)),
]


@pytest.mark.parametrize("strategy,layer,training", CANNOT)
def test_layers_a_strategy_cannot_run_keep_their_own(force_plan, strategy, layer, training):
    if strategy in PACKED_ONLY and not K.has_small_gemm():
        pytest.skip("needs the packed small-batch kernel")
    mode, H, B, kw = layer
    m = getattr(rnnc, mode)(4, H, num_layers=2, seed=0, dtype=np.float64, **kw)
    ref = getattr(reference, mode)(4, H, num_layers=2, dtype=np.float64, **kw)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(1).standard_normal((6, B, 4))
    concurrent = dict(directions_concurrent=True) if kw.get("bidirectional") else {}
    ran = force_plan(strategy=strategy, threads=2, **concurrent)
    if training:
        P = (kw.get("proj_size") or H) * (2 if kw.get("bidirectional") else 1)
        g = np.random.default_rng(2).standard_normal((6, B, P))
        got = all_of(train_step(m, x, None, None, g, None))
        expected = all_of(train_step(ref, x, None, None, g, None))
    else:
        got, expected = flat(m(x)), flat(ref(x))
    assert_close(got, expected, np.float64)
    assert ran and all(s != strategy for s, _, _ in ran)


# -- helper threads: concurrent callers, forks -------------------------------------------------
HELPED = [pytest.param(dict(strategy="units"), id="units"),
          pytest.param(dict(strategy="rows"), id="rows", marks=needs_small),
          pytest.param(dict(strategy="pipelined"), id="pipelined", marks=needs_small),
          pytest.param(dict(strategy="kernel", directions_concurrent=True),
                       id="concurrent-directions")]


def helped_case(seed):
    m = rnnc.LSTM(6, 40, num_layers=2, bidirectional=True, seed=seed, dtype=np.float64)
    ref = reference.LSTM(6, 40, num_layers=2, bidirectional=True, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = np.random.default_rng(seed).standard_normal((9, 8, 6))
    return m, x, flat(ref(x))


@pytest.mark.parametrize("decisions", HELPED)
def test_concurrent_callers_share_the_helper(force_plan, decisions):
    # One compiled helper thread serves one layer call (or pair of directions) at a time: a
    # second Python thread calling at the same moment waits for it or runs without it. Every
    # result must still be exact.
    ran = force_plan(threads=2, **decisions)
    cases = [helped_case(seed) for seed in range(4)]
    errors = []

    def work(m, x, expected):
        try:
            for _ in range(15):
                assert_close(flat(m(x)), expected, np.float64)
        except Exception as exc:    # noqa: BLE001 - reported below, from the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=case) for case in cases]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    assert set(ran) == {(decisions["strategy"], False, "forward")}
    assert threads.split_begin() is not None        # released after every call
    threads.split_end()


_FORK_RAN = []      # force_plan's record of the runners called, seen by a forked child


def _call_in_child(m, x):
    ran = _FORK_RAN[0]
    before = len(ran)
    result = flat(m(x))
    return result, ran[before:]


@pytest.mark.parametrize("decisions", HELPED)
def test_in_a_forked_child(force_plan, decisions):
    # A forked child inherits the helper's description but not its thread: it starts its own.
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ran = force_plan(threads=2, **decisions)
    m, x, expected = helped_case(7)
    parent = flat(m(x))                     # the parent's helper is running
    _FORK_RAN[:] = [ran]
    with mp.get_context("fork").Pool(1) as pool:
        got, child_ran = pool.apply_async(_call_in_child, (m, x)).get(timeout=60)
    assert child_ran == [(decisions["strategy"], False, "forward")] * 4
    assert_close(got, expected, np.float64)
    assert_bits(got, parent)


# -- the row split ---------------------------------------------------------------------------
@needs_small
@pytest.mark.parametrize("mode", ["LSTM", "RNN", "GRU"])
def test_frozen_row_split_keeps_each_part_its_panels(force_plan, mode):
    rng = np.random.default_rng(6)
    kw = dict(nonlinearity="relu") if mode == "RNN" else {}
    m = getattr(rnnc, mode)(7, 40, seed=6, **kw)
    f = getattr(rnnc, mode)(7, 40, seed=6, **kw).freeze()
    x = rng.standard_normal((9, 12, 7)).astype(np.float32)
    ran = force_plan(strategy="rows", threads=2)
    for _ in range(3):      # the first call packs, the others find both parts' panels kept
        assert_bits(flat(f(x)), flat(m(x)))
    assert {k for k in f._packs if "rows" in k} == {(0, 0, "rows", 0), (0, 0, "rows", 1)}
    # New weights: the parts pack again.
    m.load_state_dict(getattr(rnnc, mode)(7, 40, seed=7, **kw).state_dict())
    f.load_state_dict(m.state_dict())
    assert_bits(flat(f(x)), flat(m(x)))
    assert set(ran) == {("rows", False, "forward")}


@pytest.mark.parametrize("lengths,rows0", [
    ([5] * 8, 4), ([5] * 16, 8), ([5] * 12, 4), ([5] * 19, 8),
    ([100, 1, 1, 1, 1, 1, 1, 1, 1, 1], 4),         # the long row alone is most of the work
    ([9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1], 4),
])
def test_row_boundary_balances_the_steps(lengths, rows0):
    got = _row_boundary(np.array(lengths, dtype=np.intp))
    assert got == rows0 and got % ROW_TILE == 0 and 0 < got < len(lengths)


@pytest.mark.parametrize("lengths", [None, [3, 9, 9, 0, 9, 5, 9, 1, 2, 9]])
@pytest.mark.parametrize("parts", [2, 3, 5])
def test_row_split_of_a_layout(lengths, parts):
    # Rows [bounds[p], bounds[p + 1]) of the packed (sorted) batch, step by step; B = 10 has
    # 3 row tiles, so 5 parts are 3.
    T, B = 9, 10
    layout = PackedLayout(T, B, None if lengths is None else np.array(lengths, np.intp))
    bounds, sizes = layout.row_split(parts)
    assert len(bounds) == min(parts, 3) + 1 == len(sizes) + 1
    assert bounds[0] == 0 and bounds[-1] == B and all(np.diff(bounds) > 0)
    assert all(b % ROW_TILE == 0 for b in bounds[:-1])
    for p, s in enumerate(sizes):
        np.testing.assert_array_equal(
            s, np.clip(layout.batch_sizes - bounds[p], 0, bounds[p + 1] - bounds[p]))
    np.testing.assert_array_equal(sum(sizes), layout.batch_sizes)


# -- the strategies' kernels check what they are handed -----------------------------------------
def test_split_kernel_needs_two_nonempty_parts():
    # A part without units would divide by zero: the kernel refuses it (the plan never splits
    # fewer than 32 units: test_layers_a_strategy_cannot_run_keep_their_own).
    from rnnc._kernels._parallel_forward import Pool, SplitJob, SplitPart, split_forward_py
    two = [SplitPart(), SplitPart()]
    for bounds in ((0, 0, 16), (0, 16, 16), (0, 8), (1, 8, 16), (0, 8, 15)):
        with pytest.raises(ValueError, match=r"bounds must rise from 0 to 16 \(hidden_size\)"):
            split_forward_py(SplitJob(h=np.zeros((2, 16)), bounds=bounds, parts=two), Pool())
    with pytest.raises(ValueError, match="prepared"):
        split_forward_py(SplitJob(h=np.zeros((2, 16)), bounds=(0, 8, 16), parts=two,
                                  ih_per_panel=True, prepared=True), Pool())


def _rows_job(mode, rows0, gru_buffers):
    from rnnc._kernels._parallel_forward import RowsJob, RowsPart
    f = np.float32
    B, I, H = 8, 3, 2
    G = {2: 3, 3: 4}[mode] * H
    sizes = np.full(2, B // 2, dtype=np.intp)     # each part's rows at each of 2 steps
    none2 = np.zeros((0, 0), f)
    parts = [RowsPart(batch_sizes=sizes, packed=np.zeros((1, I if mode == 2 else I + H + 1, 64),
                                                         f),
                      xh=none2 if mode == 2 else np.zeros((B, I + H + 1), f),
                      gates=np.zeros((B, G), f), cwork=none2 if mode == 2 else np.zeros((B, H), f))
             for _ in range(2)]
    if gru_buffers:
        for p in parts:
            p.packed_hh, p.hg, p.bias = np.zeros((1, H, 64), f), np.zeros((B, G), f), np.zeros(0, f)
    return RowsJob(mode=mode, x=np.zeros((2 * B, I), f), offsets=np.arange(2) * B, reverse=False,
                   w_ih=np.zeros((G, I), f), w_hh=np.zeros((G, H), f), b_ih=np.zeros(0, f),
                   b_hh=np.zeros(0, f), prepared=False, h=np.zeros((B, H), f),
                   c=none2 if mode == 2 else np.zeros((B, H), f), out=np.zeros((2 * B, H), f),
                   col0=0, bounds=(0, rows0, B), parts=parts)


def test_rows_kernel_checks_its_split():
    from rnnc._kernels._parallel_forward import rows_forward_py
    for rows0 in (0, 8):
        with pytest.raises(ValueError, match=r"bounds must rise from 0 to 8 \(the batch\)"):
            rows_forward_py(_rows_job(3, rows0, False), None)
    with pytest.raises(ValueError, match="GRU needs each part's packed_hh, hg and bias"):
        rows_forward_py(_rows_job(2, 4, False), None)
    rows_forward_py(_rows_job(2, 4, True), None)        # zero weights, zero input: runs


def test_layer_kernel_checks_the_panel_buffer():
    # With W_ih packed panel by panel, its buffer is one panel: (1, I, 64) for float32.
    f = np.float32
    x = np.zeros((4, 12), f)
    sizes = np.full(2, 2, dtype=np.intp)
    offsets = np.arange(0, 4, 2, dtype=np.intp)
    e1, e2 = np.zeros(0, f), np.zeros((0, 0), f)
    for bad in (np.zeros((1, 11, 64), f), np.zeros((1, 12, 32), f)):
        job = K.LayerForward(
            x=x, batch_sizes=sizes, offsets=offsets, reverse=False, w_ih=np.zeros((64, 12), f),
            w_hh=np.zeros((64, 16), f), b_ih=e1, b_hh=e1, w_hr=e2, h=np.zeros((2, 16), f),
            c=np.zeros((2, 16), f), out=np.zeros((4, 16), f), col0=0, xg=np.zeros((4, 64), f),
            hbuf=e2, chunk_steps=2, h_prev=e2, c_prev=e2, w_hh_packed=np.zeros((0, 0, 0), f),
            w_hr_packed=np.zeros((0, 0, 0), f), w_ih_packed=bad, ih_per_panel=True)
        with pytest.raises(ValueError, match=r"lstm_forward: with ih_per_panel, w_ih_packed "
                                             r"must be one panel of shape \(1, 12, 64\)"):
            K.lstm_forward(job)


# -- a sweep (-m slow) -------------------------------------------------------------------------
SWEEP_VARIANTS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}),
                  ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 5})]


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,B,T", [(32, 1, 9), (40, 5, 4), (65, 9, 6), (33, 17, 5),
                                   (48, 70, 4)])
@pytest.mark.parametrize("variant", SWEEP_VARIANTS,
                         ids=["RNN", "RNN-relu", "GRU", "GRU-reset_before", "LSTM", "LSTM-proj"])
@pytest.mark.parametrize("strategy", ["kernel", "fused", "units", "rows", "pipelined"])
def test_strategy_sweep(force_plan, strategy, variant, H, B, T, dtype, training):
    """Every strategy forced on every cell variant, two layers (bidirectional for odd
    batches), varied lengths: the reference's results; the layers the strategy cannot run
    keep their own."""
    mode, kw = variant
    if training and mode == "RNN" and "nonlinearity" in kw and dtype == np.float32:
        pytest.skip("a relu pre-activation within float32 rounding of 0 flips its gradient")
    case = Case(mode, 7, H, B, T, dict(kw, num_layers=2, bidirectional=bool(B % 2)))
    rng = np.random.default_rng(H * 1000 + B * 10 + T)
    m, ref = case.build(dtype, seed=H + B)
    ran = force_plan(strategy=strategy, threads=2)
    if training:
        x, hx, ln, g, ghx = training_inputs(case, rng, dtype, "varied")
        got = all_of(train_step(m, x, hx, ln, g, ghx))
        expected = all_of(train_step(ref, x, hx, ln, g, ghx))
        assert_close(got, expected, dtype, scale=10)
    else:
        x, hx, ln = case.inputs(rng, dtype, "varied")
        assert_close(flat(m(x, hx, lengths=ln)), flat(ref(x, hx, lengths=ln)), dtype)
    assert len(ran) == case.D * case.L * (2 if training else 1)
