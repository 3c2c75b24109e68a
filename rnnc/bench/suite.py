"""rnnc benchmark suite: rnnc against its NumPy reference, PyTorch and ONNX Runtime.

For every case of the grid (rnnc/bench/cases.py), dtype and thread count, each backend gets the
same weights and inputs. Before anything is timed, every peer's outputs (outputs, final states;
for training the input and parameter gradients) are checked against rnnc's (float32: 1e-4,
float64: 1e-9, relative to max(1, |value|)); a disagreement stops the suite with an error.

Timing: the runners of one case are measured in several passes, in rotating order, so that a
change of machine load hits every backend alike; each block starts with an untimed warm-up and
runs until a minimum number of calls and a minimum time are reached (the slow NumPy reference
runs one short block). Reported: the median and the interquartile range of all calls, and
rnnc / peer ratios of medians from the same run (< 1: rnnc is faster).

    python benchmarks/suite.py                         # full grid, float32+float64, 1 and 2 threads
    python benchmarks/suite.py --quick                 # small subset, float32, 1 thread
    python benchmarks/suite.py --threads 1 --dtype float32 --cases LSTM --out bench_results
    python -m rnnc bench                               # the --quick run, from an installed rnnc
    python benchmarks/suite.py --isa avx2 --threads 1 --dtype float32 --kinds forward

Writes OUT/NAME.md (table), OUT/NAME.json (raw numbers, machine info) and OUT/NAME.png (speed-up
chart) with NAME = "suite" or "quick" (--name; "_avx2" appended with --isa avx2). OUT defaults to
benchmarks/results/<CPU model slug>/ in a source checkout (bench_results/<slug>/ elsewhere): results
are kept per CPU, and every file is headed by the CPU's model name, instruction set and caches.

--isa avx2 compares the backends as on a CPU without AVX-512: rnnc with RNNC_MAX_CPU_ISA=avx2,
PyTorch with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2,
the OpenBLAS that rnnc and NumPy call with OPENBLAS_CORETYPE=Haswell. The libraries read these
when they load, so the suite runs again in a child process started with them; each variable is
read by one library only, so one child serves every backend and keeps the rotating timing and
the agreement check of a plain run. ONNX Runtime has no such cap and is left out (the table
says so). The child checks that every cap took effect (rnnc's machine.current().isa, torch's
CPU capability, OpenBLAS's core type) and stops if one did not.
"""
import argparse
import datetime
import gc
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rnnc._engine import machine
from rnnc.bench import cases as _cases
from rnnc.bench import peers, report

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}

# --isa NAME: the environment that caps each library's instruction set (read when it loads).
ISA_CAPS = {
    "avx2": {"RNNC_MAX_CPU_ISA": "avx2",            # rnnc's kernels (rnnc/_engine/machine.py)
             "ATEN_CPU_CAPABILITY": "avx2",         # PyTorch's own kernels
             "ONEDNN_MAX_CPU_ISA": "AVX2",          # PyTorch's oneDNN (its RNN primitives)
             "MKL_ENABLE_INSTRUCTIONS": "AVX2",     # PyTorch's MKL
             "OPENBLAS_CORETYPE": "Haswell"},       # the OpenBLAS rnnc (SciPy) and NumPy call
}
UNCAPPED = {"onnxruntime": "ONNX Runtime has no instruction-set cap (its MLAS kernels pick the "
                           "CPU's best), so it is left out of a capped comparison"}
# Environment variables that change what is measured: recorded in the command line.
MEASURE_ENV = tuple(dict.fromkeys([*ISA_CAPS["avx2"], "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "MKL_NUM_THREADS"]))


class Disagreement(AssertionError):
    """A peer's outputs differ from rnnc's beyond the tolerance."""


@dataclass
class Timing:
    passes: int = 3             # rounds over all runners of a case, in rotating order
    min_repeats: int = 15       # timed calls per runner, over all passes
    min_time: float = 1.5       # seconds per runner, over all passes
    warmup_time: float = 0.05   # untimed calls at the start of every block (at least one)
    # Idle time before every block: the previous runner's worker threads (ONNX Runtime's pool,
    # OpenMP's, OpenBLAS's) keep spinning for a while after their last call and would take a
    # core from the next runner (measured: rnnc LSTM B16 H128 at 2 threads took 7.3 ms a call
    # for ~30 ms after an ONNX Runtime block, 3.3 ms after 50 ms idle). Same for every backend.
    settle_time: float = 0.1
    max_block_time: float = 6.0  # a block stops here even below min_repeats (at least 1 call)
    ref_min_repeats: int = 3    # the NumPy reference: one block, in the first pass
    ref_min_time: float = 0.3
    ref_max_time: float = 10.0


QUICK_TIMING = Timing(passes=2, min_repeats=6, min_time=0.3, warmup_time=0.02,
                      settle_time=0.02, max_block_time=2.0, ref_min_repeats=2, ref_min_time=0.0,
                      ref_max_time=2.0)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def _block(fn, min_calls, min_time, max_time, warmup_time, settle_time=0.0):
    time.sleep(settle_time)
    t0 = time.perf_counter()
    fn()
    while time.perf_counter() - t0 < warmup_time:
        fn()
    gc.collect()
    gc.disable()
    try:
        times, start = [], time.perf_counter()
        while True:
            t = time.perf_counter()
            fn()
            now = time.perf_counter()
            times.append(now - t)
            elapsed = now - start
            if (len(times) >= min_calls and elapsed >= min_time) or elapsed >= max_time:
                return times
    finally:
        gc.enable()


def measure(runners, timing):
    """{key: Runner} -> {key: [seconds per call]}; keys whose backend is "reference" get the
    reduced reference budget."""
    keys = list(runners)
    samples = {k: [] for k in keys}
    P = max(1, timing.passes)
    for p in range(P):
        rot = p % len(keys)
        for k in keys[rot:] + keys[:rot]:
            if k[1] == "reference":
                if p == 0:
                    samples[k] += _block(runners[k].fn, timing.ref_min_repeats,
                                         timing.ref_min_time, timing.ref_max_time, 0.0)
                continue
            samples[k] += _block(runners[k].fn, math.ceil(timing.min_repeats / P),
                                 timing.min_time / P, timing.max_block_time / P,
                                 timing.warmup_time, timing.settle_time)
    return samples


def _stats(seconds, scale):
    v = np.asarray(seconds) * scale
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "q1": float(q1), "q3": float(q3),
            "min": float(v.min()), "n": int(v.size), "samples": [float(s) for s in v]}


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------
def _compare(expected, got, dtype):
    """Largest error over the common keys, relative to max(1, |expected|); (error, key)."""
    worst, where = 0.0, None
    missing = [k for k in expected if k not in got]
    if missing:
        raise Disagreement(f"outputs {missing} missing")
    for k, a in expected.items():
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(got[k], dtype=np.float64)
        if a.shape != b.shape:
            raise Disagreement(f"{k}: shape {b.shape}, rnnc has {a.shape}")
        if a.size == 0:
            continue
        if not np.all(np.isfinite(b) == np.isfinite(a)):
            return math.inf, k
        err = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))
        if err > worst or where is None:
            worst, where = err, k
    return worst, where


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------
def _variants(case):
    return ["lengths", "full"] if case.kind == "varlen" else [""]


def _row_name(case, variant):
    if variant == "full":
        base = case.name.rsplit(" lengths~", 1)[0]
        return f"{base} full length (same batch)"
    return case.name


def run_case(case, dtype, threads, backends, timing, excluded=None):
    """Check and time one case; returns its table rows (two for a varlen case). ``excluded``
    {backend: reason}: backends left out of this run, named in the table."""
    data = peers.Data(case, dtype)
    tol = TOLERANCE[dtype]
    rows = []
    runners = {}
    for variant in _variants(case):
        row = {"case": _row_name(case, variant), "group": case.name, "kind": case.kind,
               "variant": variant, "mode": case.mode, "B": case.B, "H": case.H, "T": case.T,
               "I": case.input_size, "layer": dict(case.layer), "dtype": dtype,
               "threads": threads, "unit": case.unit, "results": {}, "unavailable": {},
               "check": {}, "notes": {}}
        if case.kind == "stream":
            row["variant"] = case.variant
        if variant == "lengths":
            row["ideal_ratio"] = float(data.lengths.sum() / (case.B * case.T))
            row["lengths"] = [int(v) for v in data.lengths]
        for backend, reason in (excluded or {}).items():
            row["unavailable"][backend] = {"reason": reason, "detail": "excluded"}
        expected = None
        for backend in backends:
            try:
                r = peers.build(backend, case, variant, data, threads)
                outs = r.outputs()
            except peers.Unavailable as exc:
                row["unavailable"][backend] = {"reason": exc.reason, "detail": exc.detail}
                continue
            except Exception as exc:  # noqa: BLE001 - a broken peer must not stop the suite
                if backend == "rnnc":
                    raise
                reason = f"{backend} raised {type(exc).__name__}: {str(exc)[:100]}"
                print(f"WARNING: {row['case']} [{dtype}]: {reason}", file=sys.stderr)
                row["unavailable"][backend] = {"reason": reason, "detail": repr(exc)}
                continue
            if backend == "rnnc":
                expected = outs
            else:
                err, key = _compare(expected, outs, dtype)
                row["check"][backend] = {"max_error": err, "worst_output": key,
                                         "tolerance": tol}
                if not err <= tol:
                    raise Disagreement(
                        f"{row['case']} [{dtype}, {threads} thread(s)]: {backend} disagrees "
                        f"with rnnc: error {err:.3g} in {key!r} > tolerance {tol:g}")
            if r.notes:
                row["notes"][backend] = r.notes
            runners[(variant, backend)] = r
        rows.append(row)
    samples = measure(runners, timing)
    for row, variant in zip(rows, _variants(case)):
        for (v, backend), secs in samples.items():
            if v != variant:
                continue
            steps = runners[(v, backend)].steps
            scale = 1e6 / steps if case.kind == "stream" else 1e3
            row["results"][backend] = _stats(secs, scale)
        _ratios(row)
    return rows


def _ratios(row):
    res = row["results"]
    if "rnnc" not in res:
        return
    t = res["rnnc"]["median"]
    row["ratio"] = {b: t / r["median"] for b, r in res.items() if b != "rnnc"}
    others = [b for b in res if b not in peers.RNNC_SIDE]
    if others:
        fastest = min(others, key=lambda b: res[b]["median"])
        row["fastest_peer"] = fastest
        row["rnnc_over_fastest"] = row["ratio"][fastest]
        if "rnnc-frozen" in res:
            row["frozen_over_fastest"] = res["rnnc-frozen"]["median"] / res[fastest]["median"]


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def cpu_info(m=None):
    """The CPU as rnnc's kernels see it (rnnc/_engine/machine.py): lscpu's model name, its
    folder name (slug), the instruction set in use and the cap asked for, the caches."""
    m = machine.current() if m is None else m
    return {"model": m.model, "slug": m.slug, "supported": m.supported, "isa": m.isa,
            "cap": m.cap, "l1d": m.l1d, "l2": m.l2, "l3": m.l3, "source": m.source,
            "cpus": m.cpus}


def command_line(argv=None, environ=None):
    """The command as typed, to run it again: the variables of MEASURE_ENV that are set, the
    interpreter's own arguments (-P, -m module) and the script's."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv:
        argv[0] = Path(argv[0]).name
    env = [f"{k}={environ[k]}" for k in MEASURE_ENV if environ.get(k)]
    return shlex.join(env + argv)


def machine_info():
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "logical_cpus": os.cpu_count(),
            "cpu": cpu_info()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        models = [ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
        cores, cur = set(), {}
        for ln in text.splitlines() + [""]:
            if not ln.strip():
                if cur:
                    cores.add((cur.get("physical id"), cur.get("core id")))
                cur = {}
            elif ":" in ln:
                k, v = ln.split(":", 1)
                cur[k.strip()] = v.strip()
        info["physical_cores"] = len(cores) if (None, None) not in cores else None
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                      if ln.startswith("flags")), [])
        info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                    "amx_tile") if f in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def library_info():
    import scipy
    import threadpoolctl
    import rnnc
    libs = {"rnnc": rnnc.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "threadpoolctl": threadpoolctl.__version__}
    out = {"versions": libs}
    if peers.torch is not None:
        torch = peers.torch
        libs["torch"] = torch.__version__
        out["torch"] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "mkldnn_available": torch.backends.mkldnn.is_available(),
                        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
                        "mkl_available": torch.backends.mkl.is_available(),
                        "num_interop_threads": torch.get_num_interop_threads(),
                        "config": torch.__config__.show()}
    if peers.ort is not None:
        libs["onnxruntime"] = peers.ort.__version__
        libs["onnx"] = peers.onnx.__version__
        out["onnxruntime"] = {"providers": peers.ort.get_available_providers(),
                              "session": "intra_op_num_threads=threads, inter_op_num_threads=1, "
                                         "ORT_SEQUENTIAL, CPUExecutionProvider, default graph "
                                         "optimizations and spinning",
                              "export": "torch.onnx.export(dynamo=False), default opset"}
    import scipy.linalg  # noqa: F401 - load the BLAS rnnc calls, so threadpoolctl sees it
    out["blas"] = threadpoolctl.threadpool_info()
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _fmt_progress(row):
    parts = []
    for b, r in row["results"].items():
        parts.append(f"{b} {report.fmt(r['median'])}")
    for b in row["unavailable"]:
        parts.append(f"{b} n/a")
    tail = ""
    if "rnnc_over_fastest" in row:
        tail = f" -> rnnc/{row['fastest_peer']} {row['rnnc_over_fastest']:.2f}"
        if "frozen_over_fastest" in row:
            tail += f", frozen {row['frozen_over_fastest']:.2f}"
    return f"{row['case']} [{row['dtype']}, {row['threads']}t, {row['unit']}]: " \
        + ", ".join(parts) + tail


def run(case_list, dtypes, threads_list, backends, timing, log=print, note="", command=None,
        isa=None):
    """Run the grid; returns the result document (see report.py). On a disagreement the
    document is returned with "error" set (the rows measured so far are kept). ``isa``: the
    record of an instruction-set cap this process runs under ({"name", "env", "excluded"}),
    whose UNCAPPED backends are left out."""
    started = time.time()
    excluded = {b: why for b, why in UNCAPPED.items() if isa} if isa else {}
    backends = [b for b in backends if b not in excluded]
    doc = {"created": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": command or command_line(), "note": note,
           "machine": machine_info(), "libraries": library_info(),
           "settings": {"dtypes": dtypes, "threads": threads_list, "backends": backends,
                        "timing": asdict(timing), "tolerance": TOLERANCE, "isa": isa},
           "load_average_start": list(os.getloadavg()), "rows": [], "threads_applied": {}}
    saved = peers.get_threads()
    total = sum(len(_variants(c)) for c in case_list for d in dtypes if d in c.dtypes) \
        * len(threads_list)
    done = 0
    try:
        for threads in threads_list:
            peers.set_threads(threads)
            doc["threads_applied"][str(threads)] = peers.get_threads()
            for dtype in dtypes:
                for case in case_list:
                    if dtype not in case.dtypes:
                        continue
                    rows = run_case(case, dtype, threads, backends, timing, excluded)
                    for row in rows:
                        done += 1
                        doc["rows"].append(row)
                        log(f"[{done}/{total}] {_fmt_progress(row)}")
    except Disagreement as exc:
        doc["error"] = str(exc)
        log(f"\n*** AGREEMENT CHECK FAILED: {exc}\n")
    finally:
        peers.set_threads(saved["rnnc"])
        if "torch" in saved:
            peers.torch.set_num_threads(saved["torch"])
        doc["load_average_end"] = list(os.getloadavg())
        doc["total_seconds"] = time.time() - started
    return doc


def _finish(doc, out, name, log=print):
    log("")
    log(report.markdown(doc))
    if out is not None:
        for path in report.write(doc, out, name):
            log(f"wrote {path}")
        if not report.can_plot():
            log("no PNG chart: matplotlib is not installed")
    log(f"total time {doc['total_seconds']:.0f} s")
    if "error" in doc:
        print(f"AGREEMENT CHECK FAILED: {doc['error']}", file=sys.stderr)
        return 1
    return 0


def quick(out=None, threads=(1,), cases=None, timing=None, log=print):
    """``python -m rnnc bench``: a small subset (one case of each kind, float32, short timing)
    in well under a minute, against whichever peers are installed. Prints what is compared,
    the table and what its ratio column means; with ``out``, also writes quick.md/.json/.png
    there. Returns 0, or 1 if a peer disagreed with rnnc."""
    cases = _cases.QUICK if cases is None else cases
    backends = peers.installed()
    log(f"rnnc quick benchmark: {len(cases)} case(s), float32, "
        f"{' and '.join(map(str, threads))} thread(s); every peer is checked against rnnc, "
        "then all are timed.")
    log("Compared: " + "; ".join(peers.describe(b) for b in backends) + ".")
    for backend, why in peers.missing().items():
        log(f"Skipped {backend}: {why}.")
    doc = run(cases, ["float32"], list(threads), backends,
              QUICK_TIMING if timing is None else timing, log=log)
    status = _finish(doc, out, "quick", log)
    log(f'Ratio column "rnnc / fastest peer" = {report.RATIO}; other cells: median (IQR) in '
        "the row's unit.")
    return status


# ---------------------------------------------------------------------------------------------
# Instruction-set caps (--isa)
# ---------------------------------------------------------------------------------------------
def under_cap(name, environ=None):
    """This process was started with every variable of ISA_CAPS[name]."""
    environ = os.environ if environ is None else environ
    return all(environ.get(k) == v for k, v in ISA_CAPS[name].items())


def cap_effects():
    """What each library runs now: {rnnc, torch, blas} (the instruction set, torch's CPU
    capability, OpenBLAS's core types), to check that a cap took effect."""
    import threadpoolctl
    got = {"rnnc": machine.current().isa}
    if peers.torch is not None:
        got["torch"] = peers.torch.backends.cpu.get_cpu_capability()
    import scipy.linalg  # noqa: F401 - load the BLAS rnnc calls, so threadpoolctl sees it
    got["blas"] = sorted({str(i.get("architecture")) for i in threadpoolctl.threadpool_info()
                          if i.get("internal_api") == "openblas"})
    return got


def cap_problems(name, effects):
    """The caps of ISA_CAPS[name] that did not take effect (empty: all did)."""
    wide = ("512", "skylakex", "cooperlake", "sapphirerapids")     # AVX-512 names
    problems = []
    if machine.ISAS.index(effects["rnnc"]) > machine.ISAS.index(name):
        problems.append(f"rnnc runs {effects['rnnc']}")
    if any(w in str(effects.get("torch", "")).lower() for w in wide):
        problems.append(f"torch's CPU capability is {effects['torch']}")
    for arch in effects.get("blas", []):
        if any(w in arch.lower() for w in wide):
            problems.append(f"OpenBLAS runs its {arch} kernels")
    return problems


def _run_capped(name, argv):
    """Run this command again in a child process whose environment caps every library at
    `name` before it loads; returns its exit status."""
    env = {**os.environ, **ISA_CAPS[name]}
    # The child imports the same rnnc as this process, wherever that came from.
    here = str(Path(__import__("rnnc").__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-P", "-m", "rnnc.bench.suite", *argv, "--command", command_line()]
    print(f"--isa {name}: running the suite in a child process with "
          + " ".join(f"{k}={v}" for k, v in ISA_CAPS[name].items()), flush=True)
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small subset with short timing (default float32, 1 thread)")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 2)")
    p.add_argument("--dtype", nargs="+", choices=["float32", "float64"],
                   help="dtypes (default: float32 float64)")
    p.add_argument("--cases", nargs="+", metavar="SUBSTRING",
                   help="only cases whose name contains one of these (case-insensitive)")
    p.add_argument("--kinds", nargs="+", choices=["forward", "varlen", "stream", "train"])
    p.add_argument("--backends", nargs="+", choices=peers.BACKENDS,
                   help="backends to run (default: all installed); rnnc is always run")
    p.add_argument("--out", help="output folder (default: benchmarks/results/<CPU slug>/ in a "
                                 "source checkout, else bench_results/<CPU slug>/)")
    p.add_argument("--name", help="file name stem (default: suite, or quick with --quick; "
                                  "_avx2 appended with --isa avx2)")
    p.add_argument("--isa", choices=sorted(ISA_CAPS),
                   help="cap every backend's instruction set (a child process with the "
                        "libraries' variables set; ONNX Runtime, which has none, left out)")
    p.add_argument("--command", help=argparse.SUPPRESS)      # the parent's, under --isa
    p.add_argument("--min-time", type=float, help="seconds per runner and case")
    p.add_argument("--min-repeats", type=int, help="timed calls per runner and case")
    p.add_argument("--passes", type=int, help="rounds over the runners of a case")
    p.add_argument("--note", default="", help="a line for the report header")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = p.parse_args(argv)
    if args.isa and not under_cap(args.isa) and not args.list:
        return _run_capped(args.isa, argv)

    grid = _cases.QUICK if args.quick else _cases.GRID
    selected = _cases.select(grid, args.cases, args.kinds)
    if args.list or not selected:
        for c in selected:
            print(f"{c.kind:8s} {c.name}  ({', '.join(c.dtypes)})")
        if not selected:
            print("no case selected", file=sys.stderr)
            return 2
        return 0
    timing = QUICK_TIMING if args.quick else Timing()
    for attr, val in (("min_time", args.min_time), ("min_repeats", args.min_repeats),
                      ("passes", args.passes)):
        if val is not None:
            setattr(timing, attr, val)
    threads = args.threads or ([1] if args.quick else [1, 2])
    dtypes = args.dtype or (["float32"] if args.quick else ["float32", "float64"])
    avail = peers.installed()
    wanted = ["rnnc"] + [b for b in (args.backends or avail) if b != "rnnc"]
    missing = [b for b in wanted if b not in avail]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}", file=sys.stderr)
    backends = [b for b in wanted if b in avail]
    print(f"{len(selected)} case(s) x {dtypes} x threads {threads}; backends {backends}",
          flush=True)
    isa = None
    if args.isa:
        effects = cap_effects()
        problems = cap_problems(args.isa, effects)
        if problems:
            print(f"--isa {args.isa}: the cap did not take effect: {'; '.join(problems)}",
                  file=sys.stderr)
            return 2
        isa = {"name": args.isa, "env": ISA_CAPS[args.isa], "effects": effects,
               "excluded": " ".join(f"{b} left out: {why}." for b, why in UNCAPPED.items())}
    doc = run(selected, dtypes, threads, backends, timing,
              log=lambda s: print(s, flush=True), note=args.note, command=args.command,
              isa=isa)
    out = args.out or report.results_dir(machine.current().slug)
    name = args.name or ("quick" if args.quick else "suite") + (f"_{args.isa}" if args.isa else "")
    return _finish(doc, out, name)


if __name__ == "__main__":
    sys.exit(main())
