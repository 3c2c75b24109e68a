import numpy as np
from numpy.typing import NDArray

from collections.abc import Callable, Sequence

class Pool:
    def __init__(self) -> None: ...
    def ready(self, workers: int = 1) -> bool: ...
    def run_parts(self, callables: Sequence[Callable[[], object]]) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def running(self) -> bool: ...

class SplitPart:
    bias: NDArray[np.floating]
    b_hn: NDArray[np.floating]
    w_ih: NDArray[np.floating]
    w_hh: NDArray[np.floating]
    packed: NDArray[np.floating]
    ih_packed: NDArray[np.floating]
    cpart: NDArray[np.floating]
    xg: NDArray[np.floating]
    hg: NDArray[np.floating]
    xh: NDArray[np.floating]
    def __init__(self, **fields: object) -> None: ...

class SplitJob:
    mode: int
    x: NDArray[np.floating]
    batch_sizes: NDArray[np.intp]
    offsets: NDArray[np.intp]
    reverse: bool
    w_ih: NDArray[np.floating]
    w_hh: NDArray[np.floating]
    bounds: Sequence[int]
    hbuf: NDArray[np.floating]
    h: NDArray[np.floating]
    c: NDArray[np.floating]
    out: NDArray[np.floating]
    col0: int
    chunk_steps: int
    bar: NDArray[np.int32]
    prepared: bool
    ih_per_panel: bool
    parts: list[SplitPart]
    def __init__(self, **fields: object) -> None: ...

class AheadJob:
    mode: int
    x: NDArray[np.floating]
    batch_sizes: NDArray[np.intp]
    offsets: NDArray[np.intp]
    reverse: bool
    w_ih: NDArray[np.floating]
    w_ih_packed: NDArray[np.floating]
    bias: NDArray[np.floating]
    b_hn: NDArray[np.floating]
    w_hh: NDArray[np.floating]
    w_hh_packed: NDArray[np.floating]
    hbuf: NDArray[np.floating]
    h: NDArray[np.floating]
    c: NDArray[np.floating]
    cpart: NDArray[np.floating]
    out: NDArray[np.floating]
    col0: int
    ring: NDArray[np.floating]
    hg: NDArray[np.floating]
    chunk_steps: int
    def __init__(self, **fields: object) -> None: ...

class RowsPart:
    batch_sizes: NDArray[np.intp]
    packed: NDArray[np.floating]
    xh: NDArray[np.floating]
    gates: NDArray[np.floating]
    cwork: NDArray[np.floating]
    packed_hh: NDArray[np.floating] | None
    hg: NDArray[np.floating] | None
    bias: NDArray[np.floating] | None
    def __init__(self, **fields: object) -> None: ...

class RowsJob:
    mode: int
    x: NDArray[np.floating]
    offsets: NDArray[np.intp]
    reverse: bool
    w_ih: NDArray[np.floating]
    w_hh: NDArray[np.floating]
    b_ih: NDArray[np.floating]
    b_hh: NDArray[np.floating]
    prepared: bool
    h: NDArray[np.floating]
    c: NDArray[np.floating]
    out: NDArray[np.floating]
    col0: int
    bounds: Sequence[int]
    parts: list[RowsPart]
    def __init__(self, **fields: object) -> None: ...

def split_forward_py(job: SplitJob, pool: Pool) -> None: ...

def pipelined_forward_py(job: AheadJob, pool: Pool | None) -> None: ...

def rows_forward_py(job: RowsJob, pool: Pool | None) -> None: ...
