"""python -m rnnc bench and the suite behind it (rnnc.bench), on tiny cases with a tiny timing
budget. Speed is never asserted: only what is run, checked and reported."""
import json
import pathlib
import subprocess
import sys

import pytest

from rnnc import __main__ as cli
from rnnc.bench import cases, peers, report, suite

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [cases.Case("forward", "LSTM", 2, 8, 5, dtypes=("float32",)),
        cases.Case("varlen", "GRU", 4, 8, 6, dtypes=("float32",))]
# One call per runner: enough to fill every field of the report.
BLINK = suite.Timing(passes=1, min_repeats=1, min_time=0.0, warmup_time=0.0,
                     max_block_time=0.01, ref_min_repeats=1, ref_min_time=0.0, ref_max_time=0.01)
LOCAL = ["rnnc", "reference"]
INSTALLED_LOCAL = ["rnnc", "rnnc-frozen", "reference"]    # without torch and ONNX Runtime


@pytest.fixture
def no_optional_peers(monkeypatch):
    """This process as if neither PyTorch nor ONNX Runtime were installed."""
    for name in ("torch", "onnx", "ort"):
        monkeypatch.setattr(peers, name, None)


def _run(case_list=TINY, backends=LOCAL):
    return suite.run(case_list, ["float32"], [1], backends, BLINK, log=lambda s: None)


def test_rows_hold_results_checks_and_the_ratio_to_the_fastest_peer():
    doc = _run()
    assert "error" not in doc
    assert [r["case"] for r in doc["rows"]] == [
        "LSTM B2 H8 T5", "GRU B4 H8 T6 lengths~U[1,6]", "GRU B4 H8 T6 full length (same batch)"]
    for row in doc["rows"]:
        assert set(row["results"]) == set(LOCAL)
        assert set(row["results"]["rnnc"]) >= {"median", "iqr", "q1", "q3", "min", "n",
                                               "samples"}
        assert row["check"]["reference"]["max_error"] <= suite.TOLERANCE["float32"]
        assert row["fastest_peer"] == "reference"
        assert row["rnnc_over_fastest"] == pytest.approx(
            row["results"]["rnnc"]["median"] / row["results"]["reference"]["median"])
    assert 0 < doc["rows"][1]["ideal_ratio"] <= 1


def test_markdown_table_has_a_ratio_column_and_json_keeps_every_number(tmp_path):
    doc = _run()
    table = [ln for ln in report.markdown(doc).splitlines() if ln.startswith("| ")]
    assert table[0] == ("| case | dtype | threads | unit | rnnc | reference | "
                        "rnnc / fastest peer |")
    for row, line in zip(doc["rows"], table[1:4]):
        assert line.startswith(f"| {row['case']} | float32 | 1 | ms |")
        assert line.endswith(f"| {row['rnnc_over_fastest']:.2f} (reference) |")
    written = {p.name for p in report.write(doc, tmp_path, "tiny")}
    assert {"tiny.md", "tiny.json"} <= written
    assert ("tiny.png" in written) == report.can_plot()
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert set(saved) >= {"created", "command", "machine", "libraries", "settings", "rows",
                          "threads_applied", "total_seconds"}
    assert saved["settings"]["backends"] == LOCAL
    assert saved["rows"][0]["results"]["rnnc"]["samples"] == \
        doc["rows"][0]["results"]["rnnc"]["samples"]


def test_frozen_rnnc_gets_its_own_columns_and_is_not_a_peer():
    train = cases.Case("train", "RNN", 2, 8, 4, dtypes=("float32",))
    doc = _run(TINY[:1] + [train], backends=INSTALLED_LOCAL)
    forward, training = doc["rows"]
    assert set(forward["results"]) == set(INSTALLED_LOCAL)
    assert forward["check"]["rnnc-frozen"]["max_error"] == 0     # the same bits
    assert forward["fastest_peer"] == "reference"
    assert forward["frozen_over_fastest"] == pytest.approx(
        forward["results"]["rnnc-frozen"]["median"]
        / forward["results"]["reference"]["median"])
    assert "inference cases only" in training["unavailable"]["rnnc-frozen"]["reason"]
    assert "frozen_over_fastest" not in training
    table = [ln for ln in report.markdown(doc).splitlines() if ln.startswith("| ")]
    assert table[0] == ("| case | dtype | threads | unit | rnnc | rnnc-frozen | reference | "
                        "rnnc / fastest peer | frozen / fastest peer |")
    assert table[1].endswith(f"| {forward['frozen_over_fastest']:.2f} |")
    assert table[2].endswith("| - |")


def test_a_peer_that_disagrees_stops_the_suite(monkeypatch, capsys, no_optional_peers):
    build = peers.build

    def off_by_one_reference(backend, case, variant, data, threads):
        runner = build(backend, case, variant, data, threads)
        if backend == "reference":
            right = runner.outputs
            runner.outputs = lambda: {k: v + 1 for k, v in right().items()}
        return runner

    monkeypatch.setattr(peers, "build", off_by_one_reference)
    with pytest.raises(suite.Disagreement, match="reference disagrees with rnnc"):
        suite.run_case(TINY[0], "float32", 1, LOCAL, BLINK)
    # Through the quick run: reported, and a failing exit status.
    assert suite.quick(cases=TINY[:1], timing=BLINK, log=lambda s: None) == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err


def test_absent_peers_are_skipped_with_a_reason(no_optional_peers):
    assert peers.installed() == INSTALLED_LOCAL
    assert set(peers.missing()) == {"torch", "onnxruntime"}
    lines = []
    assert suite.quick(cases=TINY[:1], timing=BLINK, log=lines.append) == 0
    text = "\n".join(lines)
    assert "Compared: rnnc" in lines[1] and "reference" in lines[1]
    assert "Skipped torch: PyTorch is not installed" in text
    assert "Skipped onnxruntime: ONNX Runtime is not installed" in text
    assert "| torch |" not in text and "| onnxruntime |" not in text
    assert lines[-1].startswith('Ratio column "rnnc / fastest peer" = rnnc time / fastest')


def test_onnxruntime_without_torch_is_skipped_for_want_of_an_exporter(monkeypatch):
    monkeypatch.setattr(peers, "torch", None)
    monkeypatch.setattr(peers, "ort", object())
    assert "export" in peers.missing()["onnxruntime"]
    assert peers.installed() == INSTALLED_LOCAL


def test_bench_subcommand_writes_the_report(monkeypatch, tmp_path, capsys, no_optional_peers):
    monkeypatch.setattr(cases, "QUICK", TINY[:1])
    monkeypatch.setattr(suite, "QUICK_TIMING", BLINK)
    assert cli.main(["bench", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rnnc quick benchmark: 1 case(s), float32, 1 thread(s)")
    assert (tmp_path / "quick.md").read_text() in out
    assert json.loads((tmp_path / "quick.json").read_text())["rows"][0]["case"] == TINY[0].name
    assert (tmp_path / "quick.png").exists() == report.can_plot()


def _python(*args):
    # -P and the parent folder: the installed rnnc, not the sources next to the tests.
    return subprocess.run([sys.executable, "-P", *args], capture_output=True, text=True,
                          check=True, cwd=ROOT.parent).stdout


def test_bench_help_runs():
    out = _python("-m", "rnnc", "bench", "--help")
    assert "--threads" in out and "--out" in out
    assert "bench" in _python("-m", "rnnc", "--help")


def test_import_rnnc_does_not_load_the_benchmarks():
    code = "import sys, rnnc, rnnc.__main__; print('rnnc.bench' in sys.modules)"
    assert _python("-c", code).strip() == "False"
