"""Compiled forward and backward of a stacked, optionally bidirectional RNN / GRU / LSTM.

``run_stack`` has the same signature and semantics as ``rnnc.reference.run_stack``
(``run_stack_train`` / ``run_stack_backward`` those of the reference's training pair); the
classes of rnnc.recurrent call one or the other. Per call: lay the batch out in PyTorch's
packed form (sorted by decreasing length, rnnc/_engine/layout.py), make each layer's plan
(rnnc/_engine/plan.py), and for each layer and direction hand the runner the plan names its
arrays (rnnc/_engine/runners/); the two directions run one after the other, or on two threads
where the plan says (each split further with four threads or more). Results are scattered back
to the caller's batch order. A training call keeps the plans and what each runner returned,
and the backward runs the same runners.
"""
import contextlib

import numpy as np

from rnnc._dropout import dropout_mask
from rnnc._engine.job import BackwardJob, LayerJob
from rnnc._engine.kernels import K
from rnnc._engine.layout import PackedLayout
from rnnc._engine.plan import GATES, make_plan
from rnnc._engine.runners import RUNNERS
from rnnc._engine.threads import blas_one_thread, run_pair
from rnnc._engine.workspace import empty, workspace
from rnnc._validation import check_blas_size


def run_stack(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1, bidirectional=False,
              nonlinearity="tanh", reset_after=True, proj_size=0, reverse_all=False,
              packs=None, cell=None):
    """Run the network; see rnnc.reference.run_stack for the exact semantics.

    x (T, B, I), h0 (D*L, B, P), c0 (D*L, B, H) are C-contiguous arrays of one float dtype,
    lengths None or intp (B,) in [0, T] (checked by the caller).
    packs: None (weights packed afresh on every call), or a dict that keeps them across calls,
    which the caller empties whenever a parameter changes (a frozen module, Module.freeze).
    cell: None (PyTorch's cells), or the CellSpec of layers with cell options
    (rnnc/_cell_options.py; an LSTM's peepholes are its parameters weight_p_l{k}).
    Returns out (T, B, D*P), h_n (D*L, B, P), c_n (D*L, B, H) or None.
    """
    out, h_n, c_n, _ = _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional,
                            nonlinearity, reset_after, proj_size, reverse_all, train=False,
                            packs=packs, cell=cell)
    return out, h_n, c_n


def run_stack_train(mode, params, x, h0, c0=None, lengths=None, *, num_layers=1,
                    bidirectional=False, nonlinearity="tanh", reset_after=True, proj_size=0,
                    reverse_all=False, dropout=0.0, rng=None, cell=None):
    """Training forward: like run_stack, also applying inverted dropout to the input of every
    layer but the first (masks drawn from ``rng``), and returning a cache for
    ``run_stack_backward`` as a fourth result. ``cache.dropout_masks`` holds the masks in the
    padded (T, B, D*P) layout (None without dropout), for tests and references."""
    return _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity,
                reset_after, proj_size, reverse_all, train=True, dropout=dropout, rng=rng,
                cell=cell)


class _Cache:
    """What a training forward keeps for the backward pass (all arrays in packed layout):
    each layer's plan and input, and what each layer and direction's runner returned."""


def _run_directions(run, D, concurrent):
    """run(0) (and run(1)), concurrently when the plan says: both kernels release the GIL.
    Each direction then has a lane of rnnc's threads of its own to split between (with four
    threads or more; rnnc/_engine/threads.py, run_parts)."""
    if D == 1:
        run(0)
    elif concurrent:
        run_pair(lambda: run(0), lambda: run(1), lanes=True)
    else:
        run(0)
        run(1)


def _run(mode, params, x, h0, c0, lengths, num_layers, bidirectional, nonlinearity,
         reset_after, proj_size, reverse_all, train, dropout=0.0, rng=None, packs=None,
         plans=None, cell=None):
    if reverse_all and bidirectional:
        raise ValueError("reverse_all=True requires bidirectional=False")
    T, B, I = x.shape
    D = 2 if bidirectional else 1
    G = GATES[mode]
    H = params["weight_hh_l0"].shape[0] // G
    P = proj_size if proj_size else H
    dtype = x.dtype
    h_n = np.array(h0, dtype=dtype, order="C", copy=True)
    c_n = None if c0 is None else np.array(c0, dtype=dtype, order="C", copy=True)
    cache = None
    if train:
        cache = _Cache()
        cache.__dict__.update(mode=mode, params=params, num_layers=num_layers, D=D, H=H, P=P,
                              T=T, B=B, input_size=I, dropout_masks=None, layer_in=[],
                              kept=[], plans=[], reverse_all=reverse_all, layout=None)
    if T == 0 or B == 0:
        return np.zeros((T, B, D * P), dtype=dtype), h_n, c_n, cache

    layout = PackedLayout(T, B, lengths)
    if layout.perm is None:
        h_state, c_state = h_n, c_n          # updated in place by the kernels
    else:
        h_state = np.ascontiguousarray(h_n[:, layout.perm])
        c_state = None if c_n is None else np.ascontiguousarray(c_n[:, layout.perm])
    layer_in = layout.pack(x)
    n_rows = layout.n_rows
    steps = len(layout.batch_sizes)
    if plans is None:
        plans = [make_plan(mode, I if k == 0 else D * P, H, proj_size, reset_after,
                           bidirectional, B, steps, dtype, train, packs is not None,
                           nonlinearity=nonlinearity, trial=trial, cell=cell)
                 for k in range(num_layers)]
    check_blas_size(max(n_rows, plans[0].chunk_steps * B), "rows of one input-projection GEMM")
    check_blas_size(D * P, "output width")
    empty1, empty2 = empty(dtype, 1), empty(dtype, 2)
    if train:
        cache.layout = layout
        if dropout > 0 and num_layers > 1:
            cache.dropout_masks = []

    for k, plan in enumerate(plans):
        if train and k > 0 and dropout > 0:
            mask = dropout_mask(rng, (T, B, D * P), dropout, dtype)
            cache.dropout_masks.append(mask)
            layer_in = layer_in * layout.pack(mask)
        if train:
            cache.layer_in.append(layer_in)
            cache.kept.append([None] * D)
            cache.plans.append(plan)
        out = plan.new_output((n_rows, D * P))
        runner = RUNNERS[plan.strategy]

        def direction(d, k=k, layer_in=layer_in, out=out, runner=runner, plan=plan):
            sfx = "_reverse" if d else ""
            s = k * D + d
            job = LayerJob(x=layer_in, layout=layout, reverse=bool(d) or reverse_all, d=d,
                           w_ih=params[f"weight_ih_l{k}{sfx}"],
                           w_hh=params[f"weight_hh_l{k}{sfx}"],
                           b_ih=params.get(f"bias_ih_l{k}{sfx}", empty1),
                           b_hh=params.get(f"bias_hh_l{k}{sfx}", empty1),
                           w_hr=params.get(f"weight_hr_l{k}{sfx}", empty2),
                           w_p=params.get(f"weight_p_l{k}{sfx}", empty1),
                           h=h_state[s], c=c_state[s] if mode == "LSTM" else None, out=out,
                           col0=d * P, packs=packs, name=(k, d))
            kept = runner.forward(plan, job)
            if train:
                cache.kept[k][d] = kept

        with blas_one_thread() if plan.hold_blas else contextlib.nullcontext():
            _run_directions(direction, D, plan.directions_concurrent)
        layer_in = out

    if layout.perm is not None:
        h_n[:, layout.perm] = h_state
        if c_n is not None:
            c_n[:, layout.perm] = c_state
    return layout.unpack(layer_in, T, B), h_n, c_n, cache


def trial(plan, mode, input_size, hidden_size, proj_size, reset_after, relu, bidirectional,
          batch, steps, dtype, rng):
    """A callable that runs one layer (inference) with `plan` on random data of these shapes:
    a candidate's turn when plans are measured (rnnc/_engine/plan.py, _measured_plan)."""
    G, H, P = GATES[mode], hidden_size, proj_size or hidden_size
    D = 2 if bidirectional else 1

    def uniform(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)

    params = {}
    for sfx in ("", "_reverse")[:D]:
        params.update({f"weight_ih_l0{sfx}": uniform(G * H, input_size),
                       f"weight_hh_l0{sfx}": uniform(G * H, P),
                       f"bias_ih_l0{sfx}": uniform(G * H), f"bias_hh_l0{sfx}": uniform(G * H)})
        if proj_size:
            params[f"weight_hr_l0{sfx}"] = uniform(P, H)
    x = uniform(steps, batch, input_size)
    h0 = np.zeros((D, batch, P), dtype=dtype)
    c0 = np.zeros((D, batch, H), dtype=dtype) if mode == "LSTM" else None
    nonlinearity = "relu" if relu else "tanh"
    packs = {} if plan.frozen else None     # a frozen module's weights, packed on the first run
    return lambda: _run(mode, params, x, h0, c0, None, 1, bidirectional, nonlinearity,
                        reset_after, proj_size, False, train=False, packs=packs, plans=[plan])


def run_stack_backward(cache, grad_out, grad_h_n=None, grad_c_n=None):
    """Backpropagation through time after ``run_stack_train``.

    grad_out (T, B, D*P), grad_h_n (D*L, B, P), grad_c_n (D*L, B, H) (None means zero) are
    C-contiguous arrays of the forward's dtype; grad_out None starts from packed zeros, so a
    loss on the final state alone costs no (T, B, D*P) array. The cache's activation buffers
    are overwritten, so a cache serves one backward. Returns dx (T, B, I), dh0, dc0 (None
    unless LSTM) and a dict of parameter gradients keyed like the parameters.
    """
    mode, params, D, H, P = cache.mode, cache.params, cache.D, cache.H, cache.P
    T, B, L = cache.T, cache.B, cache.num_layers
    dtype = cache.params["weight_hh_l0"].dtype
    dh = np.zeros((D * L, B, P), dtype=dtype) if grad_h_n is None else \
        np.array(grad_h_n, dtype=dtype, order="C", copy=True)
    dc = None
    if mode == "LSTM":
        dc = np.zeros((D * L, B, H), dtype=dtype) if grad_c_n is None else \
            np.array(grad_c_n, dtype=dtype, order="C", copy=True)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    layout = cache.layout
    if layout is None or layout.n_rows == 0:
        return np.zeros((T, B, cache.input_size), dtype=dtype), dh, dc, grads

    if layout.perm is None:
        dh_s, dc_s = dh, dc
    else:
        dh_s = np.ascontiguousarray(dh[:, layout.perm])
        dc_s = None if dc is None else np.ascontiguousarray(dc[:, layout.perm])
    if grad_out is None:
        dlayer = np.zeros((layout.n_rows, D * P), dtype=dtype)
    else:
        dlayer = np.ascontiguousarray(layout.pack(grad_out))
    empty1, empty2 = empty(dtype, 1), empty(dtype, 2)
    for k in reversed(range(L)):
        plan = cache.plans[k]
        concurrent = plan.directions_concurrent
        runner = RUNNERS[plan.strategy]
        x_k = cache.layer_in[k]
        # Each direction writes its own input gradient when they run concurrently.
        dxs = [np.empty_like(x_k) for _ in range(D if concurrent else 1)]

        def direction(d, k=k, x_k=x_k, dxs=dxs, plan=plan, runner=runner, dlayer=dlayer):
            sfx = "_reverse" if d else ""
            name = {w: f"{w}_l{k}{sfx}" for w in ("weight_ih", "weight_hh", "bias_ih",
                                                 "bias_hh", "weight_hr", "weight_p")}
            s = k * D + d
            job = BackwardJob(
                x=x_k, layout=layout, reverse=bool(d) or cache.reverse_all, d=d,
                w_ih=params[name["weight_ih"]], w_hh=params[name["weight_hh"]],
                w_hr=params.get(name["weight_hr"], empty2),
                w_p=params.get(name["weight_p"], empty1), kept=cache.kept[k][d],
                dout=dlayer, col0=d * P, dh=dh_s[s], dc=dc_s[s] if dc_s is not None else None,
                dx=dxs[d] if concurrent else dxs[0], add_dx=not concurrent and d == 1,
                dw_ih=grads[name["weight_ih"]], dw_hh=grads[name["weight_hh"]],
                db_ih=grads.get(name["bias_ih"], empty1),
                db_hh=grads.get(name["bias_hh"], empty1),
                dw_hr=grads.get(name["weight_hr"], empty2),
                dw_p=grads.get(name["weight_p"], empty1))
            runner.backward(plan, job)

        _run_directions(direction, D, concurrent)
        dx = dxs[0]
        if concurrent:
            dx += dxs[1]
        if k > 0 and cache.dropout_masks is not None:
            dx *= layout.pack(cache.dropout_masks[k - 1])
        dlayer = dx
    cache.kept = None   # the activation buffers now hold gradients

    if layout.perm is not None:
        dh[:, layout.perm] = dh_s
        if dc is not None:
            dc[:, layout.perm] = dc_s
    return layout.unpack(dlayer, T, B), dh, dc, grads


_ONE_STEP = {}


def run_step(mode, params, x, h, c=None, *, nonlinearity="tanh", reset_after=True, suffix="_l0"):
    """One inference step of a one-layer network (the cells): x (B, I), h (B, H), c (B, H) or
    None, validated C-contiguous arrays of one dtype; returns (h', c' or None), new arrays.
    params are named as layer 0's ("weight_ih_l0"), or with another suffix (a cell's: "").
    The layer kernel is called directly: with one step every row is active, so there is no
    packed layout to build, nothing to chunk or split, and (one step) no weights to pack."""
    B, H = h.shape
    dtype = x.dtype
    if B == 0:
        return h.copy(), None if c is None else c.copy()
    empty1 = empty(dtype, 1)
    w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
    b_ih = params.get("bias_ih" + suffix, empty1)
    b_hh = params.get("bias_hh" + suffix, empty1)
    G = GATES[mode]
    h_new = h.copy()
    xg = workspace("cell xg", (B, G * H), dtype)
    if mode == "LSTM":
        c_new = c.copy()
        K.lstm_cell_forward(x, w_ih, w_hh, b_ih, b_hh, h_new, c_new, xg)
        return h_new, c_new
    steps = _ONE_STEP.get(B)
    if steps is None:
        steps = _ONE_STEP[B] = (np.array([B], dtype=np.intp), np.zeros(1, dtype=np.intp))
    f = K.LayerForward(x=x, batch_sizes=steps[0], offsets=steps[1], w_ih=w_ih, w_hh=w_hh,
                       b_ih=b_ih, b_hh=b_hh, h=h_new, out=workspace("cell out", (B, H), dtype),
                       xg=xg, chunk_steps=1)
    if mode == "GRU":
        f.reset_after = reset_after
        f.hg = workspace("cell hg", (B, G * H), dtype)
        f.rh = workspace("cell rh", (B, H) if not reset_after else (1, 1), dtype)
        K.gru_forward(f)
    else:
        f.relu = nonlinearity == "relu"
        K.rnn_forward(f)
    return h_new, None
