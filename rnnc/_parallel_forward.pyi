import numpy as np
from numpy.typing import NDArray

def forward_part_py(mode: int, x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                    offsets: NDArray[np.intp], reverse: bool, w_ih: NDArray[np.floating],
                    bias: NDArray[np.floating], b_hn: NDArray[np.floating],
                    w_hh: NDArray[np.floating], w_hh_packed: NDArray[np.floating],
                    u0: int, nu: int, hbuf: NDArray[np.floating], h: NDArray[np.floating],
                    c: NDArray[np.floating], cpart: NDArray[np.floating],
                    out: NDArray[np.floating], col0: int, xg: NDArray[np.floating],
                    hg: NDArray[np.floating], chunk_steps: int, bar: NDArray[np.int32],
                    n_threads: int) -> None: ...
