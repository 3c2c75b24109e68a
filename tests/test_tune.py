"""Plans measured on the machine (rnnc/_engine/tune.py, plan._measured_plan): the fastest
candidate is kept, remembered per CPU model and version, and every call gives the same bits."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import rnnc
from rnnc._engine import plan, stack, tune

# A problem with several candidates at 2 threads: (mode, input, hidden, proj, reset_after,
# bidirectional, batch, steps, dtype, training, frozen).
PROBLEM = ("GRU", 24, 64, 0, True, False, 8, 20, np.float32, False, False)
# The same as plan._make_plan takes it: relu after reset_after, the dtype a np.dtype, threads.
INNER = (*PROBLEM[:5], False, *PROBLEM[5:8], np.dtype(PROBLEM[8]), *PROBLEM[9:], 2)


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measured plans, remembered in a folder of the test's own; the plan cache emptied
    before and after."""
    monkeypatch.setenv("RNNC_TUNE", "1")
    monkeypatch.setenv("RNNC_TUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(tune, "_store", {"path": None, "choices": None})
    plan._PLANS.clear()
    yield tmp_path
    plan._PLANS.clear()


@pytest.mark.parametrize("value,on", [("1", True), ("0", False), ("off", False), ("", False)])
def test_tune_switch(value, on):
    assert tune.enabled({"RNNC_TUNE": value}) is on


def test_tune_switch_refuses_other_values():
    with pytest.raises(ValueError, match="RNNC_TUNE must be 0 .* got 'sometimes'"):
        tune.enabled({"RNNC_TUNE": "sometimes"})


def test_cache_path_names_cpu_and_version(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert tune.cache_path("amd-epyc", "1.2", env) == str(tmp_path / "rnnc" /
                                                           "tune-amd-epyc-1.2.json")
    assert tune.cache_path("x", "1", {"RNNC_TUNE_CACHE": "0"}) is None
    assert tune.cache_path("x", "1", {"RNNC_TUNE_CACHE": "/d"}) == "/d/tune-x-1.json"


class FakeClock:
    """Each trial advances the clock by its own cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def trial(self, cost):
        def run():
            self.now += cost
        return run


@pytest.fixture(autouse=True)
def no_rest(monkeypatch):
    """The fake clocks below need no rest between candidates."""
    monkeypatch.setattr(tune, "SETTLE", 0.0)


def test_fastest_candidate_wins():
    clock = FakeClock()
    trials = [clock.trial(c) for c in (3.0, 1.0, 2.0)]
    assert tune.fastest(trials, clock=clock) == 1


def test_rules_choice_kept_unless_clearly_beaten():
    clock = FakeClock()
    trials = [clock.trial(1.0), clock.trial(1.0 - tune.MARGIN / 2)]
    assert tune.fastest(trials, clock=clock) == 0


def test_one_noisy_tournament_does_not_overturn_the_rules():
    """A candidate that looked faster once (the rules' runs slowed by a burst of other work)
    must win a second tournament against the rules' choice alone."""
    clock = FakeClock()
    calls = {"n": 0}

    def rules():       # slowed 3x during the first tournament's turns only
        calls["n"] += 1
        clock.now += 3.0 if calls["n"] <= 2 * tune.ROUNDS else 1.0
    assert tune.fastest([rules, clock.trial(1.5)], clock=clock) == 0
    clock2 = FakeClock()
    assert tune.fastest([clock2.trial(1.0), clock2.trial(0.5)], clock=clock2) == 1


def test_rules_alone_without_measuring(monkeypatch):
    monkeypatch.setenv("RNNC_TUNE", "0")
    monkeypatch.setattr(tune, "fastest", lambda *a, **k: pytest.fail("measured"))
    plan._PLANS.clear()
    made = plan.make_plan(*PROBLEM, threads=2, trial=stack.trial)
    assert made == plan._make_plan(*INNER, ())
    plan._PLANS.clear()


def test_candidates_start_with_the_rules_choice():
    plans = plan._choices(INNER)
    assert plans[0] == plan._make_plan(*INNER, ())
    assert len(plans) == len(set(plans)) >= 2
    assert {p.strategy for p in plans} <= {"kernel", "fused", "rows", "units", "pipelined"}


def test_measured_choice_is_remembered_and_reused(measuring, monkeypatch):
    made = plan.make_plan(*PROBLEM, threads=2, trial=stack.trial)
    assert made in plan._choices(INNER)
    [path] = measuring.glob("tune-*.json")
    data = json.loads(path.read_text())
    assert data["about"]["rnnc"] == rnnc.__version__
    [(key, choice)] = data["choices"].items()
    assert choice == plan._choice(made)
    # Another process (here: a fresh plan cache and file store) makes the same plan without
    # measuring.
    plan._PLANS.clear()
    monkeypatch.setattr(tune, "_store", {"path": None, "choices": None})
    monkeypatch.setattr(tune, "fastest", lambda *a, **k: pytest.fail("measured again"))
    assert plan.make_plan(*PROBLEM, threads=2, trial=stack.trial) == made


def test_a_choice_that_is_no_candidate_is_measured_again(measuring, monkeypatch):
    plan.make_plan(*PROBLEM, threads=2, trial=stack.trial)
    [path] = measuring.glob("tune-*.json")
    data = json.loads(path.read_text())
    key = next(iter(data["choices"]))
    data["choices"][key] = {"strategy": "teleport"}
    path.write_text(json.dumps(data))
    plan._PLANS.clear()
    monkeypatch.setattr(tune, "_store", {"path": None, "choices": None})
    calls = []
    monkeypatch.setattr(tune, "fastest", lambda trials, *a, **k: calls.append(len(trials)) or 0)
    made = plan.make_plan(*PROBLEM, threads=2, trial=stack.trial)
    assert calls and made == plan._choices(INNER)[0]


def test_unreadable_or_unwritable_cache_keeps_choices_in_memory(measuring, monkeypatch):
    (measuring / "tune-bad.json").write_text("{not json")
    monkeypatch.setenv("RNNC_TUNE_CACHE", str(measuring / "tune-bad.json" / "below"))
    made = plan.make_plan(*PROBLEM, threads=2, trial=stack.trial)
    assert plan.make_plan(*PROBLEM, threads=2, trial=stack.trial) is made


def test_measured_plans_compute_the_reference(measuring):
    rng = np.random.default_rng(3)
    for cls, bi in ((rnnc.GRU, False), (rnnc.LSTM, True), (rnnc.RNN, False)):
        m = cls(24, 64, bidirectional=bi, dtype=np.float32, seed=2)
        ref = getattr(rnnc.reference, cls.__name__)(24, 64, bidirectional=bi,
                                                    dtype=np.float32, seed=2)
        ref.load_state_dict(m.state_dict())
        x = rng.standard_normal((20, 8, 24)).astype(np.float32)
        first = m(x)
        np.testing.assert_allclose(first[0], ref(x)[0], rtol=1e-5, atol=1e-5)
        for _ in range(3):
            np.testing.assert_array_equal(m(x)[0], first[0])


def test_concurrent_first_calls_give_the_same_bits(measuring):
    m = rnnc.LSTM(24, 64, dtype=np.float32, seed=4)
    x = np.random.default_rng(4).standard_normal((20, 8, 24)).astype(np.float32)
    results = [None] * 4

    def call(i):
        results[i] = m(x)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_a_second_run_on_the_machine_gives_the_same_bits(tmp_path):
    code = ("import numpy as np, rnnc, sys; rnnc.set_num_threads(2)\n"
            "m = rnnc.GRU(24, 64, dtype=np.float32, seed=5)\n"
            "x = np.random.default_rng(5).standard_normal((20, 8, 24)).astype(np.float32)\n"
            "sys.stdout.write(m(x)[0].tobytes().hex())\n")
    env = dict(os.environ, RNNC_TUNE="1", RNNC_TUNE_CACHE=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                           env=env, timeout=120) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert len(list(tmp_path.glob("tune-*.json"))) == 1


def test_call_costs_count_at_the_problems_length():
    """A candidate that packs its weights per call loses a short trial but wins at the
    problem's length: its time is extrapolated from two trial lengths."""
    clock = FakeClock()
    lengths, steps = (4, 8), 50
    packs_once = [clock.trial(10 + 1 * n) for n in lengths]     # 10 per call, 1 per step
    plain = [clock.trial(2 * n) for n in lengths]                # 2 per step
    assert tune.fastest([plain, packs_once], lengths, steps, clock=clock) == 1
    assert tune.fastest([plain, packs_once], lengths, 5, clock=clock) == 0


def test_rules_by_default():
    assert not tune.enabled({})


def test_trial_lengths():
    assert tune.trial_lengths(100, 1e9) == (tune.MIN_TRIAL_STEPS, 2 * tune.MIN_TRIAL_STEPS)
    assert tune.trial_lengths(3, 1e3) == (3,)
    assert tune.trial_lengths(100, tune.TRIAL_FLOPS / 60) == (100,)
    n = int(tune.TRIAL_FLOPS // 1e5)
    assert tune.trial_lengths(10 ** 6, 1e5) == (n, 2 * n)
