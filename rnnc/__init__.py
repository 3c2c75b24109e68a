"""rnnc: a compiled recurrent neural network core for NumPy, with PyTorch's semantics."""
from rnnc.recurrent import GRU, LSTM, RNN

__version__ = "0.1.0"

__all__ = ["RNN", "GRU", "LSTM", "__version__"]
