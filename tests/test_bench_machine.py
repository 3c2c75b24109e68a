"""The benchmarks say where they ran: the CPU's folder, the header of every result file, the
command, the instruction-set caps, the geometric means and the busy-machine report. Nothing is
timed here (the suite's own run is tested in test_bench_cli.py)."""
import dataclasses
import math
import pathlib
import subprocess
import sys

import pytest

from rnnc._engine import machine
from rnnc.bench import busy, report, suite

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPYC = machine.Machine(model="AMD EPYC", supported="avx512", isa="avx2", cap="avx2",
                       l1d=32 << 10, l2=1 << 20, l3=32 << 20, source="sysfs", cpus=2)


@pytest.mark.parametrize("model, slug", [
    ("AMD EPYC", "amd-epyc"),
    ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13-64-core"),
    ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "intel-xeon-platinum-8375c"),
    ("", "unknown-cpu"),
])
def test_a_cpu_model_names_its_results_folder(model, slug):
    assert machine.slug(model) == slug
    assert report.results_dir(slug, root="/r") == pathlib.Path("/r") / slug


def test_in_a_checkout_results_go_to_the_cpus_folder_of_benchmarks_results():
    if not (ROOT / "benchmarks" / "results").is_dir() or \
            report.RESULTS_ROOT != ROOT / "benchmarks" / "results":
        pytest.skip("rnnc is not imported from this checkout")
    assert report.results_dir("amd-epyc") == ROOT / "benchmarks" / "results" / "amd-epyc"
    # The results measured before the per-CPU folders all came from that one CPU.
    assert not list((ROOT / "benchmarks" / "results").glob("*.md"))


def _doc(cpu=EPYC, **extra):
    doc = {"created": "2026-12-07T10:00:00", "command": "python -P benchmarks/suite.py --quick",
           "note": "", "machine": {"platform": "Linux", "python": "3.11.7", "logical_cpus": 2,
                                   "cpu": suite.cpu_info(cpu)},
           "libraries": {"versions": {"rnnc": "0.1.0", "numpy": "2.4.6"},
                         "blas": [{"user_api": "blas", "internal_api": "openblas",
                                   "version": "0.3.30", "architecture": "Haswell",
                                   "filepath": "/x/libscipy_openblas.so"}]},
           "threads_applied": {"1": {"rnnc": 1}}, "load_average_start": [0.1, 0.2, 0.3],
           "load_average_end": [0.4, 0.5, 0.6], "settings": {}, "rows": []}
    doc.update(extra)
    return doc


def test_the_header_names_the_cpu_isa_caches_threads_versions_date_and_command():
    text = "\n".join(report.header_lines(_doc()))
    assert text.startswith("# rnnc benchmarks: AMD EPYC\n")
    for part in ('lscpu model name "AMD EPYC"', "`benchmarks/results/amd-epyc/`",
                 "avx2 (capped by RNNC_MAX_CPU_ISA=avx2; the CPU runs avx512)",
                 "L1d 32 KiB and L2 1 MiB per core, L3 32 MiB (from sysfs)",
                 "Threads: 1 asked, applied rnnc 1", "rnnc 0.1.0, numpy 2.4.6",
                 "openblas 0.3.30 [Haswell] libscipy_openblas.so", "Date: 2026-12-07T10:00:00",
                 "Command: `python -P benchmarks/suite.py --quick`"):
        assert part in text
    uncapped = dataclasses.replace(EPYC, isa="avx512", cap="")
    assert "avx512 (the best this CPU runs; no RNNC_MAX_CPU_ISA cap)" in \
        report.machine_line(suite.cpu_info(uncapped))


def test_the_command_is_the_one_typed_with_the_variables_that_change_a_measurement():
    argv = ["/usr/bin/python3", "-P", "-m", "rnnc.bench.suite", "--cases", "LSTM B1"]
    env = {"RNNC_MAX_CPU_ISA": "avx2", "HOME": "/root", "OMP_NUM_THREADS": "1"}
    assert suite.command_line(argv, env) == ("RNNC_MAX_CPU_ISA=avx2 OMP_NUM_THREADS=1 python3 "
                                             "-P -m rnnc.bench.suite --cases 'LSTM B1'")


def test_an_isa_cap_is_checked_in_every_library_and_leaves_onnxruntime_out():
    caps = suite.ISA_CAPS["avx2"]
    assert caps["RNNC_MAX_CPU_ISA"] == "avx2" and caps["ATEN_CPU_CAPABILITY"] == "avx2"
    assert caps["ONEDNN_MAX_CPU_ISA"] == "AVX2" and caps["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert suite.under_cap("avx2", {**caps, "PATH": "/bin"})
    assert not suite.under_cap("avx2", {k: v for k, v in caps.items() if k != "MKL_ENABLE_"
                                        "INSTRUCTIONS"})
    good = {"rnnc": "avx2", "torch": "AVX2", "blas": ["Haswell"]}
    assert suite.cap_problems("avx2", good) == []
    bad = {"rnnc": "avx512", "torch": "AVX512", "blas": ["SkylakeX", "Haswell"]}
    assert len(suite.cap_problems("avx2", bad)) == 3
    assert "onnxruntime" in suite.UNCAPPED


def test_an_isa_run_without_the_caps_in_its_environment_starts_a_child_with_them(
        monkeypatch):
    seen = {}

    def fake_run(cmd, env, check):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 0)

    for k in suite.ISA_CAPS["avx2"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    assert suite.main(["--isa", "avx2", "--quick", "--cases", "LSTM B1"]) == 0
    assert suite.under_cap("avx2", seen["env"])
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-P", "-m", "rnnc.bench.suite"]
    assert cmd[4:9] == ["--isa", "avx2", "--quick", "--cases", "LSTM B1"]
    assert cmd[9] == "--command"


def _row(ratio, frozen=None, dtype="float32", threads=1):
    row = {"dtype": dtype, "threads": threads, "rnnc_over_fastest": ratio,
           "ratio": {"torch": ratio}}
    if frozen is not None:
        row["frozen_over_fastest"] = frozen
    return row


def test_geometric_means_per_dtype_and_thread_count():
    doc = {"rows": [_row(0.5, 0.25), _row(2.0, 1.0), _row(0.8, threads=2)]}
    means = report.geometric_means(doc)
    assert means[("float32", 1)]["rnnc"] == pytest.approx(1.0)
    assert means[("float32", 1)]["frozen"] == pytest.approx(0.5)
    assert means[("float32", 1)]["n"] == 2
    assert means[("float32", 2)]["rnnc"] == pytest.approx(0.8)
    assert math.isnan(means[("float32", 2)]["frozen"])
    assert report._per_peer_means(doc, ["torch"])[3:] == [
        "- float32, 1 thread(s): rnnc / torch 1.00 (2 cases)",
        "- float32, 2 thread(s): rnnc / torch 0.80 (1 cases)"]


def test_the_busy_report_gives_loaded_over_idle_per_case():
    samples = {("Linear", 2): {"idle": [1e-3] * 3, "loaded": [1e-3, 9e-3, 1e-3]},
               ("Linear", 1): {"idle": [2e-3] * 3, "loaded": [3e-3] * 3}}
    rows = busy.summarize(samples)
    two, one = rows
    assert two["ratio_median"] == pytest.approx(1.0)
    assert two["ratio_mean"] == pytest.approx(11 / 3)
    assert not two["within_target"] and one["within_target"]
    assert one["loaded_over_best_idle"] == pytest.approx(3.0)
    settings = {"threads": [2, 1], "default_threads": 2, "load": 1, "rounds": 1,
                "min_time": 0.1, "min_calls": 3, "max_time": 1.0, "dtype": "float32"}
    text = busy.markdown(_doc(rows=rows, settings=settings))
    assert text.startswith("# rnnc on a busy machine: AMD EPYC\n")
    assert "| Linear | 2 | 1.00 | 1.00 | 1.00 | 3.67 | 7.40 | 1.00 | 3.67 | **no** | 1.00 |" \
        in text
    assert "- 1 thread(s): 1 of 1 cases within 2x" in text


def test_the_busy_load_is_started_and_always_stopped():
    load = busy.Load(1)
    with pytest.raises(RuntimeError), load:
        (proc,) = load.procs
        assert proc.poll() is None          # spinning
        raise RuntimeError("interrupted")
    assert proc.poll() is not None and load.procs == []     # killed and reaped
