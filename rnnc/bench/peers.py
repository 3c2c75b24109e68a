"""Runners: the timed call of one backend on one case, plus its outputs for the agreement check.

Backends: ``rnnc`` (the compiled library), ``rnnc-frozen`` (the same after ``freeze()``: weights
packed once and kept, as ONNX Runtime does when it builds a session; inference cases only),
``reference`` (rnnc.reference, the plain NumPy loop),
``torch`` (torch.nn.RNN/GRU/LSTM as users get it: default build, oneDNN left as it is) and
``onnxruntime`` (the same PyTorch module exported with torch.onnx.export, legacy TorchScript
exporter, run in an InferenceSession with intra_op_num_threads = threads, inter_op 1,
sequential execution). Optional backends that are not installed are skipped.

``build(backend, case, variant, data, threads)`` returns a ``Runner`` or raises ``Unavailable``
with the reason (that backend cannot run that case). Every backend gets the same weights (the
rnnc model's state_dict) and the same inputs.
"""
import contextlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np

import rnnc
from rnnc import reference
from rnnc.reference import backward as reference_backward

try:
    import torch
except ImportError:         # optional peer
    torch = None
try:
    import onnx
    import onnxruntime as ort
except ImportError:         # optional peer
    onnx = ort = None

BACKENDS = ("rnnc", "rnnc-frozen", "reference", "torch", "onnxruntime")
RNNC_SIDE = ("rnnc", "rnnc-frozen")     # the rest are peers

# torch says so once per process for the proj_size case; recorded as a note on that row instead.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


class Unavailable(Exception):
    """This backend cannot run this case; the message is the reason (short, for a footnote)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Runner:
    """``fn()`` is what is timed; ``outputs()`` returns {name: ndarray} to check against rnnc."""

    def __init__(self, fn, outputs, steps=1, notes=""):
        self.fn = fn
        self.outputs = outputs
        self.steps = steps          # time steps per call (stream cases: time per step = t/steps)
        self.notes = notes


def missing():
    """{backend: why it cannot run here} for the optional backends."""
    why = {}
    if torch is None:
        why["torch"] = "PyTorch is not installed (pip install torch)"
    if ort is None:
        why["onnxruntime"] = "ONNX Runtime is not installed (pip install onnx onnxruntime)"
    elif torch is None:
        why["onnxruntime"] = "needs PyTorch to export the model to ONNX"
    return why


def installed():
    """The backends importable in this process."""
    return [b for b in BACKENDS if b not in missing()]


def describe(backend):
    """What ``backend`` is, with its version, for a report's first line."""
    if backend == "rnnc":
        return f"rnnc {rnnc.__version__} (compiled)"
    if backend == "rnnc-frozen":
        return "rnnc-frozen (the same layer after freeze(): weights packed once, kept)"
    if backend == "reference":
        return "reference (rnnc.reference, the plain NumPy loop)"
    if backend == "torch":
        return f"PyTorch {torch.__version__} (torch.nn.RNN/GRU/LSTM)"
    if backend == "onnxruntime":
        return f"ONNX Runtime {ort.__version__} (the PyTorch module, exported to ONNX)"
    raise ValueError(f"unknown backend {backend!r}")


# ---------------------------------------------------------------------------------------------
# Shared data: one rnnc model's weights and one set of inputs per (case, dtype)
# ---------------------------------------------------------------------------------------------
class Data:
    def __init__(self, case, dtype, seed=0):
        self.case, self.dtype = case, np.dtype(dtype)
        rng = np.random.default_rng(seed)
        c = case
        self.I, self.H, self.T, self.B = c.input_size, c.H, c.T, c.B
        self.x = rng.standard_normal((c.T, c.B, self.I)).astype(self.dtype)
        self.lengths = rng.integers(1, c.T + 1, size=c.B) if c.kind == "varlen" else None
        model = _rnnc_layer(rnnc, case, self.dtype)
        self.state_dict = model.state_dict()
        P = c.layer.get("proj_size") or c.H
        D = 2 if c.layer.get("bidirectional") else 1
        self.out_features = D * P
        self.grad = rng.standard_normal((c.T, c.B, D * P)).astype(self.dtype) \
            if c.kind == "train" else None


def _rnnc_layer(ns, case, dtype):
    return getattr(ns, case.mode)(case.input_size, case.H, dtype=dtype, seed=0, **case.layer)


def _cell_state_dict(sd):
    return {k[:-3]: v for k, v in sd.items()}          # weight_ih_l0 -> weight_ih


def _states(mode, result):
    """{out, h_n, c_n} from a layer's (out, h_n) or (out, (h_n, c_n)) result."""
    out, hn = result
    if mode == "LSTM":
        return {"out": out, "h_n": hn[0], "c_n": hn[1]}
    return {"out": out, "h_n": hn}


# ---------------------------------------------------------------------------------------------
# rnnc and the NumPy reference: the same API
# ---------------------------------------------------------------------------------------------
def _build_numpy_api(ns, case, variant, data, frozen=False):
    mode, x, L = case.mode, data.x, data.lengths
    if frozen and case.kind not in ("forward", "varlen"):
        raise Unavailable("rnnc-frozen: inference cases only (a stream keeps its weights "
                          "anyway; training changes them)")
    if case.kind in ("forward", "varlen"):
        m = _rnnc_layer(ns, case, data.dtype)
        m.load_state_dict(data.state_dict)
        if frozen:
            m.freeze()
        lengths = L if variant == "lengths" else None
        return Runner(lambda: m(x, lengths=lengths),
                      lambda: _states(mode, m(x, lengths=lengths)))
    if case.kind == "stream":
        return _stream_numpy_api(ns, case, data)
    if case.kind == "train":
        if ns is reference:
            return _train_reference(case, data)
        m = _rnnc_layer(ns, case, data.dtype)
        m.load_state_dict(data.state_dict)
        m.train()
        g = data.grad

        def step():
            m.zero_grad()
            m(x)
            return m.backward(g)

        def outputs():
            dx, _, grads = step()
            return {"dx": dx, **{f"grad {k}": v for k, v in grads.items()}}
        return Runner(step, outputs)
    raise ValueError(case.kind)


def _stream_numpy_api(ns, case, data):
    T, H, dt = data.T, data.H, data.dtype
    if case.variant == "cell":
        cell = getattr(ns, f"{case.mode}Cell")(data.I, H, dtype=dt)
        cell.load_state_dict(_cell_state_dict(data.state_dict))
        xs = [data.x[t] for t in range(T)]                     # (1, I) each

        def loop(keep=None):
            h = c = np.zeros((1, H), dt)
            for xt in xs:
                h, c = cell(xt, (h, c))
                if keep is not None:
                    keep.append(h)
            return h, c
    elif ns is rnnc:
        # What a user does: the layer's stepper (rnnc.stream), one (1, I) slice per call.
        m = _rnnc_layer(ns, case, dt)
        m.load_state_dict(data.state_dict)
        s = m.stream(batch_size=1)
        xs = [data.x[t] for t in range(T)]                     # (1, I) each

        def loop(keep=None):
            s.reset()
            for xt in xs:
                y = s.step(xt)
                if keep is not None:
                    keep.append(y)
            h, c = s.state
            return h.reshape(1, H), c.reshape(1, H)
    else:
        # The reference has no stepper: the layer called on (1, 1, I) slices.
        m = _rnnc_layer(ns, case, dt)
        m.load_state_dict(data.state_dict)
        xs = [data.x[t:t + 1] for t in range(T)]               # (1, 1, I) each

        def loop(keep=None):
            hx = (np.zeros((1, 1, H), dt), np.zeros((1, 1, H), dt))
            for xt in xs:
                out, hx = m(xt, hx)
                if keep is not None:
                    keep.append(out[0])
            return hx[0].reshape(1, H), hx[1].reshape(1, H)

    def outputs():
        keep = []
        h, c = loop(keep)
        return {"out": np.stack(keep), "h_n": h, "c_n": c}
    return Runner(loop, outputs, steps=T)


def _train_reference(case, data):
    """Reference training step: reference.run_stack forward, reference_backward BPTT."""
    mode, x, g, params = case.mode, data.x, data.grad, data.state_dict
    opts = dict(num_layers=case.layer.get("num_layers", 1),
                bidirectional=case.layer.get("bidirectional", False),
                proj_size=case.layer.get("proj_size", 0))

    def step():
        reference.run_stack(mode, params, x, None, None, None, **opts)
        return reference_backward.run_stack_backward(mode, params, x, None, None, None, g,
                                                     **opts)

    def outputs():
        dx, _, _, grads = step()
        return {"dx": dx, **{f"grad {k}": v for k, v in grads.items()}}
    return Runner(step, outputs)


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
def _torch_dtype(dtype):
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


def _torch_layer(case, data):
    tm = getattr(torch.nn, case.mode)(data.I, data.H, dtype=_torch_dtype(data.dtype),
                                      **case.layer)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in data.state_dict.items()})
    return tm.eval()


def _np(t):
    return t.detach().numpy()


def _torch_states(mode, result):
    out, hn = result
    if mode == "LSTM":
        return {"out": _np(out), "h_n": _np(hn[0]), "c_n": _np(hn[1])}
    return {"out": _np(out), "h_n": _np(hn)}


def _build_torch(case, variant, data):
    if torch is None:
        raise Unavailable("torch is not installed")
    mode, T, H = case.mode, data.T, data.H
    tx = torch.from_numpy(data.x)
    if case.kind == "forward" or (case.kind == "varlen" and variant == "full"):
        tm = _torch_layer(case, data)

        def call():
            with torch.inference_mode():
                return tm(tx)
        notes = ""
        if case.layer.get("proj_size"):
            notes = "proj_size: oneDNN has no LSTM projection, torch uses its default kernel"
        return Runner(call, lambda: _torch_states(mode, call()), notes=notes)
    if case.kind == "varlen":
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        tm = _torch_layer(case, data)
        tl = torch.from_numpy(data.lengths.astype(np.int64))

        def call():
            with torch.inference_mode():
                packed = pack_padded_sequence(tx, tl, enforce_sorted=False)
                out, hn = tm(packed)
                return pad_packed_sequence(out, total_length=T)[0], hn
        return Runner(call, lambda: _torch_states(mode, call()),
                      notes="pack_padded_sequence(enforce_sorted=False) + pad_packed_sequence")
    if case.kind == "stream":
        tdt = _torch_dtype(data.dtype)
        if case.variant == "cell":
            cell = getattr(torch.nn, f"{mode}Cell")(data.I, H, dtype=tdt).eval()
            cell.load_state_dict({k: torch.from_numpy(v.copy())
                                  for k, v in _cell_state_dict(data.state_dict).items()})
            xs = [tx[t] for t in range(T)]                   # (1, I)

            def loop(keep=None):
                with torch.inference_mode():
                    h = c = torch.zeros((1, H), dtype=tdt)
                    for xt in xs:
                        h, c = cell(xt, (h, c))
                        if keep is not None:
                            keep.append(_np(h))
                    return h, c
        else:
            tm = _torch_layer(case, data)
            xs = [tx[t:t + 1] for t in range(T)]             # (1, 1, I)

            def loop(keep=None):
                with torch.inference_mode():
                    hx = (torch.zeros((1, 1, H), dtype=tdt), torch.zeros((1, 1, H), dtype=tdt))
                    for xt in xs:
                        out, hx = tm(xt, hx)
                        if keep is not None:
                            keep.append(_np(out[0]))
                    return hx[0].reshape(1, H), hx[1].reshape(1, H)

        def outputs():
            keep = []
            h, c = loop(keep)
            return {"out": np.stack(keep), "h_n": _np(h), "c_n": _np(c)}
        return Runner(loop, outputs, steps=T)
    if case.kind == "train":
        tm = _torch_layer(case, data).train()
        txg = torch.from_numpy(data.x.copy()).requires_grad_(True)
        tg = torch.from_numpy(data.grad)

        def step():
            tm.zero_grad(set_to_none=True)
            txg.grad = None
            out, _ = tm(txg)
            out.backward(tg)

        def outputs():
            step()
            grads = {f"grad {k}": _np(p.grad) for k, p in tm.named_parameters()}
            return {"dx": _np(txg.grad), **grads}
        return Runner(step, outputs, notes="input gradient included (x.requires_grad)")
    raise ValueError(case.kind)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: the PyTorch module exported to ONNX
# ---------------------------------------------------------------------------------------------
_EXPORTS = {}       # (case name, model kind, dtype) -> serialized model or Unavailable


def _export(case, data, kind):
    """Export the case's PyTorch module; kind "seq" (whole sequence, input x), "lengths"
    (plus an int32 'lengths' input wired into every RNN node's sequence_lens) or "step"
    (T = 1 with initial states h0, c0). Cached per (case, kind, dtype)."""
    key = (case.name, kind, data.dtype.name)
    if key not in _EXPORTS:
        try:
            _EXPORTS[key] = _export_uncached(case, data, kind)
        except Unavailable as exc:
            _EXPORTS[key] = exc
    got = _EXPORTS[key]
    if isinstance(got, Unavailable):
        raise got
    return got


def _export_uncached(case, data, kind):
    tm = _torch_layer(case, data)
    outs = ["y", "h"] + (["c"] if case.mode == "LSTM" else [])
    if kind == "step":
        tdt = _torch_dtype(data.dtype)
        z = torch.zeros((1, 1, data.H), dtype=tdt)
        args, names = (torch.from_numpy(data.x[:1].copy()), (z, z.clone())), ["x", "h0", "c0"]
    else:
        args, names = (torch.from_numpy(data.x),), ["x"]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet_fds() as log:
            warnings.simplefilter("ignore")   # TracerWarnings about batch sizes in RNN export
            torch.onnx.export(tm, args, buf, dynamo=False, input_names=names,
                              output_names=outs)
    except Exception as exc:  # noqa: BLE001 - the exporter's reason goes in the table
        msg = str(exc).splitlines()[0]
        detail = f"{type(exc).__name__}: {exc}\n{log.getvalue()}"
        if case.layer.get("proj_size"):
            raise Unavailable("torch.onnx.export cannot export LSTM proj_size (the ONNX LSTM "
                              "op has no projection)", detail) from None
        raise Unavailable(f"torch.onnx.export failed: {msg[:120]}", detail) from None
    model = onnx.load_from_string(buf.getvalue())
    if kind == "lengths":
        from onnx import TensorProto, helper
        model.graph.input.append(
            helper.make_tensor_value_info("lengths", TensorProto.INT32, [data.B]))
        n_rnn = 0
        for node in model.graph.node:
            if node.op_type in ("RNN", "GRU", "LSTM"):
                while len(node.input) < 5:
                    node.input.append("")
                node.input[4] = "lengths"         # sequence_lens
                n_rnn += 1
        if not n_rnn:
            raise Unavailable("exported graph has no RNN node to give sequence_lens to")
        onnx.checker.check_model(model)
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_fds():
    """Capture what C++ code writes to file descriptors 1 and 2 (the TorchScript exporter
    prints its whole IR graph when it fails); yields a StringIO filled on exit."""
    captured = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            captured.write(tmp.read().decode(errors="replace"))


def _session(model_bytes, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4           # failures are reported through exceptions
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _probe(case, data, fn):
    """Run once; turn ONNX Runtime's missing-kernel errors into Unavailable."""
    try:
        return fn()
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        msg = str(exc)
        if data.dtype == np.float64 and ("double" in msg or "NOT_IMPLEMENTED" in msg
                                         or "implementation" in msg):
            raise Unavailable("ONNX Runtime has no float64 RNN/GRU/LSTM kernels", msg) from None
        raise


def _build_onnxruntime(case, variant, data, threads):
    if torch is None or ort is None:
        raise Unavailable("onnxruntime (and torch, to export) not installed")
    if case.kind == "train":
        raise Unavailable("onnxruntime InferenceSession does not train")
    if case.kind == "forward" or (case.kind == "varlen" and variant == "full"):
        sess = _probe(case, data, lambda: _session(_export(case, data, "seq"), threads))
        feeds = {"x": data.x}
        call = lambda: sess.run(None, feeds)                           # noqa: E731
        names = ["out", "h_n", "c_n"]
        _probe(case, data, call)
        return Runner(call, lambda: dict(zip(names, call())))
    if case.kind == "varlen":
        sess = _probe(case, data, lambda: _session(_export(case, data, "lengths"), threads))
        feeds = {"x": data.x, "lengths": data.lengths.astype(np.int32)}
        call = lambda: sess.run(None, feeds)                           # noqa: E731
        names = ["out", "h_n", "c_n"]
        _probe(case, data, call)
        return Runner(call, lambda: dict(zip(names, call())),
                      notes="exported graph with an int32 'lengths' input as sequence_lens")
    if case.kind == "stream":
        if case.mode != "LSTM":
            raise Unavailable("stream model only written for LSTM")
        sess = _probe(case, data, lambda: _session(_export(case, data, "step"), threads))
        T, H, dt = data.T, data.H, data.dtype
        xs = [data.x[t:t + 1] for t in range(T)]                      # (1, 1, I)
        _probe(case, data, lambda: sess.run(None, {"x": xs[0], "h0": np.zeros((1, 1, H), dt),
                                                   "c0": np.zeros((1, 1, H), dt)}))

        def loop(keep=None):
            h = np.zeros((1, 1, H), dt)
            c = np.zeros((1, 1, H), dt)
            for xt in xs:
                y, h, c = sess.run(None, {"x": xt, "h0": h, "c0": c})
                if keep is not None:
                    keep.append(y[0])
            return h.reshape(1, H), c.reshape(1, H)

        def outputs():
            keep = []
            h, c = loop(keep)
            return {"out": np.stack(keep), "h_n": h, "c_n": c}
        note = "T=1 LSTM model with h0/c0 inputs" + (" (ONNX has no cell op)"
                                                     if case.variant == "cell" else "")
        return Runner(loop, outputs, steps=T, notes=note)
    raise ValueError(case.kind)


def build(backend, case, variant, data, threads):
    """The Runner of ``backend`` for ``case`` ("variant": "lengths" | "full" for varlen cases,
    "" otherwise), or Unavailable."""
    if backend == "rnnc":
        return _build_numpy_api(rnnc, case, variant, data)
    if backend == "rnnc-frozen":
        return _build_numpy_api(rnnc, case, variant, data, frozen=True)
    if backend == "reference":
        return _build_numpy_api(reference, case, variant, data)
    if backend == "torch":
        return _build_torch(case, variant, data)
    if backend == "onnxruntime":
        return _build_onnxruntime(case, variant, data, threads)
    raise ValueError(f"unknown backend {backend!r}")


def set_threads(n):
    """n threads for every backend that has a global setting (ONNX Runtime: per session)."""
    rnnc.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def get_threads():
    got = {"rnnc": rnnc.get_num_threads()}
    if torch is not None:
        got["torch"] = torch.get_num_threads()
    return got
