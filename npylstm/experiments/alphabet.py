"""`npylstm alphabet`: the learn-the-alphabet suite, one experiment per framing.

After Jason Brownlee, "Understanding Stateful LSTM Recurrent Neural Networks in Python with Keras"
(machinelearningmastery.com). The task: given a letter (or a few), predict the next letter of the
alphabet. Input encoding as in the tutorial: each letter is one number, its index / 26 (A = 0.0,
B = 0.038, ..., Z = 0.96); the target is the next letter's class (26-way softmax, cross-entropy).
Accuracy is training accuracy, as the tutorial reports it.

| key             | input x (N, T, D)                          | model                                     |
|-----------------|--------------------------------------------|-------------------------------------------|
| one_char        | one letter: (25, 1, 1)                     | LSTM(32), batch 1, shuffled               |
| three_features  | 3-letter window as 3 features: (23, 1, 3)  | LSTM(32), batch 1, shuffled               |
| three_steps     | 3-letter window as 3 steps: (23, 3, 1)     | LSTM(32), batch 1, shuffled               |
| one_batch       | one letter, all 25 in one in-order batch   | LSTM(16), batch 25, not shuffled          |
| stateful        | one letter at a time, A..Y in order        | stateful LSTM(50), batch 1, reset each epoch |
| variable_length | 1..5 letters, pre-padded to 5, + mask      | LSTM(32), batch 32, shuffled              |

--cell gru swaps the LSTM for a GRU of the same hidden size (same data, seeds and settings).

Two notes a student should have:

* one_batch: the rows of a batch are independent sequences (each starts from a zero state), in
  Keras as here; a batch holding the whole alphabet gives the network no "context" from its
  neighbours. Its accuracy comes from full-batch training, not from state.
* stateful: the state carries the position in the alphabet; gradients stop at each one-step call
  (truncated BPTT of one step, Keras's behaviour). Seeded with A it recites B..Z; started cold from
  K it does not know where it is -- the tutorial's observation.
"""

import numpy as np

import npylstm

from . import common

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
K = len(LETTERS)  # 26 classes

# What the tutorial printed ("Model Accuracy: ..."), from its listing outputs (Aug 2018 update), as
# reproduced in the Chinese translation of the post (apachecn/ml-mastery-zh).
TUTORIAL = {
    "one_char": "84.00%",
    "three_features": "86.96%",
    "three_steps": "100.00%",
    "one_batch": "100.00%",
    "stateful": "100.00%; cold K -> B C D E F",
    "variable_length": "98.90%",
}

DESCRIPTIONS = {
    "one_char": "one letter -> next",
    "three_features": "3-letter window as 3 features",
    "three_steps": "3-letter window as 3 time steps",
    "one_batch": "whole alphabet as one in-order batch",
    "stateful": "stateful, one letter at a time, batch 1",
    "variable_length": "1-5 letters, pre-padded (+ mask)",
}

# hidden size, batch size, epochs (full, quick), Adam learning rate. Full settings are the tutorial's
# (Keras's Adam default lr = 0.001) except variable_length: the tutorial's batch 1 x 500 epochs is
# 500 000 updates, so its 500 epochs run in batches of 32, with lr = 0.01.
SETTINGS = {
    "one_char": dict(hidden=32, batch_size=1, epochs=(500, 50), lr=0.001),
    "three_features": dict(hidden=32, batch_size=1, epochs=(500, 50), lr=0.001),
    "three_steps": dict(hidden=32, batch_size=1, epochs=(500, 50), lr=0.001),
    "one_batch": dict(hidden=16, batch_size=25, epochs=(5000, 500), lr=0.001),
    "stateful": dict(hidden=50, batch_size=1, epochs=(300, 150), lr=0.001),
    "variable_length": dict(hidden=32, batch_size=32, epochs=(500, 15), lr=0.01),
}
VARIABLE_SAMPLES, MAX_LEN = 1000, 5


def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="epochs of every experiment (default: each its own, "
                                                    "see `npylstm alphabet --list`)")
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), metavar="NAME",
                        help=f"run only these experiments: {', '.join(SETTINGS)}")
    parser.add_argument("--list", action="store_true", help="print the experiments and their settings, then exit")
    common.add_cell_argument(parser)


def run(args):
    return common.guarded("alphabet", _run, args)


def encode(indices):
    """Letter indices (...) -> the tutorial's scalar feature index / 26, float32 (...)."""
    return np.asarray(indices, np.float32) / K


def windows(length):
    """All windows of `length` letters and the letter after: (26 - length, length) ints, (26 - length,) ints."""
    starts = np.arange(K - length)
    return starts[:, None] + np.arange(length), starts + length


def random_subsequences(rng, n, max_len):
    """The tutorial's variable-length data: n runs of 1..max_len consecutive letters and the next letter."""
    seqs, labels = [], []
    for _ in range(n):
        start = int(rng.integers(K - 2))
        end = int(rng.integers(start, min(start + max_len, K - 1)))     # last input letter, <= Y
        seqs.append(np.arange(start, end + 1))
        labels.append(end + 1)
    return seqs, np.array(labels)


def dataset(name, rng):
    """x (N, T, D) float32, labels (N,) ints, mask (N, T) or None, for experiment `name`."""
    if name in ("one_char", "one_batch", "stateful"):
        idx, labels = windows(1)
        return encode(idx)[:, :, None], labels, None                     # (25, 1, 1)
    if name == "three_features":
        idx, labels = windows(3)
        return encode(idx)[:, None, :], labels, None                     # (23, 1, 3)
    if name == "three_steps":
        idx, labels = windows(3)
        return encode(idx)[:, :, None], labels, None                     # (23, 3, 1)
    if name == "variable_length":
        seqs, labels = random_subsequences(rng, VARIABLE_SAMPLES, MAX_LEN)
        # padding value 0.0 is also the code of A: the mask is what tells them apart
        x, mask = npylstm.pad_sequences([encode(s)[:, None] for s in seqs], maxlen=MAX_LEN, padding="pre")
        return x.astype(np.float32), labels, mask                         # (1000, 5, 1), (1000, 5)
    raise ValueError(f"dataset: unknown experiment {name!r}")


def accuracy(model, x, labels, mask=None):
    return float(np.mean(common.host(model.predict(x, mask=mask)).argmax(-1) == labels))


def stateful_runner(model):
    """The trained stateful model's recurrent layer (LSTM or GRU) and head as a stateless batch-1 pair
    with explicit state, so that one letter at a time with the state carried is exactly what the
    stateful model computes."""
    rnn, head = model.layers
    return common.host_copy(rnn), head


def recite(runner, start, steps):
    """Seed with letter index `start` from a zero state; feed each prediction back. Returns the letters."""
    rnn, head = runner
    state, letter, out = None, start, []
    for _ in range(steps):
        y, state = rnn.forward(encode([[[letter]]]), state)              # (1, 1, H); GRU: state is h
        letter = int(head.forward(y[:, -1]).argmax(-1)[0])
        out.append(LETTERS[letter])
    return "".join(out)


def train_model(name, seed, quick=False, epochs=None, device="cpu", progress=True, cell="lstm"):
    """Build and train experiment `name`'s model with a `cell` ("lstm" / "gru") layer; returns
    (model, x, labels, mask, history, settings)."""
    s = dict(SETTINGS[name])
    rng = np.random.default_rng([seed, list(SETTINGS).index(name)])
    x, labels, mask = dataset(name, rng)
    y = npylstm.one_hot(labels, K)
    s["epochs"] = epochs or s["epochs"][1 if quick else 0]
    stateful = name == "stateful"
    H, D = s["hidden"], x.shape[-1]
    rnn = common.recurrent(cell, D, H, seed=int(rng.integers(2 ** 31)), device=device, stateful=stateful)
    head = npylstm.Linear(H, K, seed=int(rng.integers(2 ** 31)))
    model = npylstm.Sequential([rnn, head], stateful=stateful, seed=seed)
    model.compile(loss="cross_entropy", optimizer=npylstm.Adam(lr=s["lr"]))
    shuffle = name not in ("one_batch", "stateful")
    with common.Timer() as tm:
        hist = common.train(model, x, y, epochs=s["epochs"], batch_size=s["batch_size"], rng=rng, shuffle=shuffle,
                            mask=mask, progress=progress, desc=f"alphabet {name} {cell}")
    s["seconds"] = tm.seconds
    return model, x, labels, mask, hist, s


@common.one_blas_thread()
def run_one(name, seed, quick=False, epochs=None, device="cpu", progress=True, cell="lstm", keep=None):
    """Train and score one experiment with a `cell` layer; returns its row of results.

    keep : a dict, or None; a dict receives "fit": (model, x, one-hot y, batch size), the trained model
    and what one more epoch of it would be fed (compare times epochs with it)."""
    model, x, labels, mask, hist, s = train_model(name, seed, quick, epochs, device, progress, cell)
    if keep is not None:
        keep["fit"] = (model, x, npylstm.one_hot(labels, K), s["batch_size"])
    row = {"experiment": name, "description": DESCRIPTIONS[name], "cell": cell, "hidden": s["hidden"],
           "batch_size": s["batch_size"], "epochs": s["epochs"], "lr": s["lr"], "final_loss": hist["loss"][-1],
           "seconds": s["seconds"], "epoch_seconds": hist["epoch_seconds"],
           "epoch_cpu_seconds": hist["epoch_cpu_seconds"],
           "num_parameters": int(model.num_parameters()), "tutorial": TUTORIAL[name]}
    if name == "stateful":
        runner = stateful_runner(model)
        rnn, head = runner
        seq, _ = rnn.forward(x[:, 0][None])                              # A..Y as one sequence: (1, 25, H)
        row["accuracy"] = float(np.mean(head.forward(seq[0]).argmax(-1) == labels))
        # the same through the toolkit's own stateful path: in order, batch 1, state carried from a reset
        model.reset_states()
        scores = model.evaluate(x, npylstm.one_hot(labels, K), batch_size=1)
        row["accuracy_stateful_evaluate"] = float(scores["accuracy"])
        row["recital_from_A"] = recite(runner, 0, K - 1)
        row["recites_alphabet"] = row["recital_from_A"] == LETTERS[1:]
        row["cold_K"] = recite(runner, LETTERS.index("K"), 5)
        row["cold_K_correct"] = row["cold_K"] == "LMNOP"
    else:
        row["accuracy"] = accuracy(model, x, labels, mask)
    if name == "variable_length":   # a second draw (only ~110 distinct runs exist: checks the draw, not generalisation)
        xh, lh, mh = dataset(name, np.random.default_rng([seed, 99]))
        row["accuracy_fresh_sample"] = accuracy(model, xh, lh, mh)
    return row


def experiment(seed=0, quick=False, epochs=None, device="cpu", progress=True, only=None, cell="lstm"):
    rows = [run_one(name, seed, quick, epochs, device, progress, cell) for name in (only or SETTINGS)]
    return {"command": "alphabet", "quick": quick,
            "config": {"seed": seed, "quick": quick, "device": device, "cell": cell,
                       "encoding": "letter index / 26, one feature per letter"},
            "experiments": rows}


def table(results):
    cell = results["config"].get("cell", "lstm").upper()
    lines = [common.quick_label(f"cell: {cell}; input: one feature per letter, its index / 26 (the tutorial's "
                                f"encoding); accuracy on the training set", results["config"]["quick"]),
             f"{'experiment':<40}{'accuracy':>9}  {'tutorial reported':<30}{'epochs':>7}{'time':>8}"]
    for r in results["experiments"]:
        lines.append(f"{r['description']:<40}{100 * r['accuracy']:>8.2f}%  {r['tutorial']:<30}{r['epochs']:>7}"
                     f"{r['seconds']:>7.1f}s")
    for r in results["experiments"]:
        if r["experiment"] == "stateful":
            lines.append(f"stateful, seeded with A: {r['recital_from_A']}  "
                         f"({'the whole alphabet' if r['recites_alphabet'] else 'NOT the alphabet'})")
            lines.append(f"stateful, cold start from K: {r['cold_K']}  "
                         f"({'correct' if r['cold_K_correct'] else 'fails, as in the tutorial'})")
        if r["experiment"] == "variable_length":
            lines.append(f"variable length, fresh random sample: {100 * r['accuracy_fresh_sample']:.2f}%")
    lines.append("tutorial: J. Brownlee, \"Understanding Stateful LSTM Recurrent Neural Networks in Python with "
                 "Keras\", the accuracies its listings print")
    return "\n".join(lines)


def figure(results, path):
    """Bars: our training accuracy per experiment; diamonds: what the tutorial printed."""
    plt = common.pyplot()
    rows = results["experiments"]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6), constrained_layout=True)
    ypos = np.arange(len(rows))[::-1]
    ours = [100 * r["accuracy"] for r in rows]
    ax.barh(ypos, ours, color="tab:blue", height=0.6, label="npylstm (training accuracy)")
    theirs = [float(TUTORIAL[r["experiment"]].split("%")[0]) for r in rows]
    ax.plot(theirs, ypos, "D", color="tab:orange", ms=7, label="tutorial (Keras)")
    for y, v in zip(ypos, ours):   # inside a bar wide enough to hold it, else just after its end
        inside = v >= 12
        ax.text(1.5 if inside else v + 1.5, y, f"{v:.1f}%", va="center", ha="left",
                color="white" if inside else "black", fontsize=8)
    ax.set_yticks(ypos)
    ax.set_yticklabels([r["description"] for r in rows], fontsize=9)
    ax.set_xlim(0, 104)
    ax.set_xlabel("accuracy (%)")
    config = results["config"]
    title = common.quick_label(f"learn the alphabet, {config.get('cell', 'lstm').upper()} (seed {config['seed']})",
                               config["quick"])
    for r in rows:
        if r["experiment"] == "stateful":
            title += f"\nstateful, seeded with A: {r['recital_from_A']}; cold start from K: {r['cold_K']}"
    ax.set_title(title, fontsize=9)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    return common.save_figure(fig, path)


def _list():
    for name, s in SETTINGS.items():
        print(f"{name:<16} {DESCRIPTIONS[name]:<40} hidden {s['hidden']:>2}, batch {s['batch_size']:>2}, "
              f"epochs {s['epochs'][0]} (quick {s['epochs'][1]}), Adam lr {s['lr']}")


def _run(args):
    if args.list:
        _list()
        return 0
    common.require_device(args.device)
    common.require_cell(args.cell, args.device)
    out = common.out_dir(args)
    with common.Timer() as tm:
        results = experiment(seed=args.seed, quick=args.quick, epochs=args.epochs, device=args.device,
                             progress=args.progress, only=args.only, cell=args.cell)
    results["seconds_total"] = tm.seconds
    stem = "alphabet" if args.cell == "lstm" else f"alphabet_{args.cell}"    # the LSTM keeps its file names
    js = common.write_json(common.output_path(out, stem, "json", args.quick), results)
    written = [figure(results, common.output_path(out, stem, "png", args.quick))] if args.plot else []
    print(table(results))
    print(f"wrote {' and '.join(written + [js])} ({tm.seconds:.1f} s)")
    return 0
