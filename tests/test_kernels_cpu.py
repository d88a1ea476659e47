"""The CUDA gate header compiled for the CPU and checked against the NumPy reference (cell.py).

kernels/lstm_gates.cuh is the one place the gate equations live in CUDA. With a shim that defines
__host__ and __device__ away it is plain C++: g++ builds a tiny shared library of extern "C" loops over
its functions, called here through ctypes in float and double. So every CI run exercises the kernel
arithmetic without a GPU. In CI (env CI set) a missing g++ is a failure, not a skip.
"""

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npylstm.cell import GATES, step_backward, step_forward
from npylstm.gpu import kernel_dir

F64_RTOL = 1e-12  # same formulas, libm tanh vs NumPy's tanh: a few ulp, far below this
F32_RTOL = 1e-5   # float32 both sides: libm tanhf vs NumPy's float32 tanh, a few ulp

WRAPPERS = r"""
#include <cmath>
#define __host__
#define __device__
#include "lstm_gates.cuh"
using namespace npylstm;

template <typename T>
static void forward_all(const T* A, const T* C_prev, T* gates, T* C, T* tanh_C, T* H, int N, int Hn) {
    for (int n = 0; n < N; ++n)
        for (int j = 0; j < Hn; ++j) {
            const long long a = (long long)n * NUM_GATES * Hn + j, e = (long long)n * Hn + j;
            Saved<T> s = cell_forward(A[a + GATE_I * Hn], A[a + GATE_F * Hn], A[a + GATE_G * Hn], A[a + GATE_O * Hn],
                                      C_prev[e], &C[e], &H[e]);
            store_saved(s, gates, tanh_C, n, j, Hn);
        }
}

template <typename T>
static void backward_all(const T* dH, const T* dC, const T* gates, const T* tanh_C, const T* C_prev,
                         T* dA, T* dC_prev, int N, int Hn) {
    for (int n = 0; n < N; ++n)
        for (int j = 0; j < Hn; ++j) {
            const long long a = (long long)n * NUM_GATES * Hn + j, e = (long long)n * Hn + j;
            Saved<T> s = load_saved(gates, tanh_C, n, j, Hn);
            cell_backward(dH[e], dC[e], s, C_prev[e], &dA[a + GATE_I * Hn], &dA[a + GATE_F * Hn],
                          &dA[a + GATE_G * Hn], &dA[a + GATE_O * Hn], &dC_prev[e]);
        }
}

extern "C" {
void forward_float(const float* A, const float* Cp, float* g, float* C, float* tC, float* H, int N, int Hn) {
    forward_all<float>(A, Cp, g, C, tC, H, N, Hn); }
void forward_double(const double* A, const double* Cp, double* g, double* C, double* tC, double* H, int N, int Hn) {
    forward_all<double>(A, Cp, g, C, tC, H, N, Hn); }
void backward_float(const float* dH, const float* dC, const float* g, const float* tC, const float* Cp,
                    float* dA, float* dCp, int N, int Hn) { backward_all<float>(dH, dC, g, tC, Cp, dA, dCp, N, Hn); }
void backward_double(const double* dH, const double* dC, const double* g, const double* tC, const double* Cp,
                     double* dA, double* dCp, int N, int Hn) { backward_all<double>(dH, dC, g, tC, Cp, dA, dCp, N, Hn); }
float sigmoid_float(float a) { return sigmoid(a); }
double sigmoid_double(double a) { return sigmoid(a); }
int gate_index(char name) {
    switch (name) { case 'i': return GATE_I; case 'f': return GATE_F; case 'g': return GATE_G; case 'o': return GATE_O; }
    return -1;
}
int num_gates() { return NUM_GATES; }
}
"""


def _need_tool(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found: CI must compile the kernel header for the CPU")
        pytest.skip(f"{name} not found")
    return path


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = _need_tool("g++")
    d = tmp_path_factory.mktemp("gates_cpu")
    src, so = d / "gates_cpu.cpp", d / "gates_cpu.so"
    src.write_text(WRAPPERS)
    r = subprocess.run([gxx, "-O2", "-std=c++17", "-Wall", "-Werror", "-shared", "-fPIC", "-I", str(kernel_dir()),
                        "-o", str(so), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, f"g++ failed on the gate header:\n{r.stderr}"
    return ctypes.CDLL(str(so))


def _call(lib, name, dtype, *arrays_and_sizes):
    ctype = "float" if dtype == np.float32 else "double"
    args = [a.ctypes.data_as(ctypes.c_void_p) if isinstance(a, np.ndarray) else ctypes.c_int(a) for a in arrays_and_sizes]
    getattr(lib, f"{name}_{ctype}")(*args)


def _relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))


def _assert_close(name, got, want, rtol):
    assert np.isfinite(got).all(), f"{name}: {int((~np.isfinite(got)).sum())} non-finite value(s)"
    err = _relerr(got, want)
    if err > rtol:
        diff = np.abs(np.asarray(got, np.float64) - want)
        where = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(f"{name}: relative error {err:.3e} > {rtol:.0e}; worst at {where}: "
                             f"got {got[where]!r}, want {want[where]!r}")


def _case(seed, N, H, scale, dtype):
    """A step of cell.py in `dtype` with W_x = I (D = 4H), so A = x + H_prev W_h + b exactly and dx = dA.

    The reference runs in the dtype under test, on the same inputs: float32 evaluates I (1 - I) from a
    rounded I just as the kernels do (near saturation that loses digits in both, the same digits).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0, scale, (N, 4 * H)).astype(dtype)
    h_prev = rng.uniform(-1, 1, (N, H)).astype(dtype)
    c_prev = rng.normal(0, 2, (N, H)).astype(dtype)
    W_h = rng.normal(0, 1 / np.sqrt(H), (H, 4 * H)).astype(dtype)
    b = rng.normal(0, scale, 4 * H).astype(dtype)
    A = x @ np.eye(4 * H, dtype=dtype) + h_prev @ W_h + b           # the sum step_forward forms
    Hn, C, cache = step_forward(x, h_prev, c_prev, np.eye(4 * H, dtype=dtype), W_h, b)
    dH, dC = rng.normal(size=(N, H)).astype(dtype), rng.normal(size=(N, H)).astype(dtype)
    dA, _, dc_prev, _, _, _ = step_backward(dH, dC, cache)
    return A, c_prev, Hn, C, cache, dH, dC, dA, dc_prev


DTYPES = [(np.float32, F32_RTOL), (np.float64, F64_RTOL)]


def test_gate_order_matches_numpy(lib):
    assert lib.num_gates() == len(GATES)
    assert [lib.gate_index(ctypes.c_char(g.encode())) for g in GATES] == list(range(len(GATES)))


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 9), H=st.integers(1, 37),
       scale=st.sampled_from([0.5, 3.0, 30.0, 1e4]))
def test_header_forward_matches_cell(lib, dtype, rtol, seed, N, H, scale):
    A, c_prev, H_ref, C_ref, cache, *_ = _case(seed, N, H, scale, dtype)
    out = {k: np.full(s, np.nan, dtype) for k, s in
           dict(gates=(N, 4 * H), C=(N, H), tanh_C=(N, H), H=(N, H)).items()}  # poisoned: every element must be written
    _call(lib, "forward", dtype, np.ascontiguousarray(A, dtype), np.ascontiguousarray(c_prev, dtype),
          out["gates"], out["C"], out["tanh_C"], out["H"], N, H)
    gates_ref = np.concatenate([cache.I, cache.F, cache.C_tilde, cache.O], axis=1)
    for name, want in dict(gates=gates_ref, C=C_ref, tanh_C=cache.tanh_C, H=H_ref).items():
        _assert_close(name, out[name], want, rtol)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 9), H=st.integers(1, 37),
       scale=st.sampled_from([0.5, 3.0, 30.0, 1e4]))
def test_header_backward_matches_cell(lib, dtype, rtol, seed, N, H, scale):
    _, c_prev, _, _, cache, dH, dC, dA_ref, dc_prev_ref = _case(seed, N, H, scale, dtype)
    gates = np.concatenate([cache.I, cache.F, cache.C_tilde, cache.O], axis=1)
    dA, dc_prev = np.full((N, 4 * H), np.nan, dtype), np.full((N, H), np.nan, dtype)
    c = (lambda a: np.ascontiguousarray(a, dtype))
    _call(lib, "backward", dtype, c(dH), c(dC), c(gates), c(cache.tanh_C), c(c_prev), dA, dc_prev, N, H)
    _assert_close("dA", dA, dA_ref, rtol)
    _assert_close("dC_prev", dc_prev, dc_prev_ref, rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_header_sigmoid_is_overflow_safe(lib, dtype):
    """sigmoid(a) = 0.5 + 0.5 tanh(a/2): finite and in [0, 1] for |a| up to 1e4 and beyond."""
    f = getattr(lib, f"sigmoid_{'float' if dtype == np.float32 else 'double'}")
    ct = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    f.restype, f.argtypes = ct, [ct]
    a = np.array([-3e38 if dtype == np.float32 else -1e300, -1e4, -90.0, -1.5, 0.0, 0.7, 90.0, 1e4], dtype)
    got = np.array([f(float(v)) for v in a])
    want = 1.0 / (1.0 + np.exp(-np.clip(a.astype(np.float64), -700, 700)))
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1).all(), got
    assert _relerr(got, want) <= (F32_RTOL if dtype == np.float32 else F64_RTOL), (got, want)
