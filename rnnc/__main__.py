"""Command line: ``python -m rnnc`` (check every class against the NumPy reference and time
both), ``python -m rnnc demo`` (train RNN, GRU and LSTM on the adding problem),
``python -m rnnc bench`` (quick benchmark against PyTorch and ONNX Runtime) and
``python -m rnnc info`` (version, CPU, instruction set, caches, BLAS, threads and the
kernels chosen)."""
import argparse
import platform
import sys
import time

import numpy as np

import rnnc
from rnnc import reference
from rnnc._engine.threads import blas_libraries

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _max_error(a, b):
    if isinstance(a, tuple):
        return max(_max_error(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _cases(T, B, I, H):
    """(class name, config text, builder(module namespace, dtype) -> module, call(module, x))"""
    lengths = np.linspace(T, 1, B).astype(int)

    def seq(m, x):
        return m(x)

    def seq_len(m, x):
        return m(x, lengths=lengths)

    def batch_first_len(m, x):
        return m(x.swapaxes(0, 1), lengths=lengths)

    def step(m, x):
        return m(x[0])

    def layer(name, **kw):
        return lambda ns, dt: getattr(ns, name)(I, H, dtype=dt, seed=0, **kw)

    return [
        ("RNN", "tanh", layer("RNN"), seq),
        ("RNN", "relu, 2 layers", layer("RNN", num_layers=2, nonlinearity="relu"), seq),
        ("GRU", "", layer("GRU"), seq),
        ("GRU", "reset_after=False", layer("GRU", reset_after=False), seq),
        ("LSTM", "", layer("LSTM"), seq),
        ("LSTM", "proj_size=H/2", layer("LSTM", proj_size=H // 2), seq),
        ("LSTM", "2 layers, bidirectional, lengths", layer("LSTM", num_layers=2,
                                                           bidirectional=True), seq_len),
        ("GRU", "batch_first, lengths", layer("GRU", batch_first=True), batch_first_len),
        ("Bidirectional", "LSTM, concat, lengths",
         lambda ns, dt: ns.Bidirectional(ns.LSTM(I, H, dtype=dt, seed=0)), seq_len),
        ("RNNCell", "", layer("RNNCell"), step),
        ("GRUCell", "", layer("GRUCell"), step),
        ("LSTMCell", "", layer("LSTMCell"), step),
        ("Linear", "softmax", lambda ns, dt: ns.Linear(I, H, activation="softmax", dtype=dt,
                                                       seed=0), seq),
    ]


def check(T=50, B=16, I=32, H=64, repeats=3, out=sys.stdout):
    """Run every case in both dtypes; return True when all agree with the reference."""
    rng = np.random.default_rng(0)
    rows, ok = [], True
    for dtype in (np.float32, np.float64):
        dt = np.dtype(dtype)
        x = rng.standard_normal((T, B, I)).astype(dt)
        for name, config, build, call in _cases(T, B, I, H):
            fast, slow = build(rnnc, dt), build(reference, dt)
            slow.load_state_dict(fast.state_dict())
            err = _max_error(call(fast, x), call(slow, x))
            t_fast = _median_time(lambda: call(fast, x), repeats)
            t_slow = _median_time(lambda: call(slow, x), repeats)
            passed = err <= TOLERANCE[dt]
            ok &= passed
            rows.append((name, config, dt.name, f"{err:.1e}", "ok" if passed else "FAIL",
                         f"{t_fast * 1e3:.3f}", f"{t_slow * 1e3:.3f}",
                         f"{t_slow / t_fast:.1f}x"))
    head = ("class", "config", "dtype", "max error", "check", "compiled ms", "reference ms",
            "speed-up")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths))
    print(f"rnnc {rnnc.__version__}: compiled vs NumPy reference, T={T} B={B} I={I} H={H}, "
          f"median of {repeats}, {rnnc.get_num_threads()} BLAS thread(s)", file=out)
    print(line, file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)), file=out)
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} "
          f"(tolerance float32 {TOLERANCE[np.dtype(np.float32)]:g}, "
          f"float64 {TOLERANCE[np.dtype(np.float64)]:g})", file=out)
    return ok




def info(out=sys.stdout):
    import scipy
    from rnnc._engine import machine, plan, stack
    print(f"rnnc {rnnc.__version__} at {rnnc.__file__}", file=out)
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, {platform.machine()}", file=out)
    m = machine.current()
    print(f"CPU: {m.model} ({m.cpus} CPU(s) for this process)", file=out)
    cap = f", capped by {machine.ENV_ISA}={m.cap}" if m.cap else ""
    print(f"ISA: {m.isa} in use (CPU runs {m.supported}{cap})", file=out)
    print(f"caches: L1d {_kib(m.l1d)}, L2 {_kib(m.l2)} per core, L3 {_kib(m.l3)} "
          f"(from {m.source})", file=out)
    threads = rnnc.get_num_threads()
    print(f"threads: {threads} (rnnc.set_num_threads)", file=out)
    libs = blas_libraries()
    if not libs:
        print("BLAS: not reported by threadpoolctl", file=out)
    for n, lib in enumerate(libs):
        who = "used by rnnc (scipy.linalg.cython_blas)" if n == 0 else "also loaded"
        print(f"BLAS {who}: {lib.get('internal_api')} {lib.get('version')} "
              f"[{lib.get('architecture')}], {lib.get('num_threads')} thread(s), "
              f"{lib.get('filepath')}", file=out)
    for line in plan.describe_kernels(threads, stack.trial):
        print(line, file=out)


def _kib(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:        # the demo parses its own options
        from rnnc.demo import main as demo_main
        return demo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m rnnc", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="train RNN, GRU and LSTM on the adding problem and plot it "
                                "(needs rnnc[demo]; see python -m rnnc demo -h)")
    chk = sub.add_parser("check", help="compare every class with the reference (default)")
    for p in (parser, chk):
        p.add_argument("--steps", type=int, default=50, help="sequence length T")
        p.add_argument("--batch", type=int, default=16, help="batch size B")
        p.add_argument("--input-size", type=int, default=32)
        p.add_argument("--hidden-size", type=int, default=64)
        p.add_argument("--repeats", type=int, default=3)
    bench = sub.add_parser(
        "bench", help="quick benchmark (under a minute) against the NumPy reference, PyTorch "
                      "and ONNX Runtime, each if installed",
        description="A quick subset of the benchmark suite (one case of each kind, float32, "
                    "short timing) against the NumPy reference, PyTorch and ONNX Runtime, each "
                    "if installed (pip install torch onnx onnxruntime matplotlib). Every peer "
                    "is checked against rnnc before timing. The full suite (8+ minutes): "
                    "python -P benchmarks/suite.py in a source checkout, or "
                    "python -m rnnc.bench.suite --help.")
    bench.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N",
                       help="thread counts (default: 1)")
    bench.add_argument("--out", metavar="DIR",
                       help="also write quick.md, quick.json and quick.png (needs matplotlib) "
                            "to DIR")
    sub.add_parser("info", help="version, CPU, instruction set, caches, BLAS, threads "
                                   "and the kernels chosen")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
        return 0
    if args.command == "bench":
        # Imported here: the suite imports PyTorch and ONNX Runtime when they are installed.
        from rnnc.bench.suite import quick
        return quick(args.out, args.threads, log=lambda s: print(s, flush=True))
    ok = check(args.steps, args.batch, args.input_size, args.hidden_size, args.repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
