// npylstm: the LSTM gate math, the one place the equations live in CUDA.
//
// Every kernel in lstm_kernels.cu calls these functions; with a small shim that defines __host__ and
// __device__ away (tests/test_kernels_cpu.py) the same header compiles as plain C++, so CI checks the
// kernel arithmetic against NumPy without a GPU. Same symbols as npylstm/cell.py and the README:
//
//     A   = X W_x + H_prev W_h + b          (N, 4H), column blocks [ i | f | g | o ]
//     I   = sigmoid(A_i)   F = sigmoid(A_f)   C_tilde = tanh(A_g)   O = sigmoid(A_o)
//     C   = F * C_prev + I * C_tilde
//     H   = O * tanh(C)
//
// sigmoid(a) = 0.5 + 0.5 tanh(a / 2): equal to 1 / (1 + exp(-a)), and it never overflows (exp(1e4) would).
#pragma once

namespace npylstm {

// The gate order, i f g o: the column block of gate k in A, W_x, W_h, b and the saved gates is [k H, (k+1) H).
enum Gate : int { GATE_I = 0, GATE_F = 1, GATE_G = 2, GATE_O = 3, NUM_GATES = 4 };

__host__ __device__ inline float tanh_t(float a) { return tanhf(a); }
__host__ __device__ inline double tanh_t(double a) { return tanh(a); }

template <typename T>
__host__ __device__ inline T sigmoid(T a) {
    return T(0.5) + T(0.5) * tanh_t(T(0.5) * a);
}

// What one (n, j) element of a step saves for backward: the four gates and tanh(C).
template <typename T>
struct Saved {
    T I, F, C_tilde, O, tanh_C;
};

// Forward of one element: the four pre-activations of (n, j) and C_prev -> the gates, C and H.
template <typename T>
__host__ __device__ inline Saved<T> cell_forward(T A_i, T A_f, T A_g, T A_o, T C_prev, T* C, T* H) {
    Saved<T> s;
    s.I = sigmoid(A_i);                    // I = σ(A_i)
    s.F = sigmoid(A_f);                    // F = σ(A_f)
    s.C_tilde = tanh_t(A_g);               // C̃ = tanh(A_g)
    s.O = sigmoid(A_o);                    // O = σ(A_o)
    *C = s.F * C_prev + s.I * s.C_tilde;   // C = F ⊙ C_prev + I ⊙ C̃
    s.tanh_C = tanh_t(*C);
    *H = s.O * s.tanh_C;                   // H = O ⊙ tanh(C)
    return s;
}

// Backward of one element. dH: gradient on H_t (output plus what came back from t+1); dC: gradient on C_t
// from t+1. Writes the four d pre-activations and dC_prev.
template <typename T>
__host__ __device__ inline void cell_backward(T dH, T dC, const Saved<T>& s, T C_prev,
                                              T* dA_i, T* dA_f, T* dA_g, T* dA_o, T* dC_prev) {
    // forward: H = O * tanh(C)           ->  dO = dH * tanh(C),  dC += dH * O * (1 - tanh²(C))
    const T dO = dH * s.tanh_C;
    dC = dC + dH * s.O * (T(1) - s.tanh_C * s.tanh_C);
    // forward: C = F*C_prev + I*C_tilde  ->  dI = dC*C_tilde, dF = dC*C_prev, dC_tilde = dC*I, dC_prev = dC*F
    const T dI = dC * s.C_tilde;
    const T dF = dC * C_prev;
    const T dC_tilde = dC * s.I;
    *dC_prev = dC * s.F;
    // forward: I, F, O = σ(A_i, A_f, A_o) ->  dA = d(gate) * gate * (1 - gate)
    *dA_i = dI * s.I * (T(1) - s.I);
    *dA_f = dF * s.F * (T(1) - s.F);
    *dA_o = dO * s.O * (T(1) - s.O);
    // forward: C_tilde = tanh(A_g)       ->  dA_g = dC_tilde * (1 - C_tilde²)
    *dA_g = dC_tilde * (T(1) - s.C_tilde * s.C_tilde);
}

// Saved values of element (n, j) from the (N, 4H) gate array and the (N, H) tanh(C) array.
template <typename T>
__host__ __device__ inline Saved<T> load_saved(const T* gates, const T* tanh_C, int n, int j, int H) {
    const T* g = gates + n * NUM_GATES * H + j;  // int: gpu.check_sizes keeps N·4H < 2^31
    Saved<T> s;
    s.I = g[GATE_I * H];
    s.F = g[GATE_F * H];
    s.C_tilde = g[GATE_G * H];
    s.O = g[GATE_O * H];
    s.tanh_C = tanh_C[n * H + j];
    return s;
}

template <typename T>
__host__ __device__ inline void store_saved(const Saved<T>& s, T* gates, T* tanh_C, int n, int j, int H) {
    T* g = gates + n * NUM_GATES * H + j;
    g[GATE_I * H] = s.I;
    g[GATE_F * H] = s.F;
    g[GATE_G * H] = s.C_tilde;
    g[GATE_O * H] = s.O;
    tanh_C[n * H + j] = s.tanh_C;
}

}  // namespace npylstm
