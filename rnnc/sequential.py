"""A chain of layers, like ``torch.nn.Sequential``, that passes ``lengths`` and final states."""
import copy
import re

import numpy as np

from rnnc._validation import check_bool
from rnnc.bidirectional import Bidirectional
from rnnc.cells import _CellBase
from rnnc.linear import Linear
from rnnc.pooling import Pool
from rnnc.recurrent import _RNNBase

# Layers whose call takes ``lengths`` and returns ``(output, state)``.
_RECURRENT = (_RNNBase, Bidirectional)


def _returns_state(layer):
    return isinstance(layer, _RECURRENT)


def _takes_lengths(layer):
    """Called with ``lengths=``: rnnc's recurrent layers, and any layer whose class sets
    ``takes_lengths = True`` (Pool, Sequential, or a layer of the user's)."""
    return isinstance(layer, _RECURRENT) or getattr(layer, "takes_lengths", False) is True


def _is_state_pool(layer):
    return isinstance(layer, Pool) and layer.mode == "state"


def _takes_none(layer):
    """Whether a layer's backward reads grad_output None as "no gradient" (others get zeros)."""
    return isinstance(layer, (_RNNBase, Bidirectional, Pool, Sequential))


def _name(i, layer):
    return f"layer {i} ({type(layer).__name__})"


def _layout(layer):
    """The batch_first a layer declares, or None when it works on any layout."""
    if isinstance(layer, Bidirectional):
        return layer.forward_layer.batch_first
    if isinstance(layer, (_RNNBase, Pool, Sequential)):
        return layer.batch_first
    return None     # Linear and unknown layers: the last axis, whatever the layout


def _needs_time(layer):
    """Whether a layer reads a time axis, which a Pool's output no longer has."""
    if isinstance(layer, Sequential):
        return layer._needs_time
    return isinstance(layer, (_RNNBase, Bidirectional, Pool))


def _pools(layer):
    return isinstance(layer, Pool) or (isinstance(layer, Sequential) and layer._pooled)


def _in_features(layer):
    """The input features a layer takes, None when any or unknown."""
    if isinstance(layer, _RNNBase):
        return layer.input_size
    if isinstance(layer, Bidirectional):
        return layer.forward_layer.input_size
    if isinstance(layer, Linear):
        return layer.in_features
    if isinstance(layer, Sequential):
        return layer._in_features
    return None


def _out_features(layer, width, prev):
    """The output features of a layer given ``width`` input features (None: unknown) and the
    layer before it; None when unknown."""
    if isinstance(layer, _RNNBase):
        return layer.num_directions * layer._out_size
    if isinstance(layer, Bidirectional):
        P = layer.forward_layer._out_size
        return None if layer.merge_mode is None else 2 * P if layer.merge_mode == "concat" \
            else P
    if isinstance(layer, Linear):
        return layer.out_features
    if isinstance(layer, Pool):
        if layer.mode != "state":
            return width
        if isinstance(prev, Bidirectional):
            return 2 * prev.forward_layer._out_size
        return prev.num_directions * prev._out_size
    if isinstance(layer, Sequential):
        return layer._width_after(width)
    return None


def _top_state(layer, state):
    """The final hidden state of the top layer of each direction, (D, B, P) ((D, P)
    unbatched), from the state a recurrent layer returned: what Pool('state') reads."""
    if isinstance(layer, Bidirectional):
        lstm = layer.forward_layer.mode == "LSTM"
        return np.stack([(s[0] if lstm else s)[-1] for s in state])
    h = state[0] if layer.mode == "LSTM" else state
    return h[-layer.num_directions:]


def _state_grad(layer, state, d_top):
    """``grad_h_n`` for ``layer.backward`` from the gradient of ``_top_state(layer, state)``:
    zero for the layers below the top (and None for LSTM's c_n)."""
    if isinstance(layer, Bidirectional):
        lstm = layer.forward_layer.mode == "LSTM"
        parts = []
        for d, s in enumerate(state):
            g = np.zeros_like(s[0] if lstm else s)
            g[-1] = d_top[d]
            parts.append((g, None) if lstm else g)
        return tuple(parts)
    lstm = layer.mode == "LSTM"
    h = state[0] if lstm else state
    D = layer.num_directions
    if h.shape[0] == D:
        g = np.asarray(d_top, dtype=h.dtype)
    else:
        g = np.zeros_like(h)
        g[-D:] = d_top
    return (g, None) if lstm else g


def _reraise_located(exc, i, layer):
    """Raise ``exc`` again with the failing layer's index and class in front of its message."""
    if type(exc) in (ValueError, TypeError):
        raise type(exc)(f"{_name(i, layer)}: {exc}") from exc
    raise exc


def _method(layer, i, name, purpose):
    fn = getattr(layer, name, None)
    if not callable(fn):
        raise TypeError(f"{_name(i, layer)} has no {name}(), needed {purpose}")
    return fn


class Sequential:
    """Layers applied one after the other, e.g. an LSTM, a Pool and a Linear head.

    Parameters
    ----------
    *layers : rnnc modules
        ``RNN``, ``GRU``, ``LSTM``, ``Bidirectional`` (their output is passed on), ``Pool``
        (one vector per sequence: see ``rnnc.Pool``), ``Linear`` (applied over the last
        axis), nested ``Sequential``, or any object with the same interface. Cells are
        refused: they take one step, not a sequence.

    Calling ``seq(x, lengths=None)`` runs the layers in order and returns the last layer's
    output. ``lengths`` goes to every layer that takes it: the recurrent layers, ``Pool``,
    nested ``Sequential``, and any layer whose class sets ``takes_lengths = True`` (it is
    then called as ``layer(x, lengths=lengths)``). A ``Pool("state")`` gets the final state
    of the recurrent layer just before it (which must be an RNN, GRU, LSTM or
    ``Bidirectional``); other final states are dropped. A ``Pool`` without ``batch_first``
    takes the layout of the recurrent layers, which must all agree (``seq.batch_first``:
    that layout, or None when no layer declares one).

    Checked at construction, where the layers say their sizes: the input features of each
    layer against the output features of the one before (``LSTM(3, 8)`` then
    ``Linear(16, 2)`` is refused), the layouts, that nothing reading a time axis follows a
    ``Pool``. Errors raised by a layer during a call or backward name it: "layer 1 (Linear):
    ...". Layers of unknown kinds are not checked.

    Training: after ``seq.train()`` and a forward call, ``seq.backward(grad_output)`` runs
    every layer's ``backward`` in reverse order and returns ``(dx, None, grads)``, ``grads``
    keyed ``"{i}.{name}"`` as in ``state_dict()`` (torch.nn.Sequential's names, e.g.
    ``"0.weight_ih_l0"``, ``"1.weight"``, ``"0.forward_layer.bias_hh_l0"``). Gradients also
    accumulate in each layer's ``grads``, seen here through the ``grads`` property until
    ``zero_grad()``. The gradient of a ``Pool("state")`` goes to its recurrent layer as
    ``grad_h_n``, with no gradient from that layer's outputs (``backward(None, grad_h_n)``).
    ``grad_output=None`` means no gradient from the output.

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

    One label per sequence, from the mean of its own steps:

    >>> clf = Sequential(rnnc.GRU(3, 8, seed=0), rnnc.Pool("mean"), rnnc.Linear(8, 2, seed=1))
    >>> clf(x, lengths=[5, 3, 2, 1]).shape
    (4, 2)
    >>> Sequential(rnnc.LSTM(3, 8), rnnc.Linear(16, 2))
    Traceback (most recent call last):
    ...
    ValueError: layer 1 (Linear) takes 16 input features, but the output of layer 0 (LSTM) has 8

    Training a stack of Linear layers:

    >>> from rnnc import losses
    >>> mlp = Sequential(rnnc.Linear(3, 4, activation="tanh", dtype=np.float64, seed=0),
    ...                  rnnc.Linear(4, 1, dtype=np.float64, seed=1)).train()
    >>> loss, g = losses.mse(mlp(np.ones((5, 2, 3))), np.zeros((5, 2, 1)))
    >>> dx, _, grads = mlp.backward(g)
    >>> dx.shape, sorted(grads)
    ((5, 2, 3), ['0.bias', '0.weight', '1.bias', '1.weight'])
    """

    #: Sequential passes ``lengths`` to a nested Sequential.
    takes_lengths = True

    def __init__(self, *layers):
        n = len(layers)
        for i, layer in enumerate(layers):
            if isinstance(layer, _CellBase):
                raise TypeError(f"layer {i} is a cell ({type(layer).__name__}): cells take one "
                                f"step, use the sequence layer ({type(layer).__name__[:-4]}) "
                                "in a Sequential")
            if not callable(layer) or not hasattr(layer, "state_dict"):
                raise TypeError(f"layer {i} must be an rnnc module (callable, with "
                                f"state_dict()), got {type(layer).__name__}")
            first = next(j for j, other in enumerate(layers) if other is layer)
            if first != i:
                raise ValueError(f"layer {i} is the same object as layer {first}: a layer keeps "
                                 "one call's record for its backward, so it cannot appear twice; "
                                 "use copy.deepcopy(layer) for a second layer")
            if isinstance(layer, Bidirectional) and layer.merge_mode is None \
                    and i != n - 1 and not _is_state_pool(layers[i + 1]):
                raise ValueError(f"layer {i}: a Bidirectional with merge_mode=None returns a "
                                 "pair of outputs, which the next layer cannot take; it can "
                                 "only be the last layer, or be followed by Pool('state')")
            if _is_state_pool(layer) and (i == 0 or not _returns_state(layers[i - 1])):
                before = "it is the first layer" if i == 0 else \
                    f"layer {i - 1} is a {type(layers[i - 1]).__name__}"
                raise ValueError(f"{_name(i, layer)}: Pool('state') reads the final state of "
                                 "the layer just before it, which must be an RNN, GRU, LSTM "
                                 f"or Bidirectional; {before}")
        self._layers = list(layers)
        self._check_layout()
        self._check_sizes()
        self.training = False
        self._out_shape = None      # set by a training-mode forward, consumed by backward
        self._trace = None          # per layer, what backward needs: (state, output shape)

    def _check_layout(self):
        """One layout for every layer that reads a time axis, and none after a Pool."""
        layout, declared_by, pooled_by = None, None, None
        for i, layer in enumerate(self._layers):
            if pooled_by is not None and _needs_time(layer):
                raise ValueError(f"{_name(i, layer)} reads a time axis, but the output of "
                                 f"{pooled_by} has none (one vector per sequence): put the "
                                 "Pool after the recurrent layers")
            own = _layout(layer)
            if own is not None:
                if layout is not None and own != layout:
                    raise ValueError(f"{_name(i, layer)} has batch_first={own}, but "
                                     f"{declared_by} has batch_first={layout}: the layers of "
                                     "a Sequential must agree on the layout")
                layout, declared_by = own, _name(i, layer)
            if _pools(layer):
                pooled_by = _name(i, layer)
        self._layout = layout
        self._pooled = pooled_by is not None
        self._needs_time = any(_needs_time(layer) for layer in self._layers)

    def _check_sizes(self):
        """Each layer's input features against the output features before it, where both
        are known (rnnc's layers; unknown layers are not checked)."""
        width, source, prev = None, None, None
        for i, layer in enumerate(self._layers):
            need = _in_features(layer)
            if need is not None and width is not None and need != width:
                raise ValueError(f"{_name(i, layer)} takes {need} input features, but the "
                                 f"output of {source} has {width}")
            width = _out_features(layer, width, prev)
            if not (isinstance(layer, Pool) and layer.mode != "state"):
                source = _name(i, layer)        # a pooling mode passes the features through
            prev = layer
        self._in_features = None
        for layer in self._layers:
            self._in_features = _in_features(layer)
            if self._in_features is not None or not isinstance(layer, Pool):
                break

    def _width_after(self, width):
        """Output features for ``width`` input features (None: unknown)."""
        prev = None
        for layer in self._layers:
            width, prev = _out_features(layer, width, prev), layer
        return width

    @property
    def batch_first(self):
        """The layout the layers declare (True: (B, T, F)), or None if none declares one."""
        return self._layout

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

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_out_shape"] = state["_trace"] = None    # one forward's record, not the model
        return state

    def __repr__(self):
        if not self._layers:
            return "Sequential()"
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self._layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    # -- forward / backward -----------------------------------------------------------------
    def __call__(self, x, lengths=None):
        """Run the layers in order (see the class docstring). Returns the last one's output."""
        return self._run(x, lengths, self._layout)

    def _run(self, x, lengths, layout):
        """The call with the layout given (a nested Sequential gets its parent's)."""
        self._out_shape = self._trace = None
        trace = [] if self.training else None
        out, state = x, None
        for i, layer in enumerate(self._layers):
            try:
                if isinstance(layer, Pool):
                    top = _top_state(self._layers[i - 1], state) if _is_state_pool(layer) \
                        else None
                    own = layer.batch_first
                    out = layer._forward(out, lengths, top, layout if own is None else own)
                elif isinstance(layer, Sequential):
                    own = layer.batch_first
                    out = layer._run(out, lengths, layout if own is None else own)
                elif _returns_state(layer):
                    out, state = layer(out, lengths=lengths)
                elif _takes_lengths(layer):
                    out = layer(out, lengths=lengths)
                else:
                    out = layer(out)
            except (ValueError, TypeError) as exc:
                _reraise_located(exc, i, layer)
            if trace is not None:
                shape = (out.shape, out.dtype) if isinstance(out, np.ndarray) else None
                trace.append((state if _returns_state(layer) else None, shape))
        if self.training:
            self._out_shape = np.shape(out) if isinstance(out, np.ndarray) else ()
            self._trace = trace
        return out

    def backward(self, grad_output, grad_h_n=None):
        """Back-propagate ``grad_output`` (d loss / d output) through every layer.

        Needs a forward call in training mode first (``seq.train()``), and runs once per
        forward. ``grad_output`` None means no gradient from the output. ``grad_h_n`` is
        accepted for the common signature and must be None: the final states of the layers
        are not outputs of a Sequential (a ``Pool("state")`` inside routes its gradient to
        its recurrent layer's ``grad_h_n`` itself).

        Returns
        -------
        dx : ndarray or None
            d loss / d input (None if no gradient reaches the input: ``grad_output`` None
            and a first layer that passes None on, such as a ``Pool``).
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
        if grad_output is not None and self._out_shape != () \
                and np.shape(grad_output) != self._out_shape:
            raise ValueError(f"grad_output must have the output's shape {self._out_shape}, "
                             f"got {np.shape(grad_output)}")
        for i, layer in enumerate(self._layers):
            _method(layer, i, "backward", "for Sequential.backward")
        trace = self._trace
        self._out_shape = self._trace = None
        grad, d_state = grad_output, None
        per_layer = [None] * len(self._layers)
        for i in reversed(range(len(self._layers))):
            layer = self._layers[i]
            try:
                if d_state is not None:
                    # A Pool('state') follows: its gradient is this layer's grad_h_n, and
                    # the layer's outputs get none (grad is None).
                    gh = _state_grad(layer, trace[i][0], d_state)
                    grad, _, per_layer[i] = layer.backward(grad, gh)
                    d_state = None
                    continue
                if grad is None and not _takes_none(layer):
                    grad = np.zeros(*trace[i][1])
                grad, middle, per_layer[i] = layer.backward(grad)
                if _is_state_pool(layer):
                    d_state = middle
            except (ValueError, TypeError) as exc:
                _reraise_located(exc, i, layer)
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
            self._out_shape = self._trace = None
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
                raise TypeError(f"{_name(i, layer)} has no grads")
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
