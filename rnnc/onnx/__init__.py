"""ONNX in and out: ``export`` an rnnc layer as native ONNX RNN/GRU/LSTM nodes, ``load`` a
graph of such nodes and run it with rnnc.

Needs the ``onnx`` package (``pip install "rnnc[onnx]"``); ``import rnnc`` does not import it.
"""
try:
    import onnx  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("rnnc.onnx needs the onnx package: pip install 'rnnc[onnx]' "
                      "(or pip install onnx)") from exc

from rnnc.onnx._attributes import ATTRIBUTES, NotSupportedError
from rnnc.onnx._export import export
from rnnc.onnx._load import Session, load

__all__ = ["export", "load", "Session", "NotSupportedError", "ATTRIBUTES"]
