// npylstm: the LSTM sequence as persistent CUDA kernels, one cooperative launch per sequence and direction,
// compiled at run time through CuPy (NVRTC) by npylstm/persistent.py.
//
// The gate math is in lstm_gates.cuh (the loader splices it in); the conventions are those of lstm_kernels.cu:
// row-major arrays, A (N, 4H) with column blocks [ i | f | g | o ], W_h (H, 4H), states (N, H), saved gates
// (N, 4H) = [ I | F | C_tilde | O ]; a sequence is time-major, so step t of an array (T, N, ·) starts at
// t · N · (its row length). `mask` (T, N) holds 1 for a real step of row n and 0 for padding, in the data type,
// or is null: forward, a masked row keeps the state of the step before (its gates and tanh(C) are still
// written, and never read); backward, its dA is 0 and dH, dC pass through it untouched.
//
// Version 3 (lstm_forward_kernel3, lstm_backward_kernel3): the whole sequence in one cooperative launch
// (cuLaunchCooperativeKernel: every block is resident at once), its recurrent weights on chip. Block b owns
// the hidden units j in [b U, b U + U) (the last block may own fewer) and, for the whole sequence, keeps its
// slice of W_h in shared memory: forward the 4U columns g H + j of its units (all H rows), backward the U rows
// j of W_h, i.e. the columns j of W_hᵀ (all 4H). A step: the block stages the rows it multiplies -- forward
// H_{t-1} (N, H), backward dA_{t+1} (N, 4H), written by every block at the step before -- R rows at a time into
// shared memory, multiplies them with its slice (below), applies the gate math of lstm_gates.cuh to its own
// units, writes them, and the grid meets at one grid-wide barrier (cooperative_groups grid.sync()) before the
// next step. Forward writes H_t, C_t, the gates and tanh(C_t) of its units; the input product X W_x + b of
// all T steps (Ax) is one cuBLAS GEMM before the launch. Backward: dH_t = dY_t + dA_{t+1} W_hᵀ for its units
// (a masked row at t+1 passes its dH_{t+1} through instead), the cell backward, dA_t of its units; after the
// launch dW_x, dW_h and dX are one GEMM each. The product: thread (s, c) of a block of C x S threads (C the
// slice's columns -- 4U forward, U backward -- and S the slices of the reduction index k) sums the terms
// k = V s', s' = s, s + S, ... for the R staged rows: per V consecutive k (V = 16 bytes of T, one vector
// load: 4 floats or 2 doubles) one load of its column's weights, reused from registers for all R rows, and one
// load per row; the S partial sums of an output are then added in a tree in shared memory (ceil(log2 S) rounds
// with every thread busy, rather than one thread per output making S dependent loads). The weights sit in shared
// memory as [k / V][c][V], so the 32 threads of a warp (consecutive c, then s) read 32 consecutive vectors: no bank
// conflict. R (1, 2, 4 or 8) adapts to N: one row reuses nothing, so a small batch does not pay for eight.
// State that other blocks wrote during the launch (H_{t-1}, dA_{t+1}) is read with ld.global.cg (L2, not the
// SM's L1, which is not coherent across SMs); a block's own units (C, dH, dC) are read where it wrote them.
// dH and dC are (N, H) arrays updated in place: dh_T, dc_T on entry, dh0, dc0 on exit.
// The grid is sized by the device (npylstm/persistent.py: SM count x resident blocks per SM), not by the
// problem: U = ceil(H / blocks). Sizes whose slice does not fit in shared memory never launch; the caller
// falls back to version 1 or 2.

#include <cooperative_groups.h>

#include "lstm_gates.cuh"

namespace npylstm {

constexpr int VEC_BYTES3 = 16;  // version 3: bytes of one vector load (the weights' and staged rows' layout)
constexpr int MAX_ROWS3 = 8;    // version 3: rows of the batch a thread's registers carry through the product
// version 3: threads per block at most (the plan makes C x S of them), one block per SM: the launch bounds say
// both (with the thread count alone, ptxas 13.0 spilled backward<float> at 48 registers)
constexpr int MAX_THREADS3 = 256;

template <typename T>
struct alignas(VEC_BYTES3) Vec3 {
    static constexpr int LEN = VEC_BYTES3 / (int)sizeof(T);
    T v[LEN];
};

// A value another block wrote during this launch: from L2 (ld.global.cg), past the SM's non-coherent L1.
template <typename T>
__device__ inline T load_grid_shared(const T* p) {
#if defined(__CUDA_ARCH__)
    return __ldcg(p);
#else
    return *p;
#endif
}

// red[r * blockDim.x + tid] = the thread's partial sum of X[r, :] Ws[:, c] (r < R): thread tid = s C + c takes
// the vectors kq = s, s + S, ... of the reduction (S = blockDim.x / C). X (R, Kq V) and Ws [Kq][C][V] in shared
// memory; every thread of the block calls it.
template <typename T, int R>
__device__ inline void product_slice(const T* Ws, const T* X, T* red, int C, int Kq) {
    constexpr int V = Vec3<T>::LEN;
    const int tid = threadIdx.x, c = tid % C, S = blockDim.x / C;
    T acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = T(0);
    for (int kq = tid / C; kq < Kq; kq += S) {
        const Vec3<T> w = *reinterpret_cast<const Vec3<T>*>(Ws + (kq * C + c) * V);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const Vec3<T> x = *reinterpret_cast<const Vec3<T>*>(X + (r * Kq + kq) * V);
#pragma unroll
            for (int q = 0; q < V; ++q) acc[r] += x.v[q] * w.v[q];
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) red[r * blockDim.x + tid] = acc[r];
}

// red (R, S, C) of partial sums -> red[r, 0, c] = their sum over s, in a tree: each round folds the upper half of
// the slices onto the lower. Every thread of the block calls it (it synchronises).
template <typename T>
__device__ inline void sum_slices(T* red, int R, int C, int S) {
    for (int width = S; width > 1;) {
        const int half = (width + 1) / 2, upper = width - half;   // slices s + half fold onto s, s < upper
        for (int e = threadIdx.x; e < R * upper * C; e += blockDim.x) {
            const int r = e / (upper * C), s = e / C % upper, c = e % C;
            red[(r * S + s) * C + c] += red[(r * S + s + half) * C + c];
        }
        width = half;
        __syncthreads();
    }
}

template <typename T>
__device__ inline void product_rows(int R, const T* Ws, const T* X, T* red, int C, int Kq) {
    switch (R) {  // the same R for the whole launch
        case 1: product_slice<T, 1>(Ws, X, red, C, Kq); break;
        case 2: product_slice<T, 2>(Ws, X, red, C, Kq); break;
        case 4: product_slice<T, 4>(Ws, X, red, C, Kq); break;
        default: product_slice<T, MAX_ROWS3>(Ws, X, red, C, Kq); break;
    }
}

// X[r, k] = src[(n0 + r) * K + k] for the R rows from n0, zero past row N or column K (X is (R, Kq V)).
template <typename T>
__device__ inline void stage_rows(T* X, const T* src, int n0, int N, int K, int R, int Kq) {
    constexpr int V = Vec3<T>::LEN;
    const int width = Kq * V;
    for (int e = threadIdx.x; e < R * width; e += blockDim.x) {
        const int n = n0 + e / width, k = e % width;
        X[e] = (n < N && k < K) ? load_grid_shared(src + n * K + k) : T(0);
    }
}

// The dynamic shared memory of a block: Ws [Kq][C][V], then X (R, Kq V), then red (R, blockDim.x).
template <typename T>
__device__ inline T* shared_base() {
    extern __shared__ __align__(16) unsigned char shared3[];
    return reinterpret_cast<T*>(shared3);
}

// ---------------------------------------------------------------------------------------------- version 3
// Ax (T, N, 4H) = X W_x + b of every step. Hs, Cs (T+1, N, H): H_0, C_0 filled by the caller; the kernel
// writes H_1 .. H_T, C_1 .. C_T, gates (T, N, 4H), tanh_C (T, N, H). U: hidden units per block; R: rows per
// pass. Block of 4U x S threads, ceil(H / U) blocks, shared memory (4U Kq + R Kq) V + R blockDim.x elements of
// T with Kq = ceil(H / V).
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS3, 1)
lstm_forward_kernel3(const T* __restrict__ Ax, const T* __restrict__ W_h, const T* __restrict__ mask,
                     T* Hs, T* Cs, T* __restrict__ gates, T* __restrict__ tanh_C,
                     int steps, int N, int H, int U, int R) {
    constexpr int V = Vec3<T>::LEN;
    const int C = NUM_GATES * U, Kq = (H + V - 1) / V;
    const int j0 = blockIdx.x * U, Ub = H - j0 < U ? H - j0 : U;   // this block's units
    T* Ws = shared_base<T>();
    T* X = Ws + C * Kq * V;
    T* red = X + R * Kq * V;
    // Ws[kq][c][q] = W_h[k, g H + j0 + u] with k = kq V + q, c = g U + u
    for (int e = threadIdx.x; e < C * Kq * V; e += blockDim.x) {
        const int q = e % V, c = (e / V) % C, k = e / (V * C) * V + q, g = c / U, u = c % U;
        Ws[e] = (k < H && u < Ub) ? W_h[k * NUM_GATES * H + g * H + j0 + u] : T(0);
    }
    const cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    const int S = blockDim.x / C;
    for (int t = 0; t < steps; ++t) {
        const long long tNH = (long long)t * N * H, tN4H = tNH * NUM_GATES;
        const T* H_prev = Hs + tNH;
        for (int n0 = 0; n0 < N; n0 += R) {
            stage_rows(X, H_prev, n0, N, H, R, Kq);
            __syncthreads();
            product_rows(R, Ws, X, red, C, Kq);                // partial sums of H_prev W_h
            __syncthreads();
            sum_slices(red, R, C, S);
            for (int o = threadIdx.x; o < R * U; o += blockDim.x) {
                const int n = n0 + o / U, u = o % U, j = j0 + u;
                if (n >= N || u >= Ub) continue;
                T A[NUM_GATES];
                const T* ax = Ax + tN4H + n * NUM_GATES * H + j;
#pragma unroll
                for (int g = 0; g < NUM_GATES; ++g) {          // A = (X W_x + b) + H_prev W_h
                    A[g] = ax[g * H] + red[(o / U) * blockDim.x + g * U + u];
                }
                const int e = n * H + j;
                const T C_prev = Cs[tNH + e];
                T C_new, H_new;
                const Saved<T> sv = cell_forward(A[GATE_I], A[GATE_F], A[GATE_G], A[GATE_O], C_prev, &C_new, &H_new);
                store_saved(sv, gates + tN4H, tanh_C + tNH, n, j, H);
                if (mask != nullptr && mask[t * N + n] == T(0)) {  // a masked row keeps the state of the step before
                    C_new = C_prev;
                    H_new = H_prev[e];
                }
                Cs[tNH + N * H + e] = C_new;
                Hs[tNH + N * H + e] = H_new;
            }
        }
        if (t + 1 < steps) grid.sync();                        // H_t of every block, before step t + 1 reads it
    }
}

// dY (T, N, H) upstream gradients; Cs (T+1, N, H), gates, tanh_C as the forward wrote them. Writes dA (T, N, 4H).
// dH, dC (N, H): dh_T, dc_T on entry, dh0, dc0 on exit. Block of U x S threads, ceil(H / U) blocks, shared
// memory (U Kq + R Kq) V + R blockDim.x elements of T with Kq = ceil(4H / V).
template <typename T>
__global__ void __launch_bounds__(MAX_THREADS3, 1)
lstm_backward_kernel3(const T* __restrict__ dY, const T* __restrict__ W_h, const T* __restrict__ mask,
                      const T* __restrict__ Cs, const T* __restrict__ gates,
                      const T* __restrict__ tanh_C, T* dA, T* dH, T* dC,
                      int steps, int N, int H, int U, int R) {
    constexpr int V = Vec3<T>::LEN;
    const int K = NUM_GATES * H, Kq = (K + V - 1) / V;
    const int j0 = blockIdx.x * U, Ub = H - j0 < U ? H - j0 : U;
    T* Ws = shared_base<T>();
    T* X = Ws + U * Kq * V;
    T* red = X + R * Kq * V;
    // Ws[kq][u][q] = W_h[j0 + u, k] = W_hᵀ[k, j0 + u] with k = kq V + q
    for (int e = threadIdx.x; e < U * Kq * V; e += blockDim.x) {
        const int q = e % V, u = (e / V) % U, k = e / (V * U) * V + q;
        Ws[e] = (k < K && u < Ub) ? W_h[(j0 + u) * K + k] : T(0);
    }
    const cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    const int S = blockDim.x / U;
    for (int t = steps - 1; t >= -1; --t) {                     // t = -1: dh0 from dA_0 after the last step
        const bool after = t + 1 < steps;                       // dA_{t+1} exists: dH_t gets dA_{t+1} W_hᵀ
        const long long tNH = (long long)t * N * H;
        for (int n0 = 0; n0 < N; n0 += R) {
            if (after) {                                        // the same branch for the whole grid
                stage_rows(X, dA + (tNH + N * H) * NUM_GATES, n0, N, K, R, Kq);
                __syncthreads();
                product_rows(R, Ws, X, red, U, Kq);             // partial sums of dA_{t+1} W_hᵀ
                __syncthreads();
                sum_slices(red, R, U, S);
            }
            for (int o = threadIdx.x; o < R * U; o += blockDim.x) {
                const int n = n0 + o / U, u = o % U, j = j0 + u;
                if (n >= N || u >= Ub) continue;
                const int e = n * H + j;
                // forward: A_{t+1} = ... + H_t W_h  ->  dH_t = dY_t + dA_{t+1} W_hᵀ; a masked row at t+1 has
                // dA = 0 and passes its dH_{t+1} through; dH holds dh_T before the last step
                T dh = after ? red[(o / U) * blockDim.x + u] : T(0);
                const T pass = !after ? T(1) : mask == nullptr ? T(0) : T(1) - mask[(t + 1) * N + n];
                dh += pass * dH[e];
                if (t < 0) {
                    dH[e] = dh;                                  // dh0
                    continue;
                }
                dh += dY[tNH + e];
                dH[e] = dh;                                      // dH_t, for a masked step before it
                T d[NUM_GATES] = {T(0), T(0), T(0), T(0)};
                if (mask == nullptr || mask[t * N + n] != T(0)) {
                    const Saved<T> sv = load_saved(gates + tNH * NUM_GATES, tanh_C + tNH, n, j, H);
                    cell_backward(dh, dC[e], sv, Cs[tNH + e], &d[GATE_I], &d[GATE_F], &d[GATE_G], &d[GATE_O], &dC[e]);
                }                                                // else dC passes through: dC_prev = dC
                T* da = dA + tNH * NUM_GATES + n * K + j;
#pragma unroll
                for (int g = 0; g < NUM_GATES; ++g) da[g * H] = d[g];
            }
        }
        if (t >= 0) grid.sync();                                // dA_t of every block, before step t - 1 reads it
    }
}

}  // namespace npylstm

#if !defined(__CUDACC_RTC__)
// nvcc (CI's sm_90 compile check) has no name_expressions: taking every kernel's address instantiates it.
// NVRTC (the loader) instantiates them through name_expressions instead; persistent.NAME_EXPRESSIONS lists the same.
template <typename T>
void* const* npylstm_persistent_kernels() {
    static void* const k[] = {(void*)&npylstm::lstm_forward_kernel3<T>, (void*)&npylstm::lstm_backward_kernel3<T>};
    return k;
}
template void* const* npylstm_persistent_kernels<float>();
template void* const* npylstm_persistent_kernels<double>();
#endif
