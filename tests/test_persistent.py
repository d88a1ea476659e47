"""Kernel version 3 (kernels/lstm_persistent.cu, npylstm/persistent.py) without a GPU.

* The plan: the grid comes from the device (SM count, resident blocks), a size whose slice of W_h does not fit
  in shared memory is refused with the reason, R adapts to N.
* The kernels on the CPU emulator (tests/emulator.py, a cooperative launch: every block live at once,
  grid.sync() a barrier across them), on a small emulated device (persistent.LIMITS: 2-4 blocks of at most
  64 threads), against the NumPy reference (npylstm/sequence.py), forward and backward, masks, state carried
  across calls; and a planted missing grid barrier is caught.
"""

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero, padding_mask
from emulator import build_emulator, cupy_on_cpu
from npylstm import LSTM, gpu, persistent, sequence

F64_RTOL = 1e-12  # the same float64 sums in another order (k split across threads): rounding far below this
F32_RTOL = 1e-5   # float32 kernel vs float64 reference over a few steps: a few float32 ulp per step
H200 = persistent.Limits(sms=132, shared_optin=232448, blocks_per_sm=1)   # an H200: SMs, opt-in shared memory (227 KB)
EMULATED_MAX_THREADS = 64                                 # one OS thread per CUDA thread: keep grids small


def emulated(sms):
    return persistent.Limits(sms=sms, shared_optin=H200.shared_optin, blocks_per_sm=1,
                             max_threads=EMULATED_MAX_THREADS)


# ------------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize("H", [512, 1024])
@pytest.mark.parametrize("N,rows", [(1, 1), (3, 4), (8, 8), (64, 8)])
def test_persistent_plan_on_an_h200_float32(N, rows, H):
    plan = persistent.plan_for(N, H, np.float32, H200)
    assert plan.fits, plan.reason
    assert plan.units == -(-H // 132) and plan.blocks == -(-H // plan.units) <= 132
    # R follows N up to 8 (one row reuses nothing), while it fits: backward stages rows of 4H, and at H = 1024 eight
    # of them (128 KB) beside its 128 KB slice would be over 227 KB
    backward_rows = min(rows, 4) if H == 1024 else rows
    for shape, columns, want in ((plan.forward, 4 * plan.units, rows), (plan.backward, plan.units, backward_rows)):
        assert shape.rows == want
        assert shape.threads % columns == 0 and shape.threads <= persistent.MAX_THREADS3
        assert shape.shared <= H200.shared_optin


def test_persistent_plan_refuses_what_does_not_fit_and_says_why():
    plan = persistent.plan_for(8, 1024, np.float64, H200)   # 32 MB of W_h; 132 x 227 KB of shared memory
    assert not plan.fits
    for part in ("N = 8", "H = 1024", "float64", "232448 bytes", "8 hidden units per block"):
        assert part in plan.reason, plan.reason
    assert persistent.plan_for(8, 1024, np.float32, H200).fits


def test_persistent_plan_refuses_a_device_without_cooperative_launches():
    plan = persistent.plan_for(1, 64, np.float32, H200._replace(cooperative=False))
    assert not plan.fits and "cooperative" in plan.reason


def test_persistent_plan_asks_the_occupancy_api_for_the_grid():
    asked = []

    def occupancy(direction, shape):
        asked.append((direction, shape))
        return 0
    asking = H200._replace(blocks_per_sm=None)
    plan = persistent.plan_for(8, 512, np.float32, asking, occupancy)
    assert {d for d, _ in asked} == {"forward", "backward"}
    assert not plan.fits and "occupancy" in plan.reason
    plan = persistent.plan_for(8, 512, np.float32, asking, lambda d, s: 3)
    assert plan.fits and plan.blocks * plan.units >= 512 and plan.blocks <= 132 * persistent.BLOCKS_PER_SM


# ------------------------------------------------------------------------------------------------ emulator
@pytest.fixture(scope="module")
def persistent_emulator(tmp_path_factory):
    return build_emulator(tmp_path_factory.mktemp("persistent"), persistent.KERNEL_FILE, persistent.NAME_EXPRESSIONS)


def _on_cpu(monkeypatch, emulator, sms):
    """persistent's launches run on `emulator`, on an emulated device of `sms` SMs; outputs start poisoned."""
    cupy = cupy_on_cpu([emulator])
    monkeypatch.setattr(gpu, "require_cuda", lambda where="": cupy)
    monkeypatch.setattr(gpu, "POISON", True)
    monkeypatch.setattr(persistent, "_modules", {})
    monkeypatch.setattr(persistent, "_functions", {})
    monkeypatch.setattr(persistent, "LIMITS", emulated(sms))


def _problem(rng, T, N, D, H, dtype, mask_kind):
    f = lambda *shape: nonzero(rng, shape).astype(dtype)
    x, h0, c0 = f(T, N, D), f(N, H), f(N, H)
    W_x, W_h, b = f(D, 4 * H) * 0.7, f(H, 4 * H) * 0.7, f(4 * H)
    return x, h0, c0, W_x, W_h, b, padding_mask(rng, T, N, mask_kind)


def _run_persistent(x, h0, c0, W_x, W_h, b, mask, dY, dh_T, dc_T):
    """Version 3 the way the GPU backend drives it: the hoisted input GEMM, one launch forward, one backward,
    the weight and input gradients as one product each after it."""
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    plan = persistent.persistent_plan(N, H, dtype)
    assert plan.fits, plan.reason
    empty = lambda *shape: np.full(shape, np.nan, dtype)      # poisoned: every element must be written
    Ax = (x.reshape(T * N, D) @ W_x + b).reshape(T, N, 4 * H)
    Hs, Cs, gates, tanh_C = empty(T + 1, N, H), empty(T + 1, N, H), empty(T, N, 4 * H), empty(T, N, H)
    Hs[0], Cs[0] = h0, c0
    m = None if mask is None else mask.astype(dtype)
    persistent.forward(plan, Ax, W_h, m, Hs, Cs, gates, tanh_C)
    dA, dH, dC = empty(T, N, 4 * H), dh_T.copy(), dc_T.copy()
    persistent.backward(plan, dY, W_h, m, Cs, gates, tanh_C, dA, dH, dC)
    dA2 = dA.reshape(T * N, 4 * H)
    grads = ((dA2 @ W_x.T).reshape(T, N, D), dH, dC, x.reshape(T * N, D).T @ dA2, Hs[:T].reshape(T * N, H).T @ dA2,
             dA2.sum(axis=0))
    return Hs[1:], Hs[T], Cs[T], grads


GRAD_NAMES = ("dx", "dh0", "dc0", "dW_x", "dW_h", "db")
EMU_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("dtype,rtol", [(np.float64, F64_RTOL), (np.float32, F32_RTOL)])
@EMU_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(1, 5), N=st.integers(1, 10), D=st.integers(1, 4),
       H=st.integers(1, 19), sms=st.integers(2, 4), mask_kind=st.sampled_from([None, "post", "pre"]))
def test_persistent_on_cpu_matches_sequence_py(persistent_emulator, monkeypatch, dtype, rtol, seed, T, N, D, H, sms,
                                               mask_kind):
    """Forward and BPTT of version 3 on 2-4 emulated blocks (H rarely a multiple of a block's units; N over the
    8 rows a pass stages) against sequence.py in float64."""
    _on_cpu(monkeypatch, persistent_emulator, sms)
    rng = np.random.default_rng(seed)
    x, h0, c0, W_x, W_h, b, mask = _problem(rng, T, N, D, H, dtype, mask_kind)
    dY, dh_T, dc_T = (nonzero(rng, s).astype(dtype) for s in ((T, N, H), (N, H), (N, H)))
    f64 = lambda a: a.astype(np.float64)
    Y, h_T, c_T, cache = sequence.sequence_forward(*map(f64, (x, h0, c0, W_x, W_h, b)), mask)
    want = sequence.sequence_backward(f64(dY), f64(dh_T), f64(dc_T), cache)
    got_Y, got_h, got_c, got = _run_persistent(x, h0, c0, W_x, W_h, b, mask, dY, dh_T, dc_T)
    for name, g, w in zip(("Y", "h_T", "c_T") + GRAD_NAMES, (got_Y, got_h, got_c) + got, (Y, h_T, c_T) + want):
        assert_close(g, w, rtol, f"kernel 3 {name} (T={T}, N={N}, D={D}, H={H}, {sms} blocks, mask {mask_kind})")


def test_persistent_on_cpu_carries_state_across_calls(persistent_emulator, monkeypatch):
    """Two calls with (h_T, c_T) of the first as (h0, c0) of the second equal one call over the whole sequence,
    and so do the gradients, dh0, dc0 of the second call fed to the first as dh_T, dc_T."""
    _on_cpu(monkeypatch, persistent_emulator, 3)
    rng = np.random.default_rng(5)
    T, N, D, H, split = 6, 3, 2, 11, 2
    x, h0, c0, W_x, W_h, b, mask = _problem(rng, T, N, D, H, np.float64, "pre")
    dY, dh_T, dc_T = (nonzero(rng, s) for s in ((T, N, H), (N, H), (N, H)))
    Y, h, c, whole = _run_persistent(x, h0, c0, W_x, W_h, b, mask, dY, dh_T, dc_T)
    Y2, h2, c2, second = _run_persistent(x[split:], *_states(x, h0, c0, W_x, W_h, b, mask, split), W_x, W_h, b,
                                         mask[split:], dY[split:], dh_T, dc_T)
    Y1, _, _, first = _run_persistent(x[:split], h0, c0, W_x, W_h, b, mask[:split], dY[:split], second[1], second[2])
    assert_close(np.concatenate([Y1, Y2]), Y, F64_RTOL, "Y split")
    assert_close(h2, h, F64_RTOL, "h_T split")
    assert_close(c2, c, F64_RTOL, "c_T split")
    assert_close(np.concatenate([first[0], second[0]]), whole[0], F64_RTOL, "dx split")
    for i in (1, 2):
        assert_close(first[i], whole[i], F64_RTOL, f"{GRAD_NAMES[i]} split")
    for i in (3, 4, 5):
        assert_close(first[i] + second[i], whole[i], F64_RTOL, f"{GRAD_NAMES[i]} split")


def test_persistent_on_cpu_over_48_kb_of_shared_memory(persistent_emulator, monkeypatch):
    """A slice over 48 KB (float64, H = 60 on 2 blocks: 30 units, W_h slice 57.6 KB) launches only after the
    kernel's max_dynamic_shared_size_bytes is raised, as on the GPU; the emulator refuses it otherwise."""
    _on_cpu(monkeypatch, persistent_emulator, 2)
    monkeypatch.setattr(persistent, "LIMITS", emulated(2)._replace(max_threads=128))
    rng = np.random.default_rng(2)
    T, N, D, H = 2, 2, 2, 60
    assert persistent.persistent_plan(N, H, np.float64).forward.shared > 48 * 1024
    x, h0, c0, W_x, W_h, b, _ = _problem(rng, T, N, D, H, np.float64, None)
    dY, dh_T, dc_T = (nonzero(rng, s) for s in ((T, N, H), (N, H), (N, H)))
    Y, h_T, c_T, cache = sequence.sequence_forward(x, h0, c0, W_x, W_h, b)
    want = sequence.sequence_backward(dY, dh_T, dc_T, cache)
    got_Y, got_h, got_c, got = _run_persistent(x, h0, c0, W_x, W_h, b, None, dY, dh_T, dc_T)
    for name, g, w in zip(("Y", "h_T", "c_T") + GRAD_NAMES, (got_Y, got_h, got_c) + got, (Y, h_T, c_T) + want):
        assert_close(g, w, F64_RTOL, f"kernel 3 over 48 KB: {name}")


def _states(x, h0, c0, W_x, W_h, b, mask, split):
    _, h, c, _ = sequence.sequence_forward(x[:split], h0, c0, W_x, W_h, b, mask[:split])
    return h, c


BARRIERS = ("        if (t + 1 < steps) grid.sync();", "        if (t >= 0) grid.sync();")   # forward, backward


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The kernels with each grid barrier behind a switch, planted_away[i] = 1 skipping barrier i (one build)."""
    source = gpu.load_source(persistent.KERNEL_FILE)
    for i, barrier in enumerate(BARRIERS):
        assert source.count(barrier) == 1, barrier
        source = source.replace(barrier, f"        if (!planted_away[{i}]) {barrier.strip()}")
    source = 'extern "C" { int planted_away[2] = {0, 0}; }\n' + source
    return build_emulator(tmp_path_factory.mktemp("planted"), name_expressions=persistent.NAME_EXPRESSIONS,
                          source=source), source


@pytest.mark.parametrize("away", [0, 1], ids=["forward", "backward"])
def test_persistent_planted_missing_grid_barrier_is_caught(planted, monkeypatch, away):
    """Without its grid-wide barrier a block reads H_{t-1} (or dA_{t+1}) before the other blocks wrote it: the
    same comparison as above fails for some block order. With the barrier (the control) it passes."""
    emulator, source = planted
    _on_cpu(monkeypatch, emulator, 4)
    monkeypatch.setattr(persistent, "source", lambda: source)
    switches = (ctypes.c_int * 2).in_dll(emulator.lib, "planted_away")
    T, N, D, H = 4, 2, 2, 16
    wrong = []
    try:
        for switch in (0, 1):
            switches[away] = switch
            for seed in range(3):
                emulator.restart(seed)
                rng = np.random.default_rng(seed)
                x, h0, c0, W_x, W_h, b, _ = _problem(rng, T, N, D, H, np.float64, None)
                dY, dh_T, dc_T = (nonzero(rng, s) for s in ((T, N, H), (N, H), (N, H)))
                Y, h_T, c_T, cache = sequence.sequence_forward(x, h0, c0, W_x, W_h, b)
                want = (Y,) + sequence.sequence_backward(dY, dh_T, dc_T, cache)
                got_Y, _, _, got = _run_persistent(x, h0, c0, W_x, W_h, b, None, dY, dh_T, dc_T)
                wrong.append((switch, any(not np.allclose(g, w, rtol=F64_RTOL, atol=F64_RTOL)
                                          for g, w in zip((got_Y,) + got, want))))
    finally:
        switches[away] = 0
    assert not any(w for s, w in wrong if s == 0), "the control run, with every barrier, did not match"
    assert any(w for s, w in wrong if s == 1), "every result matched without the grid barrier"


# ------------------------------------------------------------------------------------------------ through npylstm.gpu
def test_persistent_through_the_gpu_backend_is_one_launch_each_way(persistent_emulator, monkeypatch):
    """gpu.sequence_forward / sequence_backward with kernel=3: the same results as sequence.py, and one launch of
    each kernel for the whole sequence (T = 6), the launches the emulator counted."""
    _on_cpu(monkeypatch, persistent_emulator, 3)
    rng = np.random.default_rng(8)
    T, N, D, H = 6, 5, 3, 13
    x, h0, c0, W_x, W_h, b, mask = _problem(rng, T, N, D, H, np.float64, "post")
    dY, dh_T, dc_T = (nonzero(rng, s) for s in ((T, N, H), (N, H), (N, H)))
    Y, h_T, c_T, cache = gpu.sequence_forward(x, h0, c0, W_x, W_h, b, mask=mask, kernel=3)
    got = (Y, h_T, c_T) + gpu.sequence_backward(dY, dh_T, dc_T, cache)
    Y_r, h_r, c_r, cache_r = sequence.sequence_forward(x, h0, c0, W_x, W_h, b, mask)
    want = (Y_r, h_r, c_r) + sequence.sequence_backward(dY, dh_T, dc_T, cache_r)
    for name, g, w in zip(("Y", "h_T", "c_T") + GRAD_NAMES, got, want):
        assert_close(g, w, F64_RTOL, f"kernel 3 through npylstm.gpu: {name}")
    assert {name: f.launches for name, f in persistent._functions.items()} == {
        (0, persistent._options(), f"npylstm::lstm_{d}_kernel3<double>"): 1 for d in ("forward", "backward")}


def test_persistent_kernel_3_refuses_clearly_and_none_falls_back(persistent_emulator, monkeypatch):
    """Where the slice does not fit (an emulated device with 4 KB of shared memory a block), kernel=3 is a
    ValueError naming the size and the limit, kernel=None picks version 1 or 2; a lone step never takes 3."""
    _on_cpu(monkeypatch, persistent_emulator, 2)
    monkeypatch.setattr(persistent, "LIMITS", persistent.LIMITS._replace(shared_optin=4096))
    rng = np.random.default_rng(1)
    x, h0, c0, W_x, W_h, b, _ = _problem(rng, 2, 3, 2, 24, np.float64, None)
    with pytest.raises(ValueError, match=r"sequence_forward: kernel 3 cannot run N = 3, H = 24, float64: .*over the "
                                         r"4096 bytes"):
        gpu.sequence_forward(x, h0, c0, W_x, W_h, b, kernel=3)
    assert gpu.choose_kernel(3, 24, np.float64, sequence=True) in gpu.STEP_VERSIONS
    monkeypatch.setattr(persistent, "LIMITS", emulated(2))
    assert gpu.choose_kernel(3, 24, np.float64, sequence=True) == 3       # fits: the sequence takes version 3
    assert gpu.choose_kernel(3, 24) in gpu.STEP_VERSIONS                  # a step never does
    with pytest.raises(ValueError, match="step_forward: kernel 3 runs whole sequences only"):
        gpu.step_forward(x[0], h0, c0, W_x, W_h, b, kernel=3)


@pytest.mark.parametrize("batch_first", [False, True])
def test_persistent_layer_on_the_emulated_gpu_equals_the_cpu_layer(persistent_emulator, monkeypatch, batch_first):
    """LSTM(device='cuda', kernel=3): two layers, stateful (state carried over two calls), masks, batch_first."""
    _on_cpu(monkeypatch, persistent_emulator, 2)
    monkeypatch.setattr(gpu, "to_device", lambda a, device: np.asarray(a))
    rng = np.random.default_rng(3)
    cpu = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True)
    dev = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=1, stateful=True,
               device="cuda", kernel=3)
    for call in range(2):
        x = rng.normal(size=(4, 6, 3))
        mask = rng.random((4, 6)) < 0.8
        (y1, (h1, c1)), (y2, (h2, c2)) = cpu(x, mask=mask), dev(x, mask=mask)
        dy, dstate = rng.normal(size=y1.shape), (rng.normal(size=h1.shape), rng.normal(size=c1.shape))
        (dx1, (dh1, dc1)), (dx2, (dh2, dc2)) = cpu.backward(dy, dstate), dev.backward(dy, dstate)
        for name, a, b in (("y", y2, y1), ("h", h2, h1), ("c", c2, c1), ("dx", dx2, dx1), ("dh", dh2, dh1),
                           ("dc", dc2, dc1)):
            assert_close(a, b, F64_RTOL, f"call {call}: {name}")
    for k in cpu.grads:
        assert_close(dev.grads[k], cpu.grads[k], F64_RTOL, f"grads[{k}]")
