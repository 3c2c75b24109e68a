"""How layers and streams run: the decisions of rnnc/_engine/plan.py, checked without running a
kernel.

Each row is a problem and rnnc's thread setting, and the strategy and fields the plan must
choose. The expectations are literals worked out by hand from the thresholds (the arithmetic
is beside each row), so that a changed threshold or rule shows here as a changed decision.
The thresholds (rnnc/_engine/plan.py):

    CHUNK_ELEMENTS 2^20          SMALL_GEMM_MIN_STEPS 4     SMALL_GEMM_MAX_BATCH_THREADED 16
    PACKED_PROJECTION_MAX_THREADED_WORK 2^21                PARALLEL_MIN_WORK 2^20
    SPLIT_MIN_HIDDEN 128         SPLIT_MIN_STEP_WORK 196608 (3 * 2^16)
    SPLIT_MIN_TOTAL_WORK 2^21    SPLIT_IN_PLACE_MIN_BYTES 2^21
    FUSED_MIN_BATCH 4            FUSED_MAX_WEIGHTS 2_200_000  FUSED_WEIGHTS_PER_ROW 150_000
    ROW_SPLIT_MIN_BATCH 8        PIPELINE_CHUNKS 8          PIPELINE_MIN_STEPS 16
    TRAIN_SPLIT_MIN_STEP_WORK 2^19                          TRAIN_SPLIT_MIN_ROWS 256
    STREAM_SPLIT_MIN_WORK 2^17

"Step work" is B * G * H * P (G gates, P = H without projection); the packed small-batch
kernel (small_gemm) needs the CPU's AVX-512: where the machine lacks it, the rows that depend
on it are skipped. That the strategies compute what the reference does is
tests/test_strategies.py's part.
"""
import numpy as np
import pytest

from rnnc._engine import plan as plan_module
from rnnc._engine.kernels import K
from rnnc._engine.plan import (fused_fits, make_plan, make_stream_plan, small_gemm_fits,
                               split_half)

SMALL = K.has_small_gemm()
needs_small = pytest.mark.skipif(not SMALL, reason="no packed small-batch kernel (AVX-512)")


def layer(mode="LSTM", I=128, H=128, B=16, T=100, *, threads=2, proj=0, reset_after=True,
          bidirectional=False, dtype=np.float32, training=False, frozen=False, relu=False):
    return make_plan(mode, I, H, proj, reset_after, bidirectional, B, T, dtype, training,
                     frozen, threads=threads, nonlinearity="relu" if relu else "tanh")


def case(id, problem, expected, portable=False):
    """A row of the table; `portable`: its expectations hold without the packed kernel."""
    return pytest.param(problem, expected, id=id, marks=() if portable else needs_small)


# fields not named in a row's expectations are not checked by it
LAYERS = [
    # -- split by rows (2 threads, batch >= 8, each half's fused weights fit its rows) ------
    # GRU I128 H128 B16: small (B 16 <= 16 at 2 threads, T >= 4); half the batch, 8 rows,
    # reuses [W_ih | W_hh | b]: 3*128*257 = 98688 <= min(2.2e6, 8 * 150000).
    # chunk min(100, 2^20 // (16*3*128 = 6144) = 170) = 100: one chunk, W_ih per panel; the
    # projection 100*16*384*128 = 78.6e6 > 2^21 stays off the packed kernel beside 2 threads.
    case("GRU-B16-H128-2t-rows", dict(mode="GRU"),
         dict(strategy="rows", directions_concurrent=False, small_gemm=True,
              parts_small_gemm=True, chunk_steps=100, ih_per_panel=True,
              packed_projection=False, half=0, pipeline_steps=0, alone="kernel")),
    case("GRU-B16-H128-1t-kernel", dict(mode="GRU", threads=1),
         dict(strategy="kernel", small_gemm=True, packed_projection=True, chunk_steps=100)),
    # LSTM: 4*128*257 = 131584 <= 1.2e6 for 8 rows; training too (LSTM only).
    case("LSTM-B16-H128-2t-rows", dict(), dict(strategy="rows", chunk_steps=100)),
    case("LSTM-B16-H128-2t-train-rows", dict(training=True),
         dict(strategy="rows", chunk_steps=100, ih_per_panel=True)),
    case("RNN-B16-H128-2t-rows", dict(mode="RNN"), dict(strategy="rows")),
    case("RNN-B16-H128-2t-train-kernel", dict(mode="RNN", training=True),
         dict(strategy="kernel")),
    # B 7 < 8; H 100 < 128 (no units); T 100 >= 16 and small: projection ahead
    case("LSTM-B7-H100-2t-pipelined", dict(B=7, H=100),
         dict(strategy="pipelined", pipeline_steps=13)),
    # GRU in training never splits by rows (nor by units): the one-thread kernel
    case("GRU-B16-H128-2t-train-kernel", dict(mode="GRU", training=True),
         dict(strategy="kernel", chunk_steps=100)),
    # weights too large for half the batch: 3*1024*2049 = 6.29e6 > 2.2e6
    # (units instead: 17*3*1024*1024 >= 196608)
    case("GRU-B17-H1024-2t-units", dict(mode="GRU", I=1024, H=1024, B=17),
         dict(strategy="units", small_gemm=False, parts_small_gemm=True, half=512)),

    # -- split by units (inference: H >= 128, step work >= 196608, total >= 2^21) ----------
    # GRU I256 H256 B1: 1*3*256*256 = 196608, * 100 steps >= 2^21; B 1 < 8: not rows.
    # half 128, parts on the packed kernel (one thread each: any batch), each projecting its
    # own gate rows on it (GRU: no fused part); 128 % 64 == 0: whole float32 panels, packed
    # from W_hh's gate blocks (no gathered copy) and W_ih read in place.
    case("GRU-B1-H256-2t-units", dict(mode="GRU", I=256, H=256, B=1),
         dict(strategy="units", half=128, parts_small_gemm=True, units_fused=False,
              units_packed_ih=True, units_gather_hh=(False, False),
              units_in_place=(True, True), chunk_steps=100, ih_per_panel=True,
              alone="kernel")),
    # the same over 5 steps: 5 * 196608 = 983040 < 2^21, and 5 < 16 steps to project ahead
    case("GRU-B1-H256-T5-2t-kernel", dict(mode="GRU", I=256, H=256, B=1, T=5),
         dict(strategy="kernel", small_gemm=True)),
    # RNN: 1*1*256*256 = 65536 < 196608: projection ahead; ceil(100 / 8) = 13 steps a chunk
    case("RNN-B1-H256-2t-pipelined", dict(mode="RNN", I=256, H=256, B=1),
         dict(strategy="pipelined", pipeline_steps=13, chunk_steps=100)),
    case("GRU-B1-H256-1t-kernel", dict(mode="GRU", I=256, H=256, B=1, threads=1),
         dict(strategy="kernel"), portable=True),
    case("GRU-B1-H256-2t-train-kernel", dict(mode="GRU", I=256, H=256, B=1, training=True),
         dict(strategy="kernel"), portable=True),
    # LSTM H128 B4: 4*4*128*128 = 262144 >= 196608 (* 100 >= 2^21); the parts fused:
    # 2*128*257 = 65792 <= 4 * 150000. B2: 131072 < 196608: projection ahead instead
    case("LSTM-B4-H128-2t-units", dict(B=4), dict(strategy="units", half=64, units_fused=True)),
    case("LSTM-B2-H128-2t-pipelined", dict(B=2), dict(strategy="pipelined")),
    # LSTM I256 H256 B4: 4*4*65536 = 1048576; each part on the fused product:
    # 2*256*(256+257) = 262656 <= min(2.2e6, 4 * 150000)
    case("LSTM-B4-H256-2t-units-fused", dict(I=256, H=256, B=4),
         dict(strategy="units", half=128, units_fused=True, units_packed_ih=False,
              units_gather_hh=(False, False), units_in_place=(False, False))),
    # T 3 < 4: no packed kernel anywhere (so no rows); W_ih 1024*768*4 bytes = 3.1e6 >= 2^21:
    # each part projects from W_ih's gate blocks in place, with W_hh's rows gathered
    case("GRU-B16-H256-T3-2t-units-blas-in-place", dict(mode="GRU", I=1024, H=256, T=3),
         dict(strategy="units", small_gemm=False, parts_small_gemm=False, units_fused=False,
              units_packed_ih=False, units_gather_hh=(True, True),
              units_in_place=(True, True), chunk_steps=3, packed_projection=False),
         portable=True),
    # W_ih 256*768*4 = 786432 bytes: each part gathers its W_ih rows too
    case("GRU-B16-H256-T3-2t-units-blas-gathered", dict(mode="GRU", I=256, H=256, T=3),
         dict(strategy="units", units_gather_hh=(True, True), units_in_place=(False, False)),
         portable=True),
    # H 200: parts of 96 and 104 units (2*3*200*200 = 240000 >= 196608). float32 panels of
    # 64 columns: neither fills whole panels (gathered, not in place); float64 panels of 32:
    # the first does (96 % 32 == 0), the second not (104 % 32 == 8)
    case("GRU-B2-H200-f32-2t-units-gathered", dict(mode="GRU", I=64, H=200, B=2),
         dict(strategy="units", half=96, units_packed_ih=True, units_gather_hh=(True, True),
              units_in_place=(False, False))),
    case("GRU-B2-H200-f64-2t-units-mixed", dict(mode="GRU", I=64, H=200, B=2,
                                                 dtype=np.float64),
         dict(strategy="units", half=96, units_packed_ih=True, units_gather_hh=(False, True),
              units_in_place=(True, False))),

    # -- split by units in training (LSTM: step work >= 2^19, steps * batch >= 256) -------
    # LSTM I256 H256 B4: 4*4*65536 = 1048576 >= 2^19, 100 * 4 = 400 >= 256
    case("LSTM-B4-H256-2t-train-units", dict(I=256, H=256, B=4, training=True),
         dict(strategy="units", half=128, parts_small_gemm=True, units_fused=False,
              units_packed_ih=False, units_gather_hh=(False, False),
              units_in_place=(False, False), chunk_steps=100, alone="kernel")),
    # 50 * 4 = 200 < 256 rows
    case("LSTM-B4-H256-T50-2t-train-kernel", dict(I=256, H=256, B=4, T=50, training=True),
         dict(strategy="kernel", half=0)),
    # 4*4*128*128 = 262144 < 2^19
    case("LSTM-B4-H128-2t-train-kernel", dict(B=4, training=True), dict(strategy="kernel")),
    # at one thread, nothing splits: the fused product (4*256*513 = 525312 <= 4 * 150000)
    case("LSTM-B4-H256-1t-train-fused", dict(I=256, H=256, B=4, training=True, threads=1),
         dict(strategy="fused", directions_concurrent=False, half=0)),

    # -- projection ahead (2 threads, no split, small, T >= 16) ---------------------------
    # GRU H64 < 128: not by units; B1 < 8: not by rows; chunk min(200, 2^20 // 192) = 200;
    # a chunk's projection 200 // 8 * 3*64*64 = 307200 >= 2^18 multiply-adds
    case("GRU-B1-H64-T200-2t-pipelined", dict(mode="GRU", I=64, H=64, B=1, T=200),
         dict(strategy="pipelined", pipeline_steps=25, chunk_steps=200, small_gemm=True)),
    # ... but at T100, 100 // 8 * 12288 = 147456 < 2^18: too little to hand over
    case("GRU-B1-H64-2t-kernel", dict(mode="GRU", I=64, H=64, B=1),
         dict(strategy="kernel", pipeline_steps=0)),
    # LSTM I128 H128 B2 T17: 17 // 8 * 2*4*128*128 = 262144; H128 B2: 131072 a step < 3 << 16
    case("LSTM-B2-H128-T17-2t-pipelined", dict(I=128, H=128, B=2, T=17),
         dict(strategy="pipelined", pipeline_steps=3)),     # ceil(17 / 8)
    case("GRU-B1-H64-T15-2t-kernel", dict(mode="GRU", I=64, H=64, B=1, T=15),
         dict(strategy="kernel", pipeline_steps=0)),
    case("GRU-B1-H64-1t-kernel", dict(mode="GRU", I=64, H=64, B=1, threads=1),
         dict(strategy="kernel", pipeline_steps=0)),
    case("GRU-B1-H64-2t-train-kernel", dict(mode="GRU", I=64, H=64, B=1, training=True),
         dict(strategy="kernel", pipeline_steps=0)),

    # -- the fused LSTM product (one thread, no projection, small) -------------------------
    # 4*128*257 = 131584 <= min(2.2e6, 16 * 150000)
    case("LSTM-B16-H128-1t-fused", dict(threads=1),
         dict(strategy="fused", alone="fused", small_gemm=True, packed_projection=True)),
    case("LSTM-B16-H128-1t-train-fused", dict(threads=1, training=True),
         dict(strategy="fused")),
    case("LSTM-B2-H128-1t-kernel", dict(B=2, threads=1), dict(strategy="kernel")),  # 2 < 4
    # 4*1024*2049 = 8.39e6 > 2.2e6: weights beyond the caches
    case("LSTM-B64-H1024-1t-kernel", dict(I=1024, H=1024, B=64, threads=1),
         dict(strategy="kernel", small_gemm=True)),
    # 4*512*1025 = 2099200 <= 2.2e6, but > 8 * 150000; with 16 rows <= 2.4e6
    case("LSTM-B8-H512-1t-kernel", dict(I=512, H=512, B=8, threads=1),
         dict(strategy="kernel")),
    case("LSTM-B16-H512-1t-fused", dict(I=512, H=512, B=16, threads=1),
         dict(strategy="fused")),
    case("LSTM-proj-B16-H128-1t-kernel", dict(proj=64, threads=1), dict(strategy="kernel")),
    case("GRU-B16-H128-1t-kernel-not-fused", dict(mode="GRU", threads=1),
         dict(strategy="kernel")),
    # 3 steps: no packed kernel, so no fused product
    case("LSTM-B16-H128-T3-1t-kernel", dict(T=3, threads=1),
         dict(strategy="kernel", small_gemm=False, packed_projection=False), portable=True),

    # -- forms without a split: projection, GRU with reset_after=False ---------------------
    # LSTM P64: small (B16), but nothing splits or projects ahead a projected layer;
    # projection 100*16*512*128 = 104.9e6 > 2^21: off the packed kernel beside 2 threads
    case("LSTM-proj-B16-H128-2t-kernel", dict(proj=64),
         dict(strategy="kernel", small_gemm=True, packed_projection=False)),
    # I16 T4: chunk min(4, 2^20 // 8192) = 4, projection 4*16*512*16 = 524288 <= 2^21
    case("LSTM-proj-I16-T4-2t-packed-projection", dict(proj=64, I=16, T=4),
         dict(strategy="kernel", small_gemm=True, packed_projection=True, chunk_steps=4,
              ih_per_panel=True)),
    case("LSTM-proj-B4-H256-2t-train-kernel", dict(proj=64, I=256, H=256, B=4, training=True),
         dict(strategy="kernel")),
    # 16*3*128*128 = 786432 < 2^20 a step: too little to repay a row split's gathers
    case("GRU-reset-before-B16-H128-2t-kernel", dict(mode="GRU", reset_after=False),
         dict(strategy="kernel", small_gemm=True)),
    case("GRU-reset-before-B1-H256-2t-kernel", dict(mode="GRU", I=256, H=256, B=1,
                                                    reset_after=False),
         dict(strategy="kernel")),

    # -- two directions (concurrent: step work >= 2^20 at 2+ threads) ----------------------
    # GRU I256 H256 B16: 16*3*256*256 = 3.1e6: one direction per thread, each then on one
    # thread: the packed kernel for any batch, projection included; nothing splits
    case("GRU-bidir-B16-H256-2t-concurrent", dict(mode="GRU", I=256, H=256, bidirectional=True),
         dict(strategy="kernel", directions_concurrent=True, small_gemm=True,
              packed_projection=True)),
    case("GRU-bidir-B16-H256-1t-serial", dict(mode="GRU", I=256, H=256, bidirectional=True,
                                              threads=1),
         dict(strategy="kernel", directions_concurrent=False), portable=True),
    # 16*3*128*128 = 786432 < 2^20: one direction after the other, each split by rows
    case("GRU-bidir-B16-H128-2t-rows", dict(mode="GRU", bidirectional=True),
         dict(strategy="rows", directions_concurrent=False)),
    # LSTM I256 H256 B16 training: 16*4*65536 = 4.2e6; each direction on the fused product
    # (4*256*513 = 525312 <= 2.2e6), not split
    case("LSTM-bidir-B16-H256-2t-train-concurrent-fused",
         dict(I=256, H=256, bidirectional=True, training=True),
         dict(strategy="fused", directions_concurrent=True)),
    # B 300 beside concurrent directions: the packed kernel (one thread each) ...
    case("LSTM-proj-bidir-B300-2t-concurrent-small",
         dict(proj=64, B=300, bidirectional=True),       # 300*4*128*64 = 9.8e6
         dict(strategy="kernel", directions_concurrent=True, small_gemm=True)),
    # ... and one direction split by rows, each part on the layer kernel (no fused row kernel
    # for a projection): 300*4*128*64 = 9.8e6 >= 2^20 a step
    case("LSTM-proj-B300-2t-rows", dict(proj=64, B=300),
         dict(strategy="rows", rows_by_kernel=True, directions_concurrent=False,
              parts_small_gemm=True, parts=2)),
    # LSTM I256 H256 P128 B16: 16*4*256*128 = 2.1e6 >= 2^20 a step: split by rows
    case("LSTM-proj-B16-H256-2t-rows", dict(proj=128, I=256, H=256),
         dict(strategy="rows", rows_by_kernel=True, parts=2)),
    case("LSTM-proj-B16-H256-1t-kernel", dict(proj=128, I=256, H=256, threads=1),
         dict(strategy="kernel"), portable=True),
    # GRU reset-before I256 H256 B64: 64*3*256*256 = 12.6e6: split by rows
    case("GRU-reset-before-B64-H256-2t-rows", dict(mode="GRU", I=256, H=256, B=64,
                                                   reset_after=False),
         dict(strategy="rows", rows_by_kernel=True)),
    case("LSTM-bidir-small-2t-serial", dict(H=32, B=4, I=8, bidirectional=True),
         dict(directions_concurrent=False), portable=True),   # 4*4*32*32 = 16384

    # -- the packed kernel at 1 and 2 threads --------------------------------------------
    case("LSTM-proj-B16-2t-small", dict(proj=8, H=32, I=16),
         dict(small_gemm=True, parts_small_gemm=True)),
    case("LSTM-proj-B17-2t-blas", dict(proj=8, H=32, I=16, B=17),
         dict(small_gemm=False, parts_small_gemm=True, packed_projection=False)),
    case("LSTM-proj-B17-1t-small", dict(proj=8, H=32, I=16, B=17, threads=1),
         dict(small_gemm=True, packed_projection=True)),
    case("LSTM-proj-B4096-1t-small", dict(proj=8, H=32, I=16, B=4096, threads=1),
         dict(small_gemm=True)),
    case("LSTM-proj-T3-1t-blas", dict(proj=8, H=32, I=16, T=3, threads=1),
         dict(small_gemm=False, parts_small_gemm=False), portable=True),

    # -- input-projection chunks and W_ih per panel ----------------------------------------
    # GRU I10 H512 B64: 2^20 // (64*3*512 = 98304) = 10 steps a chunk in inference: W_ih is
    # read once per chunk, so packed whole; training keeps every step: one chunk
    case("GRU-B64-H512-1t-chunks-of-10", dict(mode="GRU", I=10, H=512, B=64, threads=1),
         dict(strategy="kernel", chunk_steps=10, ih_per_panel=False), portable=True),
    case("GRU-B64-H512-1t-train-one-chunk", dict(mode="GRU", I=10, H=512, B=64, threads=1,
                                                 training=True),
         dict(chunk_steps=100, ih_per_panel=True), portable=True),
    case("GRU-B64-H512-T8-1t-one-chunk", dict(mode="GRU", I=10, H=512, B=64, T=8, threads=1),
         dict(chunk_steps=8, ih_per_panel=True), portable=True),
    # frozen: the module keeps W_ih packed whole
    case("GRU-B64-H512-T8-1t-frozen", dict(mode="GRU", I=10, H=512, B=64, T=8, threads=1,
                                           frozen=True),
         dict(chunk_steps=8, ih_per_panel=False, frozen=True), portable=True),
    case("GRU-B1-H256-2t-units-frozen", dict(mode="GRU", I=256, H=256, B=1, frozen=True),
         dict(strategy="units", ih_per_panel=False)),
    # 2^20 // (1024*4*1024) = 0: at least one step
    case("LSTM-B1024-H1024-1t-one-step-chunks", dict(I=8, H=1024, B=1024, T=10, threads=1),
         dict(chunk_steps=1, ih_per_panel=False), portable=True),

    # -- the cell as the kernels name it ---------------------------------------------------
    case("RNN-relu", dict(mode="RNN", H=8, B=1, T=2, relu=True),
         dict(relu=True, strategy="kernel"), portable=True),
    case("GRU-relu-ignored", dict(mode="GRU", H=8, B=1, T=2, relu=True),
         dict(relu=False), portable=True),
]


@pytest.mark.parametrize("problem,expected", LAYERS)
def test_layer_plan(problem, expected):
    p = layer(**problem)
    got = {field: getattr(p, field) for field in expected}
    assert got == expected


@pytest.mark.parametrize("mode,relu,code", [("RNN", False, 0), ("RNN", True, 1),
                                            ("GRU", False, 2), ("LSTM", False, 3)])
def test_kernel_code_names_the_cell(mode, relu, code):
    assert layer(mode, H=8, B=1, T=2, relu=relu).kernel_code == code


def test_plan_records_the_problem():
    p = layer("GRU", I=7, H=9, B=3, T=5, reset_after=False, threads=3, dtype=np.float64,
              training=True)
    assert (p.mode, p.hidden_size, p.proj_size, p.reset_after, p.dtype, p.training,
            p.threads, p.gates) == ("GRU", 9, 0, False, np.dtype(np.float64), True, 3, 3)


def test_plan_without_threads_uses_rnnc_setting(monkeypatch):
    monkeypatch.setattr(plan_module, "cached_num_threads", lambda: 1)
    assert make_plan("GRU", 128, 128, 0, True, False, 16, 100, np.float32, False,
                     False).threads == 1
    monkeypatch.setattr(plan_module, "cached_num_threads", lambda: 2)
    p = make_plan("GRU", 128, 128, 0, True, False, 16, 100, np.float32, False, False)
    assert p.threads == 2
    if SMALL:
        assert p.strategy == "rows"


def test_split_layers_write_aligned_outputs():
    # Two threads write parts of each output row: it starts on a cache line.
    for problem in (dict(mode="GRU", I=256, H=256, B=1), dict(mode="GRU")):
        p = layer(**problem)
        if p.strategy in ("units", "rows"):
            assert p.new_output((10, 256)).ctypes.data % 64 == 0


# -- the rules the decisions are made of -------------------------------------------------------
@pytest.mark.parametrize("H,half", [(16, 16), (32, 16), (33, 16), (40, 16), (64, 32),
                                    (130, 64), (200, 96), (256, 128), (1000, 496)])
def test_split_half_is_a_multiple_of_16(H, half):
    assert split_half(H) == half


@pytest.mark.parametrize("B,weights,fits", [
    (4, 600_000, True),         # 4 rows: at most 4 * 150000
    (4, 600_001, False),
    (3, 10, False),             # fewer than 4 rows
    (100, 2_200_000, True),     # at most 2.2e6 elements, however many rows
    (100, 2_200_001, False),
])
def test_fused_fits(B, weights, fits):
    assert fused_fits(B, weights) is fits


@pytest.mark.parametrize("B,steps,one_thread,threads,fits", [
    (16, 4, False, 2, True),        # beside threaded BLAS: batches up to 16
    (17, 4, False, 2, False),
    (17, 4, True, 2, True),         # on one thread of two: any batch
    (4096, 100, False, 1, True),    # at one thread: any batch
    (0, 100, False, 1, False),
    (1, 3, True, 1, False),         # fewer than 4 steps
])
def test_small_gemm_fits(B, steps, one_thread, threads, fits):
    expected = fits and SMALL
    assert small_gemm_fits(np.float32, B, steps, one_thread, threads) is expected
    assert small_gemm_fits(np.float64, B, steps, one_thread, threads) is expected


# -- streams -----------------------------------------------------------------------------------
def stream(mode="LSTM", I=128, H=128, B=1, *, proj=0, reset_after=True, dtype=np.float32,
           threads=2):
    return make_stream_plan(mode, I, H, proj, reset_after, B, dtype, threads=threads)


STREAMS = [
    # LSTM I128 H128 B1: 1 * 512 * (128 + 128) = 131072 >= 2^17 multiply-adds a step
    (dict(), True, 64),
    (dict(I=64), False, 0),                         # 512 * 192 = 98304
    (dict(threads=1), False, 0),
    (dict(proj=64), False, 0),
    (dict(mode="GRU", I=512, H=256), True, 128),    # 768 * 768 = 589824
    (dict(mode="GRU", I=512, H=256, reset_after=False), False, 0),
    (dict(I=512, H=16, B=64), False, 0),            # 64*64*528 = 2.2e6, but 16 units
    (dict(dtype=np.float64), True, 64),
    (dict(B=0), False, 0),
]


@pytest.mark.parametrize("problem,split,half", STREAMS)
def test_stream_plan(problem, split, half):
    p = stream(**problem)
    assert (p.split_units, p.half) == (split, half)
    float32 = np.dtype(problem.get("dtype", np.float32)) == np.float32
    assert p.small_gemm is (SMALL and float32 and problem.get("B", 1) >= 1)
