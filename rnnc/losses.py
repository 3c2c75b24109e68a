"""Loss functions for training rnnc models: each returns ``(loss, grad)``.

``loss`` is a Python float, the mean over the selected (unmasked) elements; ``grad`` is the
gradient of that loss with respect to the prediction (or logits), in its dtype, ready to be
passed to a module's ``backward``. Masks select valid positions of padded batches; see
``lengths_mask``.

``softmax_cross_entropy`` takes logits, the raw scores of a ``Linear`` WITHOUT activation, and
applies the softmax itself (as ``torch.nn.functional.cross_entropy``): a head with
``activation="softmax"`` in front of it would apply softmax twice (it warns when every row of
its input already is a probability distribution).

Dtypes (rnnc's policy: converted, never refused, when real): a float32 or float64 prediction
keeps its dtype and the target is converted to it; any other real prediction (integers,
float16) becomes float64. Complex, bool, object and string data raise TypeError naming the
argument.

Examples
--------
>>> import numpy as np
>>> from rnnc import losses
>>> pred = np.array([[1.0, 2.0], [3.0, 4.0]])
>>> loss, grad = losses.mse(pred, np.zeros((2, 2)))
>>> loss
7.5
>>> losses.lengths_mask([3, 1], 4)
array([[ True,  True],
       [ True, False],
       [ True, False],
       [False, False]])
"""
import warnings

import numpy as np

from rnnc._validation import as_real_array, check_lengths, check_size, to_array

__all__ = ["mse", "softmax_cross_entropy", "lengths_mask"]


def _as_float_array(value, name):
    """A float32 or float64 array: those keep their dtype, other real data become float64."""
    arr = to_array(value, name)
    if arr.dtype in (np.float32, np.float64):
        return arr
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    raise TypeError(f"{name} must have a real numeric dtype (float or int), got {arr.dtype}")


def _as_bool_mask(mask):
    try:
        arr = np.asarray(mask)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"mask must be an array of booleans, could not convert "
                        f"{type(mask).__name__}: {exc}") from exc
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iuf":
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError("mask must hold booleans or only the values 0 and 1 (1 = use "
                             "the element); weighted masks are not supported")
        return arr != 0
    raise TypeError(f"mask must be boolean (or 0/1 numbers), got dtype {arr.dtype}")


def _broadcast(mask, shape, what):
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} cannot be broadcast to {what} "
                         f"{tuple(shape)}") from None


def _count(valid):
    n = int(np.count_nonzero(valid))
    if n == 0:
        raise ValueError("mask selects no elements: the mean loss is undefined")
    return n


def mse(pred, target, mask=None):
    """Mean squared error and its gradient, like ``torch.nn.functional.mse_loss``.

    Parameters
    ----------
    pred : array_like of floats, any shape (e.g. (T, B, F))
        The prediction. Integer input is converted to float64.
    target : array_like, same shape as ``pred``
        Converted to ``pred``'s dtype. Values at masked positions are ignored, even NaN.
    mask : array_like of bool (or 0/1), optional
        Which elements count. A mask with exactly one axis fewer than ``pred`` marks
        positions: it must broadcast to ``pred.shape[:-1]`` and covers all of ``pred``'s
        last axis (a (T, B) mask for (T, B, F) predictions, as made by ``lengths_mask``).
        Any other mask must broadcast to ``pred.shape`` under NumPy's rules.

    Returns
    -------
    loss : float
        ``sum(mask * (pred - target)**2) / count(mask)``, the count being of elements (so
        positions * F for a position mask).
    grad : ndarray, shape and dtype of ``pred``
        d loss / d pred; zero at masked elements.

    Raises
    ------
    TypeError
        Non-numeric ``pred``/``target``/``mask``.
    ValueError
        ``target`` of another shape, a mask that does not broadcast, an empty ``pred`` or a
        mask that selects nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from rnnc.losses import mse
    >>> pred = np.ones((3, 2, 1))                        # (T, B, F)
    >>> target = np.zeros((3, 2, 1))
    >>> mask = np.array([[1, 1], [1, 0], [0, 0]], bool)  # (T, B): 3 valid steps
    >>> loss, grad = mse(pred, target, mask)
    >>> loss, grad[:, :, 0]
    (1.0, array([[0.66666667, 0.66666667],
           [0.66666667, 0.        ],
           [0.        , 0.        ]]))
    """
    pred = _as_float_array(pred, "pred")
    target = as_real_array(target, "target", pred.dtype)
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got "
                         f"{target.shape}")
    if pred.size == 0:
        raise ValueError(f"pred is empty (shape {pred.shape}): the mean loss is undefined")
    diff = pred - target
    if mask is None:
        n = diff.size
    else:
        m = _as_bool_mask(mask)
        if pred.ndim >= 1 and m.ndim == pred.ndim - 1:
            m = _broadcast(m, pred.shape[:-1], "pred's positions (all axes but the last)")
            m = m[..., None]
        m = _broadcast(m, pred.shape, "pred's shape")
        n = _count(m)
        diff = np.where(m, diff, diff.dtype.type(0))
    loss = float(np.sum(np.square(diff, dtype=np.float64)) / n)
    grad = diff * diff.dtype.type(2.0 / n)
    return loss, grad


def softmax_cross_entropy(logits, labels, mask=None):
    """Softmax cross-entropy over the last axis and its gradient with respect to the logits.

    Like ``torch.nn.functional.cross_entropy`` with the class axis last: the mean over the
    selected positions of ``-log softmax(logits)[label]``, computed with the log-sum-exp
    shift so large logits do not overflow.

    Parameters
    ----------
    logits : array_like of floats, shape (..., C)
        Unnormalised scores (e.g. (T, B, C) from a ``Linear`` without activation), NOT
        probabilities: the softmax is applied here. A ``Linear(activation="softmax")`` in
        front would apply it twice (slower, flatter learning, a wrong loss value), so a
        UserWarning is raised when every selected row already is a probability distribution
        (entries in [0, 1] summing to 1; C >= 2). Integer input is converted to float64.
    labels : array_like of ints, shape (...) == logits.shape[:-1]
        Class indices in [0, C) at every selected position; masked positions may hold
        anything (e.g. -100 as padding).
    mask : array_like of bool (or 0/1), optional
        Broadcastable to ``labels``' shape (e.g. (T, B) from ``lengths_mask``).

    Returns
    -------
    loss : float
    grad : ndarray, shape and dtype of ``logits``
        ``(softmax(logits) - one_hot(labels)) / count`` at selected positions, 0 elsewhere.

    Raises
    ------
    TypeError
        Non-integer ``labels``, non-numeric ``logits``/``mask``.
    ValueError
        Shape mismatches, a label outside [0, C) at a selected position, a mask that selects
        nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from rnnc.losses import softmax_cross_entropy
    >>> logits = np.zeros((2, 4))                  # uniform over 4 classes
    >>> loss, grad = softmax_cross_entropy(logits, [1, 3])
    >>> round(loss, 4)                            # log(4)
    1.3863
    >>> grad[0]
    array([ 0.125, -0.375,  0.125,  0.125])
    """
    logits = _as_float_array(logits, "logits")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., C) with C >= 1 classes in the last "
                         f"axis, got shape {logits.shape}")
    C = logits.shape[-1]
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"labels must be an array of integers, could not convert "
                        f"{type(labels).__name__}: {exc}") from exc
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {logits.shape[:-1]} (logits' shape without "
                         f"the class axis), got {labels.shape}")
    if mask is None:
        valid = np.ones(labels.shape, dtype=bool)
    else:
        valid = _broadcast(_as_bool_mask(mask), labels.shape, "labels' shape")
    n = _count(valid)
    y = labels[valid]
    bad = (y < 0) | (y >= C)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(valid)[np.argmax(bad)])
        raise ValueError(f"labels must lie in [0, {C}) (C = logits.shape[-1]) at every "
                         f"unmasked position, got {int(y[np.argmax(bad)])} at index {index}")
    z = logits[valid]                                   # (n, C), only the selected rows
    if _look_like_probabilities(z):
        warnings.warn("softmax_cross_entropy takes logits, but every row of its input is "
                      "already a probability distribution (in [0, 1], summing to 1): was a "
                      "softmax applied before it (Linear(activation='softmax'))? It applies "
                      "the softmax itself; use a Linear without activation",
                      UserWarning, stacklevel=2)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    logp = shifted[rows, y] - np.log(s[:, 0])
    loss = float(-np.sum(logp, dtype=np.float64) / n)
    g = e / s
    g[rows, y] -= 1
    g *= g.dtype.type(1.0 / n)
    grad = np.zeros(logits.shape, dtype=logits.dtype)
    grad[valid] = g
    return loss, grad


def _look_like_probabilities(z):
    """Every row in [0, 1] and summing to 1 (to float32 rounding): the output of a softmax.

    Real logits have negative entries or rows that do not sum to 1, and the first test
    (a minimum below 0) settles most of them in one pass. One class is left out: a row of one
    entry in [0, 1] is not evidence of anything."""
    if z.shape[1] < 2 or not z.size or not z.min() >= 0 or not z.max() <= 1:
        return False
    return bool(np.all(np.abs(z.sum(axis=1, dtype=np.float64) - 1.0) <= 1e-4))


def lengths_mask(lengths, T, batch_first=False):
    """Boolean mask of the valid steps of a padded batch.

    Parameters
    ----------
    lengths : array_like of ints, shape (B,)
        Each sequence's length, in [0, T].
    T : int
        Number of time steps (the padded length).
    batch_first : bool, default False
        Return (B, T) instead of (T, B).

    Returns
    -------
    ndarray of bool, shape (T, B) (or (B, T)): ``mask[t, b]`` is ``t < lengths[b]``.

    Examples
    --------
    >>> from rnnc.losses import lengths_mask
    >>> lengths_mask([2, 0, 3], 3, batch_first=True).astype(int)
    array([[1, 1, 0],
           [0, 0, 0],
           [1, 1, 1]])
    """
    T = check_size(T, "T", minimum=0)
    if np.ndim(lengths) != 1:
        raise ValueError(f"lengths must be 1-D (one length per batch entry), got shape "
                         f"{np.shape(lengths)}")
    lengths = check_lengths(lengths, len(lengths), T)
    mask = np.arange(T)[:, None] < lengths[None, :]
    return np.ascontiguousarray(mask.T) if batch_first else mask
