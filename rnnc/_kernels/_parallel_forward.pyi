import numpy as np
from numpy.typing import NDArray

def split_helper_ready() -> bool: ...

def split_forward_py(mode: int, x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                     offsets: NDArray[np.intp], reverse: bool, w_ih: NDArray[np.floating],
                     w_hh: NDArray[np.floating], half: int,
                     bias0: NDArray[np.floating], bias1: NDArray[np.floating],
                     b_hn0: NDArray[np.floating], b_hn1: NDArray[np.floating],
                     w_ih0: NDArray[np.floating], w_ih1: NDArray[np.floating],
                     w_hh0: NDArray[np.floating], w_hh1: NDArray[np.floating],
                     packed0: NDArray[np.floating], packed1: NDArray[np.floating],
                     ih_packed0: NDArray[np.floating], ih_packed1: NDArray[np.floating],
                     hbuf: NDArray[np.floating], h: NDArray[np.floating],
                     c: NDArray[np.floating], cpart0: NDArray[np.floating],
                     cpart1: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                     xg0: NDArray[np.floating], xg1: NDArray[np.floating],
                     hg0: NDArray[np.floating], hg1: NDArray[np.floating],
                     xh0: NDArray[np.floating], xh1: NDArray[np.floating], chunk_steps: int,
                     bar: NDArray[np.int32], prepared: bool = ...,
                     ih_per_panel: bool = ...) -> None: ...

def pipelined_forward_py(mode: int, x: NDArray[np.floating], batch_sizes: NDArray[np.intp],
                         offsets: NDArray[np.intp], reverse: bool, w_ih: NDArray[np.floating],
                         w_ih_packed: NDArray[np.floating], bias: NDArray[np.floating],
                         b_hn: NDArray[np.floating], w_hh: NDArray[np.floating],
                         w_hh_packed: NDArray[np.floating], hbuf: NDArray[np.floating],
                         h: NDArray[np.floating], c: NDArray[np.floating],
                         cpart: NDArray[np.floating], out: NDArray[np.floating], col0: int,
                         ring: NDArray[np.floating], hg: NDArray[np.floating],
                         chunk_steps: int, use_helper: bool) -> None: ...

def rows_forward_py(mode: int, x: NDArray[np.floating], batch_sizes0: NDArray[np.intp],
                    batch_sizes1: NDArray[np.intp], offsets: NDArray[np.intp], reverse: bool,
                    w_ih: NDArray[np.floating], w_hh: NDArray[np.floating],
                    b_ih: NDArray[np.floating], b_hh: NDArray[np.floating],
                    packed0: NDArray[np.floating], packed1: NDArray[np.floating],
                    prepared: bool, h: NDArray[np.floating],
                    c: NDArray[np.floating], out: NDArray[np.floating], col0: int, rows0: int,
                    xh0: NDArray[np.floating], xh1: NDArray[np.floating],
                    gates0: NDArray[np.floating], gates1: NDArray[np.floating],
                    cwork0: NDArray[np.floating], cwork1: NDArray[np.floating],
                    use_helper: bool, packed_hh0: NDArray[np.floating] | None = ...,
                    packed_hh1: NDArray[np.floating] | None = ...,
                    hg0: NDArray[np.floating] | None = ..., hg1: NDArray[np.floating] | None = ...,
                    bias0: NDArray[np.floating] | None = ...,
                    bias1: NDArray[np.floating] | None = ...) -> None: ...
