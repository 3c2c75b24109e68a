"""SequenceClassifier, SequenceRegressor and SequenceEncoder: scikit-learn estimators on rnnc.

The supervised estimators follow ``sklearn.neural_network.MLPClassifier`` /
``MLPRegressor``: minibatch epochs with Adam or SGD, ``max_iter`` epochs, the same stopping
rule (``tol`` and ``n_iter_no_change`` on the training loss, or on a held-out validation score
with ``early_stopping``), the same attributes (``loss_curve_``, ``best_loss_``,
``validation_scores_``, ``best_validation_score_``, ``n_iter_``, ``t_``), ``partial_fit`` (one
epoch per call) and ``warm_start``. The network is an ``rnnc.Sequential`` (``_network``),
trained with ``rnnc.optim`` and ``rnnc.clip_grad_norm`` on minibatches from ``rnnc.batches``.
"""
import sys
import warnings

import numpy as np
from sklearn.base import (BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin,
                          RegressorMixin, TransformerMixin)
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from rnnc import losses, optim
from rnnc.sklearn import _data, _params
from rnnc.sklearn import _network
from rnnc.sklearn._network import CELLS, POOLINGS

# Sequences per network call at inference: bounds the memory of predict on large X.
_PREDICT_CHUNK = 1024
# batch_size="auto": min(_AUTO_BATCH, n_samples), as MLPClassifier's min(200, n_samples).
_AUTO_BATCH = 64


class _SequenceBase(BaseEstimator):
    """What all three estimators share: the network's parameters, reading X, inference."""

    def _check_network_params(self):
        _params.check_choice(self.cell, "cell", tuple(CELLS))
        _params.check_int(self.hidden_size, "hidden_size", 1)
        _params.check_int(self.num_layers, "num_layers", 1)
        _params.check_bool(self.bidirectional, "bidirectional")
        _params.check_choice(self.pooling, "pooling", POOLINGS)
        _params.check_dtype(self.dtype)
        _params.check_n_threads(self.n_threads)

    def _make_network(self, n_outputs, dropout, seed):
        return _network.make_network(self.cell, self.input_size_, self.hidden_size,
                                     self.num_layers, self.bidirectional, dropout, self.pooling,
                                     n_outputs, _params.check_dtype(self.dtype), seed)

    def _read(self, X, reset):
        dtype = (_params.check_dtype(self.dtype) if reset or not hasattr(self, "network_")
                 else self.network_[0].dtype)
        return _data.read_sequences(self, X, reset=reset, dtype=dtype)

    def _network_outputs(self, seqs, index=None):
        """The network's outputs (n, n_out) for the sequences at ``index`` (all by default), in
        chunks of _PREDICT_CHUNK sequences, in inference mode."""
        net = self.network_
        was_training = net.training
        net.eval()
        rows = np.arange(seqs.n_samples) if index is None else np.asarray(index)
        parts = [net(*seqs.take(rows[s:s + _PREDICT_CHUNK]))
                 for s in range(0, len(rows), _PREDICT_CHUNK)]
        if was_training:
            net.train()
        if not parts:
            return np.empty((0, _network.n_outputs(net)), dtype=net[0].dtype)
        return np.concatenate(parts, axis=0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True     # (n, T, I); ragged lists are read too
        return tags

    def _expected_failed_checks(self):
        """The scikit-learn estimator checks this estimator cannot pass, with the reason: what
        ``check_estimator`` / ``parametrize_with_checks`` take as ``expected_failed_checks``
        (scikit-learn >= 1.6 declares them there, not in the tags)."""
        try:
            float32 = _params.check_dtype(self.dtype) == np.float32
        except ValueError:
            float32 = False
        if not float32:
            return {}
        return {"check_methods_subset_invariance": (
            "in float32 a sequence's result can differ in the last bit (~1e-7 relative) with "
            "the batch it is computed in, since rnnc chooses kernels (its packed small-batch "
            "kernel or BLAS, split or not) by batch size; the check demands 1e-7. Results do "
            "not depend on the order within a batch (check_methods_sample_order_invariance "
            "passes), and float64 passes this check")}


_SHARED_PARAMS_DOC = """\
    cell : {"lstm", "gru", "rnn"}, default "lstm"
        The recurrent layer: ``rnnc.LSTM``, ``rnnc.GRU`` or ``rnnc.RNN`` (tanh).
    hidden_size : int, default 64
        Hidden units per layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    bidirectional : bool, default False
        Both directions in every layer; the features are the two directions' concatenated.
    pooling : {"last", "mean", "max"}, default "last"
        One feature vector per sequence, from the last layer: "last" is the final hidden
        state of every direction (the forward direction's at the sequence's own last step,
        the reverse direction's at its first: ``rnnc.Pool("state")``); "mean" and "max" are
        over each sequence's own steps (padding never counts; ``rnnc.Pool("mean")``,
        ``rnnc.Pool("max")``). Features: hidden_size * (2 if bidirectional else 1)."""

_INPUT_DOC = """\
    Notes
    -----
    X may be:

    - a 3-D array (n_samples, T, I): sequences of T steps of I features;
    - a list of arrays of shapes (T_i, I), or (T_i,) for one feature, of different lengths:
      ragged sequences, run with rnnc's ``lengths`` (padding is never seen as data);
    - a 2-D array (n_samples, T), a DataFrame or a list of equal-length rows: univariate
      sequences, column t being step t.

    ``n_features_in_`` is scikit-learn's count of input columns: T for 2-D X (later 2-D X must
    have as many columns, as for any scikit-learn estimator, so that Pipeline steps agree),
    I for 3-D and list X. ``input_size_`` is always I (1 for 2-D X). The network reads
    sequences of any length: after any fit, 3-D and list X of any length with ``input_size_``
    features per step are accepted. Sparse input is refused (TypeError)."""


class _SupervisedSequenceBase(_SequenceBase):
    """Training shared by the classifier and the regressor (MLPClassifier's loop)."""

    def __init__(self, cell="lstm", hidden_size=64, num_layers=1, bidirectional=False,
                 dropout=0.0, pooling="last", max_iter=100, batch_size="auto",
                 learning_rate_init=1e-3, solver="adam", momentum=0.9, alpha=1e-4, clip=None,
                 shuffle=True, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, random_state=None, verbose=False,
                 warm_start=False, dtype="float32", n_threads=None):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.pooling = pooling
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.solver = solver
        self.momentum = momentum
        self.alpha = alpha
        self.clip = clip
        self.shuffle = shuffle
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.n_threads = n_threads

    # -- to be defined by the classifier / regressor --------------------------------------
    def _encode_targets(self, y, first, classes, incremental):
        """y -> the network's targets (n,) labels or (n, k) floats; sets classes_ /
        n_outputs_ on the first pass."""
        raise NotImplementedError

    def _loss(self, outputs, targets):
        raise NotImplementedError

    def _score_outputs(self, outputs, targets):
        raise NotImplementedError

    # -- checks ---------------------------------------------------------------------------
    def _check_params(self):
        self._check_network_params()
        _params.check_real(self.dropout, "dropout", 0, 1, high_open=True)
        _params.check_int(self.max_iter, "max_iter", 1)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(f"batch_size must be 'auto' or an int >= 1, got "
                                 f"{self.batch_size!r}")
            _params.check_int(self.batch_size, "batch_size", 1)
        _params.check_real(self.learning_rate_init, "learning_rate_init", 0, None,
                           low_open=True)
        _params.check_choice(self.solver, "solver", ("adam", "sgd"))
        _params.check_real(self.momentum, "momentum", 0, 1)
        _params.check_real(self.alpha, "alpha", 0, None)
        if self.clip is not None:
            _params.check_real(self.clip, "clip", 0, None, low_open=True)
        _params.check_bool(self.shuffle, "shuffle")
        _params.check_bool(self.early_stopping, "early_stopping")
        _params.check_real(self.validation_fraction, "validation_fraction", 0, 1,
                           low_open=True, high_open=True)
        _params.check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        _params.check_real(self.tol, "tol", 0, None)
        _params.check_bool(self.warm_start, "warm_start")
        if not isinstance(self.verbose, (bool, np.bool_, int, np.integer)):
            raise TypeError(f"verbose must be a bool or an int, got {self.verbose!r}")

    # -- fit --------------------------------------------------------------------------------
    def fit(self, X, y):
        """Train the network on sequences X and targets y for up to ``max_iter`` epochs.

        With ``warm_start`` a fitted estimator goes on from its weights (a new optimizer);
        otherwise the network is built anew. Returns self.
        """
        return self._fit(X, y, incremental=False)

    def _fit(self, X, y, incremental, classes=None):
        self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "network_") or (not self.warm_start and not incremental)
        with _params.thread_setting(self.n_threads):
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                                 "target y is None.")
            seqs = self._read(X, reset=first)
            targets = self._encode_targets(y, first, classes, incremental)
            if len(targets) != seqs.n_samples:
                raise ValueError(f"Found input variables with inconsistent numbers of "
                                 f"samples: [{seqs.n_samples}, {len(targets)}] (X and y)")
            if first:
                self._random_state = check_random_state(self.random_state)
                seed = int(self._random_state.randint(np.iinfo(np.int32).max))
                self.network_ = self._make_network(self.n_outputs_, self.dropout, seed)
                self.n_iter_ = 0
                self.t_ = 0
                self.loss_curve_ = []
                self._no_improvement_count = 0
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None
            if not incremental or not hasattr(self, "_optimizer"):
                self._optimizer = self._make_optimizer()
            self._run_epochs(seqs, targets, incremental)
        return self

    def _make_optimizer(self):
        # Over every layer of the Sequential, under its names ("0.weight_ih_l0", "2.weight").
        if self.solver == "adam":
            return optim.Adam(self.network_, lr=self.learning_rate_init)
        return optim.SGD(self.network_, lr=self.learning_rate_init, momentum=self.momentum)

    def _run_epochs(self, seqs, targets, incremental):
        net, n = self.network_, seqs.n_samples
        early_stopping = self.early_stopping and not incremental
        if early_stopping:
            stratify = targets if isinstance(self, ClassifierMixin) else None
            train, val = train_test_split(np.arange(n), test_size=self.validation_fraction,
                                          random_state=self._random_state, stratify=stratify)
            if len(val) < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if self.validation_scores_ is None:
                self.validation_scores_ = []
            # The best of this call's epochs is kept: the validation split is drawn anew.
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            best_state = net.state_dict()
        else:
            train, val = None, None
            if self.best_loss_ is None:
                self.best_loss_ = np.inf
        if not incremental:
            self._no_improvement_count = 0
        data, data_targets = (seqs, targets) if train is None else \
            (seqs.subset(train), targets[train])
        n_train = data.n_samples
        batch_size = (min(_AUTO_BATCH, n_train) if self.batch_size == "auto"
                      else min(self.batch_size, n_train))
        epochs = 1 if incremental else self.max_iter
        progress = _Progress(self.verbose, epochs, type(self).__name__)
        stopped = False
        net.train()
        try:
            for _ in range(epochs):
                total = 0.0
                seed = (int(self._random_state.randint(np.iinfo(np.int32).max))
                        if self.shuffle else None)
                for x, lengths, batch_targets in data.batches(data_targets, batch_size, seed):
                    self._optimizer.zero_grad()
                    loss, grad = self._loss(net(x, lengths), batch_targets)
                    net.backward(grad)
                    if self.alpha:
                        loss += self._add_l2(net, len(batch_targets))
                    if self.clip is not None:
                        optim.clip_grad_norm(net, self.clip)     # one norm, all layers
                    self._optimizer.step()
                    total += loss * len(batch_targets)
                self.n_iter_ += 1
                self.t_ += n_train
                self.loss_ = total / n_train
                self.loss_curve_.append(self.loss_)
                score = None
                if early_stopping:
                    score = self._score_outputs(self._network_outputs(seqs, val), targets[val])
                    self.validation_scores_.append(score)
                    if score < self.best_validation_score_ + self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        best_state = net.state_dict()
                else:
                    if self.loss_ > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    self.best_loss_ = min(self.best_loss_, self.loss_)
                progress.epoch(self.n_iter_, self.loss_, score)
                if self._no_improvement_count > self.n_iter_no_change and not incremental:
                    what = "Validation score" if early_stopping else "Training loss"
                    progress.message(f"{what} did not improve more than tol={self.tol} for "
                                     f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                    stopped = True
                    break
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
            stopped = True
        finally:
            progress.close()
            _network.release(net)
        if not incremental and not stopped:
            # stacklevel: the caller of fit (fit -> _fit -> _run_epochs).
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=4)
        if early_stopping:
            net.load_state_dict(best_state)

    def _add_l2(self, net, batch_n):
        """MLPClassifier's L2 penalty on the weights (not the biases): adds
        alpha * W / batch_n to each weight's gradient; returns 0.5 * alpha * ||W||^2 / batch_n,
        the term added to the loss."""
        grads, penalty = net.grads, 0.0
        for name, w in net.named_parameters():
            if name.split(".")[-1].startswith("weight"):  # 0.weight_ih_l0, 2.weight, ...
                grads[name] += w * w.dtype.type(self.alpha / batch_n)
                penalty += float(np.sum(np.square(w, dtype=np.float64)))
        return 0.5 * self.alpha * penalty / batch_n

    def partial_fit(self, X, y):
        """One epoch over (X, y), from the current weights (built on the first call)."""
        return self._fit(X, y, incremental=True)

    def _outputs(self, X):
        """Validated X -> network outputs (n, n_out)."""
        check_is_fitted(self, "network_")
        with _params.thread_setting(self.n_threads):
            return self._network_outputs(self._read(X, reset=False))


class _Progress:
    """Per-epoch reports when ``verbose``: a tqdm bar (if tqdm is installed and verbose is
    1 or True), else one printed line per epoch, as MLPClassifier prints."""

    def __init__(self, verbose, total, name):
        self.verbose, self.bar = verbose, None
        if verbose and int(verbose) == 1:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=name, unit="epoch", file=sys.stderr,
                                dynamic_ncols=True, leave=False)

    def epoch(self, n_iter, loss, score):
        if self.bar is not None:
            post = {"loss": f"{loss:.4g}"}
            if score is not None:
                post["val"] = f"{score:.4g}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif self.verbose:
            line = f"Iteration {n_iter}, loss = {loss:.8f}"
            if score is not None:
                line += f", validation score = {score:.6f}"
            print(line)

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.verbose:
            print(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()


_TRAINING_PARAMS_DOC = """\
    dropout : float in [0, 1), default 0.0
        PyTorch's: inverted dropout on the input of every recurrent layer but the first
        (so only with num_layers >= 2), in training only.
    max_iter : int, default 100
        Most epochs (passes over the training data) per ``fit``.
    batch_size : int or "auto", default "auto"
        Sequences per minibatch; "auto" is min(64, n_samples). Each batch is cut to its
        longest sequence.
    learning_rate_init : float, default 1e-3
        The optimizer's (constant) learning rate.
    solver : {"adam", "sgd"}, default "adam"
        ``rnnc.optim.Adam`` or ``rnnc.optim.SGD`` (with ``momentum``).
    momentum : float in [0, 1], default 0.9
        SGD's momentum (solver="sgd" only).
    alpha : float >= 0, default 1e-4
        L2 penalty on the weights (not the biases), as MLPClassifier's: the loss gets
        0.5 * alpha * ||W||^2 / batch size.
    clip : float > 0 or None, default None
        Largest gradient norm per step (one norm over all the network's gradients).
    shuffle : bool, default True
        Shuffle the training sequences every epoch.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for the
        classifier), score it after every epoch, stop when the score has not improved by
        ``tol`` for ``n_iter_no_change`` epochs and keep the weights of the best epoch.
        Without it the same rule applies to the training loss.
    validation_fraction : float in (0, 1), default 0.1
    n_iter_no_change : int >= 1, default 10
    tol : float >= 0, default 1e-4
    random_state : int, RandomState or None, default None
        Seeds the weights, the shuffling, the validation split and dropout: an int gives
        the same model on every fit (at the same ``n_threads``).
    verbose : bool or int, default False
        True or 1: a progress bar over the epochs (tqdm, if installed; else one line per
        epoch); 2: one printed line per epoch.
    warm_start : bool, default False
        ``fit`` goes on from the fitted weights instead of starting anew.
    dtype : {"float32", "float64"}, default "float32"
        The network's floating-point type; X is converted to it.
    n_threads : int or None, default None
        Threads for rnnc and BLAS during fit / predict (``rnnc.set_num_threads``), restored
        when the call returns, also on an error. The setting is the process's: other Python
        threads calling rnnc meanwhile see it too. None leaves the process's setting alone
        (in joblib's worker processes it is already limited to avoid oversubscription)."""

_TRAINED_ATTRS_DOC = """\
    n_features_in_ : int
        See the Notes.
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame.
    input_size_ : int
        Features per step (I) the network takes.
    n_outputs_ : int
        Outputs of the network's head.
    network_ : rnnc.Sequential
        The fitted network, ``Sequential(rnn, Pool, Linear)``: the recurrent layers
        (``network_[0]``, an ``rnnc.LSTM``, ``GRU`` or ``RNN``), the pooling
        (``rnnc.Pool``: mode "state" for pooling="last", else "mean" / "max") and the
        ``rnnc.Linear`` head (``network_[2]``). ``network_.state_dict()`` gives the
        parameters under torch.nn.Sequential's names (``0.weight_ih_l0``, ``2.weight``);
        ``rnnc.save(network_, path)`` / ``rnnc.load(path)`` keep it in a safetensors file.
        It runs time-major: ``network_(x, lengths)`` with x (T, n, I).
    loss_ : float
        The last epoch's mean training loss.
    loss_curve_ : list of float
        Mean training loss of every epoch (penalty included).
    best_loss_ : float or None
        Smallest training loss so far (None with early_stopping).
    validation_scores_ : list of float or None
        Validation score of every epoch with early_stopping (else None).
    best_validation_score_ : float or None
        The best validation score of the last fit, whose weights are kept.
    n_iter_ : int
        Epochs run so far (``partial_fit`` adds one per call).
    t_ : int
        Training samples seen so far."""


def _softmax(logits):
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class SequenceClassifier(ClassifierMixin, _SupervisedSequenceBase):
    __doc__ = f"""Sequence classifier: recurrent layers, a pooling of each sequence, a
    Linear head with softmax cross-entropy, trained as MLPClassifier trains.

    One label per sequence. Sequences may have different lengths (a list of arrays).

    Parameters
    ----------
{_SHARED_PARAMS_DOC}
{_TRAINING_PARAMS_DOC}

    Attributes
    ----------
    classes_ : ndarray
        The class labels.
{_TRAINED_ATTRS_DOC}

{_INPUT_DOC}

    Examples
    --------
    >>> import numpy as np
    >>> from rnnc.sklearn import SequenceClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.standard_normal((int(n), 2)) for n in rng.integers(5, 20, size=200)]
    >>> y = np.array([int(x[:, 0].sum() > 0) for x in X])
    >>> clf = SequenceClassifier(cell="gru", hidden_size=16, max_iter=30,
    ...                          learning_rate_init=1e-2, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape, clf.classes_
    ((3,), array([0, 1]))
    """

    def _encode_targets(self, y, first, classes, incremental):
        y = column_or_1d(y, warn=True)
        y = check_array(y, ensure_2d=False, dtype=None, input_name="y", estimator=self)
        check_classification_targets(y)
        if first and incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = np.unique(np.asarray(classes))
        elif first:
            self.classes_ = np.unique(y)
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)),
                                                        self.classes_):
            raise ValueError(f"classes={np.unique(np.asarray(classes))!r} is not the same as "
                             f"on the first call to partial_fit, was: {self.classes_!r}")
        elif not incremental and not np.array_equal(np.unique(y), self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as "
                             f"in the previous call to fit. Previously got {self.classes_}, "
                             f"`y` has {np.unique(y)}")
        self.n_outputs_ = len(self.classes_)
        labels = np.searchsorted(self.classes_, y)
        labels = np.clip(labels, 0, len(self.classes_) - 1)
        unknown = self.classes_[labels] != y
        if np.any(unknown):
            raise ValueError(f"y has labels not in classes_ {self.classes_!r}: "
                             f"{np.unique(y[unknown])!r}")
        return labels.astype(np.int64)

    def _loss(self, logits, labels):
        return losses.softmax_cross_entropy(logits, labels)

    def _score_outputs(self, logits, labels):
        return float(np.mean(np.argmax(logits, axis=1) == labels))

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) from the current weights.

        Parameters
        ----------
        X : sequences (see the class docstring)
        y : array of shape (n_samples,)
        classes : array, needed on the first call
            Every label that will ever be seen; y may hold only some of them.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), softmax of the head's outputs."""
        return _softmax(self._outputs(X))

    def predict_log_proba(self, X):
        """Log of ``predict_proba``."""
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class of each sequence (n_samples,)."""
        logits = self._outputs(X)          # first: it raises NotFittedError before fit
        return self.classes_[np.argmax(logits, axis=1)]


class SequenceRegressor(RegressorMixin, _SupervisedSequenceBase):
    __doc__ = f"""Sequence regressor: recurrent layers, a pooling of each sequence, a Linear
    head trained on the mean squared error, as MLPRegressor trains.

    One target (y of shape (n_samples,)) or several (y (n_samples, n_targets)) per sequence;
    ``predict`` returns the shape y had. Sequences may have different lengths.

    Parameters
    ----------
{_SHARED_PARAMS_DOC}
{_TRAINING_PARAMS_DOC}

    Attributes
    ----------
{_TRAINED_ATTRS_DOC}

{_INPUT_DOC}

    Examples
    --------
    >>> import numpy as np
    >>> from rnnc.sklearn import SequenceRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 10, 1))              # 200 sequences of 10 steps
    >>> y = X[:, :, 0].mean(axis=1)
    >>> reg = SequenceRegressor(cell="gru", hidden_size=16, pooling="mean", max_iter=30,
    ...                         learning_rate_init=1e-2, random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    """

    def _encode_targets(self, y, first, classes, incremental):
        y = check_array(y, ensure_2d=False, dtype=[np.float64, np.float32], input_name="y",
                        estimator=self)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_targets), got "
                             f"shape {y.shape}")
        targets = y.reshape(len(y), -1)
        if first:
            self.n_outputs_ = targets.shape[1]
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} targets, but {type(self).__name__} "
                             f"was fitted with {self.n_outputs_}")
        if first or not incremental:
            self._y_ndim = y.ndim         # predict returns the shape y had in the last fit
        return np.ascontiguousarray(targets, dtype=self.network_[0].dtype if not first else
                                    _params.check_dtype(self.dtype))

    def _loss(self, pred, targets):
        return losses.mse(pred, targets)

    def _score_outputs(self, pred, targets):
        return float(r2_score(targets.astype(np.float64), pred.astype(np.float64)))

    def predict(self, X):
        """Predictions (n_samples,) or (n_samples, n_targets), as y was, in float64."""
        out = self._outputs(X).astype(np.float64)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class SequenceEncoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, _SequenceBase):
    __doc__ = f"""Sequences to fixed-size features with an untrained recurrent network.

    A reservoir, as in echo-state networks: the recurrent weights are drawn at random
    (rnnc's PyTorch initialisation, seeded by ``random_state``) and never trained. ``fit``
    checks X, records ``n_features_in_`` and builds the network; ``transform`` returns each
    sequence's pooled features, (n_samples, hidden_size * directions). A linear model on
    these features (``Pipeline([("enc", SequenceEncoder()), ("clf", RidgeClassifier())])``)
    is a cheap baseline for sequences of different lengths; a trained network
    (``SequenceClassifier``, ``SequenceRegressor``) learns its features and usually scores
    better.

    Parameters
    ----------
{_SHARED_PARAMS_DOC}
    random_state : int, RandomState or None, default None
        Seeds the weights.
    dtype : {{"float32", "float64"}}, default "float32"
        The network's type, and the features'.
    n_threads : int or None, default None
        Threads for rnnc and BLAS during fit / transform, restored afterwards.

    Attributes
    ----------
    n_features_in_, feature_names_in_, input_size_ :
        As for ``SequenceClassifier`` (see the Notes).
    network_ : rnnc.Sequential
        The (untrained) network, ``Sequential(rnn, Pool)``: as for ``SequenceClassifier``,
        without the head.

{_INPUT_DOC}

    Examples
    --------
    >>> import numpy as np
    >>> from rnnc.sklearn import SequenceEncoder
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.standard_normal((n, 3)) for n in (4, 9, 6)]
    >>> SequenceEncoder(hidden_size=8, pooling="mean", random_state=0).fit_transform(X).shape
    (3, 8)
    """

    def __init__(self, cell="lstm", hidden_size=64, num_layers=1, bidirectional=False,
                 pooling="last", random_state=None, dtype="float32", n_threads=None):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.random_state = random_state
        self.dtype = dtype
        self.n_threads = n_threads

    def fit(self, X, y=None):
        """Check X, record ``n_features_in_`` and draw the network's weights. Returns self."""
        self._check_network_params()
        with _params.thread_setting(self.n_threads):
            self._read(X, reset=True)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.network_ = self._make_network(0, 0.0, seed)
        return self

    def transform(self, X):
        """Pooled features (n_samples, hidden_size * directions), in ``dtype``."""
        check_is_fitted(self, "network_")
        with _params.thread_setting(self.n_threads):
            return self._network_outputs(self._read(X, reset=False))

    @property
    def _n_features_out(self):
        return _network.n_features(self.network_[0])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.transformer_tags.preserves_dtype = [_params.check_dtype(self.dtype).name]
        except (TypeError, ValueError):
            tags.transformer_tags.preserves_dtype = []
        return tags
