"""rnnc.onnx: export checked by ONNX Runtime, load checked by the ONNX backend node cases,
by onnx's ReferenceEvaluator and by PyTorch's own exports; every refusal names what it
refuses. Expected values come from ONNX Runtime, onnx.reference, torch or the backend cases."""
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnnc

onnx = pytest.importorskip("onnx")
import rnnc.onnx as ronnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
CLASSES = {"RNN": rnnc.RNN, "GRU": rnnc.GRU, "LSTM": rnnc.LSTM}


def _ort():
    return pytest.importorskip("onnxruntime")


def _ort_run(model, feed):
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3          # no warnings about unused initializers
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    try:
        return session.run(None, feed)
    finally:
        del session


def _module(mode, **kw):
    kw.setdefault("seed", 0)
    return CLASSES[mode](3, 5, **kw)


def _feed(module, rng, T, B, initial_state, ragged):
    """Inputs for the exported graph and the matching rnnc call arguments."""
    x = rng.standard_normal((T, B, 3)).astype(module.dtype)
    if module.batch_first:
        x = np.ascontiguousarray(x.swapaxes(0, 1))
    feed, hx, lengths = {"input": x}, None, None
    if initial_state:
        DL = module.num_layers * module.num_directions
        h0 = rng.standard_normal((DL, B, 5)).astype(module.dtype)
        feed["h0"], hx = h0, h0
        if module.mode == "LSTM":
            c0 = rng.standard_normal((DL, B, 5)).astype(module.dtype)
            feed["c0"], hx = c0, (h0, c0)
    if ragged is not None:
        lengths = rng.integers(1, T + 1, size=B).astype(np.int32)
        lengths[0] = T
        feed["lengths"] = lengths
    return feed, hx, lengths


def _rnnc_outputs(module, feed, hx, lengths):
    out, state = module(feed["input"], hx, lengths=lengths)
    return [out] + (list(state) if module.mode == "LSTM" else [state])


# Every class and option export carries: (mode, constructor keywords).
EXPORT_CONFIGS = [
    ("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}), ("GRU", {"reset_after": False}),
    ("LSTM", {}), ("LSTM", {"num_layers": 2}), ("GRU", {"num_layers": 3}),
    ("RNN", {"num_layers": 2, "bidirectional": True, "nonlinearity": "relu"}),
    ("GRU", {"bidirectional": True, "reset_after": False}),
    ("LSTM", {"num_layers": 3, "bidirectional": True}),
    ("LSTM", {"batch_first": True}), ("GRU", {"num_layers": 2, "batch_first": True,
                                              "bidirectional": True}),
    ("RNN", {"bias": False}), ("LSTM", {"bias": False, "num_layers": 2, "bidirectional": True}),
    ("RNN", {"reverse": True}), ("GRU", {"reverse": True, "num_layers": 2}),
    ("LSTM", {"reverse": True, "batch_first": True}),
]


@pytest.mark.parametrize("mode,kw", EXPORT_CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("initial_state,ragged", [(False, None), (True, "ragged")])
def test_export_agrees_with_onnxruntime_at_two_batch_and_time_sizes(mode, kw, initial_state,
                                                                    ragged):
    module = _module(mode, **kw)
    model = ronnx.export(module, initial_state=initial_state, lengths=ragged is not None)
    rng = np.random.default_rng(1)
    for T, B in ((7, 4), (3, 9)):
        feed, hx, lengths = _feed(module, rng, T, B, initial_state, ragged)
        got = _ort_run(model, feed)
        want = _rnnc_outputs(module, feed, hx, lengths)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_export_graph_has_the_documented_inputs_outputs_and_dynamic_axes():
    model = ronnx.export(rnnc.LSTM(3, 5, num_layers=2, batch_first=True, seed=0),
                         initial_state=True, lengths=True)
    g = model.graph
    assert [i.name for i in g.input] == ["input", "h0", "c0", "lengths"]
    assert [o.name for o in g.output] == ["output", "h_n", "c_n"]
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time", 3]
    assert g.input[3].type.tensor_type.elem_type == TensorProto.INT32
    assert [n.op_type for n in g.node].count("LSTM") == 2


def test_export_writes_the_file_it_returns(tmp_path):
    module = rnnc.GRU(3, 5, seed=0)
    model = ronnx.export(module, tmp_path / "gru.onnx")
    assert onnx.load(tmp_path / "gru.onnx") == model


def test_onnxruntime_writes_zeros_at_padded_steps_as_rnnc_does():
    module = rnnc.GRU(3, 5, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    out = _ort_run(ronnx.export(module, lengths=True),
                   {"input": x, "lengths": np.array([6, 2], np.int32)})[0]
    assert np.all(out[2:, 1] == 0) and np.all(out[:2, 1] != 0)


def _reference_outputs(model, feed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feed)


@pytest.mark.parametrize("mode,kw", [
    ("RNN", {"num_layers": 2}), ("GRU", {"reset_after": False, "bidirectional": True}),
    ("GRU", {"num_layers": 2}), ("LSTM", {"num_layers": 2, "bidirectional": True,
                                          "batch_first": True}),
    ("LSTM", {"bias": False})], ids=str)
def test_float64_export_agrees_with_the_onnx_reference_evaluator(mode, kw):
    # ONNX Runtime has no float64 RNN/GRU/LSTM kernels ("does not support double yet"); the
    # graph is valid ONNX and onnx's own evaluator runs it.
    module = _module(mode, dtype=np.float64, **kw)
    model = ronnx.export(module, initial_state=True)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    feed, hx, _ = _feed(module, np.random.default_rng(2), 6, 3, True, None)
    for g, w in zip(_reference_outputs(model, feed), _rnnc_outputs(module, feed, hx, None)):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


def test_float64_ragged_export_agrees_with_the_reference_evaluator_per_sequence():
    # onnx's evaluator ignores sequence_lens, so each sequence runs alone at its own length.
    module = rnnc.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    model = ronnx.export(module, lengths=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4], np.int32)
    out, (h_n, c_n) = module(x, lengths=lengths)
    for b, n in enumerate(lengths):
        alone = {"input": x[:n, b:b + 1], "lengths": np.array([n], np.int32)}
        y, h, c = _reference_outputs(model, alone)
        np.testing.assert_allclose(out[:n, b], y[:, 0], atol=1e-12)
        np.testing.assert_allclose(h_n[:, b], h[:, 0], atol=1e-12)
        np.testing.assert_allclose(c_n[:, b], c[:, 0], atol=1e-12)
    assert np.all(out[2:, 1] == 0)


def test_export_refuses_what_onnx_cannot_express():
    with pytest.raises(ValueError, match="proj_size=2.*ONNX's LSTM has no projection"):
        ronnx.export(rnnc.LSTM(3, 5, proj_size=2))
    with pytest.raises(TypeError, match="module must be an rnnc RNN, GRU or LSTM"):
        ronnx.export(rnnc.Linear(3, 5))
    with pytest.raises(ValueError, match=r"opset must be an integer in \[14, "):
        ronnx.export(rnnc.GRU(3, 5), opset=9)
    with pytest.raises(TypeError, match="initial_state"):
        ronnx.export(rnnc.GRU(3, 5), initial_state="yes")


def test_export_leaves_training_dropout_out():
    module = rnnc.GRU(3, 5, num_layers=2, dropout=0.5, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    got = _ort_run(ronnx.export(module), {"input": x})
    np.testing.assert_allclose(got[0], module.eval()(x)[0], atol=1e-5)


# --- load: the export round trip --------------------------------------------------------------

@pytest.mark.parametrize("mode,kw", EXPORT_CONFIGS[::2] + [EXPORT_CONFIGS[11]], ids=str)
def test_load_of_an_export_runs_as_the_module_and_gives_it_back(mode, kw, tmp_path):
    module = _module(mode, **kw)
    ronnx.export(module, tmp_path / "m.onnx", initial_state=True, lengths=True)
    session = ronnx.load(tmp_path / "m.onnx")
    feed, hx, lengths = _feed(module, np.random.default_rng(4), 5, 3, True, "ragged")
    want = _rnnc_outputs(module, feed, hx, lengths)
    for g, w in zip(session.run(None, feed), want):
        np.testing.assert_allclose(g, w, atol=1e-6)
    back = session.to_module()
    assert type(back) is type(module) and back._config() == module._config()
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)


def test_load_run_selects_outputs_by_name_as_onnxruntime():
    module = rnnc.LSTM(3, 5, seed=0)
    session = ronnx.load(ronnx.export(module).SerializeToString())
    x = np.ones((4, 2, 3), np.float32)
    (c_n,) = session.run(["c_n"], {"input": x})
    np.testing.assert_allclose(c_n, module(x)[1][1], atol=1e-6)
    assert session.input_names == ["input"] and session.output_names == ["output", "h_n", "c_n"]
    assert list(session.modules) == [n.name for n in session.model.graph.node
                                     if n.op_type == "LSTM"]


# --- load: PyTorch's exports ------------------------------------------------------------------

TORCH_CONFIGS = [("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
                 ("GRU", dict(num_layers=2)), ("GRU", dict(bidirectional=True, batch_first=True)),
                 ("RNN", dict(nonlinearity="relu", num_layers=3)),
                 ("RNN", dict(bidirectional=True, bias=False)), ("LSTM", dict(num_layers=3))]


@pytest.mark.parametrize("mode,kw", TORCH_CONFIGS, ids=str)
def test_load_of_torch_onnx_export_matches_torch_and_onnxruntime(mode, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = getattr(torch.nn, mode)(3, 5, **kw).eval()
    x = torch.randn(4, 6, 3)
    names = ["output", "h_n"] + (["c_n"] if mode == "LSTM" else [])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["input"],
                          output_names=names, dynamic_axes={"input": {0: "a", 1: "b"}})
    with torch.no_grad():
        out, state = net(x)
    want = [out.numpy()] + [s.numpy() for s in (state if mode == "LSTM" else [state])]
    session = ronnx.load(buf.getvalue())
    got = session.run(None, {"input": x.numpy()})
    by_ort = _ort_run(onnx.load_from_string(buf.getvalue()), {"input": x.numpy()})
    for g, w, o in zip(got, want, by_ort):
        np.testing.assert_allclose(g, w, atol=1e-5)
        np.testing.assert_allclose(g, o, atol=1e-5)
    module = session.to_module()
    assert module.batch_first == kw.get("batch_first", False)
    assert module.num_layers == kw.get("num_layers", 1)
    out2, state2 = module(x.numpy())
    np.testing.assert_allclose(out2, want[0], atol=1e-5)
    np.testing.assert_allclose(state2[0] if mode == "LSTM" else state2, want[1], atol=1e-5)


# --- load: the ONNX backend node cases ---------------------------------------------------------

BACKEND_PASS = ["test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
                "test_gru_batchwise", "test_gru_bidirectional", "test_lstm_defaults",
                "test_lstm_with_initial_bias", "test_lstm_batchwise", "test_lstm_bidirectional",
                "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias",
                "test_rnn_seq_length", "test_simple_rnn_batchwise",
                "test_simple_rnn_bidirectional", "test_gru_reverse", "test_lstm_reverse",
                "test_simple_rnn_reverse", "test_lstm_with_peepholes"]


@pytest.fixture(scope="module")
def backend_cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {c.name: c for c in cases if any(k in c.name for k in ("rnn", "gru", "lstm"))}


def test_backend_node_cases_are_the_eighteen_listed(backend_cases):
    assert sorted(backend_cases) == sorted(BACKEND_PASS)
    assert len(backend_cases) == 18


@pytest.mark.parametrize("name", BACKEND_PASS)
def test_backend_node_case_matches_its_expected_outputs(backend_cases, name):
    case = backend_cases[name]
    session = ronnx.load(case.model)
    for inputs, expected in case.data_sets:
        got = session.run(None, dict(zip(session.input_names, inputs)))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


# --- load: random single nodes against onnx's ReferenceEvaluator --------------------------------

def _node_model(rng, op, dtype, weights_as_inputs, relu=False, ragged=False, layout=None):
    """One random recurrent node with every attribute rnnc supports, and a feed for it."""
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    G, H, I = GATES[op], int(rng.integers(1, 6)), int(rng.integers(1, 5))
    T, B = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    bidirectional = bool(rng.integers(2))
    D = 2 if bidirectional else 1
    layout = int(rng.integers(2)) if layout is None else layout
    attributes = {"hidden_size": H}
    if bidirectional or rng.integers(2):
        attributes["direction"] = "bidirectional" if bidirectional else \
            str(rng.choice(["forward", "reverse"]))
    if layout or rng.integers(2):
        attributes["layout"] = layout
    if op == "GRU" and rng.integers(3):
        attributes["linear_before_reset"] = int(rng.integers(2))
    if relu:
        attributes["activations"] = ["Relu"] * D
    elif rng.integers(2):
        from rnnc.onnx._attributes import DEFAULT_ACTIVATIONS
        attributes["activations"] = DEFAULT_ACTIVATIONS[op] * D
    if op == "LSTM" and rng.integers(2):
        attributes["input_forget"] = 0
    values = {"X": rng.standard_normal((B, T, I) if layout else (T, B, I)),
              "W": rng.standard_normal((D, G * H, I)) * 0.5,
              "R": rng.standard_normal((D, G * H, H)) * 0.5}
    if rng.integers(2):
        values["B"] = rng.standard_normal((D, 2 * G * H)) * 0.5
    state_shape = (B, D, H) if layout else (D, B, H)
    if rng.integers(2):
        values["initial_h"] = rng.standard_normal(state_shape)
    if op == "LSTM" and rng.integers(2):
        values["initial_c"] = rng.standard_normal(state_shape)
    values = {k: v.astype(dtype) for k, v in values.items()}
    if ragged:
        values["sequence_lens"] = rng.integers(1, T + 1, size=B).astype(np.int32)
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c"][:6 + (op == "LSTM")]
    node_inputs = [n if n in values else "" for n in names]
    while node_inputs[-1] == "":
        node_inputs.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    constants = [] if weights_as_inputs else ["W", "R", "B"]
    graph = helper.make_graph(
        [helper.make_node(op, node_inputs, outputs, **attributes)], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in values.items() if k not in constants],
        [helper.make_tensor_value_info(n, elem, None) for n in outputs],
        [onnx.numpy_helper.from_array(values[k], k) for k in constants if k in values])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feed = {k: v for k, v in values.items() if k not in constants}
    return model, feed, attributes


@pytest.mark.parametrize("seed", range(24))
def test_random_node_matches_the_onnx_reference_evaluator(seed):
    rng = np.random.default_rng(seed)
    op = ["RNN", "GRU", "LSTM"][seed % 3]
    dtype = np.float64 if seed % 2 else np.float32
    model, feed, attributes = _node_model(rng, op, dtype, weights_as_inputs=seed % 4 < 2)
    want = _reference_outputs(model, feed)
    session = ronnx.load(model)
    got = session.run(None, feed)
    atol = 1e-12 if dtype == np.float64 else 1e-5
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape, attributes
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=str(attributes))
    if seed % 4 >= 2:           # constant weights: the node's module is there after load
        (module,) = session.modules.values()
        assert module.bidirectional == (attributes.get("direction") == "bidirectional")
        if op == "GRU":
            assert module.reset_after == bool(attributes.get("linear_before_reset", 0))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_random_ragged_and_relu_nodes_match_onnxruntime(op):
    # onnx's evaluator has no Relu for RNN and ignores sequence_lens (it runs every sequence
    # to the end): ONNX Runtime checks them.
    rng = np.random.default_rng(7)
    for i in range(4):
        model, feed, attributes = _node_model(rng, op, np.float32, weights_as_inputs=i % 2,
                                              relu=op == "RNN" and i < 2, ragged=True,
                                              layout=0)    # ORT has no layout=1 kernels
        for g, w in zip(ronnx.load(model).run(None, feed), _ort_run(model, feed)):
            np.testing.assert_allclose(g, w, atol=1e-5, err_msg=str(attributes))


# --- refusals and errors ----------------------------------------------------------------------

def _single_node(op, **attributes):
    H, G = 2, GATES[op]
    graph = helper.make_graph(
        [helper.make_node(op, ["X", "W", "R"], ["Y"], hidden_size=H, **attributes)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.zeros((1, G * H, 3), np.float32), "W"),
         onnx.numpy_helper.from_array(np.zeros((1, G * H, H), np.float32), "R")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op,attributes,message", [
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]},
     "LSTM attribute 'activations' with a cell-output function (h) other than the "
     "candidate's (g) is not supported by rnnc"),
    ("GRU", {"activations": ["Sigmoid", "Gelu"]},
     "GRU attribute 'activations' names 'Gelu', which is not one of ONNX's functions"),
    ("RNN", {"activation_alpha": [0.5]},
     "RNN attribute 'activation_alpha' is given without an 'activations' list"),
    ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"]},
     "with different functions per direction is not supported by rnnc"),
    ("RNN", {"direction": "bidirectional", "activations": ["LeakyRelu", "LeakyRelu"],
             "activation_alpha": [0.1, 0.2]},
     "with different functions per direction is not supported by rnnc"),
    ("GRU", {"peephole": 1}, "GRU attribute 'peephole' is not an ONNX GRU attribute"),
], ids=str)
def test_load_refuses_options_rnnc_lacks_naming_attribute_and_value(op, attributes, message):
    with pytest.raises(ronnx.NotSupportedError) as info:
        ronnx.load(_single_node(op, **attributes))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("op,attributes,expected", [
    ("LSTM", {"clip": 1.5}, {"clip": 1.5}),
    ("GRU", {"clip": 2.0}, {"clip": 2.0}),
    ("LSTM", {"input_forget": 1}, {"input_forget": True}),
    ("RNN", {"activations": ["Sigmoid"]}, {"nonlinearity": "sigmoid"}),
    ("GRU", {"activations": ["HardSigmoid", "Tanh"]},
     {"recurrent_activation": "HardSigmoid", "activation": "tanh"}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "LeakyRelu"],
              "activation_alpha": [0.25, 0.125, 0.125], "activation_beta": [0.375]},
     {"recurrent_activation": ("HardSigmoid", 0.25, 0.375), "activation": ("LeakyRelu", 0.125)}),
    ("RNN", {"activations": ["ScaledTanh"], "activation_alpha": [2.0]},
     {"nonlinearity": ("ScaledTanh", 2.0, 1.0)}),
], ids=str)
def test_load_maps_the_cell_options_onto_the_layer(op, attributes, expected):
    (module,) = ronnx.load(_single_node(op, **attributes)).modules.values()
    for name, value in expected.items():
        assert getattr(module, name) == value, name


def test_load_accepts_the_default_activations_spelled_out():
    model = _single_node("LSTM", activations=["Sigmoid", "Tanh", "Tanh"], input_forget=0)
    (module,) = ronnx.load(model).modules.values()
    assert module.mode == "LSTM"
    relu = ronnx.load(_single_node("RNN", activations=["Relu"]))
    assert next(iter(relu.modules.values())).nonlinearity == "relu"


def test_load_refuses_an_op_it_does_not_interpret_naming_it():
    model = _single_node("GRU")
    model.graph.node.append(helper.make_node("Erf", ["Y"], ["Z"], name="erf_node"))
    with pytest.raises(ronnx.NotSupportedError, match="node 'erf_node': ONNX op 'Erf' is not "
                                                      "supported by rnnc.onnx.load"):
        ronnx.load(model)
    with pytest.raises(TypeError, match="path_or_model must be a path, bytes or an "
                                        "onnx.ModelProto, got int"):
        ronnx.load(3)


def test_run_names_missing_inputs_and_unknown_outputs():
    session = ronnx.load(ronnx.export(rnnc.GRU(3, 5, seed=0), lengths=True))
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match=r"missing \['lengths'\]"):
        session.run(None, {"input": x})
    with pytest.raises(ValueError, match="output_names: 'c_n' is not an output"):
        session.run(["c_n"], {"input": x, "lengths": np.array([2], np.int32)})
    with pytest.raises(TypeError, match="input_feed must be a dict"):
        session.run(None, [x])


def test_to_module_says_why_a_graph_is_not_one_stack(backend_cases):
    with pytest.raises(ValueError, match="takes its weights from graph inputs"):
        ronnx.load(backend_cases["test_gru_defaults"].model).to_module()
    # A head after the stack: the graph's output is no longer the recurrent Y.
    model = ronnx.export(rnnc.GRU(3, 5, seed=0))
    out = model.graph.node[-2].output[0]
    assert out == "output"
    model.graph.node[-2].output[0] = "hidden"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((5, 2), np.float32),
                                                                "head"))
    model.graph.node.append(helper.make_node("MatMul", ["hidden", "head"], ["output"]))
    session = ronnx.load(model)
    with pytest.raises(ValueError, match="output 'output' is not the output Y"):
        session.to_module()
    x = np.ones((4, 2, 3), np.float32)
    gru = session.modules[next(iter(session.modules))]
    np.testing.assert_allclose(session.run(["output"], {"input": x})[0],
                               gru(x)[0] @ np.ones((5, 2), np.float32), atol=1e-5)


def test_import_rnnc_does_not_import_onnx():
    code = "import sys, rnnc; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_load_runs_empty_batches_and_sequences_of_an_export():
    # ONNX Runtime 1.32 aborts the process on these, so the expected shapes come from the spec:
    # Y (T, B, D*H); with T = 0 the final states are the zero initial states.
    session = ronnx.load(ronnx.export(rnnc.LSTM(3, 4, num_layers=2, bidirectional=True)))
    out, h_n, c_n = session.run(None, {"input": np.zeros((0, 5, 3), np.float32)})
    assert out.shape == (0, 5, 8) and h_n.shape == c_n.shape == (4, 5, 4)
    assert not h_n.any() and not c_n.any()
    out, h_n, c_n = session.run(None, {"input": np.zeros((6, 0, 3), np.float32)})
    assert out.shape == (6, 0, 8) and h_n.shape == (4, 0, 4)
