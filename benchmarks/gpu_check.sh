#!/usr/bin/env bash
# Everything npylstm needs a GPU for, in one call. Run from the repository root on the GPU machine
# (CuPy installed, no network, no install of npylstm needed). Logs go to ${OUT:-out/gpu}; the last lines
# printed are a summary. Nothing here changes the GPU's settings.
#
#   bash benchmarks/gpu_check.sh            # tests + compute-sanitizer + benchmark
#   QUICK=1 bash benchmarks/gpu_check.sh    # the benchmark's --quick subset only
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
summary=()

python3 -c "import cupy; print('cupy', cupy.__version__, 'is_available', cupy.is_available())" 2>&1 | tee "$out/env.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$out/env.txt"

# 1. the GPU tests: every kernel version vs NumPy, finite differences on the GPU, the layer on GPU vs CPU
python3 -m pytest -m gpu -q -p no:cacheprovider > "$out/pytest_gpu.txt" 2>&1
summary+=("pytest -m gpu: rc=$? $(tail -n 1 "$out/pytest_gpu.txt")")

# 2. the fixed-shape subset under compute-sanitizer
if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck initcheck synccheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 1 \
            python3 -m pytest -q -m gpu -k sanitize -p no:cacheprovider tests/test_gpu.py > "$out/sanitizer_$tool.txt" 2>&1
        summary+=("compute-sanitizer $tool: rc=$? $(grep -E 'ERROR SUMMARY' "$out/sanitizer_$tool.txt" | tail -n 1)")
    done
else
    summary+=("compute-sanitizer: not found on PATH (it ships with the CUDA toolkit)")
fi

# 3. the benchmark: one cell step, NumPy vs each kernel version vs PyTorch
python3 -m npylstm bench ${QUICK:+--quick} --out "$out" > "$out/bench.txt" 2>&1
summary+=("npylstm bench: rc=$?")
cat "$out/bench.txt"

printf '%s\n' "${summary[@]}"
