// npylstm: the GRU cell as CUDA kernels, compiled at run time through CuPy (NVRTC) by npylstm/gru_gpu.py.
//
// The gate math is in gru_gates.cuh (the loader splices it in, and lstm_gates.cuh with it for the activations);
// this file only moves data. Every kernel is templated on the element type and compiled for float and double.
// Row-major arrays, row-vector convention, column blocks [ r | z | n ]: A_x, A_h (N, 3H), the saved gates (N, 3H)
// hold [ R | Z | H_tilde ], states (N, H). Sizes come in as int.
//
// Version 1 (gru_forward_kernel1, gru_backward_kernel1; gru_forward_rz_kernel1, gru_forward_n_kernel1,
// gru_backward_n_kernel1, gru_backward_rz_kernel1 for reset_after=false): only the pointwise part of a step is fused; the matrix products are cuBLAS calls made by CuPy. One
// thread per element (n, j), grid-stride loop. The input products X_t W_x + b_x of all steps are one cuBLAS call
// before the loop, the weight gradients one each after it.
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

#define NPYLSTM_FOR_EACH_ELEMENT(e, NH)                                                                          \
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < (NH); e += (long long)gridDim.x * blockDim.x)

// dH_t = dH (from the products of step t+1) + dH_direct (from step t+1, may be null) + dY (may be null)
template <typename T>
__device__ inline T gradient_on_H(const T* dH, const T* dH_direct, const T* dY, long long e) {
    T d = dH[e];
    if (dH_direct) d += dH_direct[e];
    if (dY) d += dY[e];
    return d;
}

// ---------------------------------------------------------------------------------------------- reset_after=true
// Ax (N, 3H) = X W_x + b_x of this step, Ah (N, 3H) = H_prev W_h (no bias: b_h is added here).
// Writes gates (N, 3H), A_hn (N, H) = H_prev W_h,n + b_h,n and H_out (N, H), which must not alias H_prev.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_kernel1(const T* __restrict__ Ax, const T* __restrict__ Ah, const T* __restrict__ b_h,
                    const T* __restrict__ H_prev, T* __restrict__ gates, T* __restrict__ A_hn, T* __restrict__ H_out,
                    int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;  // column j of gate block 0 in row n
        const T A_hr = Ah[a + GRU_R * H] + b_h[GRU_R * H + j];    // A_h = H_prev W_h + b_h
        const T A_hz = Ah[a + GRU_Z * H] + b_h[GRU_Z * H + j];
        const T A_hn_e = Ah[a + GRU_N * H] + b_h[GRU_N * H + j];
        gru_forward_after(Ax[a + GRU_R * H], Ax[a + GRU_Z * H], Ax[a + GRU_N * H], A_hr, A_hz, A_hn_e, H_prev[e],
                          &gates[a + GRU_R * H], &gates[a + GRU_Z * H], &gates[a + GRU_N * H], &H_out[e]);
        A_hn[e] = A_hn_e;
    }
}

// dH_direct, dY may be null; dH_direct_out may alias dH_direct (each element is read before it is written).
// Writes dA_x, dA_h (N, 3H) and dH_direct_out = dH_t ⊙ Z (N, H).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_kernel1(const T* __restrict__ dH, const T* dH_direct, const T* __restrict__ dY,
                     const T* __restrict__ gates, const T* __restrict__ A_hn, const T* __restrict__ H_prev,
                     T* __restrict__ dA_x, T* __restrict__ dA_h, T* dH_direct_out, int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;
        const T dH_t = gradient_on_H(dH, dH_direct, dY, e);
        T dA_r, dA_z, dA_n, dA_hn, direct;
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
}

// ---------------------------------------------------------------------------------------------- reset_after=false
// Ax (N, 3H) = X W_x + b_x + b_h of this step, Ah_rz (N, 2H) = H_prev W_h,rz. Writes the R, Z blocks of gates and
// RH (N, H) = R ⊙ H_prev, the left factor of the product CuPy makes next.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_rz_kernel1(const T* __restrict__ Ax, const T* __restrict__ Ah_rz, const T* __restrict__ H_prev,
                       T* __restrict__ gates, T* __restrict__ RH, int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;
        const long long r = (long long)n * 2 * H + j;             // Ah_rz has two blocks, [ r | z ]
        gru_forward_reset(Ax[a + GRU_R * H] + Ah_rz[r], Ax[a + GRU_Z * H] + Ah_rz[r + H], H_prev[e],
                          &gates[a + GRU_R * H], &gates[a + GRU_Z * H], &RH[e]);
    }
}

// P (N, H) = RH W_h,n. Reads Z from gates; writes the H_tilde block of gates and H_out (must not alias H_prev).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_forward_n_kernel1(const T* __restrict__ Ax, const T* __restrict__ P, const T* __restrict__ H_prev,
                      T* __restrict__ gates, T* __restrict__ H_out, int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;
        gru_forward_candidate(Ax[a + GRU_N * H] + P[e], gates[a + GRU_Z * H], H_prev[e], &gates[a + GRU_N * H],
                              &H_out[e]);
    }
}

// dH_direct, dY may be null; dH_direct_out may alias dH_direct. Writes the z block of dA_rz (N, 2H), dA_n (N, H)
// and dH_direct_out = dH_t ⊙ Z.
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_n_kernel1(const T* __restrict__ dH, const T* dH_direct, const T* __restrict__ dY,
                       const T* __restrict__ gates, const T* __restrict__ H_prev, T* __restrict__ dA_rz,
                       T* __restrict__ dA_n, T* dH_direct_out, int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;
        const T dH_t = gradient_on_H(dH, dH_direct, dY, e);
        T dA_z, direct;
        gru_backward_update(dH_t, gates[a + GRU_Z * H], H_prev[e], gates[a + GRU_N * H], &dA_z, &dA_n[e], &direct);
        dA_rz[(long long)n * 2 * H + H + j] = dA_z;
        dH_direct_out[e] = direct;
    }
}

// dRH (N, H) = dA_n W_h,nᵀ. Writes the r block of dA_rz and adds dRH ⊙ R to dH_direct (N, H).
template <typename T>
__global__ void __launch_bounds__(THREADS1)
gru_backward_rz_kernel1(const T* __restrict__ dRH, const T* __restrict__ gates, const T* __restrict__ H_prev,
                        T* __restrict__ dA_rz, T* __restrict__ dH_direct, int N, int H) {
    NPYLSTM_FOR_EACH_ELEMENT(e, (long long)N * H) {
        const int n = (int)(e / H), j = (int)(e % H);
        const long long a = (long long)n * GRU_NUM_GATES * H + j;
        gru_backward_reset(dRH[e], gates[a + GRU_R * H], H_prev[e], &dA_rz[(long long)n * 2 * H + j], &dH_direct[e]);
    }
}

#undef NPYLSTM_FOR_EACH_ELEMENT

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
