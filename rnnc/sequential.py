"""A chain of sequence-to-sequence layers, like ``torch.nn.Sequential``."""
import copy
import re

import numpy as np

from rnnc._validation import check_bool
from rnnc.bidirectional import Bidirectional
from rnnc.cells import _CellBase
from rnnc.recurrent import _RNNBase

# Layers whose call takes ``lengths`` and returns ``(output, state)``.
_RECURRENT = (_RNNBase, Bidirectional)


def _returns_state(layer):
    return isinstance(layer, _RECURRENT)


def _method(layer, i, name, purpose):
    fn = getattr(layer, name, None)
    if not callable(fn):
        raise TypeError(f"layer {i} ({type(layer).__name__}) has no {name}(), needed "
                        f"{purpose}")
    return fn


class Sequential:
    """Layers applied one after the other to a sequence, e.g. an LSTM then a Linear head.

    Parameters
    ----------
    *layers : rnnc modules
        Each maps a sequence to a sequence: ``RNN``, ``GRU``, ``LSTM``, ``Bidirectional``
        (their output is passed on, their final state dropped) or ``Linear`` (applied at
        every step), or any object with the same interface. Cells are refused: they take one
        step, not a sequence.

    Calling ``seq(x, lengths=None)`` passes ``lengths`` to every recurrent layer (``RNN``,
    ``GRU``, ``LSTM``, ``Bidirectional``, and nested ``Sequential``) and returns the last
    layer's output only.

    Training: after ``seq.train()`` and a forward call, ``seq.backward(grad_output)`` runs
    every layer's ``backward`` in reverse order and returns ``(dx, None, grads)``, ``grads``
    keyed ``"{i}.{name}"`` as in ``state_dict()`` (torch.nn.Sequential's names, e.g.
    ``"0.weight_ih_l0"``, ``"1.weight"``, ``"0.forward_layer.bias_hh_l0"``). Gradients also
    accumulate in each layer's ``grads``, seen here through the ``grads`` property until
    ``zero_grad()``. The final states get no gradient (they are not part of the output).

    Examples
    --------
    >>> import numpy as np, rnnc
    >>> from rnnc.sequential import Sequential
    >>> model = Sequential(rnnc.LSTM(3, 8, seed=0), rnnc.Linear(8, 2, seed=1))
    >>> model
    Sequential(
      (0): LSTM(3, 8, dtype='float32')
      (1): Linear(8, 2, bias=True, activation=None, dtype=float32)
    )
    >>> x = np.zeros((5, 4, 3), dtype=np.float32)            # (T, B, features)
    >>> model(x, lengths=[5, 3, 2, 1]).shape
    (5, 4, 2)
    >>> list(model.state_dict())[:2], list(model.state_dict())[-2:]
    (['0.weight_ih_l0', '0.weight_hh_l0'], ['1.weight', '1.bias'])

    Training a stack of Linear layers:

    >>> from rnnc import losses
    >>> mlp = Sequential(rnnc.Linear(3, 4, activation="tanh", dtype=np.float64, seed=0),
    ...                  rnnc.Linear(4, 1, dtype=np.float64, seed=1)).train()
    >>> loss, g = losses.mse(mlp(np.ones((5, 2, 3))), np.zeros((5, 2, 1)))
    >>> dx, _, grads = mlp.backward(g)
    >>> dx.shape, sorted(grads)
    ((5, 2, 3), ['0.bias', '0.weight', '1.bias', '1.weight'])
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if isinstance(layer, _CellBase):
                raise TypeError(f"layer {i} is a cell ({type(layer).__name__}): cells take one "
                                f"step, use the sequence layer ({type(layer).__name__[:-4]}) "
                                "in a Sequential")
            if not callable(layer) or not hasattr(layer, "state_dict"):
                raise TypeError(f"layer {i} must be an rnnc module (callable, with "
                                f"state_dict()), got {type(layer).__name__}")
            if isinstance(layer, Bidirectional) and layer.merge_mode is None \
                    and i != len(layers) - 1:
                raise ValueError(f"layer {i}: a Bidirectional with merge_mode=None returns a "
                                 "pair of outputs, which the next layer cannot take; it can "
                                 "only be the last layer")
        self._layers = list(layers)
        self.training = False
        self._out_shape = None      # set by a training-mode forward, consumed by backward

    # -- container --------------------------------------------------------------------------
    def __len__(self):
        return len(self._layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            sub = Sequential(*self._layers[index])
            sub.training = self.training
            return sub
        return self._layers[index]

    def __iter__(self):
        return iter(self._layers)

    def __copy__(self):
        """A deep copy: the layers own their parameters (see rnnc._module.Module.__copy__)."""
        return copy.deepcopy(self)

    def __repr__(self):
        if not self._layers:
            return "Sequential()"
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self._layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    # -- forward / backward -----------------------------------------------------------------
    def __call__(self, x, lengths=None):
        """Run the layers in order; ``lengths`` goes to the recurrent ones. Returns the output."""
        self._out_shape = None
        out = x
        for layer in self._layers:
            if _returns_state(layer):
                out = layer(out, lengths=lengths)[0]
            elif isinstance(layer, Sequential):
                out = layer(out, lengths=lengths)
            else:
                out = layer(out)
        if self.training:
            self._out_shape = np.shape(out) if isinstance(out, np.ndarray) else ()
        return out

    def backward(self, grad_output, grad_h_n=None):
        """Back-propagate ``grad_output`` (d loss / d output) through every layer.

        Needs a forward call in training mode first (``seq.train()``), and runs once per
        forward. ``grad_h_n`` is accepted for the common signature and must be None: the
        layers' final states are not outputs of a Sequential.

        Returns
        -------
        dx : ndarray
            d loss / d input.
        None
        grads : dict
            This call's parameter gradients keyed ``"{i}.{name}"``; they are also added to
            the layers' accumulated ``grads``.
        """
        if self._out_shape is None:
            raise RuntimeError("Sequential.backward needs a forward pass in training mode "
                               "first (call .train(), then the model), and runs once per "
                               "forward")
        if grad_h_n is not None:
            raise ValueError("grad_h_n must be None for a Sequential: the final states of its "
                             "layers are not part of its output")
        if self._out_shape != () and np.shape(grad_output) != self._out_shape:
            raise ValueError(f"grad_output must have the output's shape {self._out_shape}, "
                             f"got {np.shape(grad_output)}")
        for i, layer in enumerate(self._layers):
            _method(layer, i, "backward", "for Sequential.backward")
        self._out_shape = None
        grad = grad_output
        per_layer = [None] * len(self._layers)
        for i in reversed(range(len(self._layers))):
            grad, _, per_layer[i] = self._layers[i].backward(grad)
        grads = {f"{i}.{k}": v for i, g in enumerate(per_layer) for k, v in g.items()}
        return grad, None, grads

    # -- modes and gradients ----------------------------------------------------------------
    def train(self, mode=True):
        """Put every layer (and the Sequential) in training mode, or inference mode."""
        mode = check_bool(mode, "mode")
        for i, layer in enumerate(self._layers):
            _method(layer, i, "train", "for Sequential.train")(mode)
        self.training = mode
        if not self.training:
            self._out_shape = None
        return self

    def eval(self):
        """Inference mode for every layer."""
        return self.train(False)

    def freeze(self):
        """Freeze every layer (see rnnc.LSTM.freeze). Returns self."""
        for i, layer in enumerate(self._layers):
            _method(layer, i, "freeze", "for Sequential.freeze")()
        return self

    def unfreeze(self):
        """Undo freeze() on every layer. Returns self."""
        for i, layer in enumerate(self._layers):
            _method(layer, i, "unfreeze", "for Sequential.unfreeze")()
        return self

    @property
    def frozen(self):
        """Whether every layer is frozen."""
        return all(getattr(layer, "frozen", False) for layer in self._layers)

    def zero_grad(self):
        """Reset the accumulated gradients of every layer to zero."""
        for i, layer in enumerate(self._layers):
            _method(layer, i, "zero_grad", "for Sequential.zero_grad")()

    @property
    def grads(self):
        """The layers' accumulated gradients under prefixed names (the layers' live arrays:
        scaling them in place, as ``clip_grad_norm`` does, changes the layers' gradients)."""
        out = {}
        for i, layer in enumerate(self._layers):
            if not hasattr(layer, "grads"):
                raise TypeError(f"layer {i} ({type(layer).__name__}) has no grads")
            out.update({f"{i}.{k}": v for k, v in layer.grads.items()})
        return out

    def named_parameters(self):
        """(prefixed name, live array) pairs of every layer's parameters, in order."""
        return [(f"{i}.{k}", v) for i, layer in enumerate(self._layers)
                for k, v in _method(layer, i, "named_parameters",
                                    "for Sequential.named_parameters")()]

    def parameters(self):
        """The live parameter arrays of every layer, in order (``torch.nn.Module.parameters``):
        what an optimizer takes, whole or filtered."""
        return [v for _, v in self.named_parameters()]

    def num_parameters(self):
        """The number of scalar parameters of every layer."""
        return sum(int(v.size) for v in self.parameters())

    def _config(self):
        """Constructor arguments besides the layers (none; rnnc.save keeps the layers)."""
        return {}

    def __getstate__(self):
        # The shape a training forward left for backward goes with the layers' caches, which
        # pickles and copies leave out.
        state = self.__dict__.copy()
        state["_out_shape"] = None
        return state

    # -- parameters -------------------------------------------------------------------------
    def state_dict(self):
        """Copies of every layer's parameters under ``"{i}.{name}"``."""
        return {f"{i}.{k}": v for i, layer in enumerate(self._layers)
                for k, v in layer.state_dict().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load ``"{i}.{name}"`` keys into the layers.

        With strict=True, missing and unexpected keys are errors. All problems (of every
        layer) are reported in one ValueError, and no layer changes unless all is valid.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        parts = [{} for _ in self._layers]
        problems = []
        for key in state_dict.keys():
            prefix, _, name = str(key).partition(".")
            if (prefix.isdigit() and str(int(prefix)) == prefix
                    and int(prefix) < len(self._layers) and name):
                parts[int(prefix)][name] = state_dict[key]
            elif strict:
                problems.append(f"unexpected key {key!r}")
        for i, (layer, part) in enumerate(zip(self._layers, parts)):
            try:
                # Validate every layer on a copy before changing any.
                copy.deepcopy(layer).load_state_dict(part, strict=strict)
            except (ValueError, TypeError) as exc:
                msg = re.sub(r"^load_state_dict for \w+: ", "", str(exc))
                problems.append(f"layer {i} ({type(layer).__name__}): {msg}")
        if problems:
            raise ValueError("load_state_dict for Sequential: " + "; ".join(problems))
        for layer, part in zip(self._layers, parts):
            layer.load_state_dict(part, strict=strict)
        return self
