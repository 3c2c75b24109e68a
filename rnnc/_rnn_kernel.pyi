import numpy as np
from numpy.typing import NDArray

def rnn_forward(x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                offsets: NDArray[np.intp], reverse: bool, use_relu: bool,
                w_ih: NDArray[np.floating], w_hh: NDArray[np.floating],
                b_ih: NDArray[np.floating], b_hh: NDArray[np.floating],
                h: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                xg: NDArray[np.floating], chunk_steps: int) -> None: ...
