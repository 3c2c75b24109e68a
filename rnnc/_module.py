"""Parameter handling shared by every rnnc module: PyTorch names and shapes, the initialisers
(PyTorch's and Keras'), state_dict / load_state_dict, and the registry that maps a live parameter
array to its module (how an optimizer given arrays finds their gradients)."""
import copy
import math
import weakref

import numpy as np

from rnnc._seed import module_rng
from rnnc._validation import check_bool, check_choice, check_dtype, check_memory, check_seed

INITS = ("pytorch", "keras")

# id(array) -> (weak reference to the array, weak reference to its module, its name there).
# Arrays carry no .grad, so an optimizer given bare arrays (``m.parameters()``) looks each one
# up here to find ``module.grads[name]``. Weak references: the registry keeps nothing alive.
_OWNERS = {}


def _forget(key, ref):
    """Drop a registry entry when its array dies (unless the id was reused meanwhile)."""
    entry = _OWNERS.get(key)
    if entry is not None and entry[0] is ref:
        del _OWNERS[key]


def _register(module, name, array):
    key = id(array)
    _OWNERS[key] = (weakref.ref(array, lambda ref, key=key: _forget(key, ref)),
                    weakref.ref(module), name)


def parameter_owner(array):
    """(module, name) when ``array`` is the live parameter ``name`` of a module, else None
    (a copy, a parameter since replaced by ``load_state_dict``, or an unrelated array)."""
    entry = _OWNERS.get(id(array))
    if entry is None or entry[0]() is not array:
        return None
    module = entry[1]()
    if module is None or module.__dict__.get("_params", {}).get(entry[2]) is not array:
        return None
    return module, entry[2]


def _to_numpy(value):
    # Accept torch tensors (even ones that require grad) without importing torch.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# Bytes a parameter array costs besides its data: the ndarray object, its name and dict entry.
_ARRAY_OVERHEAD = 400


class _Modes:
    """Training and inference modes, the same for every rnnc module."""

    def train(self, mode=True):
        """Training mode: the forward pass keeps what backward() needs (and applies
        dropout where the module has it)."""
        self.training = check_bool(mode, "mode")
        if not self.training:
            self._cache = None
        return self

    def eval(self):
        """Inference mode (the default): nothing is kept, dropout is off."""
        return self.train(False)


class Module(_Modes):
    """Base of all rnnc modules: owns parameters as C-contiguous arrays of one float dtype.

    Parameters are reachable as attributes under their PyTorch names (``m.weight_ih_l0``); they
    are the live arrays, so in-place updates take effect (unless the module is frozen: see
    ``freeze``). Assigning an attribute of that name goes through the same checks as
    ``load_state_dict``.
    """

    def __init__(self, dtype, seed, init="pytorch"):
        object.__setattr__(self, "_params", {})
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)
        self.init = check_choice(init, "init", INITS)
        # Without a seed, from rnnc's global sequence (rnnc.manual_seed), not from np.random.
        self._rng = module_rng(seed)
        self.training = False
        self.grads = {}
        self._cache = None          # what the backward pass needs, kept by a training forward
        self._packs = None          # frozen: the kernels' packed weights, kept across calls

    # -- parameters -----------------------------------------------------------------------
    def _init_parameters(self, shapes, bound, forget_gate=None):
        """Create the parameters of ``shapes`` ({name: shape}, PyTorch's names and order) as
        ``self.init`` says: ``_init_uniform`` (PyTorch) or ``_init_keras``. ``forget_gate``:
        the rows of an LSTM's forget gate in its biases (Keras' unit forget bias)."""
        if self.init == "keras":
            self._init_keras(shapes, forget_gate)
        else:
            self._init_uniform(shapes, bound)

    def _reset_parameters(self):
        """Draw new values for every parameter from the module's generator, as at
        construction."""
        raise NotImplementedError

    def _init_uniform(self, shapes, bound):
        """Draw every parameter from U(-bound, bound), in order, as PyTorch does.

        Values are drawn in float64 then rounded, so one seed gives the same model in both dtypes.
        What cannot fit in memory is refused before anything is drawn.
        """
        self._check_parameter_memory(sum(math.prod(shape) for shape in shapes.values()),
                                     len(shapes))
        for name, shape in shapes.items():
            self._set_param(name, np.ascontiguousarray(
                self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)))

    def _init_keras(self, shapes, forget_gate=None):
        """Keras' defaults for recurrent and Dense layers, in PyTorch's layout, in order.

        - input weights ``weight_ih*`` (and ``weight``, ``weight_hr*``): glorot-uniform,
          U(-a, a) with a = sqrt(6 / (fan_in + fan_out)). Keras' kernel is this matrix
          transposed, (fan_in, fan_out) = (input features, gates * units), so for a PyTorch
          (rows, cols) weight a = sqrt(6 / (rows + cols)), over the whole matrix.
        - recurrent weights ``weight_hh*`` (G*H, P): Keras' ``Orthogonal`` on its recurrent
          kernel (P, G*H), transposed: a standard normal (G*H, P) matrix, its QR factor Q with
          the signs of R's diagonal (Q uniform over the matrices with orthonormal columns).
          So W_hh^T W_hh = I over all gates together, as in Keras (and as
          ``torch.nn.init.orthogonal_(weight_hh)``); one gate's block alone is not orthogonal.
          Gate order plays no part: the blocks come from one matrix.
        - biases (and LSTM peepholes ``weight_p*``): zeros; for an LSTM Keras' unit forget
          bias, 1 in the forget-gate rows (``forget_gate``) of ``bias_ih*`` (Keras has one
          bias, rnnc PyTorch's two; the sum is what counts), ``bias_hh*`` all zero.

        Drawn in float64 then rounded, like _init_uniform.
        """
        self._check_parameter_memory(sum(math.prod(shape) for shape in shapes.values()),
                                     len(shapes))
        for name, shape in shapes.items():
            if name.startswith("weight_hh"):
                a = self._rng.standard_normal(shape)
                q, r = np.linalg.qr(a)
                value = q * np.sign(np.diag(r))
            elif name.startswith("weight") and len(shape) == 2:
                limit = math.sqrt(6.0 / (shape[0] + shape[1]))
                value = self._rng.uniform(-limit, limit, size=shape)
            else:
                value = np.zeros(shape)
                if forget_gate is not None and name.startswith("bias_ih"):
                    value[forget_gate] = 1.0
            self._set_param(name, np.ascontiguousarray(value.astype(self.dtype)))

    def _set_param(self, name, array):
        """Make ``array`` the live parameter ``name`` (and findable by optimizers)."""
        self._params[name] = array
        _register(self, name, array)

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

    def parameters(self):
        """The live parameter arrays, in PyTorch's order (``torch.nn.Module.parameters``).

        In-place changes to them change the module. An optimizer takes this list (or part of
        it) and finds each array's gradient in the module's ``grads``.
        """
        return list(self._params.values())

    def named_parameters(self):
        """(name, array) pairs of the live parameter arrays, in PyTorch's order."""
        return list(self._params.items())

    def num_parameters(self):
        """The number of scalar parameters (the sum of the arrays' sizes)."""
        return sum(int(p.size) for p in self._params.values())

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
        for name, arr in new.items():
            self._set_param(name, arr)
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

    # What a training forward keeps for backward is not part of the module: pickles and
    # copies leave it out (an LSTM(3, 64) after a forward of (500, 64, 3) kept 50 MB).
    _TRANSIENT = ("_cache",)

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("_packs") is not None:
            state["_packs"] = {}
        for name in self._TRANSIENT:
            if name in state:
                state[name] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, arr in self.__dict__.get("_params", {}).items():
            _register(self, name, arr)
        if self.__dict__.get("_packs") is not None:
            self.freeze()

    # -- training (train / eval: _Modes) ------------------------------------------------------
    def zero_grad(self):
        """Reset the accumulated gradients in ``self.grads`` to zero."""
        self.grads = {k: np.zeros_like(v) for k, v in self._params.items()}

    def _accumulate(self, grads):
        for k, g in grads.items():
            if k in self.grads and self.grads[k].shape == g.shape:
                self.grads[k] += g
            else:
                self.grads[k] = g.copy()


class ParameterFree(_Modes):
    """What every rnnc module has, for a layer without parameters (rnnc.Pool, the pieces of
    converted Keras models): training mode and its cache, a frozen flag (as Sequential
    expects), empty parameters, gradients and state_dict, copies and pickles without the
    training cache. A subclass's __init__ calls ``super().__init__()``."""

    def __init__(self):
        self.training = False
        self._frozen = False
        self._cache = None

    def __copy__(self):
        return copy.deepcopy(self)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None          # a training cache is no part of the module
        return state

    def freeze(self):
        """Nothing to pack (no parameters); marks the module frozen, as Sequential expects."""
        self._frozen = True
        return self

    def unfreeze(self):
        self._frozen = False
        return self

    @property
    def frozen(self):
        return self._frozen

    def zero_grad(self):
        """No parameters, nothing to reset."""

    @property
    def grads(self):
        return {}

    def named_parameters(self):
        return []

    def parameters(self):
        return []

    def num_parameters(self):
        return 0

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict, strict=True):
        """No parameters: with strict=True any key is an error."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if strict and len(state_dict):
            keys = ", ".join(repr(k) for k in state_dict.keys())
            raise ValueError(f"load_state_dict for {type(self).__name__}: unexpected key(s) "
                             f"{keys} (a {type(self).__name__} has no parameters)")
        return self
