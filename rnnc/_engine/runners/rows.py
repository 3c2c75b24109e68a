"""ROWS: a layer's batch rows split between the calling thread and a helper thread, each part
running the one-thread kernel on its rows with its own copy of the weights: the threads share
nothing while the steps run.

Inference (rnnc/_kernels/_parallel_forward.pyx, rows_forward_py): LSTM and RNN on the fused
product [x | h | 1] @ [W_ih | W_hh | b]^T, GRU (reset_after) on its step with the inputs
projected step by step (gru_rows_sequence). The helper's part is run by the caller if the
helper has not started it, so the results never depend on the helper.

LSTM training: each part runs the fused forward, then the time loop of the fused backward, on
its rows (run_pair); the backward's GEMMs over all rows then run in two shares. The parts start
at a multiple of the kernel's row tiles (layout.row_split), so the outputs, the final states
and a layer's own state gradients are the one-thread kernels' bit for bit; the input and
weight gradients (two shares of rows that need not fall on row tiles) may round differently,
and with them the layers below.
"""
from rnnc._engine import threads
from rnnc._engine.kernels import K
from rnnc._engine.workspace import (aligned_empty, empty, pack_panels, panel_workspace,
                                    workspace)


def forward(plan, job):
    if plan.training:
        return _train_forward(plan, job)
    helper = threads.split_begin()
    try:
        _forward(plan, job, helper)
    finally:
        if helper is not None:
            threads.split_end()
    return None


def _forward(plan, job, helper):
    """Rows [0, rows0) on this thread, the others on the helper when `helper` (a Helper, or
    None)."""
    dtype, d, packs = plan.dtype, job.d, job.packs
    B, H = job.h.shape
    I = job.w_ih.shape[1]
    K_all = I + H + 1
    G = job.w_ih.shape[0]
    empty2 = empty(dtype, 2)
    rows0, sizes0, sizes1 = job.layout.row_split()
    # Each part packs its own copy of the weights, both at once, and reads only that one. A
    # frozen module keeps both copies (packed by the parts on its first call). GRU: each part's
    # copies of W_ih's and W_hh's panels.
    lstm = plan.mode == "LSTM"
    gru = plan.mode == "GRU"
    keys = [(*job.name, "rows", p) for p in range(2)]
    kept = [packs.get(key) for key in keys] if packs is not None else [None, None]
    prepared = kept[0] is not None and kept[1] is not None
    if not prepared:
        def panels(role, p, cols):
            return panel_workspace(None if packs is not None else f"rows {role} {d} {p}", G,
                                   cols, dtype)
        kept = [(panels("packed", p, I), panels("packed hh", p, H)) if gru
                else panels("packed", p, K_all) for p in range(2)]
    rows = K.RowsJob(mode=plan.kernel_code, x=job.x, offsets=job.layout.offsets,
                     reverse=job.reverse, w_ih=job.w_ih, w_hh=job.w_hh, b_ih=job.b_ih,
                     b_hh=job.b_hh, prepared=prepared, h=job.h, c=job.c if lstm else empty2,
                     out=job.out, col0=job.col0, rows0=rows0)
    has_bias = job.b_ih.size
    for p, (part, sizes, n) in enumerate(((rows.part0, sizes0, rows0),
                                          (rows.part1, sizes1, B - rows0))):
        tail = "" if p == 0 else " 1"
        part.batch_sizes = sizes
        part.packed = kept[p][0] if gru else kept[p]
        part.xh = workspace(f"rows xh {d}{tail}", (n, K_all), dtype) if not gru else empty2
        part.gates = workspace(f"rows gates {d}{tail}", (n, G), dtype)
        part.cwork = workspace(f"rows c {d}{tail}", (n, H), dtype) if lstm else empty2
        if gru:
            # Each part's workspace for the state's product and its folded biases.
            part.packed_hh = kept[p][1]
            part.hg = workspace(f"rows hg {d}{tail}", (n, G), dtype)
            part.bias = workspace(f"rows bias {d}{tail}", (G if has_bias else 0,), dtype)
    K.rows_forward_py(rows, helper)
    if packs is not None and not prepared:
        packs.update(zip(keys, kept))       # only once filled: another thread may read them


# -- LSTM training ---------------------------------------------------------------------------
def _state_copies(state, rows0, key, dtype):
    """Each part's own copy of its rows of a (B, H) state (written every step: the parts'
    rows in the caller's array may share a cache line)."""
    B, H = state.shape
    copies = []
    for p, (r0, r1) in enumerate(((0, rows0), (rows0, B))):
        a = workspace(f"{key} {p}", (r1 - r0, H), dtype)
        a[...] = state[r0:r1]
        copies.append(a)
    return copies


def _copy_back(state, copies, rows0):
    """The parts' copies (_state_copies) back into the (B, H) state."""
    state[:rows0] = copies[0]
    state[rows0:] = copies[1]


def _parts(split):
    """(first row, batch sizes at every step) of each part of layout.row_split()."""
    rows0, sizes0, sizes1 = split
    return (0, sizes0), (rows0, sizes1)


def _train_forward(plan, job):
    """Returns (act, [x | h_prev | 1], c_prev, the row split) for backward."""
    dtype = plan.dtype
    (N, I), H = job.x.shape, job.h.shape[1]
    K_all = I + H + 1
    split = job.layout.row_split()
    rows0 = split[0]
    xh = aligned_empty((N, K_all), dtype)       # each part writes its rows' h<t-1> columns
    xh[:, :I] = job.x
    xh[:, I + H] = 1
    act = aligned_empty((N, 4 * H), dtype)
    c_prev = aligned_empty((N, H), dtype)
    hs = _state_copies(job.h, rows0, "rows train h", dtype)
    cs = _state_copies(job.c, rows0, "rows train c", dtype)
    packed = [panel_workspace(f"rows train w {p}", 4 * H, K_all, dtype) for p in range(2)]

    def part(p):
        r0, sizes = _parts(split)[p]
        K.pack_fused_into(job.w_ih, job.w_hh, job.b_ih, job.b_hh, packed[p])   # both at once
        K.lstm_fused_train_forward(xh[r0:], sizes, job.layout.offsets, job.reverse, packed[p],
                                   hs[p], cs[p], job.out[r0:], job.col0, act[r0:],
                                   c_prev[r0:])

    threads.run_pair(lambda: part(0), lambda: part(1))
    _copy_back(job.h, hs, rows0)
    _copy_back(job.c, cs, rows0)
    return act, xh, c_prev, split


def backward(plan, job):
    """BPTT after a training forward (act is overwritten)."""
    dtype = plan.dtype
    act, xh, c_prev, split = job.kept
    rows0 = split[0]
    B, H = job.dh.shape
    small = plan.parts_small_gemm
    dhs = _state_copies(job.dh, rows0, "rows train dh", dtype)
    dcs = _state_copies(job.dc, rows0, "rows train dc", dtype)

    def part(p):
        r0, sizes = _parts(split)[p]
        packed = (pack_panels(job.w_hh.T, f"rows train bwd {p}") if small
                  else empty(dtype, 3))
        K.lstm_fused_backward_steps_py(sizes, job.layout.offsets, job.reverse, job.w_hh,
                                       act[r0:], c_prev[r0:], job.dout[r0:], job.col0, dhs[p],
                                       dcs[p], workspace(f"rows train tc {p}", (H,), dtype),
                                       packed)

    threads.run_pair(lambda: part(0), lambda: part(1))
    _copy_back(job.dh, dhs, rows0)
    _copy_back(job.dc, dcs, rows0)
    # The GEMMs over all rows, in two shares: half of the input gradient's rows and half of the
    # weight gradients' gate rows each, with BLAS at one thread (run_pair): BLAS's own threads
    # kept spinning on the cores the next forward's parts run on.
    N = xh.shape[0]
    dw_cat = workspace("rows train dw", (4 * H, xh.shape[1]), dtype)
    shares = [(0, N // 2, 0, 2 * H), (N // 2, N, 2 * H, 4 * H)]

    def share(p):
        # Each packs its own W_ih^T for its rows of dx.
        packed = (pack_panels(job.w_ih.T, f"rows train ih {p}") if small else empty(dtype, 3))
        K.lstm_fused_backward_weights_py(
            K.LayerBackward(xh=xh, w_ih=job.w_ih, act=act, dx=job.dx, add_dx=job.add_dx,
                            dw_cat=dw_cat, dw_ih=job.dw_ih, dw_hh=job.dw_hh, db_ih=job.db_ih,
                            db_hh=job.db_hh, w_ih_packed=packed), *shares[p])

    threads.run_pair(lambda: share(0), lambda: share(1))
