"""The GPU launch path on the CPU: what it launches per step, masks, and the layers over it.

The emulator of test_kernels_cpu.py runs the real kernels (g++, one OS thread per CUDA thread) through the real
launch code of npylstm/gpu.py and gru_gpu.py, NumPy arrays standing for CuPy's. Here, on top of it:

* counting: every array the launch code touches is a `Counted` ndarray, the array module it gets from
  gpu._xp is a counting proxy of NumPy, and each kernel it gets from get_function is wrapped. So each
  operation it asks for -- a kernel launch, a product (cuBLAS on a GPU), an elementwise operation, a
  reduction, a copy, an allocation -- is recorded once, at the level the code asks for it (what runs inside
  a recorded call is not recorded again). On a GPU each recorded operation is one CuPy call: one launch, one
  cuBLAS call or one copy (an allocation from CuPy's pool launches nothing; zeros and full add one fill).
  A sequence of T = 2 and one of T = 5 give the count per step (their difference / 3) and per call; the
  per-step counts must be exactly the module docstring's table (and nothing else: no allocation, copy or
  elementwise operation in the loops), the per-call counts what the docstring says happens once a call;
* masks: pre- and post-padding (conftest.padding_mask), forward and backward, every version, against the
  NumPy sequences in float64;
* the LSTM layer on the emulated GPU backend against the CPU layer (stateful, multi-layer, batch_first).
"""

import re
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import assert_close, padding_mask
from npylstm import LSTM, gpu, gru_gpu, gru_sequence
from npylstm import sequence as numpy_backend
from test_kernels_cpu import _launch_on_cpu, build_emulator

F64_RTOL = 1e-12   # float64, the kernels' formulas against NumPy's in another order: a few ulp of O(1) values
SCALE_FLOOR = 1.0  # relative to max(max|a|, max|b|, 1): states and drawn gradients are O(1); rounding near saturation
                   # or after a cancellation is absolute, eps * 1


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    d = tmp_path_factory.mktemp("launches")
    (d / "lstm").mkdir()
    (d / "gru").mkdir()
    return {gpu: build_emulator(d / "lstm", gpu.KERNEL_FILE, gpu.NAME_EXPRESSIONS),
            gru_gpu: build_emulator(d / "gru", gru_gpu.KERNEL_FILE, gru_gpu.NAME_EXPRESSIONS)}


@pytest.fixture
def on_cpu(emulators, monkeypatch):
    """Both GPU modules launch the real kernels on the CPU."""
    for module, lib in emulators.items():
        _launch_on_cpu(monkeypatch, lib, module)


# ------------------------------------------------------------------------------------------ counting
class Record:
    events = None      # Counter of operations while counting, else None
    lookups = None     # Counter of get_function calls
    depth = 0          # > 0 inside a recorded call: what it does inside is not recorded again


def _record(name):
    if Record.events is not None and Record.depth == 0:
        Record.events[name] += 1


@contextmanager
def _inside():
    Record.depth += 1
    try:
        yield
    finally:
        Record.depth -= 1


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, Counted) else a


def _counted(a):
    return a.view(Counted) if type(a) is np.ndarray else a


class Counted(np.ndarray):
    """An ndarray that records every ufunc (elementwise, matmul, reduction), array function and copy made on it."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _record(ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        with _inside():
            if out is not None:
                kwargs["out"] = tuple(_plain(o) for o in out)
            result = getattr(ufunc, method)(*map(_plain, inputs), **kwargs)
        return (out[0] if len(out) == 1 else out) if out is not None else _counted(result)

    def __array_function__(self, func, types, args, kwargs):
        _record(func.__name__)
        with _inside():
            return _counted(super().__array_function__(func, types, args, kwargs))

    def __setitem__(self, key, value):
        _record("copy")
        with _inside():
            super().__setitem__(key, value)

    def copy(self, *args, **kwargs):
        _record("copy")
        with _inside():
            return super().copy(*args, **kwargs)

    def astype(self, *args, **kwargs):
        _record("copy")
        with _inside():
            return super().astype(*args, **kwargs)


class CountingNumpy:
    """numpy for the launch code (gpu._xp's answer): each call recorded once, arrays it makes are Counted."""

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def call(*args, **kwargs):
            _record(name)
            with _inside():
                return _counted(f(*args, **kwargs))
        return call


class CountedKernel:
    def __init__(self, kernel, name):
        self.kernel, self.name = kernel, name

    def __call__(self, grid, block, args):
        _record(f"kernel {self.name}")
        with _inside():
            self.kernel(grid, block, args)


@pytest.fixture
def counting(on_cpu, monkeypatch):
    """gpu._xp -> the counting proxy; kernels wrapped; output buffers not poisoned (the production path)."""
    xp = CountingNumpy()
    monkeypatch.setattr(gpu, "_xp", lambda a: xp)
    monkeypatch.setattr(gpu, "POISON", False)
    for module in (gpu, gru_gpu):
        emulated = module.get_function

        def get_function(name, version, dtype, emulated=emulated):
            if Record.lookups is not None:
                Record.lookups[name] += 1
            return CountedKernel(emulated(name, version, dtype), f"{name}{version}")
        monkeypatch.setattr(module, "get_function", get_function)
    yield
    Record.events = Record.lookups = None


# what one recorded operation is on a GPU
CATEGORY = {"matmul": "gemm", "add.reduce": "sum", "empty": "alloc", "zeros": "fill", "full": "fill",
            "copy": "copy", "array": "copy", "ascontiguousarray": "copy", "concatenate": "copy", "copyto": "copy"}


def _category(name):
    return "kernel" if name.startswith("kernel ") else CATEGORY.get(name, "elementwise")


def _count(call):
    """Run call() and return (operations, lookups) it recorded, by name."""
    Record.events, Record.lookups = Counter(), Counter()
    call()
    events, lookups = Record.events, Record.lookups
    Record.events = Record.lookups = None
    return events, lookups


def _per_step_and_call(run):
    """run(T) -> (forward operations, backward operations, lookups); returns per step and once a call, for each."""
    counts = {T: run(T) for T in (2, 5)}
    out = []
    for i in range(3):
        two, five = counts[2][i], counts[5][i]
        step = Counter({k: (five[k] - two[k]) // 3 for k in five | two})
        assert all(five[k] - two[k] == 3 * step[k] for k in five | two), (two, five)
        once = Counter({k: two[k] - 2 * step[k] for k in two})
        out.append((+step, +once))
    return out


def _by_category(counter):
    c = Counter()
    for name, n in counter.items():
        c[_category(name)] += n
    return +c


def _launched(counter):
    """By category, without allocations (CuPy's pool hands memory out without a launch)."""
    return {k: v for k, v in _by_category(counter).items() if k != "alloc"}


def _counted_inputs(rng, *shapes):
    return [rng.normal(size=s).view(Counted) for s in shapes]


def _lstm_counts(kernel, masked):
    def run(T):
        rng = np.random.default_rng(0)
        N, D, H = 3, 2, 4
        x, h0, c0, W_x, W_h, b = _counted_inputs(rng, (T, N, D), (N, H), (N, H), (D, 4 * H), (H, 4 * H), (4 * H,))
        mask = padding_mask(rng, T, N, "post") if masked else None
        fwd, look_f = _count(lambda: gpu.sequence_forward(x, h0, c0, W_x, W_h, b, mask=mask, kernel=kernel))
        _, _, _, cache = gpu.sequence_forward(x, h0, c0, W_x, W_h, b, mask=mask, kernel=kernel)
        dY, dh, dc = _counted_inputs(rng, (T, N, H), (N, H), (N, H))
        bwd, look_b = _count(lambda: gpu.sequence_backward(dY, dh, dc, cache))
        return fwd, bwd, look_f + look_b
    return _per_step_and_call(run)


def _gru_counts(reset_after, masked):
    def run(T):
        rng = np.random.default_rng(0)
        N, D, H = 3, 2, 4
        x, h0, W_x, W_h, b_x, b_h = _counted_inputs(rng, (T, N, D), (N, H), (D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))
        mask = padding_mask(rng, T, N, "pre") if masked else None
        args = (x, h0, W_x, W_h, b_x, b_h, reset_after, mask)
        fwd, look_f = _count(lambda: gru_gpu.gru_sequence_forward(*args))
        _, _, cache = gru_gpu.gru_sequence_forward(*args)
        dY, dh = _counted_inputs(rng, (T, N, H), (N, H))
        bwd, look_b = _count(lambda: gru_gpu.gru_sequence_backward(dY, dh, cache))
        return fwd, bwd, look_f + look_b
    return _per_step_and_call(run)


def _docstring_table(module, row):
    """{'forward': {'gemm': g, 'kernel': k}, 'backward': {...}} from the docstring's per-step table row `row`."""
    line = next(ln for ln in module.__doc__.splitlines() if ln.startswith("    " + row))
    cells = re.split(r"\s{2,}", line.strip()[len(row):].strip())
    out = {}
    for direction, cell in zip(("forward", "backward"), cells):
        out[direction] = {{"GEMM": "gemm", "kernel": "kernel"}[m.group(2)]: int(m.group(1))
                          for m in re.finditer(r"(\d+) (GEMM|kernel)s?\b", cell)}
    return out


# per call (besides the steps), by category, as the module docstrings say "once a call"; allocations launch nothing
LSTM_ONCE = {  # (kernel, masked) -> forward, backward
    (1, False): ({"gemm": 1, "elementwise": 1, "copy": 4}, {"gemm": 3, "sum": 1}),
    (1, True): ({"gemm": 1, "elementwise": 1, "copy": 5}, {"gemm": 3, "sum": 1, "fill": 1, "elementwise": 1}),
    (2, False): ({"gemm": 1, "elementwise": 1, "copy": 4}, {"gemm": 3, "sum": 1}),
    (2, True): ({"gemm": 1, "elementwise": 1, "copy": 5}, {"gemm": 3, "sum": 1}),
}
GRU_ONCE = {  # reset_after -> forward, backward (without a mask; a mask adds its one copy to the forward)
    True: ({"gemm": 1, "elementwise": 1, "copy": 2}, {"elementwise": 1, "gemm": 3, "sum": 2}),
    False: ({"gemm": 1, "elementwise": 2, "copy": 4}, {"elementwise": 1, "copy": 5, "gemm": 4, "sum": 1}),
}


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
def test_lstm_launches_per_step_are_the_docstring_table(counting, kernel, masked):
    (fwd_step, fwd_once), (bwd_step, bwd_once), (lookups_step, lookups_once) = _lstm_counts(kernel, masked)
    table = _docstring_table(gpu, f"version {kernel}")
    assert _by_category(fwd_step) == table["forward"], fwd_step
    assert _by_category(bwd_step) == table["backward"], bwd_step
    assert fwd_step[f"kernel lstm_forward_kernel{kernel}"] == 1 and bwd_step[f"kernel lstm_backward_kernel{kernel}"] == 1
    assert not lookups_step and set(lookups_once.values()) == {1}, lookups_once   # one lookup a kernel a call
    want_fwd, want_bwd = LSTM_ONCE[kernel, masked]
    assert _launched(fwd_once) == want_fwd, fwd_once
    assert _launched(bwd_once) == want_bwd, bwd_once


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_launches_per_step_are_the_docstring_table(counting, reset_after, masked):
    (fwd_step, fwd_once), (bwd_step, bwd_once), (lookups_step, lookups_once) = _gru_counts(reset_after, masked)
    table = _docstring_table(gru_gpu, f"reset_after={reset_after}")
    assert _by_category(fwd_step) == table["forward"], fwd_step
    assert _by_category(bwd_step) == table["backward"], bwd_step
    assert not lookups_step and set(lookups_once.values()) == {1}, lookups_once
    want_fwd, want_bwd = GRU_ONCE[reset_after]
    want_fwd = dict(want_fwd, copy=want_fwd["copy"] + masked)
    assert _launched(fwd_once) == want_fwd, fwd_once
    assert _launched(bwd_once) == want_bwd, bwd_once


# a lone cell step, as the gpu.py docstring says: forward, then backward with the weight gradients
LONE_STEP = {1: ({"gemm": 2, "elementwise": 1, "kernel": 1}, {"kernel": 1, "gemm": 4, "sum": 1}),
             2: ({"kernel": 1}, {"kernel": 1, "gemm": 2, "sum": 1})}


@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
def test_lone_step_launches_are_the_docstring_count(counting, kernel):
    rng = np.random.default_rng(0)
    N, D, H = 3, 2, 4
    args = _counted_inputs(rng, (N, D), (N, H), (N, H), (D, 4 * H), (H, 4 * H), (4 * H,))
    forward, _ = _count(lambda: gpu.step_forward(*args, kernel=kernel))
    _, _, cache = gpu.step_forward(*args, kernel=kernel)
    dH, dC = _counted_inputs(rng, (N, H), (N, H))
    backward, _ = _count(lambda: gpu.step_backward(dH, dC, cache))
    assert (_launched(forward), _launched(backward)) == LONE_STEP[kernel], (forward, backward)


def test_the_counter_sees_what_the_loops_could_do(counting):
    """The counting itself: an allocation, an elementwise op, a copy and a product are each seen once."""
    xp = gpu._xp(None)
    a = xp.ones((2, 3))
    events, _ = _count(lambda: (a + a, a.copy(), a @ a.T, xp.empty((2,)), a.sum(axis=0), a.__setitem__(0, 1)))
    assert events == Counter({"add": 1, "copy": 2, "matmul": 1, "empty": 1, "add.reduce": 1}), events


# ------------------------------------------------------------------------------------------ masks
def _close(name, got, want):
    assert_close(got, want, F64_RTOL, name, floor=SCALE_FLOOR)


@pytest.mark.parametrize("kind", ["pre", "post"])
@pytest.mark.parametrize("kernel", gpu.STEP_VERSIONS)
def test_lstm_padding_masks_match_sequence_py(on_cpu, kernel, kind):
    rng = np.random.default_rng(11)
    T, N, D, H = 4, 9, 5, 33                                     # N past the tile height 8, H past the tile width 32
    args = [rng.normal(size=s) for s in ((T, N, D), (N, H), (N, H), (D, 4 * H), (H, 4 * H), (4 * H,))]
    args[3:5] = [w / np.sqrt(H) for w in args[3:5]]
    mask = padding_mask(rng, T, N, kind)
    mask[:, 0], mask[:, 1] = False, True                          # a row never real, a row always real
    Y, h_T, c_T, cache = gpu.sequence_forward(*args, mask=mask, kernel=kernel)
    Y_r, h_r, c_r, cache_r = numpy_backend.sequence_forward(*args, mask=mask)
    for name, g, w in (("Y", Y, Y_r), ("h_T", h_T, h_r), ("c_T", c_T, c_r)):
        _close(name, g, w)
    assert np.array_equal(h_T[0], args[1][0]) and np.array_equal(c_T[0], args[2][0])   # never real: kept exactly
    dY, dh, dc = rng.normal(size=(T, N, H)), rng.normal(size=(N, H)), rng.normal(size=(N, H))
    got = gpu.sequence_backward(dY, dh, dc, cache)
    want = numpy_backend.sequence_backward(dY, dh, dc, cache_r)
    for name, g, w in zip(["dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
        _close(name, g, w)
    assert np.array_equal(got[2][0], dc[0])                       # never real: dC passes through untouched


@pytest.mark.parametrize("kind", ["pre", "post"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_padding_masks_match_gru_sequence_py(on_cpu, reset_after, kind):
    rng = np.random.default_rng(12)
    T, N, D, H = 4, 9, 5, 33
    args = [rng.normal(size=s) for s in ((T, N, D), (N, H), (D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))]
    args[2:4] = [w / np.sqrt(H) for w in args[2:4]]
    mask = padding_mask(rng, T, N, kind)
    mask[:, 0], mask[:, 1] = False, True
    Y, h_T, cache = gru_gpu.gru_sequence_forward(*args, reset_after=reset_after, mask=mask)
    Y_r, h_r, cache_r = gru_sequence.gru_sequence_forward(*args, reset_after=reset_after, mask=mask)
    _close("Y", Y, Y_r)
    _close("h_T", h_T, h_r)
    assert np.array_equal(h_T[0], args[1][0])
    dY, dh = rng.normal(size=(T, N, H)), rng.normal(size=(N, H))
    got = gru_gpu.gru_sequence_backward(dY, dh, cache)
    want = gru_sequence.gru_sequence_backward(dY, dh, cache_r)
    for name, g, w in zip(["dx", "dh0", "dW_x", "dW_h", "db_x", "db_h"], got, want):
        _close(name, g, w)


# ------------------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("kernel,batch_first", [(None, True), (1, False), (2, True)])
def test_layer_on_the_emulated_gpu_equals_the_cpu_layer(on_cpu, monkeypatch, kernel, batch_first):
    """Multi-layer, batch_first, stateful carried state across calls, mask: the LSTM layer over the GPU backend.
    kernel None: the backend asks choose_kernel per call (here made to alternate, to see it asked)."""
    asked = []
    monkeypatch.setattr(gpu, "choose_kernel", lambda N, H, *_, **__: asked.append((N, H)) or 1 + len(asked) % 2)
    monkeypatch.setattr(gpu, "to_device", lambda a, device: np.asarray(a))
    rng = np.random.default_rng(3)
    cpu = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True)
    dev = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True,
               device="cuda", kernel=kernel)
    assert isinstance(dev._backend, gpu.Backend) and dev._backend.kernel == kernel and dev.kernel == kernel
    for call in range(2):  # the second call starts from the state the first left
        x = rng.normal(size=(4, 6, 3))
        mask = rng.random((4, 6)) < 0.8
        (y1, (h1, c1)), (y2, (h2, c2)) = cpu(x, mask=mask), dev(x, mask=mask)
        for name, a, b in (("y", y2, y1), ("h", h2, h1), ("c", c2, c1)):
            _close(name, a, b)
        dy = rng.normal(size=y1.shape)
        dstate = (rng.normal(size=h1.shape), rng.normal(size=c1.shape))
        (dx1, (dh1, dc1)), (dx2, (dh2, dc2)) = cpu.backward(dy, dstate), dev.backward(dy, dstate)
        for name, a, b in (("dx", dx2, dx1), ("dh", dh2, dh1), ("dc", dc2, dc1)):
            _close(name, a, b)
    for k in cpu.grads:
        _close(k, dev.grads[k], cpu.grads[k])
    N = 4 if batch_first else 6
    assert asked == ([(N, 5)] * 4 if kernel is None else [])     # 2 calls x 2 layers, H = 5


def test_to_moves_back_and_forth_and_drops_the_cache(on_cpu, monkeypatch):
    monkeypatch.setattr(gpu, "to_device", lambda a, device: np.asarray(a))
    lstm = LSTM(2, 3, dtype=np.float64, seed=0)
    y_cpu, _ = lstm(np.ones((2, 1, 2)))
    lstm.to("cuda", kernel=1)
    assert lstm.device == "cuda" and lstm.kernel == 1
    with pytest.raises(ValueError, match="call forward first"):
        lstm.backward(np.ones_like(y_cpu))
    y_dev, _ = lstm(np.ones((2, 1, 2)))
    assert lstm.to("cpu") is lstm and lstm.device == "cpu" and lstm.kernel is None
    _close("y", y_dev, y_cpu)


def test_lone_step_refuses_sizes_past_32_bit_indexing(on_cpu):
    """check_sizes runs at the boundary, before any buffer is made (here: version 2's grid limit on N)."""
    N, H = 8 * 65535 + 1, 1
    args = [np.zeros((N, 1)), np.zeros((N, H)), np.zeros((N, H)), np.zeros((1, 4)), np.zeros((H, 4)), np.zeros(4)]
    with pytest.raises(ValueError, match="^npylstm.gpu.step_forward: kernel 2 takes N up to 524280"):
        gpu.step_forward(*args, kernel=2)
