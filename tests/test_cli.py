"""The `npylstm` command line as a user runs it, in a subprocess.

A bad flag value: the command's usage, then one `npylstm CMD: error: ...` line, exit status 2, no
traceback, nothing written. --version. An unknown flag is reported by the subcommand's own parser.
A NumPy-only install (matplotlib, tqdm and threadpoolctl made unimportable in the subprocess): every
command runs with --no-plot (JSON written, no PNG, progress bars on but silently off), and without
--no-plot a drawing command stops before training with one line naming the plot extra and --no-plot.
--quick runs write NAME_quick.* and say so in their JSON and table.
"""

import json
import os
import subprocess
import sys

import pytest

import npylstm
from npylstm.experiments import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(npylstm.__file__)))
DRAWING = ("sine", "alphabet", "gates")   # commands that write a figure unless --no-plot
# commands at their smallest: seconds each
TINY = {"sine": ["--quick", "--epochs", "1"], "alphabet": ["--quick", "--epochs", "1", "--only", "one_char"],
        "gates": ["--quick", "--epochs", "1"], "compare": ["--quick", "--epochs", "1"]}
NUMPY_ONLY = ("import sys\n"
              "for m in ('matplotlib', 'tqdm', 'threadpoolctl'):\n"
              "    sys.modules[m] = None   # import m raises ImportError, as when it is not installed\n"
              "from npylstm.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def npylstm_cli(*argv, numpy_only=False):
    """Run `python -m npylstm ARGV` (or, numpy_only, main(ARGV) with the optional packages unimportable)."""
    cmd = [sys.executable, "-c", NUMPY_ONLY] if numpy_only else [sys.executable, "-m", "npylstm"]
    return subprocess.run(cmd + [str(a) for a in argv], capture_output=True, text=True, cwd=ROOT, timeout=300)


def assert_usage_error(p, command, message):
    """Exit 2; stderr is the command's usage then exactly one error line holding `message`; no traceback."""
    assert p.returncode == common.EXIT_USAGE, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: npylstm {command} "), p.stderr
    errors = [line for line in lines if "error:" in line]
    assert errors == [lines[-1]] and lines[-1].startswith(f"npylstm {command}: error: "), p.stderr
    assert message in lines[-1], p.stderr


def assert_one_line_error(p, command, message):
    assert p.returncode == common.EXIT_USAGE, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"npylstm {command}: error: ") and message in lines[0], p.stderr


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("not a folder\n")
    return path


BAD_FLAGS = [   # (command, flags, what the error line says)
    ("sine", ["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    ("sine", ["--seed", str(2 ** 32)], f"got {2 ** 32}"),
    ("alphabet", ["--seed", "abc"], "argument --seed: must be an integer"),
    ("gates", ["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    ("compare", ["--epochs", "-3"], "argument --epochs: must be an integer >= 1, got -3"),
    ("alphabet", ["--epochs", "1.5"], "argument --epochs: must be an integer >= 1, got '1.5'"),
    ("sine", ["--out", "{file}"], "exists and is not a folder"),
    ("gates", ["--out", "{file}/sub"], "is a file, not a folder"),
    ("compare", ["--out", ""], "argument --out: must be a folder"),
    ("sine", ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ("sine", ["--cell", "rnn"], "argument --cell: invalid choice: 'rnn'"),
    ("alphabet", ["--only", "two_char"], "argument --only: invalid choice: 'two_char'"),
    ("alphabet", ["--only"], "argument --only: expected at least one argument"),
    ("gates", ["--model", "gru"], "argument --model: invalid choice: 'gru'"),
    ("sine", ["--bogus"], "unrecognized arguments: --bogus"),
    ("compare", ["--quick", "extra"], "unrecognized arguments: extra"),
]


@pytest.mark.parametrize("command, flags, message", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_flag_is_usage_and_one_error_line(command, flags, message, a_file, tmp_path):
    flags = [f.replace("{file}", str(a_file)) for f in flags]
    before = sorted(os.listdir(tmp_path))
    p = npylstm_cli(command, *flags)
    assert_usage_error(p, command, message)
    assert sorted(os.listdir(tmp_path)) == before and a_file.read_text() == "not a folder\n"


def test_unwritable_out_refused_before_training(tmp_path):
    """A place argparse's permission check cannot see through (root ignores permissions): out_dir's probe
    write refuses it, one line, before any training."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        p = npylstm_cli("alphabet", *TINY["alphabet"], "--no-plot", "--no-progress", "--out", locked / "out")
        if os.access(locked, os.W_OK):   # root: the folder can be written after all, nothing to refuse
            assert p.returncode == 0, p.stderr
        else:
            assert_usage_error(p, "alphabet", "no write permission in")
            assert not (locked / "out").exists()
    finally:
        locked.chmod(0o700)
    # no one, root included, can create a folder in /proc
    p = npylstm_cli("alphabet", *TINY["alphabet"], "--no-progress", "--out", "/proc/npylstm-out")
    assert_one_line_error(p, "alphabet", "--out /proc/npylstm-out: cannot write there")
    assert "Traceback" not in p.stderr and "%" not in p.stdout, p.stdout   # no accuracy table: nothing trained


def test_version():
    p = npylstm_cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"npylstm {npylstm.__version__}", (p.stdout, p.stderr)


def test_gradcheck_and_bench_still_parse_through_their_own_parser():
    for command in ("gradcheck", "bench"):
        p = npylstm_cli(command, "--bogus")
        assert_usage_error(p, command, "unrecognized arguments: --bogus")


@pytest.mark.parametrize("command", DRAWING)
def test_without_matplotlib_stops_before_training(command, tmp_path):
    out = tmp_path / "out"
    p = npylstm_cli(command, *TINY[command], "--out", out, numpy_only=True)
    assert_one_line_error(p, command, "needs matplotlib")
    assert 'pip install "npylstm[plot]"' in p.stderr and "--no-plot" in p.stderr
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize("command", [*DRAWING, "compare"])
def test_numpy_only_runs_with_no_plot(command, tmp_path):
    """No matplotlib, tqdm or threadpoolctl; progress bars asked for: JSON written, no figure."""
    p = npylstm_cli(command, *TINY[command], "--no-plot", "--out", tmp_path, numpy_only=True)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    names = sorted(os.listdir(tmp_path))
    assert f"{command}_quick.json" in names and not any(n.endswith(".png") for n in names), names
    results = json.loads((tmp_path / f"{command}_quick.json").read_text())
    assert results["command"] == command and results["config"]["quick"] is True
    if command != "sine":
        assert results["quick"] is True
        assert "quick run" in p.stdout.splitlines()[0], p.stdout


def test_quick_run_never_overwrites_a_full_run(tmp_path):
    full = tmp_path / "alphabet.json"
    full.write_text('{"full": true}\n')
    p = npylstm_cli("alphabet", *TINY["alphabet"], "--no-progress", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert full.read_text() == '{"full": true}\n'
    assert sorted(os.listdir(tmp_path)) == ["alphabet.json", "alphabet_quick.json", "alphabet_quick.png"]


def test_output_path():
    assert common.output_path("out", "alphabet", "png", quick=False) == os.path.join("out", "alphabet.png")
    assert common.output_path("out", "alphabet", "png", quick=True) == os.path.join("out", "alphabet_quick.png")
    assert common.quick_label("title", False) == "title" and "quick run" in common.quick_label("title", True)


def test_output_piped_into_a_reader_that_leaves_is_no_traceback():
    """`npylstm gradcheck | head -1`: the pipe closes early; the command stops quietly (status 141, as SIGPIPE).

    The reader is gone before the first write (its end of the pipe closed at the start), so the broken pipe is
    met every run: the report is a few kB, and a reader that left after one line could still find all of it
    already in the pipe's buffer."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        p = subprocess.run([sys.executable, "-m", "npylstm", "gradcheck", "--bugs"], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr