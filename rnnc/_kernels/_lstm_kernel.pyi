import numpy as np
from numpy.typing import NDArray

from rnnc._kernels._layer_job import LayerBackward, LayerForward

def lstm_forward(job: LayerForward) -> None: ...
def lstm_backward(job: LayerBackward) -> None: ...

def lstm_fused_forward(x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                       offsets: NDArray[np.intp], reverse: bool,
                       w_packed: NDArray[np.floating], h: NDArray[np.floating],
                       c: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                       xh: NDArray[np.floating], gates: NDArray[np.floating]) -> None: ...

def lstm_cell_forward(x: NDArray[np.floating], w_ih: NDArray[np.floating],
                      w_hh: NDArray[np.floating], b_ih: NDArray[np.floating],
                      b_hh: NDArray[np.floating], h: NDArray[np.floating],
                      c: NDArray[np.floating], gates: NDArray[np.floating]) -> None: ...

def lstm_fused_train_forward(xh: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                             offsets: NDArray[np.intp], reverse: bool,
                             w_packed: NDArray[np.floating], h: NDArray[np.floating],
                             c: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                             act: NDArray[np.floating], c_prev: NDArray[np.floating]) -> None: ...

def lstm_fused_backward(job: LayerBackward) -> None: ...

def pack_fused_into(w_ih: NDArray[np.floating], w_hh: NDArray[np.floating],
                    b_ih: NDArray[np.floating], b_hh: NDArray[np.floating],
                    out: NDArray[np.floating]) -> None: ...

def lstm_fused_backward_steps_py(batch_sizes: NDArray[np.intp], offsets: NDArray[np.intp],
                                 reverse: bool, w_hh: NDArray[np.floating],
                                 act: NDArray[np.floating], c_prev: NDArray[np.floating],
                                 dout: NDArray[np.floating], col0: int,
                                 dh: NDArray[np.floating], dc: NDArray[np.floating],
                                 tc_row: NDArray[np.floating],
                                 w_hh_packed: NDArray[np.floating]) -> None: ...

def lstm_fused_backward_weights_py(job: LayerBackward, r0: int, r1: int, g0: int,
                                   g1: int) -> None: ...
