"""The benchmark grid: which networks, shapes and workloads the suite times.

A ``Case`` is one workload. ``kind`` says what is timed:

* ``forward``  inference over a whole (T, B, I) sequence;
* ``varlen``   inference on a padded batch with lengths drawn uniformly from [1, T], timed
               together with the same batch at full length (two table rows, and their cost
               ratio);
* ``stream``   one time step per call with the state carried between calls (B = 1); T steps per
               timed call, reported in microseconds per step. ``variant`` "layer": rnnc steps
               the layer's stream (``layer.stream()``), the reference calls the layer on
               (1, 1, I) slices, PyTorch and ONNX Runtime run a T = 1 model with the state
               passed in and out; "cell": the single-step cell (ONNX: the T = 1 model);
* ``train``    one training step: zero the gradients, forward, backward of a fixed output
               gradient (input gradient included).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    kind: str                   # forward | varlen | stream | train
    mode: str                   # RNN | GRU | LSTM
    B: int
    H: int
    T: int
    I: int = 0                  # input size; 0 means I = H
    layer: dict = field(default_factory=dict, hash=False, compare=False)  # num_layers, ...
    dtypes: tuple = ("float32", "float64")
    variant: str = ""           # stream: "layer" | "cell"

    @property
    def input_size(self):
        return self.I or self.H

    @property
    def name(self):
        shape = f"B{self.B}" + (f" I{self.I}" if self.I else "") + f" H{self.H}"
        if self.layer.get("proj_size"):
            shape += f" P{self.layer['proj_size']}"
        shape += f" T{self.T}"
        extra = []
        if self.layer.get("num_layers", 1) > 1:
            extra.append(f"{self.layer['num_layers']}-layer")
        if self.layer.get("bidirectional"):
            extra.append("bidir")
        label = f"{self.mode} {shape}" + "".join(f" {e}" for e in extra)
        if self.kind == "varlen":
            return f"{label} lengths~U[1,{self.T}]"
        if self.kind == "stream":
            cls = "LSTMCell" if self.variant == "cell" else f"{self.mode} layer"
            return f"stream {cls} B{self.B} H{self.H} ({self.T} steps)"
        if self.kind == "train":
            return f"train {label}"
        return label

    @property
    def unit(self):
        return "us/step" if self.kind == "stream" else "ms"


SHAPES = [(1, 32, 1000), (1, 64, 100), (1, 256, 100), (16, 128, 100), (64, 256, 50),
          (64, 512, 50), (256, 256, 20), (8, 1024, 20)]

GRID = [Case("forward", mode, B, H, T) for mode in ("RNN", "GRU", "LSTM") for B, H, T in SHAPES]
GRID += [
    Case("forward", "LSTM", 16, 256, 100, layer={"num_layers": 2, "bidirectional": True}),
    Case("forward", "LSTM", 16, 128, 100, I=40),
    Case("forward", "LSTM", 16, 256, 100, layer={"proj_size": 128}),
    Case("varlen", "LSTM", 64, 256, 50),
    Case("varlen", "GRU", 64, 256, 50),
    Case("stream", "LSTM", 1, 128, 100, variant="layer"),
    Case("stream", "LSTM", 1, 128, 100, variant="cell"),
    Case("train", "LSTM", 16, 128, 100, dtypes=("float32",)),
    Case("train", "LSTM", 64, 256, 50, dtypes=("float32",)),
]

# The subset of ``quick()``: one case of each kind, small enough for well under a minute.
QUICK = [
    Case("forward", "LSTM", 1, 64, 100),
    Case("forward", "GRU", 16, 128, 100),
    Case("forward", "RNN", 64, 256, 50),
    Case("varlen", "LSTM", 64, 128, 50),
    Case("stream", "LSTM", 1, 128, 100, variant="layer"),
    Case("train", "LSTM", 16, 128, 100, dtypes=("float32",)),
]


def select(cases, substrings=None, kinds=None):
    """Cases whose name contains any of ``substrings`` (case-insensitive) and whose kind is in
    ``kinds`` (None: no filter)."""
    out = []
    for c in cases:
        if kinds and c.kind not in kinds:
            continue
        if substrings and not any(s.lower() in c.name.lower() for s in substrings):
            continue
        out.append(c)
    return out
