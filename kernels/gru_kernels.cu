// npylstm: the GRU cell as CUDA kernels, compiled at run time through CuPy (NVRTC) by npylstm/gru_gpu.py.
//
// The gate math is in gru_gates.cuh (the loader splices it in, and lstm_gates.cuh with it for the activations);
// this file only moves data. Every kernel is templated on the element type and compiled for float and double.
// Row-major arrays, row-vector convention, column blocks [ r | z | n ]: A_x, A_h (N, 3H), the saved gates (N, 3H)
// hold [ R | Z | H_tilde ], states (N, H). Sizes come in as int.
//
// Indices are 32-bit int: npylstm/gpu.py's check_sizes (called by gru_gpu.py) refuses sizes where an array one
// launch indexes has 2^31 elements or more.
//
// Masks, as in lstm_kernels.cu: `mask` (N,) holds 1 for a real step of row n and 0 for padding, in the data type,
// or is null. Forward, a masked row keeps H_prev (its gates are still written, and never read). Backward, a
// masked row writes dA = 0 and passes dH_t through as the direct part of dH_prev (the products' row is 0). So a
// mask costs no launch of its own.
//
// Version 1 (gru_forward_kernel1, gru_backward_kernel1; gru_forward_rz_kernel1, gru_forward_n_kernel1,
// gru_backward_n_kernel1, gru_backward_rz_kernel1 for reset_after=false): only the pointwise part of a step is
// fused; the matrix products are cuBLAS calls made by CuPy into buffers kept for the whole sequence. One thread
// per element (n, j). The input products X_t W_x + b_x of all steps are one cuBLAS call before the loop, the
// weight gradients one each after it.
//   reset_after=true, forward: CuPy computes A_h = H_prev W_h; gru_forward_kernel1 adds b_h and writes R, Z,
//   H_tilde, A_h,n (saved for backward) and H. Backward: gru_backward_kernel1 writes dA_x = [dA_r | dA_z | dA_n],
//   dA_h = [dA_r | dA_z | dA_n ⊙ R] and the direct part dH ⊙ Z of dH_prev; CuPy computes dA_h W_hᵀ, the rest of
//   dH_prev. Two launches per step each way.
//   reset_after=false: the product (R ⊙ H_prev) W_h,n sits between R and H_tilde, so a step is two pointwise
//   kernels around it. Forward: CuPy computes H_prev W_h,rz; gru_forward_rz_kernel1 writes R, Z and RH = R ⊙ H_prev;
//   CuPy computes RH W_h,n; gru_forward_n_kernel1 writes H_tilde and H. Backward: gru_backward_n_kernel1 writes
//   dA_z, dA_n and dH ⊙ Z; CuPy computes dRH = dA_n W_h,nᵀ; gru_backward_rz_kernel1 writes dA_r and adds dRH ⊙ R;
//   CuPy computes dA_rz W_h,rzᵀ. Four launches per step each way.
// The direct part of dH_prev is not added to the product here: the next (earlier) step's backward kernel reads
// both (dH_t = products + direct + dY_t), which saves one launch per step.

#include "gru_gates.cuh"

namespace npylstm {

constexpr int THREADS1 = 256;  // version 1: threads per block

// The element (n, j) of one thread in a launch of ceil(N·H / THREADS1) blocks, or -1 past the end.
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

// dH_t = dH (from the products of step t+1) + dH_direct (from step t+1, may be null) + dY (may be null)
template <typename T>
__device__ inline T gradient_on_H(const T* dH, const T* dH_direct, const T* dY, int e) {
    T d = dH[e];
    if (dH_direct) d += dH_direct[e];
    if (dY) d += dY[e];
    return d;
}

// ---------------------------------------------------------------------------------------------- reset_after=true
// Ax (N, 3H) = X W_x + b_x of this step, Ah (N, 3H) = H_prev W_h (no bias: b_h is added here); mask may be null.
// Writes gates (N, 3H), A_hn (N, H) = H_prev W_h,n + b_h,n and H_out (N, H), which must not alias H_prev.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_kernel1(const T* __restrict__ Ax, const T* __restrict__ Ah, const T* __restrict__ b_h,
                    const T* __restrict__ mask, const T* __restrict__ H_prev, T* __restrict__ gates,
                    T* __restrict__ A_hn, T* __restrict__ H_out, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;                      // column j of gate block 0 in row n
    const T A_hr = Ah[a + GRU_R * H] + b_h[GRU_R * H + j];        // A_h = H_prev W_h + b_h
    const T A_hz = Ah[a + GRU_Z * H] + b_h[GRU_Z * H + j];
    const T A_hn_e = Ah[a + GRU_N * H] + b_h[GRU_N * H + j];
    T h;
    gru_forward_after(Ax[a + GRU_R * H], Ax[a + GRU_Z * H], Ax[a + GRU_N * H], A_hr, A_hz, A_hn_e, H_prev[e],
                      &gates[a + GRU_R * H], &gates[a + GRU_Z * H], &gates[a + GRU_N * H], &h);
    A_hn[e] = A_hn_e;
    H_out[e] = is_real(mask, n) ? h : H_prev[e];              // a masked row keeps H of the step before
}

// dH_direct, dY, mask may be null; dH_direct_out may alias dH_direct (each element is read before it is written).
// Writes dA_x, dA_h (N, 3H) and dH_direct_out = dH_t ⊙ Z (N, H); a masked row: dA_x = dA_h = 0, dH_direct_out = dH_t.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_kernel1(const T* __restrict__ dH, const T* dH_direct, const T* __restrict__ dY,
                     const T* __restrict__ mask, const T* __restrict__ gates, const T* __restrict__ A_hn,
                     const T* __restrict__ H_prev, T* __restrict__ dA_x, T* __restrict__ dA_h, T* dH_direct_out,
                     int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;
    const T dH_t = gradient_on_H(dH, dH_direct, dY, e);
    T dA_r = T(0), dA_z = T(0), dA_n = T(0), dA_hn = T(0), direct = dH_t;   // a masked row: dH_t passes through
    if (is_real(mask, n))
        gru_backward_after(dH_t, gates[a + GRU_R * H], gates[a + GRU_Z * H], gates[a + GRU_N * H], H_prev[e], A_hn[e],
                           &dA_r, &dA_z, &dA_n, &dA_hn, &direct);
    dA_x[a + GRU_R * H] = dA_r;
    dA_x[a + GRU_Z * H] = dA_z;
    dA_x[a + GRU_N * H] = dA_n;
    dA_h[a + GRU_R * H] = dA_r;   // forward: A_r = A_x,r + A_h,r  ->  both get dA_r (z likewise)
    dA_h[a + GRU_Z * H] = dA_z;
    dA_h[a + GRU_N * H] = dA_hn;
    dH_direct_out[e] = direct;
}

// ---------------------------------------------------------------------------------------------- reset_after=false
// Ax (N, 3H) = X W_x + b_x + b_h of this step, Ah_rz (N, 2H) = H_prev W_h,rz. Writes the R, Z blocks of gates and
// RH (N, H) = R ⊙ H_prev, the left factor of the product CuPy makes next (masked rows too: their H is set later).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_rz_kernel1(const T* __restrict__ Ax, const T* __restrict__ Ah_rz, const T* __restrict__ H_prev,
                       T* __restrict__ gates, T* __restrict__ RH, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;
    const int r = n * 2 * H + j;                                  // Ah_rz has two blocks, [ r | z ]
    gru_forward_reset(Ax[a + GRU_R * H] + Ah_rz[r], Ax[a + GRU_Z * H] + Ah_rz[r + H], H_prev[e],
                      &gates[a + GRU_R * H], &gates[a + GRU_Z * H], &RH[e]);
}

// P (N, H) = RH W_h,n; mask may be null. Reads Z from gates; writes the H_tilde block of gates and H_out (must not
// alias H_prev).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_n_kernel1(const T* __restrict__ Ax, const T* __restrict__ P, const T* __restrict__ mask,
                      const T* __restrict__ H_prev, T* __restrict__ gates, T* __restrict__ H_out, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;
    T h;
    gru_forward_candidate(Ax[a + GRU_N * H] + P[e], gates[a + GRU_Z * H], H_prev[e], &gates[a + GRU_N * H], &h);
    H_out[e] = is_real(mask, n) ? h : H_prev[e];              // a masked row keeps H of the step before
}

// dH_direct, dY, mask may be null; dH_direct_out may alias dH_direct. Writes the z block of dA_rz (N, 2H), dA_n (N, H)
// and dH_direct_out = dH_t ⊙ Z; a masked row: dA_z = dA_n = 0, dH_direct_out = dH_t.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_n_kernel1(const T* __restrict__ dH, const T* dH_direct, const T* __restrict__ dY,
                       const T* __restrict__ mask, const T* __restrict__ gates, const T* __restrict__ H_prev,
                       T* __restrict__ dA_rz, T* __restrict__ dA_n, T* dH_direct_out, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;
    const T dH_t = gradient_on_H(dH, dH_direct, dY, e);
    T dA_z = T(0), dA_n_e = T(0), direct = dH_t;                   // a masked row: dH_t passes through
    if (is_real(mask, n))
        gru_backward_update(dH_t, gates[a + GRU_Z * H], H_prev[e], gates[a + GRU_N * H], &dA_z, &dA_n_e, &direct);
    dA_rz[n * 2 * H + H + j] = dA_z;
    dA_n[e] = dA_n_e;
    dH_direct_out[e] = direct;
}

// dRH (N, H) = dA_n W_h,nᵀ; mask may be null. Writes the r block of dA_rz and adds dRH ⊙ R to dH_direct (N, H);
// a masked row (its dA_n, so its dRH, is 0) writes dA_r = 0 and leaves dH_direct as it is.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_rz_kernel1(const T* __restrict__ dRH, const T* __restrict__ mask, const T* __restrict__ gates,
                        const T* __restrict__ H_prev, T* __restrict__ dA_rz, T* __restrict__ dH_direct, int N, int H) {
    const int e = element_index(N * H);
    if (e < 0) return;
    const int n = e / H, j = e % H;
    const int a = n * GRU_NUM_GATES * H + j;
    T dA_r = T(0);
    if (is_real(mask, n)) gru_backward_reset(dRH[e], gates[a + GRU_R * H], H_prev[e], &dA_r, &dH_direct[e]);
    dA_rz[n * 2 * H + j] = dA_r;
}

}  // namespace npylstm

#if !defined(__CUDACC_RTC__)
// nvcc (CI's sm_90 compile check) has no name_expressions: taking every kernel's address instantiates it.
// NVRTC (the loader) instantiates them through name_expressions instead; gru_gpu.NAME_EXPRESSIONS lists the same.
template <typename T>
void* const* npylstm_all_gru_kernels() {
    static void* const k[] = {
        (void*)&npylstm::gru_forward_kernel1<T>, (void*)&npylstm::gru_backward_kernel1<T>,
        (void*)&npylstm::gru_forward_rz_kernel1<T>, (void*)&npylstm::gru_forward_n_kernel1<T>,
        (void*)&npylstm::gru_backward_n_kernel1<T>, (void*)&npylstm::gru_backward_rz_kernel1<T>,
    };
    return k;
}
template void* const* npylstm_all_gru_kernels<float>();
template void* const* npylstm_all_gru_kernels<double>();
#endif
