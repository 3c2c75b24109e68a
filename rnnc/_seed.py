"""rnnc's global generator: where modules built without ``seed=`` draw their seeds.

Each such module takes a child of one root ``numpy.random.SeedSequence`` (``spawn``): the n-th
module built after ``manual_seed(s)`` gets the same child in every run, and children are
independent streams. The root starts from OS entropy, so without ``manual_seed`` models differ
from run to run, as before. NumPy's global state (``np.random.seed``, ``np.random.rand``) is
neither read nor changed.
"""
import numbers
import threading

import numpy as np

_lock = threading.Lock()
_root = np.random.SeedSequence()


def manual_seed(seed):
    """Seed the generator that rnnc modules built without ``seed=`` draw from.

    After ``rnnc.manual_seed(n)`` a script builds the same models, with the same dropout masks,
    in every run: each module built without ``seed=`` (layers, cells, ``Linear``, the backward
    layer ``Bidirectional`` makes) takes the next seed of a sequence that ``n`` fixes, in the
    order the modules are built. A module built with ``seed=`` uses that seed and takes nothing
    from the sequence. Like ``torch.manual_seed``, but for rnnc only: NumPy's global state
    (``np.random.seed``) is neither used nor changed, and ``manual_seed`` does not seed it.

    Parameters
    ----------
    seed : int >= 0

    Examples
    --------
    >>> import rnnc
    >>> rnnc.manual_seed(0)
    >>> a = rnnc.GRU(3, 4)
    >>> rnnc.manual_seed(0)
    >>> b = rnnc.GRU(3, 4)
    >>> bool((a.weight_hh_l0 == b.weight_hh_l0).all())
    True
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer >= 0, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    global _root
    with _lock:
        _root = np.random.SeedSequence(int(seed))


def next_seed():
    """The next child of the global sequence: the seed of a module built without one."""
    with _lock:
        return _root.spawn(1)[0]


def module_rng(seed):
    """The generator of a module: from ``seed`` when given, else from the global sequence."""
    return np.random.default_rng(next_seed() if seed is None else seed)
