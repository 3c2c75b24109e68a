# Inference loops with one fused product per step, [x<t> | h<t-1> | 1] @ [W_ih | W_hh | b]^T,
# and the packing of their weights: the LSTM's, shared by the one-thread kernel
# (rnnc/_kernels/_lstm_kernel.pyx) and the layers split by batch rows between two threads
# (rnnc/_kernels/_parallel_forward.pyx), which run it on each part's rows; the vanilla RNN's,
# for the row split only.
from cython cimport floating
from libc.string cimport memcpy

from rnnc._kernels._blas cimport RNNC_DGEMM_PANEL, RNNC_SGEMM_PANEL, pack_panels, small_gemm
from rnnc._kernels._cell_math cimport lstm_pointwise, rnn_pointwise_ld
from rnnc._kernels._sequence cimport copy_rows


cdef enum:
    # Which cell fused_sequence runs (the codes of the split kernels' modes,
    # rnnc/_kernels/_parallel_forward.pyx).
    FUSED_RNN_TANH = 0
    FUSED_RNN_RELU = 1
    FUSED_LSTM = 3


cdef inline void fused_sequence(
        const floating* x, Py_ssize_t ldx, Py_ssize_t I,  # (N, I) packed input, row stride ldx
        const Py_ssize_t* batch_sizes, const Py_ssize_t* offsets, Py_ssize_t T, bint reverse,
        const floating* w_packed,   # [W_ih | W_hh | b_ih + b_hh]^T in panels, K = I + H + 1
        Py_ssize_t H, Py_ssize_t B, int cell,
        floating* h,                # (B, H) state in/out
        floating* c,                # (B, H) LSTM cell state in/out, else unused
        floating* out, Py_ssize_t ldo,
        floating* xh,               # (B, I + H + 1) workspace: [x<t> | h<t-1> | 1] per row
        floating* gates) noexcept nogil:  # (B, G) workspace: G = 4H (LSTM) or H (RNN)
    """Inference without projection, small batches: one product per step computes all of
    x<t> W_ih^T + h<t-1> W_hh^T + b with the small-batch kernel, instead of a GEMM over a chunk
    of steps for the inputs plus one for the state. It saves writing and re-reading the chunk's
    projected inputs and BLAS's packing of them (benchmarks/results/amd-epyc/tuning.md); it reads
    W_ih
    every step, so it pays only when the batch reuses each weight enough (rnnc/_engine/plan.py
    decides). The pointwise pass writes h<t> straight into xh for the next step; rows that have
    ended keep their final state there."""
    cdef Py_ssize_t K = I + H + 1, G = 4 * H if cell == FUSED_LSTM else H
    cdef Py_ssize_t s, t, b, r
    for r in range(B):
        memcpy(xh + r * K + I, h + r * H, H * sizeof(floating))
        xh[r * K + I + H] = 1
    for s in range(T):
        t = T - 1 - s if reverse else s
        b = batch_sizes[t]
        if b == 0:
            continue
        copy_rows(xh, K, x + offsets[t] * ldx, ldx, b, I)
        small_gemm(b, G, K, xh, K, w_packed, 0, gates, G)
        if cell == FUSED_LSTM:
            lstm_pointwise(b, H, gates, c, xh + I, K, out + offsets[t] * ldo, ldo)
        else:
            rnn_pointwise_ld(b, H, cell == FUSED_RNN_RELU, gates, xh + I, K,
                             out + offsets[t] * ldo, ldo)
    copy_rows(h, H, xh + I, K, B, H)


cdef inline void pack_fused(Py_ssize_t G, Py_ssize_t I, Py_ssize_t H,
                            const floating* w_ih,   # (G, I)
                            const floating* w_hh,   # (G, H)
                            const floating* b_ih,   # (G,) or NULL (no bias: zeros)
                            const floating* b_hh,   # (G,) or NULL
                            floating* out) noexcept nogil:
    """[W_ih | W_hh | b_ih + b_hh] (G, I + H + 1) in the small-batch kernel's panels, the
    weights of fused_sequence (G = 4H for LSTM, H for RNN): each panel's rows of k taken from
    W_ih, then W_hh, then the biases, without building the concatenated matrix first."""
    cdef Py_ssize_t W = RNNC_SGEMM_PANEL if floating is float else RNNC_DGEMM_PANEL
    cdef Py_ssize_t K = I + H + 1, n_panels = (G + W - 1) // W
    cdef Py_ssize_t total = n_panels * K * W * sizeof(floating), q, j, n, i
    cdef floating* panel
    for q in range(n_panels):
        j = q * W
        n = G - j if G - j < W else W
        panel = out + q * K * W
        pack_panels(n, I, w_ih + j * I, I, 1, panel, total)
        pack_panels(n, H, w_hh + j * H, H, 1, panel + I * W, total)
        panel += (I + H) * W
        for i in range(W):
            panel[i] = b_ih[j + i] + b_hh[j + i] if i < n and b_ih != NULL else 0
