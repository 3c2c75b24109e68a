import numpy as np
from numpy.typing import NDArray

class LayerForward:
    x: NDArray[np.floating] | None
    batch_sizes: NDArray[np.intp] | None
    offsets: NDArray[np.intp] | None
    reverse: bool
    reset_after: bool
    relu: bool
    w_ih: NDArray[np.floating] | None
    w_hh: NDArray[np.floating] | None
    b_ih: NDArray[np.floating] | None
    b_hh: NDArray[np.floating] | None
    w_hr: NDArray[np.floating] | None
    h: NDArray[np.floating] | None
    c: NDArray[np.floating] | None
    out: NDArray[np.floating] | None
    col0: int
    xg: NDArray[np.floating] | None
    hbuf: NDArray[np.floating] | None
    hg: NDArray[np.floating] | None
    rh: NDArray[np.floating] | None
    chunk_steps: int
    h_prev: NDArray[np.floating] | None
    c_prev: NDArray[np.floating] | None
    hn_keep: NDArray[np.floating] | None
    w_hh_packed: NDArray[np.floating] | None
    w_hn_packed: NDArray[np.floating] | None
    w_hr_packed: NDArray[np.floating] | None
    w_ih_packed: NDArray[np.floating] | None
    ih_per_panel: bool
    def __init__(self, **fields: object) -> None: ...

class LayerBackward:
    x: NDArray[np.floating] | None
    xh: NDArray[np.floating] | None
    batch_sizes: NDArray[np.intp] | None
    offsets: NDArray[np.intp] | None
    reverse: bool
    reset_after: bool
    relu: bool
    w_ih: NDArray[np.floating] | None
    w_hh: NDArray[np.floating] | None
    w_hr: NDArray[np.floating] | None
    act: NDArray[np.floating] | None
    h_prev: NDArray[np.floating] | None
    c_prev: NDArray[np.floating] | None
    hn: NDArray[np.floating] | None
    dout: NDArray[np.floating] | None
    col0: int
    dh: NDArray[np.floating] | None
    dc: NDArray[np.floating] | None
    dx: NDArray[np.floating] | None
    add_dx: bool
    dw_ih: NDArray[np.floating] | None
    dw_hh: NDArray[np.floating] | None
    db_ih: NDArray[np.floating] | None
    db_hh: NDArray[np.floating] | None
    dw_hr: NDArray[np.floating] | None
    dhh: NDArray[np.floating] | None
    hbuf_all: NDArray[np.floating] | None
    dhp_all: NDArray[np.floating] | None
    tc_row: NDArray[np.floating] | None
    db_acc: NDArray[np.floating] | None
    work: NDArray[np.floating] | None
    dw_cat: NDArray[np.floating] | None
    w_hh_packed: NDArray[np.floating] | None
    w_hn_packed: NDArray[np.floating] | None
    w_hr_packed: NDArray[np.floating] | None
    w_ih_packed: NDArray[np.floating] | None
    def __init__(self, **fields: object) -> None: ...
