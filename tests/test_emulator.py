"""The CPU emulator of the CUDA kernels (tests/emulator.py) sees the bugs it exists for.

Each test plants one: a kernel whose result depends on the order of its blocks, one that reads shared memory
before writing it, a real kernel launched with an output aliasing an input, over-limit launches, a cooperative
kernel missing its grid.sync(), a race between blocks for ThreadSanitizer. The planted kernels are small CUDA
kernels written here (PLANTED); the real kernels are npylstm's, launched by npylstm/gpu.py's launch code.
"""

import re

import numpy as np
import pytest

from emulator import (CO_RESIDENT_BLOCKS, OPTIN_SHARED_LIMIT, RACE_HELPERS, EmulatedKernel, LaunchRefused,
                      build_emulator, cupy_on_cpu, launch_on_cpu, rewrite_shared, thread_sanitizer_run)

PLANTED = r"""
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

namespace planted {

// Block b extends what block b - 1 wrote: right only if the blocks run one after another in order (a bug).
template <typename T>
__global__ void chain(T* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? T(1) : out[blockIdx.x - 1] + T(1);
}

// Thread 0 does not write s[0] unless write_all; every thread reads s[0] (a bug without write_all).
template <typename T>
__global__ void read_before_write(T* out, int write_all) {
    __shared__ T s[32];
    if (write_all || threadIdx.x > 0) s[threadIdx.x] = T(threadIdx.x + 1);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[0];
}

// The same with dynamic shared memory (launched with shared_mem = 32 * sizeof(T)).
template <typename T>
__global__ void dynamic_read_before_write(T* out, int write_all) {
    extern __shared__ __align__(16) unsigned char smem[];
    T* s = reinterpret_cast<T*>(smem);
    if (write_all || threadIdx.x > 0) s[threadIdx.x] = T(threadIdx.x + 1);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[0];
}

// Only block 0 fills s: every other block reads what its shared memory held at its start (a bug).
template <typename T>
__global__ void leftover(T* out) {
    __shared__ T s[32];
    if (blockIdx.x == 0) s[threadIdx.x] = T(5);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Every block writes its own id into s, passes a few barriers, reads it back: blocks live at once must not share s.
template <typename T>
__global__ void private_shared(T* out) {
    __shared__ T s[32];
    s[threadIdx.x] = T(blockIdx.x);
    for (int i = 0; i < 20; ++i) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % 32];
}

// b = a + 1 elementwise over n; a and b are launched as neighbouring views of one allocation.
template <typename T>
__global__ void add_one(const T* a, T* b, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) b[i] = a[i] + T(1);
}

// Reads a[-1] (a bug: before its view) or writes b[n] (a bug: past its view), both inside the allocation.
template <typename T>
__global__ void reads_before_view(const T* a, T* b, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) b[i] = a[i - 1];
}
template <typename T>
__global__ void writes_past_view(const T* a, T* b, int n) {
    for (int i = threadIdx.x; i <= n; i += blockDim.x) b[i] = a[i < n ? i : 0];
}

template <typename T>
__global__ void __launch_bounds__(64) bounded(T* out) {
    out[threadIdx.x] = T(1);
}

template <typename T>
__global__ void noop(T* out) {
    if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = T(1);
}

// 7000 elements: 28 000 bytes in float, 56 000 in double (over 48 KB).
template <typename T>
__global__ void big_static(T* out) {
    __shared__ T s[7000];
    s[threadIdx.x] = T(1);
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

// out[b] = sum of all of x, every block: each block sums its slice of x into partial[b] (later blocks are slower),
// then, after grid.sync(), sums the partials. Without the grid barrier (unsynced) it reads partials not yet written.
template <typename T, bool SYNC>
__device__ void grid_sum_body(const T* x, T* partial, T* out) {
    cg::grid_group grid = cg::this_grid();
    cg::thread_block block = cg::this_thread_block();
    __shared__ T s[64];
    volatile int spin = 0;
    for (int i = 0; i < 100000 * (int)blockIdx.x; ++i) spin = spin + 1;
    s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    block.sync();
    if (threadIdx.x == 0) {
        T acc = T(0);
        for (unsigned k = 0; k < blockDim.x; ++k) acc += s[k];
        partial[blockIdx.x] = acc;
    }
    if (SYNC) grid.sync();
    if (threadIdx.x == 0) {
        T total = T(0);
        for (unsigned b = 0; b < gridDim.x; ++b) total += partial[b];
        out[blockIdx.x] = total;
    }
}
template <typename T>
__global__ void grid_sum(const T* x, T* partial, T* out) { grid_sum_body<T, true>(x, partial, out); }
template <typename T>
__global__ void grid_sum_unsynced(const T* x, T* partial, T* out) { grid_sum_body<T, false>(x, partial, out); }

// Every block's thread 0 adds one to out[0]: a race between blocks (a bug).
template <typename T>
__global__ void racy_blocks(T* out) {
    if (threadIdx.x == 0) out[0] += T(1);
}

}  // namespace planted
"""
F64_RTOL = 1e-10  # float64, the kernels' sums in another order than NumPy's: a few ulp of O(1) values, far below this
KERNELS = ("chain", "read_before_write", "dynamic_read_before_write", "leftover", "private_shared", "add_one",
           "reads_before_view", "writes_past_view", "bounded", "noop", "big_static", "grid_sum", "grid_sum_unsynced", "racy_blocks")
NAMES = tuple(f"planted::{k}<{t}>" for k in KERNELS for t in ("float", "double"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_emulator(tmp_path_factory.mktemp("planted"), source=PLANTED, name_expressions=NAMES)


@pytest.fixture
def cupy(planted):
    """cupy_on_cpu over the planted kernels; the emulator's settings come back to their defaults afterwards."""
    saved = planted.seed, planted.live_blocks, planted.co_resident_blocks
    yield cupy_on_cpu([planted])
    planted.seed, planted.live_blocks, planted.co_resident_blocks = saved


def kernel(cupy, name, dtype=np.float64, cooperative=False):
    module = cupy.RawModule(code=PLANTED, name_expressions=NAMES, enable_cooperative_groups=cooperative)
    return module.get_function(f"planted::{name}<{'float' if dtype == np.float32 else 'double'}>")


# ------------------------------------------------------------------------------------------------ a. block order
def test_a_result_that_depends_on_block_order_fails_for_some_seed_and_replays(cupy, planted):
    blocks = 16
    f = kernel(cupy, "chain")
    in_order = np.arange(1, blocks + 1, dtype=np.float64)   # what blocks run one after another would give
    results = {}
    for seed in range(4):
        planted.restart(seed)
        out = np.full(blocks, np.nan)
        f((blocks,), (32,), (out,))
        results[seed] = out
    wrong = [s for s, out in results.items() if not np.array_equal(out, in_order)]
    assert wrong, f"chain gave the in-order result for every seed: {results}"
    # replay: one block live at a time, the recorded order decides the result, and a restart repeats it
    planted.live_blocks = 1
    for seed in wrong:
        planted.restart(seed)
        out = np.full(blocks, np.nan)
        f((blocks,), (32,), (out,))
        order = planted.log[-1].order
        assert sorted(order) == list(range(blocks))
        want = np.full(blocks, np.nan)
        for b in order:                                       # the chain, run in the recorded order
            want[b] = 1.0 if b == 0 else want[b - 1] + 1.0
        np.testing.assert_array_equal(out, want, err_msg=f"seed {seed}, order {order}")
        planted.restart(seed)
        again = np.full(blocks, np.nan)
        f((blocks,), (32,), (again,))
        assert planted.log[-1].order == order
        np.testing.assert_array_equal(again, out)


def test_a_block_orders_differ_between_seeds_and_launches(cupy, planted):
    planted.restart(0)
    first, second = planted.block_order(50), planted.block_order(50)
    planted.launches += 1
    third = planted.block_order(50)
    planted.restart(1)
    other = planted.block_order(50)
    assert np.array_equal(first, second) and not np.array_equal(first, third) and not np.array_equal(first, other)
    assert sorted(third) == list(range(50))


# ------------------------------------------------------------------------------------------------ b. shared memory
@pytest.mark.parametrize("name,shared_mem", [("read_before_write", 0), ("dynamic_read_before_write", 32 * 8)])
def test_b_reading_shared_memory_before_writing_it_gives_nan(cupy, name, shared_mem):
    f = kernel(cupy, name)
    out = np.zeros(3 * 32)
    f((3,), (32,), (out, np.int32(0)), shared_mem=shared_mem)
    assert np.isnan(out).all(), out
    f((3,), (32,), (out, np.int32(1)), shared_mem=shared_mem)                 # the fixed kernel
    np.testing.assert_array_equal(out, np.ones(3 * 32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("live", [1, 4])
def test_b_shared_memory_is_poisoned_at_every_block_start(cupy, planted, dtype, live):
    """A block never sees what an earlier block (on the same storage) left in shared memory."""
    planted.live_blocks = live
    out = np.zeros((6, 32), dtype)
    kernel(cupy, "leftover", dtype)((6,), (32,), (out,))
    assert (out[0] == 5).all() and np.isnan(out[1:]).all(), out


def test_b_blocks_live_at_once_each_have_their_own_shared_memory(cupy, planted):
    planted.live_blocks = 4
    out = np.full((8, 32), np.nan)
    kernel(cupy, "private_shared")((8,), (32,), (out,))
    np.testing.assert_array_equal(out, np.repeat(np.arange(8.0)[:, None], 32, axis=1))


def test_b_rewrite_shared_binds_each_declaration_form_and_refuses_others():
    src = ("    __shared__ T Xs[TN][TK];\n"
           "  __shared__ volatile float flag;\n"
           "__shared__ __align__(16) unsigned char raw[64];\n"
           "    extern __shared__ double dyn[];\n"
           "    // __shared__ in a comment stays\n")
    out = rewrite_shared(src).splitlines()
    assert out[0] == "    auto& Xs = *static_cast<T(*)[TN][TK]>(::emu::shared_static(0, sizeof(T[TN][TK]), alignof(T)));"
    assert out[1] == ("  auto& flag = *static_cast<volatile float*>(::emu::shared_static(1, sizeof(volatile float), "
                      "alignof(volatile float)));")
    assert "sizeof(unsigned char[64]), (16 > alignof(unsigned char) ? 16 : alignof(unsigned char))" in out[2]
    assert out[3] == "    double* const dyn = static_cast<double*>(::emu::shared_dynamic());"
    assert out[4] == src.splitlines()[4]
    with pytest.raises(ValueError, match="one declarator per statement"):
        rewrite_shared("    __shared__ float a[4], b[4];\n")


# ------------------------------------------------------------------------------------------------ c. aliasing
def test_c_views_of_one_allocation_are_one_memory(cupy):
    """Hs[1] = Hs[0] + 1 through two views of one (3, 5) array: the kernel sees one allocation, as on a GPU."""
    Hs = np.full((3, 5), np.nan)
    Hs[0] = np.arange(5.0)
    kernel(cupy, "add_one")((1,), (32,), (Hs[0], Hs[1], np.int32(5)))
    np.testing.assert_array_equal(Hs[1], np.arange(5.0) + 1)
    assert np.isnan(Hs[2]).all()
    same = np.arange(5.0)                                         # in place: a and b the same array
    kernel(cupy, "add_one")((1,), (32,), (same, same, np.int32(5)))
    np.testing.assert_array_equal(same, np.arange(5.0) + 1)


def test_c_out_of_view_reads_and_writes_inside_an_allocation_show(cupy):
    Hs = np.arange(15.0).reshape(3, 5)
    before = Hs.copy()
    kernel(cupy, "reads_before_view")((1,), (32,), (Hs[1], Hs[2], np.int32(5)))   # a[-1] = Hs[0, 4], no argument's
    assert np.isnan(Hs[2, 0]) and np.array_equal(Hs[2, 1:], before[1, :4])        # bytes: poisoned
    Hs = before.copy()
    with pytest.raises(LaunchRefused, match="outside every argument's view"):
        kernel(cupy, "writes_past_view")((1,), (32,), (Hs[0], Hs[1], np.int32(5)))  # b[5] = Hs[2, 0]
    np.testing.assert_array_equal(Hs, before)                                        # a refused launch changes nothing
    with pytest.raises(LaunchRefused, match="guard zone"):
        kernel(cupy, "writes_past_view")((1,), (32,), (Hs[1], Hs[2], np.int32(5)))  # b[5]: past the allocation


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    from npylstm import gpu
    return build_emulator(tmp_path_factory.mktemp("lstm"), gpu.KERNEL_FILE, gpu.NAME_EXPRESSIONS)


@pytest.fixture
def lstm_on_cpu(lstm, monkeypatch):
    from npylstm import gpu
    saved = lstm.seed, lstm.live_blocks
    yield launch_on_cpu(monkeypatch, lstm, gpu)
    lstm.seed, lstm.live_blocks = saved


def kernel_parameters(kernel_file, kernel):
    """The parameter names of `kernel` in kernels/`kernel_file`, in order."""
    from npylstm import gpu
    m = re.search(rf"\b{kernel}\s*\(([^)]*)\)", (gpu.kernel_dir() / kernel_file).read_text())
    return [re.findall(r"\w+", p)[-1] for p in m.group(1).split(",")]


def test_c_real_kernels_version_2_backward_with_dH_prev_aliasing_dH_is_wrong(lstm_on_cpu, lstm, monkeypatch):
    """lstm_backward_kernel2 reads all of dH in every column tile while other tiles write dH_prev: launched with
    dH_prev = dH (the launch code's ping-pong undone), some block reads what another already overwrote."""
    from npylstm import gpu
    from npylstm import sequence as numpy_backend
    names = kernel_parameters(gpu.KERNEL_FILE, "lstm_backward_kernel2")
    i_dH, i_dH_prev = names.index("dH"), names.index("dH_prev")
    launch = EmulatedKernel.__call__

    def aliased(self, grid, block, args, **kw):
        if self.name.startswith("npylstm::lstm_backward_kernel2<"):
            args = list(args)
            args[i_dH_prev] = args[i_dH]
        return launch(self, grid, block, args, **kw)

    rng = np.random.default_rng(3)
    T, N, D, H = 2, 9, 3, 40                                       # two column tiles of TJ = 32
    args = [rng.normal(size=(T, N, D)), rng.uniform(-1, 1, (N, H)), rng.normal(size=(N, H)),
            rng.normal(0, 0.3, (D, 4 * H)), rng.normal(0, 0.3, (H, 4 * H)), rng.normal(size=4 * H)]
    dY, dh, dc = rng.normal(size=(T, N, H)), rng.normal(size=(N, H)), rng.normal(size=(N, H))
    want = numpy_backend.sequence_backward(dY, dh, dc, numpy_backend.sequence_forward(*args)[3])[1]
    lstm.live_blocks = 1                                           # any block order: one tile writes before the other reads
    cache = gpu.sequence_forward(*args, kernel=2)[3]
    np.testing.assert_allclose(gpu.sequence_backward(dY, dh, dc, cache)[1], want, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(EmulatedKernel, "__call__", aliased)
    got = gpu.sequence_backward(dY, dh, dc, cache)[1]
    err = np.abs(got - want).max()
    assert not err <= 1e-3, f"dH_prev aliasing dH gave the right dh0 (max error {err:.2e})"   # NaN is wrong too


@pytest.mark.parametrize("version", [1, 2])
def test_real_kernels_masked_sequence_with_two_tiles_each_way_matches_numpy(lstm_on_cpu, version):
    """One fixed case the drawn tests may miss: N = 9 and H = 40 cut a second row and column tile, rows masked at
    every step and real ones beside them, dY on every step (a masked row passes dH_t = dH + dY through)."""
    from npylstm import gpu
    from npylstm import sequence as numpy_backend
    rng = np.random.default_rng(8)
    T, N, D, H = 3, 9, 5, 40
    args = [rng.normal(size=(T, N, D)), rng.uniform(-1, 1, (N, H)), rng.normal(size=(N, H)),
            rng.normal(0, 0.3, (D, 4 * H)), rng.normal(0, 0.3, (H, 4 * H)), rng.normal(size=4 * H)]
    mask = rng.random((T, N)) < 0.6
    assert mask.any(axis=1).all() and (~mask).any(axis=1).all()     # each step has real and masked rows
    dY, dh, dc = rng.normal(size=(T, N, H)), rng.normal(size=(N, H)), rng.normal(size=(N, H))
    Y, h_T, c_T, cache = gpu.sequence_forward(*args, mask=mask, kernel=version)
    Y_r, h_r, c_r, cache_r = numpy_backend.sequence_forward(*args, mask=mask)
    got = [Y, h_T, c_T, *gpu.sequence_backward(dY, dh, dc, cache)]
    want = [Y_r, h_r, c_r, *numpy_backend.sequence_backward(dY, dh, dc, cache_r)]
    for name, g, w in zip(["Y", "h_T", "c_T", "dx", "dh0", "dc0", "dW_x", "dW_h", "db"], got, want):
        np.testing.assert_allclose(g, w, rtol=F64_RTOL, atol=F64_RTOL, err_msg=name)


@pytest.mark.parametrize("version", [1, 2])
def test_real_kernels_masked_step_without_dY_equals_dY_zero(lstm_on_cpu, version):
    """backward_step takes dY = None (dH_t = dH). On masked rows the kernels then pass dH through alone, a branch
    no sequence call takes (they always pass dY): held here to dY = 0, bit for bit, on a step that cuts a second
    row and column tile."""
    from npylstm import gpu
    rng = np.random.default_rng(9)
    N, D, H = 9, 5, 40
    args = [rng.normal(size=(1, N, D)), rng.uniform(-1, 1, (N, H)), rng.normal(size=(N, H)),
            rng.normal(0, 0.3, (D, 4 * H)), rng.normal(0, 0.3, (H, 4 * H)), rng.normal(size=4 * H)]
    mask = np.arange(N)[None, :] % 3 == 0                             # rows 0, 3, 6 real, the others masked
    cache = gpu.sequence_forward(*args, mask=mask, kernel=version)[3]
    dH, dC = rng.normal(size=(N, H)), rng.normal(size=(N, H))
    results = []
    for dY in (None, np.zeros((N, H))):
        step, finish = gpu.backward_step(version, cache.W_h, N, masked=True)
        dA, dC_prev, dH_prev = np.empty((N, 4 * H)), np.empty((N, H)), np.empty((N, H))
        step(dH, dY, dC, cache.mask[0], cache.gates[0], cache.tanh_C[0], cache.Cs[0], dA, dC_prev, dH_prev)
        results.append((dA, dC_prev, finish(dH_prev)))
    for name, without, zero in zip(("dA", "dC_prev", "dH_prev"), *results):
        np.testing.assert_array_equal(without, zero, err_msg=name)


def test_real_kernels_give_the_same_bits_in_any_block_order(lstm_on_cpu, lstm):
    """Version 2's blocks are independent: seeds and live-block counts change nothing, bit for bit."""
    from npylstm import gpu
    rng = np.random.default_rng(5)
    T, N, D, H = 2, 17, 5, 40
    args = [rng.normal(size=(T, N, D)), rng.uniform(-1, 1, (N, H)), rng.normal(size=(N, H)),
            rng.normal(0, 0.3, (D, 4 * H)), rng.normal(0, 0.3, (H, 4 * H)), rng.normal(size=4 * H)]
    dY, dh, dc = rng.normal(size=(T, N, H)), rng.normal(size=(N, H)), rng.normal(size=(N, H))
    runs, orders = [], []
    for seed, live in ((0, 1), (1, 4), (2, 3)):
        lstm.restart(seed)
        lstm.live_blocks = live
        Y, h_T, c_T, cache = gpu.sequence_forward(*args, kernel=2)
        runs.append([Y, h_T, c_T, *gpu.sequence_backward(dY, dh, dc, cache)])
        orders.append([r.order for r in lstm.log])
    assert orders[0] != orders[1] != orders[2], "the runs did not start their blocks in different orders"
    for other in runs[1:]:
        for g, w in zip(other, runs[0]):
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------------ d. limits
@pytest.mark.parametrize("grid,block,what", [
    ((1,), (1025,), "1025 threads, over sm_90's 1024 per block"),
    ((1,), (512, 4), "2048 threads"),
    ((1,), (1, 1, 65), r"blockDim.z = 65 is over sm_90's 64"),
    ((1, 65536), (32,), r"gridDim.y = 65536 is over sm_90's 65535"),
    ((1, 1, 65536), (32,), r"gridDim.z = 65536"),
    ((2**31,), (32,), r"gridDim.x = 2147483648 is over sm_90's 2147483647"),
    ((0,), (32,), "at least 1"),
])
def test_d_launches_over_sm90_limits_are_refused(cupy, grid, block, what):
    out = np.zeros(1)
    with pytest.raises(LaunchRefused, match=what):
        kernel(cupy, "noop")(grid, block, (out,))
    assert out[0] == 0


def test_d_limits_at_the_edge_run(cupy):
    out = np.zeros(1)
    kernel(cupy, "noop")((1,), (1024,), (out,))
    kernel(cupy, "noop")((1,), (16, 1, 64), (out,))
    assert out[0] == 1


def test_d_blocks_over_the_kernels_launch_bounds_are_refused(cupy):
    f, out = kernel(cupy, "bounded"), np.zeros(128)
    f((1,), (64,), (out,))
    assert (out[:64] == 1).all()
    with pytest.raises(LaunchRefused, match=r"block \(128, 1, 1\) is 128 threads, over the kernel's __launch_bounds__ \(64\)"):
        f((1,), (128,), (out,))
    assert (out[64:] == 0).all()


def test_d_dynamic_shared_memory_over_48_kb_needs_the_opt_in(cupy):
    f = kernel(cupy, "noop", np.float32)
    out = np.zeros(1, np.float32)
    f((1,), (32,), (out,), shared_mem=48 * 1024)
    with pytest.raises(LaunchRefused, match="max_dynamic_shared_size_bytes"):
        f((1,), (32,), (out,), shared_mem=48 * 1024 + 1)
    with pytest.raises(LaunchRefused, match=f"at most {OPTIN_SHARED_LIMIT}"):
        f.max_dynamic_shared_size_bytes = OPTIN_SHARED_LIMIT + 1
    f.max_dynamic_shared_size_bytes = OPTIN_SHARED_LIMIT
    f((1,), (32,), (out,), shared_mem=OPTIN_SHARED_LIMIT)
    with pytest.raises(LaunchRefused, match="over the kernel's max_dynamic_shared_size_bytes"):
        f((1,), (32,), (out,), shared_mem=OPTIN_SHARED_LIMIT + 1)


def test_d_static_shared_memory_over_48_kb_is_refused(cupy, planted):
    f32, f64 = kernel(cupy, "big_static", np.float32), kernel(cupy, "big_static", np.float64)
    out = np.zeros(32, np.float32)
    f32((1,), (32,), (out,))
    assert f32.shared_size_bytes == 28000 and (out == 1).all()
    out64 = np.zeros(32)
    with pytest.raises(LaunchRefused, match="static shared memory is 56000 bytes per block, over sm_90's 49152"):
        f64((1,), (32,), (out64,))
    assert (out64 == 0).all()
    with pytest.raises(LaunchRefused, match=r"max_dynamic_shared_size_bytes \(21152\)"):    # 48 KB - 28000 static
        f32((1,), (32,), (out,), shared_mem=30000)
    fresh = kernel(cupy_on_cpu([planted]), "big_static", np.float32)   # its static size is not known before it runs
    with pytest.raises(LaunchRefused, match=r"static \(28000 B\) \+ dynamic \(30000 B\)"):
        fresh((1,), (32,), (out,), shared_mem=30000)


def test_d_wrong_arguments_are_refused(cupy):
    f = kernel(cupy, "noop")
    with pytest.raises(LaunchRefused, match="argument 0 is float32, the kernel takes float64"):
        f((1,), (32,), (np.zeros(1, np.float32),))
    with pytest.raises(LaunchRefused, match="not C-contiguous"):
        f((1,), (32,), (np.zeros((2, 2)).T,))
    with pytest.raises(LaunchRefused, match="code 2000"):
        f((1,), (32,), (np.int32(1),))
    with pytest.raises(LaunchRefused, match="argument 0 is a int"):
        f((1,), (32,), (1,))


# ------------------------------------------------------------------------------------------------ e. cooperative
def _grid_sum(cupy, name, blocks=4, threads=32, cooperative=True):
    rng = np.random.default_rng(0)
    x = rng.integers(-50, 50, blocks * threads).astype(np.float64)        # integers: sums are exact in any order
    partial, out = np.full(blocks, np.nan), np.full(blocks, np.nan)
    kernel(cupy, name, cooperative=cooperative)((blocks,), (threads,), (x, partial, out))
    return out, x.sum()


def test_e_cooperative_kernel_with_grid_sync_is_right(cupy):
    out, want = _grid_sum(cupy, "grid_sum")
    np.testing.assert_array_equal(out, np.full(4, want))


def test_e_cooperative_kernel_missing_its_grid_sync_is_wrong(cupy, planted):
    wrong = 0
    for seed in range(3):
        planted.restart(seed)
        out, want = _grid_sum(cupy, "grid_sum_unsynced")
        wrong += not np.array_equal(out, np.full(4, want))
    assert wrong, "every block saw every partial sum without grid.sync()"


def test_e_cooperative_grid_over_the_co_resident_limit_is_refused(cupy, planted):
    assert planted.co_resident_blocks == CO_RESIDENT_BLOCKS
    planted.co_resident_blocks = 3
    with pytest.raises(LaunchRefused, match="4 blocks cannot all be resident at once"):
        _grid_sum(cupy, "grid_sum")
    with pytest.raises(LaunchRefused, match="over the emulator's 4096 threads"):
        planted.co_resident_blocks = CO_RESIDENT_BLOCKS
        _grid_sum(cupy, "grid_sum", blocks=65, threads=64)


def test_e_grid_sync_in_a_normal_launch_is_refused(cupy):
    with pytest.raises(LaunchRefused, match="not cooperative"):
        _grid_sum(cupy, "grid_sum", cooperative=False)


# ------------------------------------------------------------------------------------------------ races between blocks
RACY_DRIVER = RACE_HELPERS + r"""
int main() {
    std::vector<double> out(1, 0.0);
    const int rc = run(&planted::racy_blocks<double>, {8, 1, 1}, {32, 1, 1}, out.data());
    std::printf("launch codes: %d\n", rc);
    return rc;
}
"""


def test_thread_sanitizer_sees_a_race_between_blocks(tmp_path):
    r = thread_sanitizer_run(tmp_path, None, ["planted::racy_blocks<double>"], RACY_DRIVER, source=PLANTED)
    assert "ThreadSanitizer: data race" in r.stderr and "racy_blocks" in r.stderr, (r.returncode, r.stderr[-2000:])
