"""`npylstm` command line: one subcommand per module, each with add_arguments(parser) and run(args) -> int."""

import argparse
import importlib
import os
import sys

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE (`npylstm gradcheck | head`)

COMMANDS = {
    # name: (module, one-line help); a module is imported only when its command runs
    "gradcheck": ("npylstm.gradcheck", "finite-difference check of every gradient (float64)"),
    "bench": ("npylstm.bench", "time one cell step (or a sequence): NumPy, GPU kernels, PyTorch"),
    "sine": ("npylstm.experiments.sine", "noisy sine: five predictors, one step ahead and running free"),
    "alphabet": ("npylstm.experiments.alphabet", "the learn-the-alphabet suite"),
    "gates": ("npylstm.experiments.gates", "heatmaps of I, F, O, C~, C, H over a sequence"),
    "compare": ("npylstm.experiments.compare", "LSTM vs GRU side by side"),
}


def main(argv=None):
    """Run `npylstm COMMAND ...`; returns the exit status (argparse exits 2 itself on a bad command line)."""
    from npylstm import __version__
    parser = argparse.ArgumentParser(prog="npylstm", description="An LSTM from scratch, to be read, checked and timed.")
    parser.add_argument("--version", action="version", version=f"npylstm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    subparsers = {}
    for name, (module_name, help_) in COMMANDS.items():
        p = subparsers[name] = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name is None or not module_name.startswith(e.name):
                    raise
                parser.error(f"command {name!r} is not available in this version of npylstm")
            module.add_arguments(p)
    # arguments the command does not know are reported by the command's parser, with its own usage line
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return module.run(args)
    except BrokenPipeError:  # the reader of stdout left (a pipe into head): stop quietly, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
