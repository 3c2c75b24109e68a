"""Choices measured on the machine that runs rnnc.

Opt-in (``RNNC_TUNE=1``): by default plans follow the rules of rnnc/_engine/plan.py. On the one
machine this was measured on (a 2-vCPU AMD EPYC virtual machine), trials still disagreed with
the rules on batch-1 and bidirectional cases, some rightly, some wrongly, and a first call of a
new problem (its number of steps included) measures for seconds
(benchmarks/results/amd-epyc/tuning.md): not yet the default.

Where strategies compete for an inference layer (own packed kernel or BLAS, split by rows or
hidden units or not at all, projection ahead, two directions concurrent or not), the rules of
rnnc/_engine/plan.py name a first choice and the others that can run the layer; at the first
call of a problem (cell, shapes, dtype, threads, instruction set, caches) each candidate runs
the layer on a few steps of random data of the problem's shapes, in turns, and the fastest is
kept: the rules' choice unless another is faster by more than ``MARGIN``. The rules are the
prior (on the CPU they were measured on, trials of a few steps on a 2-vCPU virtual machine
overturned them wrongly at a 3% margin: benchmarks/results/amd-epyc/issue15.md); measuring
catches the choices they get clearly wrong on another machine. Problems whose
single step is larger than ``MAX_TRIAL_STEP_FLOPS`` keep the rules' choice: there a trial
would cost more than it could save, and the split is clear from the work alone.

Reproducibility: a plan is made once per problem and process and kept, so every call gives the
same bits. Candidates may round differently (BLAS sums in another order than rnnc's kernel),
so the choice is remembered on disk, in ``$XDG_CACHE_HOME/rnnc`` (else ``~/.cache/rnnc``), one
file per CPU model and rnnc version: later runs on the machine find it and make the same plans
without measuring. ``RNNC_TUNE=0`` (the default) leaves measuring off: the rules alone,
documented in plan.py, the same plans everywhere the instruction set and caches are the same.
``RNNC_TUNE_CACHE=0`` keeps choices in memory only; ``RNNC_TUNE_CACHE=<folder>`` moves the file.
"""
import json
import os
import threading
import time

ENV_TUNE = "RNNC_TUNE"
ENV_CACHE = "RNNC_TUNE_CACHE"
MARGIN = 0.10               # another candidate must beat the rules' choice by this fraction
ROUNDS = 3                  # turns of every candidate (each an untimed and a timed run)
TRIAL_FLOPS = 4e8           # a trial runs about this many flops (at least MIN_TRIAL_STEPS)
MIN_TRIAL_STEPS = 4
MAX_TRIAL_STEP_FLOPS = 2e9  # larger steps keep the rules' choice
SETTLE = 0.1                # seconds of rest before each turn: OpenBLAS's threads spin this long

lock = threading.RLock()    # one measurement at a time: concurrent first calls wait for it
_store = {"path": None, "choices": None}


def enabled(environ=None):
    value = (os.environ if environ is None else environ).get(ENV_TUNE, "0").strip().lower()
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false", ""):
        return False
    raise ValueError(f"{ENV_TUNE} must be 0 (rules only) or 1 (measure), got {value!r}")


def cache_path(model_slug, version, environ=None):
    """The file of remembered choices, or None when they stay in memory."""
    environ = os.environ if environ is None else environ
    folder = environ.get(ENV_CACHE, "").strip()
    if folder.lower() in ("0", "off", "no", "false"):
        return None
    if not folder:
        base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "rnnc")
    return os.path.join(folder, f"tune-{model_slug}-{version}.json")


def remembered(path, key):
    """The choice stored for `key` (a string) in the file at `path`, or None."""
    if path is None:
        return None
    if _store["path"] != path:
        choices = {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("choices"), dict):
                choices = data["choices"]
        except (OSError, ValueError):
            pass
        _store.update(path=path, choices=choices)
    return _store["choices"].get(key)


def remember(path, key, choice, about):
    """Store `choice` (a JSON-able dict) for `key`; a folder that cannot be written leaves the
    choice in memory only (the plan cache keeps it for this process)."""
    if path is None:
        return
    remembered(path, key)
    _store["choices"][key] = choice
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"about": about, "choices": _store["choices"]}, f, indent=1,
                      sort_keys=True)
        os.replace(tmp, path)      # atomic: a concurrent reader sees the old or the new file
    except OSError:
        pass


def fastest(trials, lengths=None, steps=None, rounds=ROUNDS, clock=time.perf_counter):
    """Index of the fastest candidate, the first one unless another is faster by more than
    MARGIN in two tournaments running. trials[i]: candidate i's callables, one per trial length
    (`lengths` steps; a bare callable: one length). The candidates take `rounds` turns in
    rotation, each an untimed run and one timed run of each length, and the best turn counts
    (the least disturbed by the rest of the machine). With two lengths, a candidate's time at
    `steps` is extrapolated from them: t1 + (t2 - t1) * (steps - n1) / (n2 - n1). A winner
    other than the first then meets the first alone, and keeps its place only if it wins that
    too: one burst of the machine's noise cannot overturn the rules."""
    trials = [t if isinstance(t, (list, tuple)) else [t] for t in trials]
    if len(trials) == 1:
        return 0
    pick = _tournament(trials, lengths, steps, rounds, clock)
    if pick and _tournament([trials[0], trials[pick]], lengths, steps, rounds, clock) == 0:
        return 0
    return pick


def _tournament(trials, lengths, steps, rounds, clock):
    best = [[float("inf")] * len(t) for t in trials]
    for _ in range(rounds):
        for i, runs in enumerate(trials):
            # The previous candidate's BLAS threads stop spinning first (else they take the
            # cores from this one's threads: benchmarks/results/amd-epyc/tuning.md).
            if SETTLE:
                time.sleep(SETTLE)
            # An untimed run first: it finds rnnc's workers as a call right after another
            # does (awake), not asleep after another candidate's turn on one thread.
            runs[0]()
            for j, run in enumerate(runs):
                t0 = clock()
                run()
                best[i][j] = min(best[i][j], clock() - t0)

    def estimate(b):
        if len(b) == 2 and lengths[1] > lengths[0]:
            per_step = max(0.0, b[1] - b[0]) / (lengths[1] - lengths[0])
            return b[0] + per_step * (steps - lengths[0])
        return b[0]

    times = [estimate(b) for b in best]
    pick = min(range(len(trials)), key=times.__getitem__)
    return pick if times[pick] < times[0] * (1 - MARGIN) else 0


def trial_lengths(steps, step_flops):
    """Steps of a candidate's two trials: enough for TRIAL_FLOPS (at least MIN_TRIAL_STEPS),
    and twice as many; one trial of all the steps when that is no more."""
    n = max(1, min(steps, max(MIN_TRIAL_STEPS, int(TRIAL_FLOPS // max(step_flops, 1.0)))))
    if 2 * n >= steps:      # the whole problem fits: time it as it is (no extrapolation)
        return (steps,)
    return (n, 2 * n)
