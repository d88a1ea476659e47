// npylstm: the LSTM cell as CUDA kernels, compiled at run time through CuPy (NVRTC) by npylstm/gpu.py.
//
// The gate math is in lstm_gates.cuh (the loader splices it in); this file only moves data. Every kernel is
// templated on the element type and compiled for float and double. Row-major arrays, row-vector
// convention: A (N, 4H) with column blocks [ i | f | g | o ], W_x (D, 4H), W_h (H, 4H), b (4H,), states (N, H);
// the saved gates (N, 4H) hold [ I | F | C_tilde | O ] in the same blocks. Sizes come in as int.
//
// Indices are 32-bit int: npylstm/gpu.py (check_sizes) refuses sizes where an array one launch indexes -- the
// step's (N, 4H) gates, W_h (H, 4H), W_x (D, 4H), x (N, D) -- has 2^31 elements or more.
//
// Masks: `mask` (N,) holds 1 for a real step of row n and 0 for padding, in the data type, or is null (no
// mask). Forward, a masked row keeps the state of the step before (C = C_prev, H = H_prev; its gates and
// tanh(C) are still written, and never read). Backward, a masked row has dA = 0 and lets the gradients pass
// through untouched: dC_prev = dC, dH_prev = dH_t. So a mask costs no launch of its own.
//
// Version 1 (lstm_forward_kernel1, lstm_backward_kernel1): only the pointwise part of a step is fused; the
// matrix products are cuBLAS calls made by CuPy. One thread per element (n, j). Forward reads the two
// products A_x = X W_x + b and A_h = H_prev W_h (CuPy writes it into a buffer kept for the whole sequence)
// and C_prev, and writes the four gates, C, tanh(C) and H in one pass (the NumPy step needs about ten
// passes). Backward reads dH (plus dY when given), dC, the saved gates, tanh(C) and C_prev, and writes dA
// and dC_prev; CuPy then computes dH_prev = dA W_hᵀ. With a mask, the backward kernel also writes
// dH_direct = dH_t on masked rows (0 on real ones), and the next launch adds it to its dH: the product's row
// is 0 there. Two launches per step each way (one GEMM, one pointwise kernel).
//
// Version 2 (lstm_forward_kernel2, lstm_backward_kernel2): a whole step in one launch. Forward: a block of
// TJ x TN threads owns the TN rows n and TJ hidden units j of its tile and computes the tile's four gate
// pre-activations itself, streaming H_prev and the four matching column blocks of W_h through shared memory
// TK at a time (a plain tiled product, no tensor cores), then applies the gates. For a sequence the input
// product of all steps is one cuBLAS call before the loop (A_x); for a lone cell step (A_x null) the kernel
// also computes X W_x + b the same way. Backward: block (x, y) owns TJ output columns and TN rows of
// dH_prev = dA W_hᵀ (and, for a lone step, the blocks past the last dH_prev tile own dX = dA W_xᵀ); it
// walks over j, recomputing the pointwise backward of its rows into shared memory, and multiplies with the
// matching tile of W_h. The pointwise part is thus recomputed once per column tile (cheap arithmetic, its
// inputs stay in L2); only the blocks of column tile 0 write dA and dC_prev. A masked row writes dH_t
// itself as its dH_prev. One launch per step each way; dH and dC must not alias dH_prev and dC_prev (other
// blocks still read them): the caller ping-pongs.

#include "lstm_gates.cuh"

namespace npylstm {

constexpr int THREADS1 = 256;  // version 1: threads per block
constexpr int TJ = 32;         // version 2: hidden units (or output columns) per block = threadIdx.x, one warp
constexpr int TN = 8;          // version 2: batch rows per block = threadIdx.y
constexpr int TK = 32;         // version 2: reduction slice staged in shared memory per iteration
// version 2: at least 4 blocks of 256 threads per SM, i.e. at most 64 registers a thread. Without it, NVRTC 13.5's
// ptxas capped backward<double> at 48 registers (the occupancy its 41 KB of shared memory allows) and spilled.
constexpr int MIN_BLOCKS2 = 4;

// The element (n, j) of one thread in a version-1 launch of ceil(N·H / THREADS1) blocks, or -1 past the end.
// blockIdx.x * THREADS1 + threadIdx.x < N·H + THREADS1 <= 2^31 + 255: it fits an unsigned int.
__device__ inline int element_index(int NH) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    return e < (unsigned)NH ? (int)e : -1;
}

// Whether row n is a real step: no mask, or mask[n] != 0.
template <typename T>
__device__ inline bool is_real(const T* mask, int n) {
    return mask == nullptr || mask[n] != T(0);
}

// acc[g] += sum_k X[n, k] W[k, g H + j] for the block's tile; X (N, K), W (K, 4H). Every thread of the block
// must call it (it synchronises); rows n >= N and columns j >= H read zeros.
template <typename T>
__device__ inline void accumulate_gate_product(const T* __restrict__ X, const T* __restrict__ W, int N, int K, int H,
                                               T (&Xs)[TN][TK], T (&Ws)[TK][NUM_GATES][TJ], T (&acc)[NUM_GATES]) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n = blockIdx.y * TN + ty;
    const int j0 = blockIdx.x * TJ;
    const int ldW = NUM_GATES * H;
    for (int k0 = 0; k0 < K; k0 += TK) {
        Xs[ty][tx] = (n < N && k0 + tx < K) ? X[n * K + k0 + tx] : T(0);
        for (int r = ty; r < TK * NUM_GATES; r += TN) {  // TK rows of W x 4 gate blocks, TJ columns each
            const int k = r / NUM_GATES, g = r % NUM_GATES;
            Ws[k][g][tx] = (k0 + k < K && j0 + tx < H) ? W[(k0 + k) * ldW + g * H + j0 + tx] : T(0);
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < TK; ++k) {
            const T xv = Xs[ty][k];  // one row per warp: a broadcast
#pragma unroll
            for (int g = 0; g < NUM_GATES; ++g) acc[g] += xv * Ws[k][g][tx];
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------- version 1
// mask may be null. H_out, C must not alias H_prev, C_prev.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
lstm_forward_kernel1(const T* __restrict__ Ax, const T* __restrict__ Ah, const T* __restrict__ mask,
                     const T* __restrict__ H_prev, const T* __restrict__ C_prev, T* __restrict__ gates,
                     T* __restrict__ C, T* __restrict__ tanh_C, T* __restrict__ H_out, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * NUM_GATES * H + j;  // A[n, j] of gate block 0
    T A[NUM_GATES];
#pragma unroll
    for (int g = 0; g < NUM_GATES; ++g) A[g] = Ax[a + g * H] + Ah[a + g * H];  // A = X W_x + b + H_prev W_h
    T c, h;
    const Saved<T> s = cell_forward(A[GATE_I], A[GATE_F], A[GATE_G], A[GATE_O], C_prev[e], &c, &h);
    store_saved(s, gates, tanh_C, n, j, H);
    const bool real = is_real(mask, n);
    C[e] = real ? c : C_prev[e];          // a masked row keeps (H, C) of the step before
    H_out[e] = real ? h : H_prev[e];
}

// dH_direct, dY, mask may be null; dH_direct_out is null exactly when mask is. dH_t = dH + dH_direct + dY.
// A real row writes dA, dC_prev and dH_direct_out = 0; a masked row writes dA = 0, dC_prev = dC and
// dH_direct_out = dH_t. dC_prev may alias dC and dH_direct_out dH_direct (each element is read before written).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
lstm_backward_kernel1(const T* __restrict__ dH, const T* dH_direct, const T* __restrict__ dY, const T* dC,
                      const T* __restrict__ mask, const T* __restrict__ gates, const T* __restrict__ tanh_C,
                      const T* __restrict__ C_prev, T* __restrict__ dA, T* dC_prev, T* dH_direct_out, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    T dH_t = dH[e];                        // dH_t = dY_t + dH coming back from t+1
    if (dH_direct) dH_t += dH_direct[e];
    if (dY) dH_t += dY[e];
    T d[NUM_GATES] = {T(0), T(0), T(0), T(0)};
    if (is_real(mask, n)) {
        cell_backward(dH_t, dC[e], load_saved(gates, tanh_C, n, j, H), C_prev[e],
                      &d[GATE_I], &d[GATE_F], &d[GATE_G], &d[GATE_O], &dC_prev[e]);
        if (dH_direct_out) dH_direct_out[e] = T(0);
    } else {                               // forward: H, C = H_prev, C_prev  ->  the gradients pass through
        dC_prev[e] = dC[e];
        dH_direct_out[e] = dH_t;
    }
    const int a = n * NUM_GATES * H + j;
#pragma unroll
    for (int g = 0; g < NUM_GATES; ++g) dA[a + g * H] = d[g];
}

// ---------------------------------------------------------------------------------------------- version 2
// Ax (N, 4H) = X W_x + b of this step, or null: then the kernel computes X W_x + b from x, W_x and b.
// mask may be null. Grid (ceil(H / TJ), ceil(N / TN)), block (TJ, TN). H_out, C must not alias H_prev, C_prev.
template <typename T>
__global__ void __launch_bounds__(TJ * TN, MIN_BLOCKS2)
lstm_forward_kernel2(const T* __restrict__ Ax, const T* __restrict__ x, const T* __restrict__ W_x,
                     const T* __restrict__ b, const T* __restrict__ mask, const T* __restrict__ H_prev,
                     const T* __restrict__ W_h, const T* __restrict__ C_prev, T* __restrict__ gates,
                     T* __restrict__ C, T* __restrict__ tanh_C, T* __restrict__ H_out, int N, int D, int H) {
    __shared__ T Xs[TN][TK];
    __shared__ T Ws[TK][NUM_GATES][TJ];
    const int n = blockIdx.y * TN + threadIdx.y;
    const int j = blockIdx.x * TJ + threadIdx.x;
    const bool live = n < N && j < H;
    const int a = live ? n * NUM_GATES * H + j : 0;  // rows past N of the last tile: no index formed (int range)
    T acc[NUM_GATES];
    if (Ax != nullptr) {  // the same branch for the whole grid: the barriers below stay uniform
#pragma unroll
        for (int g = 0; g < NUM_GATES; ++g) acc[g] = live ? Ax[a + g * H] : T(0);
    } else {
#pragma unroll
        for (int g = 0; g < NUM_GATES; ++g) acc[g] = live ? b[g * H + j] : T(0);
        accumulate_gate_product(x, W_x, N, D, H, Xs, Ws, acc);       // + X W_x
    }
    accumulate_gate_product(H_prev, W_h, N, H, H, Xs, Ws, acc);      // + H_prev W_h
    if (live) {
        const int e = n * H + j;
        T c, h;
        const Saved<T> s = cell_forward(acc[GATE_I], acc[GATE_F], acc[GATE_G], acc[GATE_O], C_prev[e], &c, &h);
        store_saved(s, gates, tanh_C, n, j, H);
        const bool real = is_real(mask, n);
        C[e] = real ? c : C_prev[e];      // a masked row keeps (H, C) of the step before
        H_out[e] = real ? h : H_prev[e];
    }
}

// dY, mask may be null. W_x, dx may be null (a sequence step: dX for all steps is one product after the loop);
// with them, the grid has ceil(D / TJ) more column tiles, which compute dx = dA W_xᵀ. A masked row gets dA = 0,
// dC_prev = dC and dH_prev = dH_t. Grid (ceil(H / TJ) [+ ceil(D / TJ)], ceil(N / TN)), block (TJ, TN).
// dH_prev, dC_prev must not alias dH, dC.
template <typename T>
__global__ void __launch_bounds__(TJ * TN, MIN_BLOCKS2)
lstm_backward_kernel2(const T* __restrict__ dH, const T* __restrict__ dY, const T* __restrict__ dC,
                      const T* __restrict__ mask, const T* __restrict__ gates, const T* __restrict__ tanh_C,
                      const T* __restrict__ C_prev, const T* __restrict__ W_h, const T* __restrict__ W_x,
                      T* __restrict__ dA, T* __restrict__ dC_prev, T* __restrict__ dH_prev, T* __restrict__ dx,
                      int N, int D, int H) {
    __shared__ T dAs[TN][NUM_GATES][TJ];
    __shared__ T Ws[TJ][NUM_GATES * TJ + 1];  // +1: row stride 129 words, so a warp reading a column hits 32 banks
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n = blockIdx.y * TN + ty;
    const bool real = n < N && is_real(mask, n);
    const int tiles_h = (H + TJ - 1) / TJ;
    const bool to_dx = (int)blockIdx.x >= tiles_h;            // uniform per block
    const T* W = to_dx ? W_x : W_h;                           // (K_out, 4H)
    T* out = to_dx ? dx : dH_prev;                            // (N, K_out)
    const int K_out = to_dx ? D : H;
    const int k0 = (to_dx ? blockIdx.x - tiles_h : blockIdx.x) * TJ;
    const bool writer = blockIdx.x == 0;                      // column tile 0 also writes dA and dC_prev
    const int ldW = NUM_GATES * H;
    T acc = T(0);
    for (int j0 = 0; j0 < H; j0 += TJ) {
        const int j = j0 + tx;
        if (n < N && j < H) {
            const int e = n * H + j;
            T d[NUM_GATES] = {T(0), T(0), T(0), T(0)};
            T dcp;
            if (real) {
                const T dH_t = dY ? dH[e] + dY[e] : dH[e];    // dH_t = dY_t + dH coming back from t+1
                cell_backward(dH_t, dC[e], load_saved(gates, tanh_C, n, j, H), C_prev[e],
                              &d[GATE_I], &d[GATE_F], &d[GATE_G], &d[GATE_O], &dcp);
            } else {
                dcp = dC[e];                                  // forward: C = C_prev  ->  dC_prev = dC
            }
            const int a = n * NUM_GATES * H + j;
#pragma unroll
            for (int g = 0; g < NUM_GATES; ++g) {
                dAs[ty][g][tx] = d[g];
                if (writer) dA[a + g * H] = d[g];
            }
            if (writer) dC_prev[e] = dcp;
        } else {
#pragma unroll
            for (int g = 0; g < NUM_GATES; ++g) dAs[ty][g][tx] = T(0);
        }
        for (int r = ty; r < TJ * NUM_GATES; r += TN) {       // W rows k0 .. k0+TJ, columns g H + j0 .. + TJ
            const int kk = r / NUM_GATES, g = r % NUM_GATES;
            Ws[kk][g * TJ + tx] = (k0 + kk < K_out && j0 + tx < H) ? W[(k0 + kk) * ldW + g * H + j0 + tx] : T(0);
        }
        __syncthreads();
        // forward: A = X W_x + H_prev W_h + b  ->  dH_prev[n, k] = sum_{g, j} dA[n, g H + j] W_h[k, g H + j] (dx with W_x)
#pragma unroll
        for (int g = 0; g < NUM_GATES; ++g) {
#pragma unroll 8
            for (int jj = 0; jj < TJ; ++jj) acc += dAs[ty][g][jj] * Ws[tx][g * TJ + jj];
        }
        __syncthreads();
    }
    const int k = k0 + tx;
    if (n < N && k < K_out) {
        if (real || to_dx) {
            out[n * K_out + k] = acc;
        } else {                                              // forward: H = H_prev  ->  dH_prev = dH_t
            const int e = n * H + k;
            out[e] = dY ? dH[e] + dY[e] : dH[e];
        }
    }
}

}  // namespace npylstm

#if !defined(__CUDACC_RTC__)
// nvcc (CI's sm_90 compile check) has no name_expressions: taking every kernel's address instantiates it.
// NVRTC (the loader) instantiates them through name_expressions instead; gpu.NAME_EXPRESSIONS lists the same.
template <typename T>
void* const* npylstm_all_kernels() {
    static void* const k[] = {
        (void*)&npylstm::lstm_forward_kernel1<T>, (void*)&npylstm::lstm_backward_kernel1<T>,
        (void*)&npylstm::lstm_forward_kernel2<T>, (void*)&npylstm::lstm_backward_kernel2<T>,
    };
    return k;
}
template void* const* npylstm_all_kernels<float>();
template void* const* npylstm_all_kernels<double>();
#endif
