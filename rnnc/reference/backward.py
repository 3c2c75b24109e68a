"""Plain NumPy reference of backpropagation through time (BPTT) for rnnc's recurrent networks.

This module is the test oracle for the compiled backward pass, as ``rnnc.reference`` is for the
forward pass.  It differentiates exactly ``reference.run_stack`` (plus optional inter-layer
dropout masks, see ``run_stack_dropout``) and is written from the equations, one gradient formula
per line, favouring clarity over speed.

Method
------
For every layer (top to bottom) and every direction, the forward pass of that layer/direction is
recomputed step by step, keeping per-step caches (previous states, gate activations).  The steps
are then walked in the opposite order of the forward, carrying the gradient of the recurrent
state(s).  Like the forward, every step is computed for the full batch and ``active = t <
lengths`` selects the rows that really run, with ``np.where``:

* a row that is inactive at step t kept its state unchanged in the forward, so its state gradient
  passes through the step unchanged, and the step contributes nothing to dx or to the weights;
* padded outputs are constant zeros, so ``grad_out`` at t >= lengths[b] is ignored (even NaN);
* padded inputs (even NaN) never enter the caches: they are replaced by 0 before the recompute,
  so every cached quantity is finite and no NaN can leak into a weight gradient through a
  zero-times-NaN product.

Notation (row vectors, PyTorch's weight layout y = x @ W.T + b): for a step with input x (B, I),
previous state h (B, P) and upstream gradient dh' = dL/dh' (B, P),
    y = x @ W.T + b   =>   dL/dx = dy @ W,   dL/dW += dy.T @ x,   dL/db += sum_rows(dy).
``*`` is the elementwise product, sigma the logistic function, sigma' = sigma * (1 - sigma),
tanh' = 1 - tanh^2.

The math imports only NumPy and the forward functions of ``rnnc.reference.forward``.
"""

import numpy as np

from rnnc.reference import forward as _ref

__all__ = ["run_stack_backward", "run_stack_dropout"]

_LOCAL_TO_TORCH = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                   "w_hr": "weight_hr", "w_p": "weight_p"}


# Argument checks and defaults: reference.prepare_stack_args, shared with the forward.
_prepare = _ref.prepare_stack_args


def _check_masks(dropout_masks, num_layers, T, B, D, P, dtype):
    """None, or a list of num_layers - 1 arrays of shape (T, B, D*P) (converted to dtype)."""
    if dropout_masks is None:
        return None
    masks = list(dropout_masks)
    if len(masks) != num_layers - 1:
        raise ValueError(f"dropout_masks must hold num_layers - 1 = {num_layers - 1} arrays, "
                         f"got {len(masks)}")
    out = []
    for k, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape != (T, B, D * P):
            raise ValueError(f"dropout_masks[{k}] must have shape {(T, B, D * P)}, got {m.shape}")
        out.append(m.astype(dtype, copy=False))
    return out


def _layer_params(params, k, d, proj_size):
    """Local parameter dict of layer k, direction d, and the state_dict name of each entry."""
    suffix = "_reverse" if d == 1 else ""
    names = {local: f"{torch_name}_l{k}{suffix}" for local, torch_name in _LOCAL_TO_TORCH.items()}
    p = {
        "w_ih": params[names["w_ih"]],
        "w_hh": params[names["w_hh"]],
        "b_ih": params.get(names["b_ih"]),   # None when bias=False
        "b_hh": params.get(names["b_hh"]),
        "w_hr": params[names["w_hr"]] if proj_size else None,
        "w_p": params.get(names["w_p"]),     # LSTM peepholes, or None
    }
    return p, names


# ---------------------------------------------------------------------------
# Forward with dropout masks between layers
# ---------------------------------------------------------------------------

def run_stack_dropout(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1,
                      bidirectional=False, nonlinearity="tanh", reset_after=True, proj_size=0,
                      reverse_all=False, dropout_masks=None, activations=None, clip=None,
                      input_forget=False):
    """reference.run_stack with inter-layer dropout given as explicit masks.

    dropout_masks: None (identical to reference.run_stack), or a list of num_layers - 1 arrays
    of shape (T, B, D*P); mask k multiplies layer k's output elementwise before layer k + 1 uses
    it as input (inverted dropout: entries are 0 or 1/(1-p)). The returned ``out`` (the top
    layer's output) and h_n / c_n are never masked, as in PyTorch.
    activations, clip, input_forget: the cell options, as reference.run_stack takes them.
    """
    if dropout_masks is None:
        return _ref.run_stack(mode, params, x, h0, c0, lengths, num_layers=num_layers,
                              bidirectional=bidirectional, nonlinearity=nonlinearity,
                              reset_after=reset_after, proj_size=proj_size,
                              reverse_all=reverse_all, activations=activations, clip=clip,
                              input_forget=input_forget)
    options = _ref._options(activations, clip, input_forget, mode, nonlinearity)
    x, h0, c0, lengths, (T, B, D, H, P) = _prepare(
        mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity, proj_size,
        reverse_all)
    masks = _check_masks(dropout_masks, num_layers, T, B, D, P, x.dtype)
    layer_inputs, out, h_n, c_n = _stack_forward(
        mode, params, x, h0, c0, lengths, num_layers, D, nonlinearity, reset_after, proj_size,
        reverse_all, masks, options)
    return out, h_n, c_n


def _stack_forward(mode, params, x, h0, c0, lengths, L, D, nonlinearity, reset_after, proj_size,
                   reverse_all, masks, options=None):
    """Layer loop of reference.run_stack with masks. Returns the input of every layer, the
    top output, h_n and c_n."""
    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0) if c0 is not None else None
    layer_inputs = []
    layer_input = x
    for k in range(L):
        if k > 0 and masks is not None:
            layer_input = layer_input * masks[k - 1]   # dropout on the previous layer's output
        layer_inputs.append(layer_input)
        outs = []
        for d in range(D):
            p, _ = _layer_params(params, k, d, proj_size)
            idx = k * D + d
            out_d, h_d, c_d = _ref._run_direction(
                mode, p, layer_input, h0[idx], None if c0 is None else c0[idx], lengths,
                (d == 1) or reverse_all, nonlinearity, reset_after, options)
            outs.append(out_d)
            h_n[idx] = h_d
            if c_n is not None:
                c_n[idx] = c_d
        layer_input = np.concatenate(outs, axis=2)
    return layer_inputs, layer_input, h_n, c_n


# ---------------------------------------------------------------------------
# Single-step cells: forward keeping a cache, and backward
# ---------------------------------------------------------------------------
# Each *_forward(p, x, h, c, ...) returns (h', c' or None, cache); each *_backward(p, cache, dh',
# dc') returns (dx, dh, dc or None, grads) where grads maps "w_ih", "w_hh", ("b_ih", "b_hh",
# "w_hr") to this step's contribution.  Bias gradients are only reported when the bias exists.

def _bias_grads(p, g, db_ih, db_hh):
    if p["b_ih"] is not None:
        g["b_ih"] = db_ih
    if p["b_hh"] is not None:
        g["b_hh"] = db_hh
    return g


def _grad_activation(triple, v, y):
    """f'(v) of the activation ``triple`` (ONNX name, alpha, beta) at v, where y = f(v)."""
    name, a, b = triple
    one = np.ones_like(v)
    if name == "Tanh":
        return 1 - y * y                          # tanh' = 1 - tanh^2
    if name == "Sigmoid":
        return y * (1 - y)                        # sigma' = sigma (1 - sigma)
    if name == "Relu":
        return np.where(v > 0, one, 0)            # 0 at v == 0, like PyTorch
    if name == "HardSigmoid":
        u = a * v + b
        return np.where((u > 0) & (u < 1), a * one, 0)
    if name == "Affine":
        return a * one
    if name == "LeakyRelu":
        return np.where(v >= 0, one, a * one)
    if name == "ThresholdedRelu":
        return np.where(v > a, one, 0)
    if name == "ScaledTanh":
        t = np.tanh(b * v)
        return a * b * (1 - t * t)
    if name == "Elu":
        return np.where(v >= 0, one, y + a)       # a (e^v - 1) + a = a e^v
    if name == "Softsign":
        return 1 / ((1 + np.abs(v)) ** 2)
    if name == "Softplus":
        return _ref.sigmoid(v)
    raise ValueError(f"unknown activation {name!r}")


def _act(options, k, a):
    """Activation k of the options of pre-activation a: (value, d value / d a), the clip
    included (its derivative is 1 inside [-clip, clip], 0 outside)."""
    v = _ref.clip_pre(a, options.clip)
    y = _ref.apply_activation(options.activations[k], v)
    dy = _grad_activation(options.activations[k], v, y).astype(a.dtype, copy=False)
    if options.clip is not None:
        dy = np.where(np.abs(a) <= options.clip, dy, 0).astype(a.dtype, copy=False)
    return y, dy


def _rnn_forward(p, x, h, c, nonlinearity, reset_after, options):
    # a = x W_ih^T + b_ih + h W_hh^T + b_hh;   h' = act(a)
    a = _ref._affine(x, p["w_ih"], p["b_ih"]) + _ref._affine(h, p["w_hh"], p["b_hh"])
    if options is None:
        options = _ref.CellOptions([("Relu" if nonlinearity == "relu" else "Tanh", 0.0, 0.0)])
    h_new, dact = _act(options, 0, a)
    return h_new, None, dict(x=x, h=h, dact=dact)


def _rnn_backward(p, cache, dh_new, dc_new):
    x, h = cache["x"], cache["h"]
    da = dh_new * cache["dact"]           # e.g. tanh'(a) = 1 - h'^2; relu'(a) = [a > 0]
    dx = da @ p["w_ih"]                   # dL/dx = da W_ih
    dh = da @ p["w_hh"]                   # dL/dh = da W_hh
    g = {"w_ih": da.T @ x,                # dL/dW_ih = da^T x
         "w_hh": da.T @ h}                # dL/dW_hh = da^T h
    db = da.sum(axis=0)                   # dL/db_ih = dL/db_hh = sum over the batch of da
    return dx, dh, None, _bias_grads(p, g, db, db)


def _gru_forward(p, x, h, c, nonlinearity, reset_after, options):
    H = h.shape[-1]
    options = options or _ref._PYTORCH_GATED
    # Input contributions (B, 3H): [W_ir x + b_ir, W_iz x + b_iz, W_in x + b_in].
    gi = _ref._affine(x, p["w_ih"], p["b_ih"])
    w_hh, b_hh = p["w_hh"], p["b_hh"]
    # Hidden contributions of r and z: W_hr h + b_hr, W_hz h + b_hz.
    gh_rz = _ref._affine(h, w_hh[:2 * H], None if b_hh is None else b_hh[:2 * H])
    r, dr_da = _act(options, 0, gi[:, :H] + gh_rz[:, :H])            # reset gate
    z, dz_da = _act(options, 0, gi[:, H:2 * H] + gh_rz[:, H:2 * H])  # update gate
    b_hn = None if b_hh is None else b_hh[2 * H:]
    if reset_after:
        hn = _ref._affine(h, w_hh[2 * H:], b_hn)           # W_hn h + b_hn
        n, dn_da = _act(options, 1, gi[:, 2 * H:] + r * hn)
    else:
        hn = None
        n, dn_da = _act(options, 1, gi[:, 2 * H:] + _ref._affine(r * h, w_hh[2 * H:], b_hn))
    h_new = (1 - z) * n + z * h
    return h_new, None, dict(x=x, h=h, r=r, z=z, n=n, hn=hn, reset_after=reset_after,
                             dr_da=dr_da, dz_da=dz_da, dn_da=dn_da)


def _gru_backward(p, cache, dh_new, dc_new):
    x, h, r, z, n = cache["x"], cache["h"], cache["r"], cache["z"], cache["n"]
    H = h.shape[-1]
    w_hh = p["w_hh"]
    # h' = (1 - z) * n + z * h
    dn = dh_new * (1 - z)                 # dL/dn = dh' * (1 - z)
    dz = dh_new * (h - n)                 # dL/dz = dh' * (h - n)
    dh = dh_new * z                       # direct path h -> h'
    da_n = dn * cache["dn_da"]            # n = g(a_n): dL/da_n = dn * g'(a_n) (1 - n^2 for tanh)
    da_z = dz * cache["dz_da"]            # z = f(a_z): dL/da_z = dz * f'(a_z) (z (1 - z))
    if cache["reset_after"]:
        # a_n = W_in x + b_in + r * hn,  hn = W_hn h + b_hn
        hn = cache["hn"]
        dr = da_n * hn                    # dL/dr = da_n * hn
        dhn = da_n * r                    # dL/dhn = da_n * r
        da_r = dr * cache["dr_da"]        # r = f(a_r)
        # Pre-activation gradients of the hidden-hidden affine map [r; z; hn].
        dgh = np.concatenate([da_r, da_z, dhn], axis=1)
        dw_hh = dgh.T @ h                 # dL/dW_hh = dgh^T h (all three blocks see h)
        dh = dh + dgh @ w_hh              # dL/dh += dgh W_hh
    else:
        # a_n = W_in x + b_in + W_hn (r * h) + b_hn
        drh = da_n @ w_hh[2 * H:]         # dL/d(r*h) = da_n W_hn
        dr = drh * h                      # dL/dr = dL/d(r*h) * h
        da_r = dr * cache["dr_da"]        # r = f(a_r)
        dgh = np.concatenate([da_r, da_z, da_n], axis=1)
        dw_hh = np.concatenate([
            dgh[:, :2 * H].T @ h,         # dL/dW_hr, dL/dW_hz = da^T h
            da_n.T @ (r * h),             # dL/dW_hn = da_n^T (r * h)
        ], axis=0)
        dh = (dh + dgh[:, :2 * H] @ w_hh[:2 * H]   # through a_r and a_z
              + drh * r)                            # through r * h
    # Input-hidden affine map: all three pre-activations [a_r, a_z, a_n] are linear in W_ih x.
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)
    dx = dgi @ p["w_ih"]                  # dL/dx = dgi W_ih
    g = {"w_ih": dgi.T @ x, "w_hh": dw_hh}
    return dx, dh, None, _bias_grads(p, g, dgi.sum(axis=0), dgh.sum(axis=0))


def _lstm_forward(p, x, h, c, nonlinearity, reset_after, options):
    H = c.shape[-1]
    options = options or _ref._PYTORCH_GATED
    w_p = p.get("w_p")
    gates = _ref._affine(x, p["w_ih"], p["b_ih"]) + _ref._affine(h, p["w_hh"], p["b_hh"])
    a_i, a_f, a_o = gates[:, 0:H], gates[:, H:2 * H], gates[:, 3 * H:4 * H]
    if w_p is not None:                      # peepholes on the previous cell state
        a_i = a_i + w_p[0:H] * c
        a_f = a_f + w_p[H:2 * H] * c
    i, di_da = _act(options, 0, a_i)         # input gate
    if options.input_forget:
        f, df_da = 1 - i, None               # forget gate coupled to the input gate
    else:
        f, df_da = _act(options, 0, a_f)     # forget gate
    g, dg_da = _act(options, 1, gates[:, 2 * H:3 * H])   # cell candidate
    c_new = f * c + i * g
    if w_p is not None:                      # the output gate's peephole sees the new state
        a_o = a_o + w_p[2 * H:3 * H] * c_new
    o, do_da = _act(options, 0, a_o)         # output gate
    tc = _ref.apply_activation(options.activations[2], c_new)      # h(c'), not clipped
    dtc = _grad_activation(options.activations[2], c_new, tc).astype(c.dtype, copy=False)
    m = o * tc                               # unprojected hidden state
    h_new = m @ p["w_hr"].T if p["w_hr"] is not None else m
    return h_new, c_new, dict(x=x, h=h, c=c, c_new=c_new, i=i, f=f, g=g, o=o, tc=tc, dtc=dtc,
                              m=m, di_da=di_da, df_da=df_da, dg_da=dg_da, do_da=do_da)


def _lstm_backward(p, cache, dh_new, dc_new):
    x, h, c = cache["x"], cache["h"], cache["c"]
    i, f, g, o, tc, m = cache["i"], cache["f"], cache["g"], cache["o"], cache["tc"], cache["m"]
    H = c.shape[-1]
    w_p = p.get("w_p")
    grads = {}
    if p["w_hr"] is not None:
        # h' = m W_hr^T:  dL/dm = dh' W_hr,  dL/dW_hr = dh'^T m
        dm = dh_new @ p["w_hr"]
        grads["w_hr"] = dh_new.T @ m
    else:
        dm = dh_new
    # m = o * h(c')
    do = dm * tc                          # dL/do = dm * h(c')
    dc_tot = dc_new + dm * o * cache["dtc"]    # dL/dc' (through c_n / the next step, and m)
    da_o = do * cache["do_da"]            # o = f(a_o)
    if w_p is not None:
        # a_o = ... + p_o * c':  dL/dc' += da_o * p_o,  dL/dp_o = sum over rows of da_o * c'
        dc_tot = dc_tot + da_o * w_p[2 * H:3 * H]
    # c' = f * c + i * g
    di = dc_tot * g                       # dL/di = dc' * g
    dg = dc_tot * i                       # dL/dg = dc' * i
    df = dc_tot * c                       # dL/df = dc' * c
    dc = dc_tot * f                       # dL/dc = dc' * f
    if cache["df_da"] is None:
        # f = 1 - i: the forget gate's gradient flows to i; its own pre-activation is unused.
        di = di - df
        da_f = np.zeros_like(df)
    else:
        da_f = df * cache["df_da"]
    da_i = di * cache["di_da"]
    da_g = dg * cache["dg_da"]
    if w_p is not None:
        # a_i = ... + p_i * c, a_f = ... + p_f * c
        dc = dc + da_i * w_p[0:H] + da_f * w_p[H:2 * H]
        grads["w_p"] = np.concatenate([(da_i * c).sum(axis=0), (da_f * c).sum(axis=0),
                                       (da_o * cache["c_new"]).sum(axis=0)])
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)   # (B, 4H), order i, f, g, o
    dx = da @ p["w_ih"]                   # dL/dx = da W_ih
    dh = da @ p["w_hh"]                   # dL/dh = da W_hh
    grads["w_ih"] = da.T @ x
    grads["w_hh"] = da.T @ h
    db = da.sum(axis=0)
    return dx, dh, dc, _bias_grads(p, grads, db, db)


_CELLS = {
    "RNN": (_rnn_forward, _rnn_backward),
    "GRU": (_gru_forward, _gru_backward),
    "LSTM": (_lstm_forward, _lstm_backward),
}


# ---------------------------------------------------------------------------
# One layer, one direction
# ---------------------------------------------------------------------------

def _direction_backward(mode, p, x, h0, c0, lengths, reverse, nonlinearity, reset_after,
                        d_out, d_hn, d_cn, options=None):
    """BPTT through reference._run_direction.

    x: the layer input (T, B, I); h0 (B, P); c0 (B, H) or None; d_out (T, B, P) the gradient of
    this direction's output; d_hn (B, P), d_cn (B, H) or None the gradients of its final states.
    Returns dx (T, B, I), dh0 (B, P), dc0 (B, H) or None, grads (local names, see _layer_params).
    """
    cell_forward, cell_backward = _CELLS[mode]
    T = x.shape[0]
    steps = range(T - 1, -1, -1) if reverse else range(T)

    # 1) Recompute the forward, keeping each step's cache (in execution order).
    tape = []
    h, c = h0, c0
    for t in steps:
        active = (t < lengths)[:, None]        # (B, 1): does sequence b run at step t?
        # Padding content never enters the caches (it may be NaN/inf): its rows are discarded
        # by np.where in the forward, so replacing them by 0 changes nothing there.
        xt = np.where(active, x[t], 0).astype(x.dtype, copy=False)
        h_new, c_new, cache = cell_forward(p, xt, h, c, nonlinearity, reset_after, options)
        tape.append((t, active, cache))
        h = np.where(active, h_new, h)         # forward: inactive rows keep their state
        if c is not None:
            c = np.where(active, c_new, c)

    # 2) Walk the steps backwards, carrying dL/dh (and dL/dc) of the current state.
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(v) for k, v in p.items() if v is not None}
    dh = d_hn.copy()                           # h after the last step is h_n
    dc = d_cn.copy() if c0 is not None else None
    for t, active, cache in reversed(tape):
        # out[t] = where(active, h_t, 0): the output gradient only reaches active rows.
        dh = dh + np.where(active, d_out[t], 0)
        # h_t = where(active, h_new, h_{t-1}): the cell only receives the active rows' gradient;
        # the inactive rows' gradient passes to h_{t-1} unchanged.
        dh_cell = np.where(active, dh, 0)
        dc_cell = np.where(active, dc, 0) if dc is not None else None
        dx_t, dh_prev, dc_prev, g = cell_backward(p, cache, dh_cell, dc_cell)
        dx[t] = np.where(active, dx_t, 0)      # exactly 0 at padded positions
        for name, value in g.items():
            grads[name] += value
        dh = np.where(active, dh_prev, dh)
        if dc is not None:
            dc = np.where(active, dc_prev, dc)
    return dx, dh, dc, grads


# ---------------------------------------------------------------------------
# Stacked, optionally bidirectional network
# ---------------------------------------------------------------------------

def run_stack_backward(mode, params, x, h0, c0, lengths, grad_out, grad_h_n=None, grad_c_n=None,
                       *, num_layers=1, bidirectional=False, nonlinearity="tanh",
                       reset_after=True, proj_size=0, reverse_all=False, dropout_masks=None,
                       activations=None, clip=None, input_forget=False):
    """Gradients of sum(grad_out * out) + sum(grad_h_n * h_n) + sum(grad_c_n * c_n) where
    (out, h_n, c_n) = run_stack_dropout(mode, params, x, h0, c0, lengths, ..., dropout_masks)
    (= reference.run_stack when dropout_masks is None).

    Same shapes and semantics as reference.run_stack: x (T, B, I) time-major, h0 (D*L, B, P) or
    None (zeros), c0 (D*L, B, H) for LSTM (None = zeros; ignored otherwise), lengths None or int
    (B,) in [0, T]; padded steps do not run. grad_out (T, B, D*P); grad_h_n (D*L, B, P) and
    grad_c_n (D*L, B, H) may be None (= 0). grad_out at padded positions (t >= lengths[b]) is
    ignored, since out is constantly 0 there; dx there is exactly 0.

    dropout_masks: None, or a list of num_layers - 1 arrays of shape (T, B, D*P); mask k
    multiplies layer k's output before layer k + 1 uses it (see run_stack_dropout).
    activations, clip, input_forget: the cell options, as reference.run_stack takes them.

    Returns (dx (T, B, I), dh0 (D*L, B, P), dc0 (D*L, B, H) or None, grads: dict with the same
    keys and shapes as params).
    """
    x, h0, c0, lengths, (T, B, D, H, P) = _prepare(
        mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity, proj_size,
        reverse_all)
    dtype = x.dtype
    L = num_layers
    masks = _check_masks(dropout_masks, L, T, B, D, P, dtype)
    options = _ref._options(activations, clip, input_forget, mode, nonlinearity)

    grad_out = np.asarray(grad_out)
    if grad_out.shape != (T, B, D * P):
        raise ValueError(f"grad_out must have shape {(T, B, D * P)}, got {grad_out.shape}")
    grad_h_n = np.zeros_like(h0) if grad_h_n is None else np.asarray(grad_h_n)
    if grad_h_n.shape != h0.shape:
        raise ValueError(f"grad_h_n must have shape {h0.shape}, got {grad_h_n.shape}")
    if mode == "LSTM":
        grad_c_n = np.zeros_like(c0) if grad_c_n is None else np.asarray(grad_c_n)
        if grad_c_n.shape != c0.shape:
            raise ValueError(f"grad_c_n must have shape {c0.shape}, got {grad_c_n.shape}")

    # Forward once to obtain each layer's (masked) input.
    layer_inputs, _, _, _ = _stack_forward(
        mode, params, x, h0, c0, lengths, L, D, nonlinearity, reset_after, proj_size,
        reverse_all, masks, options)

    dh0 = np.zeros_like(h0)
    dc0 = np.zeros_like(c0) if mode == "LSTM" else None
    grads = {}
    d_layer_out = grad_out        # dL/d(output of layer k), (T, B, D*P), starting at the top
    for k in range(L - 1, -1, -1):
        layer_input = layer_inputs[k]
        d_input = np.zeros_like(layer_input)
        for d in range(D):
            p, names = _layer_params(params, k, d, proj_size)
            idx = k * D + d
            dx_d, dh0_d, dc0_d, g = _direction_backward(
                mode, p, layer_input, h0[idx], None if c0 is None else c0[idx], lengths,
                (d == 1) or reverse_all, nonlinearity, reset_after,
                d_layer_out[:, :, d * P:(d + 1) * P], grad_h_n[idx],
                None if c0 is None else grad_c_n[idx], options)
            # Both directions read the same layer input: their input gradients add up.
            d_input += dx_d
            dh0[idx] = dh0_d
            if dc0 is not None:
                dc0[idx] = dc0_d
            for local, value in g.items():
                grads[names[local]] = value
        if k > 0:
            # input_k = mask_{k-1} * out_{k-1}:  dL/dout_{k-1} = mask_{k-1} * dL/dinput_k
            d_layer_out = d_input * masks[k - 1] if masks is not None else d_input
        else:
            dx = d_input

    # Same keys (and order) as params; an entry the network does not use gets a zero gradient.
    grads = {name: grads[name] if name in grads else np.zeros_like(np.asarray(value))
             for name, value in params.items()}
    return dx, dh0, dc0, grads
