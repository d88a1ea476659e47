"""A CPU emulator of the CUDA kernels: the real kernel source, compiled by g++, launched by the real launch code.

The loader's spliced source (npylstm.gpu.load_source) is compiled by g++ with a shim that makes it C++: one OS
thread per CUDA thread (a pool kept between launches), __syncthreads() a barrier per block. The launch code of
npylstm/gpu.py and gru_gpu.py runs unchanged against it, with NumPy arrays standing for CuPy's: `cupy_on_cpu()`
stands in for the cupy module (RawModule, RawKernel, the device query), `launch_on_cpu()` plugs it into a backend.

What a launch does, and what that lets the tests see:
- Blocks run concurrently, LIVE_BLOCKS at a time, started in a seeded random order (the order of launch number k
  is a function of (seed, k), recorded in Emulator.log; NPYLSTM_EMU_SEED picks the seed): a result that depends
  on the block order, or a race between blocks, shows as a wrong result for some seed, and to ThreadSanitizer
  (run_under_thread_sanitizer: nothing in the emulator orders one block's memory accesses after another's).
- Shared memory starts poisoned (all-ones bytes: NaN in float and double) at every block start, static
  `__shared__` and `extern __shared__` alike, and every live block has its own: the source's `__shared__`
  declarations are rewritten before compiling (rewrite_shared) into references to a per-block arena.
- Arguments that are the same allocation on the host (one array passed twice, views such as Hs[t] and Hs[t + 1]
  of one array) are the same memory in the kernel: each allocation is copied once, between guard zones, and each
  argument points at its offset. The bytes of the allocation outside every argument's view are poisoned too: a
  read there shows as NaN, and a write there (or into a guard zone) fails the launch.
- sm_90's launch limits are checked (block and grid sizes, 48 KB of static shared memory, dynamic shared memory
  beyond 48 KB only after `kernel.max_dynamic_shared_size_bytes = n`, up to 227 KB), as cuLaunchKernel would.
- A cooperative launch (`RawModule(..., enable_cooperative_groups=True)`, as in CuPy) runs every block of the
  grid at once, and `cooperative_groups::this_grid().sync()` is a barrier across all of them; a grid larger
  than the co-resident limit is refused, as the GPU refuses it.

What it cannot see: warp-level behaviour (no warps: no shuffles, votes or warp-synchronous code, and
__syncwarp is absent), the memory model (OS threads see each other's writes through the CPU's coherent caches,
with no L1 staleness and no __threadfence needed), -ftz and FMA contraction numerics, register or
shared-memory bank pressure, occupancy, and anything about speed.
"""

import collections
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import types
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from numpy.lib.array_utils import byte_bounds

# sm_90 (H100, H200) launch limits, as cuLaunchKernel checks them
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
STATIC_SHARED_LIMIT = 48 * 1024     # static __shared__ per block (ptxas refuses more)
DEFAULT_SHARED_LIMIT = 48 * 1024    # static + dynamic per block without the opt-in attribute
OPTIN_SHARED_LIMIT = 232448         # static + dynamic per block with max_dynamic_shared_size_bytes set (227 KB)

LIVE_BLOCKS = 3                     # blocks running at once in a normal launch (each block is its threads' worth of OS threads)
CO_RESIDENT_BLOCKS = 132            # a cooperative grid larger than this is refused (one block per SM of an H200)
MAX_OS_THREADS = 4096               # the emulator's own bound on the threads of one cooperative launch
GUARD = 64                          # elements of guard zone on each side of every allocation
GUARD_VALUE = -7.77e7               # what the guard zones hold (as float64 bytes); anything else was written out of bounds
POISON_BYTE = 0xFF                  # shared memory and the unviewed bytes of an allocation: NaN in float and double
ALIGN = 256                         # allocations start on 256 bytes, as cudaMalloc's do


def need_tool(name):
    """The path of `name`; in CI (env CI set) a missing tool is a failure, elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found: CI must compile the kernel header for the CPU")
        pytest.skip(f"{name} not found")
    return path


# -------------------------------------------------------------------------------------------------------------- shim
EMULATOR = r"""
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

namespace emu {
constexpr long long STATIC_SHARED_LIMIT = @STATIC_SHARED_LIMIT@;
constexpr long long DEFAULT_SHARED_LIMIT = @DEFAULT_SHARED_LIMIT@;
constexpr long long OPTIN_SHARED_LIMIT = @OPTIN_SHARED_LIMIT@;
constexpr int POISON = @POISON_BYTE@;

// A barrier of its own lock and condition: std::barrier waits through a table of locks shared by every barrier of
// the process, which would order the threads of different blocks for ThreadSanitizer and hide their races.
class Barrier {
  public:
    explicit Barrier(long long n) : count_(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m_);
        const long long phase = phase_;
        if (++waiting_ >= count_) release();
        else cv_.wait(lock, [&] { return phase_ != phase; });
    }
    void arrive_and_drop() {   // leave for good: the current and later phases wait for one thread fewer
        std::unique_lock<std::mutex> lock(m_);
        if (--count_ > 0 && waiting_ >= count_) release();
    }

  private:
    void release() { waiting_ = 0; ++phase_; cv_.notify_all(); }
    std::mutex m_;
    std::condition_variable cv_;
    long long count_, waiting_ = 0, phase_ = 0;
};

using Bytes = std::unique_ptr<std::max_align_t[]>;
inline Bytes bytes(long long n) { return Bytes(new std::max_align_t[(n + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t) + 1]); }

struct Block {                                        // one live block: its barrier and its shared memory
    Barrier bar;
    std::mutex m;
    long long id = -1;                                // the linear block id it runs now; -1: none left
    std::vector<std::pair<int, unsigned char*>> sites;   // the static __shared__ declarations met in this block
    Bytes arena = bytes(STATIC_SHARED_LIMIT);         // their storage
    std::vector<Bytes> spill;                         // past the limit (the launch then fails, see launch())
    long long used = 0;
    Bytes dynamic;                                    // extern __shared__: the launch's shared_mem bytes
    explicit Block(int threads, long long dyn) : bar(threads), dynamic(bytes(dyn)) {}
};

struct Launch {
    bool cooperative = false;
    Barrier* grid = nullptr;
    std::atomic<long long> static_bytes{0};
    std::atomic<int> grid_sync_outside{0};
};
static Launch* now = nullptr;
static thread_local Block* block = nullptr;

// A static __shared__ declaration (rewritten by tests/emulator.py): the block's storage for declaration `site`,
// poisoned when the block first meets it. Every thread of the block gets the same address.
inline void* shared_static(int site, long long size, long long align) {
    Block& b = *block;
    std::lock_guard<std::mutex> lock(b.m);
    for (auto& s : b.sites) if (s.first == site) return s.second;
    const long long off = (b.used + align - 1) / align * align;
    unsigned char* p;
    if (off + size <= STATIC_SHARED_LIMIT) {
        p = reinterpret_cast<unsigned char*>(b.arena.get()) + off;
    } else {
        b.spill.push_back(bytes(size));
        p = reinterpret_cast<unsigned char*>(b.spill.back().get());
    }
    b.used = off + size;
    long long seen = now->static_bytes.load(std::memory_order_relaxed);   // relaxed: no ordering between blocks
    while (seen < b.used && !now->static_bytes.compare_exchange_weak(seen, b.used, std::memory_order_relaxed)) {}
    std::memset(p, POISON, size);
    b.sites.emplace_back(site, p);
    return p;
}

inline void* shared_dynamic() { return block->dynamic.get(); }

inline void grid_sync() {
    if (!now->cooperative) {   // the launch fails (code 3003)
        now->grid_sync_outside.store(1, std::memory_order_relaxed);
        return;
    }
    now->grid->arrive_and_wait();
}

// The OS threads that play CUDA threads, kept between launches (creating hundreds of threads per launch would cost
// more than most kernels): run(n, f) calls f(0) .. f(n - 1) on n of them at once and returns when all are done.
// Each worker waits on a lock of its own, so nothing orders one worker's task after another's (ThreadSanitizer).
class Workers {
  public:
    void run(int n, const std::function<void(int)>& f) {
        std::lock_guard<std::mutex> one_launch_at_a_time(run_);
        while ((int)workers_.size() < n) {
            workers_.push_back(std::make_unique<Worker>());
            std::thread(&Workers::loop, this, workers_.back().get(), (int)workers_.size() - 1).detach();
        }
        task_ = &f;
        remaining_.store(n, std::memory_order_relaxed);
        for (int i = 0; i < n; ++i) {
            std::lock_guard<std::mutex> lock(workers_[i]->m);
            ++workers_[i]->generation;
            workers_[i]->wake.notify_one();
        }
        std::unique_lock<std::mutex> lock(done_m_);
        done_.wait(lock, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
    }

  private:
    struct Worker {
        std::mutex m;
        std::condition_variable wake;
        long long generation = 0;
    };
    void loop(Worker* w, int i) {
        for (long long seen = 0;;) {
            {
                std::unique_lock<std::mutex> lock(w->m);
                w->wake.wait(lock, [&] { return w->generation != seen; });
                seen = w->generation;
            }
            (*task_)(i);
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(done_m_);
                done_.notify_all();
            }
        }
    }
    std::mutex run_, done_m_;
    std::condition_variable done_;
    std::vector<std::unique_ptr<Worker>> workers_;
    const std::function<void(int)>* task_ = nullptr;
    std::atomic<int> remaining_{0};
};
inline Workers& workers() { static Workers* w = new Workers; return *w; }   // never destroyed: its threads never end
}  // namespace emu

static inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

namespace cooperative_groups {
struct thread_block {
    void sync() const { __syncthreads(); }
    unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
    unsigned thread_rank() const { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
    dim3 group_index() const { return blockIdx; }
    dim3 thread_index() const { return threadIdx; }
    dim3 group_dim() const { return blockDim; }
};
struct grid_group {
    void sync() const { emu::grid_sync(); }
    bool is_valid() const { return emu::now->cooperative; }
    unsigned long long num_blocks() const { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z; }
    unsigned long long block_rank() const { return ((unsigned long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x; }
    unsigned long long size() const { return num_blocks() * thread_block().size(); }
    unsigned long long thread_rank() const { return block_rank() * thread_block().size() + thread_block().thread_rank(); }
    dim3 group_dim() const { return gridDim; }
};
inline grid_group this_grid() { return {}; }
inline thread_block this_thread_block() { return {}; }
inline void sync(const grid_group& g) { g.sync(); }
inline void sync(const thread_block& b) { b.sync(); }
}  // namespace cooperative_groups

#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

#include "spliced.cu"

template <typename A>
constexpr char kind_of() {
    if constexpr (std::is_pointer_v<A>) return 'p';
    else if constexpr (std::is_integral_v<A>) return sizeof(A) == 8 ? 'l' : 'i';
    else return sizeof(A) == 8 ? 'd' : 'f';
}

template <typename... Args, std::size_t... I>
static void invoke(void (*k)(Args...), void** params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<Args>*>(params[I])...);
}

// cfg: grid x y z, block x y z, dynamic shared bytes, live blocks, cooperative, max_dynamic_shared_size_bytes (-1: unset).
// order: the linear block ids in the order blocks start. report[0] <- static shared bytes per block.
template <typename... Args>
static int launch(void (*k)(Args...), const long long* cfg, const long long* order, void** params,
                  const char* kinds, int nparams, long long* report) {
    if (nparams != (int)sizeof...(Args)) return 1000 + (int)sizeof...(Args);       // wrong argument count
    const char expected[] = {kind_of<Args>()..., 0};
    for (int i = 0; i < nparams; ++i) if (kinds[i] != expected[i]) return 2000 + i;  // wrong kind at i
    gridDim = {(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
    blockDim = {(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
    const long long nblocks = cfg[0] * cfg[1] * cfg[2], dyn = cfg[6], optin = cfg[9];
    const int threads = (int)(cfg[3] * cfg[4] * cfg[5]);
    const bool coop = cfg[8] != 0;
    const long long live = coop ? nblocks : std::max(1LL, std::min(nblocks, cfg[7]));
    emu::Launch L;
    L.cooperative = coop;
    emu::Barrier grid(coop ? live * threads : 1);
    L.grid = &grid;
    emu::now = &L;
    std::vector<std::unique_ptr<emu::Block>> blocks;
    for (long long s = 0; s < live; ++s) blocks.push_back(std::make_unique<emu::Block>(threads, dyn));
    std::atomic<long long> next{0};
    emu::workers().run((int)(live * threads), [&](int w) {   // one OS thread per CUDA thread of each live block
        const long long s = w / threads;
        const int t = w % threads;
        emu::Block& b = *blocks[s];
        emu::block = &b;
        threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        for (int round = 0;; ++round) {
            if (t == 0) {   // the block's first thread takes the next block id and resets its shared memory
                // each live block starts with one of the first `live` blocks of the order, then takes the next one
                // free (relaxed: handing out block ids orders nothing between blocks, so ThreadSanitizer sees races)
                const long long i = round == 0 ? s : coop ? nblocks : live + next.fetch_add(1, std::memory_order_relaxed);
                b.id = i < nblocks ? order[i] : -1;
                b.sites.clear();
                b.spill.clear();
                b.used = 0;
                std::memset(b.dynamic.get(), emu::POISON, dyn);
            }
            b.bar.arrive_and_wait();
            const long long id = b.id;
            if (id < 0) break;
            blockIdx = {(unsigned)(id % gridDim.x), (unsigned)(id / gridDim.x % gridDim.y),
                        (unsigned)(id / ((long long)gridDim.x * gridDim.y))};
            invoke(k, params, std::index_sequence_for<Args...>{});
            if (coop) grid.arrive_and_drop();   // a finished thread no longer holds up grid.sync()
            b.bar.arrive_and_wait();            // the block is done before its storage is reused
        }
    });
    emu::now = nullptr;
    const long long st = L.static_bytes.load(std::memory_order_relaxed);   // the pool's lock ordered every write
    report[0] = st;
    if (L.grid_sync_outside) return 3003;                                    // grid.sync() in a normal launch
    if (st > emu::STATIC_SHARED_LIMIT) return 3001;                          // static shared memory over 48 KB
    if (optin < 0 && st + dyn > emu::DEFAULT_SHARED_LIMIT) return 3002;      // static + dynamic over 48 KB, no opt-in
    if (optin >= 0 && st + optin > emu::OPTIN_SHARED_LIMIT) return 3004;     // static + opted-in dynamic over 227 KB
    return 0;
}

#define KERNEL(...) if (std::strcmp(want, #__VA_ARGS__) == 0) \
    return launch(&__VA_ARGS__, cfg, order, params, kinds, nparams, report);
// a kernel declared with __launch_bounds__(max threads, ...): a bigger block is refused, as the GPU refuses it
#define BOUNDED_KERNEL(space, bound, ...) if (std::strcmp(want, #__VA_ARGS__) == 0) {                 \
    using namespace space;                                                                              \
    report[1] = (long long)(bound);                                                                     \
    if (cfg[3] * cfg[4] * cfg[5] > report[1]) return 3005;                                              \
    return launch(&__VA_ARGS__, cfg, order, params, kinds, nparams, report);                            \
}

extern "C" int emulate(const char* want, const long long* cfg, const long long* order, void** params,
                       const char* kinds, int nparams, long long* report) {
@KERNELS@
    return -1;  // unknown name
}
"""


_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(([^,()]+)[^()]*\)\s*(\w+)\s*\(")


def emulator_source(name_expressions, source=""):
    """EMULATOR dispatching to every kernel of `name_expressions` (C++ names such as 'npylstm::name<float>'); a
    kernel whose declaration in `source` has __launch_bounds__(n, ...) refuses blocks of more than n threads."""
    bounds = {m.group(2): m.group(1).strip() for m in _LAUNCH_BOUNDS.finditer(source)}

    def dispatch(e):
        m = re.match(r"(.*)::(\w+)<", e)
        if m and m.group(2) in bounds:
            return f"    BOUNDED_KERNEL({m.group(1)}, {bounds[m.group(2)]}, {e})"
        return f"    KERNEL({e})"

    text = EMULATOR.replace("@KERNELS@", "\n".join(dispatch(e) for e in name_expressions))
    for key in ("STATIC_SHARED_LIMIT", "DEFAULT_SHARED_LIMIT", "OPTIN_SHARED_LIMIT", "POISON_BYTE"):
        text = text.replace(f"@{key}@", str(globals()[key]))
    return text


_ALIGN_ATTR = re.compile(r"__align__\s*\(\s*(\d+)\s*\)\s*")
_STATIC_SHARED = re.compile(r"^(?P<lead>[ \t]*)__shared__\s+(?P<decl>[^;{}()=]*(?:__align__\s*\(\s*\d+\s*\)[^;{}()=]*)?);",
                            re.M)
_EXTERN_SHARED = re.compile(r"^(?P<lead>[ \t]*)extern\s+__shared__\s+(?P<decl>[^;{}=]*?)\s*\[\s*\]\s*;", re.M)
_DECLARATOR = re.compile(r"^(?P<type>.*?[\w>*&])\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\[\]]+\]\s*)*)$", re.S)


def _split_declaration(decl, line):
    align = max([int(a) for a in _ALIGN_ATTR.findall(decl)], default=0)
    m = _DECLARATOR.match(_ALIGN_ATTR.sub("", decl).strip())
    if m is None or "," in m.group("type") + m.group("dims"):
        raise ValueError(f"emulator: cannot rewrite the shared-memory declaration {line.strip()!r} "
                         f"(one declarator per statement: `__shared__ T name[dims];`)")
    type_ = " ".join(m.group("type").split())
    alignment = f"alignof({type_})" if not align else f"({align} > alignof({type_}) ? {align} : alignof({type_}))"
    return type_, m.group("name"), m.group("dims").replace(" ", ""), alignment


def rewrite_shared(source):
    """`source` with every `__shared__` declaration bound to the running block's shared storage.

    __shared__ T name[d1][d2];        ->  auto& name = *static_cast<T(*)[d1][d2]>(emu::shared_static(k, sizeof(T[d1][d2]), alignof(T)));
    extern __shared__ T name[];       ->  T* const name = static_cast<T*>(emu::shared_dynamic());
    Each rewrite stays on its line, so the #line markers of the spliced source still hold.
    """
    sites = iter(range(1 << 30))

    def static(m):
        type_, name, dims, alignment = _split_declaration(m.group("decl"), m.group(0))
        target = f"{type_}(*){dims}" if dims else f"{type_}*"
        return (f"{m.group('lead')}auto& {name} = *static_cast<{target}>(::emu::shared_static({next(sites)}, "
                f"sizeof({type_}{dims}), {alignment}));")

    def dynamic(m):
        type_, name, dims, _ = _split_declaration(m.group("decl"), m.group(0))
        return f"{m.group('lead')}{type_}* const {name} = static_cast<{type_}*>(::emu::shared_dynamic());"

    out = _STATIC_SHARED.sub(static, _EXTERN_SHARED.sub(dynamic, source))
    for line in out.splitlines():
        if "__shared__" in line.split("//")[0]:
            raise ValueError(f"emulator: cannot rewrite the shared-memory declaration {line.strip()!r}")
    return out


class Emulator:
    """A kernel source built for the CPU: the g++ library, the names it dispatches, and how it schedules launches.

    seed: block orders come from (seed, launch number); NPYLSTM_EMU_SEED sets the default. live_blocks: blocks
    running at once in a normal launch. co_resident_blocks: the largest cooperative grid accepted.
    log: the last launches (number, name, grid, block, shared_mem, cooperative, order), to replay one.
    """

    def __init__(self, lib, source, names, seed=None):
        self.lib, self.source, self.names = lib, source, tuple(names)
        self.seed = int(os.environ.get("NPYLSTM_EMU_SEED", 0)) if seed is None else seed
        self.live_blocks, self.co_resident_blocks, self.max_os_threads = LIVE_BLOCKS, CO_RESIDENT_BLOCKS, MAX_OS_THREADS
        self.launches = 0
        self.log = collections.deque(maxlen=256)

    def restart(self, seed):
        """Start over with `seed`: the launches that follow get the block orders a run from the start with it gets."""
        self.seed, self.launches = seed, 0
        self.log.clear()

    def block_order(self, n):
        """The order in which the next launch starts its n blocks: a permutation drawn from (seed, launch number)."""
        return np.random.default_rng([self.seed, self.launches]).permutation(n).astype(np.int64)


class LaunchRecord(NamedTuple):
    number: int
    name: str
    grid: tuple
    block: tuple
    shared_mem: int
    cooperative: bool
    order: tuple


def compile_emulator(d, source, name_expressions):
    """g++ builds the emulator of `source` (a spliced kernel source) in directory d; returns the library's path.

    With NPYLSTM_EMU_CACHE set to a directory, a build of the same text with the same command is taken from there
    (and a new one stored there): benchmarks/mutate_kernels.py rebuilds only what a mutant changes.
    """
    gxx = need_tool("g++")
    d = Path(d)
    cpp, spliced = emulator_source(name_expressions, source), rewrite_shared(source)
    (d / "spliced.cu").write_text(spliced)
    (d / "emulator.cpp").write_text(cpp)
    (d / "cooperative_groups.h").write_text("#pragma once  // the emulator's shim defines cooperative_groups\n")
    flags = ["-O1", "-std=c++20", "-pthread", "-shared", "-fPIC", "-w"]
    key = hashlib.sha256("\0".join([gxx, *flags, cpp, spliced]).encode()).hexdigest()[:32]
    if key in _built and _built[key].is_file():                     # built already in this process
        return _built[key]
    cache = os.environ.get("NPYLSTM_EMU_CACHE")
    if cache:
        cached = Path(cache) / f"emulator-{key}.so"
        if cached.is_file():
            return cached
    so = d / "emulator.so"
    r = subprocess.run([gxx, *flags, "-I", str(d), "-o", str(so), str(d / "emulator.cpp")],
                       capture_output=True, text=True, cwd=d)
    assert r.returncode == 0, f"g++ failed on the kernel source:\n{r.stderr[-6000:]}"
    _built[key] = so
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(so, tmp)
        os.replace(tmp, cached)
    return so


_built = {}  # build key -> library path, for this process


def build_emulator(d, kernel_file=None, name_expressions=(), source=None, seed=None):
    """The kernels of kernels/`kernel_file` (the loader's spliced source), or of `source`, built by g++ in d."""
    from npylstm import gpu
    source = gpu.load_source(kernel_file) if source is None else source
    lib = ctypes.CDLL(str(compile_emulator(d, source, name_expressions)))
    lib.emulate.restype = ctypes.c_int
    return Emulator(lib, source, name_expressions, seed)


# -------------------------------------------------------------------------------------------------------------- launch
class LaunchRefused(AssertionError):
    """The emulator refused a launch (a GPU would refuse it too, or it would be undefined there)."""


_RC = {3001: "static shared memory is {st} bytes per block, over sm_90's {lim} (48 KB)",
       3002: "static ({st} B) + dynamic ({dyn} B) shared memory is over 48 KB per block without the opt-in: "
             "set kernel.max_dynamic_shared_size_bytes first",
       3003: "cooperative_groups grid sync in a launch that is not cooperative "
             "(RawModule(..., enable_cooperative_groups=True))",
       3004: "static ({st} B) + max_dynamic_shared_size_bytes ({optin} B) is over sm_90's {optlim} bytes per block",
       3005: "block {block} is {threads} threads, over the kernel's __launch_bounds__ ({bound})"}
_CTYPES = {"i": ctypes.c_int32, "l": ctypes.c_int64, "f": ctypes.c_float, "d": ctypes.c_double}
_KINDS = {np.int32: "i", np.int64: "l", np.uint64: "p", np.float32: "f", np.float64: "d"}


def _dims(name, what, dims):
    dims = tuple(int(v) for v in (dims if isinstance(dims, tuple | list) else (dims,)))
    if not 1 <= len(dims) <= 3:
        raise LaunchRefused(f"{name}: {what} {dims} must have 1 to 3 dimensions")
    return dims + (1,) * (3 - len(dims))


def _check_limits(name, grid, block):
    if any(v < 1 for v in grid + block):
        raise LaunchRefused(f"{name}: launch refused: grid {grid} and block {block} must be at least 1 in every dimension")
    if np.prod(block) > MAX_THREADS_PER_BLOCK:
        raise LaunchRefused(f"{name}: launch refused: block {block} is {np.prod(block)} threads, "
                            f"over sm_90's {MAX_THREADS_PER_BLOCK} per block")
    for axis, v, lim in zip("xyz", block, MAX_BLOCK_DIM):
        if v > lim:
            raise LaunchRefused(f"{name}: launch refused: blockDim.{axis} = {v} is over sm_90's {lim}")
    for axis, v, lim in zip("xyz", grid, MAX_GRID_DIM):
        if v > lim:
            raise LaunchRefused(f"{name}: launch refused: gridDim.{axis} = {v} is over sm_90's {lim}")


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Allocation:
    """The host arrays of one allocation (overlapping roots) as one guarded buffer: the kernel's view of memory."""

    def __init__(self, lo, hi):
        self.lo, self.hi, self.members = lo, hi, []

    def build(self):
        size, g = self.hi - self.lo, GUARD * 8
        raw = np.empty(size + 2 * g + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.buf = raw[start:start + size + 2 * g]
        self.guard = np.full(GUARD, GUARD_VALUE, np.float64).view(np.uint8)
        self.buf[:g], self.buf[g + size:] = self.guard, self.guard
        self.buf[g:g + size] = POISON_BYTE        # bytes no argument views stay poisoned
        self.covered = np.zeros(size, bool)
        base = self.buf.ctypes.data + g
        for _, a in self.members:
            off = a.ctypes.data - self.lo
            ctypes.memmove(base + off, a.ctypes.data, a.nbytes)
            self.covered[off:off + a.nbytes] = True
        return base

    def pointer(self, a):
        return self.buf.ctypes.data + GUARD * 8 + a.ctypes.data - self.lo

    def check(self, name):
        g, size = GUARD * 8, self.hi - self.lo
        args = ", ".join(str(i) for i, _ in self.members)
        if not (np.array_equal(self.buf[:g], self.guard) and np.array_equal(self.buf[g + size:], self.guard)):
            raise LaunchRefused(f"{name}: out-of-bounds write in the guard zone around the allocation of argument(s) {args}")
        inside = self.buf[g:g + size]
        bad = np.flatnonzero(~self.covered & (inside != POISON_BYTE))
        if bad.size:
            raise LaunchRefused(f"{name}: out-of-bounds write at byte {bad[0]} of the allocation of argument(s) {args}, "
                                f"outside every argument's view of it")

    def copy_back(self):
        base = self.buf.ctypes.data + GUARD * 8
        for _, a in self.members:
            if a.flags.writeable:
                ctypes.memmove(a.ctypes.data, base + a.ctypes.data - self.lo, a.nbytes)


def _allocations(name, dtype, arrays):
    """Group the array arguments by the allocation they live in: overlapping root allocations are one buffer."""
    spans = []
    for i, a in arrays:
        if dtype is not None and a.dtype != dtype:
            raise LaunchRefused(f"{name}: argument {i} is {a.dtype}, the kernel takes {dtype}")
        if not a.flags.c_contiguous:
            raise LaunchRefused(f"{name}: argument {i} is not C-contiguous (a RawKernel takes the data pointer only)")
        lo, hi = byte_bounds(_root(a))
        spans.append((lo, hi, i, a))
    groups = []
    for lo, hi, i, a in sorted(spans, key=lambda s: s[0]):
        if groups and lo < groups[-1].hi:
            groups[-1].hi = max(groups[-1].hi, hi)
        else:
            groups.append(_Allocation(lo, hi))
        groups[-1].members.append((i, a))
    return groups


_DTYPES = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}


class EmulatedKernel:
    """A cupy.RawKernel stand-in: f(grid, block, args, shared_mem=0) runs the real kernel code on the CPU.

    Arrays are NumPy arrays (the ones CuPy would hold on the device); sizes np.int32 (np.int64, np.float32,
    np.float64 for other scalar parameters), null pointers np.uint64(0). Refuses what cuLaunchKernel refuses
    (LaunchRefused), and a wrong count, kind or element type of argument, which CuPy does not check.
    """

    def __init__(self, emulator, name, enable_cooperative_groups=False):
        self.emulator, self.name = emulator, name
        self.enable_cooperative_groups = bool(enable_cooperative_groups)
        m = re.search(r"<(\w+)>$", name)
        self.dtype = _DTYPES.get(m.group(1)) if m else None
        self.shared_size_bytes = None      # static shared memory per block, known after the first launch (as ptxas reports it)
        self._max_dynamic = None
        self.launches = 0

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic if self._max_dynamic is not None else DEFAULT_SHARED_LIMIT - (self.shared_size_bytes or 0)

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if not 0 <= int(value) <= OPTIN_SHARED_LIMIT - (self.shared_size_bytes or 0):
            raise LaunchRefused(f"{self.name}: max_dynamic_shared_size_bytes = {value} refused: static "
                                f"({self.shared_size_bytes or 0} B) + dynamic must be at most {OPTIN_SHARED_LIMIT} bytes on sm_90")
        self._max_dynamic = int(value)

    def __call__(self, grid, block, args, shared_mem=0):
        emu, name = self.emulator, self.name
        grid, block = _dims(name, "grid", grid), _dims(name, "block", block)
        _check_limits(name, grid, block)
        shared_mem = int(shared_mem)
        if shared_mem > self.max_dynamic_shared_size_bytes or shared_mem < 0:
            raise LaunchRefused(f"{name}: launch refused: shared_mem = {shared_mem} bytes is over the kernel's "
                                f"max_dynamic_shared_size_bytes ({self.max_dynamic_shared_size_bytes}); "
                                f"set it first to use up to {OPTIN_SHARED_LIMIT} bytes")
        nblocks, threads = int(np.prod(grid)), int(np.prod(block))
        if self.enable_cooperative_groups:
            if nblocks > emu.co_resident_blocks:
                raise LaunchRefused(f"{name}: cooperative launch refused: {nblocks} blocks cannot all be resident at once "
                                    f"(limit {emu.co_resident_blocks}; Emulator.co_resident_blocks)")
            if nblocks * threads > emu.max_os_threads:
                raise LaunchRefused(f"{name}: cooperative launch of {nblocks} x {threads} threads is over the emulator's "
                                    f"{emu.max_os_threads} threads (Emulator.max_os_threads)")
        kinds, values, arrays = [], [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                arrays.append((i, a))
                kinds.append("p")
                values.append(None)
            elif type(a) in _KINDS:
                kind = _KINDS[type(a)]
                if kind == "p" and a != 0:
                    raise LaunchRefused(f"{name}: argument {i} is np.uint64({a}); only 0 (a null pointer) is one")
                kinds.append(kind)
                values.append(ctypes.c_void_p(0) if kind == "p" else _CTYPES[kind](a.item()))
            else:
                raise LaunchRefused(f"{name}: argument {i} is a {type(a).__name__}; "
                                    f"sizes must be np.int32 and null pointers gpu.NULL")
        allocations = _allocations(name, self.dtype, arrays)
        for alloc in allocations:
            alloc.build()
            for i, a in alloc.members:
                values[i] = ctypes.c_void_p(alloc.pointer(a))
        order = emu.block_order(nblocks)
        cfg = (ctypes.c_longlong * 10)(*grid, *block, shared_mem, emu.live_blocks, int(self.enable_cooperative_groups),
                                        -1 if self._max_dynamic is None else self._max_dynamic)
        report = (ctypes.c_longlong * 2)()
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        emu.log.append(LaunchRecord(emu.launches, name, grid, block, shared_mem, self.enable_cooperative_groups,
                                    tuple(order.tolist())))
        rc = emu.lib.emulate(name.encode(), cfg, order.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong)), params,
                             "".join(kinds).encode(), len(values), report)
        emu.launches += 1
        if rc == -1:
            raise LaunchRefused(f"{name}: no such kernel in the emulator (built: {', '.join(emu.names)})")
        if 1000 <= rc < 3000:
            raise LaunchRefused(f"{name}: launch refused, code {rc} (1000+n: kernel takes n arguments; 2000+i: kind of "
                                f"argument i)")
        if rc != 3005:
            self.shared_size_bytes = int(report[0])
        if rc:
            raise LaunchRefused(f"{name}: launch refused (code {rc}): " + _RC[rc].format(
                st=report[0], lim=STATIC_SHARED_LIMIT, dyn=shared_mem, optin=self._max_dynamic, optlim=OPTIN_SHARED_LIMIT,
                block=block, threads=threads, bound=report[1]))
        for alloc in allocations:
            alloc.check(f"{name} (launch {emu.launches - 1} of seed {emu.seed}: its block order is in Emulator.log)")
        for alloc in allocations:
            alloc.copy_back()
        self.launches += 1


class EmulatedModule:
    """A cupy.RawModule stand-in over a built Emulator; get_function(name) -> EmulatedKernel."""

    def __init__(self, emulator, enable_cooperative_groups=False, made=None):
        self.emulator, self.enable_cooperative_groups = emulator, enable_cooperative_groups
        self.made = {} if made is None else made

    def get_function(self, name):
        if name not in self.emulator.names:
            raise LaunchRefused(f"EmulatedModule.get_function: {name} is not among the name_expressions built "
                                f"({', '.join(self.emulator.names)})")
        if name not in self.made:
            self.made[name] = EmulatedKernel(self.emulator, name, self.enable_cooperative_groups)
        return self.made[name]


class _CupyOnCPU(types.ModuleType):
    """What npylstm's launch code uses of the cupy module, on the CPU; every other name is numpy's."""

    def __getattr__(self, name):
        return getattr(np, name)


def cupy_on_cpu(emulators=()):
    """A cupy stand-in whose RawModule(code=..., name_expressions=..., enable_cooperative_groups=...) is the built
    Emulator of that source, so the loader's real module code (and a cooperative flag it passes) runs unchanged.
    cupy.add_emulator(e) registers one more and returns the dict of the kernels made from it, by full name."""
    built = {}   # source -> (emulator, kernels made from it)

    def add_emulator(emulator):
        return built.setdefault(emulator.source, (emulator, {}))[1]

    def RawModule(code=None, *, options=(), name_expressions=(), enable_cooperative_groups=False, **_):
        if code not in built:
            raise LaunchRefused("cupy_on_cpu.RawModule: no emulator was built for this source")
        emu, made = built[code]
        missing = set(name_expressions) - set(emu.names)
        if missing:
            raise LaunchRefused(f"cupy_on_cpu.RawModule: {sorted(missing)} not built into the emulator")
        return EmulatedModule(emu, enable_cooperative_groups, made)

    cupy = _CupyOnCPU("cupy_on_cpu")
    cupy.add_emulator, cupy.RawModule, cupy.ndarray = add_emulator, RawModule, np.ndarray
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1))
    cupy.get_array_module = lambda *a: np
    cupy.asnumpy = np.asarray
    cupy.is_available = lambda: True
    for e in emulators:
        add_emulator(e)
    return cupy


def launch_on_cpu(monkeypatch, emulator, module):
    """Make `module`'s launches (npylstm.gpu or gru_gpu) run the real kernels on the CPU through `emulator`:
    require_cuda returns a cupy_on_cpu (one for all the modules of a test), the module's caches start empty,
    outputs start poisoned (gpu.POISON). Returns the kernels made from `emulator`, by full name."""
    from npylstm import gpu
    cupy = getattr(gpu.require_cuda, "cupy_on_cpu", None)
    if cupy is None:
        cupy = cupy_on_cpu()
        require = lambda where="": cupy   # noqa: E731
        require.cupy_on_cpu = cupy
        monkeypatch.setattr(gpu, "require_cuda", require)
    made = cupy.add_emulator(emulator)
    for cache in ("_modules", "_functions"):                      # the backend's compiled modules and kernels
        if isinstance(getattr(module, cache, None), dict):
            monkeypatch.setattr(module, cache, {})
    if hasattr(module.get_function, "cache_clear"):
        module.get_function.cache_clear()
    monkeypatch.setattr(gpu, "POISON", True)
    return made


# -------------------------------------------------------------------------------------------------------------- ThreadSanitizer
# A standalone driver over the same emulator, built with ThreadSanitizer: a data race between threads of a block
# (a missing or misplaced __syncthreads, two threads writing one element) or between blocks running at once is
# reported, the CPU-side counterpart of compute-sanitizer's racecheck. run(k, grid, block, args...) launches with
# RACE_LIVE_BLOCKS blocks live in a fixed shuffled order.
RACE_HELPERS = r"""
#include <array>
#include <cstdio>
#include <numeric>
#include <random>
#include <tuple>
#include "emulator.cpp"

constexpr long long RACE_LIVE_BLOCKS = 2;

template <typename... Args, std::size_t... I>
static int run_impl(void (*k)(Args...), const unsigned* g, const unsigned* b,
                    std::tuple<std::remove_cv_t<Args>...>& t, std::index_sequence<I...>) {
    void* params[] = {(void*)&std::get<I>(t)...};
    const char kinds[] = {kind_of<Args>()..., 0};
    const long long cfg[] = {g[0], g[1], g[2], b[0], b[1], b[2], 0, RACE_LIVE_BLOCKS, 0, -1};
    std::vector<long long> order((long long)g[0] * g[1] * g[2]);
    std::iota(order.begin(), order.end(), 0LL);
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
    long long report[2];
    return launch(k, cfg, order.data(), params, kinds, (int)sizeof...(Args), report);
}

template <typename... Args, typename... Vals>
static int run(void (*k)(Args...), std::array<unsigned, 3> g, std::array<unsigned, 3> b, Vals... vals) {
    std::tuple<std::remove_cv_t<Args>...> t(vals...);
    return run_impl(k, g.data(), b.data(), t, std::index_sequence_for<Args...>{});
}
"""


def thread_sanitizer_run(tmp_path, kernel_file, name_expressions, driver, source=None):
    """Build `driver` (which includes emulator.cpp) over kernels/`kernel_file` (or `source`) with -fsanitize=thread
    and run it; returns the finished process (its stderr holds any report)."""
    from npylstm import gpu
    gxx = need_tool("g++")
    source = gpu.load_source(kernel_file) if source is None else source
    (tmp_path / "spliced.cu").write_text(rewrite_shared(source))
    (tmp_path / "emulator.cpp").write_text(emulator_source(name_expressions, source))
    (tmp_path / "cooperative_groups.h").write_text("#pragma once\n")
    (tmp_path / "race.cpp").write_text(driver)
    exe = tmp_path / "race"
    r = subprocess.run([gxx, "-fsanitize=thread", "-g", "-O1", "-std=c++20", "-pthread", "-w", "-I", str(tmp_path),
                        "-o", str(exe), str(tmp_path / "race.cpp")], capture_output=True, text=True, cwd=tmp_path)
    if r.returncode != 0 and "tsan" in r.stderr.lower() and not os.environ.get("CI"):
        pytest.skip(f"ThreadSanitizer is not available: {r.stderr[-300:]}")
    assert r.returncode == 0, f"g++ -fsanitize=thread failed:\n{r.stderr}"
    return subprocess.run([str(exe)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})


def run_under_thread_sanitizer(tmp_path, kernel_file, name_expressions, driver, source=None):
    """thread_sanitizer_run, which must come back clean: no report, and the driver prints `launch codes: 0`."""
    r = thread_sanitizer_run(tmp_path, kernel_file, name_expressions, driver, source)
    assert "ThreadSanitizer" not in r.stderr, r.stderr[:4000]
    assert r.returncode == 0 and "launch codes: 0" in r.stdout, (r.returncode, r.stdout, r.stderr[:2000])
