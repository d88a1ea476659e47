// npylstm: the GRU gate math, the one place the GRU equations live in CUDA.
//
// Every kernel in gru_kernels.cu calls these functions; with the shim of tests/test_kernels_cpu.py (__host__ and
// __device__ defined away) the header is plain C++, so CI checks the arithmetic against NumPy without a GPU.
// Same symbols as npylstm/gru_cell.py and the README, column blocks [ r | z | n ]:
//
//     A_x = X W_x + b_x                 A_h = H_prev W_h + b_h                    (N, 3H) each
//     R   = sigmoid(A_x,r + A_h,r)      Z   = sigmoid(A_x,z + A_h,z)
//     reset_after=true:   H_tilde = tanh(A_x,n + R * A_h,n)
//     reset_after=false:  H_tilde = tanh(A_x,n + (R * H_prev) W_h,n + b_h,n)
//     H   = Z * H_prev + (1 - Z) * H_tilde
//
// The activations (tanh_t, and sigmoid as 0.5 + 0.5 tanh(a / 2), which never overflows) are the LSTM's.
#pragma once

#include "lstm_gates.cuh"

namespace npylstm {

// The GRU gate order, r z n (PyTorch's): the column block of gate k in A_x, A_h, W_x, W_h, b_x, b_h and the saved
// gates [ R | Z | H_tilde ] is [k H, (k+1) H).
enum GRUGate : int { GRU_R = 0, GRU_Z = 1, GRU_N = 2, GRU_NUM_GATES = 3 };

// forward: H = Z * H_prev + (1 - Z) * H_tilde, computed as H_tilde + Z * (H_prev - H_tilde) (one multiply fewer).
template <typename T>
__host__ __device__ inline T gru_update(T Z, T H_prev, T H_tilde) {
    return H_tilde + Z * (H_prev - H_tilde);
}

// Forward of one element, reset_after=true. A_x* = X W_x + b_x and A_h* = H_prev W_h + b_h of (n, j), per gate.
// Writes R, Z, H_tilde and H.
template <typename T>
__host__ __device__ inline void gru_forward_after(T A_xr, T A_xz, T A_xn, T A_hr, T A_hz, T A_hn, T H_prev,
                                                  T* R, T* Z, T* H_tilde, T* H) {
    *R = sigmoid(A_xr + A_hr);               // R = σ(A_x,r + A_h,r)
    *Z = sigmoid(A_xz + A_hz);               // Z = σ(A_x,z + A_h,z)
    *H_tilde = tanh_t(A_xn + *R * A_hn);     // H̃ = tanh(A_x,n + R ⊙ A_h,n)
    *H = gru_update(*Z, H_prev, *H_tilde);   // H = Z ⊙ H_prev + (1 − Z) ⊙ H̃
}

// Forward, reset_after=false, first half (before the product (R ⊙ H_prev) W_h,n): A_r, A_z are the full
// pre-activations A_x,r + H_prev W_h,r (b_h is in A_x). Writes R, Z and RH = R ⊙ H_prev.
template <typename T>
__host__ __device__ inline void gru_forward_reset(T A_r, T A_z, T H_prev, T* R, T* Z, T* RH) {
    *R = sigmoid(A_r);                       // R = σ(A_r)
    *Z = sigmoid(A_z);                       // Z = σ(A_z)
    *RH = *R * H_prev;                       // RH = R ⊙ H_prev
}

// Forward, reset_after=false, second half: A_n = A_x,n + (R ⊙ H_prev) W_h,n (b_h,n is in A_x,n).
template <typename T>
__host__ __device__ inline void gru_forward_candidate(T A_n, T Z, T H_prev, T* H_tilde, T* H) {
    *H_tilde = tanh_t(A_n);                  // H̃ = tanh(A_n)
    *H = gru_update(Z, H_prev, *H_tilde);    // H = Z ⊙ H_prev + (1 − Z) ⊙ H̃
}

// Backward of the update, both variants. dH: gradient on H_t (output, plus what came back from t+1).
// Writes dA_z, dA_n (the gradient on tanh's argument) and the direct part of dH_prev.
template <typename T>
__host__ __device__ inline void gru_backward_update(T dH, T Z, T H_prev, T H_tilde, T* dA_z, T* dA_n, T* dH_prev) {
    // forward: H = Z*H_prev + (1-Z)*H_tilde  ->  dZ = dH*(H_prev - H_tilde), dH_tilde = dH*(1-Z), dH_prev = dH*Z
    const T dZ = dH * (H_prev - H_tilde);
    const T dH_tilde = dH * (T(1) - Z);
    *dH_prev = dH * Z;
    // forward: Z = σ(A_z)                    ->  dA_z = dZ * Z(1-Z)
    *dA_z = dZ * Z * (T(1) - Z);
    // forward: H_tilde = tanh(A_n)           ->  dA_n = dH_tilde * (1 - H_tilde²)
    *dA_n = dH_tilde * (T(1) - H_tilde * H_tilde);
}

// Backward of one element, reset_after=true. A_hn = H_prev W_h,n + b_h,n saved by the forward. Writes the three
// gradients on A_x (dA_r, dA_z, dA_n), the one on A_h,n (dA_hn; A_h,r and A_h,z get dA_r, dA_z) and the direct
// part of dH_prev (dH_prev = that + dA_h W_hᵀ).
template <typename T>
__host__ __device__ inline void gru_backward_after(T dH, T R, T Z, T H_tilde, T H_prev, T A_hn,
                                                   T* dA_r, T* dA_z, T* dA_n, T* dA_hn, T* dH_prev) {
    gru_backward_update(dH, Z, H_prev, H_tilde, dA_z, dA_n, dH_prev);
    // forward: A_n = A_x,n + R*A_h,n         ->  dR = dA_n*A_h,n, dA_h,n = dA_n*R
    const T dR = *dA_n * A_hn;
    *dA_hn = *dA_n * R;
    // forward: R = σ(A_r)                    ->  dA_r = dR * R(1-R)
    *dA_r = dR * R * (T(1) - R);
}

// Backward, reset_after=false, second half: dRH = dA_n W_h,nᵀ (the product between the two halves).
// Writes dA_r and adds dRH ⊙ R to the direct part of dH_prev.
template <typename T>
__host__ __device__ inline void gru_backward_reset(T dRH, T R, T H_prev, T* dA_r, T* dH_prev) {
    // forward: RH = R*H_prev                 ->  dR = dRH*H_prev, dH_prev += dRH*R
    const T dR = dRH * H_prev;
    *dH_prev += dRH * R;
    // forward: R = σ(A_r)                    ->  dA_r = dR * R(1-R)
    *dA_r = dR * R * (T(1) - R);
}

}  // namespace npylstm
