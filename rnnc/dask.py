"""Batch inference on Dask: ``rnnc.dask.apply(module, x, lengths=None)``.

A frozen copy of the module (inference mode) is put in the task graph once: scattered to every
worker (``Client.scatter(..., broadcast=True)``) when a ``dask.distributed`` client is active,
else one key of the graph (``dask.delayed`` of the object) for the threaded or synchronous
scheduler. Each task then runs the module on one block of rows and returns NumPy arrays, so what
moves per task is that block (and its results), never the weights. The pattern is dask-ml's
``ParallelPostFit``. ``import rnnc`` never imports this module (nor Dask): it needs the
``dask`` extra, ``pip install "rnnc[dask]"``.

Threads per task: rnnc's thread setting (``rnnc.set_num_threads``: BLAS and rnnc's own pool)
is one setting per process. Inside a task on a distributed worker it is the worker's
``nthreads`` (the cores the worker was given); inside a task of Dask's local schedulers, where
several tasks share the process (some on the calling thread), it is 1. The setting found is
restored when the last concurrent task of the process ends, so nothing lasts after a
computation.
"""
import copy
import threading

import numpy as np

from rnnc._validation import check_size

__all__ = ["apply"]


def _import_dask():
    try:
        import dask
        import dask.array as da
        import dask.bag as db
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        raise ImportError("rnnc.dask needs Dask: pip install \"rnnc[dask]\" (or "
                          "\"dask[distributed]\")") from exc
    return dask, da, db


# -- the module, once per worker ---------------------------------------------------------------
def _frozen_copy(module):
    """A copy of ``module`` in inference mode with its weights frozen; the user's module is left
    as it is (mode, frozen state, packed weights)."""
    if not callable(module):
        raise TypeError(f"module must be an rnnc module (a callable such as rnnc.LSTM or "
                        f"rnnc.Sequential), got {type(module).__name__}")
    frozen = copy.deepcopy(module)
    if hasattr(frozen, "eval"):
        frozen.eval()
    if hasattr(frozen, "freeze"):
        frozen.freeze()
    return frozen


def _default_client():
    """The active dask.distributed client, or None (no distributed, or no client)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - dask without distributed
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _ship(frozen, client):
    """What the tasks take as the module: a future of the object scattered to every worker, or
    a Delayed holding it (one key of the graph)."""
    dask, _, _ = _import_dask()
    if client is None:
        client = _default_client()
    if client is not None:
        # hash=False: a fresh key, so that two apply calls never share (or release) one copy.
        return client.scatter(frozen, broadcast=True, hash=False)
    return dask.delayed(frozen, pure=False, traverse=False)


# -- threads per task ------------------------------------------------------------------------
_threads_lock = threading.Lock()
_threads_state = {"count": 0, "saved": None}


def _task_threads():
    """rnnc threads for a task running now: the worker's nthreads on a distributed worker, else 1
    (Dask's threaded scheduler)."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        state = getattr(worker, "state", worker)
        return max(1, int(getattr(state, "nthreads", 1)))
    # Dask's local schedulers run several tasks at once, some on the calling thread itself.
    return 1


class _TaskThreads:
    """Hold rnnc's thread setting at ``n`` while tasks run; restore it when the last concurrent
    task leaves (a per-task set-and-restore, undone out of order, would leave the process at
    the wrong count)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        if self.n is None:
            return self
        import rnnc
        with _threads_lock:
            if _threads_state["count"] == 0:
                found = rnnc.get_num_threads()
                _threads_state["saved"] = found
                if found != self.n:
                    rnnc.set_num_threads(self.n)
            _threads_state["count"] += 1
        return self

    def __exit__(self, *exc):
        if self.n is None:
            return False
        import rnnc
        with _threads_lock:
            _threads_state["count"] -= 1
            if _threads_state["count"] == 0:
                saved = _threads_state["saved"]
                _threads_state["saved"] = None
                if saved != self.n:
                    rnnc.set_num_threads(saved)
        return False


# -- results as trees of arrays ----------------------------------------------------------------
def _leaves(tree):
    """The arrays of a result (an array, or nested tuples of arrays and None), in order."""
    if tree is None:
        return []
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def _rebuild(tree, leaves):
    """``tree``'s structure with its arrays replaced by ``leaves`` (an iterator)."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        return tuple(_rebuild(item, leaves) for item in tree)
    return next(leaves)


def _axis_of(shapes_a, shapes_b, what):
    """Per leaf, the one axis whose size differs between two probes (None if none does)."""
    axes = []
    for sa, sb in zip(shapes_a, shapes_b):
        diff = [k for k, (a, b) in enumerate(zip(sa, sb)) if a != b]
        if len(diff) > 1:  # pragma: no cover - no rnnc module does this
            raise ValueError(f"cannot tell the {what} axis of a result of shapes {sa} and {sb}")
        axes.append(diff[0] if diff else None)
    return axes


def _layout_of(module):
    """The module's batch_first (False when it declares none, as Sequential does then)."""
    layer = getattr(module, "forward_layer", module)       # Bidirectional
    return bool(getattr(layer, "batch_first", False))


def _probe(frozen, batch_first, I, dtype):  # noqa: E741 - input features
    """Run the module on zeros of batch 1 and 2 and time 1 and 2, to learn the structure of its
    result, each array's dtype, its batch axis and its time axis (None: it has none)."""
    def run(B, T):
        shape = (B, T, I) if batch_first else (T, B, I)
        return frozen(np.zeros(shape, dtype=dtype))
    base = run(1, 1)
    leaves = _leaves(base)
    shapes = [np.shape(a) for a in leaves]
    batch_axes = _axis_of(shapes, [np.shape(a) for a in _leaves(run(2, 1))], "batch")
    time_axes = _axis_of(shapes, [np.shape(a) for a in _leaves(run(1, 2))], "time")
    dtypes = [np.asarray(a).dtype for a in leaves]
    return base, shapes, batch_axes, time_axes, dtypes


# -- tasks -------------------------------------------------------------------------------------
def _run_block(module, x, lengths):
    """One task: the module on one block of rows, at the worker's thread count."""
    with _TaskThreads(_task_threads()):
        if lengths is None:
            return module(x)
        return module(x, lengths=lengths)


def _leaf(result, k):
    return _leaves(result)[k]


def _run_partition(sequences, module, batch_size, batch_first, dtype, batch_axes, time_axes,
                   tree):
    """One task of a bag: the partition's sequences sorted by decreasing length (stable), cut
    into batches of ``batch_size``, padded, run, and cut back into per-sequence results in the
    partition's order."""
    from rnnc.data import pad_sequences
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        return []
    lens = np.array([s.shape[0] if s.ndim else -1 for s in seqs], dtype=np.intp)
    order = np.argsort(-lens, kind="stable")
    results = [None] * len(seqs)
    with _TaskThreads(_task_threads()):
        for start in range(0, len(seqs), batch_size):
            idx = order[start:start + batch_size]
            padded, b_lens = pad_sequences([seqs[i] for i in idx], batch_first=batch_first,
                                           dtype=dtype)
            leaves = [np.asarray(a) for a in _leaves(module(padded, lengths=b_lens))]
            for j, i in enumerate(idx):
                per_seq = []
                for a, b_ax, t_ax in zip(leaves, batch_axes, time_axes):
                    index = [slice(None)] * a.ndim
                    if t_ax is not None:
                        index[t_ax] = slice(0, int(b_lens[j]))
                    index[b_ax] = j
                    # A copy, so that one sequence's result does not keep the batch alive.
                    per_seq.append(a[tuple(index)].copy())
                results[i] = _rebuild(tree, iter(per_seq))
    return results


# -- the entry point ---------------------------------------------------------------------------
def apply(module, x, lengths=None, *, batch_size=64, client=None):
    """Run ``module`` on a Dask array or bag; ``module(x, lengths=lengths)`` as Dask
    collections.

    Parameters
    ----------
    module : rnnc module
        ``RNN``, ``GRU``, ``LSTM`` (any options), ``Bidirectional`` or ``Sequential`` (with
        ``Pool`` and ``Linear``). A frozen copy in inference mode runs on the workers; the
        module given is not changed. It is sent once: scattered to every worker when a
        ``dask.distributed`` client is active (or ``client`` is given), else one key of the
        graph.
    x : dask.array.Array or dask.bag.Bag
        An array in the module's layout, (N, T, I) with ``batch_first``, else (T, N, I),
        chunked along the batch axis only (one chunk along T and I: rechunk with
        ``x.rechunk({t_axis: -1, 2: -1})`` first; this function does not move data behind your
        back). Each block of rows is one task. Or a bag of sequences (T_i, I), of any
        lengths: each partition is sorted by decreasing length (stable) and cut into batches
        of ``batch_size`` rows, each padded to its own longest sequence.
    lengths : dask array or array_like of ints, (N,), optional
        The valid steps of each row of an array x (PyTorch's packed-sequence semantics);
        rechunked to x's batch chunks (it is small). Not for a bag, whose sequences carry their
        lengths.
    batch_size : int, default 64
        Rows per batch within a bag's partition (arrays keep their chunks).
    client : dask.distributed.Client, optional
        Where to scatter the module; default: the active client, if any.

    Returns
    -------
    For an array: what ``module(x, lengths=lengths)`` returns, every array a
    ``dask.array.Array`` chunked along its batch axis as x is (``(output, h_n)``, ``(output,
    (h_n, c_n))`` for an LSTM, states (D*L, N, H) with batch on axis 1; ``(N, F)`` for a
    Sequential ending in ``Pool`` and ``Linear``).
    For a bag: a bag of per-sequence results in the input order and partitions: for a layer
    ``(output (T_i, D*P), h_n (D*L, H))`` (``(output, (h_n, c_n))`` for an LSTM), for a
    Sequential its output row ((F,) after a ``Pool``, else (T_i, F)).

    Results are those of ``module(x_block, lengths=lengths_block)`` on each block of rows in
    one process at the task's thread count, bit for bit. A call on a different composition of
    rows (the whole batch at once, a sequence alone) may differ in the last bits in float32.

    Raises
    ------
    TypeError
        x not a Dask array or bag, a module that is not callable, lengths of a non-integer
        dtype.
    ValueError
        x not 3-D, chunked along its time or feature axis, of unknown chunk sizes; lengths of
        the wrong shape, or given with a bag.

    Examples
    --------
    >>> import dask.array as da, numpy as np, rnnc, rnnc.dask
    >>> lstm = rnnc.LSTM(8, 16, batch_first=True, seed=0)
    >>> x = da.from_array(np.ones((100, 5, 8), np.float32), chunks=(25, 5, 8))
    >>> out, (h_n, c_n) = rnnc.dask.apply(lstm, x)
    >>> out.shape, out.chunks[0], h_n.chunks[1]
    ((100, 5, 16), (25, 25, 25, 25), (25, 25, 25, 25))
    """
    dask, da, db = _import_dask()
    batch_size = check_size(batch_size, "batch_size")
    if isinstance(x, db.Bag):
        if lengths is not None:
            raise ValueError("lengths is for x given as a Dask array; the sequences of a bag "
                             "carry their own lengths")
        return _apply_bag(module, x, batch_size, client)
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array (N, T, I) / (T, N, I) or a dask.bag.Bag "
                        f"of sequences, got {type(x).__name__}")
    return _apply_array(module, x, lengths, client)


def _apply_array(module, x, lengths, client):
    dask, da, _ = _import_dask()
    frozen = _frozen_copy(module)
    batch_first = _layout_of(frozen)
    if x.ndim != 3:
        layout = "(N, T, I) (batch_first)" if batch_first else "(T, N, I)"
        raise ValueError(f"x must be a 3-D dask array {layout}, got {x.ndim}-D with shape "
                         f"{x.shape}")
    b_axis, t_axis = (0, 1) if batch_first else (1, 0)
    if any(np.isnan(c) for chunks in x.chunks for c in chunks):
        raise ValueError("x has unknown chunk sizes: call x.compute_chunk_sizes() first")
    for axis, name in ((t_axis, "time"), (2, "feature")):
        if len(x.chunks[axis]) > 1:
            raise ValueError(f"x must be chunked along its batch axis {b_axis} only, but its "
                             f"{name} axis {axis} has chunks {x.chunks[axis]}: rechunk with "
                             f"x.rechunk({{{t_axis}: -1, 2: -1}})")
    N, T = x.shape[b_axis], x.shape[t_axis]
    b_chunks = x.chunks[b_axis]
    if lengths is not None:
        if not isinstance(lengths, da.Array):
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu":
                raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
            lengths = da.from_array(lengths, chunks=lengths.shape or 1)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        if lengths.shape != (N,):
            raise ValueError(f"lengths must have shape ({N},) (one per row of x), got "
                             f"{lengths.shape}")
        lengths = lengths.rechunk((b_chunks,))
    tree, shapes, batch_axes, time_axes, dtypes = _probe(frozen, batch_first, x.shape[2],
                                                         x.dtype)
    shipped = _ship(frozen, client)
    x_blocks = x.to_delayed().ravel()
    l_blocks = [None] * len(b_chunks) if lengths is None else lengths.to_delayed().ravel()
    run = dask.delayed(_run_block, pure=True)
    parts = [run(shipped, xb, lb) for xb, lb in zip(x_blocks, l_blocks)]
    leaf = dask.delayed(_leaf, pure=True)
    arrays = []
    for k, (shape, b_ax, t_ax, dt) in enumerate(zip(shapes, batch_axes, time_axes, dtypes)):
        blocks = []
        for part, rows in zip(parts, b_chunks):
            block_shape = list(shape)
            block_shape[b_ax] = rows
            if t_ax is not None:
                block_shape[t_ax] = T
            blocks.append(da.from_delayed(leaf(part, k), tuple(block_shape), dtype=dt))
        arrays.append(da.concatenate(blocks, axis=b_ax))
    return _rebuild(tree, iter(arrays))


def _apply_bag(module, bag, batch_size, client):
    dask, _, _ = _import_dask()
    frozen = _frozen_copy(module)
    batch_first = _layout_of(frozen)
    first = _first_layer(frozen)
    I, dtype = getattr(first, "input_size", None), getattr(first, "dtype", None)  # noqa: E741
    if I is None or dtype is None:
        raise ValueError(f"module must start with a recurrent layer (RNN, GRU, LSTM or "
                         f"Bidirectional) to run on a bag, got {type(first).__name__} first")
    tree, _, batch_axes, time_axes, _ = _probe(frozen, batch_first, I, dtype)
    skeleton = _rebuild(tree, iter(range(len(_leaves(tree)))))
    shipped = _ship(frozen, client)
    return bag.map_partitions(_run_partition, shipped, batch_size, batch_first, dtype,
                              batch_axes, time_axes, skeleton)


def _first_layer(module):
    """The layer that reads the input: the first of a Sequential, the forward layer of a
    Bidirectional."""
    while True:
        if hasattr(module, "forward_layer"):
            module = module.forward_layer
        elif hasattr(module, "_layers") and isinstance(module._layers, (list, tuple)) \
                and module._layers:
            module = module._layers[0]
        else:
            return module
