"""python -m rnnc demo: the adding-problem data, the model's gradients, the vanishing-gradient
measure and a --quick run end to end (needs the demo extras, tqdm and matplotlib)."""
import json
import sys

import numpy as np
import pytest

from rnnc import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_adding_batch_has_two_markers_and_their_sum_as_target():
    T, B = 40, 16
    x, y = demo.adding_batch(np.random.default_rng(0), T, B)
    assert x.shape == (T, B, 2) and y.shape == (B, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert np.all((x[:, :, 0] >= 0) & (x[:, :, 0] <= 1))
    markers = x[:, :, 1]
    assert set(np.unique(markers)) <= {0.0, 1.0}
    np.testing.assert_array_equal(markers.sum(axis=0), 2)
    for b in range(B):
        first, second = np.nonzero(markers[:, b])[0]
        assert first < T // 10 and second >= T // 2
        np.testing.assert_allclose(y[b, 0], x[first, b, 0] + x[second, b, 0], rtol=1e-6)


@pytest.mark.parametrize("cell", demo.CELLS)
def test_model_input_gradient_matches_finite_differences(cell):
    # The wiring behind gradient_norms: a loss on h_n only, backward through the head and the
    # recurrent layer, gives dL_b/dx_b<t> for every step.
    T, B = 6, 3
    m = demo.last_step_regressor(cell, 5, forget_bias=1.0, dtype=np.float64, seed=3)
    x, y = demo.adding_batch(np.random.default_rng(1), T, B, np.float64)

    def loss(xx):
        m.eval()
        return float(np.sum((m(xx) - y) ** 2))

    m.train()
    dx, _, _ = m.backward(2.0 * (m(x) - y))
    eps = 1e-6
    for t, b, f in [(0, 0, 0), (0, 1, 1), (T // 2, 2, 0), (T - 1, 0, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[t, b, f] += eps
        xm[t, b, f] -= eps
        numeric = (loss(xp) - loss(xm)) / (2 * eps)
        np.testing.assert_allclose(dx[t, b, f], numeric, rtol=1e-5, atol=1e-9)


def test_gradient_norms_vanish_faster_for_the_vanilla_rnn_than_for_the_lstm():
    T = 20
    norms = {cell: demo.gradient_norms(cell, T, hidden_size=16, batch_size=8, seed=0)
             for cell in ("RNN", "LSTM")}
    for n in norms.values():
        assert n.shape == (T,) and np.all(np.isfinite(n)) and np.all(n > 0)
    ratio = {cell: demo.decay_ratio(n) for cell, n in norms.items()}
    # Over 19 steps the RNN keeps ~1e-5 of its gradient, the LSTM (forget bias +1) ~1e-2.
    assert ratio["RNN"] < 1e-3
    assert ratio["RNN"] * 10 < ratio["LSTM"]
    assert demo.horizon(norms["RNN"]) < demo.horizon(norms["LSTM"])


def test_gradient_norms_of_a_given_model_use_its_weights():
    model = demo.last_step_regressor("GRU", 8, seed=5)
    fresh = demo.gradient_norms("GRU", 12, hidden_size=8, batch_size=4, seed=5)
    np.testing.assert_allclose(
        demo.gradient_norms("GRU", 12, batch_size=4, seed=5, model=model), fresh, rtol=1e-5)
    for _, p in model.named_parameters():
        p *= 2
    assert not np.allclose(demo.gradient_norms("GRU", 12, batch_size=4, seed=5, model=model),
                           fresh)


def test_quick_run_writes_plots_and_shows_the_vanishing_gradient(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    assert demo.main(["--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("learning_curves.png", "gradient_norms.png"):
        path = tmp_path / name
        assert path.is_file() and str(path) in printed
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
        assert data[12:16] == b"IHDR"
    summary = json.loads((tmp_path / "results.json").read_text())
    assert {(r["cell"], r["T"]) for r in summary["results"]} == {
        (c, T) for c in demo.CELLS for T in demo.QUICK["lengths"]}
    for r in summary["results"]:
        assert np.isfinite(r["test_mse"]) and 0 <= r["accuracy"] <= 1 and r["steps_per_s"] > 0
    g = summary["gradients"]
    assert g["T"] == max(demo.QUICK["lengths"])
    assert g["RNN"]["ratio_init"] * 10 < g["LSTM"]["ratio_init"]
    assert g["RNN"]["horizon_init"] < g["LSTM"]["horizon_init"]
    assert "Vanishing gradients" in printed and "test MSE" in printed


def test_missing_extras_exit_2_with_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)      # makes `import tqdm` raise ImportError
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 2
    assert 'pip install "rnnc[demo]"' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        demo.main(["--lengths", "1"])
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])


def test_fallback_training_tools_match_rnnc_optim_and_losses():
    # The demo's own Adam / clipping / MSE, used when rnnc.optim or rnnc.losses is missing,
    # train exactly like the library's.
    pytest.importorskip("rnnc.optim")
    pytest.importorskip("rnnc.losses")
    fallback = (demo._Adam, demo._clip_grad_norm, demo._mse, "fallback")
    kw = dict(hidden_size=8, steps=30, batch_size=8, seed=0, test_size=50, clip=0.05)
    for cell in ("RNN", "LSTM"):
        lib = demo.train_one(cell, 8, tools=demo.training_tools(), **kw)
        own = demo.train_one(cell, 8, tools=fallback, **kw)
        np.testing.assert_allclose(own["losses"], lib["losses"], rtol=1e-4, atol=1e-6)
