"""`npylstm compare`: LSTM vs GRU side by side on the seed experiments.

Runs, with both cells, the same seed, data, sizes and settings:

    sine, stateless   windows of 20 -> next point (sine.py (a))          test MSE (lower is better)
    sine, stateful    streams, state carried, TBPTT (sine.py (b))        test MSE
    alphabet, stateful  one letter at a time, batch 1 (alphabet.py)      training accuracy; recites B..Z from A?

and prints one fixed-width table: experiment, cell, score, parameter count, seconds per epoch (the
median over the epochs of the wall time of each epoch's fit call, one BLAS thread) and CPU seconds per
epoch (the same median of process_time), and writes compare.json (the rows, each epoch's seconds, the
settings, versions).

Parameter counts, for input size D, hidden size H and a Linear head H -> K:
    LSTM  4H(D + H) + 4H    one bias b (4H,)
    GRU   3H(D + H) + 6H    two biases b_x, b_h (3H,) each -- PyTorch's layout, reset_after=True
    head  HK + K
so the GRU has about 3/4 of the LSTM's recurrent parameters and does 3/4 of its matrix products.

The cells run one after the other in one process (LSTM, then GRU, per experiment), so a change of load
between the two runs moves the wall-time ratio (seen: 1.1 to 2.6 for the same code on the shared
2-core machine); the CPU-time ratio, which does not count time spent waiting for a core, is the one
printed under the table. At these sizes (N <= 32, H <= 50) a step costs about as much in NumPy call
overhead as in arithmetic, so the GRU's 3/4 of the products does not make it faster.
"""

import os
import platform
import statistics

import numpy as np

from . import alphabet, common, sine

CELLS = ("lstm", "gru")
EXPERIMENTS = ("sine_stateless", "sine_stateful", "alphabet_stateful")
LABELS = {"sine_stateless": "sine, stateless windows", "sine_stateful": "sine, stateful streams",
          "alphabet_stateful": "alphabet, stateful"}


def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="epochs of every experiment (default: each its own: "
                                                    "sine 100 stateless / 150 stateful, alphabet 300; "
                                                    "quick: 8 / 12 / 150)")


def run(args):
    return common.guarded("compare", _run, args)


def median_epoch(seconds):
    return float(statistics.median(seconds))


@common.one_blas_thread()
def experiment(seed=0, quick=False, epochs=None, device="cpu", progress=True):
    """Both cells through the three experiments; returns the results dict (rows in table order)."""
    for cell in CELLS:
        common.require_cell(cell, device)
    found = {}
    for cell in CELLS:
        res, _ = sine.experiment(seed=seed, quick=quick, epochs=epochs, device=device, progress=progress, cell=cell)
        mse, secs, cpu, params = res["test_mse"], res["epoch_seconds"], res["epoch_cpu_seconds"], res["num_parameters"]
        for kind in ("stateless", "stateful"):
            found[(f"sine_{kind}", cell)] = {
                "metric": "test MSE", "value": mse[kind], "num_parameters": params[kind],
                "seconds_per_epoch": median_epoch(secs[kind]), "cpu_seconds_per_epoch": median_epoch(cpu[kind]),
                "epochs": len(secs[kind]), "epoch_seconds": secs[kind], "epoch_cpu_seconds": cpu[kind],
                "beats_last_value": mse[kind] < mse["last_value"],
                "last_value_mse": mse["last_value"], "noise_floor": mse["noise_floor"]}
    for cell in CELLS:
        r = alphabet.run_one("stateful", seed, quick=quick, epochs=epochs, device=device, progress=progress,
                             cell=cell)
        found[("alphabet_stateful", cell)] = {
            "metric": "accuracy", "value": r["accuracy"], "num_parameters": r["num_parameters"],
            "seconds_per_epoch": median_epoch(r["epoch_seconds"]),
            "cpu_seconds_per_epoch": median_epoch(r["epoch_cpu_seconds"]), "epochs": r["epochs"],
            "epoch_seconds": r["epoch_seconds"], "epoch_cpu_seconds": r["epoch_cpu_seconds"],
            "recital_from_A": r["recital_from_A"],
            "recites_alphabet": r["recites_alphabet"]}
    rows = [{"experiment": e, "cell": c, **found[(e, c)]} for e in EXPERIMENTS for c in CELLS]
    return {"command": "compare",
            "config": {"seed": seed, "quick": quick, "device": device, "epochs": epochs,
                       "sine": sine.settings(quick, epochs), "alphabet_stateful": alphabet.SETTINGS["stateful"]},
            "machine": {"python": platform.python_version(), "numpy": np.__version__,
                        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
            "rows": rows}


def table(results):
    """The fixed-width comparison table (what the README shows)."""
    head = f"{'experiment':<26}{'cell':<6}{'score':>18}{'params':>9}{'s / epoch':>11}{'cpu s / epoch':>15}  note"
    lines = [head, "-" * len(head)]
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
    lines.append(f"per epoch: median over epochs of each epoch's wall / CPU time; sine noise floor "
                 f"σ² = {sine.NOISE_FLOOR:.2f}")
    return "\n".join(lines)


def _run(args):
    common.positive_epochs(args.epochs)
    common.require_device(args.device)
    for cell in CELLS:
        common.require_cell(cell, args.device)
    out = common.out_dir(args)
    with common.Timer() as tm:
        results = experiment(seed=args.seed, quick=args.quick, epochs=args.epochs, device=args.device,
                             progress=args.progress)
    results["seconds_total"] = tm.seconds
    js = common.write_json(os.path.join(out, "compare.json"), results)
    print(table(results))
    print(f"wrote {js} ({tm.seconds:.1f} s)")
    return 0
