"""Data helpers: pad ragged sequences into one array, and iterate over padded batches.

``pad_sequences`` is ``torch.nn.utils.rnn.pad_sequence`` that also returns the lengths;
``batches`` cuts a data set into padded batches ``(x, lengths, y)``, shuffled with a seed and
optionally bucketed by length (as torchtext's ``BucketIterator`` and
``tf.data.experimental.bucket_by_sequence_length`` do), so that a batch pads its sequences to
its own longest one and little work is spent on padding.
"""
import numbers
from collections.abc import Mapping

import numpy as np

from rnnc._validation import check_bool, check_lengths, check_seed, check_size, to_array

__all__ = ["pad_sequences", "batches"]


def _as_sequences(sequences, name):
    """A list of arrays of shape (T_i, *F), F the same for all; errors name ``name``[i]."""
    if isinstance(sequences, (str, bytes, Mapping)) or not hasattr(sequences, "__iter__"):
        raise TypeError(f"{name} must be a list of arrays of shape (T_i, ...) (one per "
                        f"sequence), got {type(sequences).__name__}")
    items = list(sequences)
    if not items:
        raise ValueError(f"{name} is empty: there is no sequence to pad")
    arrays = []
    for i, item in enumerate(items):
        arr = to_array(item, f"{name}[{i}]")
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name}[{i}] must have a real numeric dtype (float or int), got "
                            f"{arr.dtype}")
        if arr.ndim == 0:
            raise ValueError(f"{name}[{i}] must be an array of shape (T_i,) or (T_i, "
                             f"features), with time along its first axis, got a scalar")
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            expected = ", ".join(["T_i"] + [str(d) for d in arrays[0].shape[1:]])
            raise ValueError(f"{name}[{i}] must have shape ({expected}) like {name}[0] "
                             f"(the same features after the time axis), got {arr.shape}")
        arrays.append(arr)
    return arrays


def _out_dtype(arrays, dtype, padding_value):
    """The padded array's dtype (the inputs' common dtype unless given), checked to hold
    ``padding_value`` exactly."""
    if dtype is None:
        dt = np.result_type(*arrays)
    else:
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must be a real numeric NumPy dtype, got {dtype!r}") from exc
        if dt.kind not in "iuf":
            raise TypeError(f"dtype must be a real numeric NumPy dtype, got {dt}")
    if isinstance(padding_value, (bool, np.bool_)) or \
            not isinstance(padding_value, numbers.Real):
        raise TypeError(f"padding_value must be a real number, got "
                        f"{type(padding_value).__name__} {padding_value!r}")
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (float(padding_value).is_integer() and info.min <= padding_value <= info.max):
            raise ValueError(f"padding_value {padding_value!r} cannot be stored exactly in the "
                             f"padded array's integer dtype {dt}")
    return dt


def _pad(arrays, batch_first, padding_value, dtype):
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.intp)
    T, B = int(lengths.max()), len(arrays)
    feat = arrays[0].shape[1:]
    out = np.full((B, T) + feat if batch_first else (T, B) + feat, padding_value, dtype=dtype)
    for b, a in enumerate(arrays):
        if batch_first:
            out[b, :a.shape[0]] = a
        else:
            out[:a.shape[0], b] = a
    return out, lengths


def pad_sequences(sequences, batch_first=False, padding_value=0.0, dtype=None):
    """Pad sequences of different lengths into one array, and return their lengths.

    Parameters
    ----------
    sequences : list of array_like
        B sequences, each (T_i, features) or (T_i,) (or (T_i, ...)), time along the first
        axis; everything after it must agree. A sequence may be empty (T_i = 0).
    batch_first : bool, default False
        Return (B, T, ...) instead of (T, B, ...), T = max T_i; PyTorch's ``pad_sequence``
        layout (so (T_i,) sequences give (T, B): add a feature axis with ``[..., None]`` for
        a recurrent layer).
    padding_value : real number, default 0.0
        The value at padded positions (t >= T_i).
    dtype : NumPy dtype or None
        The padded array's dtype; None: the sequences' common dtype (integers stay integers).

    Returns
    -------
    padded : ndarray, (T, B, ...) or (B, T, ...)
    lengths : ndarray of intp, (B,)
        Ready for ``lengths=`` of the layers, ``Pool`` and ``losses.lengths_mask``.

    Raises
    ------
    TypeError
        Not a list of arrays, non-numeric data (strings, bool, complex, object), a bad dtype
        or padding_value.
    ValueError
        An empty list, a scalar entry, feature shapes that differ, a padding_value the dtype
        cannot hold.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> padded, lengths = rnnc.pad_sequences([np.ones((3, 2)), np.ones((1, 2))])
    >>> padded.shape, lengths
    ((3, 2, 2), array([3, 1]))
    >>> rnnc.pad_sequences([[1, 2, 3], [4]], batch_first=True, padding_value=-1)[0]
    array([[ 1,  2,  3],
           [ 4, -1, -1]])
    """
    batch_first = check_bool(batch_first, "batch_first")
    arrays = _as_sequences(sequences, "sequences")
    return _pad(arrays, batch_first, padding_value, _out_dtype(arrays, dtype, padding_value))


class _Batches:
    """The iterator ``batches`` returns: one pass over the batches, with ``len()``."""

    def __init__(self, plan, make):
        self._plan, self._make, self._next = plan, make, 0

    def __len__(self):
        return len(self._plan)

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= len(self._plan):
            raise StopIteration
        idx = self._plan[self._next]
        self._next += 1
        return self._make(idx)


def batches(X, y=None, *, lengths=None, batch_size=32, shuffle=False, seed=None,
            drop_last=False, bucket=False, bucket_size=50, batch_first=False,
            padding_value=0.0, dtype=None):
    """Padded batches ``(x, lengths, y)`` of a data set of sequences, for one epoch.

    Parameters
    ----------
    X : list of array_like, or ndarray
        A list of n sequences (T_i, features) of any lengths; or a padded array in the layout
        of ``batch_first`` ((T, n, ...) time-major, (n, T, ...) batch-first, as
        ``pad_sequences`` returns it) with ``lengths``.
    y : array_like or None
        One target per sequence along the first axis (labels (n,), targets (n, k)); yielded
        as the batch's rows, or None.
    lengths : array_like of ints, (n,), optional
        The valid steps of each sequence of a padded array X (default: all T); not used with
        a list, whose sequences carry their lengths.
    batch_size : int, default 32
    shuffle : bool, default False
        Draw the order of the sequences (and of the buckets) from ``seed``.
    seed : None, int or numpy.random.Generator
        An int gives the same batches on every call; a Generator is advanced, so that
        successive epochs drawn from one Generator differ and the run is reproducible.
    drop_last : bool, default False
        Drop a last batch smaller than ``batch_size``.
    bucket : bool, default False
        Group sequences of similar length: the (shuffled) order is cut into chunks of
        ``bucket_size`` batches, each chunk sorted by decreasing length and cut into
        batches, then the batches are shuffled (when ``shuffle``). Every batch pads to its own
        longest sequence, so sorting cuts padding; shuffling keeps the epochs random.
    bucket_size : int, default 50
        Batches per chunk sorted together.
    batch_first : bool, default False
        Yield x as (b, T_batch, ...) instead of (T_batch, b, ...); also the layout of a
        padded array X.
    padding_value, dtype
        As for ``pad_sequences`` (a padded array X keeps its padding; dtype converts it).

    Returns
    -------
    An iterator (with ``len()``: the number of batches) of ``(x, lengths, y)``: x padded to
    the batch's longest sequence, lengths (b,) intp, y the batch's targets (None without y).
    Every sequence appears once per pass (less the dropped last batch).

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> rng = np.random.default_rng(0)
    >>> seqs = [rng.standard_normal((T, 3)) for T in (5, 2, 7, 3, 4)]
    >>> for x, lengths, y in rnnc.batches(seqs, np.arange(5), batch_size=2, shuffle=True,
    ...                                   seed=0, bucket=True):
    ...     print(x.shape, lengths, y)
    (2, 1, 3) [2] [1]
    (7, 2, 3) [7 5] [2 0]
    (4, 2, 3) [4 3] [4 3]
    """
    batch_first = check_bool(batch_first, "batch_first")
    batch_size = check_size(batch_size, "batch_size")
    bucket_size = check_size(bucket_size, "bucket_size")
    shuffle = check_bool(shuffle, "shuffle")
    drop_last = check_bool(drop_last, "drop_last")
    bucket = check_bool(bucket, "bucket")
    seed = check_seed(seed)
    if isinstance(X, np.ndarray) and not (X.dtype == object and X.ndim == 1):
        if X.dtype.kind not in "iuf":
            raise TypeError(f"X must have a real numeric dtype (float or int), got {X.dtype}")
        if X.ndim < 2:
            raise ValueError(f"X as an array must be padded sequences, (T, n, ...) or (n, T, "
                             f"...) with batch_first, at least 2-D, got shape {X.shape}")
        n, T = (X.shape[0], X.shape[1]) if batch_first else (X.shape[1], X.shape[0])
        lens = np.full(n, T, dtype=np.intp) if lengths is None else \
            check_lengths(lengths, n, T)
        out_dtype = _out_dtype([X], dtype, padding_value)
        arrays = None
    else:
        if lengths is not None:
            raise ValueError("lengths is for X given as a padded array; a list of sequences "
                             "carries its own lengths")
        arrays = _as_sequences(X, "X")
        n = len(arrays)
        lens = np.array([a.shape[0] for a in arrays], dtype=np.intp)
        out_dtype = _out_dtype(arrays, dtype, padding_value)
    if n == 0:
        raise ValueError("X holds no sequences")
    if y is not None:
        y = to_array(y, "y")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"y must have one entry per sequence ({n}) along its first axis, "
                             f"got shape {y.shape}")

    rng = np.random.default_rng(seed) if shuffle else None
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        plan = []
        chunk = batch_size * bucket_size
        for start in range(0, n, chunk):
            part = order[start:start + chunk]
            # Stable: sequences of equal length keep their shuffled order.
            part = part[np.argsort(-lens[part], kind="stable")]
            plan += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    else:
        plan = [order[j:j + batch_size] for j in range(0, n, batch_size)]
    if drop_last:
        plan = [idx for idx in plan if len(idx) == batch_size]
    if bucket and shuffle:
        plan = [plan[k] for k in rng.permutation(len(plan))]

    def make(idx):
        b_lens = lens[idx]
        if arrays is not None:
            x, _ = _pad([arrays[i] for i in idx], batch_first, padding_value, out_dtype)
        else:
            top = int(b_lens.max()) if len(idx) else 0
            x = X[idx, :top] if batch_first else X[:top, idx]
            x = x.astype(out_dtype, copy=False)
        return x, b_lens, None if y is None else y[idx]

    return _Batches(plan, make)
