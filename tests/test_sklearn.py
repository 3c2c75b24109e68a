"""rnnc.sklearn: scikit-learn's estimator checks, the network's gradients (finite differences,
float64), the X forms, training behaviour (MLPClassifier's rules), threads, and the
meta-estimators (Pipeline, GridSearchCV with two processes, cross_val_score, clone, pickle,
joblib). Skipped without scikit-learn (``pip install ".[sklearn]"``)."""
import doctest
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import joblib  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import (GridSearchCV, cross_val_score,  # noqa: E402
                                     train_test_split)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import rnnc  # noqa: E402
from rnnc import losses  # noqa: E402
from rnnc.sklearn import SequenceClassifier, SequenceEncoder, SequenceRegressor  # noqa: E402
from rnnc.sklearn import _estimators, _network  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def ragged(rng, n, lengths=(5, 31), features=1):
    return [rng.standard_normal((int(t), features)) for t in rng.integers(*lengths, size=n)]


# -- scikit-learn's estimator checks ------------------------------------------------------------
# Small networks that still learn the checks' toy problems (training accuracy > 0.83 on blobs,
# R^2 > 0.5 on a regression of 10 columns), in float32 (the default) and float64 with other
# cells and poolings.
CHECKED = [
    SequenceClassifier(hidden_size=8, max_iter=50, learning_rate_init=1e-2, random_state=0),
    SequenceRegressor(hidden_size=16, max_iter=100, learning_rate_init=1e-2, random_state=0),
    SequenceEncoder(hidden_size=8, random_state=0),
    SequenceClassifier(cell="gru", hidden_size=8, bidirectional=True, pooling="mean",
                       max_iter=50, learning_rate_init=1e-2, dtype="float64", random_state=0),
    SequenceRegressor(cell="gru", hidden_size=16, pooling="max", max_iter=100,
                      learning_rate_init=1e-2, dtype="float64", random_state=0),
    SequenceEncoder(cell="rnn", hidden_size=8, num_layers=2, pooling="max", dtype="float64",
                    random_state=0),
]

# Every check declared not applicable, by estimator dtype, and why (the estimators say it
# through _expected_failed_checks, which parametrize_with_checks takes below).
SUBSET_REASON = re.compile(r"float32 .* last bit .* batch size")
DECLARED = {"float32": {"check_methods_subset_invariance"}, "float64": set()}


def _expected(estimator):
    return estimator._expected_failed_checks()


@QUIET
@parametrize_with_checks(CHECKED, expected_failed_checks=_expected)
def test_passes_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", CHECKED, ids=lambda e: f"{type(e).__name__}-{e.dtype}")
def test_declared_inapplicable_checks_are_listed_with_their_reason(estimator):
    declared = estimator._expected_failed_checks()
    assert set(declared) == DECLARED[estimator.dtype]
    for reason in declared.values():
        assert SUBSET_REASON.search(reason), reason


def test_import_rnnc_does_not_import_sklearn():
    code = "import sys, rnnc; print('sklearn' in sys.modules, 'rnnc.sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent)
    assert out.stdout.split() == ["False", "False"]


# -- the network: pooling and gradients ----------------------------------------------------------
def _net(cell, pooling, bidirectional, num_layers=1, n_outputs=3, seed=0):
    return _network.make_network(cell, 2, 4, num_layers, bidirectional, 0.0, pooling,
                                 n_outputs, np.float64, seed)


def _padded(seqs):
    return rnnc.pad_sequences(seqs, dtype=np.float64)


@pytest.mark.parametrize("pooling, mode", [("last", "state"), ("mean", "mean"), ("max", "max")])
def test_the_network_is_a_sequential_of_public_modules(pooling, mode):
    net = _net("gru", pooling, True, n_outputs=3)
    assert type(net) is rnnc.Sequential and len(net) == 3
    assert isinstance(net[0], rnnc.GRU) and net[0].bidirectional
    assert isinstance(net[1], rnnc.Pool) and net[1].mode == mode
    assert isinstance(net[2], rnnc.Linear) and (net[2].in_features, net[2].out_features) \
        == (8, 3)
    encoder = _net("lstm", pooling, False, n_outputs=0)
    assert len(encoder) == 2 and isinstance(encoder[1], rnnc.Pool)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_pooled_features_match_each_sequence_run_alone(cell, pooling, bidirectional):
    # The independent computation: every sequence through the layer on its own (no padding, no
    # lengths), pooled with NumPy from its outputs and final state.
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((t, 2)) for t in (7, 1, 4, 7, 2)]
    net = _net(cell, pooling, bidirectional, num_layers=2, n_outputs=0)
    features = net(*_padded(seqs))
    H = 4
    for b, s in enumerate(seqs):
        out, state = net[0](s[:, None, :])
        h_n = state[0] if cell == "lstm" else state
        if pooling == "last":
            expected = np.concatenate([h_n[-2 if bidirectional else -1, 0]]
                                      + ([h_n[-1, 0]] if bidirectional else []))
            # The forward half is the output at the last step, the reverse half at step 0.
            np.testing.assert_allclose(expected[:H], out[-1, 0, :H], rtol=1e-12, atol=1e-14)
            if bidirectional:
                np.testing.assert_allclose(expected[H:], out[0, 0, H:], rtol=1e-12, atol=1e-14)
        elif pooling == "mean":
            expected = out[:, 0].mean(axis=0)
        else:
            expected = out[:, 0].max(axis=0)
        np.testing.assert_allclose(features[b], expected, rtol=1e-12, atol=1e-14)


def _numeric_gradient(f, p, index, eps=1e-6):
    old = p[index]
    p[index] = old + eps
    up = f()
    p[index] = old - eps
    down = f()
    p[index] = old
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_network_gradients_match_finite_differences(cell, pooling, bidirectional):
    # float64, ragged lengths (padding masked): a softmax cross-entropy on the head's outputs,
    # backward through the head, the pooling and two recurrent layers.
    rng = np.random.default_rng(2)
    seqs = [rng.standard_normal((t, 2)) for t in (6, 2, 5, 1)]
    x, lengths = _padded(seqs)
    labels = np.array([0, 2, 1, 2])
    net = _net(cell, pooling, bidirectional, num_layers=2, seed=3)

    def loss():
        net.eval()
        return losses.softmax_cross_entropy(net(x, lengths), labels)[0]

    net.train()
    net.zero_grad()
    _, grad = losses.softmax_cross_entropy(net(x, lengths), labels)
    net.backward(grad)
    grads = net.grads
    checked = 0
    for name, p in net.named_parameters():
        for index in map(tuple, rng.integers(0, p.shape, size=(3, p.ndim))):
            numeric = _numeric_gradient(loss, p, index)
            np.testing.assert_allclose(grads[name][index], numeric, rtol=1e-5, atol=1e-8,
                                       err_msg=f"{name}{list(index)}")
            checked += 1
    assert checked == 3 * len(net.named_parameters())


def test_l2_penalty_gradient_matches_finite_differences():
    clf = SequenceClassifier(alpha=0.3)
    net = _net("gru", "last", False)
    net.zero_grad()
    batch_n = 5

    def penalty():
        return 0.5 * clf.alpha * sum(float(np.sum(p * p)) for name, p in net.named_parameters()
                                     if ".weight" in name) / batch_n

    value = clf._add_l2(net, batch_n)
    assert value == pytest.approx(penalty(), rel=1e-12)
    for name, p in net.named_parameters():
        index = (0,) * p.ndim
        expected = _numeric_gradient(penalty, p, index) if ".weight" in name else 0.0
        assert net.grads[name][index] == pytest.approx(expected, rel=1e-6, abs=1e-12), name


# -- X forms -------------------------------------------------------------------------------------
@QUIET
def test_the_three_forms_of_x_give_the_same_network_input():
    rng = np.random.default_rng(0)
    X2 = rng.standard_normal((30, 6))
    y = (X2.sum(axis=1) > 0).astype(int)
    kw = dict(hidden_size=4, max_iter=2, random_state=0, dtype="float64")
    p2 = SequenceClassifier(**kw).fit(X2, y).predict_proba(X2)
    p3 = SequenceClassifier(**kw).fit(X2[:, :, None], y).predict_proba(X2[:, :, None])
    plist = SequenceClassifier(**kw).fit(list(X2[:, :, None]), y).predict_proba(
        list(X2[:, :, None]))
    np.testing.assert_array_equal(p2, p3)
    np.testing.assert_array_equal(p2, plist)


@QUIET
def test_n_features_in_is_columns_for_2d_and_features_per_step_for_sequences():
    rng = np.random.default_rng(0)
    y = np.arange(12) % 2
    clf = SequenceClassifier(hidden_size=4, max_iter=1, random_state=0)
    clf.fit(rng.standard_normal((12, 7)), y)
    assert (clf.n_features_in_, clf.input_size_) == (7, 1)
    with pytest.raises(ValueError, match="X has 5 features, but SequenceClassifier is "
                                         "expecting 7 features"):
        clf.predict(rng.standard_normal((3, 5)))
    assert clf.predict(rng.standard_normal((3, 11, 1))).shape == (3,)   # any length as 3-D
    clf.fit(rng.standard_normal((12, 9, 3)), y)
    assert (clf.n_features_in_, clf.input_size_) == (3, 3)
    assert clf.predict(rng.standard_normal((2, 4, 3))).shape == (2,)
    assert clf.predict(ragged(rng, 4, features=3)).shape == (4,)
    with pytest.raises(ValueError, match="X has 2 features per step, but SequenceClassifier "
                                         "is expecting 3"):
        clf.predict(rng.standard_normal((2, 4, 2)))
    with pytest.raises(ValueError, match="has 1 features per step.*expecting 3"):
        clf.predict(rng.standard_normal((2, 4)))
    clf.fit(ragged(rng, 12, features=2), y)
    assert (clf.n_features_in_, clf.input_size_) == (2, 2)


@QUIET
def test_ragged_predictions_do_not_depend_on_the_rest_of_the_batch():
    # Padding is masked through lengths: each sequence's prediction is the one it gets alone.
    rng = np.random.default_rng(0)
    X = ragged(rng, 40, features=2)
    y = rng.integers(0, 3, size=40)
    for pooling in ("last", "mean", "max"):
        clf = SequenceClassifier(hidden_size=6, bidirectional=True, pooling=pooling,
                                 max_iter=2, dtype="float64", random_state=0).fit(X, y)
        together = clf.predict_proba(X)
        alone = np.concatenate([clf.predict_proba(x[None]) for x in X])
        np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-14)


def test_a_1d_object_array_of_sequences_reads_as_the_list():
    rng = np.random.default_rng(1)
    X = ragged(rng, 20, features=2)
    y = rng.integers(0, 2, size=20)
    clf = SequenceClassifier(hidden_size=4, max_iter=2, dtype="float64", random_state=0).fit(X, y)
    objects = np.empty(len(X), dtype=object)
    objects[:] = X
    np.testing.assert_array_equal(clf.predict_proba(objects), clf.predict_proba(X))
    same = np.empty(3, dtype=object)
    same[:] = [x[:4] for x in X[:3]]                    # equal lengths: stacked as 3-D
    np.testing.assert_array_equal(clf.predict_proba(same),
                                  clf.predict_proba(np.stack([x[:4] for x in X[:3]])))


def test_univariate_ragged_lists_are_read_as_one_feature_per_step():
    X = [np.arange(3.0), np.arange(5.0), np.arange(2.0)]
    enc = SequenceEncoder(hidden_size=3, random_state=0, dtype="float64").fit(X)
    assert enc.input_size_ == 1 and enc.n_features_in_ == 1
    np.testing.assert_array_equal(enc.transform(X), enc.transform([x[:, None] for x in X]))


@pytest.mark.parametrize("bad, error, match", [
    ("sparse", TypeError, "sparse"),
    ("sparse_in_list", TypeError, "sparse"),
    ("empty_sequence", ValueError, r"X\[1\] has 0 steps"),
    ("mixed_features", ValueError, r"X\[1\] has 3 features per step, X\[0\] has 2"),
    ("nan_in_list", ValueError, "NaN"),
    ("four_d", ValueError, r"X must be 2-D .* got a 4-D array of shape \(2, 3, 4, 5\)"),
    ("one_d", ValueError, r"X must be 2-D .* got a 1-D array .* Reshape your data"),
])
def test_bad_x_is_refused_with_a_message_naming_it(bad, error, match):
    import scipy.sparse
    rng = np.random.default_rng(0)
    X = {
        "sparse": scipy.sparse.csr_matrix(np.eye(4)),
        "sparse_in_list": [scipy.sparse.csr_matrix(np.eye(3)), np.ones((2, 3))],
        "empty_sequence": [np.ones((3, 2)), np.ones((0, 2))],
        "mixed_features": [np.ones((3, 2)), np.ones((4, 3))],
        "nan_in_list": [np.ones((3, 2)), np.full((4, 2), np.nan)],
        "four_d": rng.standard_normal((2, 3, 4, 5)),
        "one_d": np.ones(4),
    }[bad]
    with pytest.raises(error, match=match):
        SequenceEncoder(hidden_size=2).fit(X)


# -- parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("param, value, error", [
    ("cell", "LSTMX", ValueError), ("hidden_size", 0, ValueError),
    ("hidden_size", 2.5, TypeError), ("num_layers", 0, ValueError),
    ("bidirectional", 1, TypeError), ("dropout", 1.0, ValueError),
    ("pooling", "sum", ValueError), ("max_iter", 0, ValueError),
    ("batch_size", "big", ValueError), ("batch_size", 0, ValueError),
    ("learning_rate_init", 0.0, ValueError), ("solver", "lbfgs", ValueError),
    ("momentum", 1.5, ValueError), ("alpha", -1.0, ValueError), ("clip", 0.0, ValueError),
    ("shuffle", "yes", TypeError), ("early_stopping", None, TypeError),
    ("validation_fraction", 1.0, ValueError), ("n_iter_no_change", 0, ValueError),
    ("tol", -1e-3, ValueError), ("warm_start", 0, TypeError), ("dtype", "float16", ValueError),
    ("n_threads", 0, ValueError), ("verbose", "loud", TypeError),
])
def test_bad_parameters_are_refused_by_fit_naming_the_parameter(param, value, error):
    clf = SequenceClassifier(**{param: value})        # __init__ and set_params never check
    assert clf.get_params()[param] is value
    with pytest.raises(error, match=rf"^{param} must "):
        clf.fit(np.ones((4, 3)), [0, 1, 0, 1])


# -- training behaviour --------------------------------------------------------------------------
@QUIET
def test_same_random_state_gives_the_same_model_and_another_a_different_one():
    rng = np.random.default_rng(0)
    X, y = ragged(rng, 30), rng.integers(0, 2, size=30)
    kw = dict(hidden_size=5, max_iter=3, dropout=0.2, num_layers=2)
    a = SequenceClassifier(random_state=1, **kw).fit(X, y).predict_proba(X)
    b = SequenceClassifier(random_state=1, **kw).fit(X, y).predict_proba(X)
    c = SequenceClassifier(random_state=2, **kw).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_without_early_stopping_the_training_loss_decides_and_max_iter_warns():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5, 2)), rng.integers(0, 2, size=40)
    clf = SequenceClassifier(hidden_size=4, max_iter=4, tol=0.0, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(4\)"):
        clf.fit(X, y)
    assert clf.n_iter_ == 4 == len(clf.loss_curve_)
    assert clf.t_ == 4 * 40
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.loss_ == clf.loss_curve_[-1]
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    # The epoch's loss is the mean over its minibatches (weighted by size) of the
    # cross-entropy plus the L2 term; at lr 0 it is the loss of the initial network.
    frozen = SequenceClassifier(hidden_size=4, max_iter=1, learning_rate_init=1e-300,
                                alpha=0.0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        frozen.fit(X, y)
    expected = losses.softmax_cross_entropy(
        frozen.network_(np.ascontiguousarray(X.transpose(1, 0, 2), dtype=np.float32)), y)[0]
    assert frozen.loss_curve_[0] == pytest.approx(expected, rel=1e-5)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_n_iter_no_change():
    rng = np.random.default_rng(0)
    X, y = ragged(rng, 120), rng.integers(0, 2, size=120)   # labels are noise: no progress
    clf = SequenceClassifier(hidden_size=4, max_iter=200, early_stopping=True,
                             n_iter_no_change=3, learning_rate_init=1e-2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)     # it stops before max_iter
        clf.fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ == len(clf.loss_curve_) < 200
    assert clf.best_validation_score_ == max(scores) and clf.best_loss_ is None
    best = scores.index(max(scores))
    # MLPClassifier's rule: stop once n_iter_no_change + 1 epochs in a row did not beat the
    # best so far by tol (accuracies on 12 sequences move by 1/12 > tol, so the last epoch
    # that beat it is the best one).
    assert clf.n_iter_ - 1 - best == clf.n_iter_no_change + 1


@QUIET
def test_early_stopping_restores_the_weights_of_the_best_epoch():
    rng = np.random.default_rng(0)
    X = ragged(rng, 200)
    y = np.array([int(x.sum() > 0) for x in X])
    clf = SequenceClassifier(cell="gru", hidden_size=8, max_iter=15, early_stopping=True,
                             validation_fraction=0.2, learning_rate_init=3e-2,
                             n_iter_no_change=50, random_state=0).fit(X, y)
    # The same split as fit: the validation indices come from the estimator's RandomState
    # right after the network's seed was drawn.
    state = np.random.RandomState(0)
    state.randint(np.iinfo(np.int32).max)
    _, val = train_test_split(np.arange(200), test_size=0.2, random_state=state, stratify=y)
    assert clf.score([X[i] for i in val], y[val]) == pytest.approx(clf.best_validation_score_)


@QUIET
def test_warm_start_goes_on_from_the_fitted_weights():
    rng = np.random.default_rng(0)
    X = ragged(rng, 100)
    y = np.array([int(x.sum() > 0) for x in X])
    clf = SequenceClassifier(cell="gru", hidden_size=8, max_iter=5, learning_rate_init=1e-2,
                             warm_start=True, random_state=0).fit(X, y)
    first = list(clf.loss_curve_)
    weights = clf.network_.state_dict()
    clf.fit(X, y)
    assert clf.loss_curve_[:5] == first and len(clf.loss_curve_) == 10 and clf.n_iter_ == 10
    assert clf.loss_curve_[5] < first[0]
    cold = clone(clf).set_params(warm_start=False).fit(X, y)
    assert cold.loss_curve_ == first                 # anew: the same start as the first fit
    assert any(not np.array_equal(weights[k], v) for k, v in clf.network_.state_dict().items())
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same "
                                         "classes"):
        clf.fit(X, np.where(y == 1, 2, 0))


@QUIET
def test_clip_bounds_the_norm_over_all_of_the_networks_gradients(monkeypatch):
    norms = []
    step = rnnc.optim.Adam.step

    def recording_step(self):
        # The global norm over every gradient the optimizer is about to apply: all of the
        # network's parameters (the test below checks that they are all in it).
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        norms.append(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads
                                 if g is not None)))
        step(self)

    monkeypatch.setattr(rnnc.optim.Adam, "step", recording_step)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6, 2)), rng.integers(0, 3, size=40)
    clf = SequenceClassifier(hidden_size=8, max_iter=3, batch_size=10, clip=1e-3,
                             random_state=0).fit(X, y)
    assert len(norms) == 12 and max(norms) <= 1e-3 * (1 + 1e-5)
    # The optimizer's parameters are the whole network's, each once.
    optimized = [p.array for group in clf._optimizer.param_groups for p in group["params"]]
    network = clf.network_.parameters()
    assert len(optimized) == len(network) == 6
    assert all(any(a is b for b in network) for a in optimized)
    norms.clear()
    SequenceClassifier(hidden_size=8, max_iter=1, batch_size=10, random_state=0).fit(X, y)
    assert min(norms) > 1e-2                      # what the clipping cut down


@QUIET
def test_sgd_with_momentum_lowers_the_training_loss():
    rng = np.random.default_rng(0)
    X = ragged(rng, 100)
    y = np.array([int(x.sum() > 0) for x in X])
    clf = SequenceClassifier(cell="gru", hidden_size=8, solver="sgd", momentum=0.9,
                             learning_rate_init=0.05, max_iter=10, random_state=0).fit(X, y)
    assert clf.loss_curve_[-1] < 0.8 * clf.loss_curve_[0]
    assert isinstance(clf._optimizer, rnnc.optim.SGD) and clf._optimizer.momentum == 0.9


def test_classifier_partial_fit_needs_classes_first_and_runs_one_epoch_per_call():
    rng = np.random.default_rng(0)
    X, y = ragged(rng, 30), rng.integers(0, 3, size=30)
    clf = SequenceClassifier(hidden_size=4, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:10], np.zeros(10, int), classes=[0, 1, 2])
    clf.partial_fit(X[10:], y[10:])
    assert clf.n_iter_ == 2 and clf.t_ == 30 and len(clf.loss_curve_) == 2
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict_proba(X).shape == (30, 3)
    with pytest.raises(ValueError, match=r"y has labels not in classes_"):
        clf.partial_fit(X[:2], [0, 5])
    with pytest.raises(ValueError, match="is not the same as on the first call"):
        clf.partial_fit(X[:2], [0, 1], classes=[0, 1])
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.set_params(early_stopping=True).partial_fit(X, y)


@QUIET
def test_regressor_predicts_the_shape_of_y_and_learns_a_sum_over_each_sequence():
    rng = np.random.default_rng(0)
    X = ragged(rng, 300, lengths=(3, 12))
    target = np.array([x.mean() for x in X])
    y2 = np.stack([target, -2 * target], axis=1)
    reg = SequenceRegressor(cell="gru", hidden_size=16, pooling="mean", max_iter=40,
                            learning_rate_init=1e-2, random_state=0)
    assert reg.fit(X, target).predict(X).shape == (300,)
    assert reg.score(X, target) > 0.9
    pred = reg.fit(X, y2).predict(X)
    assert pred.shape == (300, 2) and pred.dtype == np.float64
    assert reg.n_outputs_ == 2 and reg.score(X, y2) > 0.9
    with pytest.raises(ValueError, match="y has 1 targets, but SequenceRegressor was fitted "
                                         "with 2"):
        reg.partial_fit(X, target)


def test_unfitted_estimators_raise_not_fitted():
    for est in (SequenceClassifier(), SequenceRegressor(), SequenceEncoder()):
        method = est.transform if isinstance(est, SequenceEncoder) else est.predict
        with pytest.raises(NotFittedError):
            method(np.ones((2, 3)))


# -- the encoder ---------------------------------------------------------------------------------
def test_encoder_trains_nothing_and_gives_pooled_features():
    rng = np.random.default_rng(0)
    X1, X2 = ragged(rng, 10, features=2), ragged(rng, 20, features=2)
    enc = SequenceEncoder(hidden_size=5, bidirectional=True, random_state=3).fit(X1)
    other = SequenceEncoder(hidden_size=5, bidirectional=True, random_state=3).fit(X2)
    # The weights depend on random_state only, never on the data.
    for (k, a), (_, b) in zip(enc.network_.named_parameters(),
                              other.network_.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    Z = enc.transform(X2)
    assert Z.shape == (20, 10) and Z.dtype == np.float32
    np.testing.assert_array_equal(Z, other.transform(X2))
    assert list(enc.get_feature_names_out()) == [f"sequenceencoder{i}" for i in range(10)]


def test_encoder_features_feed_a_linear_model_on_digits():
    # A reservoir: untrained LSTM, max over each sequence's steps, then logistic regression.
    digits = load_digits()
    X = digits.images / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, digits.target, test_size=0.25, random_state=0,
                                          stratify=digits.target)
    model = make_pipeline(SequenceEncoder(hidden_size=64, pooling="max", random_state=0),
                          StandardScaler(), LogisticRegression(max_iter=1000))
    assert model.fit(Xtr, ytr).score(Xte, yte) > 0.9


# -- threads -------------------------------------------------------------------------------------
@QUIET
@pytest.mark.parametrize("n_threads", [1, 2])
def test_n_threads_applies_during_fit_and_predict_and_is_restored(n_threads, monkeypatch):
    from threadpoolctl import threadpool_info
    seen = []
    call = rnnc.Sequential.__call__
    monkeypatch.setattr(rnnc.Sequential, "__call__",
                        lambda self, *a: seen.append(rnnc.get_num_threads()) or call(self, *a))
    before = rnnc.get_num_threads()
    blas_before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4, 2)), np.arange(20) % 2
    clf = SequenceClassifier(hidden_size=4, max_iter=2, n_threads=n_threads).fit(X, y)
    assert seen and set(seen) == {n_threads}
    assert rnnc.get_num_threads() == before
    seen.clear()
    clf.predict(X)
    assert seen and set(seen) == {n_threads}
    assert rnnc.get_num_threads() == before
    with pytest.raises(ValueError):
        clf.predict(rng.standard_normal((2, 4, 3)))          # an error inside the setting
    assert rnnc.get_num_threads() == before
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] \
        == blas_before


# -- verbose -------------------------------------------------------------------------------------
@QUIET
def test_verbose_prints_one_line_per_epoch_or_draws_a_bar(capsys, monkeypatch):
    X, y = np.random.default_rng(0).standard_normal((12, 3)), np.arange(12) % 2
    SequenceClassifier(hidden_size=2, max_iter=3, verbose=2).fit(X, y)
    out = capsys.readouterr().out
    assert re.findall(r"Iteration (\d), loss = \d+\.\d{8}", out) == ["1", "2", "3"]
    pytest.importorskip("tqdm")
    SequenceClassifier(hidden_size=2, max_iter=3, verbose=True).fit(X, y)
    captured = capsys.readouterr()
    assert "SequenceClassifier" in captured.err and "epoch" in captured.err
    assert captured.out == ""
    monkeypatch.setitem(sys.modules, "tqdm", None)       # tqdm not installed: printed lines
    SequenceClassifier(hidden_size=2, max_iter=2, verbose=True).fit(X, y)
    assert len(re.findall("Iteration", capsys.readouterr().out)) == 2


# -- meta-estimators, copies, files --------------------------------------------------------------
@QUIET
def test_works_in_a_pipeline_and_cross_val_score():
    # 2-D X: 10 univariate steps, scaled column by column; the label is the sign of the sum.
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(300, 10))
    y = (((X - 3.0) / 2.0).sum(axis=1) > 0).astype(int)
    model = make_pipeline(StandardScaler(),
                          SequenceClassifier(cell="gru", hidden_size=16, max_iter=15,
                                             learning_rate_init=1e-2, random_state=0))
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


@QUIET
def test_clone_pickle_and_joblib_keep_the_model(tmp_path):
    rng = np.random.default_rng(0)
    X, y = ragged(rng, 200, features=3), rng.integers(0, 2, size=200)
    clf = SequenceClassifier(hidden_size=32, max_iter=2, random_state=0).fit(X, y)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and not hasattr(copy, "network_")
    expected = clf.predict_proba(X)
    blob = pickle.dumps(clf)
    np.testing.assert_array_equal(pickle.loads(blob).predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X),
                                  expected)
    # No training caches: the parameters, Adam's two moments per parameter (kept for
    # partial_fit) and small change; a kept forward cache would be (T, B, 4H) per layer.
    params = sum(p.nbytes for _, p in clf.network_.named_parameters())
    assert len(blob) < 3 * params + 64 * 1024
    assert clf.network_[0]._cache is None and clf.network_._trace is None
    assert all(layer.grads == {} for layer in clf.network_)      # no gradients kept


@QUIET
@pytest.mark.parametrize("estimator", [
    SequenceClassifier(cell="lstm", hidden_size=8, bidirectional=True, max_iter=2),
    SequenceRegressor(cell="gru", hidden_size=8, num_layers=2, pooling="max", max_iter=2),
    SequenceEncoder(cell="rnn", hidden_size=8, pooling="mean")],
    ids=lambda e: type(e).__name__)
def test_network_saves_and_loads_with_rnnc_save(estimator, tmp_path):
    # network_ is a plain rnnc.Sequential: rnnc.save / rnnc.load round-trip it bit-exactly.
    rng = np.random.default_rng(0)
    X, y = ragged(rng, 30, features=2), rng.integers(0, 2, size=30)
    est = clone(estimator).set_params(random_state=0).fit(X, y)
    rnnc.save(est.network_, tmp_path / "net.safetensors")
    loaded = rnnc.load(tmp_path / "net.safetensors")
    assert type(loaded) is rnnc.Sequential and repr(loaded) == repr(est.network_)
    assert not loaded.training
    saved = est.network_.state_dict()
    assert list(loaded.state_dict()) == list(saved)
    for k, v in loaded.state_dict().items():
        assert v.dtype == saved[k].dtype and np.array_equal(v, saved[k]), k
    x, lengths = rnnc.pad_sequences(X, dtype=np.float32)
    np.testing.assert_array_equal(loaded(x, lengths), est.network_(x, lengths))
    # The loaded network in a fitted estimator's place gives the same predictions.
    out = est.transform(X) if isinstance(est, SequenceEncoder) else est.predict(X)
    est.network_ = loaded
    np.testing.assert_array_equal(
        est.transform(X) if isinstance(est, SequenceEncoder) else est.predict(X), out)


def _threads_scorer(estimator, X, y):
    return rnnc.get_num_threads()


@QUIET
def test_grid_search_in_two_processes_without_oversubscription():
    digits = load_digits()
    X, y = digits.images[:240] / 16.0, digits.target[:240]
    search = GridSearchCV(
        SequenceClassifier(cell="gru", max_iter=8, learning_rate_init=1e-2, random_state=0),
        {"hidden_size": [8, 16]}, cv=2, n_jobs=2,
        scoring={"accuracy": "accuracy", "threads": _threads_scorer}, refit="accuracy")
    search.fit(X, y)
    assert search.best_score_ > 0.4 and search.best_params_["hidden_size"] in (8, 16)
    # Each of the two worker processes runs rnnc on its share of the cores at most.
    limit = max(1, (os.cpu_count() or 1) // 2)
    assert 1 <= search.cv_results_["mean_test_threads"].max() <= limit
    assert search.best_estimator_.predict(X[:5]).shape == (5,)


# -- the done-means tests ------------------------------------------------------------------------
def _digits_split():
    digits = load_digits()
    X = digits.images / 16.0                            # (1797, 8, 8): 8 steps of 8 pixels
    return train_test_split(X, digits.target, test_size=0.25, random_state=0,
                            stratify=digits.target)


@QUIET
def test_digits_as_8_steps_of_8_pixels_reach_95_percent():
    # Fit time on the machine of the README (AMD EPYC, 1 thread): ~1 s; not asserted.
    Xtr, Xte, ytr, yte = _digits_split()
    clf = SequenceClassifier(cell="gru", hidden_size=64, max_iter=30, batch_size=32,
                             learning_rate_init=1e-2, random_state=0, n_threads=1)
    clf.fit(Xtr, ytr)
    assert clf.score(Xte, yte) >= 0.95


def _sum_sign_task(n, seed):
    """Sequences of 5-30 steps of N(0, 1); the label is whether the sum over the sequence's own
    steps is positive. Also the same sequences padded to 30 steps with more N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((int(t), 1)) for t in rng.integers(5, 31, size=n)]
    y = np.array([int(x.sum() > 0) for x in X])
    padded = rng.standard_normal((n, 30, 1))
    for i, x in enumerate(X):
        padded[i, :len(x)] = x
    return X, padded, y


@QUIET
def test_ragged_lengths_masking_matters():
    X, P, y = _sum_sign_task(1000, 0)
    Xt, Pt, yt = _sum_sign_task(500, 1)
    kw = dict(cell="gru", hidden_size=32, max_iter=20, learning_rate_init=1e-2, random_state=0,
              n_threads=1)
    ragged_acc = SequenceClassifier(**kw).fit(X, y).score(Xt, yt)
    # The padding as data: without lengths the network cannot tell where a sequence ends.
    # Predicting from the sign of the sum of all 30 steps would score
    # mean over L = 5..30 of 1 - arccos(sqrt(L / 30)) / pi = 0.784.
    padded_acc = SequenceClassifier(**kw).fit(P, y).score(Pt, yt)
    assert ragged_acc >= 0.93
    assert padded_acc <= 0.88 and ragged_acc - padded_acc >= 0.08


# -- documentation -------------------------------------------------------------------------------
def test_readme_scikit_learn_examples_run():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not next to the tests (installed elsewhere)")
    section = readme.read_text().split("\n## scikit-learn\n", 1)[1].split("\n## ", 1)[0]
    ragged_example, digits_example = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(ragged_example.strip().splitlines()) <= 15
    ns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exec(compile(ragged_example, "README.md", "exec"), ns)
        assert ns["accuracy"] >= 0.93
        exec(compile(digits_example, "README.md", "exec"), ns)
        assert ns["digits_accuracy"] >= 0.95


@QUIET
@pytest.mark.parametrize("module", [_estimators])
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module) if t.examples]
    assert {t.name.rsplit(".", 1)[-1] for t in tests} >= {"SequenceClassifier",
                                                          "SequenceRegressor",
                                                          "SequenceEncoder"}
    out = io.StringIO()
    for t in tests:
        runner.run(t, out=out.write)
    assert runner.failures == 0, out.getvalue()
