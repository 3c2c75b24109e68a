import numpy as np
from numpy.typing import NDArray

def gemm_py(A: NDArray[np.floating], B: NDArray[np.floating], C: NDArray[np.floating],
            trans_a: bool = ..., trans_b: bool = ..., alpha: float = ...,
            beta: float = ...) -> None: ...

def has_small_gemm() -> bool: ...
