"""GRU forward over a whole packed sequence, one layer and one direction per call.

Gate order r, z, n as in PyTorch. Per chunk of steps one GEMM projects the inputs (with b_ih and
the r, z parts of b_hh folded in). Per step:
- reset_after=True (PyTorch): one GEMM h @ W_hh^T for all three gates, one fused pass.
- reset_after=False (original form, ONNX's default): the reset gate multiplies h *before* the
  W_hn product, so a step needs two GEMMs: h @ [W_hr; W_hz]^T, then (r * h) @ W_hn^T.
GIL released for the whole sequence, no allocation.
"""
from cython cimport floating

from rnnc._blas cimport gemm
from rnnc._cell_math cimport (gru_pointwise_reset_after, gru_reset_gate_before,
                              gru_update_before)
from rnnc._sequence cimport chunk_bounds, project_inputs


cdef void gru_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes,  # (T,) active rows per step, non-increasing
        const Py_ssize_t* offsets,      # (T,) first packed row of each step
        Py_ssize_t T, bint reverse, bint reset_after,
        const floating* w_ih,   # (3H, I)
        const floating* w_hh,   # (3H, H)
        const floating* b_ih,   # (3H,) or NULL
        const floating* b_hh,   # (3H,) or NULL
        Py_ssize_t H,
        floating* h,            # (B, H) state in/out
        floating* out, Py_ssize_t ldo,  # (N, H) this direction's output columns, row stride ldo
        floating* xg,           # (chunk_steps * B, 3H) workspace
        floating* hg,           # (B, 3H) workspace
        floating* rh,           # (B, H) workspace (reset_after=False only)
        Py_ssize_t chunk_steps) noexcept nogil:
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, row0
    cdef floating* xs
    # With reset_after the n part of b_hh sits inside r * (W_hn h + b_hn) and cannot be folded.
    cdef Py_ssize_t n_fold = 2 * H if reset_after else G
    cdef const floating* b_hn = b_hh + 2 * H if (reset_after and b_hh != NULL) else NULL
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, b_ih, b_hh, G, n_fold, xg)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            xs = xg + (offsets[t] - row0) * G
            if reset_after:
                gemm(False, True, b, G, H, 1, h, H, w_hh, H, 0, hg, G)
                gru_pointwise_reset_after(b, H, xs, hg, b_hn, h, out + offsets[t] * ldo, ldo)
            else:
                gemm(False, True, b, 2 * H, H, 1, h, H, w_hh, H, 0, hg, G)
                gru_reset_gate_before(b, H, xs, hg, h, rh)
                gemm(False, True, b, H, H, 1, rh, H, w_hh + 2 * H * H, H, 0, hg + 2 * H, G)
                gru_update_before(b, H, xs, hg, h, out + offsets[t] * ldo, ldo)


def gru_forward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                const Py_ssize_t[::1] offsets, bint reverse, bint reset_after,
                const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] b_ih, const floating[::1] b_hh,
                floating[:, ::1] h, floating[:, ::1] out, Py_ssize_t col0,
                floating[:, ::1] xg, floating[:, ::1] hg, floating[:, ::1] rh,
                Py_ssize_t chunk_steps):
    """Run one GRU layer in one direction over a packed sequence (see rnnc/_stack.py).

    Zero-size b_ih/b_hh mean no bias. h and the columns [col0, col0 + H) of out are written.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    with nogil:
        gru_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                     reverse, reset_after, &w_ih[0, 0], &w_hh[0, 0], bi, bh, H,
                     &h[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], &hg[0, 0], &rh[0, 0],
                     chunk_steps)
