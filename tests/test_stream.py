"""Streaming (layer.stream()): one step per call must reproduce the whole-sequence layer.

Every variant is stepped through a sequence and compared with the compiled layer called on the
whole sequence and with the NumPy reference, then the state handling (initial states, reset,
refresh and the weight snapshot), the accepted inputs and every error path.
"""
import ast
import inspect
import os
import pathlib

import numpy as np
import pytest

import rnnc
import rnnc.reference
import rnnc.stream
from conftest import (DTYPES, VARIANT_IDS, VARIANTS, assert_close, assert_states_close,
                      make_pair, random_initial_state, resolve_kwargs)


def stream_through(s, x):
    """Step s through x (T, B, I); returns the stacked outputs (T, B, P)."""
    return np.stack([s.step(xt) for xt in x])


def make_layers(mode, kwargs, I, H, rng, **extra):
    return make_pair(mode, I, H, **resolve_kwargs(kwargs, H, rng), **extra)


# ---------------------------------------------------------------------------------------------
# Agreement with the layer and the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B", [1, 3, 17, 70])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_stream_matches_layer_and_reference(mode, kwargs, dtype, B, bias, rng):
    mod, ref = make_layers(mode, kwargs, 5, 9, rng, num_layers=2, bias=bias, dtype=dtype)
    x = rng.standard_normal((7, B, 5)).astype(dtype)
    hx = random_initial_state(rng, mod, B, dtype)
    s = mod.stream(batch_size=B)
    s.reset(hx)
    ys = stream_through(s, x)
    out, state = mod(x, hx)
    out_ref, state_ref = ref(x, hx)
    assert_close(ys, out, dtype)
    assert_close(ys, out_ref, dtype)
    assert_states_close(s.state, state, dtype)
    assert_states_close(s.state, state_ref, dtype)


@pytest.mark.parametrize("B", [1, 3, 5])
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_stream_wide_layers_across_weight_panels(mode, kwargs, B, rng):
    # G * H spans several 64-column panels of the small-batch kernel, the last one partial;
    # K (input 33, state 70 or P) is odd-sized.
    dtype = np.float32
    mod, ref = make_layers(mode, kwargs, 33, 70, rng, num_layers=2, dtype=dtype)
    x = rng.standard_normal((6, B, 33)).astype(dtype)
    s = mod.stream(B)
    ys = stream_through(s, x)
    out, state = mod(x)
    assert_close(ys, out, dtype)
    assert_close(ys, ref(x)[0], dtype)
    assert_states_close(s.state, state, dtype)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_stream_num_layers(mode, kwargs, dtype, num_layers, rng):
    mod, ref = make_layers(mode, kwargs, 4, 6, rng, num_layers=num_layers, dtype=dtype)
    x = rng.standard_normal((5, 2, 4)).astype(dtype)
    s = mod.stream(2)
    ys = stream_through(s, x)
    out, state = ref(x)
    assert_close(ys, out, dtype)
    assert_states_close(s.state, state, dtype)


@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_stream_blas_path_matches_small_batch_kernel(mode, kwargs, rng, force_plan):
    # float32 streams use the packed kernel where the CPU has it; this forces BLAS.
    mod, ref = make_layers(mode, kwargs, 6, 40, rng, num_layers=2)
    x = rng.standard_normal((5, 3, 6)).astype(np.float32)
    small = stream_through(mod.stream(3), x)
    force_plan(small_gemm=False)
    s = mod.stream(3)
    assert "w_ih_packed" not in s._layers[0]
    blas = stream_through(s, x)
    out = ref(x)[0]
    assert_close(small, out, np.float32)
    assert_close(blas, out, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_unbatched_stream(mode, kwargs, dtype, rng):
    mod, ref = make_layers(mode, kwargs, 4, 7, rng, num_layers=2, dtype=dtype)
    x = rng.standard_normal((6, 4)).astype(dtype)                 # (T, I)
    hx = random_initial_state(rng, mod, None, dtype, unbatched=True)
    s = mod.stream(batch_size=None)
    s.reset(hx)
    ys = np.stack([s.step(xt) for xt in x])
    out, state = ref(x, hx)
    P = mod.proj_size or 7
    assert ys.shape == (6, P)
    assert_close(ys, out, dtype)
    assert_states_close(s.state, state, dtype)
    assert_states_close(s.state, mod(x, hx)[1], dtype)


def test_a_stream_in_two_halves_is_the_whole_sequence(rng):
    mod = rnnc.GRU(5, 8, num_layers=2, seed=0, dtype=np.float64)
    x = rng.standard_normal((10, 3, 5))
    s = mod.stream(3)
    first = stream_through(s, x[:4])
    out1, h1 = mod(x[:4])
    assert_close(first, out1, np.float64)
    assert_close(s.state, h1, np.float64)
    assert_close(stream_through(s, x[4:]), mod(x[4:], h1)[0], np.float64)
    assert_close(s.state, mod(x)[1], np.float64)


def test_zero_batch():
    s = rnnc.LSTM(3, 4, num_layers=2, proj_size=2).stream(batch_size=0)
    y = s.step(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 2) and y.dtype == np.float32
    h, c = s.state
    assert h.shape == (2, 0, 2) and c.shape == (2, 0, 4)


def test_nan_propagates(rng):
    s = rnnc.LSTM(3, 4, seed=0).stream(2)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    x[1, 0] = np.nan
    y = s.step(x)
    assert np.all(np.isfinite(y[0])) and np.all(np.isnan(y[1]))


# ---------------------------------------------------------------------------------------------
# State: reset, refresh, the snapshot, training mode
# ---------------------------------------------------------------------------------------------
def test_reset_starts_again_from_zero_or_the_given_state(rng):
    mod = rnnc.LSTM(4, 6, num_layers=2, seed=0)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    s = mod.stream(2)
    first = stream_through(s, x)
    assert s.reset() is s
    h, c = s.state
    assert not h.any() and not c.any()
    np.testing.assert_array_equal(stream_through(s, x), first)
    h0, c0 = random_initial_state(rng, mod, 2, np.float32)
    s.reset((h0.astype(np.float64), c0.tolist()))         # any real array-like, converted
    assert_close(stream_through(s, x), mod(x, (h0, c0))[0], np.float32)
    saved = s.state
    s.reset(saved)                                        # what state gives, reset takes
    assert_close(stream_through(s, x), mod(x, saved)[0], np.float32)


def test_state_is_a_copy(rng):
    s = rnnc.RNN(3, 4, seed=0).stream(1)
    s.step(rng.standard_normal((1, 3)).astype(np.float32))
    h = s.state
    h[...] = 99
    assert not np.any(s.state == 99)


def test_weights_are_a_snapshot_until_refresh(rng):
    mod = rnnc.GRU(4, 6, num_layers=2, seed=0, dtype=np.float64)
    old = rnnc.GRU(4, 6, num_layers=2, seed=0, dtype=np.float64)   # a copy of the weights
    x = rng.standard_normal((5, 3, 4))
    s = mod.stream(3)
    # Changed in place and through load_state_dict: the stream still has the old weights.
    mod.weight_hh_l0 *= 0.5
    mod.load_state_dict({"bias_ih_l1": rng.standard_normal(18)}, strict=False)
    assert not np.allclose(mod(x)[0], old(x)[0])
    assert_close(stream_through(s, x), old(x)[0], np.float64)
    # refresh() reads them; the state is kept.
    h_before = s.state
    assert s.refresh() is s
    np.testing.assert_array_equal(s.state, h_before)
    s.reset()
    assert_close(stream_through(s, x), mod(x)[0], np.float64)


@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_refresh_after_new_weights(mode, kwargs, rng):
    kwargs = resolve_kwargs(kwargs, 70, rng)
    mod = getattr(rnnc, mode)(5, 70, num_layers=2, seed=0, **kwargs)
    other = getattr(rnnc, mode)(5, 70, num_layers=2, seed=7, **kwargs)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    s = mod.stream(2)
    mod.load_state_dict(other.state_dict())
    assert_close(stream_through(s, x), getattr(rnnc, mode)(5, 70, num_layers=2, seed=0,
                                                           **kwargs)(x)[0], np.float32)
    s.refresh()
    s.reset()
    assert_close(stream_through(s, x), other(x)[0], np.float32)


def test_training_mode_streams_without_dropout(rng):
    mod = rnnc.LSTM(4, 6, num_layers=3, dropout=0.5, seed=0)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    expected = mod(x)[0]                           # eval mode: no dropout
    mod.train()
    s = mod.stream(2)
    assert_close(stream_through(s, x), expected, np.float32)


# ---------------------------------------------------------------------------------------------
# Inputs accepted at the boundary
# ---------------------------------------------------------------------------------------------
def _odd_layouts(x):
    """The same values as x (B, I) in layouts the step must copy."""
    B, I = x.shape
    wide = np.zeros((B, 2 * I), x.dtype)
    wide[:, ::2] = x
    fortran = np.asfortranarray(x)
    swapped = x.astype(x.dtype.newbyteorder())
    raw = np.zeros(x.nbytes + 1, np.uint8)[1:].view(x.dtype).reshape(B, I)   # misaligned
    raw[...] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    return {"strided": wide[:, ::2], "fortran": fortran, "byteswapped": swapped,
            "misaligned": raw, "readonly": readonly}


@pytest.mark.parametrize("layout", ["strided", "fortran", "byteswapped", "misaligned",
                                    "readonly"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_are_accepted(layout, dtype, rng):
    mod = rnnc.LSTM(5, 6, seed=0, dtype=dtype)
    x = rng.standard_normal((3, 5)).astype(dtype)
    odd = _odd_layouts(x)[layout]
    assert odd.dtype == dtype or layout == "byteswapped"
    expected = mod.stream(3).step(x)
    np.testing.assert_array_equal(mod.stream(3).step(odd), expected)


def test_out_argument(rng):
    mod = rnnc.RNN(4, 4, num_layers=2, seed=0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    expected = stream_through(mod.stream(2), x)
    s = mod.stream(2)
    out = np.empty((2, 4), np.float32)
    for t in range(3):
        assert s.step(x[t], out=out) is out
        np.testing.assert_array_equal(out, expected[t])
    # In place: out may be x itself (input_size == P).
    s.reset()
    for t in range(3):
        xt = x[t].copy()
        s.step(xt, out=xt)
        np.testing.assert_array_equal(xt, expected[t])
    u = mod.stream(None)
    y = np.empty(4, np.float32)
    assert u.step(x[0, 0], out=y) is y
    assert_close(y, expected[0, 0], np.float32)     # a batch of 1 sums in another order


def test_outputs_are_new_arrays(rng):
    s = rnnc.GRU(3, 4, seed=0).stream(1)
    x = rng.standard_normal((1, 3)).astype(np.float32)
    y1 = s.step(x)
    y1_copy = y1.copy()
    y2 = s.step(x)
    assert y1 is not y2 and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, y1_copy)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_other_real_dtypes_are_converted_and_the_rest_refused_naming_x(rng):
    # rnnc's dtype policy: the stream converts as the layer does (tests/test_dtype_policy.py).
    x = rng.standard_normal((4, 2, 3))
    mod = rnnc.LSTM(3, 4, seed=0)
    exact = stream_through(mod.stream(2), x.astype(np.float32))
    s = mod.stream(2)
    got = np.stack([s.step(xt) for xt in x])                  # float64 steps
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, exact)
    s.reset()
    np.testing.assert_array_equal(s.step(x[0].tolist()), exact[0])
    s1, s2 = mod.stream(2), mod.stream(2)
    xi = rng.integers(-3, 4, size=(2, 3))
    np.testing.assert_array_equal(s1.step(xi), s2.step(xi.astype(np.float32)))
    with pytest.raises(TypeError, match=r"out must have dtype float32.*float64"):
        s.step(x[0], out=np.zeros((2, 4)))                    # out is never converted
    for bad in (np.zeros((2, 3), complex), np.zeros((2, 3), bool), np.zeros((2, 3), object)):
        with pytest.raises(TypeError, match=r"x must have a real numeric dtype.*got"):
            s.step(bad)


def test_wrong_shape_is_a_value_error_with_both_shapes():
    s = rnnc.LSTM(3, 4).stream(2)
    for bad in [(2, 4), (3, 3), (1, 2, 3), (3,), ()]:
        with pytest.raises(ValueError, match=r"x must have shape \(2, 3\)") as info:
            s.step(np.zeros(bad, np.float32))
        assert str(info.value).endswith(f"got {bad}")
    u = rnnc.LSTM(3, 4).stream(None)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\).*got \(1, 3\)"):
        u.step(np.zeros((1, 3), np.float32))


def test_bad_out_argument():
    s = rnnc.LSTM(3, 4, proj_size=2).stream(2)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\), got \(2, 4\)"):
        s.step(x, out=np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"out must have dtype float32.*float64"):
        s.step(x, out=np.zeros((2, 2)))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        s.step(x, out=[[0, 0], [0, 0]])
    with pytest.raises(ValueError, match="out must be a writeable, aligned, C-contiguous"):
        s.step(x, out=np.zeros((2, 4), np.float32)[:, ::2])
    ro = np.zeros((2, 2), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        s.step(x, out=ro)


def test_bidirectional_layers_cannot_stream():
    with pytest.raises(ValueError, match="bidirectional.*reverse direction"):
        rnnc.LSTM(3, 4, bidirectional=True).stream()


@pytest.mark.parametrize("batch_size, exc", [(-1, ValueError), (1.5, TypeError),
                                             (True, TypeError), ("2", TypeError)])
def test_bad_batch_size(batch_size, exc):
    with pytest.raises(exc, match="batch_size"):
        rnnc.GRU(3, 4).stream(batch_size)


def test_bad_reset_arguments():
    s = rnnc.LSTM(3, 4, num_layers=2).stream(5)
    h, c = np.zeros((2, 5, 4)), np.zeros((2, 5, 4))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 5, 4\), got \(1, 5, 4\)"):
        s.reset((np.zeros((1, 5, 4)), c))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 5, 4\), got \(2, 4\)"):
        s.reset((h, np.zeros((2, 4))))
    with pytest.raises(TypeError, match="h_0 must have a real numeric dtype"):
        s.reset((h.astype(complex), c))
    with pytest.raises(TypeError, match="c_0 must have a real numeric dtype"):
        s.reset((h, None))                                # as the layer's hx: both arrays
    with pytest.raises(TypeError, match=r"pair \(h_0, c_0\).*got ndarray.*pass \(h0, c0\)"):
        s.reset(h)                                        # the old reset(h0): ambiguous
    with pytest.raises(TypeError, match="c0 is the cell state of an LSTM; GRU has none"):
        rnnc.GRU(3, 4).stream(1).reset(np.zeros((1, 1, 4)), np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 4\), got \(1, 1, 4\)"):
        rnnc.GRU(3, 4).stream(None).reset(np.zeros((1, 1, 4)))


def test_old_reset_forms_warn_and_keep_their_meaning(rng):
    mod = rnnc.LSTM(4, 6, num_layers=2, seed=0)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    h0, c0 = random_initial_state(rng, mod, 2, np.float32)
    s = mod.stream(2)
    with pytest.warns(DeprecationWarning, match=r"reset\(\(h0, c0\)\)"):
        s.reset(h0, c0)
    assert_close(stream_through(s, x), mod(x, (h0, c0))[0], np.float32)
    with pytest.warns(DeprecationWarning):
        s.reset(h0=h0)                                    # c0 omitted: zero, as before
    assert_close(stream_through(s, x), mod(x, (h0, np.zeros_like(c0)))[0], np.float32)
    g = rnnc.GRU(4, 6, seed=0)
    sg = g.stream(2)
    h = rng.standard_normal((1, 2, 6)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match=r"reset\(hx\)"):
        sg.reset(h0=h)
    assert_close(stream_through(sg, x), g(x, h)[0], np.float32)


def test_the_reference_has_no_stream():
    with pytest.raises(NotImplementedError, match="T = 1"):
        rnnc.reference.LSTM(3, 4).stream()


def test_a_busy_stream_refuses_a_second_user():
    # What a second thread sees while a step, reset or refresh runs (the flag is set and
    # cleared with the GIL held).
    s = rnnc.LSTM(3, 4).stream(1)
    s._acquire()
    try:
        with pytest.raises(RuntimeError, match="in use by another thread"):
            s.step(np.zeros((1, 3), np.float32))
        with pytest.raises(RuntimeError, match="in use by another thread"):
            s.reset()
        with pytest.raises(RuntimeError, match="in use by another thread"):
            s.refresh()
    finally:
        s._release()
    assert s.step(np.zeros((1, 3), np.float32)).shape == (1, 4)


def test_the_kernel_checks_its_buffers():
    from rnnc._kernels._stream_kernel import StreamKernel
    k = StreamKernel()
    with pytest.raises(RuntimeError, match="before bind"):
        k.step(np.zeros((1, 3), np.float32))
    s = rnnc.RNN(3, 4).stream(1)
    with pytest.raises(RuntimeError, match="already bound"):
        s.bind("RNN", np.float32, 1, False, 3, 4, 4, False, True, s._layers)
    bad = [dict(buf, h=np.zeros((2, 4), np.float32)) for buf in s._layers]
    with pytest.raises(ValueError, match=r"buffer 'h' must be .* of shape \(1, 4\)"):
        StreamKernel().bind("RNN", np.float32, 1, False, 3, 4, 4, False, True, bad)
    bad = [dict(buf, w_ih=np.zeros((4, 3))) for buf in s._layers]
    with pytest.raises(ValueError, match=r"buffer 'w_ih' must be .* float32"):
        StreamKernel().bind("RNN", np.float32, 1, False, 3, 4, 4, False, True, bad)


def test_stream_repr():
    m = rnnc.GRU(3, 4, reset_after=False)
    assert repr(m.stream(None)) == f"Stream({m!r}, batch_size=None)"


def test_stub_declares_the_compiled_class():
    from rnnc._kernels import _stream_kernel
    stub = pathlib.Path(rnnc.__file__).parent / "_kernels" / "_stream_kernel.pyi"
    tree = ast.parse(stub.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"StreamKernel"}
    declared = {n.name for n in classes["StreamKernel"].body if isinstance(n, ast.FunctionDef)}
    compiled = {k for k, v in vars(_stream_kernel.StreamKernel).items()
                if (callable(v) or inspect.isgetsetdescriptor(v)) and not k.startswith("__")}
    assert declared == compiled
    public = {k for k, v in vars(_stream_kernel).items() if callable(v) and not k.startswith("_")
              and getattr(v, "__module__", None) == _stream_kernel.__name__}
    assert public == {"StreamKernel"}


# ---------------------------------------------------------------------------------------------
# Steps split between the calling thread and the stream's helper thread
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def split(force_plan):
    """Streams made while this fixture is active split every step (as at 2 threads), whatever
    the machine and the layer size (only layers with a split form: no projection, GRU in
    PyTorch's form)."""
    force_plan(threads=2, split_units=True)


def splittable(mod):
    return not mod.proj_size and (mod.mode != "GRU" or mod.reset_after)


@pytest.mark.parametrize("B", [1, 3, 70])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_split_stream_matches_layer_and_reference(force_plan, mode, kwargs, dtype, B, rng):
    H = 40      # halves of 16 and 24 units
    mod, ref = make_layers(mode, kwargs, 5, H, rng, num_layers=2, dtype=dtype)
    # Forms without a split stay on one thread (B 70: large enough to split otherwise).
    force_plan(threads=2, **({"split_units": True} if splittable(mod) else {}))
    x = rng.standard_normal((6, B, 5)).astype(dtype)
    hx = random_initial_state(rng, mod, B, dtype)
    s = mod.stream(batch_size=B)
    assert s.threads == (2 if splittable(mod) else 1)
    s.reset(hx)
    ys = stream_through(s, x)
    out, state = mod(x, hx)
    assert_close(ys, out, dtype)
    assert_states_close(s.state, state, dtype)
    ref_out, _ = ref(x, hx)
    assert_close(ys, ref_out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_split_stream_gives_the_one_thread_bits(force_plan, mode, kwargs, dtype, rng):
    # Each half of a split step sums its units' products in the one-thread step's order.
    mod, _ = make_layers(mode, kwargs, 9, 40, rng, num_layers=2, dtype=dtype)
    x = rng.standard_normal((7, 3, 9)).astype(dtype)
    force_plan(threads=1)
    one = mod.stream(batch_size=3)
    assert one.threads == 1
    force_plan(threads=2, **({"split_units": True} if splittable(mod) else {}))
    two = mod.stream(batch_size=3)
    assert two.threads == (2 if splittable(mod) else 1)
    np.testing.assert_array_equal(stream_through(two, x), stream_through(one, x))
    states = [(s.state if isinstance(s.state, tuple) else (s.state,)) for s in (two, one)]
    for a, b in zip(*states):
        np.testing.assert_array_equal(a, b)


def test_split_stream_refresh_and_reset(split, rng):
    m = rnnc.GRU(6, 48, num_layers=2, seed=1)
    s = m.stream(batch_size=2)
    assert s.threads == 2
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)
    stream_through(s, x)
    m.weight_hh_l1 *= -0.5
    m.bias_hh_l0 += 0.25
    s.refresh().reset()
    assert_close(stream_through(s, x), m(x)[0], np.float32)


def _task_count():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_split_stream_thread_ends_with_the_stream(split, rng):
    import gc
    m = rnnc.LSTM(4, 32, seed=0)
    before = _task_count()
    s = m.stream()
    assert s.threads == 2 and _task_count() == before + 1
    s.step(np.ones((1, 4), np.float32))
    del s
    gc.collect()
    assert _task_count() == before


def test_split_stream_in_a_forked_child(split, rng):
    # The helper thread is not inherited: the child's steps run on its one thread and agree.
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    m = rnnc.LSTM(4, 32, num_layers=2, seed=0)
    s = m.stream()
    x = rng.standard_normal((5, 1, 4)).astype(np.float32)
    expected = m(x)[0]
    stream_through(s, x[:2])
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_step_rest_in_child, args=(s, x[2:], q))
    p.start()
    threads, ys = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and threads == 1
    assert_close(ys, expected[2:], np.float32)
    # The child ran both halves of each step itself: the same bits as the split steps.
    np.testing.assert_array_equal(ys, stream_through(m.stream(), x)[2:])
    assert_close(stream_through(s, x[2:]), expected[2:], np.float32)   # parent still split


def _step_rest_in_child(s, x, q):
    q.put((s.threads, stream_through(s, x)))


def test_split_stream_step_with_the_helper_asleep_gives_the_same_bits(split, rng):
    # A step that finds the helper asleep (it sleeps after ~0.5 ms without work) runs both halves
    # on the calling thread (split_step_alone); the arithmetic is the same as with two threads.
    import time
    m = rnnc.LSTM(7, 48, num_layers=2, seed=3)
    x = rng.standard_normal((4, 2, 7)).astype(np.float32)
    awake = m.stream(batch_size=2)
    assert awake.threads == 2
    expected = stream_through(awake, x)
    sleepy = m.stream(batch_size=2)
    ys = []
    for t in range(4):
        time.sleep(0.02)
        ys.append(sleepy.step(x[t]))
    np.testing.assert_array_equal(np.stack(ys), expected)
    for a, b in zip(sleepy.state, awake.state):
        np.testing.assert_array_equal(a, b)


def test_split_stream_out_may_be_x(split, rng):
    # With out=x, one half of a split step would write its outputs while the other still reads
    # x: the step then reads a copy of x.
    m = rnnc.GRU(32, 32, seed=2)
    x = rng.standard_normal((5, 3, 32)).astype(np.float32)
    expected = stream_through(m.stream(3), x)
    s = m.stream(3)
    assert s.threads == 2
    for t in range(5):
        xt = x[t].copy()
        assert s.step(xt, out=xt) is xt
        np.testing.assert_array_equal(xt, expected[t])
