"""The device plumbing, checked on the CPU (no GPU needed): errors, validation, sizes and the loader's caches.

* require_cuda() says what is missing (CuPy, a device or its driver, NVRTC), with fake cupy modules for each case;
* LSTM(device=...), LSTM.to(...), the kernel dispatcher, the argument and size checks raise clear errors;
* kernels are compiled once per device and options and looked up once (fake RawModule);
* choose_kernel holds the default version.
The GPU backend's Python runs the real kernels on the CPU in test_launches.py and test_kernels_cpu.py (the
emulator); the kernels against NumPy on a GPU in test_gpu.py.
"""

import sys
import types

import numpy as np
import pytest

import npylstm
from npylstm import LSTM, gpu


def _gpu_usable():
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


# ------------------------------------------------------------------------------------------ require_cuda
INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def _fake_cupy(count=1, runtime_error=None, nvrtc_error=None, driver=None):
    """driver: what runtime.driverGetVersion returns (0: no driver loaded); None: the fake has no such call."""
    cupy = types.ModuleType("cupy")

    def getDeviceCount():
        if runtime_error:
            raise runtime_error
        return count

    def getVersion():
        if nvrtc_error:
            raise nvrtc_error
        return (13, 0)

    runtime = types.SimpleNamespace(getDeviceCount=getDeviceCount, runtimeGetVersion=lambda: 13000)
    if driver is not None:
        runtime.driverGetVersion = lambda: driver
    cupy.cuda = types.SimpleNamespace(runtime=runtime, nvrtc=types.SimpleNamespace(getVersion=getVersion))
    return cupy


@pytest.mark.parametrize("fake,words", [
    (None, ["CuPy", "not installed", "pip install"]),
    (_fake_cupy(runtime_error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")),
     ["no usable CUDA device", "cudaErrorNoDevice"]),
    (_fake_cupy(runtime_error=RuntimeError(INSUFFICIENT), driver=0),
     ["no usable CUDA device", "no NVIDIA driver is loaded", "no GPU"]),
    (_fake_cupy(runtime_error=RuntimeError(INSUFFICIENT), driver=12040),
     ["no usable CUDA device", "driver supports CUDA 12.4", "older than the CUDA 13.0 runtime"]),
    (_fake_cupy(count=0), ["no usable CUDA device", "0 devices"]),
    (_fake_cupy(nvrtc_error=OSError("libnvrtc.so.13: cannot open shared object file")),
     ["NVRTC", "libnvrtc.so.13", "nvidia-cuda-nvrtc"]),
], ids=["no-cupy", "no-device", "no-driver", "old-driver", "zero-devices", "no-nvrtc"])
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
    (dict(device="cuda", kernel=4), r"kernel must be one of 1, 2, 3 \(or None: chosen by size\), got 4"),
    (dict(device="cuda", kernel=0), r"kernel must be one of 1, 2, 3 \(or None: chosen by size\), got 0"),
    (dict(device="cuda", kernel=True), r"kernel must be one of 1, 2, 3 \(or None: chosen by size\), got True"),
])
def test_lstm_device_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTM(3, 4, **kwargs)


@pytest.mark.parametrize("bad", [0, 4, -1, 1.5, "2", True])
def test_dispatcher_rejects_unknown_versions(bad):
    with pytest.raises(ValueError, match=r"^f: kernel must be one of 1, 2, 3 \(or None: chosen by size\), got"):
        gpu.check_kernel("f", bad)
    W_h = np.zeros((3, 12))
    for dispatch in (gpu.forward_step, gpu.backward_step):
        with pytest.raises(ValueError, match=f"^npylstm.gpu.{dispatch.__name__}: kernel must be one of"):
            dispatch(bad, W_h, 2)


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


# ------------------------------------------------------------------------------------------ kernels, sizes, loader
def test_check_kernel_takes_none_and_resolve_kernel_asks_choose_kernel(monkeypatch):
    assert gpu.check_kernel("f", None) is None and gpu.check_kernel("f", 2) == 2
    monkeypatch.setattr(gpu, "choose_kernel", lambda N, H: 1 if (N, H) == (3, 7) else 2)
    assert gpu.resolve_kernel("f", None, 3, 7) == 1 and gpu.resolve_kernel("f", 2, 3, 7) == 2


@pytest.mark.parametrize("N,H", [(1, 1), (1, 1024), (8, 512), (64, 128), (64, 512), (256, 1024), (300, 5000)])
def test_choose_kernel_picks_a_known_version_and_version_1_for_the_largest_steps(N, H):
    """The rule itself is unmeasured reasoning (see its docstring); only its shape is checked here."""
    v = gpu.choose_kernel(N, H)
    assert v in gpu.KERNEL_VERSIONS
    assert v == (2 if N * H * H <= gpu.SMALL_STEP else 1)


@pytest.mark.parametrize("where,N,D,H,kernel,gates,match", [
    ("f", 0, 3, 4, 1, 4, "f: N must be at least 1, got 0"),
    ("f", 2, 0, 4, 2, 4, "f: D must be at least 1, got 0"),
    ("f", 2 ** 20, 3, 2 ** 9, 1, 4, r"f: a step's gates N·4H = 2147483648 elements; the kernels index with 32-bit int"),
    ("f", 2, 3, 2 ** 15, 2, 3, r"f: W_h H·3H = 3221225472 elements"),
    ("f", 2, 2 ** 19, 2 ** 10, 1, 4, r"f: W_x D·4H = 2147483648 elements"),
    ("f", 8 * 65535 + 1, 1, 1, 2, 4, r"f: kernel 2 takes N up to 524280 \(65535 row tiles of 8\), got N = 524281"),
])
def test_sizes_past_32_bit_indexing_are_refused(where, N, D, H, kernel, gates, match):
    with pytest.raises(ValueError, match=match):
        gpu.check_sizes(where, N, D, H, kernel, gates)


def test_sizes_just_under_the_limits_pass():
    gpu.check_sizes("f", 2 ** 19 - 1, 1, 2 ** 10, 1, 4)        # N·4H = 2^31 - 4096
    gpu.check_sizes("f", 8 * 65535, 1, 1, 2, 4)                # the last N version 2's grid takes
    gpu.check_sizes("f", 8 * 65535 + 1, 1, 1, 1, 4)            # version 1 has no such limit


def test_compile_options_add_lineinfo_only_when_asked(monkeypatch):
    monkeypatch.delenv(gpu.LINEINFO_ENV, raising=False)
    assert gpu.compile_options() == gpu.COMPILE_OPTIONS
    monkeypatch.setenv(gpu.LINEINFO_ENV, "1")
    assert gpu.compile_options() == gpu.COMPILE_OPTIONS + ("-lineinfo",)


class _FakeModule:
    """Stands for a cupy.RawModule: counts get_function calls, each of which makes a new object (as CuPy's do)."""

    def __init__(self, **kwargs):
        self.kwargs, self.lookups = kwargs, []

    def get_function(self, name):
        self.lookups.append(name)
        return object()


@pytest.mark.parametrize("mod", ["gpu", "gru_gpu"])
def test_kernels_are_compiled_and_looked_up_once_per_device_and_options(monkeypatch, mod):
    """get_function caches: the same kernel object call after call, one module per (device, options)."""
    from npylstm import gru_gpu
    mod = {"gpu": gpu, "gru_gpu": gru_gpu}[mod]
    device = [0]
    modules = []

    def raw_module(**kwargs):
        modules.append(_FakeModule(**kwargs))
        return modules[-1]

    fake = types.SimpleNamespace(RawModule=raw_module, cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: device[0])))
    monkeypatch.setattr(gpu, "require_cuda", lambda where="": fake)
    monkeypatch.setattr(mod, "_modules", {})
    monkeypatch.setattr(mod, "_functions", {})
    monkeypatch.delenv(gpu.LINEINFO_ENV, raising=False)
    name = mod.KERNEL_NAMES[0]
    f = mod.get_function(name, 1, np.float32)
    assert mod.get_function(name, 1, np.float32) is f and mod.get_module() is modules[0]
    assert mod.get_function(name, 1, np.float64) is not f
    assert len(modules) == 1 and modules[0].lookups == [f"npylstm::{name}1<float>", f"npylstm::{name}1<double>"]
    assert modules[0].kwargs["name_expressions"] == mod.NAME_EXPRESSIONS
    device[0] = 1                                   # another device: its own module and lookups
    assert mod.get_function(name, 1, np.float32) is not f and len(modules) == 2
    device[0] = 0
    monkeypatch.setenv(gpu.LINEINFO_ENV, "1")       # other options: another module, compiled with -lineinfo
    mod.get_function(name, 1, np.float32)
    assert len(modules) == 3 and "-lineinfo" in modules[2].kwargs["options"]


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
