"""`LSTM`: parameters, L stacked sequences, batch_first, stateful state, interop.

A thin class over the functional core (sequence.py). What every recurrent layer does -- validate
arguments once, convert the layout (batch_first, unbatched input) to time-major, run the layers, keep
what backward needs, carry the state, accumulate gradients into `grads` -- is written once in
recurrent.py (shared with the GRU); this file says what is the LSTM's: two state tensors (h, c),
the parameters and their init, and the sequence backends (sequence.py on the CPU, gpu.py's kernels
with device="cuda").

    y, (h_n, c_n) = lstm(x, state=None, mask=None)
    dx, (dh0, dc0) = lstm.backward(dy, dstate=None)

Shapes: x (T, N, D), or (N, T, D) with batch_first, or (T, D) unbatched; y likewise with H features;
states (L, N, H) whatever batch_first is ((L, H) for unbatched input), as in PyTorch.

Stateful mode (Keras `stateful=True`): with state=None, every call starts from the (h, c) the
previous call ended with (zeros at first and after `reset_states()`); the batch size is locked by the
first call. Gradients stop at the call boundary (truncated BPTT): backward returns dh0, dc0 for the
carried state but nothing flows into the calls before.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import gpu
from . import sequence
from .checks import check_real
from .recurrent import Recurrent

State = Tuple[np.ndarray, np.ndarray]


def param_names(layer: int) -> tuple[str, str, str]:
    """Keys of layer `layer`'s parameters in `LSTM.params` (the PyTorch suffix style: _l0, _l1, ...)."""
    return f"W_x_l{layer}", f"W_h_l{layer}", f"b_l{layer}"


class LSTM(Recurrent):
    """A stack of L LSTM layers over a sequence, with hand-written BPTT (PyTorch's nn.LSTM, as NumPy).

        y, (h_n, c_n) = lstm(x, state=None, mask=None)
        dx, (dh0, dc0) = lstm.backward(dy, dstate=None)       # adds the parameter gradients to grads

    Each layer k (input X: x for k = 0, the layer below's output after), gate blocks [ i | f | g | o ]:

        A_t = X_t W_x + H_{t-1} W_h + b     I, F, O = σ(A_i), σ(A_f), σ(A_o)     C̃ = tanh(A_g)
        C_t = F ⊙ C_{t-1} + I ⊙ C̃           H_t = O ⊙ tanh(C_t)                  y = H of the top layer

    Shapes: x (T, N, D), or (N, T, D) with batch_first, or (T, D) unbatched; y likewise with H
    features; h0, c0, h_n, c_n (L, N, H) whatever batch_first is ((L, H) for unbatched input).

    Parameters, in `params` (and `grads`, the same keys): W_x_l{k} (D, 4H) (H for k > 0),
    W_h_l{k} (H, 4H), b_l{k} (4H,).

    input_size, hidden_size, num_layers : D, H, L (positive ints)
    batch_first : x and y are (N, T, ·) instead of (T, N, ·); states keep (L, N, H)
    dtype       : float32 or float64, for parameters and every computation
    seed        : None or a non-negative int for the initial weights (PyTorch's init: U(±1/√H))
    forget_bias : added to the F block of every bias at init (Keras's unit_forget_bias is 1.0)
    stateful    : Keras's stateful=True: a call without a state continues from the previous call's
                  final state (truncated BPTT); see reset_states and `state`
    device      : 'cpu', 'cuda' or 'cuda:N' (the CUDA kernels through CuPy); kernel: their version

    Interop: npylstm.from_torch / from_keras build one; to_torch_state_dict / to_keras export.
    state_dict / load_state_dict, copy.deepcopy and pickle work as in PyTorch.
    """
    name = "LSTM"
    state_names = ("h", "c")
    state_arg, dstate_arg = "state", "dstate"
    _numpy_backend = sequence
    cuda_backend = gpu.Backend           # kernel version -> sequence.py's contract on the GPU (gpu.py)
    _kernels = gpu

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, forget_bias: float = 0.0,
                 stateful: bool = False, device: str = "cpu", kernel: Optional[int] = None):
        self.forget_bias = check_real("LSTM", "forget_bias", forget_bias)
        super().__init__(input_size, hidden_size, num_layers, batch_first, dtype, seed, stateful, device, kernel)

    def _init_params(self, rng):
        # PyTorch's init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)); forget_bias added to the F block.
        H = self.hidden_size
        k = 1.0 / np.sqrt(H)
        params = {}
        for layer in range(self.num_layers):
            D = self.input_size if layer == 0 else H
            n_x, n_h, n_b = param_names(layer)
            params[n_x] = rng.uniform(-k, k, (D, 4 * H)).astype(self.dtype)
            params[n_h] = rng.uniform(-k, k, (H, 4 * H)).astype(self.dtype)
            b = rng.uniform(-k, k, 4 * H)
            b[H:2 * H] += self.forget_bias
            params[n_b] = b.astype(self.dtype)
        return params

    def _param_names(self, layer):
        return param_names(layer)

    def _run_forward(self, inp, states, params, mask, work):
        Y, h_T, c_T, cache = self._backend.sequence_forward(inp, *states, *params, mask, work=work)
        return Y, (h_T, c_T), cache

    def _run_backward(self, dY, dstates, cache, work):
        dx, dh0, dc0, *dparams = self._backend.sequence_backward(dY, *dstates, cache, work=work)
        return dx, (dh0, dc0), dparams

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x: ArrayLike, state: Optional[State] = None,
                 mask: Optional[ArrayLike] = None) -> tuple[np.ndarray, State]:
        """Same as forward."""
        return self.forward(x, state, mask)

    def forward(self, x: ArrayLike, state: Optional[State] = None,
                mask: Optional[ArrayLike] = None) -> tuple[np.ndarray, State]:
        """y, (h_n, c_n) = forward(x, state=(h0, c0) or None, mask=None).

        x    : (T, N, D), (N, T, D) with batch_first, or (T, D)  ->  y : the same with H features
        state: (h0, c0), each (L, N, H) ((L, H) unbatched), or None: zeros, or in stateful mode the
               carried state
        mask : booleans shaped like x without its feature axis ((T, N), (N, T) with batch_first);
               False marks padding: that step leaves the state unchanged and its output repeats H_{t-1}.
        Keeps what backward needs. On a CUDA layer the outputs are CuPy arrays.
        """
        return self._forward(x, state, mask)

    def backward(self, dy: ArrayLike, dstate: Optional[State] = None) -> tuple[np.ndarray, State]:
        """dx, (dh0, dc0) = backward(dy, dstate=(dh_n, dc_n) or None); adds the parameter gradients to grads.

        dy has y's shape; dstate the shapes of (h_n, c_n) (None: zeros). Backpropagates through the
        last forward call; dx has x's shape.
        """
        return self._backward(dy, dstate)
