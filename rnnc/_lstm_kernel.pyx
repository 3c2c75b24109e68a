"""LSTM forward over a whole packed sequence, one layer and one direction per call.

Per chunk of time steps: one GEMM projects the inputs of all its steps (rnnc/_sequence.pxd).
Per step: one GEMM adds the recurrent product of all four gates, h @ W_hh^T, into the gate
pre-activations; one fused pass applies the gates and updates c and h (rnnc/_cell_math.pxd);
with proj_size, one more GEMM projects h = (o * tanh(c)) @ W_hr^T. The GIL is released for the
whole sequence and nothing is allocated: the Python layer (rnnc/_stack.py) validated the inputs
and owns every buffer passed here.
"""
from cython cimport floating
from libc.string cimport memcpy

from rnnc._blas cimport gemm
from rnnc._cell_math cimport lstm_pointwise
from rnnc._sequence cimport chunk_bounds, project_inputs


cdef void lstm_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes,  # (T,) active rows per step, non-increasing
        const Py_ssize_t* offsets,      # (T,) first packed row of each step
        Py_ssize_t T, bint reverse,
        const floating* w_ih,   # (4H, I)
        const floating* w_hh,   # (4H, P)
        const floating* b_ih,   # (4H,) or NULL
        const floating* b_hh,   # (4H,) or NULL
        const floating* w_hr,   # (P, H) or NULL (no projection: P == H)
        Py_ssize_t H, Py_ssize_t P,
        floating* h,            # (B, P) state in/out
        floating* c,            # (B, H) cell state in/out
        floating* out, Py_ssize_t ldo,  # (N, P) this direction's output columns, row stride ldo
        floating* xg,           # (chunk_steps * B, 4H) workspace
        floating* hbuf,         # (B, H) workspace for o * tanh(c) when projecting, else unused
        Py_ssize_t chunk_steps) noexcept nogil:
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t ci, s, t, t0 = 0, t1 = 0, b, r, row0
    cdef floating* gates
    for ci in range(n_chunks):
        chunk_bounds(ci, T, chunk_steps, reverse, &t0, &t1)
        row0 = offsets[t0]
        project_inputs(x + row0 * ldx, ldx, I, offsets[t1 - 1] + batch_sizes[t1 - 1] - row0,
                       w_ih, b_ih, b_hh, G, G, xg)
        for s in range(t1 - t0):
            t = t1 - 1 - s if reverse else t0 + s
            b = batch_sizes[t]
            if b == 0:
                continue
            gates = xg + (offsets[t] - row0) * G
            gemm(False, True, b, G, P, 1, h, P, w_hh, P, 1, gates, G)
            if w_hr == NULL:
                lstm_pointwise(b, H, gates, c, h, H, out + offsets[t] * ldo, ldo)
            else:
                lstm_pointwise(b, H, gates, c, hbuf, H, <floating*>NULL, 0)
                gemm(False, True, b, P, H, 1, hbuf, H, w_hr, H, 0, h, P)
                for r in range(b):
                    memcpy(out + (offsets[t] + r) * ldo, h + r * P, P * sizeof(floating))


def lstm_forward(const floating[:, ::1] x, const Py_ssize_t[::1] batch_sizes,
                 const Py_ssize_t[::1] offsets, bint reverse,
                 const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 const floating[::1] b_ih, const floating[::1] b_hh,
                 const floating[:, ::1] w_hr,
                 floating[:, ::1] h, floating[:, ::1] c,
                 floating[:, ::1] out, Py_ssize_t col0,
                 floating[:, ::1] xg, floating[:, ::1] hbuf, Py_ssize_t chunk_steps):
    """Run one LSTM layer in one direction over a packed sequence (see rnnc/_stack.py).

    Zero-size b_ih/b_hh mean no bias; a zero-size w_hr means no projection. h, c and the
    columns [col0, col0 + P) of out are written. Shapes were checked by the caller.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    cdef Py_ssize_t H = c.shape[1], P = h.shape[1]
    if T == 0 or x.shape[0] == 0 or h.shape[0] == 0:
        return
    cdef const floating* bi = &b_ih[0] if b_ih.shape[0] > 0 else NULL
    cdef const floating* bh = &b_hh[0] if b_hh.shape[0] > 0 else NULL
    cdef const floating* wr = &w_hr[0, 0] if w_hr.shape[0] > 0 else NULL
    cdef floating* hb = &hbuf[0, 0] if hbuf.shape[0] > 0 else NULL
    with nogil:
        lstm_sequence(&x[0, 0], x.shape[1], x.shape[1], &batch_sizes[0], &offsets[0], T,
                      reverse, &w_ih[0, 0], &w_hh[0, 0], bi, bh, wr, H, P,
                      &h[0, 0], &c[0, 0], &out[0, col0], out.shape[1], &xg[0, 0], hb,
                      chunk_steps)
