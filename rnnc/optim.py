"""Optimizers with PyTorch's update rules, and gradient-norm clipping.

What an optimizer updates is given as PyTorch's ``params``:

- one module: ``Adam(model)``, every parameter of ``model`` (an rnnc layer, cell, ``Linear``,
  ``Bidirectional``, ``Sequential``, or any object with ``named_parameters()`` and ``grads``);
- an iterable of modules, of live parameter arrays, or of ``(name, array)`` pairs:
  ``Adam([gru, head])``, ``Adam(model.parameters())``, ``Adam(model.named_parameters())``,
  ``SGD([p for p in model.parameters() if p.ndim == 2])``;
- parameter groups, each with its own options and the constructor's as defaults:
  ``SGD([{"params": gru, "lr": 0.01}, {"params": head.parameters(), "weight_decay": 1e-4}],
  lr=0.1)``.

A NumPy array carries no gradient, so each module registers its live parameter arrays and an
optimizer finds the module and the name behind each one (``rnnc._module.parameter_owner``);
the gradient is ``module.grads[name]``. The optimizer keeps the module and the name, not the
array: after ``module.load_state_dict`` (which replaces the arrays) it updates the new ones.
An array that is not a module's live parameter (a copy, ``state_dict()``'s values, an array
since replaced) is refused with a TypeError. A frozen module (read-only parameters) is refused
when the optimizer is made.

``step()`` updates the parameter arrays in place, so the modules see the new values at once; a
parameter without an entry in its module's ``grads`` is skipped, as PyTorch skips parameters
whose ``.grad`` is None. ``opt.state`` maps each parameter (``opt.param_groups[i]["params"]``
entries) to its buffers, as PyTorch's does.

Note that ``zero_grad()`` sets gradients to zeros (PyTorch's ``zero_grad(set_to_none=False)``):
a step after it still applies weight decay and momentum.

Examples
--------
>>> import numpy as np, rnnc
>>> from rnnc import losses, optim
>>> lin = rnnc.Linear(3, 1, dtype=np.float64, seed=0).train()
>>> x = np.random.default_rng(0).standard_normal((64, 3))
>>> y = x @ np.array([[1.0], [-2.0], [0.5]])
>>> opt = optim.Adam(lin, lr=0.05)
>>> for _ in range(300):
...     opt.zero_grad()
...     loss, g = losses.mse(lin(x), y)
...     _ = lin.backward(g)
...     _ = optim.clip_grad_norm(lin, 10.0)
...     opt.step()
>>> loss < 1e-4
True

Parameter groups over two modules:

>>> gru, head = rnnc.GRU(3, 8, seed=0), rnnc.Linear(8, 2, seed=1)
>>> opt = optim.SGD([{"params": gru, "lr": 0.01}, {"params": head.parameters()}],
...                 lr=0.1, momentum=0.9)
>>> [g["lr"] for g in opt.param_groups], len(opt.param_groups[0]["params"])
([0.01, 0.1], 4)
"""
import copy
import math
import numbers

import numpy as np

from rnnc._module import _to_numpy, parameter_owner
from rnnc._validation import check_bool, describe

__all__ = ["SGD", "Adam", "clip_grad_norm", "Parameter"]


def _check_real(value, name, minimum=0.0, below=None):
    """A finite real hyper-parameter in [minimum, below) (or [minimum, inf))."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < minimum or (below is not None and not v < below):
        interval = f"[{minimum}, {below})" if below is not None else f">= {minimum} and finite"
        raise ValueError(f"{name} must be {'in ' if below is not None else ''}{interval}, "
                         f"got {value!r}")
    return v


# -- what an optimizer updates -------------------------------------------------------------------
class Parameter:
    """One parameter an optimizer or ``clip_grad_norm`` works on: a module and the parameter's
    name there. The array and its gradient are looked up at each use, so a parameter replaced
    by ``load_state_dict`` is followed.

    Attributes: ``module``, ``key`` (the name in ``module``), ``name`` (the name in the
    optimizer: the module's name, prefixed ``"{i}."`` for the i-th of several modules, or the
    name of a ``(name, array)`` pair); properties ``array`` and ``grad``.
    """
    __slots__ = ("module", "key", "name")

    def __init__(self, module, key, name):
        self.module, self.key, self.name = module, key, name

    @property
    def array(self):
        """The module's current array for this parameter."""
        params = self.module.__dict__.get("_params")
        if params is None:          # a module of another kind: ask it
            params = dict(self.module.named_parameters())
        arr = params.get(self.key)
        if arr is None:
            raise ValueError(f"parameter {self.name!r}: {type(self.module).__name__} has no "
                             f"parameter {self.key!r} any more")
        return arr

    @property
    def grad(self):
        """The module's accumulated gradient for this parameter (None if it has none)."""
        return self.module.grads.get(self.key)

    def __repr__(self):
        return f"<parameter {self.name!r} ({type(self.module).__name__}.{self.key})>"


def _is_module(obj):
    return callable(getattr(obj, "named_parameters", None)) and hasattr(obj, "grads")


_WHAT = ("an rnnc module, an iterable of modules, of live parameter arrays (module.parameters()) "
         "or of (name, array) pairs, or a list of parameter groups (dicts with 'params')")


def _owned(array, where):
    owner = parameter_owner(array)
    if owner is None:
        raise TypeError(f"{where} is an array that is not a live parameter of an rnnc module: "
                        "module.parameters() gives those (state_dict() gives copies, and "
                        "load_state_dict replaces the arrays)")
    return owner


def _expand(item, where, prefix):
    """[(name, Parameter)] for one entry of ``params``: a module, an array or a pair."""
    if _is_module(item):
        out = []
        for name, arr in item.named_parameters():
            owner = parameter_owner(arr)
            module, key = owner if owner is not None else (item, name)   # foreign modules
            out.append(Parameter(module, key, prefix + name))
        return out
    if isinstance(item, np.ndarray):
        module, key = _owned(item, where)
        return [Parameter(module, key, key)]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) \
            and isinstance(item[1], np.ndarray):
        module, key = _owned(item[1], f"{where} ({item[0]!r})")
        return [Parameter(module, key, item[0])]
    raise TypeError(f"{where} must be an rnnc module, a live parameter array or a (name, array) "
                    f"pair, got {describe(item)}")


def _entries(value, where):
    """The Parameters of a group's ``params``: one module or array, or an iterable of them."""
    if _is_module(value):
        return _expand(value, where, "")
    if isinstance(value, np.ndarray):
        return _expand(value, where, "")
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{where} must be {_WHAT}; got {describe(value)}")
    items = list(value)
    several = sum(_is_module(item) for item in items) > 1
    out = []
    for i, item in enumerate(items):
        out += _expand(item, f"{where}[{i}]", f"{i}." if several and _is_module(item) else "")
    return out


def _parameter_groups(params, hyper, where="params"):
    """[(options, [Parameter])]: ``params`` as PyTorch takes it, resolved; each parameter once
    within a group (shared layers appear once) and in one group only. ``hyper``: the options
    a group may set (None: any, ignored)."""
    if isinstance(params, dict):
        params = [params]
    if _is_module(params) or isinstance(params, np.ndarray):
        groups = [({}, _entries(params, where))]
    elif isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"{where} must be {_WHAT}; got {describe(params)}")
    else:
        items = list(params)
        if items and all(isinstance(g, dict) for g in items):
            groups = []
            for i, g in enumerate(items):
                if "params" not in g:
                    raise ValueError(f"parameter group {i} has no 'params' entry")
                unknown = sorted(set(g) - {"params"} - set(hyper or g), key=str)
                if unknown:
                    raise ValueError(f"parameter group {i} has unknown options {unknown}; the "
                                     f"options are {list(hyper)}")
                options = {k: v for k, v in g.items() if k != "params"}
                groups.append((options, _entries(g["params"], f"param_groups[{i}]['params']")))
        elif any(isinstance(g, dict) for g in items):
            raise TypeError(f"{where} mixes parameter groups (dicts) with other entries: pass "
                            "either groups only or no groups")
        else:
            groups = [({}, _entries(items, where))]
    seen, out = {}, []
    for i, (options, params_i) in enumerate(groups):
        unique = []
        for p in params_i:
            key = (id(p.module), p.key)
            if key in seen:
                if seen[key] != i:
                    raise ValueError(f"parameter {p.name!r} appears in parameter groups "
                                     f"{seen[key]} and {i}: each parameter belongs to one group")
                continue
            seen[key] = i
            unique.append(p)
        out.append((options, unique))
    if not seen:
        raise ValueError(f"{where} holds no parameters: the optimizer would have nothing to "
                         "update")
    return out


def _check_writeable(params):
    for p in params:
        if not p.array.flags.writeable:
            raise ValueError(f"parameter {p.name!r} is read-only: its module "
                             f"({type(p.module).__name__}) is frozen; call unfreeze() before "
                             "making an optimizer for it")


def _grad_items(groups):
    """(group, Parameter, live array, gradient in the array's dtype) for every parameter with a
    gradient, all checked before a step changes anything."""
    items = []
    for group in groups:
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            arr = p.array
            g = np.asarray(g)
            if g.shape != arr.shape:
                raise ValueError(f"gradient of {p.name!r} has shape {g.shape}, the parameter "
                                 f"has {arr.shape}")
            if not arr.flags.writeable:
                raise ValueError(f"parameter {p.name!r} is read-only (its module is frozen: call "
                                 "unfreeze() before an optimizer step)")
            items.append((group, p, arr, g.astype(arr.dtype, copy=False)))
    return items


def _hyper_property(name):
    def get(self):
        values = [g[name] for g in self.param_groups]
        if any(v != values[0] for v in values[1:]):
            raise AttributeError(f"{name} differs between the parameter groups ({values}): "
                                 f"read param_groups[i][{name!r}]")
        return values[0]

    def set(self, value):
        checked = [self._check_hyper({**self._options(g), name: value},
                                     self._where(i)) for i, g in enumerate(self.param_groups)]
        for g, c in zip(self.param_groups, checked):
            g[name] = c[name]
        self.defaults[name] = checked[0][name] if checked else value

    return property(get, set, doc=f"The {name} of every parameter group (setting it sets it "
                                  "in each; with groups that differ, read param_groups).")


class _Optimizer:
    _hyper = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._hyper:
            setattr(cls, name, _hyper_property(name))

    def __init__(self, params, defaults):
        self.defaults = self._check_hyper(defaults, "")
        self.param_groups = []
        self.state = {}             # Parameter -> dict of buffers / counters
        for options, group_params in _parameter_groups(params, self._hyper):
            self._add_group(options, group_params)

    def _where(self, i):
        return f"param_groups[{i}]: " if len(self.param_groups) > 1 else ""

    def _options(self, group):
        return {k: group[k] for k in self._hyper}

    def _add_group(self, options, group_params):
        i = len(self.param_groups)
        group = self._check_hyper({**self.defaults, **options},
                                  f"param_groups[{i}]: " if options else "")
        _check_writeable(group_params)
        group["params"] = group_params
        self.param_groups.append(group)

    def add_param_group(self, param_group):
        """Add a parameter group (a dict with ``'params'`` and options; missing options take
        the constructor's values), as ``torch.optim.Optimizer.add_param_group``."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict with 'params', got "
                            f"{describe(param_group)}")
        existing = [g["params"] for g in self.param_groups]
        (options, new), = _parameter_groups([param_group], self._hyper, "param_group")
        taken = {(id(p.module), p.key): i for i, ps in enumerate(existing) for p in ps}
        for p in new:
            if (id(p.module), p.key) in taken:
                raise ValueError(f"parameter {p.name!r} is already in parameter group "
                                 f"{taken[(id(p.module), p.key)]}")
        self._add_group(options, new)

    def _parameters(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        """Set the gradient of every parameter of the optimizer to zeros (in its module's
        ``grads``)."""
        others = {}
        for p in self._parameters():
            grads = p.module.__dict__.get("grads")
            if isinstance(grads, dict):
                grads[p.key] = np.zeros_like(p.array)
            else:           # grads built on the fly by a module of another kind
                others[id(p.module)] = p.module
        for module in others.values():
            module.zero_grad()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        n, k = len(self._parameters()), len(self.param_groups)
        return (f"{type(self).__name__}({n} parameters"
                f"{f' in {k} groups' if k > 1 else ''}, {args})")

    def state_dict(self):
        """PyTorch's layout: ``{"state": {index: buffers}, "param_groups": [options with
        "params" (indices, counted across groups) and "param_names"]}``, copies."""
        index = {p: i for i, p in enumerate(self._parameters())}
        groups = []
        for g in self.param_groups:
            d = self._options(g)
            d["params"] = [index[p] for p in g["params"]]
            d["param_names"] = [p.name for p in g["params"]]
            groups.append(d)
        return {"state": {index[p]: copy.deepcopy(st) for p, st in self.state.items()
                          if p in index},
                "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict()`` returned (to an optimizer over parameters of the same
        shapes, in the same groups). Options are validated as the constructor's are; nothing
        changes unless all is valid. Array-likes (torch tensors too) are accepted."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {describe(state_dict)}")
        keys = set(state_dict.keys())
        if keys == {"hyper", "state"} and len(self.param_groups) == 1:
            state_dict = self._from_named(state_dict)      # rnnc 0.1's layout
        elif keys != {"state", "param_groups"}:
            raise ValueError("state_dict must be a mapping with the keys 'state' and "
                             f"'param_groups', as state_dict() returns; got {sorted(keys)}")
        groups = list(state_dict["param_groups"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        params = self._parameters()
        problems, options = [], []
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            n = len(saved.get("params", ()))
            if n != len(group["params"]):
                problems.append(f"parameter group {i} has {n} parameters in state_dict, "
                                f"{len(group['params'])} here")
            unknown = sorted(set(saved) - {"params", "param_names"} - set(self._hyper))
            if unknown:
                problems.append(f"parameter group {i} has unknown options {unknown}")
            options.append({k: saved.get(k, group[k]) for k in self._hyper})
        state = {}
        for key, st in dict(state_dict["state"]).items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) \
                    or not 0 <= key < len(params):
                problems.append(f"state for unknown parameter {key!r}")
                continue
            p = params[int(key)]
            shape, dtype = p.array.shape, p.array.dtype
            state[p] = {}
            for k, v in st.items():
                if k == "step":
                    state[p][k] = int(_to_numpy(v))
                    continue
                v = _to_numpy(v)
                if v.shape != shape:
                    problems.append(f"{p.name!r}.{k}: expected shape {shape}, got {v.shape}")
                state[p][k] = np.array(v, dtype=dtype)
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__}: "
                             + "; ".join(problems))
        checked = [self._check_hyper(o, self._where(i)) for i, o in enumerate(options)]
        for group, c in zip(self.param_groups, checked):
            group.update(c)
        self.state = state
        return self

    def _from_named(self, state_dict):
        """rnnc 0.1's {"hyper": options, "state": {name: buffers}} for one group."""
        names = {p.name: i for i, p in enumerate(self._parameters())}
        unknown = [k for k in state_dict["state"] if k not in names]
        if unknown:
            raise ValueError(f"load_state_dict for {type(self).__name__}: state for unknown "
                             f"parameter(s) {unknown}")
        group = dict(state_dict["hyper"])
        group["params"] = list(range(len(names)))
        return {"state": {names[k]: v for k, v in state_dict["state"].items()},
                "param_groups": [group]}

    def _check_hyper(self, hyper, where):
        raise NotImplementedError


_PARAMS_DOC = """params : what to update (see the module docstring): a module, an iterable of
        modules, of live parameter arrays or of (name, array) pairs, or a list of parameter
        groups (dicts with 'params' and any of the options below, which default to the
        constructor's values)"""


class SGD(_Optimizer):
    __doc__ = """Stochastic gradient descent with momentum, like ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g``, with its group's options::

        d = g + weight_decay * p
        if momentum:  buf = d  (first step)  or  buf = momentum * buf + (1 - dampening) * d
                      d = d + momentum * buf  if nesterov  else  buf
        p -= lr * d

    Parameters
    ----------
    """ + _PARAMS_DOC + """
    lr : float >= 0, default 1e-3
    momentum : float >= 0, default 0
    weight_decay : float >= 0, default 0 (L2 penalty added to the gradient)
    nesterov : bool, default False (needs momentum > 0 and dampening 0)
    dampening : float >= 0, default 0

    Options are in ``opt.param_groups[i]`` (a change takes effect at the next step);
    ``opt.lr = 0.01`` sets it in every group, and reads it when the groups agree.
    """
    _hyper = ("lr", "momentum", "weight_decay", "nesterov", "dampening")

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, nesterov=False,
                 dampening=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      nesterov=nesterov, dampening=dampening))

    def _check_hyper(self, h, where):
        out = dict(lr=_check_real(h["lr"], where + "lr"),
                   momentum=_check_real(h["momentum"], where + "momentum"),
                   weight_decay=_check_real(h["weight_decay"], where + "weight_decay"),
                   dampening=_check_real(h["dampening"], where + "dampening"),
                   nesterov=check_bool(h["nesterov"], where + "nesterov"))
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{where}nesterov=True needs momentum > 0 and dampening == 0, got "
                             f"momentum={h['momentum']!r}, dampening={h['dampening']!r}")
        return out

    def step(self):
        """Update every parameter that has a gradient, in place."""
        for group, param, p, g in _grad_items(self.param_groups):
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            d = g
            if weight_decay != 0:
                d = d + weight_decay * p
            if momentum != 0:
                st = self.state.setdefault(param, {})
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = d.copy()
                else:
                    buf *= momentum
                    buf += (1 - group["dampening"]) * d
                d = d + momentum * buf if group["nesterov"] else buf
            p -= lr * d


class Adam(_Optimizer):
    __doc__ = """Adam, like ``torch.optim.Adam`` (bias-corrected moments, optional AMSGrad).

    For each parameter ``p`` with gradient ``g``, at its step ``t`` (1, 2, ...), with its
    group's options::

        g = g + weight_decay * p                    (or p *= 1 - lr * weight_decay if
                                                     decoupled_weight_decay: AdamW)
        m = beta1 * m + (1 - beta1) * g              (m, v start at 0)
        v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    With ``amsgrad`` the running maximum of ``v`` replaces ``v`` in the denominator.

    Parameters
    ----------
    """ + _PARAMS_DOC + """
    lr : float >= 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
    amsgrad : bool, default False
    decoupled_weight_decay : bool, default False

    Options are in ``opt.param_groups[i]``; ``opt.lr = 0.01`` sets it in every group.
    """
    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _check_hyper(self, h, where):
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
        return dict(lr=_check_real(h["lr"], where + "lr"),
                    betas=(_check_real(betas[0], where + "betas[0]", 0.0, 1.0),
                           _check_real(betas[1], where + "betas[1]", 0.0, 1.0)),
                    eps=_check_real(h["eps"], where + "eps"),
                    weight_decay=_check_real(h["weight_decay"], where + "weight_decay"),
                    amsgrad=check_bool(h["amsgrad"], where + "amsgrad"),
                    decoupled_weight_decay=check_bool(h["decoupled_weight_decay"],
                                                      where + "decoupled_weight_decay"))

    def step(self):
        """Update every parameter that has a gradient, in place."""
        for group, param, p, g in _grad_items(self.param_groups):
            beta1, beta2 = group["betas"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            st = self.state.get(param)
            if st is None:
                st = self.state[param] = {"step": 0, "exp_avg": np.zeros_like(p),
                                          "exp_avg_sq": np.zeros_like(p)}
                if group["amsgrad"]:
                    st["max_exp_avg_sq"] = np.zeros_like(p)
            st["step"] += 1
            t = st["step"]
            if weight_decay != 0:
                if group["decoupled_weight_decay"]:
                    p *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * p
            m, v = st["exp_avg"], st["exp_avg_sq"]
            # m.lerp_(g, 1 - beta1), with the two formulas torch's lerp uses.
            w = 1 - beta1
            if w < 0.5:
                m += w * (g - m)
            else:
                m[...] = g - (g - m) * (1 - w)
            v *= beta2
            v += (1 - beta2) * (g * g)
            step_size = lr / (1 - beta1 ** t)
            bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
            if group["amsgrad"]:
                vmax = st.setdefault("max_exp_avg_sq", np.zeros_like(p))
                np.maximum(vmax, v, out=vmax)
                v = vmax
            denom = np.sqrt(v) / bias_correction2_sqrt + group["eps"]
            p += -step_size * (m / denom)


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients of ``parameters`` in place so that their total norm is at most
    ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_``: ONE norm is taken over all the gradients as if
    they were one vector (over every module given, not per module); when
    ``max_norm / (total_norm + 1e-6) < 1`` every gradient is multiplied by that factor.

    Parameters
    ----------
    parameters : a module, or what an optimizer takes (an iterable of modules, of live
        parameter arrays or of (name, array) pairs, or parameter groups)
        The gradients are the modules' ``grads`` entries of these parameters (the arrays
        there are scaled in place); parameters without a gradient are skipped.
    max_norm : float >= 0
    norm_type : float > 0 or inf, default 2.0
    error_if_nonfinite : bool, default False
        Raise RuntimeError if the total norm is NaN or infinite (otherwise the gradients are
        scaled by a NaN/zero factor, as PyTorch does).

    Returns
    -------
    total_norm : float
        The norm before clipping.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> a, b = rnnc.Linear(2, 1, dtype=np.float64), rnnc.Linear(2, 1, dtype=np.float64)
    >>> a.grads = {"weight": np.array([[3.0, 0.0]])}
    >>> b.grads = {"weight": np.array([[0.0, 4.0]]), "bias": np.zeros(1)}
    >>> rnnc.clip_grad_norm([a, b], max_norm=1.0)
    5.0
    >>> np.round(b.grads["weight"], 6)
    array([[0. , 0.8]])
    """
    max_norm = _check_real(max_norm, "max_norm")
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type!r}")
    grads = [g for _, ps in _parameter_groups(parameters, None, "parameters") for p in ps
             if (g := p.grad) is not None]
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        norms = [float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]
        total = float(np.max(norms))        # NaN-propagating, unlike max()
    else:
        norms = [np.linalg.norm(np.ravel(g).astype(np.float64), ord=norm_type) for g in grads]
        total = float(np.linalg.norm(np.array(norms), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}; "
                           "pass error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:             # also when coef is NaN, as torch's clamp propagates it
        for g in grads:
            g *= g.dtype.type(coef)
    return total
