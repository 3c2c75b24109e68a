"""Cell options beyond PyTorch's cells (activations, clip, peepholes, coupled input and forget
gates): the NumPy reference's gradients against finite differences, the compiled options
kernel against the reference (forward, backward, lengths, both directions, stacks, streams),
ONNX Runtime through rnnc.onnx.export, and argument checking."""
import numpy as np
import pytest

import rnnc
import rnnc.reference as R
from rnnc._cell_options import CellSpec, parse_activation
from rnnc._engine import stack
from rnnc._engine.plan import OPTIONS
from rnnc.reference import backward as ref_backward
from rnnc.reference import forward as ref_forward

# Bounded activations keep the states bounded, so relative and absolute errors agree; the
# unbounded ones (linear, elu, softplus, leaky relu) go where they cannot blow up.
CASES = [
    ("RNN", dict(nonlinearity="sigmoid")),
    ("RNN", dict(nonlinearity="elu", clip=1.5)),
    ("RNN", dict(nonlinearity=("ScaledTanh", 1.3, 0.7))),
    ("RNN", dict(nonlinearity="softsign", clip=0.8)),
    ("GRU", dict(activation="softsign", recurrent_activation="hard_sigmoid")),
    ("GRU", dict(activation=("ScaledTanh", 1.2, 0.6), clip=0.9, reset_after=False)),
    ("GRU", dict(recurrent_activation=("HardSigmoid", 0.3, 0.45), clip=1.1)),
    ("LSTM", dict(peepholes=True)),
    ("LSTM", dict(input_forget=True, clip=1.2)),
    ("LSTM", dict(peepholes=True, input_forget=True, activation="softsign")),
    ("LSTM", dict(recurrent_activation="hard_sigmoid", activation=("ScaledTanh", 1.1, 0.9),
                  clip=1.4, peepholes=True)),
    ("LSTM", dict(peepholes=True, proj_size=2, clip=1.0)),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in CASES]


def _layers(mode, kw, dtype, **extra):
    m = getattr(rnnc, mode)(3, 4, dtype=dtype, seed=3, **kw, **extra)
    r = getattr(R, mode)(3, 4, dtype=dtype, seed=3, **kw, **extra)
    r.load_state_dict(m.state_dict())
    return m, r


def test_pytorch_cells_never_take_the_options_kernel():
    for mode in ("RNN", "GRU", "LSTM"):
        assert getattr(rnnc, mode)(3, 4)._cell is None
    assert rnnc.RNN(3, 4, nonlinearity="relu")._cell is None
    plan = stack.make_plan("LSTM", 3, 4, 0, True, False, 2, 5, np.float32, False, False,
                           cell=rnnc.LSTM(3, 4, peepholes=True)._cell)
    assert plan.strategy == OPTIONS


# --- the reference's gradients: central differences ----------------------------------------
def _fd_check(mode, kw):
    rng = np.random.default_rng(7)
    m = getattr(R, mode)(2, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=5,
                         **kw)
    params = {k: v.copy() for k, v in m.state_dict().items()}
    P = m.proj_size or m.hidden_size
    x = rng.normal(size=(4, 2, 2))
    lengths = np.array([4, 2])
    h0 = rng.normal(size=(4, 2, P)) * 0.5
    c0 = rng.normal(size=(4, 2, 3)) * 0.5 if mode == "LSTM" else None
    cell = m._cell
    opts = dict(num_layers=2, bidirectional=True, reset_after=m.reset_after,
                proj_size=m.proj_size, activations=cell.activations, clip=cell.clip or None,
                input_forget=cell.input_forget)
    go = rng.normal(size=(4, 2, 2 * P))
    gh = rng.normal(size=(4, 2, P))
    gc = rng.normal(size=(4, 2, 3)) if mode == "LSTM" else None

    def loss(p, x, h0, c0):
        out, h_n, c_n = ref_forward.run_stack(mode, p, x, h0, c0, lengths, **opts)
        total = np.sum(go * out) + np.sum(gh * h_n)
        return total + (np.sum(gc * c_n) if c_n is not None else 0)

    dx, dh0, dc0, grads = ref_backward.run_stack_backward(mode, params, x, h0, c0, lengths, go,
                                                          gh, gc, **opts)
    eps = 1e-6
    checks = [("x", x, dx), ("h0", h0, dh0)] + ([("c0", c0, dc0)] if c0 is not None else [])
    checks += [(k, params[k], grads[k]) for k in params]
    for name, arr, grad in checks:
        flat = arr.reshape(-1)
        for i in rng.choice(flat.size, size=min(flat.size, 6), replace=False):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss(params, x, h0, c0)
            flat[i] = keep - eps
            down = loss(params, x, h0, c0)
            flat[i] = keep
            want = (up - down) / (2 * eps)
            assert abs(grad.reshape(-1)[i] - want) <= 1e-6 * max(1, abs(want)), (name, i)


@pytest.mark.parametrize("mode,kw", CASES, ids=IDS)
def test_reference_gradients_match_finite_differences(mode, kw):
    _fd_check(mode, kw)


# --- the options kernel against the reference ------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("mode,kw", CASES, ids=IDS)
def test_options_kernel_matches_the_reference_forward_and_backward(mode, kw, dtype, tol):
    rng = np.random.default_rng(11)
    for extra in (dict(), dict(num_layers=2, bidirectional=True, batch_first=True),
                  dict(reverse=True)):
        m, r = _layers(mode, kw, dtype, **extra)
        shape = (5, 6, 3) if extra.get("batch_first") else (6, 5, 3)
        x = rng.normal(size=shape).astype(dtype)
        lengths = np.array([6, 1, 0, 4, 6])
        m.train()
        r.train()
        out, state = m(x, lengths=lengths)
        want, want_state = r(x, lengths=lengths)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
        hs = state if mode != "LSTM" else state[0]
        wh = want_state if mode != "LSTM" else want_state[0]
        np.testing.assert_allclose(hs, wh, rtol=tol, atol=tol)
        g = rng.normal(size=out.shape).astype(dtype)
        dx, _, grads = m.backward(g)
        rdx, _, rgrads = r.backward(g)
        np.testing.assert_allclose(dx, rdx, rtol=tol, atol=10 * tol)
        assert grads.keys() == rgrads.keys()
        for k in grads:
            np.testing.assert_allclose(grads[k], rgrads[k], rtol=tol, atol=10 * tol, err_msg=k)
        m.eval()
        r.eval()
        np.testing.assert_allclose(m(x, lengths=lengths)[0], r(x, lengths=lengths)[0],
                                   rtol=tol, atol=tol)


def test_every_activation_runs_compiled_as_the_reference_computes_it():
    names = ["tanh", "sigmoid", "relu", "hard_sigmoid", "linear", "softsign", "elu", "softplus",
             ("Affine", 0.5, -0.2), ("LeakyRelu", 0.2), ("ThresholdedRelu", 0.3),
             ("ScaledTanh", 1.5, 0.4), ("HardSigmoid", 0.25, 0.4), ("Elu", 0.7), "Softsign",
             "Softplus"]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 3)) * 2
    for name in names:
        m, r = _layers("RNN", dict(nonlinearity=name, clip=2.5), np.float64)
        np.testing.assert_allclose(m(x)[0], r(x)[0], rtol=1e-13, atol=1e-13, err_msg=str(name))
        m.train()
        r.train()
        m(x)
        r(x)
        g = np.ones((4, 3, 4))
        np.testing.assert_allclose(m.backward(g)[0], r.backward(g)[0], rtol=1e-12, atol=1e-12,
                                   err_msg=str(name))


def test_hard_sigmoid_is_keras_3s_and_hardsigmoid_onnxs():
    assert parse_activation("hard_sigmoid", "a") == ("HardSigmoid", 1 / 6, 0.5)
    assert parse_activation("HardSigmoid", "a") == ("HardSigmoid", 0.2, 0.5)
    assert parse_activation(("leakyrelu", 0.3), "a") == ("LeakyRelu", 0.3, 0.0)
    v = np.linspace(-4, 4, 17)
    want = np.minimum(np.maximum(v + 3, 0), 6) / 6          # Keras 3: relu6(x + 3) / 6
    got = ref_forward.apply_activation(parse_activation("hard_sigmoid", "a"), v)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_clip_bounds_the_pre_activations_and_cuts_their_gradient():
    # A linear RNN with clip c: h' = clip(a, -c, c) exactly, and no gradient where |a| > c.
    m = rnnc.RNN(1, 1, nonlinearity="linear", clip=0.5, bias=False, dtype=np.float64)
    m.load_state_dict({"weight_ih_l0": np.array([[1.0]]), "weight_hh_l0": np.array([[0.0]])})
    x = np.array([[[0.2]], [[0.9]], [[-3.0]]])
    m.train()
    out, _ = m(x)
    np.testing.assert_array_equal(out[:, 0, 0], [0.2, 0.5, -0.5])
    dx, _, _ = m.backward(np.ones_like(out))
    np.testing.assert_array_equal(dx[:, 0, 0], [1.0, 0.0, 0.0])


def test_input_forget_couples_the_gates_and_leaves_the_forget_weights_unused():
    m, _ = _layers("LSTM", dict(input_forget=True), np.float64)
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    out = m(x)[0]
    sd = m.state_dict()
    sd["weight_ih_l0"][4:8] = 7.0           # the forget gate's rows
    sd["bias_hh_l0"][4:8] = -3.0
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m(x)[0], out)
    m.train()
    m(x)
    _, _, grads = m.backward(np.ones_like(out))
    assert not grads["weight_ih_l0"][4:8].any() and not grads["bias_ih_l0"][4:8].any()


def test_peepholes_are_parameters_in_i_f_o_order_and_zero_peepholes_change_nothing():
    m = rnnc.LSTM(3, 4, peepholes=True, num_layers=2, bidirectional=True, seed=0,
                  dtype=np.float64)
    names = [n for n, _ in m.named_parameters() if n.startswith("weight_p")]
    assert names == ["weight_p_l0", "weight_p_l0_reverse", "weight_p_l1", "weight_p_l1_reverse"]
    assert m.weight_p_l0.shape == (12,)
    plain = rnnc.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0, dtype=np.float64)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("weight_p")}
    plain.load_state_dict(sd)
    m.load_state_dict({n: np.zeros(12) for n in names}, strict=False)
    x = np.random.default_rng(1).normal(size=(5, 2, 3))
    np.testing.assert_allclose(m(x)[0], plain(x)[0], rtol=1e-12, atol=1e-13)
    assert rnnc.LSTM(3, 4, peepholes=True, init="keras").weight_p_l0.any() == False  # noqa: E712


def test_stream_of_a_layer_with_options_gives_the_layer_results():
    for mode, kw in CASES[1::3]:
        m, _ = _layers(mode, kw, np.float64, num_layers=2)
        x = np.random.default_rng(4).normal(size=(6, 2, 3))
        out, state = m(x)
        s = m.stream(batch_size=2)
        ys = np.stack([s.step(xt) for xt in x])
        np.testing.assert_allclose(ys, out, rtol=1e-12, atol=1e-13)
        got = s.state[0] if mode == "LSTM" else s.state
        want = state[0] if mode == "LSTM" else state
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
        s.reset(s.state)
        with pytest.raises(ValueError, match="x must have shape"):
            s.step(np.zeros((3, 3)))


def test_save_load_and_repr_keep_the_options(tmp_path):
    pytest.importorskip("safetensors")
    m = rnnc.LSTM(3, 4, peepholes=True, clip=2.0, input_forget=True,
                  recurrent_activation=("HardSigmoid", 0.25, 0.5), activation="softsign")
    assert "peepholes=True" in repr(m) and "clip=2.0" in repr(m)
    rnnc.save(m, tmp_path / "m.safetensors")
    back = rnnc.load(tmp_path / "m.safetensors")
    assert repr(back) == repr(m)
    x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], m(x)[0])


@pytest.mark.parametrize("mode,kw", CASES, ids=IDS)
def test_export_with_options_runs_in_onnx_runtime_as_in_rnnc(mode, kw):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import rnnc.onnx
    if kw.get("proj_size"):
        with pytest.raises(ValueError, match="proj_size"):
            rnnc.onnx.export(getattr(rnnc, mode)(3, 4, **kw))
        return
    for extra in (dict(), dict(bidirectional=True, num_layers=2)):
        m = getattr(rnnc, mode)(3, 4, seed=2, **kw, **extra)
        model = rnnc.onnx.export(m, lengths=True)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        x = np.random.default_rng(3).normal(size=(6, 3, 3)).astype(np.float32)
        lengths = np.array([6, 2, 5], np.int32)
        got = session.run(None, {"input": x, "lengths": lengths})
        out, state = m(x, lengths=lengths)
        np.testing.assert_allclose(got[0], out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], state[0] if mode == "LSTM" else state,
                                   rtol=1e-5, atol=1e-5)
        back = rnnc.onnx.load(model)
        np.testing.assert_allclose(back.run(None, {"input": x, "lengths": lengths})[0], out,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(mode="GRU", activation="gelu"), ValueError, "activation must be one of"),
    (dict(mode="GRU", activation=3), TypeError, "activation must be a str or a tuple"),
    (dict(mode="LSTM", recurrent_activation=("LeakyRelu", 0.1, 0.2)), ValueError,
     "LeakyRelu takes 1 parameter"),
    (dict(mode="LSTM", activation=("Elu", float("nan"))), ValueError, "finite numbers"),
    (dict(mode="RNN", clip=0), ValueError, "clip must be None or a number > 0"),
    (dict(mode="RNN", clip=True), ValueError, "clip must be None or a number > 0"),
    (dict(mode="GRU", input_forget=True), TypeError, "unexpected keyword argument 'input_fo"),
    (dict(mode="RNN", peepholes=True), TypeError, "unexpected keyword"),
    (dict(mode="GRU", peepholes=True), TypeError, "unexpected keyword"),
    (dict(mode="LSTM", peepholes="yes"), TypeError, "peepholes must be a bool"),
], ids=str)
def test_bad_cell_options_are_refused_naming_the_argument(kwargs, error, message):
    kwargs = dict(kwargs)
    cls = getattr(rnnc, kwargs.pop("mode"))
    with pytest.raises(error, match=message):
        cls(3, 4, **kwargs)


def test_cellspec_of_the_defaults_is_none_and_of_an_option_is_set():
    assert rnnc.GRU(3, 4, activation="tanh", recurrent_activation="sigmoid")._cell is None
    spec = rnnc.GRU(3, 4, clip=1.0)._cell
    assert isinstance(spec, CellSpec) and spec.clip == 1.0


# ONNX's own nodes with the options, as another tool would write them, run by ONNX Runtime and
# by rnnc.onnx.load (onnx's ReferenceEvaluator ignores clip and the activation lists of GRU and
# LSTM, so ONNX Runtime is the oracle here).
NODE_OPTIONS = [
    ("LSTM", dict(clip=1.3, input_forget=1, activations=["HardSigmoid", "Softsign", "Softsign"],
                  activation_alpha=[0.3], activation_beta=[0.45]), True),
    ("LSTM", dict(activations=["Sigmoid", "LeakyRelu", "LeakyRelu"],
                  activation_alpha=[0.2, 0.2]), True),
    ("GRU", dict(clip=0.8, linear_before_reset=1,
                 activations=["Sigmoid", "ScaledTanh"], activation_alpha=[1.4],
                 activation_beta=[0.6]), False),
    ("GRU", dict(activations=["HardSigmoid", "Elu"], activation_alpha=[0.25, 0.9],
                 activation_beta=[0.5]), False),
    ("RNN", dict(clip=2.0, activations=["ThresholdedRelu"], activation_alpha=[0.1]), False),
    ("RNN", dict(activations=["Affine"], activation_alpha=[0.7], activation_beta=[0.05]), False),
]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("op,attributes,peepholes", NODE_OPTIONS, ids=str)
def test_onnx_nodes_with_options_run_as_onnx_runtime_runs_them(op, attributes, peepholes,
                                                               bidirectional):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import rnnc.onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    D, H, I, T, B = (2 if bidirectional else 1), 4, 3, 6, 3
    attributes = dict(attributes, hidden_size=H)
    if bidirectional:
        attributes["direction"] = "bidirectional"
        for key in ("activations", "activation_alpha", "activation_beta"):
            if key in attributes:
                attributes[key] = attributes[key] * 2
    weights = {"W": rng.uniform(-0.6, 0.6, (D, G * H, I)),
               "R": rng.uniform(-0.6, 0.6, (D, G * H, H)),
               "B": rng.uniform(-0.3, 0.3, (D, 2 * G * H))}
    inputs = ["X", "W", "R", "B", "sequence_lens"]
    if peepholes:
        weights["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H))
        inputs += ["", "", "P"]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    graph = helper.make_graph(
        [helper.make_node(op, inputs, outputs, **attributes)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feed = {"X": rng.normal(size=(T, B, I)).astype(np.float32),
            "sequence_lens": np.array([6, 2, 5], np.int32)}
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feed)
    got = rnnc.onnx.load(model).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_options_with_empty_sequences_and_batches(training):
    m, r = _layers("LSTM", dict(peepholes=True, clip=1.0), np.float64, bidirectional=True)
    m.train(training)
    r.train(training)
    for x, lengths in ((np.ones((4, 3, 3)), [0, 0, 0]), (np.ones((4, 0, 3)), []),
                       (np.ones((0, 2, 3)), [0, 0]), (np.ones((4, 3, 3)), [4, 0, 1])):
        out, (h, c) = m(x, lengths=lengths)
        want, (wh, wc) = r(x, lengths=lengths)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, wc, rtol=1e-12, atol=1e-12)
        if training:
            dx = m.backward(np.ones_like(out))[0]
            np.testing.assert_allclose(dx, r.backward(np.ones_like(out))[0], rtol=1e-12,
                                       atol=1e-12)


@pytest.mark.parametrize("kw", [dict(recurrent_activation="hard_sigmoid"),
                                dict(recurrent_activation=("LeakyRelu", 0.1),
                                     activation="elu"),
                                dict(activation=("ThresholdedRelu", 0.5), clip=2.0)], ids=str)
def test_nan_in_the_input_reaches_the_gradients_as_in_the_reference(kw):
    """A NaN at step 1 with the loss on step 0 only: the NaN derivatives the reference gives
    (0 * NaN) are the kernel's too, and the finite ones agree."""
    m, r = _layers("GRU", kw, np.float64)
    x = np.random.default_rng(3).normal(size=(2, 2, 3))
    x[1, 0, 1] = np.nan
    g = np.zeros((2, 2, 4))
    g[0] = 1.0
    for module in (m, r):
        module.train()
    out, want = m(x)[0], r(x)[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    _, _, grads = m.backward(g)
    _, _, expected = r.backward(g)
    for name in grads:
        np.testing.assert_array_equal(np.isnan(grads[name]), np.isnan(expected[name]), name)
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)


def test_cell_options_are_fixed_when_the_layer_is_made():
    m = rnnc.LSTM(3, 4, clip=1.0)
    for name, value in (("clip", 2.0), ("peepholes", True), ("activation", "relu"),
                        ("nonlinearity", "relu")):
        with pytest.raises(AttributeError, match=f"{name} is set when the layer is made"):
            setattr(m, name, value)
    assert m.clip == 1.0 and m._cell.clip == 1.0
