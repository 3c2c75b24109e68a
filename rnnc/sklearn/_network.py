"""The estimators' network: recurrent layers, a pooling of each sequence, an optional head.

``SequenceNet`` is "RNN/GRU/LSTM layers -> one feature vector per sequence -> Linear", with one
forward and one backward, honouring ``lengths``. It has what rnnc's optimizers and
``clip_grad_norm`` need (``named_parameters()``, ``grads`` holding the layers' live gradient
arrays, ``zero_grad()``), so they work on it as on one module and the clipping norm is global.

The pooling is two private functions, ``pool`` and ``pool_backward``: stand-ins for rnnc's
pooling module (``rnnc/pooling.py``, issue 16 part B), to be replaced by it in a few lines.
"""
import numpy as np

from rnnc.linear import Linear
from rnnc.recurrent import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
POOLINGS = ("last", "mean", "max")


def pool(out, h_n, lengths, mode, num_directions):
    """One feature vector per sequence from a recurrent layer's results.

    Parameters
    ----------
    out : (T, B, D*H) the last layer's outputs, exactly 0 at padded steps (rnnc's
        packed-sequence semantics).
    h_n : (L*D, B, H) the final hidden states (for LSTM, h_n of the pair).
    lengths : (B,) int array, or None when every sequence has T steps.
    mode : "last" (final state of every direction of the last layer: the forward direction's
        at each sequence's own last step, the reverse direction's at step 0), "mean" or "max"
        (over each sequence's own steps).
    num_directions : D.

    Returns
    -------
    features : (B, D*H)
    ctx : what ``pool_backward`` needs.
    """
    T, B, F = out.shape
    if mode == "last":
        D = num_directions
        features = np.ascontiguousarray(h_n[-D:].transpose(1, 0, 2)).reshape(B, F)
        return features, (mode, out.shape, h_n.shape, D, None, None)
    mask = None if lengths is None else np.arange(T)[:, None] < lengths[None, :]
    if mode == "mean":
        count = np.full(B, T, dtype=out.dtype) if lengths is None else lengths.astype(out.dtype)
        # Padded outputs are exactly 0, so the sum over all steps is the sum over valid ones.
        features = out.sum(axis=0) / count[:, None]
        return features, (mode, out.shape, h_n.shape, None, mask, count)
    if mode == "max":
        valued = out if mask is None else np.where(mask[:, :, None], out, -np.inf)
        arg = np.argmax(valued, axis=0)                          # (B, F): first maximum
        features = np.take_along_axis(out, arg[None], axis=0)[0]
        return features, (mode, out.shape, h_n.shape, None, None, arg)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")


def pool_backward(grad_features, ctx):
    """dL/d(features) (B, D*H) -> (dL/d(out) (T, B, D*H), dL/d(h_n) or None)."""
    mode, out_shape, hn_shape, D, mask, extra = ctx
    T, B, F = out_shape
    dtype = grad_features.dtype
    if mode == "last":
        grad_h_n = np.zeros(hn_shape, dtype=dtype)
        grad_h_n[-D:] = grad_features.reshape(B, D, -1).transpose(1, 0, 2)
        return np.zeros(out_shape, dtype=dtype), grad_h_n
    if mode == "mean":
        share = grad_features / extra[:, None]                   # each step's share
        grad_out = np.broadcast_to(share, out_shape).copy()
        if mask is not None:
            grad_out *= mask[:, :, None]
        return grad_out, None
    grad_out = np.zeros(out_shape, dtype=dtype)                  # max: to the argmax step
    np.put_along_axis(grad_out, extra[None], grad_features[None], axis=0)
    return grad_out, None


class SequenceNet:
    """Recurrent layers (``cell``), pooling, and a ``Linear(D*H, n_outputs)`` head (none when
    ``n_outputs`` is 0: the pooled features are the output).

    ``net(x, lengths)`` takes x (T, B, I) time-major and returns (B, n_outputs) (or the
    features, (B, D*H)); after ``train()`` a forward keeps what ``backward(grad)`` needs.
    Parameter names are ``rnn.<PyTorch name>`` and ``head.weight`` / ``head.bias``.
    """

    def __init__(self, cell, input_size, hidden_size, num_layers, bidirectional, dropout,
                 pooling, n_outputs, dtype, seed):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.cell, self.pooling = cell, pooling
        seeds = np.random.SeedSequence(seed).generate_state(2)
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers,
                               dropout=dropout, bidirectional=bidirectional, dtype=dtype,
                               seed=int(seeds[0]))
        D = self.rnn.num_directions
        self.n_features = D * hidden_size
        self.head = (Linear(self.n_features, n_outputs, dtype=dtype, seed=int(seeds[1]))
                     if n_outputs else None)
        self.training = False
        self._ctx = None

    @property
    def dtype(self):
        return self.rnn.dtype

    def _modules(self):
        return [("rnn", self.rnn)] + ([("head", self.head)] if self.head is not None else [])

    def __repr__(self):
        head = f", head={self.head!r}" if self.head is not None else ""
        return f"SequenceNet({self.rnn!r}, pooling={self.pooling!r}{head})"

    def train(self, mode=True):
        self.training = bool(mode)
        for _, m in self._modules():
            m.train(mode)
        if not mode:
            self._ctx = None
        return self

    def eval(self):
        return self.train(False)

    def release(self):
        """Inference mode, and the gradients dropped: what a fitted estimator keeps (and
        pickles) is the parameters only."""
        self.eval()
        for _, m in self._modules():
            m.grads = {}
        return self

    def features(self, x, lengths=None):
        """The pooled features (B, D*H) of x (T, B, I)."""
        out, state = self.rnn(x, lengths=lengths)
        h_n = state[0] if self.cell == "lstm" else state
        features, ctx = pool(out, h_n, lengths, self.pooling, self.rnn.num_directions)
        if self.training:
            self._ctx = ctx
        return features

    def __call__(self, x, lengths=None):
        features = self.features(x, lengths)
        return features if self.head is None else self.head(features)

    def backward(self, grad):
        """Backpropagate dL/d(output) (B, n_outputs); gradients accumulate in ``grads``."""
        if self._ctx is None:
            raise RuntimeError("SequenceNet.backward needs a forward pass in training mode")
        if self.head is not None:
            grad, _, _ = self.head.backward(grad)
        grad_out, grad_h_n = pool_backward(np.asarray(grad, dtype=self.dtype), self._ctx)
        self._ctx = None
        if self.cell == "lstm" and grad_h_n is not None:
            grad_h_n = (grad_h_n, None)
        self.rnn.backward(grad_out, grad_h_n)

    def named_parameters(self):
        return [(f"{prefix}.{k}", v) for prefix, m in self._modules()
                for k, v in m.named_parameters()]

    @property
    def grads(self):
        """The layers' accumulated gradients (live arrays), under ``named_parameters`` names."""
        return {f"{prefix}.{k}": v for prefix, m in self._modules() for k, v in m.grads.items()}

    def zero_grad(self):
        for _, m in self._modules():
            m.zero_grad()

    def state_dict(self):
        return {k: v.copy() for k, v in self.named_parameters()}

    def load_state_dict(self, state):
        for prefix, m in self._modules():
            m.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items()
                               if k.startswith(prefix + ".")})
        return self
