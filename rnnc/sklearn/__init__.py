"""scikit-learn estimators on rnnc's recurrent layers (needs ``pip install "rnnc[sklearn]"``).

- ``SequenceClassifier``: one label per sequence (MLPClassifier's parameters and attributes).
- ``SequenceRegressor``: one or several targets per sequence.
- ``SequenceEncoder``: a transformer from sequences to fixed-size features (an untrained,
  random recurrent network: a reservoir).

X is a 3-D array (n, T, I), a list of (T_i, I) arrays of different lengths, or a 2-D array
(n, T) of univariate sequences; see ``SequenceClassifier``'s docstring. ``import rnnc`` does
not import this module (nor scikit-learn).
"""
try:
    import sklearn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("rnnc.sklearn needs scikit-learn: pip install \"rnnc[sklearn]\" (or "
                      "pip install scikit-learn)") from exc

from rnnc.sklearn._estimators import SequenceClassifier, SequenceEncoder, SequenceRegressor

__all__ = ["SequenceClassifier", "SequenceRegressor", "SequenceEncoder"]
