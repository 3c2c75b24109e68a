"""rnnc: a compiled recurrent neural network core for NumPy, with PyTorch's semantics.

Layers ``RNN``, ``GRU``, ``LSTM`` (stacked, bidirectional, variable lengths), single-step cells
``RNNCell``, ``GRUCell``, ``LSTMCell``, the Keras-style ``Bidirectional`` wrapper and the dense
output layer ``Linear``, ``Pool`` (one vector per sequence: last step, mean, max or final state)
and ``Sequential`` to chain them; ``pad_sequences`` and ``batches`` for ragged data.
``rnnc.reference`` holds a plain NumPy implementation of every class with the same API: the
specification the compiled kernels are tested against. ``rnnc.optim`` and ``rnnc.losses`` train
them; ``rnnc.save`` / ``rnnc.load`` keep them in safetensors files; ``rnnc.manual_seed`` makes
unseeded models reproducible.
"""
import importlib.util as _util
import os as _os

# The kernels load on first use (they import scipy.linalg); check now that they are there.
if _util.find_spec("rnnc._kernels._blas") is None:  # pragma: no cover - depends on how rnnc is run
    raise ImportError(
        f"rnnc's compiled kernels are not built in {_os.path.dirname(__file__)}. Running from "
        "rnnc's source folder makes Python import the sources instead of the installed package: "
        "use `python -P ...` (Python >= 3.11), run from another folder, or build in place with "
        "`pip install -e . --no-build-isolation`.")

from rnnc.bidirectional import Bidirectional
from rnnc.cells import GRUCell, LSTMCell, RNNCell
from rnnc.linear import Linear
from rnnc.recurrent import GRU, LSTM, RNN
from rnnc._engine.threads import get_num_threads, set_num_threads
from rnnc._seed import manual_seed
from rnnc import io, losses, optim
from rnnc.io import load, save
from rnnc.optim import clip_grad_norm
from rnnc.pooling import Pool
from rnnc.sequential import Sequential
from rnnc.data import batches, pad_sequences

__version__ = "0.1.0"

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Bidirectional", "Linear",
           "Pool", "Sequential", "pad_sequences", "batches", "losses", "optim", "clip_grad_norm",
           "set_num_threads", "get_num_threads", "manual_seed", "save", "load", "io",
           "__version__"]
