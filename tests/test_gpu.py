"""The CUDA kernels against the NumPy reference, on a GPU (marker `gpu`; skipped without a usable device).

Run from the repository root on the GPU machine (no install needed: pytest's pythonpath has "."):

    HYPOTHESIS_PROFILE=npylstm-gpu python3 -m pytest -m gpu -q --maxfail=5

or, bounded in time with its verdicts in one place, `bash benchmarks/gpu_check.sh 1`, which also runs the
small fixed-shape subset (`-k sanitize`) under compute-sanitizer's memcheck, racecheck, synccheck and initcheck
with NPYLSTM_SANITIZE=1 and NPYLSTM_LINEINFO=1:

    NPYLSTM_SANITIZE=1 NPYLSTM_LINEINFO=1 compute-sanitizer --tool memcheck --error-exitcode 86 \
        python3 -m pytest -q -m gpu -k sanitize tests/test_gpu.py

NPYLSTM_SANITIZE=1 turns CuPy's memory pools off (every array is its own cudaMalloc, so memcheck sees its
real bounds, not a 512-byte-rounded block of the pool; per-step views inside one array stay invisible to it:
the CPU emulator checks each launch argument's bounds, tests/test_kernels_cpu.py) and the NaN poisoning off
(so initcheck sees a kernel read memory nothing wrote). NPYLSTM_LINEINFO=1 makes the loader compile with
-lineinfo, so a report names the .cu line.

Otherwise every output buffer is poisoned with NaN before each launch (gpu.POISON), so an element a kernel
fails to write shows up as NaN. Importing CuPy succeeds without a GPU, so the skip asks cupy.is_available().
Hypothesis tests draw at most GPU_EXAMPLES examples, fewer when the profile says so (npylstm-gpu: no
shrinking, so a failing test stops at once).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npylstm import LSTM, gpu, persistent
from npylstm import sequence as numpy_backend
from npylstm.cell import step_backward, step_forward

from conftest import padding_mask


def _gpu_usable():
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gpu_usable(), reason="no usable CUDA device (cupy.is_available() is False)")]
SANITIZE = os.environ.get("NPYLSTM_SANITIZE") == "1"   # under compute-sanitizer: pools off, no poisoning
if SANITIZE and _gpu_usable():
    import cupy
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)

F64_RTOL = 1e-12  # float64: cuBLAS / in-kernel sums in another order than NumPy's BLAS
F32_RTOL = 1e-5   # float32 against a float64 reference on the same (float32) inputs; -ftz, fused FMA
FD_RTOL = 1e-6    # central differences, step 1e-6, float64: truncation ~1e-12, rounding ~1e-10
FD_STEP = 1e-6
FD_FLOOR = 1e-300  # finite differences: plain relative error per tensor
SCALE_FLOOR = 1.0  # error relative to max(max|a|, max|b|, 1): gates, states and the drawn gradients are O(1), and near
                   # saturation (or after a cancellation) their rounding error is absolute, eps * 1, not relative
RTOL = {np.float32: F32_RTOL, np.float64: F64_RTOL}

# sizes: 1, primes, non-multiples of 32 (the tile width), and up to H = 1024
SIZES_N = st.one_of(st.sampled_from([1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 97, 256]), st.integers(1, 300))
SIZES_H = st.one_of(st.sampled_from([1, 2, 5, 13, 31, 32, 33, 127, 128, 257, 509, 512, 1000, 1024]),
                    st.integers(1, 1024))
SIZES_D = st.one_of(st.sampled_from([1, 3, 31, 33, 64, 100]), st.integers(1, 1024))
GPU_EXAMPLES = 12
GPU_SETTINGS = settings(max_examples=min(GPU_EXAMPLES, settings.default.max_examples), deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])
MASKS = st.sampled_from([None, "random", "pre", "post"])   # no mask, holes anywhere, padding before / after


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(gpu, "POISON", not SANITIZE)


def _mask(rng, kind, T, N):
    """(T, N) booleans or None: 'random' holes (70 % real), or 'pre' / 'post' padding (conftest.padding_mask)."""
    return rng.random((T, N)) < 0.7 if kind == "random" else padding_mask(rng, T, N, kind)


@pytest.fixture(scope="module")
def cp():
    return gpu.require_cuda("test_gpu")


def _relerr(a, b, floor=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    floor = SCALE_FLOOR if floor is None else floor
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), floor))


def _check(name, got, want, rtol, floor=None):
    """got: a CuPy or NumPy array; want: the NumPy reference. Every element written (no NaN), then close."""
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, want {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{name}: {int(bad.sum())} element(s) not finite (unwritten?), first at {np.argwhere(bad)[0]}"
    err = _relerr(got, want, floor)
    if err > rtol:
        diff = np.abs(got.astype(np.float64) - want)
        worst = np.argsort(diff, axis=None)[-3:][::-1]
        pairs = [(np.unravel_index(i, diff.shape), got.flat[i], want.flat[i]) for i in worst]
        raise AssertionError(f"{name}: error {err:.3e} > {rtol:.0e} (relative, scale floor {floor or SCALE_FLOOR}); "
                             f"worst (where, got, want): {pairs}")


def gpu_numeric_gradient(loss, a):
    """Central differences of the scalar loss() w.r.t. the device array a (perturbed in place, restored)."""
    numeric = np.empty(a.shape)
    for i in np.ndindex(a.shape):
        keep = float(a[i])
        a[i] = keep + FD_STEP
        up = loss()
        a[i] = keep - FD_STEP
        down = loss()
        a[i] = keep
        numeric[i] = (up - down) / (2 * FD_STEP)
    return numeric


def _inputs(rng, dtype, *shapes):
    """float arrays of `dtype` (the GPU's inputs) and the same values in float64 (the reference's)."""
    arrays = [rng.normal(size=s).astype(dtype) for s in shapes]
    return arrays, [a.astype(np.float64) for a in arrays]


def _weights(rng, dtype, D, H):
    k = 1 / np.sqrt(H)
    return [rng.uniform(-k, k, s).astype(dtype) for s in ((D, 4 * H), (H, 4 * H))] + [
        rng.uniform(-1, 1, 4 * H).astype(dtype)]


# ------------------------------------------------------------------------------------------ one step
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
@GPU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), N=SIZES_N, D=SIZES_D, H=SIZES_H)
def test_step_matches_cell(cp, kernel, dtype, seed, N, D, H):
    """A lone cell step (version 2 computes X W_x + b in the kernel too): H, C, and all six gradients."""
    rng = np.random.default_rng(seed)
    (x, h, c), _ = _inputs(rng, dtype, (N, D), (N, H), (N, H))
    W_x, W_h, b = _weights(rng, dtype, D, H)
    host = [x, h, c, W_x, W_h, b]
    ref = [a.astype(np.float64) for a in host]
    H_gpu, C_gpu, cache = gpu.step_forward(*map(cp.asarray, host), kernel=kernel)
    H_ref, C_ref, cache_ref = step_forward(*ref)
    _check("H", H_gpu, H_ref, RTOL[dtype])
    _check("C", C_gpu, C_ref, RTOL[dtype])
    _check("gates", cache.gates, np.concatenate([cache_ref.I, cache_ref.F, cache_ref.C_tilde, cache_ref.O], 1), RTOL[dtype])
    dH, dC = (rng.normal(size=(N, H)).astype(dtype) for _ in range(2))
    got = gpu.step_backward(cp.asarray(dH), cp.asarray(dC), cache)
    want = step_backward(dH.astype(np.float64), dC.astype(np.float64), cache_ref)
    for name, g, w in zip(["dx", "dh_prev", "dc_prev", "dW_x", "dW_h", "db"], got, want):
        _check(name, g, w, RTOL[dtype])


# ------------------------------------------------------------------------------------------ a sequence
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
@GPU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 4), N=SIZES_N, D=SIZES_D, H=SIZES_H, masked=MASKS)
def test_sequence_matches_sequence_py(cp, kernel, dtype, seed, T, N, D, H, masked):
    rng = np.random.default_rng(seed)
    (x, h0, c0), _ = _inputs(rng, dtype, (T, N, D), (N, H), (N, H))
    host = [x, h0, c0, *_weights(rng, dtype, D, H)]
    ref = [a.astype(np.float64) for a in host]
    mask = _mask(rng, masked, T, N)
    if kernel == persistent.VERSION and not persistent.persistent_plan(N, H, dtype).fits:
        with pytest.raises(ValueError, match="kernel 3 cannot run"):   # refused clearly, never run
            gpu.sequence_forward(*map(cp.asarray, host), mask=mask, kernel=kernel)
        return
    Y, h_T, c_T, cache = gpu.sequence_forward(*map(cp.asarray, host), mask=mask, kernel=kernel)
    Y_ref, h_ref, c_ref, cache_ref = numpy_backend.sequence_forward(*ref, mask=mask)
    for name, g, w in (("Y", Y, Y_ref), ("h_T", h_T, h_ref), ("c_T", c_T, c_ref)):
        _check(name, g, w, RTOL[dtype])
    dY, dh, dc = (rng.normal(size=s).astype(dtype) for s in ((T, N, H), (N, H), (N, H)))
    got = gpu.sequence_backward(cp.asarray(dY), cp.asarray(dh), cp.asarray(dc), cache)
    want = numpy_backend.sequence_backward(dY.astype(np.float64), dh.astype(np.float64), dc.astype(np.float64), cache_ref)
    for name, g, w in zip(["dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
        _check(name, g, w, RTOL[dtype])


# ------------------------------------------------------------------------------------------ finite differences
ARGS = ["x", "h0", "c0", "W_x", "W_h", "b"]


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
def test_backward_matches_finite_differences_on_the_gpu(cp, kernel, arg):
    """float64: the GPU backward against central differences of the GPU forward, one argument at a time."""
    rng = np.random.default_rng(100 + kernel)
    T, N, D, H = 3, 2, 3, 5
    args = dict(zip(ARGS, map(cp.asarray, [rng.normal(size=(T, N, D)), rng.normal(size=(N, H)),
                                           rng.normal(size=(N, H)), *_weights(rng, np.float64, D, H)])))
    args["b"] = args["b"] * 2  # biases large enough to matter, non-zero
    dY, dh, dc = (cp.asarray(rng.normal(size=s)) for s in ((T, N, H), (N, H), (N, H)))

    def loss():
        Y, h_T, c_T, _ = gpu.sequence_forward(*args.values(), kernel=kernel)
        return float((Y * dY).sum() + (h_T * dh).sum() + (c_T * dc).sum())

    _, _, _, cache = gpu.sequence_forward(*args.values(), kernel=kernel)
    grads = dict(zip(["x", "h0", "c0", "W_x", "W_h", "b"], gpu.sequence_backward(dY, dh, dc, cache)))
    numeric = gpu_numeric_gradient(loss, args[arg])
    _check(f"d{arg}", grads[arg], numeric, FD_RTOL, floor=FD_FLOOR)


# ------------------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_on_gpu_equals_layer_on_cpu(cp, kernel, dtype, batch_first):
    """Multi-layer, batch_first, stateful (carried state over two calls, a row reset between), mask."""
    rng = np.random.default_rng(5)
    T, N, D, H, L = 5, 7, 6, 33, 3
    cpu = LSTM(D, H, num_layers=L, batch_first=batch_first, dtype=np.float64, seed=2, stateful=True)
    dev = LSTM(D, H, num_layers=L, batch_first=batch_first, dtype=dtype, seed=2, stateful=True,
               device="cuda", kernel=kernel)
    for k in cpu.params:  # the same float32-rounded weights on both
        cpu.params[k] = cp.asnumpy(dev.params[k]).astype(np.float64)
    shape = (N, T, D) if batch_first else (T, N, D)
    for call in range(2):
        x = rng.normal(size=shape).astype(dtype)
        mask = rng.random(shape[:2]) < 0.8
        y_ref, (h_ref, c_ref) = cpu(x.astype(np.float64), mask=mask)
        y, (h, c) = dev(cp.asarray(x), mask=mask)
        assert isinstance(y, cp.ndarray) and y.dtype == dtype
        for name, g, w in (("y", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
            _check(name, g, w, RTOL[dtype])
        dy = rng.normal(size=y_ref.shape).astype(dtype)
        dstate = tuple(rng.normal(size=h_ref.shape).astype(dtype) for _ in range(2))
        dx_ref, (dh_ref, dc_ref) = cpu.backward(dy.astype(np.float64), tuple(s.astype(np.float64) for s in dstate))
        dx, (dh0, dc0) = dev.backward(dy, dstate)  # NumPy upstream gradients are moved to the GPU
        for name, g, w in (("dx", dx, dx_ref), ("dh0", dh0, dh_ref), ("dc0", dc0, dc_ref)):
            _check(name, g, w, RTOL[dtype])
        rows = np.zeros(N, bool)
        rows[[0, N - 1]] = True
        cpu.reset_states(rows)
        dev.reset_states(rows)
    for k in cpu.grads:
        _check(f"grads[{k}]", dev.grads[k], cpu.grads[k], RTOL[dtype])


def test_to_cuda_and_back_keeps_the_parameters(cp):
    lstm = LSTM(4, 8, num_layers=2, seed=0, dtype=np.float64)
    before = {k: v.copy() for k, v in lstm.params.items()}
    lstm.to("cuda")
    assert lstm.kernel == gpu.DEFAULT_KERNEL and all(isinstance(v, cp.ndarray) for v in lstm.params.values())
    y, _ = lstm(np.ones((3, 2, 4)))
    assert isinstance(y, cp.ndarray)
    lstm.to("cpu")
    assert all(isinstance(v, np.ndarray) and np.array_equal(v, before[k]) for k, v in lstm.params.items())


def test_state_set_from_numpy_lives_on_the_gpu(cp):
    lstm = LSTM(2, 3, num_layers=2, stateful=True, seed=0, device="cuda")
    lstm.state = (np.ones((2, 4, 3), np.float32), np.ones((2, 4, 3), np.float32))
    assert all(isinstance(s, cp.ndarray) for s in lstm.state)
    y, _ = lstm(np.ones((5, 4, 2), np.float32))
    ref = LSTM(2, 3, num_layers=2, seed=0, dtype=np.float64)
    y_ref, _ = ref(np.ones((5, 4, 2)), state=(np.ones((2, 4, 3)), np.ones((2, 4, 3))))
    _check("y", y, y_ref, F32_RTOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
def test_saturated_preactivations_stay_finite(cp, kernel, dtype):
    """|A| up to 1e4: sigmoid as 0.5 + 0.5 tanh(a/2) never overflows; gates stay in [0, 1]."""
    rng = np.random.default_rng(9)
    N, D, H = 5, 3, 40
    x = cp.asarray(rng.normal(size=(N, D)).astype(dtype))
    h, c = (cp.asarray(rng.normal(size=(N, H)).astype(dtype)) for _ in range(2))
    W_x, W_h = cp.asarray(rng.normal(size=(D, 4 * H)).astype(dtype)), cp.asarray(rng.normal(size=(H, 4 * H)).astype(dtype))
    b = cp.asarray((rng.choice([-1, 1], 4 * H) * 1e4).astype(dtype))
    H_gpu, C_gpu, cache = gpu.step_forward(x, h, c, W_x, W_h, b, kernel=kernel)
    gates = cp.asnumpy(cache.gates)
    assert np.isfinite(gates).all() and (gates >= -1).all() and (gates <= 1).all()
    grads = gpu.step_backward(cp.ones_like(h), cp.ones_like(c), cache)
    assert all(bool(cp.isfinite(g).all()) for g in (H_gpu, C_gpu, *grads))


# ------------------------------------------------------------------------------------------ boundary checks
def test_gpu_functions_refuse_host_and_strided_arrays(cp):
    rng = np.random.default_rng(0)
    x, h, c = rng.normal(size=(2, 3)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    W_x, W_h, b = rng.normal(size=(3, 16)), rng.normal(size=(4, 16)), rng.normal(size=16)
    with pytest.raises(ValueError, match="x must be a CuPy array"):
        gpu.step_forward(x, *map(cp.asarray, (h, c, W_x, W_h, b)))
    dev = list(map(cp.asarray, (x, h, c, W_x, W_h, b)))
    dev[3] = cp.asarray(np.repeat(W_x, 2, axis=1))[:, ::2]
    with pytest.raises(ValueError, match="W_x must be C-contiguous"):
        gpu.step_forward(*dev)
    dev[3] = cp.asarray(W_x.astype(np.float32))
    with pytest.raises(ValueError, match="W_x has dtype float32"):
        gpu.step_forward(*dev)


def test_module_is_compiled_once_and_cached(cp):
    assert gpu.get_module() is gpu.get_module()
    f = gpu.get_function("lstm_forward_kernel", 2, np.float32)
    assert gpu.get_function("lstm_forward_kernel", 2, np.float32) is f


# ------------------------------------------------------------------------------------------ under compute-sanitizer
SANITIZE_SHAPES = [(1, 1, 1), (9, 40, 33), (33, 1, 100)]  # (N, D, H): single elements, partial tiles both ways


@pytest.mark.parametrize("N,D,H", SANITIZE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
def test_sanitize_every_kernel_path(cp, kernel, dtype, N, D, H):
    """Fixed small shapes through every launch path (lone step and sequence, forward and backward, with and
    without a mask)."""
    rng = np.random.default_rng(N * 1000 + H)
    host = [rng.normal(size=s).astype(dtype) for s in ((2, N, D), (N, H), (N, H))] + _weights(rng, dtype, D, H)
    ref = [a.astype(np.float64) for a in host]
    for mask in (None, rng.random((2, N)) < 0.5):
        Y, h_T, c_T, cache = gpu.sequence_forward(*map(cp.asarray, host), mask=mask, kernel=kernel)
        dY = rng.normal(size=(2, N, H)).astype(dtype)
        got = gpu.sequence_backward(cp.asarray(dY), h_T * 0 + 1, c_T * 0 + 1, cache)
        _, _, _, cache_ref = numpy_backend.sequence_forward(*ref, mask=mask)
        want = numpy_backend.sequence_backward(dY.astype(np.float64), np.ones((N, H)), np.ones((N, H)), cache_ref)
        for name, g, w in zip(["dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
            _check(name, g, w, RTOL[dtype])
    H1, C1, step_cache = gpu.step_forward(*map(cp.asarray, [host[0][0], *host[1:]]), kernel=kernel)
    H1_ref, _, step_cache_ref = step_forward(ref[0][0], *ref[1:])
    _check("H", H1, H1_ref, RTOL[dtype])
    got = gpu.step_backward(cp.asarray(host[1]), cp.asarray(host[2]), step_cache)
    want = step_backward(ref[1], ref[2], step_cache_ref)
    for name, g, w in zip(["dx", "dh_prev", "dc_prev", "dW_x", "dW_h", "db"], got, want):
        _check(name, g, w, RTOL[dtype])


# ==========================================================================================================
# The GRU kernels (kernels/gru_kernels.cu through npylstm/gru_gpu.py) against gru_sequence.py, both variants
# ==========================================================================================================
from npylstm import GRU, gru_gpu, gru_sequence  # noqa: E402

RESET_AFTER = [True, False]


def _gru_weights(rng, dtype, D, H):
    k = 1 / np.sqrt(H)
    return [rng.uniform(-k, k, s).astype(dtype) for s in ((D, 3 * H), (H, 3 * H))] + [
        rng.uniform(-1, 1, 3 * H).astype(dtype) for _ in range(2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", RESET_AFTER)
@pytest.mark.parametrize("kernel", gru_gpu.KERNEL_VERSIONS)
@GPU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 4), N=SIZES_N, D=SIZES_D, H=SIZES_H, masked=MASKS)
def test_gru_sequence_matches_gru_sequence_py(cp, kernel, reset_after, dtype, seed, T, N, D, H, masked):
    rng = np.random.default_rng(seed)
    host = [rng.normal(size=(T, N, D)).astype(dtype), rng.normal(size=(N, H)).astype(dtype),
            *_gru_weights(rng, dtype, D, H)]
    ref = [a.astype(np.float64) for a in host]
    mask = _mask(rng, masked, T, N)
    Y, h_T, cache = gru_gpu.gru_sequence_forward(*map(cp.asarray, host), reset_after=reset_after, mask=mask,
                                                 kernel=kernel)
    Y_ref, h_ref, cache_ref = gru_sequence.gru_sequence_forward(*ref, reset_after=reset_after, mask=mask)
    for name, g, w in (("Y", Y, Y_ref), ("h_T", h_T, h_ref), ("gates", cache.gates, cache_ref.gates)):
        _check(name, g, w, RTOL[dtype])
    dY, dh = rng.normal(size=(T, N, H)).astype(dtype), rng.normal(size=(N, H)).astype(dtype)
    got = gru_gpu.gru_sequence_backward(cp.asarray(dY), cp.asarray(dh), cache)
    want = gru_sequence.gru_sequence_backward(dY.astype(np.float64), dh.astype(np.float64), cache_ref)
    for name, g, w in zip(["dx", "dh0", "dW_x", "dW_h", "db_x", "db_h"], got, want):
        _check(name, g, w, RTOL[dtype])


GRU_ARGS = ["x", "h0", "W_x", "W_h", "b_x", "b_h"]


@pytest.mark.parametrize("arg", GRU_ARGS)
@pytest.mark.parametrize("reset_after", RESET_AFTER)
@pytest.mark.parametrize("kernel", gru_gpu.KERNEL_VERSIONS)
def test_gru_backward_matches_finite_differences_on_the_gpu(cp, kernel, reset_after, arg):
    """float64: the GPU backward against central differences of the GPU forward, one argument at a time."""
    rng = np.random.default_rng(200 + kernel + 2 * reset_after)
    T, N, D, H = 3, 2, 3, 5
    args = dict(zip(GRU_ARGS, map(cp.asarray, [rng.normal(size=(T, N, D)), rng.normal(size=(N, H)),
                                               *_gru_weights(rng, np.float64, D, H)])))
    args["b_x"], args["b_h"] = args["b_x"] * 2, args["b_h"] * 2  # biases large enough to matter, non-zero
    dY, dh = cp.asarray(rng.normal(size=(T, N, H))), cp.asarray(rng.normal(size=(N, H)))

    def loss():
        Y, h_T, _ = gru_gpu.gru_sequence_forward(*args.values(), reset_after=reset_after, kernel=kernel)
        return float((Y * dY).sum() + (h_T * dh).sum())

    _, _, cache = gru_gpu.gru_sequence_forward(*args.values(), reset_after=reset_after, kernel=kernel)
    grads = dict(zip(GRU_ARGS, gru_gpu.gru_sequence_backward(dY, dh, cache)))
    numeric = gpu_numeric_gradient(loss, args[arg])
    _check(f"d{arg}", grads[arg], numeric, FD_RTOL, floor=FD_FLOOR)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", RESET_AFTER)
@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_layer_on_gpu_equals_layer_on_cpu(cp, reset_after, dtype, batch_first):
    """Multi-layer, batch_first, stateful (carried state over two calls, a row reset between), mask."""
    rng = np.random.default_rng(6)
    T, N, D, H, L = 5, 7, 6, 33, 3
    cpu = GRU(D, H, num_layers=L, batch_first=batch_first, dtype=np.float64, seed=2, stateful=True,
              reset_after=reset_after)
    dev = GRU(D, H, num_layers=L, batch_first=batch_first, dtype=dtype, seed=2, stateful=True,
              reset_after=reset_after, device="cuda")
    assert dev.kernel == gru_gpu.DEFAULT_KERNEL and isinstance(dev._backend, gru_gpu.Backend)
    for k in cpu.params:  # the same float32-rounded weights on both
        cpu.params[k] = cp.asnumpy(dev.params[k]).astype(np.float64)
    shape = (N, T, D) if batch_first else (T, N, D)
    for call in range(2):
        x = rng.normal(size=shape).astype(dtype)
        mask = rng.random(shape[:2]) < 0.8
        y_ref, h_ref = cpu(x.astype(np.float64), mask=mask)
        y, h = dev(cp.asarray(x), mask=mask)
        assert isinstance(y, cp.ndarray) and y.dtype == dtype
        _check("y", y, y_ref, RTOL[dtype])
        _check("h_n", h, h_ref, RTOL[dtype])
        dy = rng.normal(size=y_ref.shape).astype(dtype)
        dh_n = rng.normal(size=h_ref.shape).astype(dtype)
        dx_ref, dh0_ref = cpu.backward(dy.astype(np.float64), dh_n.astype(np.float64))
        dx, dh0 = dev.backward(dy, dh_n)  # NumPy upstream gradients are moved to the GPU
        _check("dx", dx, dx_ref, RTOL[dtype])
        _check("dh0", dh0, dh0_ref, RTOL[dtype])
        rows = np.zeros(N, bool)
        rows[[0, N - 1]] = True
        cpu.reset_states(rows)
        dev.reset_states(rows)
    for k in cpu.grads:
        _check(f"grads[{k}]", dev.grads[k], cpu.grads[k], RTOL[dtype])


def test_gru_to_cuda_and_back_keeps_the_parameters(cp):
    gru = GRU(4, 8, num_layers=2, seed=0, dtype=np.float64)
    before = {k: v.copy() for k, v in gru.params.items()}
    y_cpu, _ = gru(np.ones((3, 2, 4)))
    assert gru.to("cuda") is gru
    assert gru.kernel == gru_gpu.DEFAULT_KERNEL and all(isinstance(v, cp.ndarray) for v in gru.params.values())
    y, _ = gru(np.ones((3, 2, 4)))
    assert isinstance(y, cp.ndarray)
    _check("y", y, y_cpu, F64_RTOL)
    gru.to("cpu")
    assert all(isinstance(v, np.ndarray) and np.array_equal(v, before[k]) for k, v in gru.params.items())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", RESET_AFTER)
def test_gru_saturated_preactivations_stay_finite(cp, reset_after, dtype):
    """|A| up to 1e4: sigmoid as 0.5 + 0.5 tanh(a/2) never overflows; gates stay in [-1, 1]."""
    rng = np.random.default_rng(9)
    T, N, D, H = 2, 5, 3, 40
    x, h = cp.asarray(rng.normal(size=(T, N, D)).astype(dtype)), cp.asarray(rng.normal(size=(N, H)).astype(dtype))
    W_x, W_h = (cp.asarray(rng.normal(size=s).astype(dtype)) for s in ((D, 3 * H), (H, 3 * H)))
    b_x, b_h = (cp.asarray((rng.choice([-1, 1], 3 * H) * 1e4).astype(dtype)) for _ in range(2))
    Y, h_T, cache = gru_gpu.gru_sequence_forward(x, h, W_x, W_h, b_x, b_h, reset_after=reset_after)
    gates = cp.asnumpy(cache.gates)
    assert np.isfinite(gates).all() and (gates >= -1).all() and (gates <= 1).all()
    grads = gru_gpu.gru_sequence_backward(cp.ones_like(Y), cp.ones_like(h_T), cache)
    assert all(bool(cp.isfinite(g).all()) for g in (Y, h_T, *grads))


def test_gru_gpu_refuses_host_arrays(cp):
    rng = np.random.default_rng(0)
    host = [rng.normal(size=s) for s in ((2, 3, 4), (3, 5), (4, 15), (5, 15), (15,), (15,))]
    with pytest.raises(ValueError, match="x must be a CuPy array"):
        gru_gpu.gru_sequence_forward(host[0], *map(cp.asarray, host[1:]))


def test_gru_module_is_compiled_once_and_cached(cp):
    assert gru_gpu.get_module() is gru_gpu.get_module()
    assert gru_gpu.get_module() is not gpu.get_module()


@pytest.mark.parametrize("N,D,H", SANITIZE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", RESET_AFTER)
def test_sanitize_every_gru_kernel_path(cp, reset_after, dtype, N, D, H):
    """Fixed small shapes through every GRU launch path (forward and backward, with and without a mask)."""
    rng = np.random.default_rng(N * 1000 + H + 7)
    host = [rng.normal(size=s).astype(dtype) for s in ((2, N, D), (N, H))] + _gru_weights(rng, dtype, D, H)
    ref = [a.astype(np.float64) for a in host]
    for mask in (None, rng.random((2, N)) < 0.5):
        Y, h_T, cache = gru_gpu.gru_sequence_forward(*map(cp.asarray, host), reset_after=reset_after, mask=mask)
        dY = rng.normal(size=(2, N, H)).astype(dtype)
        got = gru_gpu.gru_sequence_backward(cp.asarray(dY), h_T * 0 + 1, cache)
        _, _, cache_ref = gru_sequence.gru_sequence_forward(*ref, reset_after=reset_after, mask=mask)
        want = gru_sequence.gru_sequence_backward(dY.astype(np.float64), np.ones((N, H)), cache_ref)
        for name, g, w in zip(["dx", "dh0", "dW_x", "dW_h", "db_x", "db_h"], got, want):
            _check(name, g, w, RTOL[dtype])


# ------------------------------------------------------------------------------------------ version 3 (persistent)
F32_LONG_RTOL = 1e-4  # float32 over 64 steps against float64: rounding carried through the recurrence (bench: 1e-4 at T = 100)
PERSISTENT_NAMES = ("Y", "h_T", "c_T", "dx", "dh0", "dc0", "dW_x", "dW_h", "db")


def _persistent_case(cp, rng, dtype, T, N, D, H, masked):
    """Version 3 forward and backward through npylstm.gpu, and sequence.py in float64 on the same inputs."""
    host = [rng.normal(size=s).astype(dtype) for s in ((T, N, D), (N, H), (N, H))] + _weights(rng, dtype, D, H)
    mask = (rng.random((T, N)) < 0.7) if masked else None
    dY, dh, dc = (rng.normal(size=s).astype(dtype) for s in ((T, N, H), (N, H), (N, H)))
    ref = [a.astype(np.float64) for a in host]
    Y_ref, h_ref, c_ref, cache_ref = numpy_backend.sequence_forward(*ref, mask=mask)
    want = (Y_ref, h_ref, c_ref) + numpy_backend.sequence_backward(*(a.astype(np.float64) for a in (dY, dh, dc)),
                                                                    cache_ref)
    Y, h_T, c_T, cache = gpu.sequence_forward(*map(cp.asarray, host), mask=mask, kernel=persistent.VERSION)
    got = (Y, h_T, c_T) + gpu.sequence_backward(*map(cp.asarray, (dY, dh, dc)), cache)
    return got, want


def test_persistent_plan_on_this_gpu(cp):
    """The plan at the targets' sizes: the grid is the device's SM count (resident at once), not the problem's."""
    sms = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrMultiProcessorCount, 0)
    for N, H in ((1, 512), (8, 512), (8, 1024), (64, 1024)):
        plan = persistent.persistent_plan(N, H, np.float32)
        assert plan.fits, plan.reason
        assert plan.blocks <= sms * persistent.BLOCKS_PER_SM and plan.blocks * plan.units >= H


@pytest.mark.parametrize("N,H,dtype", [(1, 512, np.float32), (8, 1024, np.float32), (64, 512, np.float32),
                                       (8, 512, np.float64)])
def test_persistent_long_sequence_matches_sequence_py(cp, N, H, dtype):
    """64 steps (64 grid barriers each way) at the sizes version 3 is for."""
    got, want = _persistent_case(cp, np.random.default_rng(N + H), dtype, 64, N, 32, H, masked=True)
    for name, g, w in zip(PERSISTENT_NAMES, got, want):
        _check(name, g, w, F32_LONG_RTOL if dtype == np.float32 else F64_RTOL)


def test_persistent_refuses_what_does_not_fit_and_none_falls_back(cp):
    """float64 at H = 1024: W_h (32 MB) is over the grid's shared memory. kernel=3 says so; kernel=None runs 1 or 2."""
    plan = persistent.persistent_plan(8, 1024, np.float64)
    assert not plan.fits and "H = 1024" in plan.reason and "bytes" in plan.reason
    rng = np.random.default_rng(0)
    host = [rng.normal(size=s) for s in ((2, 8, 3), (8, 1024), (8, 1024))] + _weights(rng, np.float64, 3, 1024)
    with pytest.raises(ValueError, match="kernel 3 cannot run N = 8, H = 1024, float64"):
        gpu.sequence_forward(*map(cp.asarray, host), kernel=persistent.VERSION)
    assert gpu.choose_kernel(8, 1024, np.float64, sequence=True) in gpu.STEP_VERSIONS
    Y, *_ = gpu.sequence_forward(*map(cp.asarray, host))
    Y_ref, *_ = numpy_backend.sequence_forward(*host)
    _check("Y", Y, Y_ref, F64_RTOL)


PERSISTENT_SANITIZE_SHAPES = [(3, 1, 1, 1), (3, 9, 5, 133), (2, 33, 4, 257)]   # (T, N, D, H): one unit; H = 133,
# 257: 2 units a block and the last block with 1 (132 SMs); N = 9, 33: rows in more than one pass of 8


@pytest.mark.parametrize("T,N,D,H", PERSISTENT_SANITIZE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_persistent_sanitize(cp, T, N, D, H, dtype, masked):
    """Fixed small shapes through version 3 forward and backward, for compute-sanitizer (memcheck, racecheck,
    synccheck, initcheck)."""
    got, want = _persistent_case(cp, np.random.default_rng(T * N * H), dtype, T, N, D, H, masked)
    for name, g, w in zip(PERSISTENT_NAMES, got, want):
        _check(name, g, w, RTOL[dtype])
