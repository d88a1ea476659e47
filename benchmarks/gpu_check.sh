#!/usr/bin/env bash
# Everything npylstm needs a GPU for, in two stages; each is one command that ends within about 5 minutes on
# an H200 even when every step fails: every step runs under `timeout`, a failing pytest run stops after a few
# failures, Hypothesis draws few examples and does not shrink (profile npylstm-gpu, tests/conftest.py).
# Run from the repository root on the GPU machine (CuPy installed; npylstm need not be installed). Nothing
# here changes the GPU's settings.
#
#   bash benchmarks/gpu_check.sh 1   # environment; pytest -m gpu; compute-sanitizer memcheck, racecheck,
#                                    # synccheck, initcheck over the fixed-shape subset (-k sanitize)
#   bash benchmarks/gpu_check.sh 2   # the benchmarks: npylstm bench (one cell step), npylstm bench --sequence
#
# (or STAGE=1 / STAGE=2). Logs go to $OUT (default out/gpu). summary.txt gets one line per step as soon as the
# step ends -- PASS, FAIL or TIMEOUT, with its evidence -- and a last line; the same lines go to stdout. At most
# 8 files under $OUT (stage 1: 6, stage 2: 4 + what the two benchmarks write). Exit status: 0 when every step
# passed, 1 when one did not, 2 for a usage mistake, 3 when there is no usable GPU (said in one line, in seconds).
# Timeouts (seconds) can be set from the environment: GATE_S, PYTEST_S, SANITIZER_S, BENCH_S, SEQUENCE_S.
set -uo pipefail

# ---------------------------------------------------------------------------------------------- verdicts
# One line per step, starting with PASS, FAIL or TIMEOUT. tests/test_gpu_check.py sources this file (which
# then stops after these definitions) and feeds them canned tool output.

# The final line of a pytest run ("3 failed, 10 passed, 2 skipped in 12.34s"), without the === around it.
pytest_summary_line() {  # log
    grep -E '([0-9]+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)|no tests ran)\b.* in [0-9.]+s' "$1" |
        tail -n 1 | sed -E 's/^=+ //; s/ =+$//'
}

# PASS only when tests ran and none failed: every test skipped (no usable device) or none selected is a FAIL.
pytest_verdict() {  # log status seconds
    local log=$1 rc=$2 secs=$3 line passed last
    line=$(pytest_summary_line "$log")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        last=$(grep -oE 'tests/[^ ]+::[^ ]+' "$log" | tail -n 1)
        echo "TIMEOUT after ${secs}s, in ${last:-collection or start-up}${line:+ ($line)}"
        return
    fi
    passed=$(sed -nE 's/.*\b([0-9]+) passed.*/\1/p' <<<"$line")
    if [ -z "$line" ]; then
        echo "FAIL no pytest summary line (status $rc): $(tail -n 1 "$log")"
    elif [ "${passed:-0}" = 0 ]; then
        echo "FAIL no test passed, none ran on a GPU: $line"
    elif [ "$rc" = 0 ]; then
        echo "PASS $line"
    else
        echo "FAIL $line"
    fi
}

# compute-sanitizer's count: memcheck, synccheck and initcheck end with "ERROR SUMMARY: 0 errors", racecheck with
# "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)". PASS needs that line with 0 and the tests
# under the tool passing (a run that skipped every test checked nothing).
sanitizer_verdict() {  # tool log status seconds
    local tool=$1 log=$2 rc=$3 secs=$4 key summary count tests
    key="ERROR SUMMARY"
    [ "$tool" = racecheck ] && key="RACECHECK SUMMARY"
    summary=$(grep -E "$key: [0-9]+" "$log" | tail -n 1 | sed -E 's/^=+ *//')
    count=$(sed -nE "s/.*$key: ([0-9]+).*/\1/p" <<<"$summary")
    tests=$(pytest_verdict "$log" "$rc" "$secs")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "$tests${summary:+; $summary}"
    elif [ -z "$count" ]; then
        echo "FAIL no '$key' line: the tool did not finish (status $rc): $(tail -n 1 "$log")"
    elif [ "$count" != 0 ]; then
        echo "FAIL $summary (the reports name kernel and line: see the log)"
    elif [ "${tests%% *}" != PASS ]; then
        echo "FAIL $summary, but the tests under it: $tests"
    else
        echo "PASS $summary; ${tests#PASS }"
    fi
}

# A benchmark passes when it exits 0 (it checks every backend against the reference before timing it).
bench_verdict() {  # log status seconds
    local log=$1 rc=$2 secs=$3
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "TIMEOUT after ${secs}s: $(grep -v '^\s*$' "$log" | tail -n 1)"
    elif [ "$rc" = 0 ]; then
        echo "PASS $(grep -v '^\s*$' "$log" | tail -n 1)"
    else
        echo "FAIL status $rc: $(grep -v '^\s*$' "$log" | tail -n 1)"
    fi
}

# The environment, and whether there is a usable GPU at all: gpu.require_cuda says what is missing ("NO-GPU ...",
# status 3). Then "ENV ..." lines (a field that cannot be read says so and the check goes on) and "compute_mode N"
# (0: several processes may share the device; "unknown" if it cannot be read).
device_report() {
    timeout -k 5 "$GATE_S" "$python" - 2>&1 <<'EOF'
import platform, subprocess, sys
from npylstm import gpu
try:
    cupy = gpu.require_cuda("gpu_check")
    if not cupy.is_available():
        raise RuntimeError("gpu_check: no usable CUDA device: cupy.is_available() is False")
except RuntimeError as e:
    print(f"NO-GPU {e}")
    sys.exit(3)
rt = cupy.cuda.runtime
version = lambda n: f"{n // 1000}.{n % 1000 // 10}"


def env(label, read):
    try:
        print(f"ENV {label} {read()}")
    except Exception as e:
        print(f"ENV {label} ? ({type(e).__name__}: {e})")


def gpu_line():
    p = rt.getDeviceProperties(0)
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    sms = rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, 0)
    return (f"{name}, sm_{cupy.cuda.Device(0).compute_capability}, {sms} SMs, {p['totalGlobalMem'] / 2**30:.0f} GiB; "
            f"{rt.getDeviceCount()} device(s)")


def torch_line():
    import torch
    return (f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"cuda available {torch.cuda.is_available()}")


env("gpu", gpu_line)
env("CUDA", lambda: f"driver {version(rt.driverGetVersion())}, runtime {version(rt.runtimeGetVersion())}, NVRTC "
                    f"{'.'.join(map(str, cupy.cuda.nvrtc.getVersion()))}")
env("nvidia-smi driver", lambda: subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                capture_output=True, text=True, timeout=10).stdout.strip())
env("python", lambda: f"{platform.python_version()}; CuPy {cupy.__version__}; NumPy {__import__('numpy').__version__}")
env("torch", torch_line)
try:
    print(f"compute_mode {rt.deviceGetAttribute(rt.cudaDevAttrComputeMode, 0)}")
except Exception:
    print("compute_mode unknown")
EOF
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0   # sourced (by the tests): the definitions only

# ---------------------------------------------------------------------------------------------- the run
cd "$(dirname "$0")/.." || exit 2
stage=${1:-${STAGE:-1}}
case "$stage" in 1|2) ;; *) echo "gpu_check: stage must be 1 or 2, got '$stage'" >&2; exit 2 ;; esac
out=${OUT:-out/gpu}
python=${PYTHON:-python3}
GATE_S=${GATE_S:-40} PYTEST_S=${PYTEST_S:-170} SANITIZER_S=${SANITIZER_S:-170}
BENCH_S=${BENCH_S:-110} SEQUENCE_S=${SEQUENCE_S:-130}
mkdir -p "$out" || exit 2
summary="$out/summary.txt"
: > "$summary"

say() { echo "$*" | tee -a "$summary"; }   # one line, to stdout and summary.txt at once

# device_report's ENV lines into the summary; no usable GPU: one line, and exit 3.
gate() {
    local report rc
    report=$(device_report)
    rc=$?
    grep -E '^ENV ' <<<"$report" | tee -a "$summary"
    compute_mode=$(sed -nE 's/^compute_mode (.+)$/\1/p' <<<"$report")
    if [ "$rc" = 0 ]; then
        return 0
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "TIMEOUT gpu: the device check took over ${GATE_S}s"
    elif grep -q '^NO-GPU ' <<<"$report"; then
        say "FAIL $(sed -nE 's/^NO-GPU (.*)/\1/p' <<<"$report" | head -n 1)"
    else
        say "FAIL gpu: the device check failed (status $rc): $(tail -n 1 <<<"$report")"
    fi
    say "gpu_check stage $stage: no usable GPU, nothing else was run"
    exit 3
}

pytest_gpu() {
    local log="$out/pytest_gpu.txt" rc
    HYPOTHESIS_PROFILE=npylstm-gpu timeout -k 10 "$PYTEST_S" "$python" -u -m pytest -m gpu -v -p no:cacheprovider \
        --maxfail=5 --tb=short -o faulthandler_timeout=60 tests/test_gpu.py > "$log" 2>&1
    rc=$?
    say "$(pytest_verdict "$log" "$rc" "$PYTEST_S" | sed -E 's/^([A-Z]+) /\1 pytest -m gpu: /')"
}

sanitize() {  # tool
    local tool=$1 log="$out/sanitizer_$1.txt" rc
    NPYLSTM_SANITIZE=1 NPYLSTM_LINEINFO=1 HYPOTHESIS_PROFILE=npylstm-gpu timeout -k 10 "$SANITIZER_S" \
        compute-sanitizer --tool "$tool" --error-exitcode 86 --print-limit 20 \
        "$python" -u -m pytest -m gpu -k sanitize -v -p no:cacheprovider --maxfail=3 --tb=short \
        tests/test_gpu.py > "$log" 2>&1
    rc=$?
    say "$(sanitizer_verdict "$tool" "$log" "$rc" "$SANITIZER_S" | sed -E "s/^([A-Z]+) /\1 compute-sanitizer $tool: /")"
}

bench() {  # name seconds log args...
    local name=$1 secs=$2 log="$out/$3" rc
    shift 3
    timeout -k 10 "$secs" "$python" -u -m npylstm bench "$@" > "$log" 2>&1
    rc=$?
    say "$(bench_verdict "$log" "$rc" "$secs" | sed -E "s/^([A-Z]+) /\1 $name: /")"
}

gate
if [ "$stage" = 1 ]; then
    if ! command -v compute-sanitizer > /dev/null; then
        say "FAIL compute-sanitizer: not found on PATH (it ships with the CUDA toolkit)"
        pytest_gpu
    elif [ "$compute_mode" = 0 ]; then   # several processes may share the GPU: the four tools beside pytest
        for tool in memcheck racecheck synccheck initcheck; do sanitize "$tool" & done
        pytest_gpu
        wait
    else                                 # one process at a time: shorter limits keep the stage under 6 minutes
        say "ENV compute mode $compute_mode: one process at a time, the sanitizers run one after another"
        PYTEST_S=130 SANITIZER_S=40
        pytest_gpu
        for tool in memcheck racecheck synccheck initcheck; do sanitize "$tool"; done
    fi
else
    bench "npylstm bench" "$BENCH_S" bench.txt --out "$out/bench"
    bench "npylstm bench --sequence" "$SEQUENCE_S" sequence.txt --sequence --out "$out/sequence"
fi

files=$(find "$out" -type f | wc -l)
[ "$files" -le 8 ] || say "FAIL files: $files files under $out, only 8 come back from a GPU machine: $(find "$out" -type f | tr '\n' ' ')"
failed=$(grep -cvE '^(PASS|ENV) ' "$summary")
if [ "$failed" = 0 ]; then
    say "gpu_check stage $stage: PASS, every step ($files files under $out)"
    exit 0
fi
say "gpu_check stage $stage: FAIL, $failed step(s) did not pass (logs under $out)"
exit 1
