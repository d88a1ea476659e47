"""What the seed experiments share: their flags (checked by argparse `type=` functions, so a bad value is
the command's usage line and one error line, exit status 2), the cell (LSTM or GRU) and device checks,
training with a progress bar and per-epoch timing, the output folder and file names (a --quick run
writes `NAME_quick.*`, never over a full run's files), the results JSON, and matplotlib imported only
when a figure is written (--no-plot: none is).

Every command module has `add_arguments(parser)` and `run(args) -> int`; `run` goes through
`guarded`, which turns the expected failures (no GPU, no matplotlib, an output folder that cannot be
written) into one line on stderr and exit status 2 instead of a traceback.
"""

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time

import numpy as np

from npylstm.files import atomic_write, write_json  # noqa: F401 (write_json: the commands' JSON)
from npylstm.gru import GRU
from npylstm.lstm import LSTM

EXIT_USAGE = 2  # the status argparse uses for a bad command line; we use it for "cannot run as asked"
SEED_MAX = 2 ** 32 - 1   # NumPy's seed range (np.random.seed, RandomState): 0 .. 2**32 - 1
PLOT_EXTRA = 'pip install "npylstm[plot]"'   # the install that brings matplotlib (and tqdm)
CELLS = {"lstm": LSTM, "gru": GRU}   # --cell: the recurrent layer class the experiments build


class CommandError(Exception):
    """A failure the user can fix (a missing GPU or package): printed as one line, no traceback."""


# ---------------------------------------------------------------------------------- flags
def seed_value(text):
    """argparse type for --seed: an int in NumPy's seed range [0, 2**32 - 1]."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}], got {seed}")
    return seed


def positive_int(text):
    """argparse type for counts (--epochs, --repeats, ...): an int >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {n}")
    return n


def out_folder(text):
    """argparse type for --out: a folder that exists or can be created, and can be written.

    Refused: the empty string, an existing file, a path under a file, a place without write permission.
    (Creating the folder and writing into it is tried again by out_dir before the command trains: that also
    catches what permissions do not show, such as a read-only file system or running as root.)
    """
    if not text:
        raise argparse.ArgumentTypeError("must be a folder, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    parent = os.path.abspath(text)
    while not os.path.exists(parent):              # the nearest existing folder above: the one makedirs writes into
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {parent!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "write into" if parent == os.path.abspath(text) else "create"
        raise argparse.ArgumentTypeError(f"cannot {what} {text!r}: no write permission in {parent!r}")
    return text


def add_common_arguments(parser, *, epochs_help):
    """The flags every experiment takes. `epochs_help` says what --epochs means for this command."""
    parser.add_argument("--seed", type=seed_value, default=0,
                        help=f"random seed, 0 to {SEED_MAX}: data, initial weights, shuffling (default 0)")
    parser.add_argument("--epochs", type=positive_int, default=None, help=f"{epochs_help}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the LSTM layers run (default cpu); cuda needs CuPy and a usable GPU")
    parser.add_argument("--out", type=out_folder, default="out",
                        help="folder for the figure(s) and the results JSON, created if missing (default ./out)")
    parser.add_argument("--quick", action="store_true",
                        help="small settings, seconds not minutes; files named NAME_quick.*, labelled quick")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_plot_argument(parser)


def add_plot_argument(parser):
    """--no-plot (args.plot False): write the tables and JSON only; matplotlib is then not needed."""
    parser.add_argument("--no-plot", dest="plot", action="store_false",
                        help="no figures, only the table and the JSON (no matplotlib needed)")


def add_cell_argument(parser):
    parser.add_argument("--cell", choices=tuple(CELLS), default="lstm",
                        help="the recurrent layer: lstm (default) or gru (PyTorch's GRU, reset_after=True)")


def positive_epochs(epochs):
    """CommandError unless epochs is None or >= 1 (for callers that bypass the argparse check)."""
    if epochs is not None and epochs < 1:
        raise CommandError(f"--epochs must be at least 1, got {epochs}")
    return epochs


def guarded(command, body, args):
    """Run body(args) -> int; a CommandError becomes `npylstm COMMAND: error: ...` and exit status 2."""
    try:
        with one_blas_thread():
            return body(args)
    except CommandError as e:
        print(f"npylstm {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


# ---------------------------------------------------------------------------------- device
def require_device(device):
    """Return quietly if the LSTM layers can run on `device`; raise CommandError (one line) if not.

    cuda goes through npylstm.gpu.require_cuda(), which says what is missing (CuPy, a device, NVRTC).
    A build without npylstm/gpu.py has no GPU path at all, and says so the same way.
    """
    if device == "cpu":
        return
    try:
        gpu = importlib.import_module("npylstm.gpu")
    except ImportError as e:  # npylstm.gpu itself missing, or one of its imports (cupy, ...)
        missing = getattr(e, "name", None)
        if missing in (None, "npylstm.gpu"):
            raise CommandError("--device cuda: this build of npylstm has no GPU path "
                               "(npylstm.gpu is missing)") from None
        raise CommandError(f"--device cuda: cannot import {missing!r} ({e})") from None
    try:
        gpu.require_cuda()
    except RuntimeError as e:
        raise CommandError(f"--device cuda: {e}") from None


def require_cell(cell, device):
    """CommandError (one line) unless the recurrent layer `cell` exists and can run on `device`."""
    if cell not in CELLS:
        raise CommandError(f"--cell must be one of {', '.join(CELLS)}, got {cell!r}")
    if device != "cpu" and CELLS[cell].cuda_backend is None:
        raise CommandError(f"--cell {cell} --device {device}: the {CELLS[cell].name} has no CUDA backend in "
                           f"this build; use --device cpu")


def recurrent(cell, input_size, hidden_size, *, seed, device="cpu", **kwargs):
    """A batch-first recurrent layer of kind `cell` ("lstm" / "gru") on `device`."""
    return CELLS[cell](input_size, hidden_size, batch_first=True, seed=seed, **kwargs, **lstm_kwargs(device))


def cell_of(layer):
    """The --cell name of a recurrent layer ("lstm" / "gru")."""
    return next(name for name, cls in CELLS.items() if isinstance(layer, cls))


def host_copy(layer, batch_first=True):
    """A stateless CPU copy of a trained recurrent layer (LSTM or GRU): same class, sizes, weights."""
    extra = {"reset_after": layer.reset_after} if isinstance(layer, GRU) else {}
    copy = type(layer)(layer.input_size, layer.hidden_size, num_layers=layer.num_layers, batch_first=batch_first,
                       dtype=layer.dtype, **extra)
    for k, v in layer.params.items():
        copy.params[k] = np.array(host(v), copy=True)
    return copy


def lstm_kwargs(device):
    """Keyword arguments that put an LSTM layer on `device` (nothing for cpu, so the CPU path never
    depends on the GPU build)."""
    return {} if device == "cpu" else {"device": device}


def host(a):
    """A NumPy array on the host: CuPy arrays (from a --device cuda layer) are copied back, others passed to
    np.asarray. The experiments score and plot on the host."""
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


# ---------------------------------------------------------------------------------- training
@contextlib.contextmanager
def one_blas_thread():
    """Run the block (or, as a decorator, the function) with one BLAS thread, through threadpoolctl when
    it is installed (else unchanged).

    The experiments' products are tiny (N <= 32, H <= 50). On the 2-core CI machine under load, OpenBLAS's
    worker threads made the (32, 640) x (640, 128) product of sequence_backward 12-44 ms instead of
    0.07 ms with one thread, and `npylstm sine` took 96 s instead of 10 s; the results are the same.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def progress_range(n, desc, enabled):
    """range(n) with a tqdm bar (to stderr) when enabled and tqdm is installed; plain range otherwise."""
    if enabled:
        try:
            from tqdm.auto import trange
            return trange(n, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass
    return range(n)


def train(model, x, y, *, epochs, batch_size, rng, shuffle=True, mask=None, progress=True, desc="train"):
    """Fit `model` for `epochs` epochs, one `fit(..., epochs=1)` call per epoch, behind one progress bar.

    The shuffling is ours (rng.permutation, rows permuted identically in x, y and mask) and fit is
    called with shuffle=False, so the same seed gives the same run whatever the toolkit's own RNG does.
    A stateful model is never shuffled: fit resets its state at the start of each epoch and walks the
    batches in order. Returns the per-epoch training losses (and accuracies for cross-entropy),
    "epoch_seconds", the wall time of each epoch's fit call (perf_counter), and "epoch_cpu_seconds",
    the CPU time this process spent in it (process_time: on a loaded machine it moves less than the
    wall time, since waiting for a core is not counted).
    """
    history = {}
    bar = progress_range(epochs, desc, progress)
    with one_blas_thread():
        for _ in bar:
            if shuffle:
                perm = rng.permutation(len(x))
                xe, ye, me = x[perm], y[perm], (None if mask is None else mask[perm])
            else:
                xe, ye, me = x, y, mask
            t0, c0 = time.perf_counter(), time.process_time()
            h = model.fit(xe, ye, epochs=1, batch_size=batch_size, shuffle=False, mask=me, progress=False)
            history.setdefault("epoch_seconds", []).append(time.perf_counter() - t0)
            history.setdefault("epoch_cpu_seconds", []).append(time.process_time() - c0)
            for k, v in h.items():
                history.setdefault(k, []).append(float(v[-1]))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
    return history


class Timer:
    """with Timer() as t: ...; t.seconds"""

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0


# ---------------------------------------------------------------------------------- output
QUICK_SUFFIX = "_quick"   # a --quick run's files: alphabet_quick.png, alphabet_quick.json, ...


def out_dir(args, figures=True):
    """args.out made ready before any training: created, checked writable (a file is created and removed in
    it), and matplotlib importable when the command draws (`figures`) and figures are asked for (args.plot).
    CommandError (one line) if not."""
    if figures and getattr(args, "plot", False):
        pyplot()
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as e:
        raise CommandError(f"--out {args.out}: cannot write there ({e.strerror or e})") from None
    return args.out


def output_path(out, stem, ext, quick):
    """out/STEM.EXT, or out/STEM_quick.EXT for a --quick run, so a quick run never overwrites a full one.

    output_path("out", "alphabet", "png", True) -> "out/alphabet_quick.png"
    """
    return os.path.join(out, f"{stem}{QUICK_SUFFIX if quick else ''}.{ext}")


def quick_label(text, quick):
    """`text`, marked as a --quick run when it is one: for table headers and figure titles."""
    return f"{text} [quick run: small settings]" if quick else text


def pyplot():
    """matplotlib.pyplot with the Agg backend (files only, no display), imported on first use."""
    try:
        import matplotlib
    except ImportError:
        raise CommandError(f"writing figures needs matplotlib: {PLOT_EXTRA}, or run with --no-plot") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def figure_format(path, where):
    """The savefig format for `path`, from its suffix (.png, .svg, .pdf, ...: what matplotlib can write);
    ValueError naming `where` and `path` for a missing or unknown suffix."""
    from matplotlib.backend_bases import FigureCanvasBase
    fmt = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"{where}: cannot tell the figure format of path {os.fspath(path)!r}: expected a suffix "
                         f"among {', '.join('.' + k for k in sorted(known))}")
    return fmt


def save_figure(fig, path, *, close=True, where="save_figure"):
    """Write `fig` to `path` atomically, in the format its suffix names (figure_format); returns path."""
    plt = pyplot()
    fmt = figure_format(path, where)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight"))
    if close:
        plt.close(fig)
    return path
