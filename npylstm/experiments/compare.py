"""`npylstm compare`: LSTM vs GRU side by side on the seed experiments.

Runs, with both cells, the same seed, data, sizes and settings:

    sine, stateless   windows of 20 -> next point (sine.py (a))          test MSE (lower is better)
    sine, stateful    streams, state carried, TBPTT (sine.py (b))        test MSE
    alphabet, stateful  one letter at a time, batch 1 (alphabet.py)      training accuracy; recites B..Z from A?

and prints one fixed-width table: experiment, cell, score, parameter count, seconds per epoch and CPU
seconds per epoch, and writes compare.json (the rows, every epoch's times, the settings, versions).

Timing, side by side. The scores come from each cell's full training run, one after the other. The
seconds come from a separate timing pass over the trained models: for each experiment, REPEATS more
epochs of each model, the two cells alternating epoch by epoch (LSTM GRU GRU LSTM ...), so that both
see the same load on a shared machine; per epoch the wall time (perf_counter) and the CPU time of this
process (process_time) of one `fit(..., epochs=1)` call, one BLAS thread; the table shows the
medians. (Timed one cell after the other instead, the GRU/LSTM wall-time ratio of the same code moved
from 1.1 to 2.6 between runs on the shared 2-core machine.) The training runs' own per-epoch times are
in the JSON too ("train_epoch_seconds").

Parameter counts, for input size D, hidden size H and a Linear head H -> K:
    LSTM  4H(D + H) + 4H    one bias b (4H,)
    GRU   3H(D + H) + 6H    two biases b_x, b_h (3H,) each -- PyTorch's layout, reset_after=True
    head  HK + K
The GRU has about 3/4 of the LSTM's recurrent parameters and products, but at these sizes (N <= 32,
H <= 50) a step costs NumPy call overhead as much as arithmetic: one layer's forward + backward alone,
one BLAS thread, measured GRU / LSTM 1.0 at (N, T, H) = (32, 20, 32), 1.2 at (4, 20, 32) and 1.4 at
(1, 1, 50) -- the GRU is not 3/4 of the time.
"""

import os
import platform
import statistics
import time

import numpy as np

from . import alphabet, common, sine

CELLS = ("lstm", "gru")
REPEATS = {"full": 20, "quick": 3}   # timed epochs per cell and experiment, the cells alternating
EXPERIMENTS = ("sine_stateless", "sine_stateful", "alphabet_stateful")
LABELS = {"sine_stateless": "sine, stateless windows", "sine_stateful": "sine, stateful streams",
          "alphabet_stateful": "alphabet, stateful"}


def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="epochs of every experiment (default: each its own: "
                                                    "sine 100 stateless / 150 stateful, alphabet 300; "
                                                    "quick: 8 / 12 / 150)")


def run(args):
    return common.guarded("compare", _run, args)


def median(seconds):
    return float(statistics.median(seconds))


@common.one_blas_thread()
def experiment(seed=0, quick=False, epochs=None, device="cpu", progress=True):
    """Both cells through the three experiments, then the timing pass; returns the results dict."""
    for cell in CELLS:
        common.require_cell(cell, device)
    found, fits = {}, {}
    for cell in CELLS:
        res, arrays = sine.experiment(seed=seed, quick=quick, epochs=epochs, device=device, progress=progress,
                                      cell=cell, extras=False)
        mse = res["test_mse"]
        for kind in ("stateless", "stateful"):
            found[(f"sine_{kind}", cell)] = {
                "metric": "test MSE", "value": mse[kind], "num_parameters": res["num_parameters"][kind],
                "epochs": len(res["epoch_seconds"][kind]), "train_epoch_seconds": res["epoch_seconds"][kind],
                "beats_last_value": mse[kind] < mse["last_value"],
                "last_value_mse": mse["last_value"], "noise_floor": mse["noise_floor"]}
            fits[(f"sine_{kind}", cell)] = arrays["fits"][kind]
    for cell in CELLS:
        keep = {}
        r = alphabet.run_one("stateful", seed, quick=quick, epochs=epochs, device=device, progress=progress,
                             cell=cell, keep=keep)
        found[("alphabet_stateful", cell)] = {
            "metric": "accuracy", "value": r["accuracy"], "num_parameters": r["num_parameters"],
            "epochs": r["epochs"], "train_epoch_seconds": r["epoch_seconds"],
            "recital_from_A": r["recital_from_A"], "recites_alphabet": r["recites_alphabet"]}
        fits[("alphabet_stateful", cell)] = keep["fit"]
    repeats = REPEATS["quick" if quick else "full"]
    for e in EXPERIMENTS:
        times = time_epochs({c: fits[(e, c)] for c in CELLS}, repeats)
        for c in CELLS:
            wall, cpu = times[c]
            found[(e, c)].update(seconds_per_epoch=median(wall), cpu_seconds_per_epoch=median(cpu),
                                 timed_epoch_seconds=wall, timed_epoch_cpu_seconds=cpu)
    rows = [{"experiment": e, "cell": c, **found[(e, c)]} for e in EXPERIMENTS for c in CELLS]
    return {"command": "compare", "quick": quick,
            "config": {"seed": seed, "quick": quick, "device": device, "epochs": epochs, "timed_epochs": repeats,
                       "sine": sine.settings(quick, epochs), "alphabet_stateful": alphabet.SETTINGS["stateful"]},
            "machine": {"python": platform.python_version(), "numpy": np.__version__,
                        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
            "rows": rows}


def time_epochs(fits, repeats):
    """{cell: (wall seconds, CPU seconds) per epoch}: `repeats` more epochs of each trained model, the cells
    alternating and the order flipping every round (A B, B A, ...) so neither always runs first.

    fits : {cell: (model, x, y, batch_size)}; training continues (the weights change, the cost does not)."""
    cells = list(fits)
    out = {c: ([], []) for c in cells}
    for k in range(repeats):
        for c in (cells if k % 2 == 0 else cells[::-1]):
            model, x, y, bs = fits[c]
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(x, y, epochs=1, batch_size=bs, shuffle=False, progress=False)
            out[c][0].append(time.perf_counter() - t0)
            out[c][1].append(time.process_time() - c0)
    return out


def table(results):
    """The fixed-width comparison table (what the README shows)."""
    head = f"{'experiment':<26}{'cell':<6}{'score':>18}{'params':>9}{'s / epoch':>11}{'cpu s / epoch':>15}  note"
    lines = [common.quick_label("LSTM vs GRU, same seed, data and settings", results["config"]["quick"]),
             head, "-" * len(head)]
    for r in results["rows"]:
        if r["metric"] == "accuracy":
            score = f"acc {100 * r['value']:.2f}%"
            note = "recites B..Z from A" if r["recites_alphabet"] else f"from A: {r['recital_from_A']}"
        else:
            score = f"MSE {r['value']:.5f}"
            note = f"last value {r['last_value_mse']:.5f}"
        lines.append(f"{LABELS[r['experiment']]:<26}{r['cell'].upper():<6}{score:>18}{r['num_parameters']:>9}"
                     f"{r['seconds_per_epoch']:>11.4f}{r['cpu_seconds_per_epoch']:>15.4f}  {note}")
    by = {(r["experiment"], r["cell"]): r for r in results["rows"]}
    ratio = lambda e, k: by[(e, "gru")][k] / by[(e, "lstm")][k]  # noqa: E731
    lines.append("GRU / LSTM per epoch, cpu (wall): " + "; ".join(
        f"{LABELS[e]} {ratio(e, 'cpu_seconds_per_epoch'):.2f} ({ratio(e, 'seconds_per_epoch'):.2f})"
        for e in EXPERIMENTS))
    lines.append(f"per epoch: median of {results['config']['timed_epochs']} epochs per cell, the cells alternating; "
                 f"wall / CPU time; sine noise floor σ² = {sine.NOISE_FLOOR:.2f}")
    return "\n".join(lines)


def _run(args):
    common.require_device(args.device)
    for cell in CELLS:
        common.require_cell(cell, args.device)
    out = common.out_dir(args, figures=False)   # compare draws nothing: --no-plot is accepted, changes nothing
    with common.Timer() as tm:
        results = experiment(seed=args.seed, quick=args.quick, epochs=args.epochs, device=args.device,
                             progress=args.progress)
    results["seconds_total"] = tm.seconds
    js = common.write_json(common.output_path(out, "compare", "json", args.quick), results)
    print(table(results))
    print(f"wrote {js} ({tm.seconds:.1f} s)")
    return 0
