"""`npylstm gates`: watch the gates open and close.

Runs a trained LSTM over one sequence with the reference cell (npylstm.cell.step_forward, one step at
a time, the README's equations) and records, at every step t and for every unit j,

    I_t = σ(A_i)    F_t = σ(A_f)    O_t = σ(A_o)    C̃_t = tanh(A_g)
    C_t = F_t ⊙ C_{t-1} + I_t ⊙ C̃_t              H_t = O_t ⊙ tanh(C_t)

then draws each as a heatmap, time across, units down. From Python:

    acts = npylstm.gate_activations(lstm, x)      # x (T, D) -> {"I", "F", "O", "C_tilde", "C", "H"}: (T, H)
    fig = npylstm.plot_gates(acts, "gates.png")

The command trains a model first: by default the stateful alphabet model (fed A..Z one letter at a
time, its state has to count where in the alphabet it is), or with --model sine the stateful sine
model (shown over the last 200 steps of the series, state carried from the first).
"""

import numpy as np

from npylstm.cell import step_forward
from npylstm.checks import as_float_array
from npylstm.files import atomic_write
from npylstm.lstm import LSTM, param_names

from . import common

FIELDS = ("I", "F", "O", "C_tilde", "C", "H")    # the keys of gate_activations, in figure order
TITLES = {"I": "input gate I", "F": "forget gate F", "O": "output gate O",
          "C_tilde": "candidate C̃", "C": "cell state C", "H": "hidden state H"}


def _stacked_layers(model, where):
    """[(W_x, W_h, b), ...]: every layer of every LSTM in `model` (an LSTM or a Sequential), bottom up."""
    lstms = [model] if isinstance(model, LSTM) else [l for l in getattr(model, "layers", ()) if isinstance(l, LSTM)]
    others = [type(l).__name__ for l in getattr(model, "rnns", ()) if not isinstance(l, LSTM)]
    if others:   # a GRU in the stack: the LSTM layers alone would not compute what the model computes
        raise ValueError(f"{where}: the Sequential holds {', '.join(others)} layers; the gate recorder runs "
                         f"LSTM stacks only")
    if not lstms:
        raise ValueError(f"{where}: model must be an npylstm LSTM or a Sequential holding LSTM layers, "
                         f"got {type(model).__name__}")
    return [tuple(common.host(lstm.params[k]) for k in param_names(j))
            for lstm in lstms for j in range(lstm.num_layers)]


def gate_activations(model, x, layer=0):
    """Gates and states of one LSTM layer over one sequence, from a zero state, with the reference cell.

    model : an LSTM, or a Sequential (its LSTM layers count bottom up, num_layers each)
    x     : (T, D), one sequence (D = the model's input size)
    layer : which stacked layer to record (0 = the one reading x); the layers below it run first
    returns {"I", "F", "O", "C_tilde", "C", "H"} -> (T, H) arrays in the model's dtype

    H of the top layer equals the output of model's own forward on x (the fast sequence code).
    """
    where = "gate_activations"
    stack = _stacked_layers(model, where)
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(stack):
        raise ValueError(f"{where}: layer must be an int in [0, {len(stack)}), got {layer!r}")
    W_x0 = stack[0][0]
    x = as_float_array(where, "x", x, W_x0.dtype)
    if x.ndim != 2 or x.shape[1] != W_x0.shape[0] or x.shape[0] < 1:
        raise ValueError(f"{where}: x has shape {tuple(x.shape)}, expected (T, {W_x0.shape[0]}): one sequence "
                         f"of T >= 1 steps with the model's {W_x0.shape[0]} input feature(s)")
    inp = x                                                              # (T, D) -> (T, H) layer by layer
    for W_x, W_h, b in stack[:layer + 1]:
        T, H = inp.shape[0], W_h.shape[0]
        acts = {k: np.empty((T, H), x.dtype) for k in FIELDS}
        h = c = np.zeros((1, H), x.dtype)
        for t in range(T):
            h, c, cache = step_forward(inp[t:t + 1], h, c, W_x, W_h, b)  # one step, (1, H) each
            for k in ("I", "F", "O", "C_tilde"):
                acts[k][t] = getattr(cache, k)[0]
            acts["C"][t], acts["H"][t] = c[0], h[0]
        inp = acts["H"]
    return acts


def plot_gates(acts, path=None, *, title=None, time_labels=None, time_axis=None):
    """Six heatmaps (time across, units down) of gate_activations' output; returns the Figure.

    path        : also write it there, atomically, in the format its suffix names (.png, .svg, .pdf, ...);
                  ValueError for a suffix matplotlib cannot write
    time_labels : T strings to label the time axis (e.g. the letters fed), used when T <= 60
    time_axis   : T numbers for the time axis (e.g. t of a series); default 0..T-1
    Colour scales: gates I, F, O on [0, 1]; C̃ and H on [-1, 1]; C symmetric around 0.
    """
    where = "plot_gates"
    missing = [k for k in FIELDS if k not in acts]
    if missing:
        raise ValueError(f"{where}: acts lacks {missing}; pass the dict gate_activations returns")
    T, H = np.shape(acts["H"])
    plt = common.pyplot()
    if path is not None:
        fmt = common.figure_format(path, where)                           # refuse before drawing anything
    fig, axes = plt.subplots(2, 3, figsize=(14, 6.5), constrained_layout=True, sharex=True, sharey=True)
    extent = None
    if time_axis is not None:
        ta = np.asarray(time_axis, float)
        dt = (ta[-1] - ta[0]) / max(T - 1, 1)
        extent = (ta[0] - dt / 2, ta[-1] + dt / 2, H - 0.5, -0.5)
    for ax, k in zip(axes.flat, FIELDS):
        a = np.asarray(acts[k], float).T                                  # (H, T): units down, time across
        if k in ("I", "F", "O"):
            kw = dict(cmap="viridis", vmin=0.0, vmax=1.0)
        else:
            lim = 1.0 if k != "C" else max(float(np.abs(a).max()), 1e-6)
            kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim)
        im = ax.imshow(a, aspect="auto", interpolation="nearest", extent=extent, **kw)
        ax.set_title(TITLES[k], fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    for ax in axes[1]:
        ax.set_xlabel("time step" if time_axis is None else "t")
    for ax in axes[:, 0]:
        ax.set_ylabel("unit")
    if time_labels is not None and time_axis is None and T <= 60:
        for ax in axes[1]:
            ax.set_xticks(range(T))
            ax.set_xticklabels(list(time_labels), fontsize=7)
    if title:
        fig.suptitle(title)
    if path is not None:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight"))
    return fig


# ---------------------------------------------------------------------------------- the command
def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="training epochs of the model (default: the alphabet or "
                                                    "sine command's own)")
    parser.add_argument("--model", choices=("alphabet", "sine"), default="alphabet",
                        help="which trained model to look inside (default alphabet: the stateful one)")


def run(args):
    return common.guarded("gates", _run, args)


def _alphabet(args):
    from . import alphabet
    model, x, labels, _, hist, s = alphabet.train_model("stateful", args.seed, args.quick, args.epochs, args.device,
                                                        args.progress)
    seq = alphabet.encode(np.arange(alphabet.K))[:, None]                  # A..Z, one letter per step: (26, 1)
    acts = gate_activations(model, seq)
    logits = model.layers[-1].forward(acts["H"])
    predicted = "".join(alphabet.LETTERS[i] for i in logits.argmax(-1))
    info = {"model": "alphabet: stateful LSTM(50), letter index / 26 in, next letter out",
            "sequence": "A..Z, one letter per step, from a zero state", "predicted_next": predicted,
            "train_accuracy_last_epoch": hist.get("accuracy", [None])[-1], "epochs": s["epochs"]}
    plot_kw = dict(time_labels=list(alphabet.LETTERS),
                   title="stateful alphabet model fed A..Z: gates and states per step (letters along the bottom)")
    return acts, info, plot_kw


def _sine(args):
    import npylstm
    from . import sine
    s = sine.settings(args.quick, args.epochs)
    t, _, series = sine.noisy_sine(args.seed)
    train_part, _ = npylstm.chronological_split(series, test_fraction=sine.TEST_FRACTION)
    model, _, hist, _ = sine.train_stateful(train_part, s, args.seed, np.random.default_rng(args.seed + 1),
                                            args.device, args.progress)
    acts = gate_activations(model, series[:, None])
    last = slice(len(series) - 200, len(series))
    acts = {k: v[last] for k, v in acts.items()}
    info = {"model": f"sine: stateful LSTM({s['hidden']}) trained on streams", "epochs": s["stateful_epochs"],
            "sequence": "the whole noisy series from a zero state; the last 200 steps shown",
            "train_loss_last_epoch": hist["loss"][-1]}
    plot_kw = dict(time_axis=t[last], title="stateful sine model: gates and states over the last 200 steps")
    return acts, info, plot_kw


def _run(args):
    common.require_device(args.device)
    out = common.out_dir(args)
    with common.Timer() as tm:
        acts, info, plot_kw = (_alphabet if args.model == "alphabet" else _sine)(args)
    stem = "gates" if args.model == "alphabet" else f"gates_{args.model}"   # the two models never overwrite each other
    plot_kw["title"] = common.quick_label(plot_kw["title"], args.quick)
    npz = atomic_write(common.output_path(out, stem, "npz", args.quick), lambda f: np.savez(f, **acts))
    T, H = acts["H"].shape
    results = {"command": "gates", "quick": args.quick, "config": {"seed": args.seed, "quick": args.quick, "device": args.device,
                                              "model": args.model},
               **info, "steps": T, "units": H,
               "mean": {k: float(v.mean()) for k, v in acts.items()},
               "saturated_fraction": {k: float(np.mean((acts[k] < 0.05) | (acts[k] > 0.95))) for k in ("I", "F", "O")},
               "seconds": tm.seconds}
    js = common.write_json(common.output_path(out, stem, "json", args.quick), results)
    written = [npz + " (the arrays)", js]
    if args.plot:
        written.insert(0, common.save_figure(plot_gates(acts, **plot_kw), common.output_path(out, stem, "png",
                                                                                             args.quick)))
    print(common.quick_label(f"{info['model']}; {T} steps x {H} units", args.quick))
    if "predicted_next" in info:
        print(f"fed A..Z, predicts next: {info['predicted_next']}")
    print("mean over steps and units: " + ", ".join(f"{k} {v:+.3f}" for k, v in results["mean"].items()))
    print(f"wrote {', '.join(written)} ({tm.seconds:.1f} s)")
    return 0
