"""The machine as rnnc reads it (rnnc/_engine/machine.py): the instruction set and its cap
RNNC_MAX_CPU_ISA, cache sizes, and every kernel module configured alike."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnc
from rnnc._engine import machine, plan
from rnnc._engine.kernels import K


def run_info(**env):
    environ = {k: v for k, v in os.environ.items() if k != machine.ENV_ISA}
    environ.update(env)
    return subprocess.run([sys.executable, "-P", "-m", "rnnc", "info"], capture_output=True,
                          text=True, env=environ, timeout=120)


@pytest.mark.parametrize("value,isa", [("", ""), ("AVX2", "avx2"), (" avx512 ", "avx512"),
                                       ("baseline", "baseline"), ("avx512_core", "avx512")])
def test_cap_names(value, isa):
    assert machine.parse_cap(value) == isa


def test_unknown_cap_is_refused_by_name():
    with pytest.raises(ValueError, match="RNNC_MAX_CPU_ISA must be one of .* got 'sse3'"):
        machine.parse_cap("sse3")


def test_cap_lowers_but_never_raises_the_isa():
    cpu = machine.read({}).supported
    assert machine.read({"RNNC_MAX_CPU_ISA": "baseline"}).isa == "baseline"
    assert machine.read({"RNNC_MAX_CPU_ISA": "avx512"}).isa == cpu
    capped = machine.read({"RNNC_MAX_CPU_ISA": "avx2"}).isa
    assert capped == ("avx2" if cpu != "baseline" else "baseline")


@pytest.mark.parametrize("model,slug", [
    ("AMD EPYC", "amd-epyc"),
    ("Intel(R) Xeon(R) Platinum 8480+", "intel-xeon-platinum-8480"),
    ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13-64-core"),
    ("Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz", "intel-core-i7-8550u"),
    ("", "unknown-cpu")])
def test_model_slug(model, slug):
    assert machine.slug(model) == slug


def test_caches_from_sysfs_tree(tmp_path):
    entries = [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
               (3, "Unified", "105 MiB")]
    for i, (level, kind, size) in enumerate(entries):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    sizes, source = machine.read_caches(str(tmp_path))
    assert source == "sysfs"
    assert sizes == {"l1d": 48 << 10, "l2": 2 << 20, "l3": 105 << 20}


def test_missing_sysfs_falls_back(tmp_path):
    sizes, source = machine.read_caches(str(tmp_path / "absent"))
    assert source in ("sysconf", "default")
    assert all(v > 0 for v in sizes.values())


def test_every_kernel_module_follows_the_machine():
    m = machine.current()
    assert m.l1d > 0 and m.l2 > 0 and m.l3 > 0
    levels = [configure(m.level, m.l1d, m.l2, m.l3) for configure in machine._configures]
    assert len(levels) >= 7 and set(levels) == {m.level}


def test_plans_follow_the_isa():
    """A plan made under one instruction set is not reused under another."""
    args = ("LSTM", 32, 64, 0, True, False, 4, 50, np.float32, False, False)
    with machine.use(isa="baseline"):
        assert not K.has_small_gemm()
        assert not plan.make_plan(*args, threads=1).small_gemm
    expected = K.has_small_gemm()
    assert plan.make_plan(*args, threads=1).small_gemm == expected


def test_results_at_every_isa_match_the_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 8))
    for isa in machine.ISAS[:machine.ISAS.index(machine.current().supported) + 1]:
        with machine.use(isa=isa):
            for cls in (rnnc.RNN, rnnc.GRU, rnnc.LSTM):
                for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-12)):
                    m = cls(8, 16, dtype=dtype, seed=1)
                    ref = getattr(rnnc.reference, cls.__name__)(8, 16, dtype=dtype, seed=1)
                    ref.load_state_dict(m.state_dict())
                    got, want = m(x.astype(dtype))[0], ref(x.astype(dtype))[0]
                    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=isa)


def test_use_refuses_an_isa_the_cpu_lacks():
    if machine.current().supported == "avx512":
        pytest.skip("this CPU runs every instruction set rnnc has")
    with pytest.raises(ValueError, match="runs at most"):
        with machine.use(isa="avx512"):
            pass


def test_info_reports_cpu_isa_and_caches():
    done = run_info()
    assert done.returncode == 0, done.stderr
    m = machine.current()
    assert f"CPU: {m.model}" in done.stdout
    assert f"ISA: {m.supported} in use" in done.stdout
    assert "caches: L1d" in done.stdout and "kernels:" in done.stdout


def test_info_under_a_cap():
    done = run_info(RNNC_MAX_CPU_ISA="baseline")
    assert done.returncode == 0, done.stderr
    assert "ISA: baseline in use" in done.stdout
    assert "capped by RNNC_MAX_CPU_ISA=baseline" in done.stdout
    assert "every product on BLAS" in done.stdout


def test_bad_cap_in_the_environment_is_a_clear_error():
    done = run_info(RNNC_MAX_CPU_ISA="avx1024")
    assert done.returncode != 0
    assert "RNNC_MAX_CPU_ISA must be one of" in done.stderr


def test_products_that_fit_one_core_follow_its_l2():
    """(800, 32) @ (32, 64) float32 needs 112 KB: one core's work with 1 MiB of L2, not
    with 64 KiB; a product twice the L2 never is."""
    with machine.use(l2=1 << 20):
        assert plan.blas_fits_one_core(800, 32, 64, np.float32)
        assert not plan.blas_fits_one_core(800, 32, 64 * 64, np.float64)
    with machine.use(l2=64 << 10):
        assert not plan.blas_fits_one_core(800, 32, 64, np.float32)


def test_small_linear_leaves_the_thread_setting():
    before = rnnc.get_num_threads()
    layer = rnnc.Linear(32, 64, activation="softmax", dtype=np.float32, seed=0).train()
    x = np.ones((50, 16, 32), np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert rnnc.get_num_threads() == before


def test_small_blas_layers_hold_blas_at_one_thread_by_l2():
    """A GRU in the original formulation runs its products on BLAS; at 2 threads they run on
    one BLAS thread when they fit one core's L2."""
    args = ("GRU", 32, 64, 0, False, False, 16, 50, np.float32, False, False)
    with machine.use(l2=1 << 20):
        assert plan.make_plan(*args, threads=2).hold_blas
        assert not plan.make_plan(*args, threads=1).hold_blas
    with machine.use(l2=16 << 10):
        assert not plan.make_plan(*args, threads=2).hold_blas
