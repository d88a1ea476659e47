"""benchmarks/gpu_check.sh on the CPU: no GPU means one line and a non-zero exit; its verdicts read the tools right.

* Without a usable GPU (this machine) both stages stop after the device check, name what is missing in one
  line and exit 3, leaving only summary.txt.
* With a stand-in python whose device check reports a GPU, stage 1 runs pytest -m gpu for real: every GPU test
  skips here, which must be a FAIL (exit 1), not a false green; a stand-in compute-sanitizer shows each tool's
  command line and environment (pools off, -lineinfo, the no-shrink profile).
* The verdict functions, fed canned pytest and compute-sanitizer output: clean, failing, all skipped, timed
  out, singular "1 error" / "1 hazard", racecheck's own summary line, a missing summary.
* The npylstm-gpu Hypothesis profile (tests/conftest.py): no shrinking phase, bounded examples, no deadline;
  a failing test under it stops at once where the default profile shrinks; test_gpu.py's settings take it.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from conftest import GPU_MAX_EXAMPLES

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
GUARD_S = 300  # subprocess guard only: a hung script fails the test instead of hanging the suite


def _gpu_usable():
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


def _bash():
    path = shutil.which("bash")
    if path is None:
        pytest.skip("bash is missing")
    return path


def _run(args, out, env_extra=None):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **(env_extra or {})}
    env.pop("HYPOTHESIS_PROFILE", None)
    return subprocess.run([_bash(), str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=GUARD_S,
                          cwd=REPO)


# ------------------------------------------------------------------------------------------ no GPU
@pytest.mark.skipif(_gpu_usable(), reason="a usable GPU is present: the script would run the whole stage")
@pytest.mark.parametrize("stage", ["1", "2"])
def test_without_a_gpu_the_check_says_so_in_one_line_and_exits_3(tmp_path, stage):
    r = _run([stage], tmp_path)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    fail = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL ")]
    assert len(fail) == 1 and "no usable CUDA device" in fail[0], r.stdout
    assert "no NVIDIA driver" in fail[0] or "CuPy" in fail[0] or "0 devices" in fail[0], fail[0]
    assert r.stdout.splitlines()[-1] == f"gpu_check stage {stage}: no usable GPU, nothing else was run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]
    assert (tmp_path / "summary.txt").read_text() == r.stdout


@pytest.mark.parametrize("args,env", [(["3"], {}), ([], {"STAGE": "x"})])
def test_an_unknown_stage_is_one_line_and_exit_2(tmp_path, args, env):
    r = _run(args, tmp_path, env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("gpu_check: stage must be 1 or 2, got"), r.stderr


# ------------------------------------------------------------------------------------------ a stand-in GPU
def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_stage_1_where_every_gpu_test_skips_is_a_fail(tmp_path):
    """The device check is answered by a stand-in python (a GPU, compute mode 0), and pytest -m gpu runs for
    real: every GPU test skips here, which must fail the stage. A stand-in compute-sanitizer shows how each tool
    is called (it prints its arguments and environment, then a clean summary over 24 passed tests)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_python = _executable(bin_dir / "python", f"""#!/usr/bin/env bash
if [ "$1" = - ]; then echo "ENV gpu stand-in"; echo "compute_mode 0"; exit 0; fi
exec {sys.executable} "$@"
""")
    _executable(bin_dir / "compute-sanitizer", """#!/usr/bin/env bash
echo "args: $*"
echo "env: $NPYLSTM_SANITIZE $NPYLSTM_LINEINFO $HYPOTHESIS_PROFILE"
echo "24 passed in 1.00s"
echo "========= ERROR SUMMARY: 0 errors"
echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
""")
    out = tmp_path / "out"
    r = _run(["1"], out, {"PYTHON": str(fake_python), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[0] == "ENV gpu stand-in"
    pytest_line = next(ln for ln in lines if "pytest -m gpu:" in ln)
    assert pytest_line.startswith("FAIL pytest -m gpu: no test passed, none ran on a GPU:") and "skipped" in pytest_line
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        assert f"PASS compute-sanitizer {tool}: " in "\n".join(lines)
        log = (out / f"sanitizer_{tool}.txt").read_text().splitlines()
        assert log[0].startswith(f"args: --tool {tool} --error-exitcode 86 ") and log[0].endswith(
            f"-m pytest -m gpu -k sanitize -v -p no:cacheprovider --maxfail=3 --tb=short tests/test_gpu.py"), log[0]
        assert log[1] == "env: 1 1 npylstm-gpu"   # pools off, -lineinfo, no shrinking
    assert lines[-1].startswith("gpu_check stage 1: FAIL, 1 step(s) did not pass")
    assert len(list(out.iterdir())) == 6   # summary, pytest, four sanitizer logs: under the 8 that come back


FAKE_CUPY = """
from types import SimpleNamespace
__version__ = "0.stand-in"
is_available = lambda: True
def attribute(a, device):
    if a == 20 and BROKEN:
        raise RuntimeError("no such attribute")
    return {16: 132, 20: 0}[a]
BROKEN = False
cuda = SimpleNamespace(
    runtime=SimpleNamespace(cudaDevAttrMultiProcessorCount=16, cudaDevAttrComputeMode=20, getDeviceCount=lambda: 1,
                            getDeviceProperties=lambda d: {"name": b"Stand-in H200", "totalGlobalMem": 141 * 2**30},
                            deviceGetAttribute=attribute, driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000),
    nvrtc=SimpleNamespace(getVersion=lambda: (13, 0)), Device=lambda i: SimpleNamespace(compute_capability="90"))
"""


@pytest.mark.parametrize("broken", [False, True], ids=["all-fields", "no-compute-mode"])
def test_device_report_lists_the_environment_and_survives_a_missing_field(tmp_path, broken):
    """The device check's report, with a stand-in cupy that has a GPU (its properties without computeMode, as
    CUDA 13's): the ENV lines and the compute mode; a field it cannot read is named, and the check goes on."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY.replace("BROKEN = False", f"BROKEN = {broken}"))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    r = subprocess.run([_bash(), "-c", f"source '{SCRIPT}'; python='{sys.executable}' GATE_S=120; device_report"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=GUARD_S)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0] == "ENV gpu Stand-in H200, sm_90, 132 SMs, 141 GiB; 1 device(s)"
    assert lines[1] == "ENV CUDA driver 13.0, runtime 13.0, NVRTC 13.0"
    assert lines[2].startswith("ENV nvidia-smi driver ") and lines[3].startswith("ENV python ")
    assert "CuPy 0.stand-in" in lines[3] and lines[4].startswith("ENV torch ")
    assert lines[-1] == ("compute_mode unknown" if broken else "compute_mode 0") and len(lines) == 6


# ------------------------------------------------------------------------------------------ verdicts
def _verdict(tmp_path, function, log_text, *args):
    """function(*args) in bash, with the script sourced; LOG in args stands for a file holding log_text."""
    log = tmp_path / "log.txt"
    log.write_text(log_text)
    quoted = " ".join(f"'{log if a == 'LOG' else a}'" for a in args)
    r = subprocess.run([_bash(), "-c", f"source '{SCRIPT}'; {function} {quoted}"], capture_output=True, text=True,
                       timeout=GUARD_S)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout.strip()


PYTEST_CASES = [
    ("tests/test_gpu.py::test_a PASSED\n===== 210 passed, 3 skipped in 95.31s (0:01:35) =====\n", 0,
     "PASS 210 passed, 3 skipped in 95.31s (0:01:35)"),
    ("sssssss\n91 skipped in 0.98s\n", 0, "FAIL no test passed, none ran on a GPU: 91 skipped in 0.98s"),
    ("FAILED tests/test_gpu.py::test_b - AssertionError\n!!!!! stopping after 5 failures !!!!!\n"
     "===== 5 failed, 20 passed in 30.12s =====\n", 1, "FAIL 5 failed, 20 passed in 30.12s"),
    ("no tests ran in 0.12s\n", 5, "FAIL no test passed, none ran on a GPU: no tests ran in 0.12s"),
    ("tests/test_gpu.py::test_a PASSED\ntests/test_gpu.py::test_seq[2-float64] ", 124,
     "TIMEOUT after 170s, in tests/test_gpu.py::test_seq[2-float64]"),
    ("ImportError: no module named numpy\n", 1, "FAIL no pytest summary line (status 1): ImportError: no module named numpy"),
]


@pytest.mark.parametrize("log,rc,want", PYTEST_CASES)
def test_pytest_verdict_reads_the_summary_line(tmp_path, log, rc, want):
    assert _verdict(tmp_path, "pytest_verdict", log, "LOG", rc, 170) == want


SANITIZER_CASES = [
    ("memcheck", "========= COMPUTE-SANITIZER\n24 passed in 40.10s\n========= ERROR SUMMARY: 0 errors\n", 0,
     "PASS ERROR SUMMARY: 0 errors; 24 passed in 40.10s"),
    ("memcheck", "========= Invalid __global__ read of size 4 bytes\n=========     at lstm_forward_kernel2 in "
     "lstm_kernels.cu:150\n24 passed in 40.10s\n========= ERROR SUMMARY: 1 error\n", 86,
     "FAIL ERROR SUMMARY: 1 error (the reports name kernel and line: see the log)"),
    ("initcheck", "3 failed, 21 passed in 50.00s\n========= ERROR SUMMARY: 12 errors\n", 86,
     "FAIL ERROR SUMMARY: 12 errors (the reports name kernel and line: see the log)"),
    ("racecheck", "24 passed in 61.00s\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", 0,
     "PASS RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings); 24 passed in 61.00s"),
    ("racecheck", "24 passed in 61.00s\n========= ERROR SUMMARY: 0 errors\n"
     "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n", 86,
     "FAIL RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings) (the reports name kernel and line: see the log)"),
    ("racecheck", "24 passed in 61.00s\n========= ERROR SUMMARY: 0 errors\n", 0,
     "FAIL no 'RACECHECK SUMMARY' line: the tool did not finish (status 0): ========= ERROR SUMMARY: 0 errors"),
    ("synccheck", "Segmentation fault\n", 139, "FAIL no 'ERROR SUMMARY' line: the tool did not finish (status 139): "
     "Segmentation fault"),
    ("synccheck", "24 skipped in 0.50s\n========= ERROR SUMMARY: 0 errors\n", 0,
     "FAIL ERROR SUMMARY: 0 errors, but the tests under it: FAIL no test passed, none ran on a GPU: 24 skipped in 0.50s"),
    ("memcheck", "2 failed, 22 passed in 40.10s\n========= ERROR SUMMARY: 0 errors\n", 1,
     "FAIL ERROR SUMMARY: 0 errors, but the tests under it: FAIL 2 failed, 22 passed in 40.10s"),
    ("racecheck", "tests/test_gpu.py::test_sanitize_every_kernel_path[2-float64-9-40-33] ", 124,
     "TIMEOUT after 170s, in tests/test_gpu.py::test_sanitize_every_kernel_path[2-float64-9-40-33]"),
]


@pytest.mark.parametrize("tool,log,rc,want", SANITIZER_CASES)
def test_sanitizer_verdict_reads_each_tools_summary(tmp_path, tool, log, rc, want):
    assert _verdict(tmp_path, "sanitizer_verdict", log, tool, "LOG", rc, 170) == want


@pytest.mark.parametrize("rc,want", [(0, "PASS all backends matched"), (1, "FAIL status 1: all backends matched"),
                                     (124, "TIMEOUT after 120s: all backends matched")])
def test_bench_verdict(tmp_path, rc, want):
    assert _verdict(tmp_path, "bench_verdict", "table\nall backends matched\n\n", "LOG", rc, 120) == want


# ------------------------------------------------------------------------------------------ the Hypothesis profile
def test_the_gpu_profile_has_no_shrink_phase_bounded_examples_and_no_deadline():
    p = settings.get_profile("npylstm-gpu")
    assert Phase.shrink not in p.phases and Phase.generate in p.phases
    assert p.max_examples == GPU_MAX_EXAMPLES <= 10 and p.deadline is None and p.database is None
    assert p.derandomize and not p.report_multiple_bugs   # like npylstm-ci; the first failure ends a test


def _calls_until_failure(profile):
    calls = []

    @settings(settings.get_profile(profile), database=None)
    @given(st.integers(0, 10 ** 6))
    def fails_above_1000(n):
        calls.append(n)
        assert n <= 1000

    with pytest.raises(AssertionError):
        fails_above_1000()
    return calls


def test_a_failing_test_under_the_gpu_profile_stops_at_once_where_shrinking_goes_on():
    shrinking = _calls_until_failure("npylstm-ci")          # same parent, with its shrink phase
    no_shrink = _calls_until_failure("npylstm-gpu")
    assert len(no_shrink) <= GPU_MAX_EXAMPLES + 1, no_shrink  # the examples drawn, then the failure replayed once
    assert 1001 in shrinking and 1001 not in no_shrink   # shrinking walked down to the boundary; none here


def test_gpu_test_settings_take_the_profile_when_it_is_loaded():
    """HYPOTHESIS_PROFILE=npylstm-gpu, as gpu_check.sh runs pytest: test_gpu.py's settings lose the shrink phase."""
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest, test_gpu; from hypothesis import Phase; "
            "s = test_gpu.GPU_SETTINGS; print(s.max_examples, Phase.shrink in s.phases, s.deadline)")
    env = {**os.environ, "HYPOTHESIS_PROFILE": "npylstm-gpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=GUARD_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(GPU_MAX_EXAMPLES), "False", "None"]
