"""`GRU`: the GRU layer, with the LSTM's API (recurrent.py holds everything the two share).

    y, h_n = gru(x, h0=None, mask=None)
    dx, dh0 = gru.backward(dy, dh_n=None)

Parameters per layer k, PyTorch's gate order [ r | z | n ]: W_x_l{k} (D, 3H), W_h_l{k} (H, 3H),
b_x_l{k} (3H,), b_h_l{k} (3H,). reset_after=True is PyTorch's, cuDNN's and Keras's default GRU
(R multiplies H_prev W_h,n + b_h,n); reset_after=False is the original one (R multiplies H_prev
before the product). Shapes, batch_first, unbatched input, masks and stateful mode are the LSTM's.
device="cuda" (or `gru.to("cuda")`) runs the sequences on kernels/gru_kernels.cu (gru_gpu.py), as the LSTM does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import gru_gpu, gru_sequence
from .checks import check_bool
from .recurrent import Recurrent


def gru_param_names(layer: int) -> tuple[str, str, str, str]:
    """Keys of layer `layer`'s parameters in `GRU.params` (the PyTorch suffix style: _l0, _l1, ...)."""
    return f"W_x_l{layer}", f"W_h_l{layer}", f"b_x_l{layer}", f"b_h_l{layer}"


class GRU(Recurrent):
    """A stack of L GRU layers over a sequence, with hand-written BPTT (PyTorch's nn.GRU, as NumPy).

        y, h_n = gru(x, h0=None, mask=None)
        dx, dh0 = gru.backward(dy, dh_n=None)                 # adds the parameter gradients to grads

    Each layer k, gate blocks [ r | z | n ] (PyTorch's order; gru_cell.py has the same symbols):

        A_x = X W_x + b_x                 A_h = H_prev W_h + b_h           (N, 3H) each
        R = σ(A_x,r + A_h,r)              Z = σ(A_x,z + A_h,z)
        reset_after=True:   H̃ = tanh(A_x,n + R ⊙ A_h,n)
        reset_after=False:  H̃ = tanh(A_x,n + (R ⊙ H_prev) W_h,n + b_h,n)
        H = Z ⊙ H_prev + (1 − Z) ⊙ H̃                                       y = H of the top layer

    Shapes: x (T, N, D), or (N, T, D) with batch_first, or (T, D) unbatched; y likewise with H
    features; h0, h_n (L, N, H) whatever batch_first is ((L, H) for unbatched input).

    Parameters, in `params` (and `grads`): W_x_l{k} (D, 3H) (H for k > 0), W_h_l{k} (H, 3H),
    b_x_l{k} (3H,), b_h_l{k} (3H,).

    reset_after : True is PyTorch's, cuDNN's and Keras's default GRU; False the original one.
    The other arguments are the LSTM's (input_size, hidden_size, num_layers, batch_first, dtype, seed,
    stateful, device, kernel); there is no forget_bias.
    """
    name = "GRU"
    state_names = ("h",)
    state_arg, dstate_arg = "h0", "dh_n"
    _numpy_backend = gru_sequence
    cuda_backend = gru_gpu.Backend       # kernel version -> gru_sequence.py's contract on the GPU (gru_gpu.py)
    _kernels = gru_gpu

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, reset_after: bool = True,
                 stateful: bool = False, device: str = "cpu", kernel: Optional[int] = None):
        self.reset_after = check_bool("GRU", "reset_after", reset_after)
        super().__init__(input_size, hidden_size, num_layers, batch_first, dtype, seed, stateful, device, kernel)

    def _init_params(self, rng):
        # PyTorch's init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
        H = self.hidden_size
        k = 1.0 / np.sqrt(H)
        params = {}
        for layer in range(self.num_layers):
            D = self.input_size if layer == 0 else H
            shapes = ((D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))
            for name, shape in zip(gru_param_names(layer), shapes):
                params[name] = rng.uniform(-k, k, shape).astype(self.dtype)
        return params

    def _param_names(self, layer):
        return gru_param_names(layer)

    def _run_forward(self, inp, states, params, mask, work):       # work: unused (gru_sequence allocates)
        Y, h_T, cache = self._backend.gru_sequence_forward(inp, *states, *params, self.reset_after, mask)
        return Y, (h_T,), cache

    def _run_backward(self, dY, dstates, cache, work):
        dx, dh0, *dparams = self._backend.gru_sequence_backward(dY, *dstates, cache)
        return dx, (dh0,), dparams

    # ------------------------------------------------------------------ public API
    def __call__(self, x: ArrayLike, h0: Optional[ArrayLike] = None,
                 mask: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """Same as forward."""
        return self.forward(x, h0, mask)

    def forward(self, x: ArrayLike, h0: Optional[ArrayLike] = None,
                mask: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """y, h_n = forward(x, h0=None, mask=None).

        x    : (T, N, D), (N, T, D) with batch_first, or (T, D)  ->  y : the same with H features
        h0   : (L, N, H) ((L, H) for unbatched x), or None: zeros, or in stateful mode the carried state.
        mask : booleans shaped like x without its feature axis ((T, N), (N, T) with batch_first);
               False marks padding: that step leaves the state unchanged and its output repeats H_{t-1}.
        """
        return self._forward(x, h0, mask)

    def backward(self, dy: ArrayLike, dh_n: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """dx, dh0 = backward(dy, dh_n=None); adds the parameter gradients to grads.

        dy has y's shape; dh_n h_n's (None: zeros). Backpropagates through the last forward call.
        """
        return self._backward(dy, dh_n)

    def _repr_extra(self):
        return f", reset_after={self.reset_after}"
