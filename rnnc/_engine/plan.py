"""How a layer runs: every decision, made once from the problem and the machine.

``make_plan`` answers, for one layer of a stack (both of its directions run alike), which
strategy runs it and with which products; the runners in ``rnnc/_engine/runners/`` then
execute the plan without deciding anything, and the training cache keeps the plan so that the
backward runs the forward's strategy. Nothing else in the package decides how a layer runs.
This is oneDNN's split between ``rnn_conf_t`` (src/cpu/rnn/rnn_utils.hpp) and the primitive
that runs it.

Strategies (``LayerPlan.strategy``):

- ``KERNEL``: the layer kernel of the cell (rnnc/_lstm_kernel.pyx, _gru_kernel, _rnn_kernel):
  the input projection for a chunk of steps as one product, then one recurrent product and
  the gate math per step. BLAS may use every thread for the products.
- ``FUSED``: LSTM (and in training only LSTM) on one product per step,
  [x | h | 1] @ [W_ih | W_hh | b]^T (rnnc/_fused.pxd), when the batch reuses the weights
  from cache.
- ``UNITS``: the hidden units split between ``parts`` threads, which meet once per step
  (inference: rnnc/_parallel_forward.pyx; LSTM training: rnnc/_parallel_train.pyx).
- ``ROWS``: the batch rows split between ``parts`` threads, each running the one-thread kernel
  on its rows with its own copy of the weights; they share nothing while the steps run.
- ``PIPELINED``: one thread runs the steps while a pool worker projects the next chunk's
  inputs.
- ``OPTIONS``: a layer with cell options beyond PyTorch's (activations, clip, peepholes,
  coupled gates: rnnc/_cell_options.py) on the options kernel
  (rnnc/_kernels/_options_kernel.pyx), structured as ``KERNEL`` with BLAS products; its two
  directions may run concurrently. Only such layers take it, and they take nothing else.

With two directions, ``directions_concurrent`` runs them on two threads instead (each then on
one thread, or with four threads or more on half of them, which it may split between). At 2
threads, for example, a GRU layer B16 H128 T100 in inference runs ``ROWS``, a GRU B1 H256
``UNITS``, a GRU B1 H64 ``PIPELINED``, and a bidirectional GRU B16 H256 its two directions
concurrently, each on ``KERNEL``.

The constants below are the thresholds of these choices, one line each. They were measured on
one CPU only; the measurements and the alternatives tried are in
benchmarks/results/amd-epyc/tuning.md.
"""
import dataclasses
from itertools import pairwise

import numpy as np

from rnnc._engine import machine, tune
from rnnc._engine.kernels import K
from rnnc._engine.threads import cached_num_threads
from rnnc._engine.workspace import aligned_empty

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

KERNEL, FUSED, UNITS, ROWS, PIPELINED = "kernel", "fused", "units", "rows", "pipelined"
OPTIONS = "options"

# -- Thresholds (multiply-adds are those of the recurrent product unless said otherwise) -------
CHUNK_ELEMENTS = 1 << 20            # elements of one chunk's input projection (inference)
SMALL_GEMM_MIN_STEPS = 4            # fewer steps do not repay packing the weights per call
SMALL_GEMM_MAX_BATCH_THREADED = 16  # largest batch on the packed kernel beside threaded BLAS
PACKED_PROJECTION_MAX_THREADED_WORK = 1 << 21  # largest chunk projection on it, ditto
PARALLEL_MIN_WORK = 1 << 20         # one step's work for two directions to run concurrently
SPLIT_MIN_HIDDEN = 128              # fewest hidden units to split by units (inference)
SPLIT_MIN_STEP_WORK = 3 << 16       # one step's work to repay a barrier per step
SPLIT_MIN_TOTAL_WORK = 1 << 21      # the layer's work to repay each part packing its weights
SPLIT_IN_PLACE_MIN_BYTES = 2 << 20  # W_ih this large: split parts project from it in place
FUSED_MIN_BATCH = 4                 # fewest rows for the fused product to reuse its weights
FUSED_MAX_WEIGHTS = 2_200_000       # most elements of [W_ih | W_hh | b] for it (cache-bound)
FUSED_WEIGHTS_PER_ROW = 150_000     # and at most this many per batch row
ROW_TILE = 4                        # rows of the packed kernel's tiles (rnnc/_small_gemm.h)
ROW_SPLIT_MIN_BATCH = 2 * ROW_TILE  # fewest rows to split by rows: a tile each
MAX_PARTS = 64                      # most parts of a split (the pool's, _parallel_forward.pyx)
PIPELINE_CHUNKS = 8                 # chunks of a projection-ahead layer (the first is not hidden)
PIPELINE_MIN_STEPS = 16             # fewest steps to project ahead
PIPELINE_MIN_CHUNK_WORK = 1 << 18   # multiply-adds of one chunk's projection, to repay a handoff
TRAIN_SPLIT_MIN_STEP_WORK = 1 << 19  # training split by units: one step's work, and
TRAIN_SPLIT_MIN_ROWS = 256          # rows (steps x batch) to repay the per-call set-up
STREAM_SPLIT_MIN_WORK = 1 << 17     # a stream step's multiply-adds (all products) to split it


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Every decision for one layer of a stack (both directions). Made by make_plan."""
    mode: str                       # "RNN" | "GRU" | "LSTM"
    hidden_size: int
    proj_size: int
    reset_after: bool               # GRU: the reset gate applied after the recurrent product
    relu: bool                      # RNN: relu rather than tanh
    dtype: np.dtype
    training: bool
    frozen: bool                    # the weights' packed forms are kept across calls
    threads: int                    # rnnc's thread setting the plan was made for
    strategy: str                   # KERNEL | FUSED | UNITS | ROWS | PIPELINED
    alone: str                      # UNITS: what runs if the pool's threads cannot start
    directions_concurrent: bool     # two directions, one thread each
    small_gemm: bool                # the recurrent product (and backward's) on the packed kernel
    packed_projection: bool         # KERNEL: the input projection on the packed kernel too
    ih_per_panel: bool              # W_ih packed panel by panel as the projection goes
    chunk_steps: int                # steps whose inputs are projected at once
    pipeline_steps: int             # PIPELINED: steps of each chunk projected ahead
    parts_small_gemm: bool          # UNITS / ROWS: each part (one thread) on the packed kernel
    half: int                       # UNITS: hidden units of part 0 (unit_bounds[1])
    units_fused: bool               # UNITS inference: each part on the fused LSTM product
    units_packed_ih: bool           # UNITS inference: each part projects on the packed kernel
    units_gather_hh: tuple = (False, False)  # part p gathers its W_hh rows before packing
    units_in_place: tuple = (False, False)   # part p projects from W_ih's gate blocks in place
    parts: int = 1                  # UNITS / ROWS: threads the layer splits between (each
                                    # part one), at most rnnc's thread setting
    unit_bounds: tuple = ()         # UNITS: part p's hidden units are [b[p], b[p + 1])
    hold_blas: bool = False         # BLAS held at one thread for the layer (small products)
    cell: tuple = None              # OPTIONS: the layer's CellSpec (rnnc/_cell_options.py)
    rows_by_kernel: bool = False    # ROWS: each part runs the cell's layer kernel on its
                                    # gathered rows (projected LSTM, GRU reset_before; in
                                    # training GRU and RNN too)

    @property
    def gates(self):
        return GATES[self.mode]

    @property
    def kernel_code(self):
        """The cell as the split and fused kernels name it (rnnc/_kernels/_fused.pxd)."""
        return {"RNN": 0, "GRU": 2, "LSTM": 3}[self.mode] + (self.mode == "RNN" and self.relu)

    def new_output(self, shape):
        """The layer's output buffer: 64-byte aligned where threads write parts of its
        rows (the parts' columns or rows then start on cache lines of their own)."""
        if self.strategy in (UNITS, ROWS):
            return aligned_empty(shape, self.dtype)
        return np.empty(shape, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """The decisions of a stream (one step per call): see make_stream_plan."""
    small_gemm: bool                # every product on the packed kernel (float32)
    split_units: bool               # each step's hidden units split with the stream's helper
    half: int                       # units of the first part when split


def small_gemm_fits(dtype, batch, steps, one_thread, threads):
    """Whether the packed small-batch kernel (rnnc/_small_gemm.h) replaces BLAS: any batch on
    one thread, small batches beside multi-threaded BLAS; not for a few steps (it packs the
    weights per call) or where the CPU lacks it."""
    if steps < SMALL_GEMM_MIN_STEPS or not K.has_small_gemm():
        return False
    if one_thread or threads == 1:
        return batch >= 1
    return 1 <= batch <= SMALL_GEMM_MAX_BATCH_THREADED


def fused_fits(B, weights):
    """Whether B rows reuse `weights` elements of [W_ih | W_hh | b] enough for the fused
    product (FUSED_* above)."""
    return B >= FUSED_MIN_BATCH and weights <= min(FUSED_MAX_WEIGHTS, B * FUSED_WEIGHTS_PER_ROW)


def blas_fits_one_core(rows, inner, cols, dtype):
    """Whether a product (rows, inner) @ (inner, cols) is small enough for one core: its
    operands fit in one core's L2. BLAS then runs it on one thread: its threads wait for each
    other by spinning, and on a busy machine a partner that is not running stalls the product
    for a scheduler tick, far longer than a second core could save on it
    (benchmarks/results/amd-epyc/busy.md)."""
    size = rows * inner + inner * cols + rows * cols
    return size * np.dtype(dtype).itemsize <= machine.current().l2


def linear_holds_blas(rows, in_features, out_features, dtype):
    """Whether a Linear call holds BLAS at one thread (blas_fits_one_core, at 2+ threads)."""
    return cached_num_threads() > 1 and blas_fits_one_core(rows, in_features, out_features,
                                                           dtype)


def split_half(H):
    """Hidden units of the first of two parts: a multiple of 16 (each part's columns of a
    shared row start on a cache line), at least 16."""
    return max(16, H // 2 // 16 * 16)


def split_units(H, parts):
    """The bounds of `parts` blocks of hidden units: every part's first unit a multiple of 16
    (as split_half, which is the first bound of two parts), at least 16 units each (H must be
    at least 16 * parts)."""
    return (0, *(max(16 * k, H * k // parts // 16 * 16) for k in range(1, parts)), H)


def make_plan(mode, input_size, hidden_size, proj_size, reset_after, bidirectional, batch,
              steps, dtype, training, frozen, threads=None, nonlinearity="tanh", trial=None,
              cell=None):
    """The plan of one layer: input_size is the layer's own (D * P above the first), steps the
    number of steps it runs (the longest length), threads rnnc's setting (None: the current
    one). Made once per problem and kept: a call of the same shape reuses it. trial: where
    strategies compete and RNNC_TUNE allows, the plan is the fastest candidate as timed by
    trial(plan, problem..., rng) -> callable (rnnc/_engine/stack.py, trial), unless a choice
    is remembered; without trial, the remembered choice or the rules'. cell: the CellSpec of
    a layer with cell options (None: PyTorch's cells), which the options kernel runs."""
    if threads is None:
        threads = cached_num_threads()
    if cell is not None:
        return _options_plan(mode, hidden_size, proj_size, reset_after, bidirectional, batch,
                             steps, np.dtype(dtype), training, frozen, threads, cell)
    key = (mode, input_size, hidden_size, proj_size, reset_after, bidirectional, batch, steps,
           dtype, training, frozen, threads, nonlinearity, _forced, machine.current().key,
           trial is None)
    plan = _PLANS.get(key)
    if plan is None:
        forced = dict(_forced)
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        problem = (mode, input_size, hidden_size, proj_size, bool(reset_after),
                   nonlinearity == "relu" and mode == "RNN", bool(bidirectional), batch, steps,
                   np.dtype(dtype), bool(training), bool(frozen),
                   forced.get("threads", threads))
        if training or _forced or not tune.enabled():
            plan = _make_plan(*problem, _forced)
        else:
            plan = _measured_plan(problem, trial)
        _PLANS[key] = plan
    return plan


_PLANS = {}     # made plans by problem (a dict: an lru_cache's bookkeeping costs a small call)

# Tests force decisions here (tests/conftest.py, force_plan): (field, value) pairs of
# LayerPlan (or StreamPlan), and "threads", which every plan then assumes.
_forced = ()


def _make_plan(mode, I, H, proj_size, reset_after, relu, bidirectional, B, steps, dtype,
               training, frozen, threads, forced):
    f = dict(forced)
    G = GATES[mode]
    P = proj_size or H
    D = 2 if bidirectional else 1
    two = threads >= 2
    step_work = B * G * H * P
    concurrent = f.get("directions_concurrent", D == 2 and step_work >= PARALLEL_MIN_WORK and two)
    # Each direction runs on one thread when they run concurrently, unless there are four
    # threads or more: each then has half of them, and may split between those (`own`).
    one_thread = concurrent or threads == 1
    own = min(MAX_PARTS, threads // 2 if concurrent else threads)
    split = own >= 2
    small = f.get("small_gemm", small_gemm_fits(dtype, B, steps, concurrent, threads))
    parts_small = f.get("parts_small_gemm", small_gemm_fits(dtype, B, steps, True, threads))
    chunk_steps = f.get("chunk_steps", max(1, steps) if training
                        else max(1, min(steps, CHUNK_ELEMENTS // (B * G * H))))
    # W_ih is read once when one chunk covers the sequence: packed as the product goes,
    # unless a frozen module keeps it packed whole.
    per_panel = f.get("ih_per_panel", not frozen and chunk_steps >= steps)
    K_all = I + H + 1           # columns of the fused product [x | h | 1]
    lstm_fused = (mode == "LSTM" and not proj_size and small and one_thread
                  and fused_fits(B, 4 * H * K_all))
    gru_ok = mode != "GRU" or reset_after

    rows = (split and not proj_size and parts_small and gru_ok
            and B >= ROW_SPLIT_MIN_BATCH and (mode == "LSTM" or not training)
            and fused_fits(B // 2, G * H * K_all))
    # A projected LSTM or a GRU in the original form has no fused row kernel and no unit
    # split: its rows split between parts running the one-thread kernel (each gathering its
    # rows and packing its weights), where a step's work repays a second thread as it does
    # for two directions.
    # In training GRU and RNN (no fused row kernel for their backward) split so too.
    by_kernel = bool(proj_size) or not gru_ok or (training and mode != "LSTM")
    rows_by_kernel = (split and by_kernel and (parts_small or training)
                      and B >= ROW_SPLIT_MIN_BATCH and B * G * H * P >= PARALLEL_MIN_WORK
                      and (steps * B >= TRAIN_SPLIT_MIN_ROWS if training
                           else steps * B * G * H * P >= SPLIT_MIN_TOTAL_WORK))
    units = (split and not training and not proj_size and gru_ok
             and H >= max(SPLIT_MIN_HIDDEN, 32) and B * G * H * H >= SPLIT_MIN_STEP_WORK
             and steps * B * G * H * H >= SPLIT_MIN_TOTAL_WORK)
    train_units = (training and mode == "LSTM" and split and not proj_size
                   and H >= 32 and B * 4 * H * H >= TRAIN_SPLIT_MIN_STEP_WORK
                   and steps * B >= TRAIN_SPLIT_MIN_ROWS)
    pipelined = (not training and not units and split and not concurrent and small and not proj_size
                 and gru_ok and steps >= PIPELINE_MIN_STEPS
                 and steps // PIPELINE_CHUNKS * B * G * H * I >= PIPELINE_MIN_CHUNK_WORK)

    one = FUSED if lstm_fused else KERNEL     # the strategy of one thread
    if rows or rows_by_kernel:
        strategy = ROWS
    elif units:
        strategy = UNITS
    elif pipelined:
        strategy = PIPELINED
    elif train_units:
        strategy = UNITS
    else:
        strategy = one
    forced_strategy = f.get("strategy")
    if forced_strategy and _possible(forced_strategy, mode, H, B, proj_size, gru_ok, training,
                                     small, parts_small, concurrent and not split):
        strategy = forced_strategy

    pipeline = min(chunk_steps, -(-steps // PIPELINE_CHUNKS)) if strategy == PIPELINED else 0
    # Every thread takes a part, as far as each gets a row tile (ROWS) or 16 units (UNITS).
    parts = 1
    bounds = ()
    if strategy == ROWS:
        parts = f.get("parts", max(2, min(own, B // ROW_TILE)))
    elif strategy == UNITS:
        parts = 2 if "half" in f else f.get("parts", max(2, min(own, H // 16)))
        bounds = (0, f["half"], H) if "half" in f else split_units(H, parts)
    half = bounds[1] if strategy == UNITS else 0
    units_fused = units_packed_ih = False
    gather, in_place = (False, False), (False, False)
    if strategy == UNITS and not training:
        width = K.panel_width(dtype)
        units_fused = f.get("units_fused", mode == "LSTM" and parts_small
                            and fused_fits(B, 2 * H * K_all))
        units_packed_ih = not units_fused and parts_small
        nus = tuple(b1 - b0 for b0, b1 in pairwise(bounds))
        # Packed straight from W_hh's gate blocks when a part fills whole panels, else from
        # its gathered rows (which the BLAS path multiplies directly).
        gather = tuple(bool((not parts_small or nu % width) and not units_fused) for nu in nus)
        big_ih = f.get("units_big_ih",
                       I * G * H * dtype.itemsize >= SPLIT_IN_PLACE_MIN_BYTES)
        in_place = tuple(bool((not units_fused and not units_packed_ih and big_ih)
                              or (units_packed_ih and nu % width == 0)) for nu in nus)
    packed_projection = f.get("packed_projection", small and (
        one_thread or chunk_steps * B * G * H * I <= PACKED_PROJECTION_MAX_THREADED_WORK))
    # The layer's BLAS products (a one-thread strategy at 2+ threads lets BLAS split them)
    # run on one BLAS thread when each is small enough for one core (blas_fits_one_core).
    blas = []
    if strategy in (KERNEL, PIPELINED) and two and not concurrent and not training:
        if not packed_projection:
            blas.append((chunk_steps * B, I, G * H))
        if not small:
            blas.append((B, P, G * H))
        if proj_size:
            blas.append((B, H, P))
    hold = f.get("hold_blas", bool(blas) and all(blas_fits_one_core(*p, dtype) for p in blas))
    return LayerPlan(
        mode=mode, hidden_size=H, proj_size=proj_size, reset_after=reset_after, relu=relu,
        dtype=dtype, training=training, frozen=frozen, threads=threads,
        strategy=strategy, alone=one, directions_concurrent=concurrent, small_gemm=small,
        packed_projection=packed_projection, ih_per_panel=per_panel, chunk_steps=chunk_steps,
        pipeline_steps=pipeline, parts_small_gemm=parts_small, half=half,
        units_fused=units_fused, units_packed_ih=units_packed_ih, units_gather_hh=gather,
        units_in_place=in_place, parts=parts, unit_bounds=bounds, hold_blas=hold,
        rows_by_kernel=strategy == ROWS and by_kernel)


def _options_plan(mode, H, proj_size, reset_after, bidirectional, B, steps, dtype, training,
                  frozen, threads, cell):
    """The plan of a layer with cell options: the options kernel, its products on BLAS, the
    two directions concurrent by the rule of the other strategies (PARALLEL_MIN_WORK)."""
    f = dict(_forced)
    P = proj_size or H
    G = GATES[mode]
    concurrent = f.get("directions_concurrent", bool(bidirectional) and threads >= 2
                       and B * G * H * P >= PARALLEL_MIN_WORK)
    chunk_steps = max(1, steps) if training else max(1, min(steps, CHUNK_ELEMENTS // (B * G * H)))
    return LayerPlan(
        mode=mode, hidden_size=H, proj_size=proj_size, reset_after=bool(reset_after),
        relu=False, dtype=dtype, training=bool(training), frozen=bool(frozen), threads=threads,
        strategy=OPTIONS, alone=OPTIONS, directions_concurrent=concurrent, small_gemm=False,
        packed_projection=False, ih_per_panel=False, chunk_steps=chunk_steps,
        pipeline_steps=0, parts_small_gemm=False, half=0, units_fused=False,
        units_packed_ih=False, cell=cell)


def _choices(problem):
    """The plans that can run an inference layer, the rules' own first: each strategy
    _possible here, on the packed kernel or BLAS, with two directions concurrent or not."""
    (mode, I, H, proj_size, reset_after, relu, bidirectional, B, steps, dtype, training,
     frozen, threads) = problem
    plans = [_make_plan(*problem, ())]
    concurrent = (False, True) if bidirectional and threads >= 2 else (False,)
    smalls = (True, False) if K.has_small_gemm() else (False,)
    strategies = (KERNEL, FUSED, ROWS, UNITS, PIPELINED) if threads >= 2 else (KERNEL, FUSED)
    for both in concurrent:
        for strategy in strategies:
            # Only the one-thread strategies run their products on either; the others'
            # parts take the packed kernel where the CPU has it.
            for small in smalls if strategy == KERNEL else smalls[:1]:
                forced = (("directions_concurrent", both), ("small_gemm", small),
                          ("strategy", strategy))
                plan = _make_plan(*problem, forced)
                if plan.strategy == strategy and plan not in plans:
                    plans.append(plan)
    return plans


def _choice(plan):
    return {"strategy": plan.strategy, "small_gemm": plan.small_gemm,
            "directions_concurrent": plan.directions_concurrent}


def _measured_plan(problem, trial):
    """The fastest of _choices(problem) on this machine (rnnc/_engine/tune.py): remembered,
    or measured now on a few steps of random data (the rules' choice without trial)."""
    (mode, I, H, proj_size, reset_after, relu, bidirectional, B, steps, dtype, training,
     frozen, threads) = problem
    plans = _choices(problem)
    D = 2 if bidirectional else 1
    step_flops = 2.0 * D * B * GATES[mode] * H * (I + (proj_size or H))
    if len(plans) == 1 or step_flops > tune.MAX_TRIAL_STEP_FLOPS:
        return plans[0]
    from rnnc import __version__
    m = machine.current()
    path = tune.cache_path(m.slug, __version__)
    text = "|".join(str(v) for v in (*problem, m.isa, m.l1d, m.l2, m.l3))
    choices = [_choice(p) for p in plans]
    with tune.lock:
        choice = tune.remembered(path, text)
        if choice not in choices:
            if trial is None:
                return plans[0]
            # Each candidate runs a few steps and twice as many: the difference is the cost
            # of a step, the rest the cost of a call (packing weights, starting threads),
            # which count at the problem's own number of steps.
            lengths = tune.trial_lengths(steps, step_flops)
            rng = np.random.default_rng(0)
            runs = [[trial(p, mode, I, H, proj_size, reset_after, relu, bidirectional, B, T,
                           dtype, rng) for T in lengths] for p in plans]
            choice = choices[tune.fastest(runs, lengths, steps)]
            tune.remember(path, text, choice, {"cpu": m.model, "rnnc": __version__})
    return plans[choices.index(choice)]


def _possible(strategy, mode, H, B, proj_size, gru_ok, training, small, parts_small,
              concurrent):
    """Whether the kernels can run a layer with this strategy (a test may force one where it
    can: tests/conftest.py, force_plan). The strategies that use the pool cannot run while the
    directions run concurrently on one thread each (fewer than four threads): the pool's
    worker runs the second direction."""
    if strategy == ROWS and (proj_size or not gru_ok or (training and mode != "LSTM")):
        # parts on the layer kernel
        return not concurrent and B > ROW_TILE and (parts_small or training)
    if strategy in (UNITS, ROWS, PIPELINED) and (proj_size or not gru_ok or concurrent):
        return False
    if strategy == UNITS:
        return H >= 32 and (mode == "LSTM" or not training)
    if strategy == ROWS:
        return B > ROW_TILE and parts_small and (mode == "LSTM" or not training)
    if strategy == FUSED:
        return mode == "LSTM" and not proj_size and small
    if strategy == PIPELINED:
        return not training and small
    return True


def make_stream_plan(mode, input_size, hidden_size, proj_size, reset_after, batch, dtype,
                     threads=None):
    """The plan of a stream: the packed kernel for float32 where the CPU has it (the weights
    are packed once, so no minimum of steps), and its units split between two threads when a
    step reads enough weights for two cores' caches and bandwidth to matter."""
    f = dict(_forced)
    if threads is None:
        threads = f.get("threads") or cached_num_threads()
    H = hidden_size
    G = GATES[mode] * H
    small = f.get("small_gemm", np.dtype(dtype) == np.float32 and batch >= 1
                  and K.has_small_gemm())
    split = f.get("split_units", threads >= 2 and batch >= 1 and H >= 32 and not proj_size
                  and (mode != "GRU" or reset_after)
                  and batch * G * (input_size + H) >= STREAM_SPLIT_MIN_WORK)
    return StreamPlan(small_gemm=small, split_units=split, half=split_half(H) if split else 0)


# Shapes whose plans `python -m rnnc info` shows: (mode, batch, hidden, steps, bidirectional).
_SHOWN = (("LSTM", 1, 256, 100, False), ("GRU", 16, 128, 100, False),
          ("LSTM", 64, 512, 50, False), ("LSTM", 16, 256, 100, True))


def describe_kernels(threads, trial):
    """Lines for `python -m rnnc info`: which products run on which kernel, and the plans of a
    few layers (inference, float32) at `threads` threads (measured with trial)."""
    isa = machine.current().isa
    if K.has_small_gemm():
        blocks = ", ".join(f"{K.small_gemm_blocking(np.float32, k) * K.panel_width(np.float32)}"
                           f" columns at K={k}" for k in (256, 1024))
        lines = [f"kernels: packed small-batch products on rnnc's {isa} kernel "
                 "(rnnc/_kernels/_small_gemm.h), BLAS for the rest",
                 f"  blocked for the L2: float32 blocks of {blocks}"]
    else:
        lines = [f"kernels: every product on BLAS (ISA {isa}: no packed kernel)"]
    if tune.enabled():
        from rnnc import __version__
        path = tune.cache_path(machine.current().slug, __version__)
        where = f"remembered in {path}" if path else "kept in memory (RNNC_TUNE_CACHE=0)"
        lines.append(f"plans: measured at first use (RNNC_TUNE=1) and {where}")
    else:
        lines.append("plans: the rules of rnnc/_engine/plan.py (RNNC_TUNE=1 measures them "
                     "at first use)")
    for mode, B, H, T, bi in _SHOWN:
        p = make_plan(mode, H, H, 0, True, bi, B, T, np.float32, False, False, threads=threads,
                      trial=trial)
        how = p.strategy + (", directions concurrent" if p.directions_concurrent else "")
        packed = p.parts_small_gemm if p.strategy in (UNITS, ROWS) else p.small_gemm
        how += ", packed kernel" if packed else ", BLAS"
        lines.append(f"  {'bidirectional ' if bi else ''}{mode} B{B} H{H} T{T}: {how}")
    return lines
