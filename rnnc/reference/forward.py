"""Plain NumPy reference implementation of rnnc's recurrent networks.

This module is the project's specification and test oracle.  It is written
straight from the equations, favouring clarity over speed: explicit loops over
time steps, one gate equation per line, and comments naming PyTorch's gate
order.  Its semantics mirror ``torch.nn.RNN`` / ``torch.nn.GRU`` /
``torch.nn.LSTM`` (including packed variable-length sequences), plus two
extensions PyTorch does not have: GRU with ``reset_after=False`` (the original
Cho et al. formulation) and ``reverse_all`` (every layer runs backwards in
time, as the backward layer of a Keras-style ``Bidirectional`` wrapper).

Conventions
-----------
* Batch-first is NOT used: sequences are time-major, ``x`` has shape (T, B, I).
* Weights use PyTorch's layout: ``y = x @ W.T + b``.
* All computation happens in the floating dtype of the inputs (float32 or
  float64); nothing is upcast or downcast, so results have the input dtype.

This module imports only NumPy, nothing from the rest of rnnc. The classes of rnnc.reference
give it the same API as rnnc's compiled classes.
"""

import numpy as np

__all__ = ["sigmoid", "rnn_cell", "gru_cell", "lstm_cell", "run_stack", "prepare_stack_args"]

_MODES = ("RNN", "GRU", "LSTM")


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------

def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), in the dtype of ``x``.

    For very negative x, exp(-x) overflows to inf and the result is exactly
    0, which is the correct limit; the overflow warning is silenced.
    """
    x = np.asarray(x)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def _activation(nonlinearity):
    if nonlinearity == "tanh":
        return np.tanh
    if nonlinearity == "relu":
        return lambda v: np.maximum(v, 0)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


# Activations by ONNX name, with parameters alpha (a) and beta (b) where they take them (the
# formulas of ONNX's operator documentation; Keras' names are translated by the callers).
_FUNCTIONS = {
    "Tanh": lambda v, a, b: np.tanh(v),
    "Sigmoid": lambda v, a, b: sigmoid(v),
    "Relu": lambda v, a, b: np.maximum(v, 0),
    "HardSigmoid": lambda v, a, b: np.clip(a * v + b, 0, 1),
    "Affine": lambda v, a, b: a * v + b,
    "LeakyRelu": lambda v, a, b: np.where(v >= 0, v, a * v),
    "ThresholdedRelu": lambda v, a, b: np.where(v > a, v, 0),
    "ScaledTanh": lambda v, a, b: a * np.tanh(b * v),
    "Elu": lambda v, a, b: np.where(v >= 0, v, a * np.expm1(np.minimum(v, 0))),
    "Softsign": lambda v, a, b: v / (1 + np.abs(v)),
    "Softplus": lambda v, a, b: np.logaddexp(0, v),
}


def apply_activation(triple, v):
    """The activation ``triple`` = (ONNX name, alpha, beta) of v, in v's dtype."""
    name, a, b = triple
    with np.errstate(over="ignore"):
        return np.asarray(_FUNCTIONS[name](v, a, b)).astype(v.dtype, copy=False)


def clip_pre(v, clip):
    """ONNX's cell clip: pre-activations bounded to [-clip, clip] (None: unchanged)."""
    return v if clip is None else np.clip(v, -clip, clip)


class CellOptions:
    """The options of the cells beyond PyTorch's: activations (f, g, h) as triples (ONNX name,
    alpha, beta) -- f the gates', g the candidate's, h the LSTM output's; RNN uses f only --,
    cell clip (None or > 0) and LSTM's coupled input and forget gates. Peepholes are a
    parameter (``w_p``), not an option. ``None`` of the cells means PyTorch's cell."""

    def __init__(self, activations, clip=None, input_forget=False):
        self.activations = tuple(tuple(a) for a in activations)
        self.clip = clip
        self.input_forget = bool(input_forget)

    def act(self, k, v):
        """Activation number k (0: f, 1: g, 2: h) of the clipped pre-activation v."""
        return apply_activation(self.activations[k], clip_pre(v, self.clip))


def _options(activations, clip, input_forget, mode, nonlinearity):
    """A CellOptions for run_stack's arguments, or None for PyTorch's cells."""
    if activations is None and clip is None and not input_forget:
        return None
    if activations is None:
        activations = ([("Relu" if nonlinearity == "relu" else "Tanh", 0.0, 0.0)]
                       if mode == "RNN" else
                       [("Sigmoid", 0.0, 0.0), ("Tanh", 0.0, 0.0), ("Tanh", 0.0, 0.0)])
    if input_forget and mode != "LSTM":
        raise ValueError("input_forget is an LSTM option")
    return CellOptions(activations, clip, input_forget)


def _affine(v, w, b):
    """v @ w.T (+ b if b is not None)."""
    out = v @ w.T
    if b is not None:
        out = out + b
    return out


_PYTORCH_GATED = CellOptions([("Sigmoid", 0.0, 0.0), ("Tanh", 0.0, 0.0), ("Tanh", 0.0, 0.0)])


# ---------------------------------------------------------------------------
# Single-step cells
# ---------------------------------------------------------------------------

def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", options=None):
    """One Elman step. x (B, I), h (B, H) -> h' (B, H). h' = g(x W_ih^T + b_ih + h W_hh^T + b_hh).

    ``nonlinearity`` g is "tanh" or "relu"; with ``options`` (CellOptions), g is its first
    activation, of the pre-activation clipped to [-clip, clip].
    Shapes: w_ih (H, I), w_hh (H, H), b_ih (H,), b_hh (H,).
    """
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if options is not None:
        return options.act(0, a)
    return _activation(nonlinearity)(a)


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True, options=None):
    """One GRU step, gate order r, z, n (rows of w_ih/w_hh are [W_r; W_z; W_n], each H rows).

    reset_after=True (PyTorch): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    reset_after=False (original Cho et al.; ONNX linear_before_reset=0; Keras reset_after=False):
        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    h' = (1 - z) * n + z * h.
    With ``options`` (CellOptions): r and z use its activation f, n its activation g, each of
    the pre-activation clipped to [-clip, clip] (ONNX's GRU).

    Shapes: x (B, I), h (B, H), w_ih (3H, I), w_hh (3H, H), b_ih (3H,), b_hh (3H,).
    """
    if options is None:
        options = _PYTORCH_GATED
    H = h.shape[-1]
    # Split the stacked weights into PyTorch's gate order: reset, update, new.
    W_ir, W_iz, W_in = w_ih[0:H], w_ih[H:2 * H], w_ih[2 * H:3 * H]
    W_hr, W_hz, W_hn = w_hh[0:H], w_hh[H:2 * H], w_hh[2 * H:3 * H]
    if b_ih is not None:
        b_ir, b_iz, b_in = b_ih[0:H], b_ih[H:2 * H], b_ih[2 * H:3 * H]
    else:
        b_ir = b_iz = b_in = None
    if b_hh is not None:
        b_hr, b_hz, b_hn = b_hh[0:H], b_hh[H:2 * H], b_hh[2 * H:3 * H]
    else:
        b_hr = b_hz = b_hn = None

    # r: reset gate
    r = options.act(0, _affine(x, W_ir, b_ir) + _affine(h, W_hr, b_hr))
    # z: update gate
    z = options.act(0, _affine(x, W_iz, b_iz) + _affine(h, W_hz, b_hz))
    # n: candidate ("new") state
    if reset_after:
        # PyTorch / cuDNN: reset applied after the hidden matmul (and its bias).
        n = options.act(1, _affine(x, W_in, b_in) + r * _affine(h, W_hn, b_hn))
    else:
        # Cho et al. 2014: reset applied to h before the hidden matmul.
        n = options.act(1, _affine(x, W_in, b_in) + _affine(r * h, W_hn, b_hn))
    # Interpolate between the candidate and the previous state.
    return (1 - z) * n + z * h


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, w_p=None, options=None):
    """One LSTM step, gate order i, f, g, o. c' = f*c + i*g; h' = o * tanh(c');

    with a projection w_hr (P, H): h' = (o * tanh(c')) @ w_hr.T, h has shape (B, P), c (B, H).
    With peepholes w_p (3H,) = [p_i, p_f, p_o] (ONNX's P in rnnc's order): p_i * c and p_f * c
    join the pre-activations of i and f, p_o * c' that of o. With ``options`` (CellOptions):
    i, f, o use its activation f, the candidate its g and the output its h (tanh(c') above),
    every gate's pre-activation clipped to [-clip, clip] (c' itself is not clipped), and with
    input_forget the forget gate is 1 - i (ONNX's LSTM; ONNX Runtime computes the same).

    Shapes: x (B, I), h (B, P) (P = H without projection), c (B, H),
    w_ih (4H, I), w_hh (4H, P), b_ih (4H,), b_hh (4H,).
    Returns (h', c').
    """
    H = c.shape[-1]
    if options is None:
        options = _PYTORCH_GATED
    # Pre-activations of all four gates, stacked as [i; f; g; o].
    gates = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    a_i, a_f, a_o = gates[:, 0:H], gates[:, H:2 * H], gates[:, 3 * H:4 * H]
    if w_p is not None:
        a_i = a_i + w_p[0:H] * c
        a_f = a_f + w_p[H:2 * H] * c
    i = options.act(0, a_i)                     # input gate
    if options.input_forget:
        f = 1 - i                               # coupled forget gate
    else:
        f = options.act(0, a_f)                 # forget gate
    g = options.act(1, gates[:, 2 * H:3 * H])  # cell candidate
    c_new = f * c + i * g
    if w_p is not None:
        a_o = a_o + w_p[2 * H:3 * H] * c_new
    o = options.act(0, a_o)                     # output gate
    h_new = o * apply_activation(options.activations[2], c_new)
    if w_hr is not None:
        # Projection (PyTorch proj_size > 0): no bias, no nonlinearity.
        h_new = h_new @ w_hr.T
    return h_new, c_new


# ---------------------------------------------------------------------------
# Stacked, optionally bidirectional, variable-length network
# ---------------------------------------------------------------------------

def _step(mode, p, xt, h, c, nonlinearity, reset_after, options=None):
    """One full-batch step of the given mode. Returns (h_new, c_new); c_new is None unless LSTM."""
    if mode == "RNN":
        h_new = rnn_cell(xt, h, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                         nonlinearity=nonlinearity, options=options)
        c_new = None
    elif mode == "GRU":
        h_new = gru_cell(xt, h, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                         reset_after=reset_after, options=options)
        c_new = None
    else:  # LSTM
        h_new, c_new = lstm_cell(xt, h, c, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                 w_hr=p["w_hr"], w_p=p.get("w_p"), options=options)
    return h_new, c_new


def _run_direction(mode, p, x, h0, c0, lengths, reverse, nonlinearity, reset_after,
                   options=None):
    """Run one layer in one time direction.

    p: dict with keys "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_p" (None when absent).
    options: None (PyTorch's cells) or a CellOptions.
    x: (T, B, I_layer). h0: (B, P). c0: (B, H) or None. lengths: int array (B,).
    Returns out (T, B, P), h_n (B, P), c_n (B, H) or None.
    """
    T, B = x.shape[0], x.shape[1]
    P = h0.shape[-1]
    out = np.zeros((T, B, P), dtype=h0.dtype)
    h = h0
    c = c0

    # Forward direction: t = 0, 1, ..., T-1.
    # Reverse direction: t = T-1, ..., 0.  Sequence b is inactive while
    # t >= lengths[b], so its state stays at h0 until t = lengths[b] - 1,
    # i.e. the reverse direction effectively starts at its own last step.
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        active = t < lengths          # (B,) bool: does sequence b run at step t?
        xt = x[t]
        # The step is computed for the full batch, padding included; padding may hold
        # NaN/inf/huge values, so floating-point warnings are silenced here.  Those rows
        # are discarded by np.where below and never reach the results.
        with np.errstate(over="ignore", invalid="ignore"):
            h_new, c_new = _step(mode, p, xt, h, c, nonlinearity, reset_after, options)
        # np.where (not mask multiplication) so that NaN/inf in padding can never leak.
        h = np.where(active[:, None], h_new, h)
        if c is not None:
            c = np.where(active[:, None], c_new, c)
        out[t] = np.where(active[:, None], h, 0)
    return out, h, c


def prepare_stack_args(mode, params, x, h0, c0, lengths, num_layers, bidirectional,
                       nonlinearity, proj_size, reverse_all):
    """Check run_stack's arguments and fill in the defaults (zero states, full lengths).

    Returns x, h0, c0 (None unless LSTM), lengths (int64) and the sizes (T, B, D, H, P).
    Shared with rnnc.reference.backward, which takes the same arguments.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if reverse_all and bidirectional:
        raise ValueError("reverse_all=True requires bidirectional=False")
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size > 0 is only supported for LSTM")
    _activation(nonlinearity)  # validate early

    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got {x.shape}")
    T, B = x.shape[0], x.shape[1]
    dtype = x.dtype
    D = 2 if bidirectional else 1
    L = num_layers

    # Hidden size H from the first hidden-hidden weight, whose shape is (n_gates*H, P).
    n_gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    H = params["weight_hh_l0"].shape[0] // n_gates
    P = proj_size if proj_size else H

    if h0 is None:
        h0 = np.zeros((D * L, B, P), dtype=dtype)
    h0 = np.asarray(h0)
    if h0.shape != (D * L, B, P):
        raise ValueError(f"h0 must have shape {(D * L, B, P)}, got {h0.shape}")
    if mode == "LSTM":
        if c0 is None:
            c0 = np.zeros((D * L, B, H), dtype=dtype)
        c0 = np.asarray(c0)
        if c0.shape != (D * L, B, H):
            raise ValueError(f"c0 must have shape {(D * L, B, H)}, got {c0.shape}")
    else:
        c0 = None

    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths).astype(np.int64)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if np.any(lengths < 0) or np.any(lengths > T):
        raise ValueError(f"lengths must satisfy 0 <= lengths <= T={T}")
    return x, h0, c0, lengths, (T, B, D, H, P)


def run_stack(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1, bidirectional=False,
              nonlinearity="tanh", reset_after=True, proj_size=0, reverse_all=False,
              activations=None, clip=None, input_forget=False):
    """Run a stacked (optionally bidirectional) recurrent network like torch.nn.RNN/GRU/LSTM.

    mode: "RNN" | "GRU" | "LSTM".
    params: dict with PyTorch's state_dict names and shapes: weight_ih_l{k}, weight_hh_l{k},
        bias_ih_l{k}, bias_hh_l{k} (absent when bias=False), weight_hr_l{k} (LSTM with proj_size>0),
        each with suffix "_reverse" for the backward direction.
    x: (T, B, I) time-major. h0: (D*L, B, P) where P = proj_size or hidden_size; c0: (D*L, B, H) for LSTM.
        Layer/direction index in h0 is k*D + d, as in PyTorch.
        (h0=None / c0=None mean zero initial states.)
    lengths: None (all sequences have length T) or an int array (B,) with 0 <= lengths[b] <= T.
        Semantics of PyTorch packed sequences: sequence b only runs on steps t < lengths[b]; the forward
        direction runs t = 0..len-1; the reverse direction starts at t = len-1 (its own last step) and runs
        down to 0; output positions t >= lengths[b] are exactly 0; h_n/c_n hold each sequence's state after
        its own last processed step. A length of 0 gives an all-zero output and h_n == h0 (c_n == c0).
        Padding content (x[t, b] for t >= lengths[b]) must never influence anything, even if it is NaN.
    reverse_all: if True, every layer runs only in the reverse time direction (used for a Keras-style
        Bidirectional wrapper's backward layer; only meaningful with bidirectional=False). Same length
        semantics as the reverse direction above. Parameters are then looked up WITHOUT the
        "_reverse" suffix (weight_ih_l{k}, ...), since there is only one direction.
    Layer k > 0 takes as input the concatenation [forward, reverse] of layer k-1's outputs (D*P features).
    activations, clip, input_forget: the cell options (see CellOptions; None, None, False are
        PyTorch's cells, and ``nonlinearity`` then chooses RNN's). An LSTM with parameters
        weight_p_l{k} (3H,) has peepholes (see lstm_cell).
    Returns (out (T, B, D*P), h_n (D*L, B, P), c_n (D*L, B, H) or None for RNN/GRU).
    """
    options = _options(activations, clip, input_forget, mode, nonlinearity)
    x, h0, c0, lengths, (T, B, D, H, P) = prepare_stack_args(
        mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity, proj_size,
        reverse_all)
    dtype, L = x.dtype, num_layers

    h_n = np.zeros((D * L, B, P), dtype=dtype)
    c_n = np.zeros((D * L, B, H), dtype=dtype) if mode == "LSTM" else None

    layer_input = x
    for k in range(L):
        direction_outputs = []
        for d in range(D):
            # d = 0: the forward direction (or, with reverse_all, the only direction, run backwards).
            # d = 1: the reverse direction of a bidirectional network.
            suffix = "_reverse" if d == 1 else ""
            p = {
                "w_ih": params[f"weight_ih_l{k}{suffix}"],
                "w_hh": params[f"weight_hh_l{k}{suffix}"],
                "b_ih": params.get(f"bias_ih_l{k}{suffix}"),   # None when bias=False
                "b_hh": params.get(f"bias_hh_l{k}{suffix}"),
                "w_hr": params[f"weight_hr_l{k}{suffix}"] if proj_size else None,
                "w_p": params.get(f"weight_p_l{k}{suffix}"),   # LSTM peepholes, or None
            }
            reverse = (d == 1) or reverse_all
            idx = k * D + d   # PyTorch's layer/direction index into h0, c0, h_n, c_n
            out_d, h_d, c_d = _run_direction(
                mode, p, layer_input, h0[idx], c0[idx] if mode == "LSTM" else None,
                lengths, reverse, nonlinearity, reset_after, options)
            direction_outputs.append(out_d)
            h_n[idx] = h_d
            if mode == "LSTM":
                c_n[idx] = c_d
        # Next layer's input: [forward, reverse] features concatenated.
        layer_input = np.concatenate(direction_outputs, axis=2)

    return layer_input, h_n, c_n
