"""Bad-input campaign (issue 13): generated valid and invalid calls of every public class.

Each generated case is one call of the public API -- a layer (RNN, GRU, LSTM), a cell, Linear,
Sequential, Bidirectional, a stream, a constructor, load_state_dict or backward -- in one of 15
categories (CATEGORIES). A case says what must happen:

* valid input: the call succeeds and its result equals the NumPy reference's (rnnc.reference,
  same classes and weights via state_dict / load_state_dict) within conftest's tolerances;
* invalid input: a ValueError or TypeError (RuntimeError for misuse such as backward without a
  training forward) whose message names the offending argument;

and, either way, no input is changed (every array passed in is compared bit for bit before and
after), and a rejected call leaves the module (weights, gradients, stream state) as it was.

The cases come from one set of builders driven either by hypothesis (the tests below: a
derandomized small profile by default, a larger one under ``-m slow``) or by a seeded NumPy
generator (the campaign: ``python tests/test_fuzz.py --calls 12000`` prints a summary of calls,
categories, crashes and wrong results; ``--help`` for options, ``--replay CATEGORY:SEED``
re-runs one case). The campaign runs its cases in a child process, so a crash of the process is
counted against the case that caused it and the campaign goes on.

Huge sizes: every huge-size case runs with the process's address space capped (RLIMIT_AS, a
little above what it uses; under AddressSanitizer, whose shadow memory makes that impossible,
tools/asan.sh caps allocations through ASAN_OPTIONS instead), so an unchecked allocation fails
at once instead of taking gigabytes, and the case must end within seconds. Sizes that fit in
memory but are slow to allocate (num_layers=10**7) are left out.
"""
import argparse
import copy
import json
import os
import pickle
import re
import subprocess
import sys
import time
import traceback

import numpy as np

import rnnc
import rnnc.reference as R

try:
    from conftest import TOL
except ImportError:     # run from elsewhere than tests/
    TOL = {np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
           np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5)}

try:
    import pytest
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
except ImportError:     # the campaign needs neither
    pytest = None

CATEGORIES = ("shapes", "hx", "dtypes", "layouts", "specials", "empty", "lengths", "pytypes",
              "huge", "backward", "state_dict", "constructors", "streams", "cells", "wrappers")
MODES = ("RNN", "GRU", "LSTM")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# What a call may do. OK: succeed and match the reference. ERROR: ValueError/TypeError naming
# the argument. MISUSE: RuntimeError (wrong order of calls). EITHER: an ERROR or an OK outcome.
OK, ERROR, MISUSE, EITHER = "ok", "error", "misuse", "either"
GOOD = ("matched", "rejected")
BAD = ("crash", "wrong", "refused", "accepted", "unclear", "mutated", "slow")


# ---------------------------------------------------------------------------------------------
# Choosers: the same builders run on hypothesis draws or on a NumPy generator
# ---------------------------------------------------------------------------------------------
class RngChooser:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def bool(self, p=0.5):
        return bool(self.rng.random() < p)

    def seed(self):
        return int(self.rng.integers(2**31))


class HypChooser:
    def __init__(self, data):
        self.data = data

    def int(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options):
        return options[self.data.draw(st.integers(0, len(options) - 1))]

    def bool(self, p=0.5):
        # Shrinks to False; p is approximated by a draw out of 20.
        return self.data.draw(st.integers(0, 19)) < round(20 * p)

    def seed(self):
        return self.data.draw(st.integers(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------
# Cases and how they are judged
# ---------------------------------------------------------------------------------------------
class Case:
    """One call. run() makes the call; ref() computes the expected result (OK/EITHER);
    compare(result, expected) raises AssertionError on a mismatch; names: the words one of which
    the error message must contain; inputs: every object passed in (checked for changes);
    post(result_or_exc): extra checks after the call (module unchanged, state kept...)."""

    def __init__(self, category, what, run, expect, ref=None, names=(), inputs=(),
                 errors=None, compare=None, post=None, time_limit=None):
        self.category, self.what, self.run, self.expect = category, what, run, expect
        self.ref, self.names, self.inputs, self.post = ref, tuple(names), list(inputs), post
        if errors is None:
            errors = (RuntimeError,) if expect == MISUSE else (ValueError, TypeError)
        self.errors = errors
        self.compare = compare or compare_tree
        self.time_limit = time_limit


class Unclear(AssertionError):
    """Raised by a post-check: the error was right but its message says too little."""


def _snapshot(obj, depth=0):
    """A deep record of obj's contents (bytes of arrays, dtype, flags), to detect changes."""
    if depth > 6:
        return ("deep",)
    if isinstance(obj, np.ndarray):
        # The memory behind a view (a zero-stride broadcast of one row is huge to copy).
        root = obj
        while isinstance(root.base, np.ndarray):
            root = root.base
        mem = root if root.nbytes < obj.nbytes else obj
        if mem.nbytes > 1 << 28:
            data = ("too big to copy", mem.nbytes)
        elif mem.dtype.kind in "biufcmMSUV":
            data = mem.tobytes()
        else:
            data = tuple(id(v) for v in mem.ravel(order="K"))
        return ("nd", obj.dtype.str, obj.shape, obj.flags.writeable, data)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_snapshot(v, depth + 1) for v in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((repr(k), _snapshot(v, depth + 1)) for k, v in obj.items()))
    if isinstance(obj, (int, float, str, bytes, bool, type(None), np.generic)):
        return ("val", repr(obj))
    return ("obj", id(obj))


def names_ok(exc, names):
    msg = str(exc)
    if not names:
        return True
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg)
               for n in names)


def evaluate(case):
    """Run a case: (outcome, detail). Outcomes: GOOD = matched | rejected; BAD = crash
    (unexpected exception type), wrong (result differs from the reference), refused (valid
    input rejected), accepted (invalid input accepted), unclear (the message does not name the
    argument), mutated (an input or the module changed), slow (over the case's time limit)."""
    before = _snapshot(case.inputs)
    t0 = time.perf_counter()
    exc = result = None
    try:
        with np.errstate(all="ignore"):
            result = case.run()
    except Exception as e:  # noqa: BLE001 - judged below
        exc = e
        tb = traceback.format_exc(limit=6)
    elapsed = time.perf_counter() - t0
    outcome, detail = None, ""
    if exc is not None:
        kind = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AssertionError):
            outcome, detail = "wrong", tb
        elif case.expect == OK:
            clean = isinstance(exc, (ValueError, TypeError, RuntimeError))
            outcome = "refused" if clean else "crash"
            detail = kind if clean else tb
        elif not isinstance(exc, case.errors):
            outcome, detail = "crash", tb
        elif isinstance(exc, MemoryError):
            outcome, detail = "rejected", kind      # only where a case allows it (huge data)
        elif not names_ok(exc, case.names):
            outcome, detail = "unclear", f"{kind} (should name one of {list(case.names)})"
        else:
            outcome, detail = "rejected", kind
    elif case.expect in (ERROR, MISUSE):
        outcome, detail = "accepted", f"returned {describe(result)}"
    else:
        try:
            with np.errstate(all="ignore"):
                expected = case.ref() if case.ref is not None else None
        except Exception:  # noqa: BLE001
            outcome, detail = "wrong", "the reference raised:\n" + traceback.format_exc(limit=6)
        else:
            try:
                if case.ref is not None:
                    case.compare(result, expected)
                outcome = "matched"
            except AssertionError as e:
                outcome, detail = "wrong", str(e)
    if outcome in GOOD and case.post is not None:
        try:
            case.post(exc if exc is not None else result)
        except Unclear as e:
            outcome, detail = "unclear", str(e)
        except AssertionError as e:
            outcome, detail = "wrong", f"after the call: {e}"
        except Exception:  # noqa: BLE001
            outcome, detail = "crash", "after the call:\n" + traceback.format_exc(limit=6)
    if outcome in GOOD and _snapshot(case.inputs) != before:
        outcome, detail = "mutated", "an input changed during the call"
    if outcome in GOOD and case.time_limit is not None and elapsed > case.time_limit:
        outcome, detail = "slow", f"took {elapsed:.1f} s (limit {case.time_limit} s)"
    return outcome, detail


def check(case):
    """pytest: the case must end matched or rejected."""
    outcome, detail = evaluate(case)
    assert outcome in GOOD, f"[{case.category}] {outcome}: {case.what}\n{detail}"


# ---------------------------------------------------------------------------------------------
# Comparison with the reference
# ---------------------------------------------------------------------------------------------
def close(actual, expected, dtype, what="result"):
    """actual: an ndarray of `dtype` with expected's shape, NaN and +-Inf where expected has
    them, and elsewhere within conftest's tolerance (atol relative to the largest value, so a
    relu network with large inputs is judged by its own scale)."""
    dtype = np.dtype(dtype)
    assert isinstance(actual, np.ndarray), f"{what}: expected an ndarray, got {describe(actual)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    e = np.asarray(expected, dtype=np.float64)
    a = actual.astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), \
        f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()} in one only"
    inf_e = np.isinf(e)
    assert np.array_equal(np.isinf(a), inf_e) and np.array_equal(a[inf_e], e[inf_e]), \
        f"{what}: infinities differ"
    fin = np.isfinite(e)
    if fin.any():
        t = TOL[dtype]
        scale = max(1.0, float(np.abs(e[fin]).max()))
        err = np.abs(a[fin] - e[fin])
        bound = t["atol"] * scale + t["rtol"] * np.abs(e[fin])
        if not np.all(err <= bound):
            i = int(np.argmax(err - bound))
            raise AssertionError(f"{what}: max error {err.max():.3g} (at {a[fin][i]!r} vs "
                                 f"{e[fin][i]!r}), tolerance {t} x scale {scale:.3g}")


def compare_tree(actual, expected, dtype=None, what="result"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), \
            f"{what}: keys {sorted(actual) if isinstance(actual, dict) else actual!r} != " \
            f"{sorted(expected)}"
        for k in expected:
            compare_tree(actual[k], expected[k], dtype, f"{what}[{k!r}]")
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), \
            f"{what}: {describe(actual)} != {describe(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            compare_tree(a, e, dtype, f"{what}[{i}]")
    elif expected is None:
        assert actual is None, f"{what}: expected None, got {describe(actual)}"
    else:
        close(actual, expected, dtype if dtype is not None else np.asarray(expected).dtype, what)


def comparer(dtype):
    return lambda a, e: compare_tree(a, e, dtype)


# ---------------------------------------------------------------------------------------------
# Descriptions (for failure reports)
# ---------------------------------------------------------------------------------------------
def describe(v):
    if isinstance(v, np.ndarray):
        flags = []
        if v.size > 1 and not v.flags.c_contiguous:
            flags.append("F" if v.flags.f_contiguous else "strided")
        if not v.flags.writeable:
            flags.append("read-only")
        if not v.flags.aligned:
            flags.append("unaligned")
        if not v.dtype.isnative:
            flags.append("byteswapped")
        return f"{v.dtype}{list(v.shape)}{'[' + ','.join(flags) + ']' if flags else ''}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(describe(x) for x in v[:4]) + (", ..." if len(v) > 4 else "")
        return f"{type(v).__name__}({inner})" if len(v) else f"{type(v).__name__}()"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {describe(x)}" for k, x in list(v.items())[:6]) + \
            (", ..." if len(v) > 6 else "") + "}"
    r = repr(v)
    return r if len(r) < 60 else r[:57] + "..."


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def pair(name, *args, seed=0, **kwargs):
    """(compiled, reference) instances of class `name` with the same weights."""
    mod = getattr(rnnc, name)(*args, seed=seed, **kwargs)
    ref = getattr(R, name)(*args, seed=seed + 1, **kwargs)
    ref.load_state_dict(mod.state_dict())
    return mod, ref


def params_of(mod):
    return [v for _, v in mod.named_parameters()]


def unchanged_module(mod):
    """A post-check: the module's parameters (names, bits) are what they were."""
    before = {k: v.copy() for k, v in mod.named_parameters()}

    def post(_):
        now = dict(mod.named_parameters())
        assert set(now) == set(before), "the parameter names changed"
        for k, v in before.items():
            assert now[k].dtype == v.dtype and now[k].tobytes() == v.tobytes(), \
                f"parameter {k} changed"
    return post


class Layer:
    """A drawn layer configuration, its compiled/reference pair and a valid call."""

    def __init__(self, c, modes=MODES, small=False, bidirectional=None, dtype=None,
                 unbatched=None, batch_first=None):
        self.rng = np.random.default_rng(c.seed())
        self.mode = mode = c.choice(modes)
        medium = not small and c.bool(0.12)
        if medium:      # big enough for the kernels' wide/row-split paths
            self.I, self.H = c.int(8, 40), c.int(32, 72)
        else:
            self.I, self.H = c.int(1, 6), c.int(1, 8)
        kw = dict(num_layers=c.choice((1, 1, 2, 3)) if not medium else c.int(1, 2),
                  bias=c.bool(0.8),
                  batch_first=c.bool(0.3) if batch_first is None else batch_first,
                  bidirectional=c.bool(0.4) if bidirectional is None else bidirectional,
                  dtype=(c.choice((F32, F64)) if dtype is None else dtype))
        if kw["num_layers"] > 1 and c.bool(0.25):
            kw["dropout"] = 0.25        # training only (backward cases)
        if mode == "RNN":
            kw["nonlinearity"] = c.choice(("tanh", "relu"))
        elif mode == "GRU":
            kw["reset_after"] = c.bool(0.7)
        elif self.H > 1 and c.bool(0.3):
            kw["proj_size"] = c.int(1, self.H - 1)
        self.kw = kw
        self.dtype = np.dtype(kw["dtype"])
        self.seed = c.seed() % 10**6
        self.mod, self.ref = pair(mode, self.I, self.H, seed=self.seed, **kw)
        if c.bool(0.2):
            self.mod.freeze()
        self.D = 2 if kw["bidirectional"] else 1
        self.L = kw["num_layers"]
        self.P = kw.get("proj_size") or self.H
        self.unbatched = c.bool(0.15) if unbatched is None else unbatched
        self.T = c.int(0, 7) if c.bool(0.9) else c.int(8, 20)
        self.B = 1 if self.unbatched else (c.int(8, 20) if medium and c.bool(0.6)
                                           else c.int(0, 5))

    def __repr__(self):
        return f"{self.mod!r}{' frozen' if self.mod.frozen else ''}"

    # shapes of a valid call
    def x_shape(self, T=None, B=None):
        T = self.T if T is None else T
        B = self.B if B is None else B
        if self.unbatched:
            return (T, self.I)
        return (B, T, self.I) if self.kw["batch_first"] else (T, B, self.I)

    def h_shape(self):
        lead = (self.D * self.L,) if self.unbatched else (self.D * self.L, self.B)
        return lead + (self.P,)

    def c_shape(self):
        lead = (self.D * self.L,) if self.unbatched else (self.D * self.L, self.B)
        return lead + (self.H,)

    def data(self, shape, scale=1.0, dtype=None):
        return (scale * self.rng.standard_normal(shape)).astype(dtype or self.dtype)

    def x(self, **kw):
        return self.data(self.x_shape(**kw))

    def hx(self, dtype=None):
        h = self.data(self.h_shape(), 0.8, dtype)
        if self.mode == "LSTM":
            return (h, self.data(self.c_shape(), 0.8, dtype))
        return h

    def lengths(self, c):
        if c.bool(0.5):
            return None
        n = [c.int(0, self.T) for _ in range(self.B)]
        if self.unbatched:
            return n[0] if c.bool() else n
        return np.array(n, dtype=c.choice((np.int64, np.int32, np.intp))) if c.bool() else n

    def call(self, c, category, what, x, hx=None, lengths=None, expect=OK, names=(),
             ref_x=None, ref_hx=None, ref_lengths=None, errors=None, time_limit=None):
        """A Case calling the layer with (x, hx, lengths) and, for a valid call, the reference
        with the canonical (ref_*) arguments (default: the same ones converted to arrays)."""
        mod, ref, dtype = self.mod, self.ref, self.dtype
        kwargs = {}
        if hx is not None or c.bool(0.3):
            kwargs["hx"] = hx
        if lengths is not None or c.bool(0.3):
            kwargs["lengths"] = lengths
        positional = c.bool(0.3)

        def run():
            if positional:
                return mod(x, kwargs.get("hx"), kwargs.get("lengths"))
            return mod(x, **kwargs)

        rx = ref_x
        rh = ref_hx
        if expect in (OK, EITHER):      # what the reference sees: made before the call
            rx = canon(x, dtype) if ref_x is None else ref_x
            rh = canon_hx(hx, dtype) if ref_hx is None else ref_hx
        rl = lengths if ref_lengths is None else ref_lengths
        desc = (f"{self!r}(x={describe(x)}, hx={describe(hx)}, lengths={describe(lengths)}) "
                f"-- {what}")
        x_again = self.x()

        def stable(result):
            # What a call returned is the caller's: the next call does not write into it.
            before = _snapshot(result)
            with np.errstate(all="ignore"):
                mod(x_again)
            assert _snapshot(result) == before, "the next call changed this call's result"

        return Case(category, desc, run, expect, ref=lambda: ref(rx, rh, rl), names=names,
                    inputs=[x, hx, lengths] + params_of(mod), errors=errors,
                    compare=comparer(dtype), time_limit=time_limit,
                    post=stable if expect in (OK, EITHER) else None)


def canon(v, dtype):
    """v as the reference should see it: a C-contiguous array of the module's dtype."""
    if v is None:
        return None
    try:
        return np.array(v, dtype=dtype, order="C", copy=True)
    except (ValueError, TypeError):     # not convertible: the reference must refuse it too
        return v


def canon_hx(hx, dtype):
    if isinstance(hx, (tuple, list)):
        return tuple(canon(h, dtype) for h in hx)
    return canon(hx, dtype)


def relayout(c, a, broadcast=True):
    """`a` in another memory layout (or a itself): the same values, except for the
    zero-stride broadcast, which repeats a's first row (the caller must compare with what it
    got, not with `a`)."""
    kinds = ("C", "F", "strided", "negative", "byteswap", "unaligned", "readonly",
             "transposed-view") + (("broadcast",) if broadcast else ())
    kind = c.choice(kinds)
    if kind == "C" or a.size == 0 and kind in ("unaligned", "broadcast"):
        return a, "C-contiguous"
    if kind == "F":
        return np.asfortranarray(a), "Fortran order"
    if kind == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view, "strided view"
    if kind == "negative":
        flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return flipped[(slice(None, None, -1),) * a.ndim], "negative strides"
    if kind == "byteswap":
        return a.astype(a.dtype.newbyteorder()), "byteswapped"
    if kind == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
        out[...] = a
        return out, "unaligned"
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b, "read-only"
    if kind == "broadcast":
        # A zero-stride view: every entry along axis 0 is the same row.
        b = np.broadcast_to(a[:1], a.shape)
        return b, "zero-stride broadcast"
    t = np.ascontiguousarray(np.moveaxis(a, 0, -1))
    return np.moveaxis(t, -1, 0), "transposed view"


def other_dims(c, shape, exclude=()):
    """A shape that differs from `shape` (a wrong one)."""
    while True:
        kind = c.choice(("grow", "shrink", "ndim+", "ndim-", "swap", "zero"))
        s = list(shape)
        if kind == "grow" and s:
            i = c.int(0, len(s) - 1)
            s[i] += c.int(1, 3)
        elif kind == "shrink" and s and any(d > 0 for d in s):
            i = c.choice([j for j, d in enumerate(s) if d > 0])
            s[i] -= 1
        elif kind == "ndim+":
            s.insert(c.int(0, len(s)), c.int(1, 2))
        elif kind == "ndim-" and s:
            s.pop(c.int(0, len(s) - 1))
        elif kind == "swap" and len(s) >= 2:
            s[0], s[-1] = s[-1], s[0]
        elif kind == "zero" and s:
            s[c.int(0, len(s) - 1)] = 0
        s = tuple(s)
        if s != tuple(shape) and s not in exclude:
            return s


# ---------------------------------------------------------------------------------------------
# Category builders: each returns one Case
# ---------------------------------------------------------------------------------------------
def build_shapes(c):
    lay = Layer(c)
    if c.bool(0.35):
        x = lay.x()
        return lay.call(c, "shapes", "valid shapes", x, lay.hx() if c.bool() else None,
                        lay.lengths(c))
    if c.bool(0.6):
        # Wrong feature count or wrong number of dimensions.
        shape = lay.x_shape()
        kind = c.choice(("features", "ndim"))
        if kind == "features":
            s = shape[:-1] + (lay.I + c.choice((-1, 1, 2, 5)),)
            s = s if s[-1] > 0 else shape[:-1] + (lay.I + 1,)
        else:
            s = c.choice(((), (lay.I,), (1,) + shape, (2, 1) + shape, shape + (1,)))
            if len(s) in (2, 3) and s[-1] == lay.I:
                s = s + (1,)
        x = lay.data(s)
        return lay.call(c, "shapes", f"input of shape {s}", x, expect=ERROR, names=("input",))
    # batch_first confusion: (B, T, I) given to a time-major layer is valid but means another
    # thing, so only the shape check is exercised when B != T and a hx fixes B.
    if lay.unbatched or lay.B == lay.T:
        x = lay.x()
        return lay.call(c, "shapes", "valid shapes", x)
    s = lay.x_shape()
    swapped = (s[1], s[0], s[2])
    x = lay.data(swapped)
    return lay.call(c, "shapes", "batch and time swapped, with hx for the real batch", x,
                    hx=lay.hx(), expect=ERROR, names=("hx", "h_0", "c_0"))


def build_hx(c):
    lay = Layer(c)
    x = lay.x()
    if c.bool(0.3):
        hx = lay.hx()
        if isinstance(hx, tuple) and c.bool(0.3):
            hx = list(hx)
        return lay.call(c, "hx", "valid hx", x, hx, lay.lengths(c))
    if lay.mode == "LSTM":
        h, cc = lay.hx()
        kind = c.choice(("h-shape", "c-shape", "triple", "single", "one", "empty", "none-in",
                         "dict", "swap"))
        if kind == "h-shape":
            hx, names = (lay.data(other_dims(c, h.shape)), cc), ("h_0",)
        elif kind == "c-shape":
            hx, names = (h, lay.data(other_dims(c, cc.shape))), ("c_0",)
        elif kind == "triple":
            # Known defect: the message said "got tuple"; it must give the received length.
            hx = (h, cc, cc)
            return _hx_count_case(c, lay, x, hx)
        elif kind == "single":
            hx, names = h, ("hx",)
        elif kind == "one":
            return _hx_count_case(c, lay, x, (h,))
        elif kind == "empty":
            return _hx_count_case(c, lay, x, ())
        elif kind == "none-in":
            hx, names = (None, cc) if c.bool() else (h, None), ("h_0", "c_0")
        elif kind == "dict":
            hx, names = {"h": h, "c": cc}, ("hx",)
        else:
            if h.shape == cc.shape:
                hx, names = (h, lay.data(other_dims(c, cc.shape))), ("c_0",)
            else:
                hx, names = (cc, h), ("h_0", "c_0")
        return lay.call(c, "hx", f"bad LSTM hx ({kind})", x, hx, expect=ERROR, names=names)
    h = lay.hx()
    kind = c.choice(("shape", "tuple", "unbatched-mismatch", "list-of-2"))
    if kind == "shape" or (kind == "unbatched-mismatch" and lay.B == 0):
        hx = lay.data(other_dims(c, h.shape))
    elif kind == "tuple":
        hx = (h, h)
    elif kind == "unbatched-mismatch":
        hx = h[:, 0] if not lay.unbatched else h[:, None]
        if lay.unbatched:
            hx = np.repeat(hx, 2, axis=1)
    else:
        hx = [h, h]
    return lay.call(c, "hx", f"bad hx ({kind})", x, hx, expect=ERROR, names=("hx", "h_0"))


def _hx_count_case(c, lay, x, hx):
    case = lay.call(c, "hx", f"LSTM hx as a {len(hx)}-tuple", x, hx, expect=ERROR,
                    names=("hx",))
    n = len(hx)

    def post(exc):
        if isinstance(exc, tuple):      # accepted: judged as such
            return
        if not re.search(rf"(?<![\w.]){n}(?![\w.])", str(exc)):
            raise Unclear(f"the message does not say what it got (a sequence of {n}): {exc}")
    case.post = post
    return case


REAL_DTYPES = ("float16", "float32", "float64", "longdouble", "int8", "int16", "int32", "int64",
               "uint8", "uint16", "uint32", "uint64")
BAD_DTYPES = ("complex64", "complex128", "bool", "object", "U3", "S3", "datetime64[s]",
              "timedelta64[s]", "V8")


def bad_array(shape, dtype, rng):
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind == "O":
        return rng.standard_normal(shape).astype(object)
    if dt.kind in "US":
        return np.full(shape, "1.5", dtype=dt)
    if dt.kind in "mM":
        return np.zeros(shape, dtype=dt)
    return np.zeros(shape, dtype=dt)


def build_dtypes(c):
    lay = Layer(c)
    target = c.choice(("x", "x", "hx", "lengths"))
    if target == "x":
        if c.bool(0.5):
            src = c.choice(REAL_DTYPES)
            x = (lay.x() * (4 if np.dtype(src).kind in "iu" else 1))
            if np.dtype(src).kind == "u":
                x = np.abs(x)
            x = x.astype(src)
            return lay.call(c, "dtypes", f"input of dtype {src} (converted)", x)
        x = bad_array(lay.x_shape(), c.choice(BAD_DTYPES), lay.rng)
        return lay.call(c, "dtypes", f"input of dtype {x.dtype}", x, expect=ERROR,
                        names=("input",))
    if target == "hx":
        x = lay.x()
        good = lay.hx()
        if c.bool(0.4):
            src = c.choice(REAL_DTYPES)
            if lay.mode == "LSTM":
                hx = tuple(np.asarray(h).astype(src) for h in good)
            else:
                hx = good.astype(src)
            return lay.call(c, "dtypes", f"hx of dtype {src} (converted)", x, hx)
        bad = c.choice(BAD_DTYPES)
        if lay.mode == "LSTM":
            which = c.int(0, 1)
            hx = list(good)
            hx[which] = bad_array(hx[which].shape, bad, lay.rng)
            hx = tuple(hx)
            names = ("h_0",) if which == 0 else ("c_0",)
        else:
            hx, names = bad_array(good.shape, bad, lay.rng), ("hx",)
        return lay.call(c, "dtypes", f"hx of dtype {bad}", x, hx, expect=ERROR, names=names)
    # lengths
    x = lay.x()
    if lay.unbatched:
        n = np.array([c.int(0, lay.T)])
    else:
        n = np.array([c.int(0, lay.T) for _ in range(lay.B)])
    kind = c.choice(("int", "whole-float", "frac-float", "bool", "complex", "str", "object",
                     "nan"))
    if kind == "int":
        lengths = n.astype(c.choice(("int8", "uint8", "int16", "uint32", "int64", "uint64")))
        return lay.call(c, "dtypes", f"lengths of dtype {lengths.dtype}", x, lengths=lengths,
                        ref_lengths=n)
    if kind == "whole-float":
        lengths = n.astype(c.choice(("float32", "float64")))
        case = lay.call(c, "dtypes", "whole-number float lengths", x, lengths=lengths,
                        ref_lengths=n)
        case.expect = EITHER
        case.names = ("lengths",)
        return case
    if kind == "frac-float":
        if n.size == 0:
            lengths = np.array([0.5])
        else:
            lengths = n + 0.5
        return lay.call(c, "dtypes", "fractional lengths", x, lengths=lengths, expect=ERROR,
                        names=("lengths",))
    if kind == "nan":
        lengths = np.full(max(1, n.size), np.nan)
        return lay.call(c, "dtypes", "NaN lengths", x, lengths=lengths, expect=ERROR,
                        names=("lengths",))
    lengths = {"bool": n.astype(bool) if n.size else np.array([True]),
               "complex": n.astype(complex) if n.size else np.array([1j]),
               "str": n.astype(str) if n.size else np.array(["1"]),
               "object": n.astype(object) if n.size else np.array([None])}[kind]
    if kind == "object" and n.size:
        lengths = np.array([int(v) for v in n] + [None], dtype=object)[:-1]
        lengths[0] = "1"
    return lay.call(c, "dtypes", f"lengths of dtype {lengths.dtype}", x, lengths=lengths,
                    expect=ERROR, names=("lengths",))


def build_layouts(c):
    lay = Layer(c)
    x0 = lay.x()
    x, how = relayout(c, x0)
    hx = None
    hdesc = ""
    if c.bool(0.5):
        h0 = lay.hx()
        if lay.mode == "LSTM":
            a, ha = relayout(c, h0[0])
            b, hb = relayout(c, h0[1])
            hx, hdesc = (a, b), f", h_0 {ha}, c_0 {hb}"
        else:
            hx, hd = relayout(c, h0)
            hdesc = f", hx {hd}"
    lengths = lay.lengths(c)
    if lengths is not None and not lay.unbatched and c.bool(0.3):
        n = np.asarray(lengths, dtype=np.int64)
        big = np.zeros(2 * n.size + 1, np.int64)
        big[1::2] = n
        lengths = big[1::2]          # a strided lengths array
    return lay.call(c, "layouts", f"input {how}{hdesc}", x, hx, lengths)


def special_values(c, a, dtype):
    """A copy of a with some entries replaced by NaN, +-Inf, subnormals, -0.0 or large values."""
    a = np.array(a, copy=True)
    if a.size == 0:
        return a, "empty"
    kind = c.choice(("nan", "inf", "-inf", "subnormal", "negzero", "large", "mixed"))
    fi = np.finfo(dtype)
    flat = a.reshape(-1)
    k = c.int(1, max(1, min(3, flat.size)))
    idx = np.random.default_rng(c.seed()).choice(flat.size, size=k, replace=False)
    if kind == "subnormal":
        flat[...] = flat * fi.smallest_subnormal * 7
    elif kind == "large":
        flat[...] = flat * (1e30 if np.dtype(dtype) == F64 else 1e15)
    else:
        vals = {"nan": [np.nan], "inf": [np.inf], "-inf": [-np.inf], "negzero": [-0.0],
                "mixed": [np.nan, np.inf, -np.inf, -0.0, fi.smallest_subnormal]}[kind]
        for j, i in enumerate(idx):
            flat[i] = vals[j % len(vals)]
    return a, kind


def build_specials(c):
    lay = Layer(c)
    where = c.choice(("x", "x", "hx", "weights", "padding"))
    x, hx, lengths = lay.x(), None, lay.lengths(c)
    what = ""
    ref_x = None
    if where == "x":
        x, what = special_values(c, x, lay.dtype)
    elif where == "hx":
        hx = lay.hx()
        if lay.mode == "LSTM":
            i = c.int(0, 1)
            hx = list(hx)
            hx[i], what = special_values(c, hx[i], lay.dtype)
            hx = tuple(hx)
        else:
            hx, what = special_values(c, hx, lay.dtype)
    elif where == "weights":
        sd = lay.mod.state_dict()
        key = c.choice(sorted(sd))
        sd[key], what = special_values(c, sd[key], lay.dtype)
        lay.mod.load_state_dict(sd)
        lay.ref.load_state_dict(sd)
        what = f"{key} {what}"
    else:
        # NaN in every padded position: must never reach an output or a state.
        if lay.unbatched or lay.B == 0:
            lengths = None
        else:
            n = np.array([c.int(0, lay.T) for _ in range(lay.B)])
            lengths = n
            tm = x if not lay.kw["batch_first"] else x.swapaxes(0, 1)
            ref_tm = np.array(tm, copy=True)
            for b, m in enumerate(n):
                tm[m:, b] = np.nan
                ref_tm[m:, b] = 0
            ref_x = ref_tm if not lay.kw["batch_first"] else ref_tm.swapaxes(0, 1)
            ref_x = np.ascontiguousarray(ref_x)
        what = "NaN padding"
    return lay.call(c, "specials", f"{where}: {what}", x, hx, lengths, ref_x=ref_x)


def build_empty(c):
    lay = Layer(c)
    kind = c.choice(("T0", "B0", "both", "lengths0"))
    if kind in ("T0", "both"):
        lay.T = 0
    if kind in ("B0", "both") and not lay.unbatched:
        lay.B = 0
    x = lay.x()
    lengths = None
    if kind == "lengths0" and not lay.unbatched:
        lengths = np.zeros(lay.B, dtype=np.int64) if c.bool() else [0] * lay.B
    elif c.bool(0.3) and not lay.unbatched:
        lengths = [] if lay.B == 0 else [0] * lay.B
    hx = lay.hx() if c.bool(0.5) else None
    return lay.call(c, "empty", kind, x, hx, lengths)


def build_lengths(c):
    lay = Layer(c, unbatched=False if c.bool(0.8) else None)
    x = lay.x()
    B, T = lay.B, lay.T
    if c.bool(0.4):
        if lay.unbatched:
            n = c.int(0, T)
            lengths = c.choice((n, [n], np.array([n]), np.int64(n)))
        else:
            n = [c.int(0, T) for _ in range(B)]
            lengths = c.choice((n, tuple(n), np.array(n), np.array(n, np.int32),
                                np.array(n, np.uint16)))
        return lay.call(c, "lengths", "valid lengths", x, lay.hx() if c.bool() else None,
                        lengths)
    kind = c.choice(("too-long", "negative", "count", "2d", "string", "none-in", "huge",
                     "float-frac", "bool-list", "nested"))
    n = [c.int(0, T) for _ in range(max(B, 1))]
    if kind == "too-long":
        n[c.int(0, len(n) - 1)] = T + c.int(1, 5)
    elif kind == "negative":
        n[c.int(0, len(n) - 1)] = -c.int(1, 5)
    elif kind == "count":
        n = n + [0] if c.bool() or len(n) <= 1 else n[:-1]
        if lay.unbatched:
            n = [0, 0]
    elif kind == "2d":
        n = [n, n]
    elif kind == "string":
        n = "abc"[:max(1, len(n))]
    elif kind == "none-in":
        n[0] = None
    elif kind == "huge":
        n[0] = c.choice((2**40, 2**63 - 1, 2**70))
    elif kind == "float-frac":
        n = [v + 0.25 for v in n]
    elif kind == "bool-list":
        n = [True] * len(n)
    else:
        n = [[v] for v in n]
        if len(n) == 1:
            n = [[n[0][0], 1]]
    if B == 0 and kind in ("too-long", "negative", "none-in", "huge", "float-frac",
                           "bool-list"):
        kind += " (B=0: count)"
    return lay.call(c, "lengths", f"bad lengths ({kind}): {n!r}", x, lengths=n, expect=ERROR,
                    names=("lengths",))


class ArrayLike:
    """An object NumPy converts through __array__ (as a torch tensor or an xarray would be)."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


def build_pytypes(c):
    what = c.choice(("x", "x", "hx", "sizes"))
    if what == "sizes":
        name = c.choice(MODES)
        cls = getattr(rnnc, name)
        good = c.choice((np.int64(3), np.int32(3), np.uint8(3), 3))
        arg = c.choice(("input_size", "hidden_size", "num_layers"))
        if c.bool(0.4):
            kwargs = dict(input_size=3, hidden_size=4, num_layers=1)
            kwargs[arg] = good

            def run():
                m = cls(**kwargs, seed=0)
                return m.state_dict()

            return Case("pytypes", f"{name}({arg}={good!r} of {type(good).__name__})", run,
                        EITHER, ref=None, names=(arg,))
        bad = c.choice((3.0, 2.5, "3", b"3", None, [3], (3,), np.array([3]), True,
                        np.float64(3), 3 + 0j, object()))
        kwargs = dict(input_size=3, hidden_size=4, num_layers=1)
        kwargs[arg] = bad
        return Case("pytypes", f"{name}({arg}={bad!r})", lambda: cls(**kwargs), ERROR,
                    names=(arg,))
    lay = Layer(c, small=True)
    if what == "x":
        x0 = lay.x()
        kind = c.choice(("list", "tuple", "list-of-arrays", "int-list", "arraylike",
                         "memoryview", "generator", "dict", "none", "str", "bytes", "set",
                         "ragged", "decimal", "bigint", "scalar"))
        expect, names = OK, ()
        if x0.size == 0 and kind in ("list", "tuple", "list-of-arrays", "int-list"):
            kind = "arraylike"      # an empty nested list has lost the shape
        if kind == "list":
            x = x0.tolist()
        elif kind == "tuple":
            x = to_tuples(x0)
        elif kind == "list-of-arrays":
            x = [row for row in x0]
        elif kind == "int-list":
            x0 = np.rint(4 * x0).astype(np.int64)
            x = x0.tolist()
        elif kind == "arraylike":
            x = ArrayLike(x0)
        elif kind == "memoryview":
            x = memoryview(np.ascontiguousarray(x0))
        else:
            expect, names = ERROR, ("input",)
            x = {"generator": lambda: (v for v in x0.tolist()), "dict": lambda: {"x": x0},
                 "none": lambda: None, "str": lambda: "x", "bytes": lambda: b"\x00\x01",
                 "set": lambda: {1.0, 2.0}, "ragged": lambda: [[1.0, 2.0], [3.0]],
                 "decimal": lambda: _decimal_list(x0), "bigint": lambda: [[2**70] * lay.I],
                 "scalar": lambda: 1.5}[kind]()
        ref_x = canon(x0, lay.dtype) if expect == OK else None
        return lay.call(c, "pytypes", f"input as {kind}", x, expect=expect, names=names,
                        ref_x=ref_x)
    x = lay.x()
    h = lay.hx()
    if c.bool(0.4):
        if lay.mode == "LSTM":
            hx = [h[0].tolist(), h[1].tolist()] if c.bool() and h[0].size else \
                (ArrayLike(h[0]), h[1])
            ref_hx = h
        else:
            hx, ref_hx = (h.tolist() if h.size else ArrayLike(h)), h
        return lay.call(c, "pytypes", "hx as Python lists / array-likes", x, hx, ref_hx=ref_hx)
    bad = c.choice(("str", "none-list", "ragged", "object", "int"))
    hx1 = {"str": "h", "none-list": [None], "ragged": [[1.0], [1.0, 2.0]], "object": object(),
           "int": 3}[bad]
    if lay.mode == "LSTM":
        hx, names = ((hx1, h[1]), ("h_0",)) if c.bool() else ((h[0], hx1), ("c_0",))
    else:
        hx, names = hx1, ("hx",)
    if bad == "int" and lay.mode != "LSTM":
        names = ("hx", "h_0")
    return lay.call(c, "pytypes", f"hx with a {bad}", x, hx, expect=ERROR, names=names)


def to_tuples(a):
    return tuple(to_tuples(v) for v in a) if a.ndim > 1 else tuple(a.tolist())


def _decimal_list(x0):
    from decimal import Decimal
    return [[Decimal(str(v)) for v in row] for row in x0.reshape(-1, x0.shape[-1]).tolist()]


# -- huge sizes --------------------------------------------------------------------------------
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")
HUGE_HEADROOM = 1 << 30        # address space allowed on top of what the process uses


def _vm_size():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def guarded(fn):
    """fn() with the address space capped a little above what the process uses, so that an
    unchecked huge allocation fails at once (MemoryError) instead of taking gigabytes. Under
    AddressSanitizer the cap comes from ASAN_OPTIONS (tools/asan.sh)."""
    def run():
        try:
            import resource
        except ImportError:
            resource = None
        vm = _vm_size()
        if resource is None or vm is None or UNDER_ASAN:
            return fn()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = vm + HUGE_HEADROOM
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        try:
            return fn()
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return run


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def build_huge(c):
    """Sizes beyond BLAS's 32-bit int or far beyond the machine's memory: a fast ValueError
    naming the size (or saying how much memory is needed), never an allocation."""
    kind = c.choice(("ctor-int", "ctor-int", "ctor-memory", "linear", "cell", "stream",
                     "input"))
    mem = _physical_memory()
    if kind == "ctor-int":
        name = c.choice(MODES)
        arg = c.choice(("input_size", "hidden_size", "num_layers", "proj_size"))
        if arg == "proj_size" and name != "LSTM":
            arg = "hidden_size"
        kwargs = dict(input_size=3, hidden_size=4, num_layers=1)
        kwargs[arg] = c.choice((2**31, 2**32 + 1, 2**40, 10**12, 2**63))
        names = (arg, "memory")
        if arg == "hidden_size" and c.bool(0.5):
            # fits BLAS's int alone but not G * hidden_size
            kwargs[arg] = 2**31 // GATES[name] + 1 if name != "RNN" else 2**31
        return Case("huge", f"{name}(**{kwargs})",
                    guarded(lambda: getattr(rnnc, name)(**kwargs)), ERROR, names=names,
                    time_limit=5.0)
    if kind == "ctor-memory":
        # Every dimension fits BLAS's int but the weights need far more than the machine has
        # (terabytes), so nothing may be allocated.
        name = c.choice(MODES)
        G = GATES[name]
        if c.bool():
            kwargs = dict(input_size=3, hidden_size=c.choice((2**20, 2**24, 2**26)))
            names = ("hidden_size", "memory")
        else:
            kwargs = dict(input_size=c.choice((2**30, 2**31 - 1)), hidden_size=2**10)
            names = ("input_size", "memory")
        H, I = kwargs["hidden_size"], kwargs["input_size"]
        need = 4 * G * H * (I + H)
        assert need > 4 * mem and G * H <= 2**31 - 1
        return Case("huge", f"{name}(**{kwargs}) (needs {need / 1e12:.1f} TB)",
                    guarded(lambda: getattr(rnnc, name)(**kwargs)), ERROR, names=names,
                    time_limit=5.0)
    if kind == "linear":
        if c.bool():
            arg = c.choice(("in_features", "out_features"))
            kwargs = dict(in_features=3, out_features=4)
            kwargs[arg] = c.choice((2**31, 2**40))
            names = (arg,)
        else:       # fits BLAS, needs 16 TB
            kwargs = dict(in_features=2**30, out_features=2**12)
            names = ("in_features", "out_features", "memory")
        return Case("huge", f"Linear(**{kwargs})", guarded(lambda: rnnc.Linear(**kwargs)),
                    ERROR, names=names, time_limit=5.0)
    if kind == "cell":
        name = c.choice(MODES) + "Cell"
        arg = c.choice(("input_size", "hidden_size"))
        kwargs = dict(input_size=3, hidden_size=4)
        kwargs[arg] = c.choice((2**31, 2**40))
        return Case("huge", f"{name}(**{kwargs})",
                    guarded(lambda: getattr(rnnc, name)(**kwargs)), ERROR,
                    names=(arg, "memory"), time_limit=5.0)
    if kind == "stream":
        m = rnnc.GRU(3, 4, seed=0)
        b = c.choice((2**31, 2**40, 2**62))
        return Case("huge", f"GRU(3, 4).stream(batch_size={b})",
                    guarded(lambda: m.stream(batch_size=b)), ERROR,
                    names=("batch_size", "memory"), time_limit=5.0)
    # An input whose data is one row seen through zero strides: huge, but costs nothing until
    # converted. Converting it (or allocating its output) must fail fast, not fill memory.
    name = c.choice(MODES)
    m = getattr(rnnc, name)(3, 4, seed=0)
    T, B = c.choice(((2**20, 2**14), (2**31, 1), (1, 2**31), (2**16, 2**16)))
    x = np.broadcast_to(np.zeros(3, np.float32), (T, B, 3))
    return Case("huge", f"{name}(3, 4)(broadcast x {x.shape})", guarded(lambda: m(x)), ERROR,
                names=("input", "memory"), errors=(ValueError, TypeError, MemoryError),
                inputs=[x], time_limit=10.0)


# -- backward ----------------------------------------------------------------------------------
def _set_rng_like(dst, src):
    """The reference draws the same dropout masks as the compiled module."""
    dst._rng = copy.deepcopy(src._rng)


def build_backward(c):
    target = c.choice(("layer", "layer", "cell", "linear", "sequential", "bidirectional"))
    if target == "layer":
        return _backward_layer(c)
    if target == "cell":
        return _backward_cell(c)
    if target == "linear":
        return _backward_linear(c)
    if target == "sequential":
        return _backward_sequential(c)
    return _backward_bidirectional(c)


def _misuse_sequence(c, mod, do_forward):
    """Put mod in a state where backward is misuse; returns its description."""
    kind = c.choice(("never", "eval-forward", "twice", "train-then-eval"))
    if kind == "eval-forward":
        mod.eval()
        do_forward()
    elif kind == "twice":
        mod.train()
        do_forward()
        return kind, True       # the first backward is made by the caller
    elif kind == "train-then-eval":
        mod.train()
        do_forward()
        mod.eval()
    return kind, False


def _backward_layer(c):
    lay = Layer(c, dtype=F64 if c.bool(0.7) else F32)
    mod, ref = lay.mod, lay.ref
    mod.unfreeze()
    x, hx, lengths = lay.x(), (lay.hx() if c.bool() else None), lay.lengths(c)
    kind = c.choice(("valid", "valid", "misuse", "grad-shape", "grad-type", "grad_h_n"))
    if kind == "misuse":
        how, first = _misuse_sequence(c, mod, lambda: mod(x, hx, lengths))
        if first:
            out, st_ = mod(x, hx, lengths)
            mod.backward(np.ones_like(out))
        g = np.zeros(1)
        return Case("backward", f"{lay!r}.backward after {how}", lambda: mod.backward(g),
                    MISUSE, names=("backward",), inputs=[g])
    mod.train()
    ref.train()
    _set_rng_like(ref, mod)
    out, state = mod(x, hx, lengths)
    g = lay.data(out.shape)
    hn = state[0] if lay.mode == "LSTM" else state
    gh = lay.data(hn.shape) if c.bool() else None
    if lay.mode == "LSTM":
        gc = lay.data(state[1].shape) if c.bool() else None
        grad_h_n = (gh, gc) if (gh is not None or gc is not None or c.bool()) else None
    else:
        grad_h_n = gh
    grads_before = {k: v.copy() for k, v in mod.grads.items()}

    def expected():
        ref(canon(x, lay.dtype), canon_hx(hx, lay.dtype), lengths)
        return ref.backward(g, grad_h_n)

    if kind == "valid":
        return Case("backward", f"{lay!r}: backward(grad {describe(g)}, grad_h_n="
                    f"{describe(grad_h_n)}) after forward(x {describe(x)}, hx "
                    f"{describe(hx)}, lengths {describe(lengths)})",
                    lambda: mod.backward(g, grad_h_n), OK, ref=expected,
                    inputs=[g, grad_h_n, x, hx] + params_of(mod), compare=comparer(lay.dtype))
    if kind == "grad-shape":
        bad_g, names = lay.data(other_dims(c, g.shape)), ("grad_output",)
        args = (bad_g, grad_h_n)
    elif kind == "grad-type":
        bad_g = bad_array(g.shape, c.choice(BAD_DTYPES), lay.rng)
        args, names = (bad_g, grad_h_n), ("grad_output",)
    else:
        if lay.mode == "LSTM" and c.bool():
            bad = c.choice(((lay.data(hn.shape),), "x", lay.data(hn.shape)))
            names = ("grad_h_n",)
        elif lay.mode == "LSTM":
            which = c.int(0, 1)
            shape = hn.shape if which == 0 else state[1].shape
            pair_ = [None, None]
            pair_[which] = lay.data(other_dims(c, shape))
            bad, names = tuple(pair_), ("grad_h_n", "grad_c_n")
        else:
            bad, names = lay.data(other_dims(c, hn.shape)), ("grad_h_n",)
        args = (g, bad)

    def post(_):
        # A rejected backward changes nothing: gradients as they were, and the forward's
        # buffers still there for a correct backward, which matches the reference.
        assert set(mod.grads) == set(grads_before) and all(
            np.array_equal(mod.grads[k], v) for k, v in grads_before.items()), \
            "a rejected backward changed the accumulated gradients"
        compare_tree(mod.backward(g, grad_h_n), expected(), lay.dtype, "backward after it")

    return Case("backward", f"{lay!r}.backward({describe(args[0])}, {describe(args[1])}) "
                f"-- {kind}", lambda: mod.backward(*args), ERROR, names=names,
                inputs=list(args) + [g] + params_of(mod), post=post)


def _backward_cell(c):
    name = c.choice(MODES) + "Cell"
    dtype = c.choice((F64, F64, F32))
    I, H = c.int(1, 6), c.int(1, 8)
    kw = {}
    if name == "RNNCell":
        kw["nonlinearity"] = c.choice(("tanh", "relu"))
    if name == "GRUCell":
        kw["reset_after"] = c.bool(0.7)
    mod, ref = pair(name, I, H, bias=c.bool(0.8), dtype=dtype, seed=c.seed() % 1000, **kw)
    rng = np.random.default_rng(c.seed())
    unb = c.bool(0.2)
    B = c.int(0, 4)
    x = rng.standard_normal((I,) if unb else (B, I)).astype(dtype)
    hshape = (H,) if unb else (B, H)
    hx = None
    if c.bool():
        hx = rng.standard_normal(hshape).astype(dtype)
        if name == "LSTMCell":
            hx = (hx, rng.standard_normal(hshape).astype(dtype))
    kind = c.choice(("valid", "valid", "misuse", "grad-shape", "grad_h_n"))
    if kind == "misuse":
        how, first = _misuse_sequence(c, mod, lambda: mod(x, hx))
        if first:
            out = mod(x, hx)
            mod.backward(np.ones_like(out[0] if isinstance(out, tuple) else out))
        g = np.zeros(1)
        return Case("backward", f"{mod!r}.backward after {how}", lambda: mod.backward(g),
                    MISUSE, names=("backward",), inputs=[g])
    mod.train()
    ref.train()
    mod(x, hx)
    g = rng.standard_normal(hshape).astype(dtype)
    if name == "LSTMCell" and c.bool():
        g = (g, rng.standard_normal(hshape).astype(dtype) if c.bool() else None)

    def expected():
        ref(x, hx)
        return ref.backward(g)

    if kind == "valid":
        return Case("backward", f"{mod!r}.backward({describe(g)}) after ({describe(x)}, "
                    f"{describe(hx)})", lambda: mod.backward(g), OK, ref=expected,
                    inputs=[g, x, hx] + params_of(mod), compare=comparer(dtype))
    if kind == "grad-shape":
        bad = rng.standard_normal(other_dims(c, hshape)).astype(dtype)
        args, names = (bad,), ("grad_output",)
    else:
        args, names = (g, rng.standard_normal(hshape)), ("grad_h_n",)

    def post(_):
        compare_tree(mod.backward(g), expected(), dtype, "backward after it")

    return Case("backward", f"{mod!r}.backward{tuple(describe(a) for a in args)} -- {kind}",
                lambda: mod.backward(*args), ERROR, names=names, inputs=list(args) + [g],
                post=post)


ACTIVATIONS = (None, "tanh", "relu", "sigmoid", "softmax")


def linear_expected_backward(mod, x, g):
    """Gradients of y = act(x W^T + b) in float64 (the Linear reference has no backward)."""
    W = mod.weight.astype(np.float64)
    x2 = np.asarray(x, np.float64).reshape(-1, W.shape[1])
    g2 = np.asarray(g, np.float64).reshape(-1, W.shape[0])
    pre = x2 @ W.T + (mod.bias.astype(np.float64) if "bias" in mod._params else 0)
    act = mod.activation
    if act == "tanh":
        y = np.tanh(pre)
        d = g2 * (1 - y * y)
    elif act == "relu":
        d = np.where(pre > 0, g2, 0.0)
    elif act == "sigmoid":
        y = 1 / (1 + np.exp(-pre))
        d = g2 * y * (1 - y)
    elif act == "softmax":
        e = np.exp(pre - pre.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
        d = y * (g2 - np.sum(g2 * y, axis=1, keepdims=True))
    else:
        d = g2
    grads = {"weight": d.T @ x2}
    if "bias" in mod._params:
        grads["bias"] = d.sum(axis=0)
    return (d @ W).reshape(np.shape(x)), None, grads


def _backward_linear(c):
    dtype = c.choice((F64, F64, F32))
    I, O = c.int(1, 6), c.int(1, 6)
    mod = rnnc.Linear(I, O, bias=c.bool(0.8), activation=c.choice(ACTIVATIONS), dtype=dtype,
                      seed=c.seed() % 1000)
    rng = np.random.default_rng(c.seed())
    lead = c.choice(((), (3,), (2, 3), (0, 2), (4, 1, 2)))
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    kind = c.choice(("valid", "valid", "misuse", "grad-shape"))
    if kind == "misuse":
        how, first = _misuse_sequence(c, mod, lambda: mod(x))
        if first:
            mod.backward(np.ones(lead + (O,), dtype))
        g = np.zeros(1)
        return Case("backward", f"{mod!r}.backward after {how}", lambda: mod.backward(g),
                    MISUSE, names=("backward",), inputs=[g])
    mod.train()
    mod(x)
    g = rng.standard_normal(lead + (O,)).astype(dtype)
    if kind == "valid":
        return Case("backward", f"{mod!r}.backward({describe(g)}) after {describe(x)}",
                    lambda: mod.backward(g), OK,
                    ref=lambda: linear_expected_backward(mod, x, g), inputs=[g, x],
                    compare=comparer(dtype))
    bad = rng.standard_normal(other_dims(c, g.shape)).astype(dtype)

    def post(_):
        compare_tree(mod.backward(g), linear_expected_backward(mod, x, g), dtype,
                     "backward after it")

    return Case("backward", f"{mod!r}.backward({describe(bad)})", lambda: mod.backward(bad),
                ERROR, names=("grad_output",), inputs=[bad, g], post=post)


def _recurrent_pair(c, I, dtype, bidirectional=False, batch_first=False):
    """A small recurrent layer and its reference twin."""
    name = c.choice(MODES)
    H = c.int(1, 6)
    kw = dict(num_layers=c.choice((1, 2)), bias=c.bool(0.8), dtype=dtype,
              bidirectional=bidirectional, batch_first=batch_first)
    if name == "GRU":
        kw["reset_after"] = c.bool(0.7)
    if name == "RNN":
        kw["nonlinearity"] = c.choice(("tanh", "relu"))
    mod, ref = pair(name, I, H, seed=c.seed() % 1000, **kw)
    return mod, ref, H * (2 if bidirectional else 1)


def _sequential_pair(c, dtype):
    I = c.int(1, 5)
    layers, refs = [], []
    width = I
    for _ in range(c.int(1, 3)):
        if c.bool(0.6):
            m, r, width = _recurrent_pair(c, width, dtype, bidirectional=c.bool(0.3))
        else:
            O = c.int(1, 5)
            m = rnnc.Linear(width, O, activation=c.choice(ACTIVATIONS), dtype=dtype,
                            seed=c.seed() % 1000)
            r = copy.deepcopy(m)     # Linear's backward is NumPy code shared by both
            width = O
        layers.append(m)
        refs.append(r)
    return rnnc.Sequential(*layers), rnnc.Sequential(*refs), I, width


def _backward_sequential(c):
    dtype = c.choice((F64, F64, F32))
    mod, ref, I, O = _sequential_pair(c, dtype)
    rng = np.random.default_rng(c.seed())
    T, B = c.int(0, 5), c.int(0, 3)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = [c.int(0, T) for _ in range(B)] if c.bool() else None
    kind = c.choice(("valid", "valid", "misuse", "grad-shape", "grad_h_n"))
    if kind == "misuse":
        how, first = _misuse_sequence(c, mod, lambda: mod(x, lengths))
        if first:
            mod.backward(np.ones((T, B, O), dtype))
        g = np.zeros(1)
        return Case("backward", f"Sequential.backward after {how}: {mod!r}",
                    lambda: mod.backward(g), MISUSE, names=("backward",), inputs=[g])
    mod.train()
    ref.train()
    mod(x, lengths)
    g = rng.standard_normal((T, B, O)).astype(dtype)

    def expected():
        ref(x, lengths)
        return ref.backward(g)

    if kind == "valid":
        return Case("backward", f"Sequential.backward({describe(g)}) after x {describe(x)}, "
                    f"lengths {lengths}: {mod!r}", lambda: mod.backward(g), OK, ref=expected,
                    inputs=[g, x], compare=comparer(dtype))
    if kind == "grad-shape":
        args, names = (rng.standard_normal(other_dims(c, g.shape)).astype(dtype),), \
            ("grad_output",)
    else:
        args, names = (g, np.zeros(2)), ("grad_h_n",)

    def post(_):
        compare_tree(mod.backward(g), expected(), dtype, "backward after it")

    return Case("backward", f"Sequential.backward{tuple(describe(a) for a in args)} -- "
                f"{kind}: {mod!r}", lambda: mod.backward(*args), ERROR, names=names,
                inputs=list(args) + [g, x], post=post)


def _bidirectional_pair(c, dtype, I=None, ref_layers=False):
    """(compiled Bidirectional, reference). ref_layers: the reference is rnnc.Bidirectional's
    own logic over reference layers (which have a backward); else rnnc.reference's textbook
    Bidirectional (flip, run, flip back: forward only)."""
    I = I or c.int(1, 5)
    m, r, _ = _recurrent_pair(c, I, dtype, batch_first=c.bool(0.3))
    merge_mode = c.choice(("concat", "sum", "mul", "ave", None))
    bi = rnnc.Bidirectional(m, merge_mode=merge_mode)
    if c.bool(0.2):
        bi.freeze()
    if ref_layers:
        rb = copy.deepcopy(r)
        ref = rnnc.Bidirectional(r, merge_mode=merge_mode, backward_layer=rb)
    else:
        ref = R.Bidirectional(r, merge_mode=merge_mode)
    ref.load_state_dict(bi.state_dict())
    return bi, ref, I


def _backward_bidirectional(c):
    dtype = c.choice((F64, F64, F32))
    bi, ref, I = _bidirectional_pair(c, dtype, ref_layers=True)
    bi.unfreeze()
    rng = np.random.default_rng(c.seed())
    T, B = c.int(0, 5), c.int(0, 3)
    x = rng.standard_normal((B, T, I) if bi.forward_layer.batch_first else (T, B, I))
    x = x.astype(dtype)
    lengths = [c.int(0, T) for _ in range(B)] if c.bool() else None
    kind = c.choice(("valid", "valid", "misuse", "grad-shape", "grad_h_n"))
    if kind == "misuse":
        how, first = _misuse_sequence(c, bi, lambda: bi(x, lengths=lengths))
        if first:
            out, _ = bi(x, lengths=lengths)
            bi.backward(tuple(np.ones_like(o) for o in out) if isinstance(out, tuple)
                        else np.ones_like(out))
        g = np.zeros(1)
        return Case("backward", f"{bi!r}.backward after {how}", lambda: bi.backward(g),
                    MISUSE, names=("backward",), inputs=[g])
    bi.train()
    ref.train()
    out, _ = bi(x, lengths=lengths)
    if isinstance(out, tuple):
        g = tuple(rng.standard_normal(o.shape).astype(dtype) for o in out)
    else:
        g = rng.standard_normal(out.shape).astype(dtype)

    def expected():
        ref(x, lengths=lengths)
        return ref.backward(g)

    if kind == "valid":
        return Case("backward", f"{bi!r}.backward({describe(g)}) after x {describe(x)}, "
                    f"lengths {lengths}", lambda: bi.backward(g), OK, ref=expected,
                    inputs=[g, x] + [p for _, p in bi.named_parameters()],
                    compare=comparer(dtype))
    if kind == "grad-shape":
        if isinstance(g, tuple):
            bad, names = g[0], ("grad_output",)
        else:
            bad, names = rng.standard_normal(other_dims(c, g.shape)).astype(dtype), \
                ("grad_output",)
        args = (bad,)
    else:
        args, names = (g, np.zeros(3)), ("grad_h_n",)

    def post(_):
        compare_tree(bi.backward(g), expected(), dtype, "backward after it")

    return Case("backward", f"{bi!r}.backward{tuple(describe(a) for a in args)} -- {kind}",
                lambda: bi.backward(*args), ERROR, names=names,
                inputs=list(args) + [g, x], post=post)


# -- load_state_dict ---------------------------------------------------------------------------
def key_names(k):
    """A key as a message may name it: whole ("0.weight_ih_l0") or as the layer's own key
    ("layer 0 (GRU): 'weight_ih_l0'")."""
    return (k, k.rsplit(".", 1)[-1])


def _any_module(c, dtype):
    """(compiled, reference, a function calling a module with a fixed valid input)."""
    rng = np.random.default_rng(c.seed())
    kind = c.choice(("layer", "layer", "cell", "linear", "sequential", "bidirectional"))
    if kind == "layer":
        mod, ref, _ = _recurrent_pair(c, 3, dtype, bidirectional=c.bool(0.3))
        if mod.mode == "LSTM" and c.bool(0.3):
            mod = rnnc.LSTM(3, 5, proj_size=2, dtype=dtype, seed=1)
            ref = R.LSTM(3, 5, proj_size=2, dtype=dtype, seed=2)
        x = rng.standard_normal((4, 2, 3)).astype(dtype)
        return mod, ref, lambda m: m(x)
    if kind == "cell":
        name = c.choice(MODES) + "Cell"
        mod, ref = pair(name, 3, 4, dtype=dtype, bias=c.bool(0.8), seed=1)
        x = rng.standard_normal((2, 3)).astype(dtype)
        return mod, ref, lambda m: m(x)
    if kind == "linear":
        mod = rnnc.Linear(3, 4, bias=c.bool(0.8), activation=c.choice(ACTIVATIONS),
                          dtype=dtype, seed=1)
        ref = R.Linear(3, 4, bias="bias" in mod._params, activation=mod.activation,
                       dtype=dtype, seed=2)
        x = rng.standard_normal((2, 3)).astype(dtype)
        return mod, ref, lambda m: m(x)
    if kind == "sequential":
        mod, ref, I, _ = _sequential_pair(c, dtype)
        x = rng.standard_normal((3, 2, I)).astype(dtype)
        return mod, ref, lambda m: m(x)
    bi, ref, I = _bidirectional_pair(c, dtype)
    x = rng.standard_normal((3, 2, I)).astype(dtype)
    return bi, ref, lambda m: m(x)


def build_state_dict(c):
    dtype = c.choice((F32, F64))
    mod, ref, call = _any_module(c, dtype)
    if c.bool(0.2) and hasattr(mod, "freeze"):
        mod.freeze()
    sd = mod.state_dict()
    keys = sorted(sd)
    rng = np.random.default_rng(c.seed())
    new = {k: (0.5 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in sd.items()}
    kind = c.choice(("valid", "valid", "valid-types", "non-strict", "shape", "missing",
                     "unexpected", "dtype", "not-mapping", "convert", "attribute"))
    live = [p for _, p in mod.named_parameters()]
    if kind in ("valid", "valid-types", "non-strict"):
        given = dict(new)
        if kind == "valid-types" and keys:
            k = c.choice(keys)
            conv = c.choice(("list", "int", "float16", "F", "readonly", "arraylike"))
            v = new[k]
            if conv == "list":
                given[k] = v.tolist()
            elif conv == "int":
                new[k] = np.rint(4 * v)
                given[k] = new[k].astype(np.int32)
            elif conv == "float16":
                new[k] = v.astype(np.float16).astype(np.float64)
                given[k] = v.astype(np.float16)
            elif conv == "F":
                given[k] = np.asfortranarray(v)
            elif conv == "readonly":
                given[k] = v.copy()
                given[k].flags.writeable = False
            else:
                given[k] = ArrayLike(v)
        if kind == "non-strict" and keys:
            drop = c.choice(keys)
            given.pop(drop)
            new[drop] = sd[drop]
            given["not_a_parameter"] = np.zeros(3)

        def run():
            mod.load_state_dict(given, strict=kind != "non-strict")
            # The module owns copies: editing what was passed in changes nothing.
            for v in given.values():
                if isinstance(v, np.ndarray) and v.flags.writeable and v.size:
                    before = v.copy()
                    v.reshape(-1)[0] += 1
                    v[...] = before
            return call(mod)

        def expected():
            ref.load_state_dict({k: np.array(v) for k, v in new.items()})
            return call(ref)

        return Case("state_dict", f"{type(mod).__name__}.load_state_dict({kind}: "
                    f"{describe(given)}) then a call", run, OK, ref=expected,
                    inputs=[given], compare=comparer(dtype))
    given, names = dict(new), ()
    if kind == "shape":
        k = c.choice(keys)
        given[k] = np.zeros(other_dims(c, sd[k].shape))
        names = key_names(k)
    elif kind == "missing":
        k = c.choice(keys)
        given.pop(k)
        names = key_names(k)
    elif kind == "unexpected":
        k = c.choice(("weight_ih_l9", "bias", "7.weight", "foo", 3, ("a",)))
        given[k] = np.zeros(2)
        names = (str(k), repr(k))
    elif kind == "dtype":
        k = c.choice(keys)
        given[k] = bad_array(sd[k].shape, c.choice(("complex128", "bool", "U3", "object")),
                             rng)
        names = key_names(k)
    elif kind == "not-mapping":
        given = c.choice(([("a", 1)], list(new.values()), None, "state", 3))
        names = ("state_dict",)
    elif kind == "convert":
        k = c.choice(keys)
        given[k] = c.choice(([[1.0], [1.0, 2.0]], object(), "abc", None))
        names = key_names(k)
    else:
        # attribute assignment goes through load_state_dict
        if not hasattr(mod, "_params"):
            k = c.choice(keys)
            given[k] = np.zeros(other_dims(c, sd[k].shape))
            names = key_names(k)
        else:
            k = c.choice(keys)
            bad = np.zeros(other_dims(c, sd[k].shape))
            return Case("state_dict", f"{mod!r}.{k} = {describe(bad)}",
                        lambda: setattr(mod, k, bad), ERROR, names=(k,),
                        inputs=[bad] + live, post=unchanged_module(mod))
    return Case("state_dict", f"{type(mod).__name__}.load_state_dict({kind}: "
                f"{describe(given)})", lambda: mod.load_state_dict(given), ERROR,
                names=names, inputs=[given] + live, post=unchanged_module(mod))


# -- constructors ------------------------------------------------------------------------------
BAD_VALUES = {
    "size": [0, -1, -(2**40), 2.5, 3.0, "3", None, True, [3], np.float64(3.0), 1j],
    "bool": ["no", "yes", "", 2, -1, None, [], [True], 0.5, "True", np.array([True, False])],
    "dropout": [-0.1, 1.5, "0.5", float("nan"), float("inf"), True, None, [0.1], 1j],
    "nonlinearity": ["sigmoid", "TANH", "", None, 1, ["tanh"], b"tanh"],
    # a layer's nonlinearity is any activation of the cell options (rnnc/_cell_options.py)
    "layer_nonlinearity": ["gelu", "", None, 1, ["tanh"], b"tanh", ("Relu", 1.0),
                           ("LeakyRelu", "x"), ("Elu", float("nan"))],
    "dtype": ["int32", np.int64, np.float16, "float16", np.complex64, object, "abc", bool,
              np.longdouble, 3],
    "seed": ["abc", -1, 1.5, [1, -2], object(), 2**200 * -1, b"1"],
    "merge_mode": ["cat", "", 1, "Concat", ["sum"]],
    "activation": ["gelu", "Tanh", 1, "", ["relu"]],
}


def build_constructors(c):
    kind = c.choice(("layer", "layer", "cell", "linear", "bidirectional", "sequential",
                     "threads"))
    if kind == "threads":
        bad = c.choice((0, -1, "2", 2.5, None, True, [2]))
        return Case("constructors", f"rnnc.set_num_threads({bad!r})",
                    lambda: rnnc.set_num_threads(bad), ERROR, names=("n",))
    if kind == "layer":
        name = c.choice(MODES)
        args = dict(input_size=c.int(1, 4), hidden_size=c.int(2, 5), num_layers=c.int(1, 2),
                    bias=c.bool(0.8), batch_first=c.bool(0.3), dropout=c.choice((0.0, 0.5)),
                    bidirectional=c.bool(0.3), dtype=c.choice((F32, F64, "float64",
                                                               np.float32, None)),
                    seed=c.choice((None, 0, 7, np.int64(3))))
        extra = {"RNN": ("nonlinearity",), "GRU": ("reset_after",),
                 "LSTM": ("proj_size",)}[name]
        for e in extra:
            args[e] = {"nonlinearity": c.choice(("tanh", "relu")), "reset_after": c.bool(),
                       "proj_size": c.choice((0, 1))}[e]
        kinds = {"input_size": "size", "hidden_size": "size", "num_layers": "size",
                 "bias": "bool", "batch_first": "bool", "bidirectional": "bool",
                 "dropout": "dropout", "dtype": "dtype", "seed": "seed",
                 "nonlinearity": "layer_nonlinearity", "reset_after": "bool"}
        cls = getattr(rnnc, name)
    elif kind == "cell":
        name = c.choice(MODES) + "Cell"
        args = dict(input_size=c.int(1, 4), hidden_size=c.int(1, 5), bias=c.bool(0.8),
                    dtype=c.choice((F32, F64)), seed=c.choice((None, 0, 5)))
        if name == "RNNCell":
            args["nonlinearity"] = c.choice(("tanh", "relu"))
        if name == "GRUCell":
            args["reset_after"] = c.bool()
        kinds = {"input_size": "size", "hidden_size": "size", "bias": "bool",
                 "dtype": "dtype", "seed": "seed", "nonlinearity": "nonlinearity",
                 "reset_after": "bool"}
        cls = getattr(rnnc, name)
    elif kind == "linear":
        name = "Linear"
        args = dict(in_features=c.int(1, 4), out_features=c.int(1, 4), bias=c.bool(0.8),
                    activation=c.choice(ACTIVATIONS), dtype=c.choice((F32, F64)),
                    seed=c.choice((None, 0, 5)))
        kinds = {"in_features": "size", "out_features": "size", "bias": "bool",
                 "activation": "activation", "dtype": "dtype", "seed": "seed"}
        cls = rnnc.Linear
    elif kind == "bidirectional":
        return _bad_bidirectional(c)
    else:
        return _bad_sequential(c)
    kinds = {k: v for k, v in kinds.items() if k in args}
    if c.bool(0.3):
        return _valid_construction(c, name, cls, args)
    if c.bool(0.1):
        bad_kw = c.choice(("foo", "hidden", "proj_size", "nonlinearity", "reset_after",
                           "batchfirst"))
        if bad_kw not in args and not _accepts(cls, bad_kw):
            kw = dict(args, **{bad_kw: 1})
            return Case("constructors", f"{name}(**{kw})", lambda: cls(**kw), ERROR,
                        names=(bad_kw,))
    arg = c.choice(sorted(kinds))
    bad = c.choice(BAD_VALUES[kinds[arg]])
    kw = dict(args)
    kw[arg] = bad
    return Case("constructors", f"{name}({arg}={bad!r}, others valid: {args})",
                lambda: cls(**kw), ERROR, names=(arg,))


def _accepts(cls, kw):
    import inspect
    return kw in inspect.signature(cls.__init__).parameters


def _valid_construction(c, name, cls, args):
    """A valid constructor call: the module works, its repr, copy and pickle too, and a call
    matches the reference built with the same arguments."""
    ref_cls = getattr(R, name)
    rng = np.random.default_rng(c.seed())
    dtype = np.dtype(args.get("dtype") or np.float32)
    I = args.get("input_size", args.get("in_features"))
    if name == "Linear":
        x = rng.standard_normal((3, I))
    elif name.endswith("Cell"):
        x = rng.standard_normal((2, I))
    else:
        x = rng.standard_normal((3, 2, I))

    def run():
        m = cls(**args)
        repr(m)
        m2 = pickle.loads(pickle.dumps(copy.deepcopy(m)))
        r = ref_cls(**dict(args, seed=1))
        r.load_state_dict(m2.state_dict())
        out = m2(x)
        return out, r

    def cmp(result, _):
        out, r = result
        compare_tree(out, r(x), dtype)

    return Case("constructors", f"{name}(**{args}) and a call", run, OK, ref=lambda: None,
                compare=cmp, inputs=[x])


def _bad_bidirectional(c):
    kind = c.choice(("layer", "bidirectional-layer", "merge_mode", "backward_layer", "valid"))
    m = rnnc.GRU(3, 4, seed=0)
    if kind == "layer":
        bad = c.choice((rnnc.GRUCell(3, 4), rnnc.Linear(3, 4), None, "GRU", rnnc.GRU,
                        rnnc.Sequential(rnnc.GRU(3, 4))))
        return Case("constructors", f"Bidirectional({describe(bad)})",
                    lambda: rnnc.Bidirectional(bad), ERROR, names=("layer",))
    if kind == "bidirectional-layer":
        return Case("constructors", "Bidirectional(GRU(3, 4, bidirectional=True))",
                    lambda: rnnc.Bidirectional(rnnc.GRU(3, 4, bidirectional=True)), ERROR,
                    names=("layer", "bidirectional"))
    if kind == "merge_mode":
        bad = c.choice(BAD_VALUES["merge_mode"])
        return Case("constructors", f"Bidirectional(GRU, merge_mode={bad!r})",
                    lambda: rnnc.Bidirectional(m, merge_mode=bad), ERROR,
                    names=("merge_mode",))
    if kind == "backward_layer":
        bad = c.choice((rnnc.GRU(3, 5), rnnc.LSTM(3, 4), rnnc.GRU(4, 4),
                        rnnc.GRU(3, 4, num_layers=2), rnnc.GRU(3, 4, dtype=np.float64),
                        "GRU", rnnc.GRUCell(3, 4)))
        return Case("constructors", f"Bidirectional(GRU(3, 4), backward_layer={bad!r})",
                    lambda: rnnc.Bidirectional(m, backward_layer=bad), ERROR,
                    names=("backward_layer",))
    dtype = c.choice((F32, F64))
    bi, ref, I = _bidirectional_pair(c, dtype)
    x = np.random.default_rng(c.seed()).standard_normal((3, 2, I))
    return Case("constructors", f"{bi!r}(x)", lambda: bi(x), OK, ref=lambda: ref(x),
                inputs=[x], compare=comparer(dtype))


def _bad_sequential(c):
    kind = c.choice(("cell", "object", "pair-not-last", "valid", "valid-empty"))
    if kind == "cell":
        i = c.int(0, 1)
        layers = [rnnc.GRU(3, 4), rnnc.Linear(4, 2)]
        layers.insert(i, c.choice((rnnc.GRUCell(3, 4), rnnc.LSTMCell(4, 4))))
        return Case("constructors", f"Sequential({layers})",
                    lambda: rnnc.Sequential(*layers), ERROR, names=("layer",))
    if kind == "object":
        bad = c.choice((3, "GRU", None, np.zeros(3), len))
        return Case("constructors", f"Sequential(GRU, {bad!r})",
                    lambda: rnnc.Sequential(rnnc.GRU(3, 4), bad), ERROR, names=("layer",))
    if kind == "pair-not-last":
        bi = rnnc.Bidirectional(rnnc.GRU(3, 4), merge_mode=None)
        return Case("constructors", "Sequential(Bidirectional(merge_mode=None), Linear)",
                    lambda: rnnc.Sequential(bi, rnnc.Linear(4, 2)), ERROR,
                    names=("layer", "merge_mode"))
    if kind == "valid-empty":
        x = np.ones((2, 1, 3), np.float32)
        return Case("constructors", "Sequential()(x) returns x", lambda: rnnc.Sequential()(x),
                    OK, ref=lambda: x, inputs=[x], compare=comparer(F32))
    dtype = c.choice((F32, F64))
    mod, ref, I, _ = _sequential_pair(c, dtype)
    x = np.random.default_rng(c.seed()).standard_normal((3, 2, I))
    return Case("constructors", f"{mod!r}(x)", lambda: mod(x), OK, ref=lambda: ref(x),
                inputs=[x], compare=comparer(dtype))


# -- streams -----------------------------------------------------------------------------------
def build_streams(c):
    lay = Layer(c, bidirectional=False if c.bool(0.9) else None, batch_first=False)
    mod, ref, dtype = lay.mod, lay.ref, lay.dtype
    if lay.kw["bidirectional"]:
        return Case("streams", f"{lay!r}.stream()", lambda: mod.stream(), ERROR,
                    names=("bidirectional",))
    kind = c.choice(("valid", "valid", "refresh", "batch_size", "step-x", "step-out",
                     "reset", "reject-midway"))
    if kind == "batch_size":
        bad = c.choice((-1, 2.5, "2", True, [2], np.float32(2)))
        return Case("streams", f"{lay!r}.stream(batch_size={bad!r})",
                    lambda: mod.stream(batch_size=bad), ERROR, names=("batch_size",))
    unb = lay.unbatched
    B = None if unb else lay.B
    T = max(lay.T, 1)
    x = lay.data((T, lay.I) if unb else (T, lay.B, lay.I))
    hx = lay.hx() if c.bool(0.5) else None
    s = mod.stream(batch_size=B)
    if hx is not None:
        s.reset(hx)

    def expected():
        return ref(x, hx)

    def stepped(outs):
        return (np.stack(outs) if outs else np.zeros((0,)), s.state)

    def cmp(result, exp):
        out, state = exp
        compare_tree(result, (out, state), dtype)

    if kind == "valid":
        use_out = c.bool(0.3)
        alias = c.bool(0.3)
        layout = c.bool(0.3)

        def run():
            outs = []
            for t in range(T):
                xt = x[t]
                if layout:
                    xt = relayout(c_fixed, xt, broadcast=False)[0]
                if use_out and alias and xt.shape[-1] == lay.P:
                    buf = np.array(xt, dtype=dtype, order="C")     # out is the input itself
                    r = s.step(buf, out=buf)
                    assert r is buf or np.shares_memory(r, buf), "step(out=) returned a copy"
                    outs.append(buf.copy())
                elif use_out:
                    buf = np.empty((lay.P,) if unb else (lay.B, lay.P), dtype)
                    r = s.step(xt, out=buf)
                    assert r is buf or np.shares_memory(r, buf), "step(out=) returned a copy"
                    outs.append(buf.copy())
                else:
                    outs.append(s.step(xt))
            return stepped(outs)

        c_fixed = RngChooser(c.seed())
        return Case("streams", f"{lay!r}.stream({B}) stepped through {describe(x)}, hx "
                    f"{describe(hx)}{' out=' if use_out else ''}"
                    f"{' (layouts)' if layout else ''}", run, OK, ref=expected,
                    inputs=[x, hx] + params_of(mod), compare=cmp)
    if kind == "refresh":
        # New weights loaded into the layer midway: unseen until refresh(), which keeps the
        # state; the rest of the steps run on the new weights.
        k = c.int(0, T)
        # New weights at the layer's own initial scale (U(-1/sqrt(H), 1/sqrt(H)), PyTorch's):
        # larger ones make a chaotic network (0.5 * N(0, 1) at H = 66 grows an error ~4x a
        # step), which tests float32's conditioning, not refresh().
        bound = 1 / np.sqrt(mod.hidden_size)
        sd = {n: lay.rng.uniform(-bound, bound, v.shape).astype(dtype)
              for n, v in mod.state_dict().items()}
        ref_new = copy.deepcopy(ref).load_state_dict(sd)
        pre = c.int(0, k)       # steps made after the load but before refresh: old weights

        def run():
            outs = [s.step(x[t]) for t in range(pre)]
            mod.load_state_dict(sd)
            outs += [s.step(x[t]) for t in range(pre, k)]
            s.refresh()
            outs += [s.step(x[t]) for t in range(k, T)]
            return stepped(outs)

        def expected_refresh():
            out1, st1 = ref(x[:k], hx) if k else (None, hx)
            out2, st2 = ref_new(x[k:], st1) if k < T else (None, st1)
            parts = [o for o in (out1, out2) if o is not None]
            return np.concatenate(parts), st2

        return Case("streams", f"{lay!r}.stream({B}): {pre} steps, load_state_dict, "
                    f"{k - pre} steps, refresh(), {T - k} steps through {describe(x)}, hx "
                    f"{describe(hx)}", run, OK, ref=expected_refresh, inputs=[x, hx, sd],
                    compare=cmp)
    if kind == "reset":
        good = lay.hx()
        # reset takes what the layer's hx takes: for LSTM the pair (h_0, c_0).
        if lay.mode == "LSTM":
            h0, c0 = good
            which = "h_0"
            sub = c.choice(("h0", "c0", "c0-dtype", "one-array"))
            if sub == "h0":
                args = ((lay.data(other_dims(c, h0.shape)), c0),)
            elif sub == "c0":
                args, which = ((h0, lay.data(other_dims(c, c0.shape))),), "c_0"
            elif sub == "c0-dtype":
                args, which = ((h0, bad_array(c0.shape, "complex128", lay.rng)),), "c_0"
            else:
                args, which = (h0,), "hx"
        else:
            which = "hx"
            sub = c.choice(("h0", "c0", "dtype"))
            if sub == "h0":
                args = (lay.data(other_dims(c, good.shape)),)
            elif sub == "c0":
                args, which = (good, good), "c0"
            else:
                args = (bad_array(good.shape, c.choice(BAD_DTYPES), lay.rng),)
        state_before = s.state

        def post(_):
            compare_tree(s.state, state_before, dtype, "stream state after a rejected reset")

        return Case("streams", f"{lay!r} stream.reset{tuple(describe(a) for a in args)}",
                    lambda: s.reset(*args), ERROR, names=(which,), inputs=list(args),
                    post=post)
    # A bad step (wrong dtype, shape, type, out) must raise and leave the state as it was:
    # stepping on with good input still gives the reference's result.
    xt_good = x[0]
    if kind in ("step-x", "reject-midway"):
        # Other real dtypes and lists are converted (rnnc's dtype policy), not refused.
        sub = c.choice(("shape", "bad-dtype", "ndim"))
        if sub == "shape":
            bad = lay.data(other_dims(c, xt_good.shape))
        elif sub == "bad-dtype":
            bad = bad_array(xt_good.shape, c.choice(BAD_DTYPES), lay.rng)
        else:
            bad = xt_good[None]
        args, names = (bad,), ("x",)
    else:
        oshape = (lay.P,) if unb else (lay.B, lay.P)
        sub = c.choice(("shape", "dtype", "readonly", "list", "strided"))
        if sub == "shape":
            out = np.empty(other_dims(c, oshape), dtype)
        elif sub == "dtype":
            out = np.empty(oshape, F64 if dtype == F32 else F32)
        elif sub == "readonly":
            out = np.empty(oshape, dtype)
            out.flags.writeable = False
        elif sub == "list":
            out = [0.0] * lay.P
        else:
            out = np.empty(oshape + (2,), dtype)[..., 0]
            if out.flags.c_contiguous:      # a single element: any view is contiguous
                out = np.empty(other_dims(c, oshape), dtype)
        args, names = (xt_good, out), ("out",)
    k = c.int(0, T - 1) if kind == "reject-midway" else 0

    def run():
        outs = [s.step(x[t]) for t in range(k)]
        state_before = s.state
        try:
            s.step(*args)
        except (ValueError, TypeError) as exc:
            compare_tree(s.state, state_before, dtype, "stream state after a rejected step")
            outs += [s.step(x[t]) for t in range(k, T)]
            # the stepped outputs match the reference: the bad step changed nothing
            compare_tree(stepped(outs), expected(), dtype, "steps after a rejected step")
            raise exc
        return None

    return Case("streams", f"{lay!r}.stream({B}).step{tuple(describe(a) for a in args)} "
                f"after {k} steps -- {kind}/{sub}", run, ERROR, names=names,
                inputs=list(args) + [x])


# -- cells -------------------------------------------------------------------------------------
def build_cells(c):
    name = c.choice(MODES) + "Cell"
    dtype = c.choice((F32, F64))
    medium = c.bool(0.1)
    I, H = (c.int(8, 40), c.int(32, 64)) if medium else (c.int(1, 6), c.int(1, 8))
    kw = dict(bias=c.bool(0.8), dtype=dtype)
    if name == "RNNCell":
        kw["nonlinearity"] = c.choice(("tanh", "relu"))
    if name == "GRUCell":
        kw["reset_after"] = c.bool(0.7)
    mod, ref = pair(name, I, H, seed=c.seed() % 1000, **kw)
    if c.bool(0.2):
        mod.freeze()
    rng = np.random.default_rng(c.seed())
    unb = c.bool(0.2)
    B = c.int(8, 20) if medium else c.int(0, 5)
    xs = (I,) if unb else (B, I)
    hs = (H,) if unb else (B, H)
    x = rng.standard_normal(xs).astype(dtype)
    h = rng.standard_normal(hs).astype(dtype)
    cc = rng.standard_normal(hs).astype(dtype)
    lstm = name == "LSTMCell"
    kind = c.choice(("valid", "valid", "valid-odd", "specials", "x-shape", "x-dtype",
                     "hx-shape", "hx-struct", "hx-dtype"))
    hx = ((h, cc) if lstm else h) if c.bool(0.6) else None

    def case(what, x_, hx_, expect=OK, names=(), rx=None, rh=None):
        if expect == OK:
            rx = canon(x_, dtype) if rx is None else rx
            rh = canon_hx(hx_, dtype) if rh is None else rh
        use_kw = c.bool(0.3)

        def run():
            return mod(x_, hx=hx_) if use_kw else (mod(x_, hx_) if hx_ is not None
                                                    else mod(x_))
        return Case("cells", f"{mod!r}{' frozen' if mod.frozen else ''}({describe(x_)}, "
                    f"{describe(hx_)}) -- {what}", run, expect,
                    ref=lambda: ref(rx, rh), names=names, inputs=[x_, hx_] + params_of(mod),
                    compare=comparer(dtype))

    if kind == "valid":
        return case("valid", x, hx)
    if kind == "valid-odd":
        xo, how = relayout(c, x)
        if c.bool(0.3):
            xo = xo.astype(c.choice(REAL_DTYPES)) if c.bool() or not xo.size else xo.tolist()
        rx = canon(xo, dtype)
        return case(f"input {how}", xo, hx, rx=rx)
    if kind == "specials":
        xs_, what = special_values(c, x, dtype)
        return case(f"input {what}", xs_, hx)
    if kind == "x-shape":
        bad = np.asarray(rng.standard_normal(
            c.choice(((), (I + 1,), (B, I + 1), (1, B, I), (B, I, 1)) if not unb
                     else ((), (I + 1,), (1, 1, I)))), dtype=dtype)
        return case("bad input shape", bad, hx, ERROR, ("input",))
    if kind == "x-dtype":
        return case("bad input dtype", bad_array(xs, c.choice(BAD_DTYPES), rng), hx, ERROR,
                    ("input",))
    if kind == "hx-shape":
        if lstm:
            which = c.int(0, 1)
            parts = [h, cc]
            parts[which] = rng.standard_normal(other_dims(c, hs)).astype(dtype)
            return case("bad h/c shape", x, tuple(parts), ERROR, (("h", "hx"), ("c", "hx"))
                        [which])
        return case("bad hx shape", x, rng.standard_normal(other_dims(c, hs)).astype(dtype),
                    ERROR, ("hx",))
    if kind == "hx-struct":
        if lstm:
            bad = c.choice(((h,), (h, cc, cc), h, [h], {"h": h}))
            cs = case(f"LSTMCell hx {describe(bad)}", x, bad, ERROR, ("hx",))
            if isinstance(bad, (tuple, list)):
                n = len(bad)

                def post(exc):
                    if not re.search(rf"(?<![\w.]){n}(?![\w.])", str(exc)):
                        raise Unclear("the message does not say what it got (a sequence of "
                                      f"{n}): {exc}")
                cs.post = post
            return cs
        return case("hx as a pair", x, (h, h), ERROR, ("hx",))
    bad = bad_array(hs, c.choice(BAD_DTYPES), rng)
    if lstm:
        return case("bad c dtype", x, (h, bad), ERROR, ("c", "hx"))
    return case("bad hx dtype", x, bad, ERROR, ("hx",))


# -- Linear, Sequential, Bidirectional -----------------------------------------------------------
def build_wrappers(c):
    target = c.choice(("linear", "sequential", "bidirectional", "bidirectional"))
    dtype = c.choice((F32, F64))
    rng = np.random.default_rng(c.seed())
    if target == "linear":
        I, O = c.int(1, 6), c.int(1, 6)
        act = c.choice(ACTIVATIONS)
        mod = rnnc.Linear(I, O, bias=c.bool(0.8), activation=act, dtype=dtype,
                          seed=c.seed() % 1000)
        ref = R.Linear(I, O, bias="bias" in mod._params, activation=act, dtype=dtype, seed=1)
        ref.load_state_dict(mod.state_dict())
        if c.bool(0.2):
            mod.freeze()
        lead = c.choice(((), (3,), (2, 3), (0,), (2, 0, 3), (1, 1, 1, 2)))
        x = rng.standard_normal(lead + (I,)).astype(dtype)
        kind = c.choice(("valid", "valid", "odd", "specials", "features", "scalar", "dtype"))
        expect, names, rx = OK, (), None
        if kind == "odd":
            x, how = relayout(c, x)
            rx = canon(x, dtype)
            kind = how
        elif kind == "specials":
            x, how = special_values(c, x, dtype)
            kind = how
        elif kind == "features":
            x = rng.standard_normal(lead + (I + c.int(1, 3),)).astype(dtype)
            expect, names = ERROR, ("input", "in_features")
        elif kind == "scalar":
            x = np.float64(1.0) if c.bool() else 1.0
            expect, names = ERROR, ("input", "in_features")
        elif kind == "dtype":
            x = bad_array(x.shape, c.choice(BAD_DTYPES), rng)
            expect, names = ERROR, ("input",)
        rx = canon(x, dtype) if rx is None and expect == OK else rx
        return Case("wrappers", f"{mod!r}({describe(x)}) -- {kind}", lambda: mod(x), expect,
                    ref=lambda: ref(rx), names=names, inputs=[x] + params_of(mod),
                    compare=comparer(dtype))
    if target == "sequential":
        mod, ref, I, _ = _sequential_pair(c, dtype)
        T, B = c.int(0, 5), c.int(0, 4)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = [c.int(0, T) for _ in range(B)] if c.bool() else None
        kind = c.choice(("valid", "valid", "features", "lengths"))
        if kind == "valid":
            x2, how = relayout(c, x)
            return Case("wrappers", f"{mod!r}(x {describe(x2)} {how}, lengths={lengths})",
                        lambda: mod(x2, lengths=lengths), OK,
                        ref=lambda: ref(canon(x2, dtype), lengths=lengths),
                        inputs=[x2, lengths], compare=comparer(dtype))
        if kind == "features":
            bad = rng.standard_normal((T, B, I + 1)).astype(dtype)
            return Case("wrappers", f"{mod!r}(x {describe(bad)})", lambda: mod(bad), ERROR,
                        names=("input",), inputs=[bad])
        has_rec = any(isinstance(m, (rnnc.RNN, rnnc.GRU, rnnc.LSTM, rnnc.Bidirectional))
                      for m in mod)
        if not has_rec:
            return Case("wrappers", f"{mod!r}(x {describe(x)})", lambda: mod(x), OK,
                        ref=lambda: ref(x), inputs=[x], compare=comparer(dtype))
        bad = [T + 1] * B if B else [1]
        return Case("wrappers", f"{mod!r}(x {describe(x)}, lengths={bad})",
                    lambda: mod(x, lengths=bad), ERROR, names=("lengths",), inputs=[x, bad])
    # Bidirectional
    bi, ref, I = _bidirectional_pair(c, dtype)
    fl = bi.forward_layer
    unb = c.bool(0.15)
    T, B = c.int(0, 6), (1 if unb else c.int(0, 4))
    shape = (T, I) if unb else ((B, T, I) if fl.batch_first else (T, B, I))
    x = rng.standard_normal(shape).astype(dtype)
    DL = fl.num_layers
    lead = (DL,) if unb else (DL, B)

    def state():
        h = rng.standard_normal(lead + (fl.hidden_size,)).astype(dtype)
        return (h, rng.standard_normal(lead + (fl.hidden_size,)).astype(dtype)) \
            if fl.mode == "LSTM" else h

    kind = c.choice(("valid", "valid", "hx-struct", "hx-shape", "lengths", "features"))
    lengths = None
    if not unb and c.bool():
        lengths = [c.int(0, T) for _ in range(B)]
    if kind == "valid":
        hx = (state(), state()) if c.bool() else None
        x2, how = relayout(c, x)
        return Case("wrappers", f"{bi!r}(x {describe(x2)} {how}, hx {describe(hx)}, lengths="
                    f"{lengths})", lambda: bi(x2, hx, lengths), OK,
                    ref=lambda: ref(canon(x2, dtype), hx, lengths),
                    inputs=[x2, hx, lengths] + [p for _, p in bi.named_parameters()],
                    compare=comparer(dtype))
    if kind == "hx-struct":
        bad = c.choice((state(), (state(),), (state(), state(), state())))
        if fl.mode == "LSTM" and isinstance(bad, tuple) and len(bad) == 2:
            bad = (state(),)
        return Case("wrappers", f"{bi!r}(x, hx={describe(bad)})", lambda: bi(x, bad), ERROR,
                    names=("hx",), inputs=[x, bad])
    if kind == "hx-shape":
        good = state()
        if fl.mode == "LSTM":
            bad_h = (rng.standard_normal(other_dims(c, good[0].shape)).astype(dtype), good[1])
            names = ("h_0",)
        else:
            bad_h = rng.standard_normal(other_dims(c, good.shape)).astype(dtype)
            names = ("hx",)
        hx = (good, bad_h) if c.bool() else (bad_h, good)
        return Case("wrappers", f"{bi!r}(x, hx={describe(hx)})", lambda: bi(x, hx), ERROR,
                    names=names, inputs=[x, hx])
    if kind == "lengths":
        bad = [T + 1] * max(B, 1) if c.bool() else [0] * (B + 1)
        return Case("wrappers", f"{bi!r}(x {describe(x)}, lengths={bad})",
                    lambda: bi(x, lengths=bad), ERROR, names=("lengths",), inputs=[x, bad])
    bad = rng.standard_normal(x.shape[:-1] + (I + 1,)).astype(dtype)
    return Case("wrappers", f"{bi!r}(x {describe(bad)})", lambda: bi(bad), ERROR,
                names=("input",), inputs=[bad])


BUILDERS = {
    "shapes": build_shapes, "hx": build_hx, "dtypes": build_dtypes, "layouts": build_layouts,
    "specials": build_specials, "empty": build_empty, "lengths": build_lengths,
    "pytypes": build_pytypes, "huge": build_huge, "backward": build_backward,
    "state_dict": build_state_dict, "constructors": build_constructors,
    "streams": build_streams, "cells": build_cells, "wrappers": build_wrappers,
}
assert tuple(BUILDERS) == CATEGORIES


def build(category, chooser):
    with np.errstate(all="ignore"):
        return BUILDERS[category](chooser)


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------
if pytest is not None:
    settings.register_profile(
        "rnnc-fuzz", max_examples=150, derandomize=True, database=None, deadline=None,
        print_blob=False, phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much])
    settings.register_profile(
        "rnnc-fuzz-slow", parent=settings.get_profile("rnnc-fuzz"), max_examples=1000,
        derandomize=False, phases=(Phase.explicit, Phase.generate, Phase.shrink))

    @pytest.mark.parametrize("category", CATEGORIES)
    @settings(settings.get_profile("rnnc-fuzz"))
    @given(data=st.data())
    def test_fuzz(category, data):
        check(build(category, HypChooser(data)))

    @pytest.mark.slow
    @pytest.mark.parametrize("category", CATEGORIES)
    @settings(settings.get_profile("rnnc-fuzz-slow"))
    @given(data=st.data())
    def test_fuzz_large(category, data):
        check(build(category, HypChooser(data)))

    # The known defects of the bad-input campaign, one test each, so a report can name them.
    @pytest.mark.parametrize("arg", ["bias", "batch_first", "bidirectional", "reset_after"])
    @pytest.mark.parametrize("value", ["no", "", 2, None])
    def test_flags_refuse_non_bools(arg, value):
        cls = rnnc.GRU if arg == "reset_after" else rnnc.LSTM
        with pytest.raises(TypeError, match=arg):
            cls(3, 4, **{arg: value})

    @pytest.mark.parametrize("seed, exc", [("abc", TypeError), (-1, ValueError),
                                           (1.5, TypeError)])
    def test_seed_errors_name_seed(seed, exc):
        with pytest.raises(exc, match="seed"):
            rnnc.GRU(3, 4, seed=seed)

    def test_lstm_hx_triple_says_what_it_got():
        m = rnnc.LSTM(3, 4)
        h = np.zeros((1, 2, 4), np.float32)
        with pytest.raises(TypeError, match=r"hx") as info:
            m(np.zeros((5, 2, 3), np.float32), (h, h, h))
        assert re.search(r"(?<![\w.])3(?![\w.])", str(info.value)), str(info.value)

    @pytest.mark.parametrize("key", [3, ("a",), None])
    @pytest.mark.parametrize("kind", ["layer", "Sequential", "Bidirectional"])
    def test_load_state_dict_non_string_key(kind, key):
        """A key that is not a string is an unexpected key like any other (found by the
        campaign: Bidirectional raised AttributeError from key.partition)."""
        m = {"layer": lambda: rnnc.GRU(3, 4),
             "Sequential": lambda: rnnc.Sequential(rnnc.GRU(3, 4)),
             "Bidirectional": lambda: rnnc.Bidirectional(rnnc.GRU(3, 4))}[kind]()
        sd = m.state_dict()
        sd[key] = np.zeros(2)
        with pytest.raises(ValueError, match=re.escape(repr(key))):
            m.load_state_dict(sd)

    @pytest.mark.parametrize("mode", MODES)
    def test_training_forward_with_every_length_zero(mode):
        """Found by the campaign (backward category): a training forward whose sequences all
        have length 0 raised "chunk_steps must be >= 1, got 0"; it gives zeros, as in
        inference, and a backward of zeros."""
        mod, ref = pair(mode, 3, 4, dtype=np.float64)
        x = np.ones((5, 2, 3))
        mod.train()
        ref.train()
        compare_tree(mod(x, lengths=[0, 0]), ref(x, lengths=[0, 0]), F64)
        g = np.ones((5, 2, 4))
        compare_tree(mod.backward(g), ref.backward(g), F64)

    def test_guard_makes_a_huge_allocation_fail_fast():
        """The guard huge cases run under: an allocation of 64 GB fails at once."""
        if UNDER_ASAN or _vm_size() is None:
            pytest.skip("no RLIMIT_AS guard here")
        t0 = time.perf_counter()
        with pytest.raises(MemoryError):
            guarded(lambda: np.ones(8 << 30))()
        assert time.perf_counter() - t0 < 5
        np.ones(1 << 20)        # the limit is lifted again


# ---------------------------------------------------------------------------------------------
# The campaign: python tests/test_fuzz.py --calls N
# ---------------------------------------------------------------------------------------------
def case_seed(base, i):
    return (base * 1_000_003 + i * 7919) % 2**63


def run_one(category, seed):
    try:
        case = build(category, RngChooser(seed))
    except (ValueError, TypeError, RuntimeError):
        # The builders make only valid calls to set a case up (construct, train, forward
        # before a backward): a clean error there is valid input refused.
        return "refused", "while setting up the case:\n" + traceback.format_exc(limit=8), ""
    except Exception:  # noqa: BLE001 - a crash in a set-up call, or a builder bug
        return "crash", "while setting up the case:\n" + traceback.format_exc(limit=8), ""
    outcome, detail = evaluate(case)
    return outcome, detail, case.what


def worker(args):
    """Run cases [start, stop) and print one JSON line per case (prefixed)."""
    cats = args.categories
    out = sys.stdout
    for i in range(args.start, args.stop):
        category = cats[i % len(cats)]
        seed = case_seed(args.seed, i)
        out.write(f"@@start {i}\n")
        out.flush()
        t0 = time.perf_counter()
        outcome, detail, what = run_one(category, seed)
        out.write("@@" + json.dumps(dict(i=i, category=category, seed=seed, outcome=outcome,
                                         detail=detail[-2000:], what=what[:400],
                                         t=time.perf_counter() - t0)) + "\n")
        out.flush()


def campaign(args):
    cats = args.categories
    counts = {cat: dict.fromkeys(("calls",) + GOOD + BAD, 0) for cat in cats}
    failures = []
    t0 = time.perf_counter()
    i = 0
    me = os.path.abspath(__file__)
    while i < args.calls:
        cmd = [sys.executable, me, "--worker", "--start", str(i), "--stop", str(args.calls),
               "--seed", str(args.seed), "--categories", *cats]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.DEVNULL if not args.verbose else None)
        started = None
        for line in proc.stdout:
            if line.startswith("@@start "):
                started = int(line.split()[1])
            elif line.startswith("@@{"):
                r = json.loads(line[2:])
                counts[r["category"]]["calls"] += 1
                counts[r["category"]][r["outcome"]] += 1
                if r["outcome"] in BAD:
                    failures.append(r)
                i = r["i"] + 1
                started = None
                if args.progress and i % args.progress == 0:
                    print(f"  {i} calls, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rc = proc.wait()
        if started is not None:
            # The process died in this case (signal, abort): a crash, and the campaign goes on.
            category = cats[started % len(cats)]
            counts[category]["calls"] += 1
            counts[category]["crash"] += 1
            failures.append(dict(i=started, category=category,
                                 seed=case_seed(args.seed, started), outcome="crash",
                                 detail=f"the process died (exit status {rc})", what=""))
            i = started + 1
        elif rc != 0 and i < args.calls:
            print(f"worker exited with {rc} between cases; stopping", file=sys.stderr)
            break
    elapsed = time.perf_counter() - t0
    report(counts, failures, elapsed, args)
    return 1 if failures else 0


def report(counts, failures, elapsed, args):
    cols = ("calls", "matched", "rejected", "crash", "wrong", "refused", "accepted", "unclear",
            "mutated", "slow")
    total = {k: sum(c[k] for c in counts.values()) for k in cols}
    print(f"rnnc bad-input campaign: {total['calls']} calls over {len(counts)} categories, "
          f"seed {args.seed}, {elapsed:.0f} s")
    print(f"{'category':<13}" + "".join(f"{k:>9}" for k in cols))
    for cat, c in counts.items():
        print(f"{cat:<13}" + "".join(f"{c[k]:>9}" for k in cols))
    print(f"{'total':<13}" + "".join(f"{total[k]:>9}" for k in cols))
    wrong = total["wrong"] + total["refused"]
    print(f"crashes: {total['crash']}, wrong results: {wrong} (of which valid input refused: "
          f"{total['refused']}), invalid input accepted: {total['accepted']}, unclear "
          f"messages: {total['unclear']}, mutated inputs: {total['mutated']}, too slow: "
          f"{total['slow']}")
    shown = {}
    for f in failures:
        key = (f["outcome"], f["category"])
        shown[key] = shown.get(key, 0) + 1
        if shown[key] > args.show:
            continue
        first = f["detail"].strip().splitlines()
        print(f"- {f['outcome']} [{f['category']}] replay: python tests/test_fuzz.py --replay "
              f"{f['category']}:{f['seed']}\n    {f['what'][:300]}\n    "
              + "\n    ".join(first[-4:]))
    for key, n in shown.items():
        if n > args.show:
            print(f"  ({n - args.show} more {key[0]} in {key[1]})")


def replay(spec):
    category, seed = spec.split(":")
    try:
        case = build(category, RngChooser(int(seed)))
    except Exception:  # noqa: BLE001 - judged and shown by run_one
        outcome, detail, _ = run_one(category, int(seed))
        print(f"[{category}] outcome: {outcome}\n{detail}")
        return 1
    print(f"[{category}] {case.what}\nexpect: {case.expect}, names: {list(case.names)}")
    outcome, detail = evaluate(case)
    print(f"outcome: {outcome}\n{detail}")
    return 0 if outcome in GOOD else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=12000, help="number of generated calls")
    p.add_argument("--seed", type=int, default=0, help="campaign seed")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    p.add_argument("--show", type=int, default=3, help="failures shown per kind and category")
    p.add_argument("--progress", type=int, default=0, help="print progress every N calls")
    p.add_argument("--replay", metavar="CATEGORY:SEED", help="run one case and explain it")
    p.add_argument("--verbose", action="store_true", help="show the worker's stderr")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.worker:
        worker(args)
        return 0
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
