import numpy as np
from numpy.typing import NDArray

def gru_forward(x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                offsets: NDArray[np.intp], reverse: bool, reset_after: bool,
                w_ih: NDArray[np.floating], w_hh: NDArray[np.floating],
                b_ih: NDArray[np.floating], b_hh: NDArray[np.floating],
                h: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                xg: NDArray[np.floating], hg: NDArray[np.floating], rh: NDArray[np.floating],
                chunk_steps: int, h_prev: NDArray[np.floating],
                hn_keep: NDArray[np.floating],
                w_hh_packed: NDArray[np.floating], w_hn_packed: NDArray[np.floating],
                w_ih_packed: NDArray[np.floating], ih_per_panel: bool = ...) -> None: ...

def gru_backward(x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                 offsets: NDArray[np.intp], reverse: bool, reset_after: bool,
                 w_ih: NDArray[np.floating], w_hh: NDArray[np.floating],
                 act: NDArray[np.floating], h_prev: NDArray[np.floating],
                 hn: NDArray[np.floating], dout: NDArray[np.floating], col0: int,
                 dh: NDArray[np.floating], dx: NDArray[np.floating], add_dx: bool,
                 dw_ih: NDArray[np.floating], dw_hh: NDArray[np.floating],
                 db_ih: NDArray[np.floating], db_hh: NDArray[np.floating],
                 work: NDArray[np.floating], db_acc: NDArray[np.floating],
                 w_hh_packed: NDArray[np.floating],
                 w_hn_packed: NDArray[np.floating]) -> None: ...
