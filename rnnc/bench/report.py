"""Output of the benchmark suite: markdown table, JSON with every raw number, PNG chart.

The result document (built by suite.run) holds "machine", "libraries", "settings", "rows" and
timing metadata; every row has "results" {backend: {median, iqr, q1, q3, min, n, samples}} in
the row's "unit" (ms, or us/step for stream cases), "unavailable" {backend: {reason, detail}},
"check" {backend: {max_error, worst_output, tolerance}} and "ratio" {peer: rnnc / peer}, and
"rnnc_over_fastest" (and "frozen_over_fastest": rnnc-frozen, the layer after freeze()) against
"fastest_peer".

Every file starts with the same header (``header_lines``): the CPU as lscpu names it, the
instruction set rnnc's kernels use (and the cap asked for), the cache sizes, the threads, the
versions of everything timed and of the BLAS (threadpoolctl), the date and the exact command.
Results are kept per CPU, in ``results_dir()``: benchmarks/results/<CPU model slug>/.
"""
import importlib.util
import json
import math
from pathlib import Path

import rnnc

# Where a source checkout keeps its results: one folder per CPU model (machine slug).
RESULTS_ROOT = Path(rnnc.__file__).resolve().parents[1] / "benchmarks" / "results"

PEER_ORDER = ("reference", "torch", "onnxruntime")
RATIO = "rnnc time / fastest peer time from the same run (< 1: rnnc is faster)"
FROZEN_RATIO = "rnnc-frozen time / the same peer's time"


def fmt(v):
    """About three significant digits, never in exponent notation."""
    if v != v:                      # NaN
        return "nan"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _present(doc):
    return {b for r in doc["rows"] for b in list(r["results"]) + list(r["unavailable"])}


def _peers(doc):
    present = _present(doc)
    return [b for b in PEER_ORDER if b in present]


def _rnnc_columns(doc):
    """rnnc, and rnnc-frozen when it was run."""
    return ["rnnc"] + (["rnnc-frozen"] if "rnnc-frozen" in _present(doc) else [])


def _footnotes(doc):
    notes = {}
    for r in doc["rows"]:
        for u in r["unavailable"].values():
            notes.setdefault(u["reason"], len(notes) + 1)
    return notes


def _cell(row, backend, notes):
    if backend in row["results"]:
        r = row["results"][backend]
        return f"{fmt(r['median'])} ({fmt(r['iqr'])})"
    if backend in row["unavailable"]:
        return f"n/a [{notes[row['unavailable'][backend]['reason']]}]"
    return "-"


def results_dir(slug, root=None):
    """The folder of one CPU's results: ROOT/<slug>, ROOT = the checkout's benchmarks/results
    when rnnc runs from a source checkout, else ./bench_results."""
    if root is None:
        root = RESULTS_ROOT if RESULTS_ROOT.is_dir() else Path("bench_results")
    return Path(root) / slug


def _kib(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n >> 10} KiB"


def machine_line(cpu):
    """'CPU: lscpu model name "AMD EPYC" (folder amd-epyc); ISA ...; caches ...' from the
    "cpu" record of a result document (suite.machine_info)."""
    isa = f"{cpu['isa']}"
    if cpu.get("cap"):
        isa += f" (capped by RNNC_MAX_CPU_ISA={cpu['cap']}; the CPU runs {cpu['supported']})"
    else:
        isa += " (the best this CPU runs; no RNNC_MAX_CPU_ISA cap)"
    return (f"- CPU: lscpu model name \"{cpu['model']}\" (results folder "
            f"`benchmarks/results/{cpu['slug']}/`), {cpu['cpus']} usable CPUs; instruction set "
            f"of rnnc's kernels: {isa}; caches L1d {_kib(cpu['l1d'])} and L2 {_kib(cpu['l2'])} "
            f"per core, L3 {_kib(cpu['l3'])} (from {cpu['source']}).")


def header_lines(doc, title="rnnc benchmarks"):
    """The lines every result file starts with (see the module docstring)."""
    m, libs = doc["machine"], doc["libraries"]
    v = libs["versions"]
    cpu = m.get("cpu")
    lines = [f"# {title}: {cpu['model'] if cpu else m.get('cpu_model')}", ""]
    if doc.get("note"):
        lines += [doc["note"], ""]
    if cpu:
        lines.append(machine_line(cpu))
    cores = f"{m.get('logical_cpus')} logical CPUs"
    if m.get("physical_cores"):
        cores += f" / {m['physical_cores']} cores"
    if m.get("affinity_cpus") and m["affinity_cpus"] != m.get("logical_cpus"):
        cores += f" ({m['affinity_cpus']} usable)"
    la0 = ", ".join(f"{x:.2f}" for x in doc.get("load_average_start", []))
    la1 = ", ".join(f"{x:.2f}" for x in doc.get("load_average_end", []))
    lines.append(f"- Machine: {cores}, {m.get('memory_gb', '?')} GB, {m.get('platform')}; "
                 f"load average (1, 5, 15 min) {la0} at start, {la1} at end.")
    threads = doc.get("threads_applied") or {}
    if threads:
        lines.append("- Threads: " + "; ".join(
            f"{n} asked, applied {', '.join(f'{k} {val}' for k, val in got.items())}"
            for n, got in threads.items()) + ".")
    lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items())
                 + f"; Python {m.get('python')}.")
    blas = [b for b in libs.get("blas", []) if b.get("user_api") == "blas"]
    if blas:
        lines.append("- BLAS (threadpoolctl): " + "; ".join(
            f"{b.get('internal_api')} {b.get('version')} [{b.get('architecture')}] "
            f"{Path(b.get('filepath', '')).name}" for b in blas) + ".")
    if "torch" in libs:
        t = libs["torch"]
        cap = f", CPU capability {t['cpu_capability']}" if t.get("cpu_capability") else ""
        lines.append(f"- torch: oneDNN (mkldnn) available {t['mkldnn_available']}, "
                     f"enabled {t['mkldnn_enabled']}; MKL {t['mkl_available']}{cap}; measured "
                     "as installed (inference under torch.inference_mode()).")
    if "onnxruntime" in libs:
        lines.append(f"- onnxruntime: {libs['onnxruntime']['export']}; session "
                     f"{libs['onnxruntime']['session']}.")
    isa = doc.get("settings", {}).get("isa")
    if isa:
        env = " ".join(f"{k}={val}" for k, val in isa["env"].items())
        lines.append(f"- Instruction-set cap: {isa['name']} for every backend that has one, set "
                     f"before any library loaded (a child process with `{env}`); "
                     f"{isa['excluded']}")
    lines.append(f"- Date: {doc.get('created', '?')}. Command: `{doc.get('command', '?')}`.")
    return lines


def _header(doc):
    lines = header_lines(doc)
    tm = doc["settings"]["timing"]
    lines.append(f"- Timing: {tm['passes']} passes over the runners of each case in rotating "
                 f"order, each block after {tm.get('settle_time', 0):g} s idle (other "
                 f"backends' spinning threads settle) and an untimed warm-up; at least "
                 f"{tm['min_repeats']} "
                 f"calls and {tm['min_time']:g} s per runner (NumPy reference: "
                 f"{tm['ref_min_repeats']} calls). Cells: median (IQR). Total run time "
                 f"{doc.get('total_seconds', 0):.0f} s.")
    tol = doc["settings"]["tolerance"]
    lines.append(f"- Every peer was checked against rnnc before timing (max |difference| / "
                 f"max(1, |value|) <= {tol['float32']:g} in float32, {tol['float64']:g} in "
                 f"float64); largest error seen: {_largest_errors(doc)}.")
    lines.append(f"- Last column: {RATIO}.")
    if "rnnc-frozen" in _rnnc_columns(doc):
        lines.append(f"- rnnc-frozen: the same rnnc layer after freeze() (weights packed once "
                     f"and kept across calls, as ONNX Runtime packs them once per session); "
                     f"its column \"frozen / fastest peer\" is {FROZEN_RATIO}.")
    if doc.get("error"):
        lines += ["", f"**RUN STOPPED: {doc['error']}**"]
    return lines


def _largest_errors(doc):
    worst = {}
    for r in doc["rows"]:
        for b, c in r["check"].items():
            key = (b, r["dtype"])
            worst[key] = max(worst.get(key, 0.0), c["max_error"])
    return ", ".join(f"{b} {d} {e:.1e}" for (b, d), e in sorted(worst.items())) or "none"


def markdown(doc):
    peers = _peers(doc)
    notes = _footnotes(doc)
    lines = _header(doc) + [""]
    ours = _rnnc_columns(doc)
    frozen = "rnnc-frozen" in ours
    head = (["case", "dtype", "threads", "unit"] + ours + peers + ["rnnc / fastest peer"]
            + (["frozen / fastest peer"] if frozen else []))
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|")
    for r in doc["rows"]:
        ratio = f"{r['rnnc_over_fastest']:.2f} ({r['fastest_peer']})" \
            if "rnnc_over_fastest" in r else "-"
        extra = [f"{r['frozen_over_fastest']:.2f}" if "frozen_over_fastest" in r else "-"] \
            if frozen else []
        cells = [r["case"], r["dtype"], str(r["threads"]), r["unit"].replace("us", "µs")] \
            + [_cell(r, b, notes) for b in ours] + [_cell(r, b, notes) for b in peers] \
            + [ratio] + extra
        lines.append("| " + " | ".join(cells) + " |")
    for (dtype, threads), g in geometric_means(doc).items():
        ratio = f"**{g['rnnc']:.2f}** ({g['n']} cases)" if g["n"] else "-"
        extra = [f"**{g['frozen']:.2f}** ({g['n_frozen']} cases)" if g["n_frozen"] else "-"] \
            if frozen else []
        cells = ["**geometric mean**", dtype, str(threads), ""] + [""] * (len(ours) + len(peers)) \
            + [ratio] + extra
        lines.append("| " + " | ".join(cells) + " |")
    lines += _per_peer_means(doc, peers)
    lines += _varlen_table(doc, ours + peers)
    if notes:
        lines += ["", "Not available:"]
        lines += [f"- [{n}] {reason}" for reason, n in notes.items()]
    other = sorted({f"{b}: {t}" for r in doc["rows"] for b, t in r["notes"].items()})
    if other:
        lines += ["", "Notes:"] + [f"- {t}" for t in other]
    return "\n".join(lines) + "\n"


def _geomean(values):
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def geometric_means(doc):
    """{(dtype, threads): {"rnnc", "n", "frozen", "n_frozen"}}: the geometric mean over the
    rows of that configuration of rnnc / fastest peer (and rnnc-frozen / fastest peer)."""
    out = {}
    for r in doc["rows"]:
        key = (r["dtype"], r["threads"])
        acc = out.setdefault(key, {"rnnc": [], "frozen": []})
        if "rnnc_over_fastest" in r:
            acc["rnnc"].append(r["rnnc_over_fastest"])
        if "frozen_over_fastest" in r:
            acc["frozen"].append(r["frozen_over_fastest"])
    return {k: {"rnnc": _geomean(a["rnnc"]), "n": len(a["rnnc"]),
                "frozen": _geomean(a["frozen"]), "n_frozen": len(a["frozen"])}
            for k, a in out.items()}


def _per_peer_means(doc, peers):
    """One line per configuration: the geometric mean of rnnc / each peer over the rows where
    both ran."""
    lines = []
    for dtype, threads in dict.fromkeys((r["dtype"], r["threads"]) for r in doc["rows"]):
        rows = [r for r in doc["rows"] if (r["dtype"], r["threads"]) == (dtype, threads)]
        parts = []
        for peer in peers:
            ratios = [r["ratio"][peer] for r in rows if peer in r.get("ratio", {})]
            if ratios:
                parts.append(f"{peer} {_geomean(ratios):.2f} ({len(ratios)} cases)")
        if parts:
            lines.append(f"- {dtype}, {threads} thread(s): rnnc / " + ", ".join(parts))
    if lines:
        lines = ["", "Geometric mean of rnnc / each peer, over the cases both ran:", ""] + lines
    return lines


def _varlen_table(doc, backends):
    rows = doc["rows"]
    pairs = []
    for r in rows:
        if r["kind"] == "varlen" and r["variant"] == "lengths":
            full = next((f for f in rows if f["group"] == r["group"] and f["variant"] == "full"
                         and f["dtype"] == r["dtype"] and f["threads"] == r["threads"]), None)
            if full is not None:
                pairs.append((r, full))
    if not pairs:
        return []
    out = ["", "Variable lengths: time with lengths ~ U[1, T] / time of the same batch at full "
           "length (ideal = Σ lengths / (B·T), the fraction of steps that really run).", "",
           "| case | dtype | threads | ideal | " + " | ".join(backends) + " |",
           "|---|---|---|---:|" + "---:|" * len(backends)]
    for r, f in pairs:
        cells = [r["group"], r["dtype"], str(r["threads"]), f"{r['ideal_ratio']:.2f}"]
        for b in backends:
            if b in r["results"] and b in f["results"]:
                cells.append(f"{r['results'][b]['median'] / f['results'][b]['median']:.2f}")
            else:
                cells.append("n/a")
        out.append("| " + " | ".join(cells) + " |")
    return out


def can_plot():
    return importlib.util.find_spec("matplotlib") is not None


def plot(doc, path):
    """Bar chart of rnnc's speed-up over each peer (peer time / rnnc time), log scale, one
    group of bars per case, one panel per (dtype, threads). Returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = []
    for r in doc["rows"]:
        if (r["dtype"], r["threads"]) not in configs:
            configs.append((r["dtype"], r["threads"]))
    if not configs:
        return False
    peers = _peers(doc)
    colors = {"reference": "#9e9e9e", "torch": "#ee4c2c", "onnxruntime": "#1f77b4"}
    n_max = max(sum(1 for r in doc["rows"] if (r["dtype"], r["threads"]) == c) for c in configs)
    fig, axes = plt.subplots(len(configs), 1, figsize=(max(10, 0.5 * n_max + 2),
                                                        5.5 * len(configs)), squeeze=False)
    width = 0.8 / max(1, len(peers))
    for ax, (dtype, threads) in zip(axes[:, 0], configs):
        rows = [r for r in doc["rows"] if (r["dtype"], r["threads"]) == (dtype, threads)]
        for j, peer in enumerate(peers):
            xs, ys = [], []
            for i, r in enumerate(rows):
                if peer in r["results"] and "rnnc" in r["results"]:
                    xs.append(i + (j - (len(peers) - 1) / 2) * width)
                    ys.append(r["results"][peer]["median"] / r["results"]["rnnc"]["median"])
            # Bars start at 1.0, so a slower rnnc hangs below the line.
            ax.bar(xs, [y - 1 for y in ys], width, bottom=1.0, label=f"vs {peer}",
                   color=colors.get(peer))
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["case"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel("peer time / rnnc time")
        ax.set_title(f"rnnc speed-up over each peer (> 1: rnnc faster), {dtype}, "
                     f"{threads} thread(s)", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(doc, out, name):
    """Write OUT/NAME.md, .json and .png; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.json"]
    paths[0].write_text(markdown(doc))
    paths[1].write_text(json.dumps(doc, indent=1, default=str))
    png = out / f"{name}.png"
    if plot(doc, png):
        paths.append(png)
    return paths
