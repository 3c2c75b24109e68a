import numpy as np
from numpy.typing import NDArray

class TrainForwardPart:
    x: NDArray[np.floating]
    batch_sizes: NDArray[np.intp]
    offsets: NDArray[np.intp]
    reverse: bool
    w_ih: NDArray[np.floating]
    w_ih_packed: NDArray[np.floating]
    bias: NDArray[np.floating]
    w_hh: NDArray[np.floating]
    w_hh_packed: NDArray[np.floating]
    u0: int
    nu: int
    hbuf: NDArray[np.floating]
    h: NDArray[np.floating]
    c: NDArray[np.floating]
    cpart: NDArray[np.floating]
    out: NDArray[np.floating]
    col0: int
    act: NDArray[np.floating]
    xh: NDArray[np.floating]
    xrow0: int
    xrow1: int
    c_prev: NDArray[np.floating]
    bar: NDArray[np.int32]
    n_threads: int
    def __init__(self, **fields: object) -> None: ...

class BackwardPart:
    batch_sizes: NDArray[np.intp]
    offsets: NDArray[np.intp]
    reverse: bool
    w_ih_perm: NDArray[np.floating]
    w_hh_cols: NDArray[np.floating]
    w_hh_packed: NDArray[np.floating]
    u0: int
    nu: int
    row0: int
    row1: int
    act: NDArray[np.floating]
    xh: NDArray[np.floating]
    c_prev: NDArray[np.floating]
    dout: NDArray[np.floating]
    col0: int
    dh: NDArray[np.floating]
    dc: NDArray[np.floating]
    dhp: NDArray[np.floating]
    dcp: NDArray[np.floating]
    dx: NDArray[np.floating]
    add_dx: bool
    dw_ih: NDArray[np.floating]
    dw_hh: NDArray[np.floating]
    db_ih: NDArray[np.floating]
    db_hh: NDArray[np.floating]
    acc: NDArray[np.floating]
    wtmp: NDArray[np.floating]
    tc_row: NDArray[np.floating]
    bar: NDArray[np.int32]
    n_threads: int
    def __init__(self, **fields: object) -> None: ...

def lstm_train_forward_part_py(part: TrainForwardPart) -> None: ...

def lstm_backward_part_py(part: BackwardPart) -> None: ...
