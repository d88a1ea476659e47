"""The CUDA gate header compiled for the CPU and checked against the NumPy reference (cell.py).

kernels/lstm_gates.cuh is the one place the gate equations live in CUDA. With a shim that defines
__host__ and __device__ away it is plain C++: g++ builds a tiny shared library of extern "C" loops over
its functions, called here through ctypes in float and double. So every CI run exercises the kernel
arithmetic without a GPU. In CI (env CI set) a missing g++ is a failure, not a skip.
"""

import ctypes
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import RACE_HELPERS, build_emulator, run_under_thread_sanitizer
from emulator import launch_on_cpu as _launch_on_cpu
from emulator import need_tool as _need_tool
from npylstm.cell import GATES, step_backward, step_forward
from npylstm.gpu import kernel_dir

F64_RTOL = 1e-12  # same formulas, libm tanh vs NumPy's tanh: a few ulp, far below this
F32_RTOL = 1e-5   # float32 both sides: libm tanhf vs NumPy's float32 tanh, a few ulp
SCALE_FLOOR = 1.0  # error relative to max(max|a|, max|b|, 1): gates, states and the drawn gradients are O(1), and near
                   # saturation (or after a cancellation) their rounding error is absolute, eps * 1, not relative

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
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), SCALE_FLOOR))


def _assert_close(name, got, want, rtol):
    assert np.isfinite(got).all(), f"{name}: {int((~np.isfinite(got)).sum())} non-finite value(s)"
    err = _relerr(got, want)
    if err > rtol:
        diff = np.abs(np.asarray(got, np.float64) - want)
        where = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(f"{name}: error {err:.3e} > {rtol:.0e} (relative, scale floor {SCALE_FLOOR}); worst at {where}: "
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


# ---------------------------------------------------------------------------------------------------------
# The kernels themselves, run on the CPU through tests/emulator.py: lstm_kernels.cu (the loader's spliced source)
# compiled by g++ with a shim, one OS thread per CUDA thread, several blocks live at once in a seeded random order,
# shared memory poisoned at every block start, arguments that share an allocation sharing it in the kernel, and
# sm_90's launch limits checked. gpu.py's real launch code (grid shapes, argument order, np.int32 sizes, the NULL
# convention) runs against the real kernel code, on NumPy arrays; a wrong count or kind of argument is refused,
# and an allocation's guard zones (and its bytes outside every argument's view) must come back untouched.
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from npylstm import gpu
    return build_emulator(tmp_path_factory.mktemp("kernels_cpu"), gpu.KERNEL_FILE, gpu.NAME_EXPRESSIONS)


@pytest.fixture
def kernels_on_cpu(emulator, monkeypatch):
    """npylstm.gpu with its launches running the real kernels on the CPU (NumPy arrays stand for CuPy's)."""
    from npylstm import gpu
    return _launch_on_cpu(monkeypatch, emulator, gpu)


EMU_N = st.sampled_from([1, 2, 7, 8, 9, 17])            # 1, primes, the tile height TN = 8 and past it
EMU_H = st.sampled_from([1, 3, 31, 32, 33, 40, 65])      # the tile width TJ = TK = 32 and past it
EMU_D = st.sampled_from([1, 5, 32, 37])
EMU_SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _weights(rng, dtype, D, H):
    k = 1 / np.sqrt(H)
    return [rng.uniform(-k, k, (D, 4 * H)).astype(dtype), rng.uniform(-k, k, (H, 4 * H)).astype(dtype),
            rng.uniform(-1, 1, 4 * H).astype(dtype)]


def _close(name, got, want, rtol):
    _assert_close(name, np.asarray(got), np.asarray(want, np.float64), rtol)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("kernel", [1, 2])
@EMU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), N=EMU_N, D=EMU_D, H=EMU_H)
def test_kernels_on_cpu_step_matches_cell(kernels_on_cpu, kernel, dtype, rtol, seed, N, D, H):
    """A lone step: version 2 computes X W_x + b and dX = dA W_xᵀ inside its kernels too."""
    from npylstm import gpu
    rng = np.random.default_rng(seed)
    host = [rng.normal(size=(N, D)).astype(dtype), rng.uniform(-1, 1, (N, H)).astype(dtype),
            rng.normal(size=(N, H)).astype(dtype), *_weights(rng, dtype, D, H)]
    ref = [a.astype(np.float64) for a in host]
    H_k, C_k, cache = gpu.step_forward(*host, kernel=kernel)
    H_r, C_r, cache_r = step_forward(*ref)
    _close("H", H_k, H_r, rtol)
    _close("C", C_k, C_r, rtol)
    dH, dC = rng.normal(size=(N, H)).astype(dtype), rng.normal(size=(N, H)).astype(dtype)
    got = gpu.step_backward(dH, dC, cache)
    want = step_backward(dH.astype(np.float64), dC.astype(np.float64), cache_r)
    for name, g, w in zip(["dx", "dh_prev", "dc_prev", "dW_x", "dW_h", "db"], got, want):
        _close(name, g, w, rtol)
    assert {f"npylstm::lstm_{d}_kernel{kernel}<{'float' if dtype == np.float32 else 'double'}>"
            for d in ("forward", "backward")} <= set(kernels_on_cpu)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("kernel", [1, 2])
@EMU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 3), N=EMU_N, D=EMU_D, H=EMU_H, masked=st.booleans())
def test_kernels_on_cpu_sequence_matches_sequence_py(kernels_on_cpu, kernel, dtype, rtol, seed, T, N, D, H, masked):
    from npylstm import gpu
    from npylstm import sequence as numpy_backend
    rng = np.random.default_rng(seed)
    host = [rng.normal(size=(T, N, D)).astype(dtype), rng.uniform(-1, 1, (N, H)).astype(dtype),
            rng.normal(size=(N, H)).astype(dtype), *_weights(rng, dtype, D, H)]
    ref = [a.astype(np.float64) for a in host]
    mask = rng.random((T, N)) < 0.7 if masked else None
    Y, h_T, c_T, cache = gpu.sequence_forward(*host, mask=mask, kernel=kernel)
    Y_r, h_r, c_r, cache_r = numpy_backend.sequence_forward(*ref, mask=mask)
    for name, g, w in (("Y", Y, Y_r), ("h_T", h_T, h_r), ("c_T", c_T, c_r)):
        _close(name, g, w, rtol)
    dY, dh, dc = (rng.normal(size=s).astype(dtype) for s in ((T, N, H), (N, H), (N, H)))
    got = gpu.sequence_backward(dY, dh, dc, cache)
    want = numpy_backend.sequence_backward(*(a.astype(np.float64) for a in (dY, dh, dc)), cache_r)
    for name, g, w in zip(["dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
        _close(name, g, w, rtol)


def test_emulated_launch_refuses_a_wrong_argument_list(kernels_on_cpu):
    """The emulator's own check: a size passed as a pointer, or one argument short, is refused."""
    from npylstm import gpu
    f = gpu.get_function("lstm_forward_kernel", 1, np.float64)
    a = np.zeros((1, 4))
    s = np.zeros((1, 1))
    good = [a, a.copy(), gpu.NULL, s, s.copy(), a.copy(), s.copy(), s.copy(), s.copy(), np.int32(1), np.int32(1)]
    f((1,), (32,), good)
    with pytest.raises(AssertionError, match="code 2009"):
        f((1,), (32,), good[:9] + [s.copy(), np.int32(1)])
    with pytest.raises(AssertionError, match="code 1011"):
        f((1,), (32,), good[:-1])


# A standalone driver over the same emulator, built with ThreadSanitizer: a data race between the threads of a
# block (a missing or misplaced __syncthreads, two threads writing one element) is reported, the CPU-side
# counterpart of compute-sanitizer's racecheck. Shapes cut tiles on every edge: N = 9 (TN = 8), H = 40, D = 37.
RACE_DRIVER = RACE_HELPERS + r"""
template <typename T>
static int all(int N, int D, int H) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<double> u(-1, 1);
    auto vec = [&](long n) { std::vector<T> v(n); for (auto& e : v) e = (T)u(rng); return v; };
    auto x = vec((long)N * D), W_x = vec((long)D * 4 * H), W_h = vec((long)H * 4 * H), b = vec(4 * H);
    auto Ax = vec((long)N * 4 * H), Ah = vec((long)N * 4 * H), h = vec((long)N * H), c = vec((long)N * H);
    auto gates = vec((long)N * 4 * H), C = vec((long)N * H), tC = vec((long)N * H), Ho = vec((long)N * H);
    auto dH = vec((long)N * H), dY = vec((long)N * H), dC = vec((long)N * H), dA = vec((long)N * 4 * H);
    auto dCp = vec((long)N * H), dHp = vec((long)N * H), dx = vec((long)N * D);
    const unsigned g1 = (unsigned)((N * H + npylstm::THREADS1 - 1) / npylstm::THREADS1);
    const unsigned gj = (unsigned)((H + npylstm::TJ - 1) / npylstm::TJ), gd = (unsigned)((D + npylstm::TJ - 1) / npylstm::TJ);
    const unsigned gn = (unsigned)((N + npylstm::TN - 1) / npylstm::TN);
    const std::array<unsigned, 3> b1 = {(unsigned)npylstm::THREADS1, 1, 1}, b2 = {(unsigned)npylstm::TJ, (unsigned)npylstm::TN, 1};
    std::vector<T> mask(N);                                  // rows 1, 4, 7, ... masked
    for (int n = 0; n < N; ++n) mask[n] = n % 3 == 1 ? T(0) : T(1);
    auto direct = vec((long)N * H);
    T* null = nullptr;
    int rc = 0;
    rc |= run(&npylstm::lstm_forward_kernel1<T>, {g1, 1, 1}, b1, Ax.data(), Ah.data(), mask.data(), h.data(), c.data(),
              gates.data(), C.data(), tC.data(), Ho.data(), N, H);
    rc |= run(&npylstm::lstm_forward_kernel1<T>, {g1, 1, 1}, b1, Ax.data(), Ah.data(), null, h.data(), c.data(),
              gates.data(), C.data(), tC.data(), Ho.data(), N, H);
    rc |= run(&npylstm::lstm_backward_kernel1<T>, {g1, 1, 1}, b1, dH.data(), direct.data(), dY.data(), dC.data(),
              mask.data(), gates.data(), tC.data(), c.data(), dA.data(), dCp.data(), direct.data(), N, H);
    rc |= run(&npylstm::lstm_backward_kernel1<T>, {g1, 1, 1}, b1, dH.data(), null, null, dC.data(), null, gates.data(),
              tC.data(), c.data(), dA.data(), dC.data(), null, N, H);   // dC_prev aliasing dC is allowed
    rc |= run(&npylstm::lstm_forward_kernel2<T>, {gj, gn, 1}, b2, null, x.data(), W_x.data(), b.data(), null, h.data(),
              W_h.data(), c.data(), gates.data(), C.data(), tC.data(), Ho.data(), N, D, H);
    rc |= run(&npylstm::lstm_forward_kernel2<T>, {gj, gn, 1}, b2, Ax.data(), null, null, null, mask.data(), h.data(),
              W_h.data(), c.data(), gates.data(), C.data(), tC.data(), Ho.data(), N, 0, H);
    rc |= run(&npylstm::lstm_backward_kernel2<T>, {gj + gd, gn, 1}, b2, dH.data(), dY.data(), dC.data(), null,
              gates.data(), tC.data(), c.data(), W_h.data(), W_x.data(), dA.data(), dCp.data(), dHp.data(), dx.data(),
              N, D, H);
    rc |= run(&npylstm::lstm_backward_kernel2<T>, {gj, gn, 1}, b2, dH.data(), dY.data(), dC.data(), mask.data(),
              gates.data(), tC.data(), c.data(), W_h.data(), null, dA.data(), dCp.data(), dHp.data(), null, N, 0, H);
    return rc;
}

int main() {
    const int rc = all<float>(9, 37, 40) | all<double>(9, 37, 40);
    std::printf("launch codes: %d\n", rc);
    return rc;
}
"""


def test_kernels_have_no_data_race_under_thread_sanitizer(tmp_path):
    from npylstm import gpu
    run_under_thread_sanitizer(tmp_path, gpu.KERNEL_FILE, gpu.NAME_EXPRESSIONS, RACE_DRIVER)


# =========================================================================================================
# The GRU: kernels/gru_gates.cuh against gru_cell.py, and kernels/gru_kernels.cu run on the CPU through the same
# emulator (npylstm/gru_gpu.py's real launch code) against gru_sequence.py, both reset_after variants.
# =========================================================================================================
GRU_WRAPPERS = r"""
#include <cmath>
#define __host__
#define __device__
#include "gru_gates.cuh"
using namespace npylstm;

// every array is (N, H) flat: one gate block each, n elements
#define BOTH(T, S)                                                                                                  \
extern "C" void fwd_after_##S(const T* Axr, const T* Axz, const T* Axn, const T* Ahr, const T* Ahz, const T* Ahn,   \
                              const T* Hp, T* R, T* Z, T* Ht, T* H, int n) {                                        \
    for (int e = 0; e < n; ++e) gru_forward_after(Axr[e], Axz[e], Axn[e], Ahr[e], Ahz[e], Ahn[e], Hp[e],            \
                                                  &R[e], &Z[e], &Ht[e], &H[e]); }                                   \
extern "C" void fwd_reset_##S(const T* Ar, const T* Az, const T* Hp, T* R, T* Z, T* RH, int n) {                   \
    for (int e = 0; e < n; ++e) gru_forward_reset(Ar[e], Az[e], Hp[e], &R[e], &Z[e], &RH[e]); }                     \
extern "C" void fwd_cand_##S(const T* An, const T* Z, const T* Hp, T* Ht, T* H, int n) {                            \
    for (int e = 0; e < n; ++e) gru_forward_candidate(An[e], Z[e], Hp[e], &Ht[e], &H[e]); }                        \
extern "C" void bwd_after_##S(const T* dH, const T* R, const T* Z, const T* Ht, const T* Hp, const T* Ahn,         \
                              T* dAr, T* dAz, T* dAn, T* dAhn, T* dHp, int n) {                                     \
    for (int e = 0; e < n; ++e) gru_backward_after(dH[e], R[e], Z[e], Ht[e], Hp[e], Ahn[e],                         \
                                                   &dAr[e], &dAz[e], &dAn[e], &dAhn[e], &dHp[e]); }                 \
extern "C" void bwd_update_##S(const T* dH, const T* Z, const T* Hp, const T* Ht, T* dAz, T* dAn, T* dHp, int n) { \
    for (int e = 0; e < n; ++e) gru_backward_update(dH[e], Z[e], Hp[e], Ht[e], &dAz[e], &dAn[e], &dHp[e]); }       \
extern "C" void bwd_reset_##S(const T* dRH, const T* R, const T* Hp, T* dAr, T* dHp, int n) {                       \
    for (int e = 0; e < n; ++e) gru_backward_reset(dRH[e], R[e], Hp[e], &dAr[e], &dHp[e]); }
BOTH(float, float)
BOTH(double, double)

extern "C" int gru_gate_index(char name) {
    switch (name) { case 'r': return GRU_R; case 'z': return GRU_Z; case 'n': return GRU_N; }
    return -1;
}
extern "C" int gru_num_gates() { return GRU_NUM_GATES; }
"""


@pytest.fixture(scope="module")
def gru_lib(tmp_path_factory):
    gxx = _need_tool("g++")
    d = tmp_path_factory.mktemp("gru_gates_cpu")
    src, so = d / "gru_gates_cpu.cpp", d / "gru_gates_cpu.so"
    src.write_text(GRU_WRAPPERS)
    r = subprocess.run([gxx, "-O2", "-std=c++17", "-Wall", "-Werror", "-shared", "-fPIC", "-I", str(kernel_dir()),
                        "-o", str(so), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, f"g++ failed on the GRU gate header:\n{r.stderr}"
    return ctypes.CDLL(str(so))


def test_gru_gate_order_matches_numpy(gru_lib):
    from npylstm.gru_cell import GRU_GATES
    assert gru_lib.gru_num_gates() == len(GRU_GATES)
    assert [gru_lib.gru_gate_index(ctypes.c_char(g.encode())) for g in GRU_GATES] == list(range(len(GRU_GATES)))


def _gru_header_case(seed, N, H, scale, dtype, reset_after):
    """A step of gru_cell.py in `dtype` with W_x = I (D = 3H), so A_x = x + b_x exactly and dx = dA_x."""
    from npylstm.gru_cell import gru_step_backward, gru_step_forward
    rng = np.random.default_rng(seed)
    x = rng.normal(0, scale, (N, 3 * H)).astype(dtype)
    h_prev = rng.uniform(-1, 1, (N, H)).astype(dtype)
    W_h = rng.normal(0, 1 / np.sqrt(H), (H, 3 * H)).astype(dtype)
    b_x, b_h = rng.normal(0, scale, 3 * H).astype(dtype), rng.normal(0, scale, 3 * H).astype(dtype)
    H_new, cache = gru_step_forward(x, h_prev, np.eye(3 * H, dtype=dtype), W_h, b_x, b_h, reset_after)
    dH = rng.normal(size=(N, H)).astype(dtype)
    grads = gru_step_backward(dH, cache)
    return x + b_x, h_prev, W_h, b_h, H_new, cache, dH, grads


def _blocks(A, k):
    H = A.shape[1] // k
    return [np.ascontiguousarray(A[:, i * H:(i + 1) * H]) for i in range(k)]


GRU_HEADER_SETTINGS = settings(max_examples=25, deadline=None)
GRU_HEADER_DRAWS = dict(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 9), H=st.integers(1, 37),
                        scale=st.sampled_from([0.5, 3.0, 30.0, 1e4]))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype,rtol", DTYPES)
@GRU_HEADER_SETTINGS
@given(**GRU_HEADER_DRAWS)
def test_gru_header_forward_matches_gru_cell(gru_lib, reset_after, dtype, rtol, seed, N, H, scale):
    A_x, h_prev, W_h, b_h, H_ref, cache, _, _ = _gru_header_case(seed, N, H, scale, dtype, reset_after)
    Axr, Axz, Axn = _blocks(A_x, 3)
    W_hr, W_hz, W_hn = (W_h[:, k * H:(k + 1) * H] for k in range(3))
    b_hr, b_hz, b_hn = (b_h[k * H:(k + 1) * H] for k in range(3))
    out = {k: np.full((N, H), np.nan, dtype) for k in ("R", "Z", "H_tilde", "H", "RH")}  # poisoned
    if reset_after:   # the A_h blocks as gru_step_forward forms them
        Ahr, Ahz, Ahn = (np.ascontiguousarray(h_prev @ W + b) for W, b in ((W_hr, b_hr), (W_hz, b_hz), (W_hn, b_hn)))
        _call(gru_lib, "fwd_after", dtype, Axr, Axz, Axn, Ahr, Ahz, Ahn, h_prev, out["R"], out["Z"], out["H_tilde"],
              out["H"], N * H)
        _assert_close("A_hn", Ahn, cache.A_hn, rtol)
    else:             # first half, the product (R ⊙ H_prev) W_h,n, second half
        Ar, Az = np.ascontiguousarray(Axr + h_prev @ W_hr + b_hr), np.ascontiguousarray(Axz + h_prev @ W_hz + b_hz)
        _call(gru_lib, "fwd_reset", dtype, Ar, Az, h_prev, out["R"], out["Z"], out["RH"], N * H)
        _assert_close("RH", out["RH"], cache.RH, rtol)
        An = np.ascontiguousarray(Axn + out["RH"] @ W_hn + b_hn)
        _call(gru_lib, "fwd_cand", dtype, An, out["Z"], h_prev, out["H_tilde"], out["H"], N * H)
    for name, want in dict(R=cache.R, Z=cache.Z, H_tilde=cache.H_tilde, H=H_ref).items():
        _assert_close(name, out[name], want, rtol)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype,rtol", DTYPES)
@GRU_HEADER_SETTINGS
@given(**GRU_HEADER_DRAWS)
def test_gru_header_backward_matches_gru_cell(gru_lib, reset_after, dtype, rtol, seed, N, H, scale):
    _, h_prev, W_h, _, _, cache, dH, grads = _gru_header_case(seed, N, H, scale, dtype, reset_after)
    dx_ref, dh_prev_ref, _, dW_h_ref, _, _ = grads
    d = {k: np.full((N, H), np.nan, dtype) for k in ("dA_r", "dA_z", "dA_n", "dA_hn", "direct", "dRH")}
    c = (lambda a: np.ascontiguousarray(a, dtype))
    if reset_after:
        _call(gru_lib, "bwd_after", dtype, dH, c(cache.R), c(cache.Z), c(cache.H_tilde), h_prev, c(cache.A_hn),
              d["dA_r"], d["dA_z"], d["dA_n"], d["dA_hn"], d["direct"], N * H)
        dA_h = np.concatenate([d["dA_r"], d["dA_z"], d["dA_hn"]], axis=1)
        dh_prev = d["direct"] + dA_h @ W_h.T                        # the product CuPy makes after the kernel
        dW_h = h_prev.T @ dA_h
    else:
        _call(gru_lib, "bwd_update", dtype, dH, c(cache.Z), h_prev, c(cache.H_tilde), d["dA_z"], d["dA_n"],
              d["direct"], N * H)
        dRH = np.ascontiguousarray(d["dA_n"] @ W_h[:, 2 * H:].T)  # the product between the two halves
        _call(gru_lib, "bwd_reset", dtype, dRH, c(cache.R), h_prev, d["dA_r"], d["direct"], N * H)
        dA_rz = np.concatenate([d["dA_r"], d["dA_z"]], axis=1)
        dh_prev = d["direct"] + dA_rz @ W_h[:, :2 * H].T
        dW_h = np.concatenate([h_prev.T @ dA_rz, cache.RH.T @ d["dA_n"]], axis=1)
    _assert_close("dA_x", np.concatenate([d["dA_r"], d["dA_z"], d["dA_n"]], axis=1), dx_ref, rtol)   # dx = dA_x (W_x = I)
    _assert_close("dh_prev", dh_prev, dh_prev_ref, rtol)
    _assert_close("dW_h", dW_h, dW_h_ref, rtol)


# ------------------------------------------------------------------------------------ GRU kernels on the CPU
@pytest.fixture(scope="module")
def gru_emulator(tmp_path_factory):
    from npylstm import gru_gpu
    return build_emulator(tmp_path_factory.mktemp("gru_kernels_cpu"), gru_gpu.KERNEL_FILE, gru_gpu.NAME_EXPRESSIONS)


@pytest.fixture
def gru_kernels_on_cpu(gru_emulator, monkeypatch):
    """npylstm.gru_gpu with its launches running the real GRU kernels on the CPU (NumPy arrays for CuPy's)."""
    from npylstm import gru_gpu
    return _launch_on_cpu(monkeypatch, gru_emulator, gru_gpu)


def _gru_weights(rng, dtype, D, H):
    k = 1 / np.sqrt(H)
    return [rng.uniform(-k, k, (D, 3 * H)).astype(dtype), rng.uniform(-k, k, (H, 3 * H)).astype(dtype),
            rng.uniform(-1, 1, 3 * H).astype(dtype), rng.uniform(-1, 1, 3 * H).astype(dtype)]


GRU_KERNELS = {True: ("gru_forward_kernel", "gru_backward_kernel"),
               False: ("gru_forward_rz_kernel", "gru_forward_n_kernel", "gru_backward_n_kernel", "gru_backward_rz_kernel")}


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@EMU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 3), N=EMU_N, D=EMU_D, H=EMU_H, masked=st.booleans())
def test_gru_kernels_on_cpu_sequence_matches_gru_sequence_py(gru_kernels_on_cpu, reset_after, dtype, rtol, seed,
                                                             T, N, D, H, masked):
    from npylstm import gru_gpu, gru_sequence
    rng = np.random.default_rng(seed)
    host = [rng.normal(size=(T, N, D)).astype(dtype), rng.uniform(-1, 1, (N, H)).astype(dtype),
            *_gru_weights(rng, dtype, D, H)]
    ref = [a.astype(np.float64) for a in host]
    mask = rng.random((T, N)) < 0.7 if masked else None
    Y, h_T, cache = gru_gpu.gru_sequence_forward(*host, reset_after=reset_after, mask=mask)
    Y_r, h_r, cache_r = gru_sequence.gru_sequence_forward(*ref, reset_after=reset_after, mask=mask)
    _close("Y", Y, Y_r, rtol)
    _close("h_T", h_T, h_r, rtol)
    _close("gates", cache.gates, cache_r.gates, rtol)
    dY, dh = rng.normal(size=(T, N, H)).astype(dtype), rng.normal(size=(N, H)).astype(dtype)
    got = gru_gpu.gru_sequence_backward(dY, dh, cache)
    want = gru_sequence.gru_sequence_backward(dY.astype(np.float64), dh.astype(np.float64), cache_r)
    for name, g, w in zip(["dx", "dh0", "dW_x", "dW_h", "db_x", "db_h"], got, want):
        assert g.shape == w.shape and g.dtype == dtype, (name, g.shape, g.dtype)
        _close(name, g, w, rtol)
    t = "float" if dtype == np.float32 else "double"
    assert {f"npylstm::{k}1<{t}>" for k in GRU_KERNELS[reset_after]} == set(gru_kernels_on_cpu)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_layer_on_emulated_cuda_equals_the_cpu_layer(gru_kernels_on_cpu, reset_after, batch_first):
    """GRU(device="cuda") over the real kernels: two layers, batch_first, stateful over two calls, mask, grads."""
    from npylstm import GRU, gru_gpu
    rng = np.random.default_rng(11)
    T, N, D, H = 4, 5, 3, 33
    cpu = GRU(D, H, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=4, reset_after=reset_after,
              stateful=True)
    dev = GRU(D, H, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=4, reset_after=reset_after,
              stateful=True, device="cuda")
    assert isinstance(dev._backend, gru_gpu.Backend) and dev.kernel == gru_gpu.DEFAULT_KERNEL
    shape = (N, T, D) if batch_first else (T, N, D)
    for call in range(2):  # the second call starts from the state the first left
        x = rng.normal(size=shape)
        mask = rng.random(shape[:2]) < 0.8
        (y1, h1), (y2, h2) = cpu(x, mask=mask), dev(x, mask=mask)
        _close("y", y2, y1, F64_RTOL)
        _close("h_n", h2, h1, F64_RTOL)
        dy, dh = rng.normal(size=y1.shape), rng.normal(size=h1.shape)
        (dx1, dh1), (dx2, dh2) = cpu.backward(dy, dh), dev.backward(dy, dh)
        _close("dx", dx2, dx1, F64_RTOL)
        _close("dh0", dh2, dh1, F64_RTOL)
    for k in cpu.grads:
        _close(f"grads[{k}]", dev.grads[k], cpu.grads[k], F64_RTOL)


# Every GRU kernel under ThreadSanitizer, with the launch gru_gpu makes (ceil(N H / THREADS1) blocks), with a mask and
# without; dH_direct in and out alias, as gru_gpu passes them.
GRU_RACE_DRIVER = RACE_HELPERS + r"""
template <typename T>
static int all(int N, int H, unsigned blocks) {
    std::mt19937 rng(2);
    std::uniform_real_distribution<double> u(-1, 1);
    auto vec = [&](long n) { std::vector<T> v(n); for (auto& e : v) e = (T)u(rng); return v; };
    const long NH = (long)N * H;
    auto Ax = vec(3 * NH), Ah = vec(3 * NH), b_h = vec(3 * H), Hp = vec(NH), gates = vec(3 * NH), A_hn = vec(NH);
    auto Ho = vec(NH), RH = vec(NH), P = vec(NH), Ah_rz = vec(2 * NH), dH = vec(NH), direct = vec(NH), dY = vec(NH);
    auto dA_x = vec(3 * NH), dA_h = vec(3 * NH), dA_rz = vec(2 * NH), dA_n = vec(NH), dRH = vec(NH);
    const std::array<unsigned, 3> g = {blocks, 1, 1}, b = {(unsigned)npylstm::THREADS1, 1, 1};
    std::vector<T> mask(N);                                  // rows 1, 4, 7, ... masked
    for (int n = 0; n < N; ++n) mask[n] = n % 3 == 1 ? T(0) : T(1);
    T* null = nullptr;
    int rc = 0;
    for (T* m : {mask.data(), null}) {
        rc |= run(&npylstm::gru_forward_kernel1<T>, g, b, Ax.data(), Ah.data(), b_h.data(), m, Hp.data(), gates.data(),
                  A_hn.data(), Ho.data(), N, H);
        rc |= run(&npylstm::gru_backward_kernel1<T>, g, b, dH.data(), direct.data(), dY.data(), m, gates.data(),
                  A_hn.data(), Hp.data(), dA_x.data(), dA_h.data(), direct.data(), N, H);
        rc |= run(&npylstm::gru_backward_kernel1<T>, g, b, dH.data(), null, null, m, gates.data(), A_hn.data(),
                  Hp.data(), dA_x.data(), dA_h.data(), direct.data(), N, H);
        rc |= run(&npylstm::gru_forward_rz_kernel1<T>, g, b, Ax.data(), Ah_rz.data(), Hp.data(), gates.data(), RH.data(),
                  N, H);
        rc |= run(&npylstm::gru_forward_n_kernel1<T>, g, b, Ax.data(), P.data(), m, Hp.data(), gates.data(), Ho.data(),
                  N, H);
        rc |= run(&npylstm::gru_backward_n_kernel1<T>, g, b, dH.data(), direct.data(), dY.data(), m, gates.data(),
                  Hp.data(), dA_rz.data(), dA_n.data(), direct.data(), N, H);
        rc |= run(&npylstm::gru_backward_rz_kernel1<T>, g, b, dRH.data(), m, gates.data(), Hp.data(), dA_rz.data(),
                  direct.data(), N, H);
    }
    return rc;
}

int main() {
    const int N = 9, H = 40;
    const unsigned full = (unsigned)((N * H + npylstm::THREADS1 - 1) / npylstm::THREADS1);
    const int rc = all<float>(N, H, full) | all<double>(N, H, full);
    std::printf("launch codes: %d\n", rc);
    return rc;
}
"""


def test_gru_kernels_have_no_data_race_under_thread_sanitizer(tmp_path):
    from npylstm import gru_gpu
    run_under_thread_sanitizer(tmp_path, gru_gpu.KERNEL_FILE, gru_gpu.NAME_EXPRESSIONS, GRU_RACE_DRIVER)
