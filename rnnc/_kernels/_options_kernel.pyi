import numpy as np

def options_forward(mode: int, reset_after: bool, spec: np.ndarray, x: np.ndarray,
                    batch_sizes: np.ndarray, offsets: np.ndarray, reverse: bool,
                    w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray,
                    w_hr: np.ndarray, w_p: np.ndarray, h: np.ndarray, c: np.ndarray,
                    out: np.ndarray, col0: int, pre: np.ndarray, chunk_steps: int,
                    work: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray,
                    keep: np.ndarray) -> None: ...
def options_backward(mode: int, reset_after: bool, spec: np.ndarray, x: np.ndarray,
                     batch_sizes: np.ndarray, offsets: np.ndarray, reverse: bool,
                     w_ih: np.ndarray, w_hh: np.ndarray, w_hr: np.ndarray, w_p: np.ndarray,
                     pre: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray,
                     keep: np.ndarray, dout: np.ndarray, col0: int, dh: np.ndarray,
                     dc: np.ndarray, dx: np.ndarray, add_dx: bool, dw_ih: np.ndarray,
                     dw_hh: np.ndarray, db_ih: np.ndarray, db_hh: np.ndarray,
                     dw_hr: np.ndarray, dw_p: np.ndarray, dht: np.ndarray,
                     work: np.ndarray) -> None: ...
