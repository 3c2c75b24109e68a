"""What users install: the compiled modules, their stubs, and the README's code."""
import ast
import importlib
import pathlib
import re

import numpy as np
import pytest

import rnnc

COMPILED = ["_blas", "_layer_job", "_rnn_kernel", "_gru_kernel", "_lstm_kernel", "_linear_kernel",
            "_parallel_forward", "_parallel_train", "_stream_kernel", "_options_kernel"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_module_is_an_extension_with_a_matching_stub(name):
    mod = importlib.import_module(f"rnnc._kernels.{name}")
    assert mod.__file__.endswith((".so", ".pyd")), mod.__file__
    stub = pathlib.Path(rnnc.__file__).parent / "_kernels" / f"{name}.pyi"
    assert stub.exists(), f"{stub} is not installed"
    declared = {n.name for n in ast.parse(stub.read_text()).body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public = {k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
              and getattr(v, "__module__", None) == mod.__name__}
    assert declared == public


def test_py_typed_is_installed():
    assert (pathlib.Path(rnnc.__file__).parent / "py.typed").exists()


def test_public_api():
    for name in rnnc.__all__:
        assert hasattr(rnnc, name)
    assert re.fullmatch(r"\d+\.\d+\.\d+", rnnc.__version__)


def _readme_blocks():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not next to the tests (installed elsewhere)")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    # The first block needs a torch model; the scikit-learn section has its own test
    # (tests/test_sklearn.py), skipped without scikit-learn.
    return [b for b in blocks if "torch_lstm" not in b and "rnnc.sklearn" not in b]


def _keras_importable():
    """Keras 3 with a backend (torch unless KERAS_BACKEND says otherwise) imports."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return False
    return keras.__version__.startswith("3")


def test_readme_examples_run_and_show_what_they_say(tmp_path, monkeypatch):
    import importlib.util
    import warnings
    monkeypatch.chdir(tmp_path)                 # the saving block writes a file
    has_safetensors = importlib.util.find_spec("safetensors") is not None
    has_onnx = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    has_dask = all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))
    has_keras = _keras_importable()
    ns = {}
    with warnings.catch_warnings():
        # No example hands probabilities to softmax_cross_entropy (it would warn).
        warnings.simplefilter("error", UserWarning)
        for block in _readme_blocks():
            if "rnnc.save(" in block and not has_safetensors:
                continue
            if "rnnc.onnx" in block and not has_onnx:
                continue
            if "rnnc.dask" in block and not has_dask:
                continue
            if "rnnc.keras" in block and not has_keras:
                continue
            exec(compile(block, "README.md", "exec"), ns)
            if "head = rnnc.Linear(64, 10" in block:
                # The vanilla model block: logits for every step, and their loss.
                assert ns["logits"].shape == (100, 8, 10) and np.isfinite(ns["loss"])
    if has_onnx:
        # The ONNX block: ONNX Runtime and rnnc's own run of the exported graph agree.
        np.testing.assert_allclose(ns["out_ort"], ns["out_rnnc"], atol=1e-5)
        assert type(ns["same"]) is rnnc.LSTM and ns["same"].num_layers == 2
    if has_keras:
        # The Keras block: the converted model and layer give Keras' outputs.
        np.testing.assert_allclose(ns["probs"], ns["probs_keras"], atol=1e-6)
        np.testing.assert_allclose(ns["out_k"][:, ::-1], ns["y_keras"], atol=1e-6)
        np.testing.assert_allclose(ns["h_k"][0], ns["h_keras"], atol=1e-6)
    if has_safetensors:
        assert type(ns["model"]) is rnnc.Sequential and len(ns["model"]) == 2
    # The training block: a classifier over every step, and a layer's input gradient.
    assert ns["logits"].shape == (100, 8, 5)
    assert ns["dx"].shape == ns["x"].shape and np.isfinite(ns["loss"])
    # Models from parts: one prediction per ragged sequence; a gradient from h_n alone.
    assert ns["pred"].shape == (200,) and ns["padded"].shape[1:] == (200, 32)
    assert ns["dx_h"].shape == ns["padded"].shape and np.isfinite(ns["ce"])


def test_linear_activation_codes_match_the_kernel():
    from rnnc import linear
    from rnnc._kernels import _linear_kernel
    assert linear.ACTIVATIONS == _linear_kernel.ACTIVATIONS


def test_import_does_not_load_scipy_linalg():
    # The kernels (and with them scipy.linalg) load on first use, keeping `import rnnc` light.
    import subprocess
    import sys
    code = "import sys, rnnc; print('scipy.linalg' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "False"
