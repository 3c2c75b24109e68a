"""rnnc on Dask: batch inference, ``apply(module, x, lengths=None)``, and synchronous
data-parallel training, ``gradients(module, loss, x, y)`` and ``fit(module, loss, optimizer,
x, y)``.

Training: at each step the current weights are scattered once to every worker, each block of
the data (an array's chunk of rows, a bag's partition) computes the loss and gradients of its
rows of the batch, the results are added pairwise on the workers (a tree, as Dask's
reductions do), and one sum reaches the client, which takes ONE optimizer step: PyTorch's
DistributedDataParallel or Horovod, with the all-reduce done as a tree reduce. rnnc's losses
are means; each batch's mean and gradient are weighted by the elements they are over, so the
sum divided by the total is the full batch's mean and gradient (in float64, to ~1e-15).

Inference:

A frozen copy of the module (inference mode) is put in the task graph once: scattered to every
worker (``Client.scatter(..., broadcast=True)``) when a ``dask.distributed`` client is active,
else one key of the graph (``dask.delayed`` of the object) for the threaded or synchronous
scheduler. Each task then runs the module on one block of rows and returns NumPy arrays, so what
moves per task is that block (and its results), never the weights. The pattern is dask-ml's
``ParallelPostFit``. ``import rnnc`` never imports this module (nor Dask): it needs the
``dask`` extra, ``pip install "rnnc[dask]"``.

Threads per task (inference and training): rnnc's thread setting (``rnnc.set_num_threads``:
BLAS and rnnc's own pool) is one setting per process. Inside a task on a distributed worker it
is the worker's ``nthreads`` (the cores the worker was given); inside a task of Dask's local
schedulers, where several tasks share the process (some on the calling thread), it is 1. The
setting found is restored when the last concurrent task of the process ends, also when a task
fails, so nothing lasts after a computation (``rnnc._engine.threads.thread_setting``).
"""
import copy

import numpy as np

from rnnc._engine.threads import thread_setting
from rnnc._validation import check_bool, check_size

__all__ = ["apply", "gradients", "fit"]


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


def _task_setting():
    """The thread setting of a task (rnnc._engine.threads.thread_setting: counted, so that
    tasks overlapping on one worker restore the setting when the last of them ends)."""
    return thread_setting(_task_threads())


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
    with _task_setting():
        if lengths is None:
            return module(x)
        return module(x, lengths=lengths)


def _leaf(result, k):
    return _leaves(result)[k]


def _run_partition(sequences, module, batch_size, batch_first, dtype, batch_axes, time_axes,
                   tree, bucket=True):
    """One task of a bag: the partition's sequences sorted by decreasing length (stable; in
    their order without bucket), cut into batches of ``batch_size``, padded, run, and cut back
    into per-sequence results in the partition's order."""
    from rnnc.data import pad_sequences
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        return []
    lens = np.array([s.shape[0] if s.ndim else -1 for s in seqs], dtype=np.intp)
    order = np.argsort(-lens, kind="stable") if bucket else np.arange(len(seqs))
    results = [None] * len(seqs)
    with _task_setting():
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
def apply(module, x, lengths=None, *, batch_size=64, bucket=True, client=None):
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
        lengths: each partition is sorted by decreasing length (stable; see bucket) and cut
        into batches of ``batch_size`` rows, each padded to its own longest sequence.
    lengths : dask array or array_like of ints, (N,), optional
        The valid steps of each row of an array x (PyTorch's packed-sequence semantics);
        rechunked to x's batch chunks (it is small). Not for a bag, whose sequences carry their
        lengths.
    batch_size : int, default 64
        Rows per batch within a bag's partition (arrays keep their chunks).
    bucket : bool, default True
        For a bag: sort each partition by decreasing length before cutting it into batches,
        so that a batch pads little (False: batches in the partition's order). Results come
        back in the input order either way.
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
        return _apply_bag(module, x, batch_size, check_bool(bucket, "bucket"), client)
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array (N, T, I) / (T, N, I) or a dask.bag.Bag "
                        f"of sequences, got {type(x).__name__}")
    return _apply_array(module, x, lengths, client)


def _check_array(x, lengths, batch_first):
    """Check a dask array x in the module's layout, chunked along the batch axis only, and
    its lengths; returns (batch axis, time axis, lengths as a dask array rechunked to x's
    batch chunks, or None)."""
    _, da, _ = _import_dask()
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
    N = x.shape[b_axis]
    if lengths is not None:
        if not isinstance(lengths, da.Array):
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu":
                raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
            T = x.shape[t_axis]
            if lengths.size and (lengths.min() < 0 or lengths.max() > T):
                raise ValueError(f"lengths must lie in [0, {T}] (x's time steps), got min "
                                 f"{lengths.min()}, max {lengths.max()}")
            lengths = da.from_array(lengths, chunks=lengths.shape or 1)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        if lengths.shape != (N,):
            raise ValueError(f"lengths must have shape ({N},) (one per row of x), got "
                             f"{lengths.shape}")
        lengths = lengths.rechunk((x.chunks[b_axis],))
    return b_axis, t_axis, lengths


def _apply_array(module, x, lengths, client):
    dask, da, _ = _import_dask()
    frozen = _frozen_copy(module)
    batch_first = _layout_of(frozen)
    b_axis, t_axis, lengths = _check_array(x, lengths, batch_first)
    T = x.shape[t_axis]
    b_chunks = x.chunks[b_axis]
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


def _apply_bag(module, bag, batch_size, bucket, client):
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
                              batch_axes, time_axes, skeleton, bucket)


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


# -- data-parallel training --------------------------------------------------------------------
_LOSS_NAMES = ("mse", "softmax_cross_entropy", "cross_entropy")


def _loss_spec(loss):
    """(kind, function): kind "mse" or "softmax_cross_entropy" for rnnc's mean losses (given by
    name or as the functions of rnnc.losses), whose shard results the tasks weight by the
    elements they count; "custom" for any other callable."""
    from rnnc import losses
    if isinstance(loss, str):
        if loss not in _LOSS_NAMES:
            raise ValueError(f"loss must be one of {_LOSS_NAMES} or a callable loss(pred, "
                             f"target, mask), got {loss!r}")
        return ("mse", None) if loss == "mse" else ("softmax_cross_entropy", None)
    if loss is losses.mse:
        return "mse", None
    if loss is losses.softmax_cross_entropy:
        return "softmax_cross_entropy", None
    if not callable(loss):
        raise TypeError(f"loss must be one of {_LOSS_NAMES}, a function of rnnc.losses or a "
                        f"callable loss(pred, target, mask) -> (value, grad[, weight]), got "
                        f"{type(loss).__name__}")
    return "custom", loss


def _check_trainable(module):
    for method in ("named_parameters", "train", "backward", "zero_grad"):
        if not callable(getattr(module, method, None)):
            raise TypeError(f"module must be a trainable rnnc module (RNN, GRU, LSTM, "
                            f"Bidirectional, Linear or Sequential: with {method}()), got "
                            f"{type(module).__name__}")


def _submodules(module):
    """The module and every module inside it (layers of a Sequential, the two layers of a
    Bidirectional)."""
    yield module
    layers = getattr(module, "_layers", None)
    if isinstance(layers, (list, tuple)):
        for layer in layers:
            yield from _submodules(layer)
    for name in ("forward_layer", "backward_layer"):
        child = getattr(module, name, None)
        if child is not None:
            yield from _submodules(child)


def _replica(module):
    """What the tasks of one step share: a copy of the module in training mode (the user's
    module is left as it is), unfrozen (a frozen module's packed weights are no use to a
    backward pass)."""
    replica = copy.deepcopy(module)
    if getattr(replica, "frozen", False):
        replica.unfreeze()
    replica.train()
    return replica


def _task_module(shipped, seed_key):
    """The task's own copy of the shipped module (a training forward keeps its record on the
    module, so tasks on one worker cannot share one), its random generators (dropout) drawn
    anew from ``seed_key`` so that shards draw different masks."""
    module = copy.deepcopy(shipped)
    subs = [m for m in _submodules(module) if hasattr(m, "_rng")]
    for m, seq in zip(subs, np.random.SeedSequence(seed_key).spawn(len(subs))):
        m._rng = np.random.default_rng(seq)
    return module


def _check_weight(weight):
    import numbers
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real):
        raise TypeError(f"the weight a loss returns (its third value: how many elements its "
                        f"mean is over) must be a real number, got {type(weight).__name__}")
    if not (np.isfinite(weight) and weight >= 0):
        raise ValueError(f"the weight a loss returns (its third value) must be finite and "
                         f">= 0, got {weight!r}")
    return float(weight)


def _batch_result(module, kind, fn, x, lengths, y, batch_first):
    """(value, weight, grads) of one batch: a mean loss times its weight (the elements it is
    the mean of) and its gradients times the same, or a sum loss (weight None) as it is."""
    from rnnc import losses
    module.zero_grad()
    out = module(x) if lengths is None else module(x, lengths=lengths)
    pred = out[0] if isinstance(out, tuple) else out
    if not isinstance(pred, np.ndarray):
        raise TypeError(f"module's output must be an array to take a loss of, got "
                        f"{type(pred).__name__} (a Bidirectional with merge_mode=None returns "
                        f"a pair)")
    mask = None
    if lengths is not None and pred.ndim == 3:
        mask = losses.lengths_mask(lengths, pred.shape[1 if batch_first else 0], batch_first)
        if not mask.any():
            return None
    if kind == "mse":
        value, grad = losses.mse(pred, y, mask)
        weight = float(pred.size if mask is None else np.count_nonzero(mask) * pred.shape[-1])
    elif kind == "softmax_cross_entropy":
        value, grad = losses.softmax_cross_entropy(pred, y, mask)
        weight = float(pred.size // pred.shape[-1] if mask is None else np.count_nonzero(mask))
    else:
        result = fn(pred, y, mask)
        if not isinstance(result, tuple) or len(result) not in (2, 3):
            raise TypeError(f"loss must return (value, grad) for a sum or (value, grad, "
                            f"weight) for a mean over weight elements, got "
                            f"{type(result).__name__}")
        value, grad = result[0], result[1]
        weight = _check_weight(result[2]) if len(result) == 3 else None
    _, _, grads = module.backward(grad)
    value = float(value)
    if weight is None:
        return value, None, {k: np.array(g) for k, g in grads.items()}
    return value * weight, weight, {k: g * g.dtype.type(weight) for k, g in grads.items()}


def _add(a, b):
    """The sum of two shard results (None: a shard without selected elements)."""
    if a is None:
        return b
    if b is None:
        return a
    if (a[1] is None) != (b[1] is None):
        raise TypeError("loss returned a weight (a third value) for some batches and not for "
                        "others: return (value, grad) always (a sum) or (value, grad, weight) "
                        "always (a mean)")
    weight = None if a[1] is None else a[1] + b[1]
    grads = dict(a[2])
    for k, g in b[2].items():
        grads[k] = grads[k] + g if k in grads else g
    return a[0] + b[0], weight, grads


def _rows_of(block_rows, rows):
    return np.arange(block_rows) if rows is None else np.asarray(rows)


def _array_shard(shipped, x, lengths, y, rows, batch_size, batch_first, y_axes, seed_key):
    """One task: the summed results of the block's rows ``rows`` (None: all), in batches of
    ``batch_size`` rows cut to their longest sequence. y_axes: y's (batch, time) axes, the time
    axis None when the loss is on one row per sequence."""
    module, kind, fn = shipped
    y_b, y_t = y_axes
    with _task_setting():
        module = _task_module(module, seed_key)
        rows = _rows_of(x.shape[0 if batch_first else 1], rows)
        total = None
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            xb = x[idx] if batch_first else x[:, idx]
            yb = np.take(y, idx, axis=y_b)
            lb = None
            if lengths is not None:
                lb = lengths[idx]
                top = int(lb.max())
                if top == 0:
                    continue
                xb = xb[:, :top] if batch_first else xb[:top]
                if y_t is not None:
                    yb = yb[:, :top] if y_t == 1 else yb[:top]
            total = _add(total, _batch_result(module, kind, fn, xb, lb, yb, batch_first))
    return total


def _bag_shard(shipped, partition, rows, batch_size, batch_first, dtype, y_time, seed_key):
    """One task of a bag of (sequence, target) pairs: the partition's items ``rows`` (None: all)
    sorted by decreasing length (stable), in padded batches of ``batch_size``."""
    from rnnc.data import pad_sequences
    module, kind, fn = shipped
    items = partition if isinstance(partition, list) else list(partition)
    rows = _rows_of(len(items), rows)
    pairs = []
    for i in rows:
        item = items[int(i)]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"x must be a bag of (sequence, target) pairs, got an item of type "
                            f"{type(item).__name__}" + (f" and length {len(item)}"
                                                        if hasattr(item, "__len__") else ""))
        pairs.append((np.asarray(item[0]), np.asarray(item[1])))
    if not pairs:
        return None
    order = np.argsort([-len(s) for s, _ in pairs], kind="stable")
    total = None
    with _task_setting():
        module = _task_module(module, seed_key)
        for start in range(0, len(order), batch_size):
            chosen = [pairs[i] for i in order[start:start + batch_size]]
            if max(len(s) for s, _ in chosen) == 0:
                continue
            xb, lb = pad_sequences([s for s, _ in chosen], batch_first=batch_first, dtype=dtype)
            targets = [t for _, t in chosen]
            yb = pad_sequences(targets, batch_first=batch_first)[0] if y_time else \
                np.stack(targets)
            total = _add(total, _batch_result(module, kind, fn, xb, lb, yb, batch_first))
    return total


def _partition_size(partition):
    return [len(partition) if hasattr(partition, "__len__") else len(list(partition))]


class _Shards:
    """The data of gradients() and fit(), checked, in blocks (an array's chunks of rows, a
    bag's partitions), and the task that computes one block's results."""

    def __init__(self, module, loss, x, y, lengths, batch_size, client, persist):
        dask, da, db = _import_dask()
        _check_trainable(module)
        self.kind, self.fn = _loss_spec(loss)
        self.batch_size = check_size(batch_size, "batch_size")
        if client is not None and not (callable(getattr(client, "scatter", None))
                                       and callable(getattr(client, "compute", None))):
            raise TypeError(f"client must be a dask.distributed.Client (or None: the active "
                            f"one, else Dask's threaded scheduler), got {type(client).__name__}")
        self.client = client if client is not None else _default_client()
        probe = copy.deepcopy(module)
        if getattr(probe, "frozen", False):
            probe.unfreeze()
        probe.eval()
        self.batch_first = batch_first = _layout_of(probe)
        if isinstance(x, db.Bag):
            if y is not None:
                raise ValueError("y is for x given as a Dask array; a bag holds (sequence, "
                                 "target) pairs")
            if lengths is not None:
                raise ValueError("lengths is for x given as a Dask array; the sequences of a "
                                 "bag carry their own lengths")
            first = _first_layer(probe)
            I, dtype = getattr(first, "input_size", None), getattr(first, "dtype", None)  # noqa: E741
            if I is None or dtype is None:
                raise ValueError(f"module must start with a recurrent layer (RNN, GRU, LSTM or "
                                 f"Bidirectional) to train on a bag, got {type(first).__name__} "
                                 "first")
            _, _, _, time_axes, _ = _probe(probe, batch_first, I, dtype)
            self.bag, self.dtype, self.y_time = True, dtype, time_axes[0] is not None
            if persist:
                x = self._persist(x)
            self.blocks = x.to_delayed()
            self.sizes = np.asarray(self._compute(x.map_partitions(_partition_size)),
                                    dtype=np.intp)
            return
        if not isinstance(x, da.Array):
            raise TypeError(f"x must be a dask.array.Array (N, T, I) / (T, N, I) or a "
                            f"dask.bag.Bag of (sequence, target) pairs, got "
                            f"{type(x).__name__}")
        self.bag = False
        b_axis, t_axis, lengths = _check_array(x, lengths, batch_first)
        N, T = x.shape[b_axis], x.shape[t_axis]
        _, shapes, batch_axes, time_axes, _ = _probe(probe, batch_first, x.shape[2], x.dtype)
        # y follows the prediction: its batch axis, and its time axis when it has one.
        y_b = batch_axes[0]
        y_t = time_axes[0]
        y = self._check_y(y, N, T, y_b, y_t, len(shapes[0]), x.chunks[b_axis])
        self.y_axes = (y_b, y_t)
        if persist:
            x, lengths, y = self._persist(x, lengths, y)
        self.sizes = np.asarray(x.chunks[b_axis], dtype=np.intp)
        xs = x.to_delayed().ravel()
        ls = [None] * len(xs) if lengths is None else lengths.to_delayed().ravel()
        ys = y.to_delayed().ravel()
        self.blocks = list(zip(xs, ls, ys))

    @staticmethod
    def _check_y(y, N, T, y_b, y_t, pred_ndim, b_chunks):
        _, da, _ = _import_dask()
        if y is None:
            raise ValueError("y is required with x given as a Dask array: the targets, one "
                             "row per row of x")
        if not isinstance(y, da.Array):
            try:
                y_np = np.asarray(y)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"y must be a dask array or array_like, got "
                                f"{type(y).__name__}") from exc
            if y_np.dtype.kind not in "iuf":
                raise TypeError(f"y must hold real numbers (targets) or integers (class "
                                f"labels), got dtype {y_np.dtype}")
            y = da.from_array(y_np, chunks=y_np.shape or 1)
        expected = "(N, ...)" if y_t is None else ("(N, T, ...)" if y_t == 1 else "(T, N, ...)")
        if y.ndim not in (pred_ndim - 1, pred_ndim) or y.ndim <= y_b \
                or (y_t is not None and y.ndim <= y_t) or y.shape[y_b] != N \
                or (y_t is not None and y.shape[y_t] != T):
            raise ValueError(f"y must have shape {expected} with N = {N}"
                             + ("" if y_t is None else f", T = {T}")
                             + f" like the module's output (one axis fewer for class labels), "
                               f"got {y.shape}")
        if any(np.isnan(c) for chunks in y.chunks for c in chunks):
            raise ValueError("y has unknown chunk sizes: call y.compute_chunk_sizes() first")
        chunks = {k: -1 for k in range(y.ndim)}
        chunks[y_b] = b_chunks
        return y.rechunk(chunks)

    def _persist(self, *collections):
        dask, _, _ = _import_dask()
        present = [c for c in collections if c is not None]
        if self.client is not None:
            done = self.client.persist(present)
        else:
            done = dask.persist(*present, scheduler="threads")
        # Kept: the persisted collections hold the futures of their blocks (a dask.distributed
        # client forgets blocks nothing refers to); their delayed blocks do not.
        self._persisted = list(done)
        it = iter(done)
        out = [None if c is None else next(it) for c in collections]
        return out[0] if len(out) == 1 else out

    def _compute(self, obj):
        dask, _, _ = _import_dask()
        if self.client is not None:
            return self.client.compute(obj).result()
        # Not Dask's default for bags (processes): they would pickle the module per task.
        return dask.compute(obj, scheduler="threads")[0]

    def ship(self, module):
        """The module and the loss for one step's tasks: scattered to every worker (a
        dask.distributed client), else one key of the graph."""
        dask, _, _ = _import_dask()
        bundle = (_replica(module), self.kind, self.fn)
        if self.client is not None:
            # In a list: scatter sends the items of a tuple as futures of their own.
            return self.client.scatter([bundle], broadcast=True, hash=False)[0]
        return dask.delayed(bundle, pure=False, traverse=False)

    def task(self, k, shipped, rows, seed_key):
        dask, _, _ = _import_dask()
        if self.bag:
            return dask.delayed(_bag_shard, pure=True)(
                shipped, self.blocks[k], rows, self.batch_size, self.batch_first, self.dtype,
                self.y_time, seed_key)
        xb, lb, yb = self.blocks[k]
        return dask.delayed(_array_shard, pure=True)(
            shipped, xb, lb, yb, rows, self.batch_size, self.batch_first, self.y_axes, seed_key)

    def run(self, module, rows_per_block, seed_key):
        """(value, weight, grads) summed over the blocks of ``rows_per_block`` ({block: rows,
        None for all}) with the module's current weights: one scatter of the weights, one task
        per block, pairwise sums on the workers, one result to the client."""
        dask, _, _ = _import_dask()
        shipped = self.ship(module)
        parts = [self.task(k, shipped, rows, list(seed_key) + [int(k)])
                 for k, rows in rows_per_block.items()]
        add = dask.delayed(_add, pure=True)
        while len(parts) > 1:
            parts = [add(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        return self._compute(parts[0])


def _finish(total, module):
    """(loss, grads) from a summed result: the mean loss and its gradients (a mean loss), or the
    sums (a loss that returns no weight), in the module's parameter order and dtypes."""
    if total is None or (total[1] is not None and total[1] == 0):
        raise ValueError("the data select no element for the loss (every length is 0)")
    value, weight, grads = total
    params = dict(module.named_parameters())
    out = {}
    for name, arr in params.items():
        if name in grads:
            g = grads[name]
            if weight is not None:
                g = g / np.asarray(weight, dtype=g.dtype)
            out[name] = np.asarray(g, dtype=arr.dtype)
    return (value if weight is None else value / weight), out


def _seed_entropy(seed):
    """An int entropy for the dropout generators of the tasks."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def gradients(module, loss, x, y=None, lengths=None, *, batch_size=64, client=None):
    """The loss over all of x and its gradients with respect to the module's parameters,
    computed on the workers: one synchronous data-parallel step without the update.

    Parameters
    ----------
    module : rnnc module
        ``RNN``, ``GRU``, ``LSTM``, ``Bidirectional``, ``Linear`` or ``Sequential``. Copied in
        training mode (the module given is not changed) and sent once (scattered to every
        worker with a dask.distributed client, else one key of the graph).
    loss : "mse", "softmax_cross_entropy" (or "cross_entropy"), a function of rnnc.losses, or a
        callable ``loss(pred, target, mask) -> (value, grad)`` or ``(value, grad, weight)``
        Called on each batch with the module's output (the first array of a layer's
        ``(output, h_n)``), the batch's targets and a (T, B) / (B, T) mask of the valid steps
        (``losses.lengths_mask``; None without lengths or for one row per sequence). rnnc's
        losses are means; each batch's value and gradient are weighted by the elements the mean
        is over (mse: valid steps times features; cross-entropy: valid positions) and the sums
        divided by the total, so the result is the mean over all the data. A custom loss
        returning ``(value, grad)`` is a sum (values and gradients are added); returning a
        ``weight`` too makes it a mean over ``weight`` elements, weighted the same way.
    x : dask.array.Array or dask.bag.Bag
        An array in the module's layout, chunked along the batch axis only (as for
        ``apply``); each chunk is one task, cut into batches of ``batch_size`` rows, each cut
        to its longest sequence. Or a bag of ``(sequence (T_i, I), target)`` pairs; each
        partition is one task, its items sorted by decreasing length and cut into padded
        batches of ``batch_size``; per-step targets (T_i, ...) are padded likewise.
    y : dask array or array_like, for an array x
        Targets in the output's layout ((T, N, F) / (N, T, F) per step, class labels (T, N) /
        (N, T), or (N, ...) for one row per sequence after a ``Pool``); rechunked to x's
        batch chunks.
    lengths : dask array or array_like of ints, (N,), optional (array x only)
    batch_size : int, default 64
        Rows per forward and backward pass within a task (memory; the result does not depend
        on it beyond rounding).
    client : dask.distributed.Client, optional
        Default: the active client if any, else Dask's threaded scheduler.

    Returns
    -------
    loss : float
    grads : dict
        ``{name: gradient}`` for the module's parameters (``module.named_parameters()``
        names, order and dtypes), as ``module.backward`` returns them after a forward on
        all the data at once (within rounding: in float64 to ~1e-15 relative).

    What moves: the weights once (to every worker), per task its block's gradients to the
    worker that adds it to its neighbour's (pairwise sums, a tree), and one sum to the client.
    Blocks are computed where they are; they never move to the client.

    Examples
    --------
    >>> import dask.array as da, numpy as np, rnnc, rnnc.dask
    >>> lstm = rnnc.LSTM(3, 4, dtype=np.float64, seed=0)
    >>> xn = np.random.default_rng(0).standard_normal((6, 10, 3))       # (T, N, I)
    >>> x, y = da.from_array(xn, chunks=(6, 5, 3)), da.zeros((6, 10, 4), chunks=(6, 5, 4))
    >>> value, grads = rnnc.dask.gradients(lstm, "mse", x, y, lengths=np.arange(10) % 6 + 1)
    >>> sorted(grads) == sorted(name for name, _ in lstm.named_parameters())
    True
    """
    shards = _Shards(module, loss, x, y, lengths, batch_size, client, persist=False)
    total = shards.run(module, {k: None for k in range(len(shards.sizes))},
                       [_seed_entropy(None), 0])
    return _finish(total, module)


def _check_optimizer(optimizer, module):
    from rnnc._module import parameter_owner
    groups = getattr(optimizer, "param_groups", None)
    if not callable(getattr(optimizer, "step", None)) or not isinstance(groups, list):
        raise TypeError(f"optimizer must be an rnnc optimizer over module's parameters "
                        f"(rnnc.optim.SGD(module, ...), rnnc.optim.Adam(module, ...)), got "
                        f"{type(optimizer).__name__}")
    owned = set()
    for _, arr in module.named_parameters():
        owner = parameter_owner(arr)
        if owner is not None:
            owned.add((id(owner[0]), owner[1]))
    for group in groups:
        for p in group["params"]:
            if (id(getattr(p, "module", None)), getattr(p, "key", None)) not in owned:
                raise ValueError(f"optimizer updates parameter {getattr(p, 'name', p)!r}, which "
                                 f"is not a parameter of module: make the optimizer over the "
                                 f"module trained (rnnc.optim.Adam(module))")


def _set_grads(module, grads):
    """Put ``grads`` ({name: array}) in the modules' ``grads``, where optimizers and
    clip_grad_norm read them, as a serial ``zero_grad()`` and ``backward`` would."""
    from rnnc._module import parameter_owner
    module.zero_grad()
    for name, arr in module.named_parameters():
        owner = parameter_owner(arr)
        if owner is not None and name in grads:
            owner[0].grads[owner[1]] = np.array(grads[name], dtype=arr.dtype)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=True)


def fit(module, loss, optimizer, x, y=None, lengths=None, *, epochs=1, batch_size=64,
        shuffle=True, seed=None, clip_grad_norm=None, client=None, progress=True):
    """Train ``module`` on a Dask array or bag, data-parallel and synchronous: at each step the
    workers compute the gradients of their rows of the batch with the current weights, the
    gradients are summed pairwise on the workers, and ONE optimizer step is taken on the client
    (PyTorch's DistributedDataParallel or Horovod, with an all-reduce).

    Parameters
    ----------
    module : rnnc module (not frozen: the optimizer updates it in place)
    loss : as for ``gradients``: "mse", "softmax_cross_entropy", a function of rnnc.losses,
        or a callable ``loss(pred, target, mask) -> (value, grad[, weight])``
    optimizer : rnnc.optim.SGD or rnnc.optim.Adam over the module's parameters (all or some)
    x, y, lengths : as for ``gradients``; x is persisted (computed once and kept in the
        workers' memory) for the run
    epochs : int, default 1
    batch_size : int, default 64
        Rows per step over all workers (the global batch). A step runs one task per block that
        holds rows of its batch: chunk x coarsely (one to a few chunks or partitions per
        worker).
    shuffle : bool, default True
    seed : None, int or numpy.random.Generator
        The batches: those of ``rnnc.batches(X, y, lengths=..., batch_size=batch_size,
        shuffle=shuffle, seed=rng)`` for each epoch, with one ``rng =
        np.random.default_rng(seed)`` for the run (successive epochs differ). A serial loop
        over those batches with the same optimizer takes the same steps (in float64, the same
        weights to ~1e-12). Dropout masks are drawn on the workers, per step and block, from
        generators derived from the seed; they differ from a serial run's.
    clip_grad_norm : float, optional
        ``rnnc.optim.clip_grad_norm(module, clip_grad_norm)`` on the summed gradients before
        each step.
    client : dask.distributed.Client, optional
        Default: the active client if any, else Dask's threaded scheduler.
    progress : bool, default True
        A progress bar per epoch (tqdm, when installed; none otherwise).

    Returns
    -------
    history : dict
        ``"loss"``: per epoch, the mean loss over the epoch's data, each batch at the weights
        of its step (the sum over the epoch for a loss that returns no weight);
        ``"batch_loss"``: per epoch, the loss of each step.

    What moves per step: the weights, once (scattered to every worker); from each task its
    block's gradient sums to a neighbour (pairwise sums, a tree on the workers); one sum to
    the client. The data stay where they are.

    Examples
    --------
    >>> import dask.array as da, numpy as np, rnnc, rnnc.dask
    >>> gen = np.random.default_rng(0)
    >>> model = rnnc.Sequential(rnnc.GRU(3, 8, dtype=np.float64, seed=0), rnnc.Pool("last"),
    ...                         rnnc.Linear(8, 2, dtype=np.float64, seed=1))
    >>> xn = gen.standard_normal((5, 40, 3))                      # (T, N, I)
    >>> labels = (xn[:, :, 0].sum(axis=0) > 0).astype(int)
    >>> x = da.from_array(xn, chunks=(5, 20, 3))
    >>> opt = rnnc.optim.Adam(model, lr=0.05)
    >>> history = rnnc.dask.fit(model, "softmax_cross_entropy", opt, x, labels, epochs=3,
    ...                         batch_size=10, seed=0, progress=False)
    >>> len(history["loss"]), len(history["batch_loss"][0])
    (3, 4)
    """
    from rnnc import optim
    from rnnc._validation import check_bool, check_seed
    epochs = check_size(epochs, "epochs")
    shuffle = check_bool(shuffle, "shuffle")
    progress = check_bool(progress, "progress")
    seed = check_seed(seed)
    if clip_grad_norm is not None:
        clip_grad_norm = optim._check_real(clip_grad_norm, "clip_grad_norm")
    _check_trainable(module)
    _check_optimizer(optimizer, module)
    shards = _Shards(module, loss, x, y, lengths, batch_size, client, persist=True)
    sizes = shards.sizes
    starts = np.concatenate([[0], np.cumsum(sizes)])
    N = int(starts[-1])
    if N == 0:
        raise ValueError("x holds no rows to train on")
    rng = np.random.default_rng(seed)
    entropy = _seed_entropy(seed if not isinstance(seed, np.random.Generator) else None)
    history = {"loss": [], "batch_loss": []}
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(N) if shuffle else np.arange(N)
        plan = [order[j:j + shards.batch_size] for j in range(0, N, shards.batch_size)]
        bar = _progress(len(plan), f"epoch {epoch + 1}/{epochs}", progress)
        value_sum, weight_sum, batch_losses = 0.0, 0.0, []
        try:
            for idx in plan:
                block = np.searchsorted(starts, idx, side="right") - 1
                rows = {int(k): idx[block == k] - starts[k] for k in np.unique(block)}
                total = shards.run(module, rows, [entropy, step])
                value, grads = _finish(total, module)
                _set_grads(module, grads)
                if clip_grad_norm is not None:
                    optim.clip_grad_norm(module, clip_grad_norm)
                optimizer.step()
                step += 1
                batch_losses.append(value)
                value_sum += total[0]
                weight_sum += 1.0 if total[1] is None else total[1]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}")
        finally:
            if bar is not None:
                bar.close()
        sum_loss = shards.kind == "custom" and total[1] is None
        history["loss"].append(value_sum if sum_loss else value_sum / weight_sum)
        history["batch_loss"].append(batch_losses)
    return history
