"""Checks done once at the Python boundary. Kernels trust what passes here.

Every error names the argument, what was expected and what was received.
"""
import numbers
import os

import numpy as np

# BLAS takes 32-bit ints: every size that reaches a GEMM must fit.
BLAS_INT_MAX = 2**31 - 1

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """The module's compute dtype: float32 or float64 (None means float32, as in PyTorch)."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_size(value, name, minimum=1):
    """A positive (or >= minimum) integer size that fits BLAS's int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > BLAS_INT_MAX:
        raise ValueError(f"{name} must be <= {BLAS_INT_MAX} (BLAS int), got {value}")
    return value


def check_bool(value, name):
    """A flag: True or False (also NumPy's bools and the integers 0 and 1). Anything else is
    refused rather than read by truthiness: bias="no" would otherwise mean True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} "
                    f"{value!r}")


def check_seed(seed, name="seed"):
    """A seed for np.random.default_rng: None, an integer >= 0, or a NumPy SeedSequence,
    BitGenerator or Generator."""
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.BitGenerator,
                                         np.random.Generator)):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, an integer >= 0 or a numpy.random Generator, "
                        f"SeedSequence or BitGenerator, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return int(seed)


def memory_limit():
    """Bytes of memory this process may still take: the least of the kernel's estimate of what
    is available without swapping (MemAvailable, else the physical memory), the room left
    under the process's address-space limit (RLIMIT_AS) and under its cgroup's memory.max;
    None where none can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not limits:
        try:
            limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(0, soft - used))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                limits.append(max(0, int(cap) - int(f.read().strip())))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


_SMALL = []     # bytes below which no limit is read: an eighth of the least limit seen first


def check_memory(nbytes, what):
    """Refuse up front (ValueError) what needs more memory than the machine can give, instead
    of allocating for a long time before a MemoryError (or the kernel's OOM killer). Reading
    the limits costs tens of microseconds, so requests far below them are let through."""
    if not _SMALL:
        first = memory_limit()
        _SMALL.append(first // 8 if first is not None else 0)
    if nbytes < _SMALL[0]:
        return
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{what} needs {_human(nbytes)} of memory; {_human(limit)} is "
                         "available")


def _human(nbytes):
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.1f} {unit}" if unit != "bytes" else f"{int(nbytes)} bytes"
        nbytes /= 1000


def describe(value):
    """What a value is, for an error message: its type, and a sequence's length ("a tuple of
    3 items"), since "expected a pair, got tuple" does not say what was wrong."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def check_blas_size(value, what):
    if value > BLAS_INT_MAX:
        raise ValueError(f"{what} is {value}, more than BLAS's 32-bit limit {BLAS_INT_MAX}")


def check_choice(value, name, choices):
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def to_array(value, name):
    """np.asarray, with a TypeError naming the argument when the value is not array-like."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a real numeric array, could not convert "
                        f"{type(value).__name__}: {exc}") from exc


def as_real_array(value, name, dtype):
    """Convert array-like input of any real dtype to a C-contiguous array of `dtype`.

    Complex, bool, object and string data are refused: they have no meaning as RNN input, and
    silently casting them would hide a bug in the caller.
    """
    arr = to_array(value, name)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a real numeric dtype (float or int), got {arr.dtype}")
    # np.asarray keeps 0-D input 0-D (np.ascontiguousarray would make it 1-D).
    return np.asarray(arr, dtype=dtype, order="C")


def check_shape(arr, name, expected):
    """expected: a tuple of ints; raise if arr.shape differs."""
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {arr.shape}")


def check_lengths(lengths, batch, steps):
    """lengths of a padded batch: integers in [0, steps], shape (batch,). Returns intp array."""
    if isinstance(lengths, np.ndarray):
        arr = lengths
    else:
        try:
            arr = np.asarray(lengths)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"lengths must be a sequence of integers, got {lengths!r}") from exc
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)):
            pass  # whole numbers stored as floats are accepted
        elif arr.size == 0 and arr.dtype.kind == "f":
            pass  # np.asarray([]) is float64
        else:
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one per batch entry), "
                         f"got {arr.shape}")
    arr = arr.astype(np.intp)
    if arr.size and (arr.min() < 0 or arr.max() > steps):
        raise ValueError(f"lengths must lie in [0, {steps}] (the number of time steps), got "
                         f"min {arr.min()}, max {arr.max()}")
    return arr
