"""Keras-style bidirectional wrapper: a forward layer and a backward copy with its own weights."""
import copy

import numpy as np

from rnnc.recurrent import _RNNBase
from rnnc._validation import as_real_array, check_choice, check_bool, check_shape, describe

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def merge(out_f, out_b, merge_mode):
    """Combine the outputs of the two directions (padded positions are 0 in both)."""
    if merge_mode == "concat":
        return np.concatenate([out_f, out_b], axis=-1)
    if merge_mode == "sum":
        return out_f + out_b
    if merge_mode == "mul":
        return out_f * out_b
    if merge_mode == "ave":
        return (out_f + out_b) / 2
    return out_f, out_b


class Bidirectional:
    """Run ``layer`` forward in time and a copy of it, with its own weights, backward in time.

    The backward layer reads each sequence from its own last step (``lengths`` respected) to
    its first, and its outputs are put back in forward time order before merging, as Keras'
    ``Bidirectional`` does. Unlike ``bidirectional=True`` on the layer classes (PyTorch's
    stacked form), a stacked wrapped layer runs all of its layers in one direction.

    Parameters
    ----------
    layer : rnnc.RNN, rnnc.GRU or rnnc.LSTM
    merge_mode : 'concat' (default), 'sum', 'mul', 'ave' or None (return both outputs)
    backward_layer : optional layer of the same kind to use as the backward layer; by default
        a copy of ``layer`` re-initialised (with ``layer``'s ``init``) from ``layer``'s own
        generator (reproducible when ``layer`` was built with a seed or after
        ``rnnc.manual_seed``).

    Calling ``bi(x, hx=None, lengths=None)`` returns ``(output, (state_fwd, state_bwd))`` where
    each state is what the layer returns (h_n, or (h_n, c_n) for LSTM) and ``hx`` is ``None``
    or a pair ``(hx_fwd, hx_bwd)``. With merge_mode=None, output is ``(out_fwd, out_bwd)``.

    Parameters appear in ``state_dict()`` as ``forward_layer.<name>`` and
    ``backward_layer.<name>``.

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> bi = rnnc.Bidirectional(rnnc.GRU(3, 5, seed=0), merge_mode="sum")
    >>> out, (h_f, h_b) = bi(np.zeros((7, 2, 3), dtype=np.float32), lengths=[7, 4])
    >>> out.shape, h_f.shape
    ((7, 2, 5), (1, 2, 5))
    """

    def __init__(self, layer, merge_mode="concat", backward_layer=None):
        if not isinstance(layer, _RNNBase):
            raise TypeError(f"layer must be an RNN, GRU or LSTM layer, got "
                            f"{type(layer).__name__}")
        if layer.bidirectional:
            raise ValueError("layer must be unidirectional (bidirectional=False): the wrapper "
                             "adds the backward direction itself")
        if layer.reverse:
            raise ValueError("layer must run forwards (reverse=False): the wrapper adds the "
                             "reverse direction itself")
        self.merge_mode = check_choice(merge_mode, "merge_mode", MERGE_MODES)
        self.forward_layer = layer
        if backward_layer is None:
            backward_layer = copy.deepcopy(layer)
            backward_layer._rng = np.random.default_rng(layer._rng.integers(2**63))
            backward_layer._reset_parameters()      # with the layer's init
        elif type(backward_layer) is not type(layer) or \
                backward_layer._config() != layer._config():
            raise ValueError(f"backward_layer must be configured like layer: expected "
                             f"{layer!r}, got {backward_layer!r}")
        self.backward_layer = backward_layer

    def __copy__(self):
        """A deep copy: the layers own their parameters (see rnnc._module.Module.__copy__)."""
        return copy.deepcopy(self)

    def __repr__(self):
        return f"Bidirectional({self.forward_layer!r}, merge_mode={self.merge_mode!r})"

    def _config(self):
        """Constructor arguments besides the layers (rnnc.save keeps the layers apart)."""
        return {"merge_mode": self.merge_mode}

    # What a training call keeps for backward is not part of the module (see Module).
    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_outputs", "_lengths"):
            state.pop(name, None)
        return state

    def __call__(self, x, hx=None, lengths=None):
        if hx is None:
            hx_f = hx_b = None
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            hx_f, hx_b = hx
        else:
            raise TypeError("hx for Bidirectional must be None or a pair (hx_forward, "
                            f"hx_backward), got {describe(hx)}")
        out_f, state_f = self.forward_layer._forward(x, hx_f, lengths, reverse_all=False)
        out_b, state_b = self.backward_layer._forward(x, hx_b, lengths, reverse_all=True)
        if self.training:
            # "mul" needs each direction's output for the other's gradient.
            self._outputs = (out_f, out_b) if self.merge_mode == "mul" else None
        return merge(out_f, out_b, self.merge_mode), (state_f, state_b)

    # -- training ---------------------------------------------------------------------------
    @property
    def training(self):
        return self.forward_layer.training

    def train(self, mode=True):
        mode = check_bool(mode, "mode")
        self.forward_layer.train(mode)
        self.backward_layer.train(mode)
        if not mode:
            self._outputs = None        # as the layers drop their caches
        return self

    def eval(self):
        return self.train(False)

    def freeze(self):
        """Freeze both layers (see rnnc.LSTM.freeze). Returns self."""
        self.forward_layer.freeze()
        self.backward_layer.freeze()
        return self

    def unfreeze(self):
        """Undo freeze() on both layers. Returns self."""
        self.forward_layer.unfreeze()
        self.backward_layer.unfreeze()
        return self

    @property
    def frozen(self):
        """Whether both layers are frozen."""
        return self.forward_layer.frozen and self.backward_layer.frozen

    def _layers(self):
        return (("forward_layer", self.forward_layer), ("backward_layer", self.backward_layer))

    def parameters(self):
        """The live parameter arrays of both layers, forward layer first."""
        return [v for _, v in self.named_parameters()]

    def named_parameters(self):
        """(name, live array) pairs, named ``forward_layer.<name>`` and
        ``backward_layer.<name>`` as in state_dict()."""
        return [(f"{p}.{k}", v) for p, layer in self._layers()
                for k, v in layer.named_parameters()]

    def num_parameters(self):
        """The number of scalar parameters of both layers."""
        return sum(int(v.size) for v in self.parameters())

    @property
    def grads(self):
        """Accumulated gradients, keyed like state_dict() (the layers' own arrays)."""
        return {f"{p}.{k}": v for p, layer in self._layers() for k, v in layer.grads.items()}

    def zero_grad(self):
        self.forward_layer.zero_grad()
        self.backward_layer.zero_grad()

    def backward(self, grad_output, grad_h_n=None):
        """Gradients after a training-mode call: ``(dx, (dhx_fwd, dhx_bwd), grads)``.

        ``grad_output`` has the merged output's shape (a pair for merge_mode=None), or is
        None: no gradient from the outputs (a loss on the final states only);
        ``grad_h_n`` is None or a pair of the two layers' state gradients (see the layers'
        backward). grads are keyed like state_dict() and added to each layer's ``grads``.
        """
        if self.forward_layer._cache is None:
            raise RuntimeError("Bidirectional.backward needs a call in training mode first "
                               "(call .train(), then the module), and runs once per call")
        g_f, g_b = self._split_grad(grad_output)
        if grad_h_n is None:
            gh_f = gh_b = None
        elif isinstance(grad_h_n, (tuple, list)) and len(grad_h_n) == 2:
            gh_f, gh_b = grad_h_n
        else:
            raise TypeError("grad_h_n for Bidirectional must be None or a pair "
                            f"(forward, backward), got {describe(grad_h_n)}")
        # Check both halves before running either, so a rejected call changes nothing.
        checked_f = self.forward_layer._check_backward(g_f, gh_f)
        checked_b = self.backward_layer._check_backward(g_b, gh_b)
        self._outputs = None            # "mul": read by _split_grad, not kept past backward
        dx_f, dhx_f, grads_f = self.forward_layer._run_backward(checked_f)
        dx_b, dhx_b, grads_b = self._run_backward_layer(checked_b)
        grads = {f"forward_layer.{k}": v for k, v in grads_f.items()}
        grads.update({f"backward_layer.{k}": v for k, v in grads_b.items()})
        return dx_f + dx_b, (dhx_f, dhx_b), grads

    def _run_backward_layer(self, checked):
        """The backward layer's backward (it ran reversed on the unflipped input)."""
        return self.backward_layer._run_backward(checked)

    def _split_grad(self, grad_output):
        """Gradient of the merged output -> gradients of the two directions' outputs."""
        layer = self.forward_layer
        out_shape = layer._cache[2]
        if grad_output is None:
            return None, None
        if self.merge_mode is None:
            if not isinstance(grad_output, (tuple, list)) or len(grad_output) != 2:
                raise TypeError("grad_output for merge_mode=None must be a pair (forward, "
                                f"backward), got {describe(grad_output)}")
            return grad_output
        g = as_real_array(grad_output, "grad_output", layer.dtype)
        if self.merge_mode == "concat":
            expected = out_shape[:-1] + (2 * out_shape[-1],)
            check_shape(g, "grad_output", expected)
            return g[..., :out_shape[-1]], g[..., out_shape[-1]:]
        check_shape(g, "grad_output", out_shape)
        if self.merge_mode == "sum":
            return g, g
        if self.merge_mode == "ave":
            return g / 2, g / 2
        out_f, out_b = self._outputs       # "mul"
        return g * out_b, g * out_f

    def state_dict(self):
        d = {f"forward_layer.{k}": v for k, v in self.forward_layer.state_dict().items()}
        d.update({f"backward_layer.{k}": v
                  for k, v in self.backward_layer.state_dict().items()})
        return d

    def load_state_dict(self, state_dict, strict=True):
        """Load ``forward_layer.*`` and ``backward_layer.*`` keys; all problems in one error."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        parts = {"forward_layer": {}, "backward_layer": {}}
        unexpected = []
        for key in state_dict.keys():
            prefix, _, name = key.partition(".") if isinstance(key, str) else (None, "", "")
            if prefix in parts and name:
                parts[prefix][name] = state_dict[key]
            else:
                unexpected.append(key)
        problems = [f"unexpected key {k!r}" for k in unexpected] if strict else []
        for prefix, layer in (("forward_layer", self.forward_layer),
                              ("backward_layer", self.backward_layer)):
            try:
                # Validate both halves before changing either.
                copy.deepcopy(layer).load_state_dict(parts[prefix], strict=strict)
            except ValueError as exc:
                problems.append(f"{prefix}: {exc}")
        if problems:
            raise ValueError("load_state_dict for Bidirectional: " + "; ".join(problems))
        self.forward_layer.load_state_dict(parts["forward_layer"], strict=strict)
        self.backward_layer.load_state_dict(parts["backward_layer"], strict=strict)
        return self
