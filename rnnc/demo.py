"""``python -m rnnc demo``: train a vanilla RNN, a GRU and an LSTM on the adding problem.

The adding problem (Hochreiter & Schmidhuber 1997): every sequence has T steps of two features,
a random number in [0, 1] and a marker that is 1 at exactly two steps (the first within the
first 10% of the sequence, the second in the second half) and 0 elsewhere. The target is the sum
of the two marked numbers, read off the last step, so the model must carry the first number
across most of the sequence. Always predicting 1.0 gives a mean squared error of 1/6 ~ 0.167;
the task counts as solved when the test MSE is below 0.01.

Each model is one recurrent layer (``rnnc.RNN`` with tanh, ``rnnc.GRU`` or ``rnnc.LSTM``) and a
``rnnc.Linear(hidden, 1)`` head on the final state h_n, trained with Adam (constant learning
rate, annealed to 0 over the last 20% of the steps) and gradient-norm clipping on fresh random
batches. The LSTM's forget-gate bias starts at +1 (``--forget-bias``), as Keras initialises it.

The demo also measures how the gradient of a loss on the last step reaches the inputs of
earlier steps, ||dL/dx<t>||, at initialisation and after training. At PyTorch's initialisation
it vanishes geometrically for all three cells (the LSTM's more slowly with the forget bias);
after training the GRU and LSTM carry it across the whole sequence and the vanilla RNN does
not.

Needs the extras: ``pip install "rnnc[demo]"`` (tqdm, matplotlib).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

import rnnc

CELLS = ("RNN", "GRU", "LSTM")
BASELINE_MSE = 1.0 / 6.0        # E[(a + b - 1)^2] for a, b ~ U(0, 1): always predicting 1.0
SOLVED_MSE = 0.01
ACCURACY_TOLERANCE = 0.04

DEFAULTS = dict(lengths=[10, 60], hidden_size=64, steps=1000, batch_size=64)
QUICK = dict(lengths=[10, 30], hidden_size=32, steps=300, batch_size=32)


# -- data -------------------------------------------------------------------------------------
def adding_batch(rng, T, batch_size, dtype=np.float32):
    """One batch of the adding problem: x (T, B, 2) time-major and targets y (B, 1)."""
    if T < 2:
        raise ValueError(f"the adding problem needs T >= 2, got {T}")
    B = batch_size
    x = np.zeros((T, B, 2), dtype=dtype)
    x[:, :, 0] = rng.uniform(0.0, 1.0, size=(T, B))
    first = rng.integers(0, max(1, T // 10), size=B)      # within the first 10%
    second = rng.integers(T // 2, T, size=B)              # in the second half
    cols = np.arange(B)
    x[first, cols, 1] = 1.0
    x[second, cols, 1] = 1.0
    y = (x[first, cols, 0] + x[second, cols, 0])[:, None]
    return x, y.astype(dtype)


# -- model --------------------------------------------------------------------------------------
def last_step_regressor(cell, hidden_size, *, input_size=2, forget_bias=0.0, dtype=np.float32,
                        seed=None):
    """One recurrent layer (``cell`` in RNN / GRU / LSTM) and a ``Linear(hidden, 1)`` head on its
    final hidden state h_n, as one ``rnnc.Sequential``: ``model(x)`` (T, B, input_size) ->
    (B, 1), and ``model.backward(grad)`` sends the head's gradient into the layer's h_n.
    ``forget_bias`` is added to the LSTM's forget-gate bias at initialisation.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    rnn = getattr(rnnc, cell)(input_size, hidden_size, dtype=dtype, seed=seed)
    if cell == "LSTM" and forget_bias:
        H = hidden_size     # gate order i, f, g, o: the forget gate is rows H:2H
        rnn.bias_hh_l0[H:2 * H] += np.asarray(forget_bias, dtype=dtype)
    head = rnnc.Linear(hidden_size, 1, dtype=dtype, seed=None if seed is None else seed + 1)
    return rnnc.Sequential(rnn, rnnc.Pool("state"), head)


# -- optimiser and loss: rnnc.optim / rnnc.losses, or small stand-ins ------------------------
class _Adam:
    """Adam (torch.optim.Adam's update, no weight decay) over named_parameters() / grads."""

    def __init__(self, module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.module, self.lr, self.betas, self.eps = module, lr, betas, eps
        self.state = {}

    def zero_grad(self):
        self.module.zero_grad()

    def step(self):
        b1, b2 = self.betas
        grads = self.module.grads
        for name, p in self.module.named_parameters():
            g = grads.get(name)
            if g is None:
                continue
            st = self.state.setdefault(name, [0, np.zeros_like(p), np.zeros_like(p)])
            st[0] += 1
            t, m, v = st
            m += (1 - b1) * (g - m)
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + self.eps
            p -= (self.lr / (1 - b1 ** t)) * m / denom


def _clip_grad_norm(module, max_norm):
    grads = list(module.grads.values())
    total = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def _mse(pred, target):
    diff = pred - target
    return float(np.mean(np.square(diff, dtype=np.float64))), diff * diff.dtype.type(2 / diff.size)


def training_tools():
    """(Adam class, clip_grad_norm, mse, where they come from): rnnc's when importable."""
    try:
        from rnnc import losses, optim
        return optim.Adam, optim.clip_grad_norm, losses.mse, "rnnc.optim.Adam, rnnc.losses.mse"
    except (ImportError, AttributeError):
        return _Adam, _clip_grad_norm, _mse, "the demo's own Adam and MSE"


# -- training -----------------------------------------------------------------------------------
def evaluate(model, T, n, seed, chunk=500):
    """Test MSE and accuracy (|prediction - target| < 0.04) on n fresh sequences."""
    rng = np.random.default_rng([seed, T, 1])
    model.eval()
    sq, hits = 0.0, 0
    for start in range(0, n, chunk):
        x, y = adding_batch(rng, T, min(chunk, n - start), model[0].dtype)
        err = model(x).astype(np.float64) - y
        sq += float(np.sum(err * err))
        hits += int(np.sum(np.abs(err) < ACCURACY_TOLERANCE))
    return sq / n, hits / n


def train_one(cell, T, *, hidden_size=64, steps=1000, batch_size=64, lr=1e-2, clip=1.0, seed=0,
              forget_bias=1.0, anneal=0.2, test_size=2000, progress=False, tools=None):
    """Train one model; returns a dict with the model, per-step losses and the test scores.

    The learning rate is ``lr``, then over the last ``anneal`` fraction of the steps it follows
    a half cosine down to 0 (settles the final weights; 0 keeps it constant)."""
    Adam, clip_grad_norm, mse, _ = tools or training_tools()
    model = last_step_regressor(cell, hidden_size, forget_bias=forget_bias, seed=seed).train()
    opt = Adam(model, lr=lr)
    rng = np.random.default_rng([seed, T, 0])   # the same batches for every cell
    anneal_from = steps - int(round(anneal * steps))
    losses = np.empty(steps)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=f"{cell:<4} T={T}", file=sys.stderr, leave=False,
                   dynamic_ncols=True, mininterval=0.5)
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = adding_batch(rng, T, batch_size)
        if i >= anneal_from:
            opt.lr = 0.5 * lr * (1 + math.cos(math.pi * (i - anneal_from) / (steps - anneal_from)))
        opt.zero_grad()
        loss, grad = mse(model(x), y)
        model.backward(grad)
        clip_grad_norm(model, clip)
        opt.step()
        losses[i] = loss
        if bar is not None:
            bar.update(1)
            if i % 25 == 24 or i == steps - 1:
                bar.set_postfix(loss=f"{losses[max(0, i - 24):i + 1].mean():.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    test_mse, accuracy = evaluate(model, T, test_size, seed)
    tail = losses[-min(50, steps):]
    return dict(cell=cell, T=T, model=model, losses=losses, train_loss=float(tail.mean()),
                test_mse=test_mse, accuracy=accuracy, seconds=seconds,
                steps_per_s=steps / seconds if seconds > 0 else float("inf"))


# -- vanishing gradients ------------------------------------------------------------------------
def gradient_norms(cell, T, hidden_size=64, batch_size=64, seed=0, *, forget_bias=1.0,
                   model=None):
    """||dL/dx<t>|| for t = 0 .. T-1, averaged over a batch, for a loss on the last step only.

    L_b = (prediction_b - y_b)^2 is the loss of sequence b, so ``dx[t, b]`` is dL_b/dx_b<t>.
    Without ``model`` the network is freshly initialised exactly as ``train_one`` initialises
    it with the same ``seed`` (and ``forget_bias``); with ``model`` (a ``last_step_regressor``)
    its weights are used. Computed in float64, so that values far below float32's range do not
    underflow to 0. Returns an array of shape (T,), indexed by time step.
    """
    if model is not None:
        hidden_size = model[0].hidden_size
    m = last_step_regressor(cell, hidden_size, forget_bias=forget_bias, dtype=np.float64,
                            seed=seed)
    if model is not None:
        m.load_state_dict(model.state_dict())
    x, y = adding_batch(np.random.default_rng([seed, T, 2]), T, batch_size, np.float64)
    m.train()
    dx, _, _ = m.backward(2.0 * (m(x) - y))
    return np.linalg.norm(dx, axis=2).mean(axis=1)


def decay_ratio(norms):
    """||dL/dx<0>|| / ||dL/dx<T-1>||: how much of the gradient survives the whole sequence."""
    return float(norms[0] / norms[-1]) if norms[-1] > 0 else 0.0


def horizon(norms, level=1e-3):
    """Steps back from the last one before the gradient norm drops below ``level`` times its
    value at the last step (len(norms) if it never does)."""
    rel = norms[::-1] / norms[-1]
    below = np.nonzero(rel < level)[0]
    return int(below[0]) if below.size else len(norms)


# -- output -------------------------------------------------------------------------------------
def _table(head, rows):
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _smooth(values, window):
    if window <= 1 or len(values) < window:
        return np.arange(len(values)), values
    kernel = np.ones(window) / window
    return np.arange(window - 1, len(values)), np.convolve(values, kernel, mode="valid")


def plot_learning_curves(results, lengths, cells, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.5 * len(lengths), 4.2), layout="constrained")
    axes = fig.subplots(1, len(lengths), sharey=True, squeeze=False)[0]
    colors = dict(zip(CELLS, ("tab:red", "tab:blue", "tab:green")))
    for ax, T in zip(axes, lengths):
        for cell in cells:
            r = results[(cell, T)]
            steps, smooth = _smooth(r["losses"], max(1, len(r["losses"]) // 50))
            ax.plot(r["losses"], color=colors[cell], alpha=0.15, linewidth=0.6)
            ax.plot(steps + 1, smooth, color=colors[cell], label=f"{cell} (test MSE "
                    f"{r['test_mse']:.3g})")
        ax.axhline(BASELINE_MSE, color="gray", linestyle="--", linewidth=1,
                   label="predict 1.0 (1/6)")
        ax.axhline(SOLVED_MSE, color="black", linestyle=":", linewidth=1, label="solved (0.01)")
        ax.set_yscale("log")
        ax.set_title(f"adding problem, T = {T}")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("training MSE (batch; line: moving average)")
    fig.savefig(path, dpi=110)


def plot_gradient_norms(grads, T, cells, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = dict(zip(CELLS, ("tab:red", "tab:blue", "tab:green")))
    distance = np.arange(T)
    for cell in cells:
        ax.plot(distance, grads[cell]["init"][::-1], color=colors[cell],
                label=f"{cell}, at initialisation")
        if grads[cell].get("trained") is not None:
            ax.plot(distance, grads[cell]["trained"][::-1], color=colors[cell], linestyle="--",
                    label=f"{cell}, after training")
    ax.set_yscale("log")
    ax.set_xlabel("distance in time from the loss, T-1-t (steps)")
    ax.set_ylabel("||dL/dx<t>||, mean over a batch")
    ax.set_title(f"Gradient of a last-step loss w.r.t. the inputs, T = {T}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


# -- command line -------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(
        prog="python -m rnnc demo",
        description="Train a vanilla RNN, a GRU and an LSTM on the adding problem, print a "
                    "results table and a vanishing-gradient summary, and plot both.")
    p.add_argument("--lengths", type=int, nargs="+", metavar="T",
                   help=f"sequence lengths (default {' '.join(map(str, DEFAULTS['lengths']))}; "
                        f"--quick: {' '.join(map(str, QUICK['lengths']))})")
    p.add_argument("--hidden-size", type=int,
                   help=f"hidden units (default {DEFAULTS['hidden_size']}; --quick: "
                        f"{QUICK['hidden_size']})")
    p.add_argument("--steps", type=int, help=f"training steps per run (default "
                   f"{DEFAULTS['steps']}; --quick: {QUICK['steps']})")
    p.add_argument("--batch-size", type=int, help=f"sequences per step (default "
                   f"{DEFAULTS['batch_size']}; --quick: {QUICK['batch_size']})")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    p.add_argument("--anneal", type=float, default=0.2,
                   help="fraction of the steps, at the end, over which the learning rate "
                        "decays to 0 along a half cosine (default 0.2; 0 = constant)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="clip the gradient norm to this (default 1)")
    p.add_argument("--forget-bias", type=float, default=1.0,
                   help="added to the LSTM's forget-gate bias at initialisation (default 1, as "
                        "Keras does; 0 keeps PyTorch's initialisation)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS),
                   help="which cells to train (default all three)")
    p.add_argument("--test-size", type=int, default=2000, help="test sequences (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and data (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: the matrices here are small, and extra BLAS "
                        "threads slow training down badly when the cores are busy; 0 = leave "
                        "the BLAS default)")
    p.add_argument("--out", default="rnnc_demo", help="folder for the plots and results.json "
                                                      "(default rnnc_demo/)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (a few seconds) with the --quick values above")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _resolve(args, parser):
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)
    if any(T < 2 for T in args.lengths):
        parser.error(f"--lengths must all be >= 2, got {args.lengths}")
    args.lengths = sorted(set(args.lengths))
    args.cells = [c for c in CELLS if c in args.cells]
    for key in ("hidden_size", "steps", "batch_size", "test_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not args.lr > 0 or not args.clip > 0:
        parser.error("--lr and --clip must be > 0")
    if not 0 <= args.anneal <= 1:
        parser.error(f"--anneal must be in [0, 1], got {args.anneal}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    return args


def run(args, out=None):
    """Train, measure, print and plot; returns a JSON-able summary (also in results.json)."""
    out = sys.stdout if out is None else out
    tools = training_tools()
    progress = not args.no_progress and sys.stderr.isatty()
    t_start = time.perf_counter()
    print(f"rnnc {rnnc.__version__} demo: the adding problem. Baseline (always predict 1.0) "
          f"MSE = 1/6 = {BASELINE_MSE:.3f}; solved: test MSE < {SOLVED_MSE}; accuracy: "
          f"|prediction - target| < {ACCURACY_TOLERANCE}.", file=out)
    print(f"One layer, hidden {args.hidden_size}, float32, Linear head on h_n; "
          f"{tools[3]} (lr {args.lr:g}, cosine decay over the last {args.anneal:.0%} of the "
          f"steps), clip {args.clip:g}, batch {args.batch_size}, "
          f"{args.steps} steps, seed {args.seed}, LSTM forget bias +{args.forget_bias:g}, "
          f"{args.threads or 'default'} BLAS thread(s).", file=out, flush=True)

    results = {}
    for T in args.lengths:
        for cell in args.cells:
            results[(cell, T)] = train_one(
                cell, T, hidden_size=args.hidden_size, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, clip=args.clip, seed=args.seed,
                forget_bias=args.forget_bias, anneal=args.anneal, test_size=args.test_size,
                progress=progress,
                tools=tools)

    head = ("cell", "T", "train loss (last 50)", "test MSE", "accuracy", "solved", "time (s)",
            "steps/s")
    rows = [(r["cell"], r["T"], f"{r['train_loss']:.4f}", f"{r['test_mse']:.4f}",
             f"{r['accuracy']:.3f}", "yes" if r["test_mse"] < SOLVED_MSE else "no",
             f"{r['seconds']:.1f}", f"{r['steps_per_s']:.0f}") for r in results.values()]
    print("\n" + _table(head, rows), file=out)

    T = args.lengths[-1]
    grads = {}
    for cell in args.cells:
        kw = dict(hidden_size=args.hidden_size, batch_size=args.batch_size, seed=args.seed,
                  forget_bias=args.forget_bias)
        grads[cell] = {"init": gradient_norms(cell, T, **kw),
                       "trained": gradient_norms(cell, T, model=results[(cell, T)]["model"],
                                                 **kw)}
    print(f"\nVanishing gradients at T = {T}: ||dL/dx<t>|| for a loss on the last step, mean "
          f"over {args.batch_size} sequences (float64). ratio = ||dL/dx<0>|| / "
          f"||dL/dx<T-1>||; horizon = steps back before the norm falls below 1e-3 of its "
          f"value at the last step.", file=out)
    ghead = ("cell", "||dL/dx<T-1>|| init", "ratio at init", "horizon at init",
             "ratio trained", "horizon trained")
    grows = [(cell, f"{g['init'][-1]:.2e}", f"{decay_ratio(g['init']):.1e}",
              horizon(g["init"]), f"{decay_ratio(g['trained']):.1e}", horizon(g["trained"]))
             for cell, g in grads.items()]
    print(_table(ghead, grows), file=out)

    os.makedirs(args.out, exist_ok=True)
    curves = os.path.join(args.out, "learning_curves.png")
    gplot = os.path.join(args.out, "gradient_norms.png")
    plot_learning_curves(results, args.lengths, args.cells, curves)
    plot_gradient_norms(grads, T, args.cells, gplot)
    summary = {
        "config": {k: v for k, v in vars(args).items()},
        "training": tools[3],
        "results": [{k: v for k, v in r.items() if k not in ("model", "losses")}
                    for r in results.values()],
        "gradients": {"T": T, **{cell: {
            "ratio_init": decay_ratio(g["init"]), "horizon_init": horizon(g["init"]),
            "ratio_trained": decay_ratio(g["trained"]),
            "horizon_trained": horizon(g["trained"]),
            "norms_init": g["init"].tolist(), "norms_trained": g["trained"].tolist()}
            for cell, g in grads.items()}},
    }
    summary_path = os.path.join(args.out, "results.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nWrote {curves}\nWrote {gplot}\nWrote {summary_path}", file=out)
    print(f"Total time {time.perf_counter() - t_start:.1f} s.", file=out)
    return summary


def main(argv=None) -> int:
    parser = _parser()
    args = _resolve(parser.parse_args(argv), parser)
    missing = []
    for name in ("tqdm", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"python -m rnnc demo needs {' and '.join(missing)}: "
              f'pip install "rnnc[demo]"', file=sys.stderr)
        return 2
    # The plots are drawn on matplotlib.figure.Figure objects and saved with the Agg renderer:
    # no pyplot, no display, and the caller's matplotlib backend is left alone.
    if args.threads:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads, user_api="blas"):
            run(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
