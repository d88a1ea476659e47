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

import numpy as np

from . import gpu
from . import sequence
from .recurrent import Recurrent


def param_names(layer):
    """Keys of layer `layer`'s parameters in `LSTM.params` (the PyTorch suffix style: _l0, _l1, ...)."""
    return f"W_x_l{layer}", f"W_h_l{layer}", f"b_l{layer}"


class LSTM(Recurrent):
    name = "LSTM"
    state_names = ("h", "c")
    state_arg, dstate_arg = "state", "dstate"
    numpy_backend = sequence
    cuda_backend = gpu.Backend           # kernel version -> sequence.py's contract on the GPU (gpu.py)

    def __init__(self, input_size, hidden_size, num_layers=1, batch_first=False, dtype=np.float32,
                 seed=None, forget_bias=0.0, stateful=False, device="cpu", kernel=None):
        super().__init__(input_size, hidden_size, num_layers, batch_first, dtype, stateful)
        self.forget_bias = float(forget_bias)
        if not np.isfinite(self.forget_bias):
            raise ValueError(f"LSTM: forget_bias must be finite, got {forget_bias!r}")
        # PyTorch's init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)); forget_bias added to the F block.
        H = self.hidden_size
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers):
            D = self.input_size if layer == 0 else H
            n_x, n_h, n_b = param_names(layer)
            self.params[n_x] = rng.uniform(-k, k, (D, 4 * H)).astype(self.dtype)
            self.params[n_h] = rng.uniform(-k, k, (H, 4 * H)).astype(self.dtype)
            b = rng.uniform(-k, k, 4 * H)
            b[H:2 * H] += self.forget_bias
            self.params[n_b] = b.astype(self.dtype)
        self.zero_grad()
        self.to(device, kernel=kernel)

    def _param_names(self, layer):
        return param_names(layer)

    def _run_forward(self, inp, states, params, mask, work):
        Y, h_T, c_T, cache = self._backend.sequence_forward(inp, *states, *params, mask, work=work)
        return Y, (h_T, c_T), cache

    def _run_backward(self, dY, dstates, cache, work):
        dx, dh0, dc0, *dparams = self._backend.sequence_backward(dY, *dstates, cache, work=work)
        return dx, (dh0, dc0), dparams

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x, state=None, mask=None):
        return self.forward(x, state, mask)

    def forward(self, x, state=None, mask=None):
        """y, (h_n, c_n) = forward(x, state=(h0, c0) or None, mask=None).

        mask : booleans shaped like x without its feature axis ((T, N), (N, T) with batch_first);
        False marks padding: that step leaves the state unchanged and its output repeats H_{t-1}.
        """
        return self._forward(x, state, mask)

    def backward(self, dy, dstate=None):
        """dx, (dh0, dc0) = backward(dy, dstate=(dh_n, dc_n) or None); adds the parameter gradients to grads.

        dy has y's shape; dstate the shapes of (h_n, c_n). Backpropagates through the last forward call.
        """
        return self._backward(dy, dstate)

    # ------------------------------------------------------------------ interop
    def to_torch_state_dict(self):
        from .interop import to_torch_state_dict
        return to_torch_state_dict(self)

    def to_keras(self):
        from .interop import to_keras
        return to_keras(self)
