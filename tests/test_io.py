"""rnnc.save / rnnc.load (safetensors): bit-exact round trips of every class and option, the
header's metadata, PyTorch reading the file, loading that never runs code, the registration
hook; and pickles that never carry what a training forward keeps."""
import copy
import json
import pickle
import sys

import numpy as np
import pytest

import rnnc
import rnnc.io
import rnnc.reference

F32, F64 = np.float32, np.float64

MODULES = {
    "RNN-relu-2l-bi-bf-nobias": lambda: rnnc.RNN(3, 5, num_layers=2, nonlinearity="relu",
                                                  bidirectional=True, batch_first=True,
                                                  bias=False, dtype=F64, seed=0),
    "RNN-dropout": lambda: rnnc.RNN(3, 5, num_layers=3, dropout=0.25, seed=0),
    "GRU-v1-bi": lambda: rnnc.GRU(3, 5, reset_after=False, bidirectional=True, seed=0),
    "GRU-keras-f64": lambda: rnnc.GRU(3, 5, num_layers=2, init="keras", dtype=F64, seed=0),
    "LSTM-proj-bi-2l": lambda: rnnc.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2,
                                         dropout=0.1, seed=0),
    "LSTM-bf-f64-nobias": lambda: rnnc.LSTM(3, 6, batch_first=True, bias=False, dtype=F64,
                                            seed=0),
    "RNNCell-relu": lambda: rnnc.RNNCell(3, 5, nonlinearity="relu", seed=0),
    "GRUCell-v1-f64": lambda: rnnc.GRUCell(3, 5, reset_after=False, dtype=F64, seed=0),
    "LSTMCell-nobias": lambda: rnnc.LSTMCell(3, 5, bias=False, seed=0),
    "Linear": lambda: rnnc.Linear(3, 4, seed=0),
    "Linear-softmax-f64-nobias": lambda: rnnc.Linear(3, 4, activation="softmax", bias=False,
                                                     dtype=F64, seed=0),
    "Linear-tanh": lambda: rnnc.Linear(3, 4, activation="tanh", seed=0),
    "Linear-relu-keras": lambda: rnnc.Linear(3, 4, activation="relu", init="keras", seed=0),
    "Linear-sigmoid": lambda: rnnc.Linear(3, 4, activation="sigmoid", seed=0),
    "Bidirectional-LSTM-mul": lambda: rnnc.Bidirectional(rnnc.LSTM(3, 4, seed=0),
                                                         merge_mode="mul"),
    "Bidirectional-GRU-None": lambda: rnnc.Bidirectional(rnnc.GRU(3, 4, dtype=F64, seed=0),
                                                         merge_mode=None),
    "Sequential-nested": lambda: rnnc.Sequential(
        rnnc.LSTM(3, 6, seed=0),
        rnnc.Bidirectional(rnnc.GRU(6, 4, seed=1), merge_mode="sum"),
        rnnc.Sequential(rnnc.Linear(4, 4, activation="tanh", seed=2), rnnc.Linear(4, 2, seed=3))),
    "Sequential-empty": lambda: rnnc.Sequential(),
    "Sequential-pool-state": lambda: rnnc.Sequential(
        rnnc.LSTM(3, 4, bidirectional=True, batch_first=True, dtype=F64, seed=0),
        rnnc.Pool("state"), rnnc.Linear(8, 2, dtype=F64, seed=1)),
    "Sequential-pool-max": lambda: rnnc.Sequential(
        rnnc.GRU(3, 4, seed=0), rnnc.Pool("max", batch_first=False), rnnc.Linear(4, 2, seed=1)),
    "reference-LSTM": lambda: rnnc.reference.LSTM(3, 4, proj_size=2, seed=0),
}


def call(m, x):
    """The module's output on x (time-major (5, 2, 3); a cell gets one step)."""
    if isinstance(m, rnnc.Sequential) and len(m) == 0:
        return [x]
    if isinstance(m, rnnc.cells._CellBase):
        out = m(x[0])
    elif isinstance(m, (rnnc.Linear, rnnc.Sequential)):
        out = m(x)
    else:
        xin = x.swapaxes(0, 1) if getattr(m, "batch_first", False) else x
        out = m(xin)
    leaves = []

    def flatten(o):
        if isinstance(o, (tuple, list)):
            for v in o:
                flatten(v)
        else:
            leaves.append(o)
    flatten(out)
    return leaves


@pytest.fixture(scope="module")
def st():
    return pytest.importorskip("safetensors")


@pytest.mark.parametrize("name", list(MODULES))
def test_round_trip_is_bit_exact(st, name, tmp_path, rng):
    m = MODULES[name]()
    # Weights that no constructor would draw: the file must carry them, bit for bit.
    m.load_state_dict({k: rng.standard_normal(v.shape) for k, v in m.state_dict().items()})
    path = tmp_path / "m.safetensors"
    rnnc.save(m, path)
    m2 = rnnc.load(path)
    assert type(m2) is type(m) and repr(m2) == repr(m)
    assert getattr(m2, "_config")() == m._config()
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype, k
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
    x = rng.standard_normal((5, 2, 3))
    for a, b in zip(call(m, x), call(m2, x)):
        np.testing.assert_array_equal(a, b)


def test_training_and_frozen_flags_survive(st, tmp_path):
    seq = rnnc.Sequential(rnnc.GRU(3, 4, seed=0).freeze(), rnnc.Linear(4, 2, seed=1))
    rnnc.save(seq, tmp_path / "a.safetensors")
    back = rnnc.load(tmp_path / "a.safetensors")
    assert back[0].frozen and not back[1].frozen and not back.training
    assert not back[0].weight_ih_l0.flags.writeable
    lstm = rnnc.LSTM(3, 4).train()
    rnnc.save(lstm, tmp_path / "b.safetensors")
    assert rnnc.load(tmp_path / "b.safetensors").training
    rnnc.save(rnnc.Bidirectional(rnnc.RNN(3, 4)).freeze(), tmp_path / "c.safetensors")
    assert rnnc.load(tmp_path / "c.safetensors").frozen


def test_metadata_layout(st, tmp_path):
    from safetensors import safe_open
    m = rnnc.Sequential(rnnc.LSTM(3, 4, proj_size=2, seed=0),
                        rnnc.Bidirectional(rnnc.GRU(2, 3, seed=0), merge_mode="ave"))
    rnnc.save(m, tmp_path / "m.safetensors")
    with safe_open(tmp_path / "m.safetensors", framework="np") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "pt" and meta["rnnc.version"] == rnnc.__version__
    assert meta["rnnc.format"] == "1"
    desc = json.loads(meta["rnnc.module"])
    assert desc["class"] == "Sequential" and desc["config"] == {}
    lstm, bi = desc["children"]
    assert lstm["class"] == "LSTM" and lstm["config"]["proj_size"] == 2
    assert lstm["config"]["dtype"] == "float32" and lstm["config"]["init"] == "pytorch"
    assert bi["config"] == {"merge_mode": "ave"}
    assert set(bi["children"]) == {"forward_layer", "backward_layer"}
    assert sorted(keys) == sorted(m.state_dict())
    assert "1.backward_layer.weight_hh_l0" in keys and "0.weight_hr_l0" in keys


def test_pytorch_reads_the_file_into_its_own_lstm(st, tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    m = rnnc.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4, batch_first=True,
                  dtype=F64, seed=0)
    rnnc.save(m, tmp_path / "lstm.safetensors")
    t = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4, batch_first=True,
                      dtype=torch.float64)
    t.load_state_dict(load_file(tmp_path / "lstm.safetensors"))     # strict: every name
    x = rng.standard_normal((2, 7, 3))
    out, (h, c) = m(x)
    with torch.no_grad():
        tout, (th, tc) = t(torch.tensor(x))
    np.testing.assert_allclose(out, tout.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(c, tc.numpy(), rtol=1e-10, atol=1e-10)
    lin = rnnc.Linear(3, 2, seed=0)
    rnnc.save(lin, tmp_path / "lin.safetensors")
    tl = torch.nn.Linear(3, 2)
    tl.load_state_dict(load_file(tmp_path / "lin.safetensors"))
    with torch.no_grad():
        np.testing.assert_allclose(lin(x[0]), tl(torch.tensor(x[0], dtype=torch.float32)),
                                   rtol=1e-5, atol=1e-6)


def write(st, path, desc, tensors=None, **extra):
    import safetensors.numpy
    meta = {"rnnc.module": json.dumps(desc), "rnnc.format": "1", **extra}
    safetensors.numpy.save_file(tensors or {"w": np.zeros(1, F32)}, str(path), metadata=meta)


def test_loading_builds_only_allow_listed_classes(st, tmp_path, monkeypatch):
    for evil in ("os.system", "builtins.eval", "__import__", "Module"):
        write(st, tmp_path / "e.safetensors", {"class": evil, "config": {"command": "true"}})
        with pytest.raises(ValueError, match=f"unknown class '{evil}'"):
            rnnc.load(tmp_path / "e.safetensors")
    nested = {"class": "Sequential", "config": {},
              "children": [{"class": "LSTM", "config": {"input_size": 1, "hidden_size": 1}},
                           {"class": "subprocess.Popen", "config": {}}]}
    write(st, tmp_path / "n.safetensors", nested)
    with pytest.raises(ValueError, match=r"module\[1\]: unknown class 'subprocess.Popen'"):
        rnnc.load(tmp_path / "n.safetensors")
    # No unpickling anywhere on the way.
    rnnc.save(rnnc.GRU(2, 3), tmp_path / "g.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("rnnc.load unpickled something")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert isinstance(rnnc.load(tmp_path / "g.safetensors"), rnnc.GRU)


def test_bad_files(st, tmp_path):
    import safetensors.numpy
    safetensors.numpy.save_file({"w": np.zeros(2, F32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no rnnc metadata.*safetensors.numpy.load_file"):
        rnnc.load(tmp_path / "plain.safetensors")
    rnnc.save(rnnc.LSTM(3, 4), tmp_path / "l.safetensors")
    tensors = safetensors.numpy.load_file(str(tmp_path / "l.safetensors"))
    desc = {"class": "LSTM", "config": {"input_size": 3, "hidden_size": 5}}
    write(st, tmp_path / "wrong.safetensors", desc, tensors)
    with pytest.raises(ValueError, match=r"do not fit the LSTM.*'weight_hh_l0': expected "
                                         r"shape \(20, 5\), got \(16, 4\)"):
        rnnc.load(tmp_path / "wrong.safetensors")
    write(st, tmp_path / "cfg.safetensors", {"class": "GRU", "config": {"input_size": 3,
                                                                         "hidden_size": -1}})
    with pytest.raises(ValueError, match="cannot build GRU.*hidden_size must be >= 1"):
        rnnc.load(tmp_path / "cfg.safetensors")
    write(st, tmp_path / "kw.safetensors", {"class": "GRU", "config": {"input_size": 3,
                                                                        "hidden_size": 2,
                                                                        "evil": 1}})
    with pytest.raises(ValueError, match="cannot build GRU.*evil"):
        rnnc.load(tmp_path / "kw.safetensors")
    write(st, tmp_path / "v.safetensors", {"class": "GRU", "config": {}}, **{"rnnc.format": "9"})
    with pytest.raises(ValueError, match="layout '9'"):
        rnnc.load(tmp_path / "v.safetensors")


def test_save_refuses_classes_it_does_not_know(st, tmp_path):
    class Mine(rnnc.Linear):
        pass
    with pytest.raises(TypeError, match="rnnc.save does not know.*rnnc.io.register"):
        rnnc.save(Mine(2, 3), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match=r"module\[0\] is a .*rnnc.io.register"):
        rnnc.save(rnnc.Sequential(Mine(2, 3)), tmp_path / "x.safetensors")


def test_registering_a_class_is_one_line(st, tmp_path, rng):
    @rnnc.io.register
    class Scaled(rnnc.Linear):
        """A class added later (say, a pooling module of another branch)."""
    try:
        m = rnnc.Sequential(rnnc.GRU(3, 4, seed=0), Scaled(4, 2, activation="tanh", seed=1))
        rnnc.save(m, tmp_path / "s.safetensors")
        back = rnnc.load(tmp_path / "s.safetensors")
        assert type(back[1]) is Scaled
        x = rng.standard_normal((4, 2, 3))
        np.testing.assert_array_equal(back(x), m(x))
        with pytest.raises(ValueError, match="already registered"):
            rnnc.io.register(rnnc.Linear, name="Scaled")
    finally:
        del rnnc.io.CLASSES["Scaled"]


def test_missing_safetensors_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install rnnc\[safetensors\]"):
        rnnc.save(rnnc.GRU(2, 3), tmp_path / "x.safetensors")
    with pytest.raises(ImportError, match=r"pip install rnnc\[safetensors\]"):
        rnnc.load(tmp_path / "x.safetensors")


# -- pickle never carries training state --------------------------------------------------------
def size(m):
    return len(pickle.dumps(m))


PICKLED = {
    "LSTM": (lambda: rnnc.LSTM(3, 64, seed=0), (500, 64, 3)),
    "GRU-bi-2l": (lambda: rnnc.GRU(3, 16, num_layers=2, bidirectional=True, seed=0),
                  (100, 8, 3)),
    "LSTMCell": (lambda: rnnc.LSTMCell(3, 64, seed=0), (64, 3)),
    "Linear": (lambda: rnnc.Linear(3, 64, seed=0), (500, 64, 3)),
    "Bidirectional-mul": (lambda: rnnc.Bidirectional(rnnc.LSTM(3, 16, seed=0), "mul"),
                          (100, 8, 3)),
    "Sequential": (lambda: rnnc.Sequential(rnnc.LSTM(3, 16, seed=0), rnnc.Linear(16, 2, seed=1)),
                   (100, 8, 3)),
    "reference-Bidirectional": (lambda: rnnc.reference.Bidirectional(
        rnnc.reference.GRU(3, 8, seed=0), "mul"), (50, 4, 3)),
}


@pytest.mark.parametrize("name", list(PICKLED))
def test_pickle_after_a_training_forward_is_as_small_as_before(name, rng):
    make, shape = PICKLED[name]
    m = make().train()
    before = size(m)
    x = rng.standard_normal(shape).astype(F32)
    out = m(x)
    assert abs(size(m) - before) < 300, (before, size(m))     # an LSTM(3, 64) kept 50 MB
    assert abs(len(pickle.dumps(copy.deepcopy(m))) - before) < 300
    # The copy has nothing to backpropagate; the original still has its forward's cache.
    copied = pickle.loads(pickle.dumps(m))
    with pytest.raises(RuntimeError, match="training mode"):
        copied.backward(np.ones_like(out[0] if isinstance(out, tuple) else out))
    out2 = copied(x)
    first = out2[0] if isinstance(out2, tuple) else out2
    copied.backward(np.ones_like(first))


def test_each_module_loads_with_its_own_training_flag(st, tmp_path):
    s = rnnc.Sequential(rnnc.LSTM(3, 4, num_layers=2, dropout=0.5, seed=0), rnnc.Pool("mean"),
                        rnnc.Linear(4, 2, seed=1))
    s.train()
    s[0].eval()                     # fine-tuning the head only: dropout off in the LSTM
    b = rnnc.Bidirectional(rnnc.GRU(3, 4, seed=0))
    b.backward_layer.eval()
    b.forward_layer.train()
    rnnc.save(s, tmp_path / "s.safetensors")
    rnnc.save(b, tmp_path / "b.safetensors")
    s2, b2 = rnnc.load(tmp_path / "s.safetensors"), rnnc.load(tmp_path / "b.safetensors")
    assert [layer.training for layer in s2] == [False, True, True]
    assert (b2.forward_layer.training, b2.backward_layer.training) == (True, False)


def test_loading_leaves_the_global_seed_sequence_alone(st, tmp_path):
    rnnc.save(rnnc.LSTM(3, 4, seed=5), tmp_path / "m.safetensors")
    rnnc.manual_seed(0)
    a = rnnc.GRU(3, 4)
    rnnc.manual_seed(0)
    rnnc.load(tmp_path / "m.safetensors")
    b = rnnc.GRU(3, 4)
    np.testing.assert_array_equal(a.weight_hh_l0, b.weight_hh_l0)
