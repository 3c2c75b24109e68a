"""The estimators' network: ``rnnc.Sequential(rnn, rnnc.Pool(mode)[, rnnc.Linear])``.

A plain ``Sequential`` of rnnc's public modules, so that everything rnnc offers for modules
works on a fitted ``network_``: ``rnnc.save`` / ``rnnc.load``, ``state_dict()`` under
torch.nn.Sequential's names (``0.weight_ih_l0``, ``2.weight``), the optimizers and
``clip_grad_norm`` (one norm over all the layers), pickles without training caches.
"""
import numpy as np

from rnnc.linear import Linear
from rnnc.pooling import Pool
from rnnc.recurrent import GRU, LSTM, RNN
from rnnc.sequential import Sequential

CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
# The estimators' ``pooling`` -> rnnc.Pool's mode. "last" is the final hidden state of every
# direction (the reverse direction's ends at step 0), which is Pool("state"); Pool("last"),
# the output at the last step, would give the reverse direction's state after one step.
POOL_MODES = {"last": "state", "mean": "mean", "max": "max"}
POOLINGS = tuple(POOL_MODES)


def make_network(cell, input_size, hidden_size, num_layers, bidirectional, dropout, pooling,
                 n_outputs, dtype, seed):
    """``Sequential(CELLS[cell](...), Pool(POOL_MODES[pooling]), Linear(D*H, n_outputs))``,
    without the Linear when ``n_outputs`` is 0 (the pooled features are the output).

    ``net(x, lengths)`` takes x (T, B, I) time-major and returns (B, n_outputs) (or the
    features, (B, D*H)). ``seed`` seeds the recurrent layer and the head (two seeds drawn
    from it).
    """
    if pooling not in POOL_MODES:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    seeds = np.random.SeedSequence(seed).generate_state(2)
    rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                      bidirectional=bidirectional, dtype=dtype, seed=int(seeds[0]))
    layers = [rnn, Pool(POOL_MODES[pooling])]
    if n_outputs:
        layers.append(Linear(n_features(rnn), n_outputs, dtype=dtype, seed=int(seeds[1])))
    return Sequential(*layers)


def n_features(rnn):
    """The pooled features of a recurrent layer: hidden_size per direction."""
    return rnn.num_directions * rnn.hidden_size


def n_outputs(net):
    """The width of ``net``'s output: the head's outputs, or the pooled features."""
    last = net[-1]
    return last.out_features if isinstance(last, Linear) else n_features(net[0])


def release(net):
    """Inference mode, and the accumulated gradients dropped: what a fitted estimator keeps
    (and pickles) is the parameters only (rnnc's pickles already leave training caches out,
    but keep ``grads``)."""
    net.eval()
    for layer in net:
        if "grads" in vars(layer):      # modules with parameters; Pool has none
            layer.grads = {}
    return net
