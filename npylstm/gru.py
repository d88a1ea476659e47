"""`GRU`: the GRU layer, with the LSTM's API (recurrent.py holds everything the two share).

    y, h_n = gru(x, h0=None, mask=None)
    dx, dh0 = gru.backward(dy, dh_n=None)

Parameters per layer k, PyTorch's gate order [ r | z | n ]: W_x_l{k} (D, 3H), W_h_l{k} (H, 3H),
b_x_l{k} (3H,), b_h_l{k} (3H,). reset_after=True is PyTorch's, cuDNN's and Keras's default GRU
(R multiplies H_prev W_h,n + b_h,n); reset_after=False is the original one (R multiplies H_prev
before the product). Shapes, batch_first, unbatched input, masks and stateful mode are the LSTM's.
device="cuda" (or `gru.to("cuda")`) runs the sequences on kernels/gru_kernels.cu (gru_gpu.py), as the LSTM does.
"""

import numpy as np

from . import gru_gpu, gru_sequence
from .recurrent import Recurrent


def gru_param_names(layer):
    """Keys of layer `layer`'s parameters in `GRU.params` (the PyTorch suffix style: _l0, _l1, ...)."""
    return f"W_x_l{layer}", f"W_h_l{layer}", f"b_x_l{layer}", f"b_h_l{layer}"


class GRU(Recurrent):
    name = "GRU"
    state_names = ("h",)
    state_arg, dstate_arg = "h0", "dh_n"
    numpy_backend = gru_sequence
    cuda_backend = gru_gpu.Backend       # kernel version -> gru_sequence.py's contract on the GPU (gru_gpu.py)

    def __init__(self, input_size, hidden_size, num_layers=1, batch_first=False, dtype=np.float32,
                 seed=None, reset_after=True, stateful=False, device="cpu", kernel=None):
        super().__init__(input_size, hidden_size, num_layers, batch_first, dtype, stateful)
        if not isinstance(reset_after, (bool, np.bool_)):
            raise ValueError(f"GRU: reset_after must be True or False, got {reset_after!r}")
        self.reset_after = bool(reset_after)
        # PyTorch's init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
        H = self.hidden_size
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers):
            D = self.input_size if layer == 0 else H
            shapes = ((D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))
            for name, shape in zip(gru_param_names(layer), shapes):
                self.params[name] = rng.uniform(-k, k, shape).astype(self.dtype)
        self.zero_grad()
        self.to(device, kernel=kernel)

    def _param_names(self, layer):
        return gru_param_names(layer)

    def to(self, device, kernel=None):
        """Move parameters, gradients and carried state to `device` ('cpu' or 'cuda'); returns self.

        kernel : the GRU kernel version (gru_gpu.KERNEL_VERSIONS; None: gru_gpu.DEFAULT_KERNEL); 'cuda' only.
        """
        if device == "cuda":   # the GRU's versions, not the LSTM's, before the base class takes over
            kernel = gru_gpu.check_kernel("GRU.to", gru_gpu.DEFAULT_KERNEL if kernel is None else kernel)
        return super().to(device, kernel=kernel)

    def _run_forward(self, inp, states, params, mask, work):       # work: unused (gru_sequence allocates)
        Y, h_T, cache = self._backend.gru_sequence_forward(inp, *states, *params, self.reset_after, mask)
        return Y, (h_T,), cache

    def _run_backward(self, dY, dstates, cache, work):
        dx, dh0, *dparams = self._backend.gru_sequence_backward(dY, *dstates, cache)
        return dx, (dh0,), dparams

    # ------------------------------------------------------------------ public API
    def __call__(self, x, h0=None, mask=None):
        return self.forward(x, h0, mask)

    def forward(self, x, h0=None, mask=None):
        """y, h_n = forward(x, h0=None, mask=None).

        h0 : (L, N, H) ((L, H) for unbatched x), or None: zeros, or in stateful mode the carried state.
        mask : booleans shaped like x without its feature axis ((T, N), (N, T) with batch_first);
        False marks padding: that step leaves the state unchanged and its output repeats H_{t-1}.
        """
        return self._forward(x, h0, mask)

    def backward(self, dy, dh_n=None):
        """dx, dh0 = backward(dy, dh_n=None); adds the parameter gradients to grads.

        dy has y's shape; dh_n h_n's. Backpropagates through the last forward call.
        """
        return self._backward(dy, dh_n)

    def to_torch_state_dict(self):
        from .gru_interop import gru_to_torch_state_dict
        return gru_to_torch_state_dict(self)

    def to_keras(self):
        from .gru_interop import gru_to_keras
        return gru_to_keras(self)

    def _repr_extra(self):
        return f", reset_after={self.reset_after}"
