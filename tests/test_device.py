"""The device plumbing, checked on the CPU (no GPU needed): errors, validation, and the GPU backend's loop.

* require_cuda() says what is missing (CuPy, a device, NVRTC), with fake cupy modules for each case;
* LSTM(device=...), LSTM.to(...), the kernel dispatcher and the argument checks raise clear errors;
* the GPU backend's Python (hoisted product, ping-pong buffers, mask, the products after the loop, the
  LSTM layer over it: multi-layer, batch_first, carried state) runs on NumPy arrays with the two kernel
  launches replaced by a NumPy stand-in that keeps their contract (and asserts it: no aliasing of the
  buffers a launch reads and writes). Equal to sequence.py / cell.py. The kernels themselves are
  checked against NumPy in test_gpu.py (on a GPU) and test_kernels_cpu.py (their arithmetic).
"""

import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npylstm
from npylstm import LSTM, gpu
from npylstm import sequence as numpy_backend
from npylstm.cell import gate_blocks, sigmoid, step_backward, step_forward

RTOL = 1e-12  # float64, the same formulas in another order (the stand-in forms A in one sum)
SCALE_FLOOR = 1.0  # error relative to max(max|a|, max|b|, 1): gates, states and the drawn gradients are O(1), and near
                   # saturation (or after a cancellation) their rounding error is absolute, eps * 1, not relative


def _relerr(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), SCALE_FLOOR))


def _gpu_usable():
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


# ------------------------------------------------------------------------------------------ require_cuda
def _fake_cupy(count=1, runtime_error=None, nvrtc_error=None):
    cupy = types.ModuleType("cupy")

    def getDeviceCount():
        if runtime_error:
            raise runtime_error
        return count

    def getVersion():
        if nvrtc_error:
            raise nvrtc_error
        return (13, 0)

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=getDeviceCount),
                                      nvrtc=types.SimpleNamespace(getVersion=getVersion))
    return cupy


@pytest.mark.parametrize("fake,words", [
    (None, ["CuPy", "not installed", "pip install"]),
    (_fake_cupy(runtime_error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")),
     ["no usable CUDA device", "cudaErrorNoDevice"]),
    (_fake_cupy(count=0), ["no usable CUDA device", "0 devices"]),
    (_fake_cupy(nvrtc_error=OSError("libnvrtc.so.13: cannot open shared object file")),
     ["NVRTC", "libnvrtc.so.13", "nvidia-cuda-nvrtc"]),
], ids=["no-cupy", "no-device", "zero-devices", "no-nvrtc"])
def test_require_cuda_says_what_is_missing(monkeypatch, fake, words):
    monkeypatch.setattr(gpu, "_verified", None)
    monkeypatch.setitem(sys.modules, "cupy", fake)  # None: `import cupy` raises ImportError
    with pytest.raises(RuntimeError) as e:
        gpu.require_cuda("here")
    assert str(e.value).startswith("here: ")
    for w in words:
        assert w in str(e.value)


def test_require_cuda_returns_cupy_when_all_is_there(monkeypatch):
    fake = _fake_cupy()
    monkeypatch.setattr(gpu, "_verified", None)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert gpu.require_cuda() is fake
    assert gpu.require_cuda() is fake  # checked once, then remembered


@pytest.mark.skipif(_gpu_usable(), reason="a usable GPU is present")
@pytest.mark.parametrize("layer_class", ["LSTM", "GRU"])
def test_layer_on_cuda_without_a_gpu_is_a_clear_runtime_error(layer_class):
    cls = getattr(npylstm, layer_class)
    with pytest.raises(RuntimeError, match="CuPy|CUDA device|NVRTC"):
        cls(3, 4, device="cuda")
    layer = cls(3, 4, seed=0)
    params = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(RuntimeError):
        layer.to("cuda")
    assert layer.device == "cpu" and all(np.array_equal(params[k], v) for k, v in layer.params.items())
    layer(np.ones((2, 1, 3)))  # still usable on the CPU


@pytest.mark.parametrize("kwargs,match", [
    (dict(device="gpu"), "^LSTM: device must be 'cpu', 'cuda' or 'cuda:N' .*, got 'gpu'"),
    (dict(device="cpu", kernel=1), "kernel selects a CUDA kernel version"),
    (dict(device="cuda", kernel=3), "kernel must be one of 1, 2, got 3"),
    (dict(device="cuda", kernel=0), "kernel must be one of 1, 2, got 0"),
    (dict(device="cuda", kernel=True), "kernel must be one of 1, 2, got True"),
])
def test_lstm_device_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTM(3, 4, **kwargs)


@pytest.mark.parametrize("bad", [0, 3, -1, 1.5, "2", None, True])
def test_dispatcher_rejects_unknown_versions(bad):
    with pytest.raises(ValueError, match=r"^f: kernel must be one of 1, 2"):
        gpu.check_kernel("f", bad)
    for launch in (gpu.launch_forward, gpu.launch_backward):
        with pytest.raises(ValueError, match="kernel must be one of"):
            launch(bad, *([None] * (11 if launch is gpu.launch_forward else 12)))


# ------------------------------------------------------------------------------------------ validation
def _step_args(N=3, D=5, H=4, dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(x=rng.normal(size=(N, D)).astype(dtype), h_prev=rng.normal(size=(N, H)).astype(dtype),
                c_prev=rng.normal(size=(N, H)).astype(dtype), W_x=rng.normal(size=(D, 4 * H)).astype(dtype),
                W_h=rng.normal(size=(H, 4 * H)).astype(dtype), b=rng.normal(size=4 * H).astype(dtype))


SHAPES = dict(x=(3, 5), h_prev=(3, 4), c_prev=(3, 4), W_x=(5, 16), W_h=(4, 16), b=(16,))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("fault", ["dtype", "contiguity", "shape", "int"])
def test_kernel_arguments_are_validated_at_the_boundary(name, fault):
    args = _step_args()
    a = args[name]
    if fault == "dtype":
        args[name] = a.astype(np.float64)
        match = f"f: {name} has dtype float64, expected float32" if name != "x" else "f: h_prev has dtype float32, expected float64"
    elif fault == "int":
        args[name] = a.astype(np.int32)
        match = f"f: {name} must be a float32 or float64 array, got int32"
    elif fault == "contiguity":
        args[name] = np.repeat(a, 2, axis=-1)[..., ::2]  # same values and shape, every other element
        match = f"f: {name} must be C-contiguous"
    else:
        args[name] = np.ascontiguousarray(a[..., :-1])
        match = rf"f: {name} has shape \({', '.join(map(str, a[..., :-1].shape))},?\), expected"
    with pytest.raises(ValueError, match=match):
        gpu._check_arrays("f", args, SHAPES)


def test_valid_arguments_pass_and_return_their_dtype():
    assert gpu._check_arrays("f", _step_args(dtype=np.float64), SHAPES) == np.float64


# ------------------------------------------------------------------------------------------ the backend loop
def _fake_launch_forward(kernel, Ax, x, W_x, b, H_prev, W_h, C_prev, gates, C, tanh_C, H):
    """What either kernel version computes (lstm_kernels.cu), in NumPy, asserting its calling contract."""
    assert kernel in gpu.KERNEL_VERSIONS
    assert (Ax is None) == (x is not None) == (W_x is not None) == (b is not None)
    for out in (gates, C, tanh_C, H):
        assert out.flags.c_contiguous and all(not np.shares_memory(out, a) for a in (H_prev, C_prev))
    A = (x @ W_x + b if Ax is None else Ax) + H_prev @ W_h
    I, F, G, O = gate_blocks(A)
    gates[...] = np.concatenate([sigmoid(I), sigmoid(F), np.tanh(G), sigmoid(O)], axis=-1)
    I, F, C_tilde, O = gate_blocks(gates)
    C[...] = F * C_prev + I * C_tilde
    tanh_C[...] = np.tanh(C)
    H[...] = O * tanh_C


def _fake_launch_backward(kernel, dH, dY, dC, gates, tanh_C, C_prev, W_h, W_x, dA, dC_prev, dH_prev, dx):
    assert kernel in gpu.KERNEL_VERSIONS
    assert (W_x is None) == (dx is None)
    assert not np.shares_memory(dH_prev, dH) and not np.shares_memory(dC_prev, dC), "the caller must ping-pong"
    dH = dH + (0 if dY is None else dY)
    I, F, C_tilde, O = gate_blocks(gates)
    dO = dH * tanh_C
    dC = dC + dH * O * (1 - tanh_C ** 2)
    dA[...] = np.concatenate([dC * C_tilde * I * (1 - I), dC * C_prev * F * (1 - F),
                              dC * I * (1 - C_tilde ** 2), dO * O * (1 - O)], axis=-1)
    dC_prev[...] = dC * F
    dH_prev[...] = dA @ W_h.T
    if W_x is not None:
        dx[...] = dA @ W_x.T


@pytest.fixture
def numpy_kernels(monkeypatch):
    """The GPU backend on NumPy arrays: launches replaced by the stand-in, every output buffer poisoned."""
    monkeypatch.setattr(gpu, "launch_forward", _fake_launch_forward)
    monkeypatch.setattr(gpu, "launch_backward", _fake_launch_backward)
    monkeypatch.setattr(gpu, "POISON", True)
    monkeypatch.setattr(gpu, "require_cuda", lambda where="": np)   # "cupy" is numpy here
    monkeypatch.setattr(gpu, "to_device", lambda a, device: np.asarray(a))


def _draw(rng, *shape):
    return rng.normal(size=shape)


@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 5), N=st.integers(1, 4), D=st.integers(1, 5),
       H=st.integers(1, 6), masked=st.booleans())
def test_backend_loop_equals_sequence_py(numpy_kernels, kernel, seed, T, N, D, H, masked):
    rng = np.random.default_rng(seed)
    args = (_draw(rng, T, N, D), _draw(rng, N, H), _draw(rng, N, H), _draw(rng, D, 4 * H) / 2,
            _draw(rng, H, 4 * H) / 2, _draw(rng, 4 * H))
    mask = rng.random((T, N)) < 0.7 if masked else None
    Y, h_T, c_T, cache = gpu.sequence_forward(*args, mask=mask, kernel=kernel)
    Y_ref, h_ref, c_ref, cache_ref = numpy_backend.sequence_forward(*args, mask=mask)
    for name, a, b in (("Y", Y, Y_ref), ("h_T", h_T, h_ref), ("c_T", c_T, c_ref)):
        assert _relerr(a, b) <= RTOL, name
    dY, dh_T, dc_T = _draw(rng, T, N, H), _draw(rng, N, H), _draw(rng, N, H)
    got = gpu.sequence_backward(dY, dh_T, dc_T, cache)
    want = numpy_backend.sequence_backward(dY, dh_T, dc_T, cache_ref)
    for name, a, b in zip(["dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
        assert a.shape == b.shape and _relerr(a, b) <= RTOL, (name, _relerr(a, b))


@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
def test_backend_step_equals_cell_py(numpy_kernels, kernel):
    rng = np.random.default_rng(7)
    N, D, H = 3, 5, 4
    args = (_draw(rng, N, D), _draw(rng, N, H), _draw(rng, N, H), _draw(rng, D, 4 * H), _draw(rng, H, 4 * H),
            _draw(rng, 4 * H))
    H_gpu, C_gpu, cache = gpu.step_forward(*args, kernel=kernel)
    H_ref, C_ref, cache_ref = step_forward(*args)
    assert _relerr(H_gpu, H_ref) <= RTOL and _relerr(C_gpu, C_ref) <= RTOL
    dH, dC = _draw(rng, N, H), _draw(rng, N, H)
    for name, a, b in zip(["dx", "dh_prev", "dc_prev", "dW_x", "dW_h", "db"],
                          gpu.step_backward(dH, dC, cache), step_backward(dH, dC, cache_ref)):
        assert _relerr(a, b) <= RTOL, name


@pytest.mark.parametrize("kernel", gpu.KERNEL_VERSIONS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_on_the_gpu_backend_equals_the_cpu_layer(numpy_kernels, kernel, batch_first):
    """Multi-layer, batch_first, stateful carried state across calls, mask: the layer over the GPU backend."""
    rng = np.random.default_rng(3)
    cpu = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True)
    dev = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True,
               device="cuda", kernel=kernel)
    assert isinstance(dev._backend, gpu.Backend) and dev._backend.kernel == kernel and dev.device == "cuda"
    for call in range(2):  # the second call starts from the state the first left
        x = _draw(rng, 4, 6, 3)
        mask = rng.random((4, 6)) < 0.8
        (y1, (h1, c1)), (y2, (h2, c2)) = cpu(x, mask=mask), dev(x, mask=mask)
        for a, b in ((y1, y2), (h1, h2), (c1, c2)):
            assert _relerr(a, b) <= RTOL
        dy = _draw(rng, *y1.shape)
        dstate = (_draw(rng, *h1.shape), _draw(rng, *c1.shape))
        (dx1, (dh1, dc1)), (dx2, (dh2, dc2)) = cpu.backward(dy, dstate), dev.backward(dy, dstate)
        for a, b in ((dx1, dx2), (dh1, dh2), (dc1, dc2)):
            assert _relerr(a, b) <= RTOL
    for k in cpu.grads:
        assert _relerr(cpu.grads[k], dev.grads[k]) <= RTOL, k


def test_to_moves_back_and_forth_and_drops_the_cache(numpy_kernels):
    lstm = LSTM(2, 3, dtype=np.float64, seed=0)
    y_cpu, _ = lstm(np.ones((2, 1, 2)))
    lstm.to("cuda", kernel=1)
    assert lstm.device == "cuda" and lstm.kernel == 1
    with pytest.raises(ValueError, match="call forward first"):
        lstm.backward(np.ones_like(y_cpu))
    y_dev, _ = lstm(np.ones((2, 1, 2)))
    assert lstm.to("cpu") is lstm and lstm.device == "cpu" and lstm.kernel is None
    assert _relerr(y_cpu, y_dev) <= RTOL


def test_importing_npylstm_does_not_import_cupy():
    """CuPy is imported only when a GPU function runs: a CPU-only install never needs it."""
    import subprocess
    code = ("import sys, numpy as np, npylstm, npylstm.gpu, npylstm.bench; "
            "l = npylstm.LSTM(2, 3); l(np.ones((2, 1, 2))); assert 'cupy' not in sys.modules, 'cupy was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------ the GRU
from npylstm import GRU, gru_gpu  # noqa: E402


@pytest.mark.parametrize("kwargs,match", [
    (dict(device="gpu"), "^GRU: device must be 'cpu', 'cuda' or 'cuda:N' .*, got 'gpu'"),
    (dict(device="cpu", kernel=1), "^GRU: kernel selects a CUDA kernel version"),
    (dict(device="cuda", kernel=2), "^GRU: kernel must be one of 1 for the GRU, got 2"),
    (dict(device="cuda", kernel=True), "^GRU: kernel must be one of 1 for the GRU, got True"),
])
def test_gru_device_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRU(3, 4, **kwargs)


@pytest.fixture
def host_as_gpu(monkeypatch):
    """NumPy arrays pass the GPU boundary checks ("cupy" is numpy); the launches are not reached."""
    monkeypatch.setattr(gpu, "require_cuda", lambda where="": np)


def _gru_args(T=2, N=3, D=5, H=4, dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(x=rng.normal(size=(T, N, D)).astype(dtype), h0=rng.normal(size=(N, H)).astype(dtype),
                W_x=rng.normal(size=(D, 3 * H)).astype(dtype), W_h=rng.normal(size=(H, 3 * H)).astype(dtype),
                b_x=rng.normal(size=3 * H).astype(dtype), b_h=rng.normal(size=3 * H).astype(dtype))


@pytest.mark.parametrize("name", ["x", "h0", "W_x", "W_h", "b_x", "b_h"])
@pytest.mark.parametrize("fault", ["dtype", "shape", "host-list"])
def test_gru_gpu_arguments_are_validated_at_the_boundary(host_as_gpu, name, fault):
    args = _gru_args()
    where = "npylstm.gru_gpu.gru_sequence_forward"
    if fault == "dtype":
        args[name] = args[name].astype(np.float64)
        match = (f"{where}: {name} has dtype float64, expected float32" if name != "x"
                 else f"{where}: h0 has dtype float32, expected float64")
    elif fault == "shape":
        # x sets T, N, D for the others, so x itself goes wrong by its rank
        args[name] = args[name][0] if name == "x" else np.ascontiguousarray(args[name][..., :-1])
        match = rf"{where}: {name} has shape \("
    else:
        args[name] = args[name].tolist()
        match = f"{where}: {name} must be a CuPy array on the GPU, got list"
    with pytest.raises(ValueError, match=match):
        gru_gpu.gru_sequence_forward(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel=2), "kernel must be one of 1 for the GRU, got 2"),
    (dict(reset_after=1), "reset_after must be True or False, got 1"),
    (dict(mask=np.ones((3, 2), bool)), r"mask must be \(T, N\) = \(2, 3\) booleans"),
    (dict(mask=np.ones((2, 3), np.int8)), r"mask must be \(T, N\) = \(2, 3\) booleans, got int8"),
])
def test_gru_gpu_options_are_checked(host_as_gpu, kwargs, match):
    with pytest.raises(ValueError, match="^npylstm.gru_gpu.gru_sequence_forward: " + match):
        gru_gpu.gru_sequence_forward(**_gru_args(), **kwargs)


def test_gru_gpu_backward_checks_its_cache_and_gradients(host_as_gpu):
    where = "npylstm.gru_gpu.gru_sequence_backward"
    dY, dh = np.ones((2, 3, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=f"^{where}: cache must be the GRUGPUSequenceCache"):
        gru_gpu.gru_sequence_backward(dY, dh, cache=("not", "a", "cache"))
    from npylstm import gru_sequence
    _, _, cpu_cache = gru_sequence.gru_sequence_forward(*_gru_args().values())
    with pytest.raises(ValueError, match=f"^{where}: cache must be the GRUGPUSequenceCache .* got GRUSequenceCache"):
        gru_gpu.gru_sequence_backward(dY, dh, cpu_cache)
