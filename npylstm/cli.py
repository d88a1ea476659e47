"""`npylstm` command line: one subcommand per module, each with add_arguments(parser) and run(args) -> int."""

import argparse
import importlib
import sys

COMMANDS = {
    # name: (module, one-line help)
    "gradcheck": ("npylstm.gradcheck", "finite-difference check of every gradient (float64)"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="npylstm", description="An LSTM from scratch, to be read, checked and timed.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_) in COMMANDS.items():
        modules[name] = importlib.import_module(module)
        modules[name].add_arguments(sub.add_parser(name, help=help_, description=help_))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
