"""Parameter handling shared by every rnnc module: PyTorch names and shapes, PyTorch's
initialisation, state_dict / load_state_dict."""
import copy
import math

import numpy as np

from rnnc._validation import check_bool, check_dtype, check_memory, check_seed


def _to_numpy(value):
    # Accept torch tensors (even ones that require grad) without importing torch.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# Bytes a parameter array costs besides its data: the ndarray object, its name and dict entry.
_ARRAY_OVERHEAD = 400


class Module:
    """Base of all rnnc modules: owns parameters as C-contiguous arrays of one float dtype.

    Parameters are reachable as attributes under their PyTorch names (``m.weight_ih_l0``); they
    are the live arrays, so in-place updates take effect (unless the module is frozen: see
    ``freeze``). Assigning an attribute of that name goes through the same checks as
    ``load_state_dict``.
    """

    def __init__(self, dtype, seed):
        object.__setattr__(self, "_params", {})
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(seed)
        self.training = False
        self.grads = {}
        self._cache = None          # what the backward pass needs, kept by a training forward
        self._packs = None          # frozen: the kernels' packed weights, kept across calls

    # -- parameters -----------------------------------------------------------------------
    def _init_uniform(self, shapes, bound):
        """Draw every parameter from U(-bound, bound), in order, as PyTorch does.

        Values are drawn in float64 then rounded, so one seed gives the same model in both dtypes.
        What cannot fit in memory is refused before anything is drawn.
        """
        self._check_parameter_memory(sum(math.prod(shape) for shape in shapes.values()),
                                     len(shapes))
        for name, shape in shapes.items():
            self._params[name] = np.ascontiguousarray(
                self._rng.uniform(-bound, bound, size=shape).astype(self.dtype))

    def _check_parameter_memory(self, n, arrays):
        """Refuse a module of n parameters in `arrays` arrays that cannot fit in memory, before
        anything is allocated (a subclass with many layers calls this before listing them)."""
        check_memory(n * self.dtype.itemsize + arrays * _ARRAY_OVERHEAD,
                     f"{type(self).__name__} with {n} parameters in {arrays} arrays")

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_params", {}):
            self.load_state_dict({name: value}, strict=False)
        else:
            object.__setattr__(self, name, value)

    def named_parameters(self):
        """(name, array) pairs of the live parameter arrays, in PyTorch's order."""
        return list(self._params.items())

    def state_dict(self):
        """Copies of the parameters under PyTorch's names and shapes."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters from a mapping of array-likes (NumPy arrays, torch tensors, lists).

        Values are converted to the module's dtype. With strict=True, missing and unexpected
        keys are errors. All problems are reported together in one ValueError, and nothing is
        changed unless everything is valid.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        problems, new = [], {}
        for key in state_dict.keys():
            if key not in self._params:
                if strict:
                    problems.append(f"unexpected key {key!r}")
                continue
            try:
                arr = _to_numpy(state_dict[key])
            except Exception as exc:  # noqa: BLE001 - reported with the key below
                problems.append(f"{key!r}: cannot convert to an array ({exc})")
                continue
            expected = self._params[key].shape
            if arr.dtype.kind not in "iuf":
                problems.append(f"{key!r}: expected a real numeric dtype, got {arr.dtype}")
            elif arr.shape != expected:
                problems.append(f"{key!r}: expected shape {expected}, got {arr.shape}")
            else:
                # Always a fresh copy: never alias the caller's (or a torch tensor's) memory.
                new[key] = np.array(arr, dtype=self.dtype, order="C", copy=True)
        if strict:
            problems += [f"missing key {k!r}" for k in self._params if k not in state_dict]
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__}: "
                             + "; ".join(problems))
        if self._packs is not None:
            for arr in new.values():
                arr.flags.writeable = False
            self._packs = {}        # a new dict: a call running now keeps the old one
        self._params.update(new)
        return self

    # -- frozen weights ---------------------------------------------------------------------
    def freeze(self):
        """Fix the parameters for inference, so the compiled layers may keep their weights
        packed for the kernels between calls instead of packing them on every call.

        The parameter arrays become read-only (an in-place update raises NumPy's ValueError
        instead of going unseen). ``load_state_dict`` and attribute assignment still work:
        they replace the arrays and drop what was kept. Optimizers refuse a frozen module.
        Kept: up to about twice the memory of the weights, for the layouts used so far (they
        depend on batch size and thread count). What a call computes is unchanged, bit for bit;
        it saves a pass over the weights per layer and call (LSTM B8 H1024 T20 at one thread:
        ~10%; see the README's Performance section). ONNX Runtime packs its weights once
        when a session is built, the same trade. Returns self.
        """
        for arr in self._params.values():
            arr.flags.writeable = False
        self._packs = {}
        return self

    def unfreeze(self):
        """Undo ``freeze``: writeable parameters, nothing kept. Returns self."""
        self._packs = None
        for arr in self._params.values():
            arr.flags.writeable = True
        return self

    @property
    def frozen(self):
        """Whether ``freeze()`` is in effect."""
        return self._packs is not None

    # Copies and pickles of a frozen module are frozen too (NumPy makes the copied arrays
    # writeable again), and pack their own weights rather than carry the cache.
    def __copy__(self):
        """copy.copy(m) is a deep copy: a module owns its parameters, so a shallow copy that
        shared them would let one module's load_state_dict, unfreeze or in-place edit change
        the other's weights behind its packed cache."""
        return copy.deepcopy(self)

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("_packs") is not None:
            state["_packs"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.__dict__.get("_packs") is not None:
            self.freeze()

    # -- training -----------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode: the forward pass keeps what backward() needs and applies dropout."""
        self.training = check_bool(mode, "mode")
        if not self.training:
            self._cache = None
        return self

    def eval(self):
        """Inference mode (the default): nothing is kept, dropout is off."""
        return self.train(False)

    def zero_grad(self):
        """Reset the accumulated gradients in ``self.grads`` to zero."""
        self.grads = {k: np.zeros_like(v) for k, v in self._params.items()}

    def _accumulate(self, grads):
        for k, g in grads.items():
            if k in self.grads and self.grads[k].shape == g.shape:
                self.grads[k] += g
            else:
                self.grads[k] = g.copy()
