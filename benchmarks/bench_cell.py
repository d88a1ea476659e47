"""One LSTM cell step, or (--sequence) one layer over T = 100 steps: NumPy on the CPU vs the CUDA kernels vs
PyTorch. Same as `npylstm bench`.

    python3 benchmarks/bench_cell.py [--quick] [--out out/bench] [--threads N]
    python3 benchmarks/bench_cell.py --sequence [--cpu-all] [--quick] [--out out/bench] [--threads N]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from npylstm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
