"""benchmarks/mutate_kernels.py: the changes it makes to the real kernels, and a whole run on a planted fixture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emulator import need_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "mutate_kernels.py"
sys.path.insert(0, str(SCRIPT.parent))
import mutate_kernels as mk  # noqa: E402

# A planted kernel header: exactly two mutants, one the test kills (T(0) -> T(1)) and one no test can kill
# (a + 0 -> a - 0). The comment, the macro and the index function (integers only) give none.
PLANTED = r"""// planted: a * b + 0.5 in a comment is not code
#pragma once
#define TWICE(a) (2 * (a) + 0.5)
template <typename T>
inline T keep(T a) {
    return a + T(0);
}
inline int index(int n, int H, int k) { return n * H + k; }
"""
PLANTED_TEST = r"""
import ctypes, subprocess
from pathlib import Path

def test_keep(tmp_path):
    src, so = tmp_path / "w.cpp", tmp_path / "w.so"
    src.write_text('#include "planted.cuh"\nextern "C" double keep_d(double a) { return keep(a); }\n')
    kernels = Path(__file__).resolve().parent.parent / "kernels"
    subprocess.run(["g++", "-shared", "-fPIC", "-I", str(kernels), "-o", str(so), str(src)], check=True)
    f = ctypes.CDLL(str(so)).keep_d
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double]
    assert f(3.0) == 3.0
"""


@pytest.fixture
def fixture_repo(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "kernels" / "planted.cuh").write_text(PLANTED)
    (tmp_path / "tests" / "test_planted.py").write_text(PLANTED_TEST)
    return tmp_path


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_planted_fixture_one_mutant_killed_one_equivalent_survives(fixture_repo, tmp_path):
    need_tool("g++")
    out = tmp_path / "result.json"
    r = _run("--root", str(fixture_repo), "--tests", "tests/test_planted.py", "--jobs", "1", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    got = {(m["line"], m["before"], m["after"]): m["status"] for m in doc["mutants"]}
    assert got == {(6, " + ", " - "): "survived", (6, "0", "1"): "killed"}, doc["mutants"]
    assert doc["counts"] == {"killed": 1, "survived": 1, "not compiled": 0, "error": 0} and doc["score"] == 0.5
    assert "score 1/2 = 50.0 % killed" in r.stdout and "SURVIVED: planted.cuh:6:13 arith + -> -" in r.stdout
    assert (fixture_repo / "kernels" / "planted.cuh").read_text() == PLANTED      # the tree is never left mutated


@pytest.mark.parametrize("args,message", [
    (["--files", "nope.cu"], "--files: nope.cu not in"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--timeout", "0"], "--timeout must be at least 1 second"),
])
def test_command_line_mistakes_are_one_line_and_status_2(args, message):
    r = _run(*args, "--list")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def real():
    mutants, skipped = mk.all_mutants(ROOT)
    texts = {p.name: p.read_text() for p in (ROOT / "kernels").iterdir()}
    return mutants, skipped, texts


def test_every_mutant_changes_one_code_token_of_the_real_kernels(real):
    mutants, skipped, texts = real
    assert mutants and not skipped
    assert {m.file for m in mutants} == {n for n in texts if n.endswith((".cu", ".cuh"))}
    assert len(set(mutants)) == len(mutants)
    for m in mutants:
        code = mk.code_lines(texts[m.file])[m.line - 1]
        assert code is not None and code[m.col - 1:m.col - 1 + len(m.before)] == m.before, m   # not a comment
        assert m.apply(texts[m.file]) != texts[m.file]


def _on(mutants, file, snippet, texts):
    return [m for m in mutants if m.file == file and snippet in texts[file].split("\n")[m.line - 1]]


def test_value_arithmetic_is_mutated_and_index_plumbing_is_not(real):
    mutants, _, texts = real
    c_update = _on(mutants, "lstm_gates.cuh", "*C = s.F * C_prev + s.I * s.C_tilde;", texts)
    assert sorted(m.label() for m in c_update) == ["* -> /", "* -> /", "+ -> -"]
    assert [m.label() for m in _on(mutants, "lstm_gates.cuh", "return T(0.5) + T(0.5) * tanh_t(T(0.5) * a);", texts)
            if m.op == "const"] == ["0.5 -> 1"] * 3
    gru_update = _on(mutants, "gru_gates.cuh", "return H_tilde + Z * (H_prev - H_tilde);", texts)
    assert sorted(m.label() for m in gru_update) == ["* -> /", "+ -> -", "- -> +"]
    for file, snippet in [("lstm_gates.cuh", "const T* g = gates + (long long)n * NUM_GATES * H + j;"),
                          ("lstm_kernels.cu", "const int tiles_h = (H + TJ - 1) / TJ;"),
                          ("lstm_kernels.cu", "for (int r = ty; r < TK * NUM_GATES; r += TN)"),
                          ("lstm_kernels.cu", "if (n < N && k0 + tx < K_out) out[(long long)n * K_out + k0 + tx] = acc;"),
                          ("gru_gates.cuh", "enum GRUGate : int")]:
        assert not [m for m in _on(mutants, file, snippet, texts) if m.op in ("arith", "const")], (file, snippet)
    acc = _on(mutants, "lstm_kernels.cu", "acc += dAs[ty][g][jj] * Ws[tx][g * TJ + jj];", texts)
    assert sorted(m.label() for m in acc) == ["* -> /", "+= -> -="]
    assert {m.after for m in mutants if m.op == "gate"} == set(mk.NEXT_GATE.values())


def test_a_file_no_backend_compiles_is_skipped_and_said_so(tmp_path):
    for name in mk.COPY:
        src = ROOT / name
        (tmp_path / name).symlink_to(src, target_is_directory=src.is_dir()) if name != "kernels" else None
    (tmp_path / "kernels").mkdir()
    for p in (ROOT / "kernels").iterdir():
        (tmp_path / "kernels" / p.name).write_text(p.read_text())
    (tmp_path / "kernels" / "orphan.cu").write_text("template <typename T> T f(T a) { return a * T(2); }\n")
    mutants, skipped = mk.all_mutants(tmp_path)
    assert "orphan.cu" in skipped and "no CPU test compiles it" in skipped["orphan.cu"]
    assert not [m for m in mutants if m.file == "orphan.cu"]


def test_each_kernel_file_runs_against_the_test_files_of_its_backends():
    """Version 3's kernels run against tests/test_persistent.py (and only there), versions 1-2 against the CPU kernel
    and emulator tests, a header every backend includes against all of them."""
    fams = mk.families(ROOT)
    files = {}
    for name in ("lstm_persistent.cu", "lstm_kernels.cu", "gru_kernels.cu", "lstm_gates.cuh"):
        argv = mk.test_command(name, [f for f in fams if name in f.files], fams, None)
        files[name] = [a for a in argv if a.startswith("tests/")]
        assert argv[-2] == "-k" and "not thread_sanitizer" in argv[-1]
    assert files["lstm_persistent.cu"] == ["tests/test_persistent.py"]
    assert files["lstm_kernels.cu"] == files["gru_kernels.cu"] == list(mk.TEST_FILES)
    assert files["lstm_gates.cuh"] == [*mk.TEST_FILES, "tests/test_persistent.py"]
