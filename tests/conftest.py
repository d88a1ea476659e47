"""Shared test settings and the comparison helper.

Hypothesis: when CI is set, Hypothesis itself loads its built-in `ci` profile (deadline off,
derandomized, print_blob). We extend it, not replace it: `npylstm-ci` inherits every `ci` setting and
is loaded instead when CI is set; `npylstm-dev` is the default profile without a deadline (BPTT
examples vary a lot in cost). Tests that run BPTT also say deadline=None themselves, and set their own
max_examples where an example is costly. `npylstm-gpu` is for the GPU check (benchmarks/gpu_check.sh), where
the device time is short: `npylstm-ci` with few examples, no shrinking phase (a failing example is reported as
drawn, at once, instead of being shrunk for minutes), no example database (nothing left behind, nothing
replayed from an earlier run), the first failure ends a test. HYPOTHESIS_PROFILE=<name> picks any profile.
"""

import os

import numpy as np
from hypothesis import Phase, settings

GPU_MAX_EXAMPLES = 8  # per Hypothesis test in the GPU check (test_gpu.py takes the smaller of this and its own)

settings.register_profile("npylstm-ci", parent=settings.get_profile("ci"), deadline=None, derandomize=True)
settings.register_profile("npylstm-dev", parent=settings.get_profile("default"), deadline=None)
settings.register_profile("npylstm-gpu", parent=settings.get_profile("npylstm-ci"), max_examples=GPU_MAX_EXAMPLES,
                          phases=(Phase.explicit, Phase.generate), database=None, report_multiple_bugs=False)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif os.environ.get("CI"):
    settings.load_profile("npylstm-ci")

TINY = 1e-30  # only guards 0/0 when both tensors are exactly zero


def assert_close(actual, expected, rtol, what, floor=TINY):
    """Per-tensor relative error max|a - b| / max(max|a|, max|b|, floor) < rtol; on failure say where.

    The message carries the evidence: max |a - b|, its index, the two values there, the scale and rtol.
    """
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != expected {b.shape}"
    if a.size == 0:
        return
    diff = np.abs(a - b)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), floor)
    err = float(diff.max()) / scale
    if not err < rtol:
        where = np.unravel_index(int(diff.argmax()), a.shape)
        worst = np.argsort(diff, axis=None)[::-1][:3]
        pairs = ", ".join(f"{np.unravel_index(int(k), a.shape)}: {a.flat[k]:.6g} vs {b.flat[k]:.6g}" for k in worst)
        raise AssertionError(
            f"{what}: relative error {err:.3g} >= {rtol:g} (max |a - b| = {diff.max():.3g} at {where}, "
            f"scale {scale:.3g}); worst pairs: {pairs}")


def nonzero(rng, shape, scale=1.0):
    """Random, non-zero: scale * U(±[0.1, 1])."""
    return scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def padding_mask(rng, T, N, kind):
    """(T, N) booleans or None; each row has a drawn length in [0, T]: 'post' = real steps first, 'pre' = last."""
    if kind is None:
        return None
    lengths = rng.integers(0, T + 1, N)
    t = np.arange(T)[:, None]
    return t < lengths if kind == "post" else t >= T - lengths
