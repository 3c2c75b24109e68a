"""Checks of the estimators' parameters (run by fit, never by __init__ or set_params, as
scikit-learn requires), and the thread setting applied for the duration of a call."""
import numbers

import numpy as np

# The thread setting applied for the duration of a call (shared with rnnc.dask's tasks).
from rnnc._engine.threads import thread_setting  # noqa: F401 - used as _params.thread_setting

DTYPES = ("float32", "float64")


def _name(value):
    return f"{type(value).__name__} {value!r}"


def check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {_name(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value, name, low, high, *, low_open=False, high_open=False):
    """A real number in the interval from low to high (None: unbounded), ends open or closed."""
    interval = (("(" if low_open else "[") + f"{low}, {'inf' if high is None else high}"
                + (")" if high_open or high is None else "]"))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in {interval}, got {_name(value)}")
    v = float(value)
    ok = np.isfinite(v) and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r}")
    return v


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_name(value)}")
    return bool(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_dtype(value):
    """'float32' / 'float64' (or the NumPy types) -> np.dtype."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if isinstance(value, (bool, np.bool_)) or dtype is None or dtype.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (or the NumPy types), got "
                         f"{value!r}")
    return dtype


def check_n_threads(value):
    return None if value is None else check_int(value, "n_threads", 1)
