"""Optimizers with PyTorch's update rules, and gradient-norm clipping.

An optimizer works on any module with ``named_parameters()`` (the live parameter arrays) and
``grads`` (accumulated gradients under the same names): an rnnc layer, a ``Bidirectional`` or a
``Sequential``. ``step()`` updates the parameter arrays in place, so the module sees the new
values at once; a parameter without an entry in ``module.grads`` is skipped, as PyTorch skips
parameters whose ``.grad`` is None. Optimizer state is kept per parameter name.

Note that ``module.zero_grad()`` sets every gradient to zeros (PyTorch's
``zero_grad(set_to_none=False)``): a step after it still applies weight decay and momentum.

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
"""
import copy
import math
import numbers

import numpy as np

from rnnc._validation import check_bool

__all__ = ["SGD", "Adam", "clip_grad_norm"]


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


def _check_module(module):
    if not callable(getattr(module, "named_parameters", None)) or not hasattr(module, "grads"):
        raise TypeError(f"module must have named_parameters() and grads (an rnnc module), got "
                        f"{type(module).__name__}")
    return module


def _grad_items(module):
    """(name, live parameter array, gradient in the parameter's dtype) for parameters with a
    gradient."""
    grads, items = module.grads, []
    for name, p in module.named_parameters():
        g = grads.get(name)
        if g is None:
            continue
        g = np.asarray(g)
        if g.shape != p.shape:
            raise ValueError(f"gradient of {name!r} has shape {g.shape}, the parameter has "
                             f"{p.shape}")
        if not p.flags.writeable:
            raise ValueError(f"parameter {name!r} is read-only (the module is frozen: call "
                             f"unfreeze() before an optimizer step)")
        items.append((name, p, g.astype(p.dtype, copy=False)))
    return items     # checked in full before the step changes anything


class _Optimizer:
    _hyper = ()

    def __init__(self, module):
        self.module = _check_module(module)
        self.state = {}         # parameter name -> dict of buffers / counters

    def zero_grad(self):
        """Reset the module's gradients (``module.zero_grad()``)."""
        self.module.zero_grad()

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({type(self.module).__name__}, {args})"

    def state_dict(self):
        """Copies of the hyper-parameters and of the per-parameter state."""
        return {"hyper": {k: getattr(self, k) for k in self._hyper},
                "state": copy.deepcopy(self.state)}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict()`` returned (hyper-parameters are re-validated)."""
        if not hasattr(state_dict, "keys") or set(state_dict.keys()) != {"hyper", "state"}:
            raise ValueError("state_dict must be a mapping with exactly the keys 'hyper' and "
                             "'state', as returned by state_dict()")
        hyper = dict(state_dict["hyper"])
        unknown = sorted(set(hyper) - set(self._hyper))
        if unknown:
            raise ValueError(f"state_dict['hyper'] has unknown keys {unknown}")
        params = dict(self.module.named_parameters())
        problems = []
        for name, st in state_dict["state"].items():
            if name not in params:
                problems.append(f"state for unknown parameter {name!r}")
                continue
            for k, v in st.items():
                if isinstance(v, np.ndarray) and v.shape != params[name].shape:
                    problems.append(f"{name!r}.{k}: expected shape {params[name].shape}, got "
                                    f"{v.shape}")
        if problems:
            raise ValueError("load_state_dict for " + type(self).__name__ + ": "
                             + "; ".join(problems))
        # Validate the hyper-parameters by building a fresh optimizer from them.
        new = type(self)(self.module, **{k: hyper.get(k, getattr(self, k))
                                         for k in self._hyper})
        for k in self._hyper:
            setattr(self, k, getattr(new, k))
        self.state = {name: {k: (np.array(v, dtype=params[name].dtype)
                                 if isinstance(v, np.ndarray) else v)
                             for k, v in st.items()}
                      for name, st in state_dict["state"].items()}
        return self


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, like ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g``::

        d = g + weight_decay * p
        if momentum:  buf = d  (first step)  or  buf = momentum * buf + (1 - dampening) * d
                      d = d + momentum * buf  if nesterov  else  buf
        p -= lr * d

    Parameters
    ----------
    module : rnnc module (``named_parameters()`` and ``grads``)
    lr : float >= 0
    momentum : float >= 0, default 0
    weight_decay : float >= 0, default 0 (L2 penalty added to the gradient)
    nesterov : bool, default False (needs momentum > 0 and dampening 0)
    dampening : float >= 0, default 0

    Hyper-parameters are plain attributes (``opt.lr = 0.01`` takes effect at the next step).
    """
    _hyper = ("lr", "momentum", "weight_decay", "nesterov", "dampening")

    def __init__(self, module, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
                 dampening=0.0):
        super().__init__(module)
        self.lr = _check_real(lr, "lr")
        self.momentum = _check_real(momentum, "momentum")
        self.weight_decay = _check_real(weight_decay, "weight_decay")
        self.dampening = _check_real(dampening, "dampening")
        self.nesterov = check_bool(nesterov, "nesterov")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening == 0, got "
                             f"momentum={momentum!r}, dampening={dampening!r}")

    def step(self):
        """Update every parameter that has a gradient, in place."""
        for name, p, g in _grad_items(self.module):
            d = g
            if self.weight_decay != 0:
                d = d + self.weight_decay * p
            if self.momentum != 0:
                st = self.state.setdefault(name, {})
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = d.copy()
                else:
                    buf *= self.momentum
                    buf += (1 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= self.lr * d


class Adam(_Optimizer):
    """Adam, like ``torch.optim.Adam`` (bias-corrected moments, optional AMSGrad).

    For each parameter ``p`` with gradient ``g``, at its step ``t`` (1, 2, ...)::

        g = g + weight_decay * p                    (or p *= 1 - lr * weight_decay if
                                                     decoupled_weight_decay: AdamW)
        m = beta1 * m + (1 - beta1) * g              (m, v start at 0)
        v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    With ``amsgrad`` the running maximum of ``v`` replaces ``v`` in the denominator.

    Parameters
    ----------
    module : rnnc module (``named_parameters()`` and ``grads``)
    lr : float >= 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
    amsgrad : bool, default False
    decoupled_weight_decay : bool, default False
    """
    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay")

    def __init__(self, module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, decoupled_weight_decay=False):
        super().__init__(module)
        self.lr = _check_real(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_real(betas[0], "betas[0]", 0.0, 1.0),
                      _check_real(betas[1], "betas[1]", 0.0, 1.0))
        self.eps = _check_real(eps, "eps")
        self.weight_decay = _check_real(weight_decay, "weight_decay")
        self.amsgrad = check_bool(amsgrad, "amsgrad")
        self.decoupled_weight_decay = check_bool(decoupled_weight_decay, "decoupled_weight_decay")

    def step(self):
        """Update every parameter that has a gradient, in place."""
        beta1, beta2 = self.betas
        lr = self.lr
        for name, p, g in _grad_items(self.module):
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {"step": 0, "exp_avg": np.zeros_like(p),
                                         "exp_avg_sq": np.zeros_like(p)}
                if self.amsgrad:
                    st["max_exp_avg_sq"] = np.zeros_like(p)
            st["step"] += 1
            t = st["step"]
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    p *= 1 - lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p
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
            if self.amsgrad:
                vmax = st.setdefault("max_exp_avg_sq", np.zeros_like(p))
                np.maximum(vmax, v, out=vmax)
                v = vmax
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p += -step_size * (m / denom)


def clip_grad_norm(module, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale ``module.grads`` in place so that their total norm is at most ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients as if they
    were one vector; when ``max_norm / (total_norm + 1e-6) < 1`` every gradient is multiplied
    by that factor.

    Parameters
    ----------
    module : rnnc module with ``grads``
    max_norm : float >= 0
    norm_type : float > 0 or inf, default 2.0
    error_if_nonfinite : bool, default False
        Raise RuntimeError if the total norm is NaN or infinite (otherwise the gradients are
        scaled by a NaN/zero factor, as PyTorch does).

    Returns
    -------
    total_norm : float
        The norm before clipping.
    """
    if not hasattr(module, "grads"):
        raise TypeError(f"module must have grads (an rnnc module), got "
                        f"{type(module).__name__}")
    max_norm = _check_real(max_norm, "max_norm")
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type!r}")
    grads = [g for g in module.grads.values() if g is not None]
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        norms = [float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]
        total = max(norms)
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
