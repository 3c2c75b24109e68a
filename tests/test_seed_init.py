"""rnnc.manual_seed (unseeded modules reproducible, seed= wins, NumPy's global state untouched)
and the initialisers: init='pytorch' as it always was, init='keras' checked against Keras'
definitions (glorot-uniform limits with Keras' fans, orthogonal recurrent kernels, unit forget
bias)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnc

BUILDERS = {
    "LSTM": lambda **kw: rnnc.LSTM(3, 4, num_layers=2, dropout=0.5, **kw),
    "GRU": lambda **kw: rnnc.GRU(3, 4, bidirectional=True, **kw),
    "RNN": lambda **kw: rnnc.RNN(3, 4, **kw),
    "LSTMCell": lambda **kw: rnnc.LSTMCell(3, 4, **kw),
    "GRUCell": lambda **kw: rnnc.GRUCell(3, 4, **kw),
    "Linear": lambda **kw: rnnc.Linear(3, 4, **kw),
}


def weights(*modules):
    return [v for m in modules for v in m.state_dict().values()]


def build_all():
    mods = [make() for make in BUILDERS.values()]
    return mods + [rnnc.Bidirectional(rnnc.GRU(3, 4))]


def test_manual_seed_makes_unseeded_modules_reproducible():
    rnnc.manual_seed(0)
    first = weights(*build_all())
    rnnc.manual_seed(0)
    second = weights(*build_all())
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    rnnc.manual_seed(1)
    assert not np.array_equal(weights(*build_all())[0], first[0])
    # Two modules built one after the other differ (independent children of the seed).
    rnnc.manual_seed(0)
    a, b = rnnc.GRU(3, 4), rnnc.GRU(3, 4)
    assert not np.array_equal(a.weight_ih_l0, b.weight_ih_l0)


def test_the_same_model_in_every_run():
    script = ("import hashlib, rnnc; rnnc.manual_seed(7); "
              "m = rnnc.Sequential(rnnc.LSTM(3, 8, num_layers=2), rnnc.Linear(8, 2)); "
              "print(hashlib.sha256(b''.join(v.tobytes() for v in "
              "m.state_dict().values())).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="random")
    runs = [subprocess.run([sys.executable, "-P", "-c", script], capture_output=True,
                           text=True, check=True, env=env).stdout for _ in range(2)]
    rnnc.manual_seed(7)
    m = rnnc.Sequential(rnnc.LSTM(3, 8, num_layers=2), rnnc.Linear(8, 2))
    import hashlib
    here = hashlib.sha256(b"".join(v.tobytes() for v in m.state_dict().values())).hexdigest()
    assert runs[0].strip() == runs[1].strip() == here


def test_an_explicit_seed_wins_and_takes_nothing_from_the_sequence():
    ref = rnnc.LSTM(3, 4, seed=5)
    rnnc.manual_seed(0)
    seeded = rnnc.LSTM(3, 4, seed=5)
    after = rnnc.GRU(3, 4)
    rnnc.manual_seed(0)
    alone = rnnc.GRU(3, 4)
    assert all(np.array_equal(a, b) for a, b in zip(weights(ref), weights(seeded)))
    assert all(np.array_equal(a, b) for a, b in zip(weights(after), weights(alone)))


def test_numpy_global_state_is_neither_used_nor_changed():
    np.random.seed(123)
    state = np.random.get_state()
    rnnc.manual_seed(3)
    a = weights(*build_all())
    after = np.random.get_state()
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(state, after))
    np.random.seed(999)                              # NumPy's seed plays no part
    rnnc.manual_seed(3)
    b = weights(*build_all())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dropout_masks_follow_the_seed(rng):
    x = rng.standard_normal((5, 2, 3))
    outs = []
    for _ in range(2):
        rnnc.manual_seed(11)
        m = rnnc.LSTM(3, 4, num_layers=3, dropout=0.5, dtype=np.float64).train()
        outs.append([m(x)[0] for _ in range(2)])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[0][1])          # new masks each call


# -- init='pytorch' ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_pytorch_init_is_uniform_drawn_in_order(name, dtype):
    """init='pytorch' (the default) is what rnnc always did: every parameter from
    U(-1/sqrt(k), 1/sqrt(k)) (k = hidden_size, in_features for Linear), drawn in
    state_dict order in float64 from default_rng(seed), then rounded."""
    m = BUILDERS[name](seed=42, dtype=dtype)
    assert m.init == "pytorch"
    k = 3 if name == "Linear" else 4
    gen = np.random.default_rng(42)
    for key, value in m.state_dict().items():
        expected = gen.uniform(-1 / math.sqrt(k), 1 / math.sqrt(k), size=value.shape)
        np.testing.assert_array_equal(value, expected.astype(dtype), err_msg=key)


# -- init='keras' --------------------------------------------------------------------------------
def check_glorot(w, fan_in, fan_out):
    """Keras' GlorotUniform on a (fan_in, fan_out) kernel: U(-a, a), a = sqrt(6/(in+out));
    stored transposed (PyTorch's (out, in))."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    assert w.shape == (fan_out, fan_in)
    assert np.abs(w).max() <= a
    if w.size >= 200:       # the spread of a uniform: std a / sqrt(3), range nearly [-a, a]
        assert abs(w.std() / (a / math.sqrt(3)) - 1) < 0.15
        assert np.abs(w).max() > 0.9 * a


def check_orthogonal(w, tol):
    """Keras' Orthogonal on the (units, gates * units) recurrent kernel: orthonormal rows,
    i.e. orthonormal columns for PyTorch's (gates * units, units)."""
    np.testing.assert_allclose(w.T.astype(np.float64) @ w, np.eye(w.shape[1]), atol=tol)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
def test_keras_init_matches_keras_definitions(mode, dtype, tol):
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    I, H = 10, 24
    m = getattr(rnnc, mode)(I, H, num_layers=2, bidirectional=True, init="keras", seed=0,
                            dtype=dtype)
    assert m.init == "keras" and "init='keras'" in repr(m)
    for key, w in m.state_dict().items():
        assert w.dtype == dtype
        layer_in = I if "_l0" in key else 2 * H
        if key.startswith("weight_ih"):
            check_glorot(w, layer_in, G * H)
        elif key.startswith("weight_hh"):
            check_orthogonal(w, tol)
        elif key.startswith("bias_ih") and mode == "LSTM":
            expected = np.zeros(G * H)
            expected[H:2 * H] = 1.0             # gates i, f, g, o: Keras' unit forget bias
            np.testing.assert_array_equal(w, expected)
        else:
            np.testing.assert_array_equal(w, 0.0)
    # One recurrent gate block alone is not orthogonal (Keras' kernel is one matrix).
    W = m.weight_hh_l0.astype(np.float64)
    if G > 1:
        block = W[:H]
        assert np.abs(block.T @ block - np.eye(H)).max() > 0.1


def test_keras_init_with_projection_cells_and_linear():
    lstm = rnnc.LSTM(5, 16, proj_size=6, init="keras", seed=1, dtype=np.float64)
    check_glorot(lstm.weight_ih_l0, 5, 64)
    check_orthogonal(lstm.weight_hh_l0, 1e-12)          # (64, 6): orthonormal columns
    check_glorot(lstm.weight_hr_l0, 16, 6)              # a Dense kernel (H, P) in Keras
    cell = rnnc.LSTMCell(5, 16, init="keras", seed=1, dtype=np.float64)
    check_glorot(cell.weight_ih, 5, 64)
    check_orthogonal(cell.weight_hh, 1e-12)
    assert cell.bias_ih[16:32].tolist() == [1.0] * 16 and not cell.bias_hh.any()
    gru = rnnc.GRUCell(5, 16, init="keras", seed=1, bias=False)
    assert [k for k, _ in gru.named_parameters()] == ["weight_ih", "weight_hh"]
    lin = rnnc.Linear(30, 20, init="keras", seed=1, dtype=np.float64)
    check_glorot(lin.weight, 30, 20)
    assert not lin.bias.any()


def test_keras_init_reproducible_and_in_the_bidirectional_wrapper():
    a = rnnc.GRU(4, 8, init="keras", seed=3)
    b = rnnc.GRU(4, 8, init="keras", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert not np.array_equal(a.weight_ih_l0, rnnc.GRU(4, 8, seed=3).weight_ih_l0)
    bi = rnnc.Bidirectional(rnnc.LSTM(4, 8, init="keras", seed=3, dtype=np.float64))
    back = bi.backward_layer
    assert back.init == "keras"
    check_orthogonal(back.weight_hh_l0, 1e-12)
    assert not np.array_equal(back.weight_hh_l0, bi.forward_layer.weight_hh_l0)
    assert back.bias_ih_l0[8:16].tolist() == [1.0] * 8


def test_init_errors():
    with pytest.raises(ValueError, match="init must be one of 'pytorch', 'keras', got 'xavier'"):
        rnnc.LSTM(3, 4, init="xavier")
    with pytest.raises(ValueError, match="init"):
        rnnc.Linear(3, 4, init=None)
    with pytest.raises(TypeError, match="seed must be an integer >= 0"):
        rnnc.manual_seed(1.5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        rnnc.manual_seed(-1)
