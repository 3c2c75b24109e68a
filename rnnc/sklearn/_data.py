"""Reading X for the estimators.

X comes in three forms (see ``read_sequences``); all are turned into one time-major padded
array (T, n, I) (ragged lists through ``rnnc.pad_sequences``) and the lengths (n,), which is
what rnnc's layers take. Padding is only ever seen by the network through ``lengths``
(masking), never as data.
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from sklearn.utils.validation import check_array, validate_data

from rnnc.data import batches, pad_sequences

# The input forms remembered by fit: a 2-D table of univariate sequences (its columns are the
# steps), or sequences (a 3-D array or a list of (T_i, I) arrays).
TABLE = "table"
SEQUENCES = "sequences"


@dataclass
class Sequences:
    """A batch of sequences as the network takes it.

    x : (T, n, I) time-major, zero beyond each sequence's length, in the network's dtype.
    lengths : (n,) intp, each sequence's number of steps (>= 1).
    ragged : whether the lengths differ (else the network is called without ``lengths``).
    form : TABLE or SEQUENCES, the form X came in.
    """
    x: np.ndarray
    lengths: np.ndarray
    ragged: bool
    form: str

    @property
    def n_samples(self):
        return self.x.shape[1]

    @property
    def n_step_features(self):
        return self.x.shape[2]

    def take(self, index):
        """The sequences at ``index`` (an integer array or a slice), padding cut to the longest
        of them, as (x (T_b, b, I) contiguous, lengths or None when none is shorter)."""
        lengths = self.lengths[index]
        T = int(lengths.max()) if lengths.size else 0
        x = np.ascontiguousarray(self.x[:T, index])
        return x, self._lengths_arg(lengths, T)

    def _lengths_arg(self, lengths, T):
        """``lengths`` for the network, None when no sequence is shorter than T."""
        if self.ragged and lengths.size and int(lengths.min()) < T:
            return lengths
        return None

    def subset(self, index):
        """The sequences at ``index`` (an integer array), as Sequences (a copy)."""
        lengths = self.lengths[index]
        T = int(lengths.max()) if lengths.size else 0
        return Sequences(self.x[:T, index], lengths, self.ragged, self.form)

    def batches(self, targets, batch_size, seed):
        """One epoch of minibatches ``(x, lengths or None, targets)`` through
        ``rnnc.batches``: shuffled by ``seed`` (an int; None: in order), each cut to its
        longest sequence, x contiguous."""
        for x, lengths, y in batches(self.x, targets, lengths=self.lengths,
                                     batch_size=batch_size, shuffle=seed is not None,
                                     seed=seed):
            yield np.ascontiguousarray(x), self._lengths_arg(lengths, x.shape[0]), y


def _is_ragged_list(X):
    """A list or tuple whose entries do not all have one shape (so NumPy cannot stack them)."""
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return False
    shapes = set()
    for entry in X:
        if scipy.sparse.issparse(entry):
            raise TypeError("X holds a sparse matrix: rnnc's estimators take dense sequences; "
                            "convert each with .toarray()")
        shapes.add(np.shape(entry))
        if len(shapes) > 1:
            return True
    return False


def _as_array(X):
    try:
        return np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"X must be an array-like of numbers or a list of sequences, could "
                        f"not convert {type(X).__name__}: {exc}") from exc


def _refuse_sparse(X):
    if scipy.sparse.issparse(X):
        raise TypeError(f"X is a sparse {type(X).__name__}: sparse input is not supported, "
                        "rnnc's estimators take dense sequences; convert with X.toarray()")


def read_sequences(estimator, X, *, reset, dtype):
    """Validate X and return it as ``Sequences`` in ``dtype``.

    X is read as:

    - a 2-D array (n, T) (or DataFrame, or a list of equal-length rows): n univariate
      sequences of T steps; column t is step t. ``n_features_in_`` is T, scikit-learn's count
      of columns, and later 2-D input must have as many columns.
    - a 3-D array (n, T, I): n sequences of T steps of I features. ``n_features_in_`` is I.
    - a list of arrays of different lengths, each (T_i, I), or (T_i,) for one feature:
      ragged sequences, run with ``lengths``. ``n_features_in_`` is I.

    With ``reset`` (fit) the form and ``n_features_in_`` are recorded on the estimator (with
    ``input_size_``, the features per step); otherwise X is checked against them. The
    network reads sequences of any length: after any fit, 3-D and list input of any length
    with ``input_size_`` features per step is accepted, and a 2-D X is read as univariate
    sequences (of ``n_features_in_`` columns if the fit was on 2-D input).
    """
    _refuse_sparse(X)
    name = type(estimator).__name__
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1:
        X = list(X)     # a 1-D object array of sequences, the other common ragged container
    if _is_ragged_list(X):
        seqs = _read_ragged(X, estimator, dtype)
    else:
        if not (hasattr(X, "ndim") and hasattr(X, "shape")):
            X = _as_array(X)        # lists, and objects that only have __array__
        ndim = X.ndim
        if ndim not in (2, 3):
            raise ValueError(
                f"X must be 2-D (n_samples, T) univariate sequences, 3-D (n_samples, T, I) or "
                f"a list of (T_i, I) sequences, got a {ndim}-D array of shape {X.shape}"
                + (". Reshape your data: x.reshape(1, -1) for one univariate sequence"
                   if ndim == 1 else ""))
        if ndim == 3:
            arr = check_array(X, dtype=[np.float64, np.float32], allow_nd=True,
                              estimator=estimator, input_name="X")
            if arr.shape[1] == 0 or arr.shape[2] == 0:
                raise ValueError(f"X of shape {arr.shape} has no steps or no features: a 3-D "
                                 "X is (n_samples, T, I) with T >= 1 and I >= 1")
            x = np.ascontiguousarray(arr.transpose(1, 0, 2), dtype=dtype)
            seqs = Sequences(x, np.full(arr.shape[0], arr.shape[1], np.intp), False,
                             SEQUENCES)
        else:
            fitted_table = not reset and getattr(estimator, "_input_form", TABLE) == TABLE
            if reset or fitted_table:
                # scikit-learn's own validation: messages, feature names and n_features_in_.
                arr = validate_data(estimator, X, reset=reset, dtype=[np.float64, np.float32])
            else:
                arr = check_array(X, dtype=[np.float64, np.float32], estimator=estimator,
                                  input_name="X")
            x = np.ascontiguousarray(arr.T[:, :, None], dtype=dtype)
            seqs = Sequences(x, np.full(arr.shape[0], arr.shape[1], np.intp), False, TABLE)
    I = seqs.n_step_features
    if reset:
        estimator._input_form = seqs.form
        estimator.input_size_ = I
        if seqs.form == SEQUENCES:
            estimator.n_features_in_ = I
            estimator.__dict__.pop("feature_names_in_", None)
    elif I != estimator.input_size_:
        raise ValueError(
            f"X has {I} features per step, but {name} is expecting {estimator.input_size_} "
            f"features per step as input (it was fitted on "
            f"{'2-D univariate' if estimator._input_form == TABLE else 'sequence'} input; a "
            f"2-D X is read as sequences of 1 feature per step)")
    return seqs


def _read_ragged(X, estimator, dtype):
    """A list of (T_i, I) or (T_i,) arrays of different lengths -> padded Sequences."""
    seqs = []
    for i, entry in enumerate(X):
        _refuse_sparse(entry)
        arr = check_array(entry, dtype=[np.float64, np.float32], ensure_2d=False,
                          ensure_min_samples=0, estimator=estimator, input_name=f"X[{i}]")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"X[{i}] must be a sequence of shape (T_i, I) or (T_i,), got "
                             f"shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"X[{i}] has 0 steps (shape {arr.shape}): every sequence needs "
                             "at least one step")
        if arr.shape[1] != (seqs[0].shape[1] if seqs else arr.shape[1]):
            raise ValueError(f"X[{i}] has {arr.shape[1]} features per step, X[0] has "
                             f"{seqs[0].shape[1]}: all sequences need the same features")
        if arr.shape[1] == 0:
            raise ValueError(f"X[{i}] has 0 features per step (shape {arr.shape})")
        seqs.append(arr)
    x, lengths = pad_sequences(seqs, dtype=dtype)
    return Sequences(x, lengths, True, SEQUENCES)

