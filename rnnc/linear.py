"""The output layer of the vanilla RNN model, y<t> = g'(W_ya a<t> + b_y)."""
import contextlib

import numpy as np

from rnnc._module import Module
from rnnc._validation import as_real_array, check_bool, check_choice, check_size


# Activation names and the codes of rnnc/_kernels/_linear_kernel.pyx (a test checks they agree; the
# kernel module is imported on first use, see rnnc/_engine/kernels.py).
ACTIVATIONS = {None: 0, "tanh": 1, "relu": 2, "sigmoid": 3, "softmax": 4}


class Linear(Module):
    """Dense layer over the last axis, y = activation(x W^T + b), like ``torch.nn.Linear``
    followed by an optional activation.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    activation : None, 'tanh', 'relu', 'sigmoid' or 'softmax' (over the last axis)
        A head trained with ``rnnc.losses.softmax_cross_entropy`` has none: the loss takes
        logits and applies the softmax itself ('softmax' here too would apply it twice).
    dtype : float32 or float64; seed : int or None
        seed None: from rnnc's global sequence (``rnnc.manual_seed``).
    init : 'pytorch' (default) or 'keras'
        'pytorch': as PyTorch, U(-1/sqrt(in_features), 1/sqrt(in_features)) for both
        parameters. 'keras': as Keras' Dense, glorot-uniform weight
        (U(-a, a), a = sqrt(6 / (in_features + out_features))) and a zero bias.

    Parameter names ``weight`` (out_features, in_features) and ``bias`` (out_features,).

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> rnn = rnnc.RNN(3, 16, seed=0)
    >>> head = rnnc.Linear(16, 4, seed=0)                     # logits, for the losses
    >>> a, _ = rnn(np.zeros((10, 2, 3), dtype=np.float32))   # a<t> for every t
    >>> head(a).shape                                        # y<t> for every t
    (10, 2, 4)
    """

    def __init__(self, in_features, out_features, bias=True, activation=None, *,
                 dtype=np.float32, seed=None, init="pytorch"):
        super().__init__(dtype, seed, init)
        self.in_features = check_size(in_features, "in_features")
        self.out_features = check_size(out_features, "out_features")
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        if not check_bool(bias, "bias"):
            self.bias = None      # as torch.nn.Linear(bias=False).bias
        self._has_bias = bool(bias)
        self._reset_parameters()

    def _reset_parameters(self):
        """Draw the parameters from the layer's generator as ``init`` says."""
        shapes = {"weight": (self.out_features, self.in_features)}
        if self._has_bias:
            shapes["bias"] = (self.out_features,)
        self._init_parameters(shapes, 1.0 / np.sqrt(self.in_features))

    def _config(self):
        """Constructor arguments that rebuild an identical layer (weights aside)."""
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self._has_bias, activation=self.activation, dtype=self.dtype,
                    init=self.init)

    def __repr__(self):
        init = f", init={self.init!r}" if self.init != "pytorch" else ""
        return (f"Linear({self.in_features}, {self.out_features}, "
                f"bias={'bias' in self._params}, "
                f"activation={self.activation!r}, dtype={self.dtype.name}{init})")

    def __call__(self, x):
        x = as_real_array(x, "input", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features (in_features) in "
                             f"its last axis, got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = np.empty((x2.shape[0], self.out_features), dtype=self.dtype)
        b = self._params.get("bias", np.empty(0, dtype=self.dtype))
        from rnnc._kernels._linear_kernel import linear_forward
        with self._blas_hold(x2.shape[0]):
            linear_forward(x2, self._params["weight"], b, y, ACTIVATIONS[self.activation])
        if self.training:
            self._cache = (x2, y, lead)
        return y.reshape(lead + (self.out_features,))

    def _blas_hold(self, rows):
        """BLAS at one thread for products small enough for one core (rnnc/_engine/plan.py)."""
        from rnnc._engine import plan, threads
        if plan.linear_holds_blas(rows, self.in_features, self.out_features, self.dtype):
            return threads.blas_one_thread()
        return contextlib.nullcontext()

    def backward(self, grad_output, grad_h_n=None):
        """Gradients after a training-mode forward: returns ``(dx, None, grads)``.

        ``grads`` maps parameter names to their gradients; they are also added to
        ``self.grads``. The middle element is there so that every rnnc module's backward has
        the same shape of result (Linear has no state).
        """
        if self._cache is None:
            raise RuntimeError("Linear.backward needs a forward pass in training mode first "
                               "(call .train(), then the module), and runs once per forward")
        x2, y, lead = self._cache
        dy = as_real_array(grad_output, "grad_output", self.dtype)
        expected = lead + (self.out_features,)
        if dy.shape != expected:
            raise ValueError(f"grad_output must have shape {expected}, got {dy.shape}")
        self._cache = None
        dy = dy.reshape(-1, self.out_features)
        # d(pre-activation) from d(output), written from the activation's output y.
        if self.activation == "tanh":
            dpre = dy * (1 - y * y)
        elif self.activation == "relu":
            dpre = np.where(y > 0, dy, 0).astype(self.dtype)
        elif self.activation == "sigmoid":
            dpre = dy * y * (1 - y)
        elif self.activation == "softmax":
            dpre = y * (dy - np.sum(dy * y, axis=1, keepdims=True))
        else:
            dpre = dy
        with self._blas_hold(x2.shape[0]):
            grads = {"weight": dpre.T @ x2}
            dx = (dpre @ self._params["weight"]).reshape(lead + (self.in_features,))
        if "bias" in self._params:
            grads["bias"] = dpre.sum(axis=0)
        self._accumulate(grads)
        return dx, None, grads
