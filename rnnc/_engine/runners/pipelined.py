"""PIPELINED: a layer too small to split runs its steps on the calling thread while the pool's
first worker projects the inputs of the next chunk of steps (rnnc/_kernels/_parallel_forward.pyx,
pipelined_forward_py). Chunks are taken from one queue by either thread, so a worker that
starts late or never only costs time: the results do not depend on it. Inference only."""
from rnnc._engine import threads
from rnnc._engine.kernels import K
from rnnc._engine.workspace import empty, folded_biases, pack_panels, recurrent_panels, workspace


def forward(plan, job):
    pool = threads.split_begin()
    try:
        _forward(plan, job, pool)
    finally:
        if pool is not None:
            threads.split_end()
    return None


def _forward(plan, job, pool):
    mode, dtype, d = plan.mode, plan.dtype, job.d
    G, H = plan.gates, plan.hidden_size
    B = job.h.shape[0]
    per_chunk = plan.pipeline_steps
    empty2 = empty(dtype, 2)
    bias, b_hn = folded_biases(mode, job.b_ih, job.b_hh, H)
    w_packed, _ = recurrent_panels(mode, True, job.w_hh, True, d, False, job.packs, job.name)
    w_ih_packed = pack_panels(job.w_ih, f"packed ih {d}", job.packs, (*job.name, "ih"))
    hbuf = workspace("pipe h", (2, B, H), dtype)
    hbuf[0] = job.h
    hbuf[1] = job.h
    K.pipelined_forward_py(K.AheadJob(
        mode=plan.kernel_code, x=job.x, batch_sizes=job.layout.batch_sizes,
        offsets=job.layout.offsets, reverse=job.reverse, w_ih=job.w_ih, w_ih_packed=w_ih_packed,
        bias=bias, b_hn=b_hn, w_hh=job.w_hh, w_hh_packed=w_packed, hbuf=hbuf, h=job.h,
        c=job.c if job.c is not None else empty2,
        cpart=workspace("pipe c", (B, H), dtype) if mode == "LSTM" else empty2, out=job.out,
        col0=job.col0, ring=workspace("pipe ring", (2, per_chunk * B, G * H), dtype),
        hg=workspace("pipe hg", (B, G * H), dtype) if mode == "GRU" else empty2,
        chunk_steps=per_chunk), pool)
