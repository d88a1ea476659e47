"""`LSTM`: parameters, L stacked sequences, batch_first, stateful state, interop.

A thin class over the functional core (sequence.py): it validates arguments once, converts the
layout (batch_first, unbatched input) to time-major, runs the layers, keeps what backward needs,
and accumulates gradients into `grads`.

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
from . import sequence as numpy_backend
from .checks import as_float_array, check_dtype, check_positive_int, check_shape


def param_names(layer):
    """Keys of layer `layer`'s parameters in `LSTM.params` (the PyTorch suffix style: _l0, _l1, ...)."""
    return f"W_x_l{layer}", f"W_h_l{layer}", f"b_l{layer}"


class LSTM:
    def __init__(self, input_size, hidden_size, num_layers=1, batch_first=False, dtype=np.float32,
                 seed=None, forget_bias=0.0, stateful=False, device="cpu", kernel=None):
        where = "LSTM"
        self.input_size = check_positive_int(where, "input_size", input_size)
        self.hidden_size = H = check_positive_int(where, "hidden_size", hidden_size)
        self.num_layers = check_positive_int(where, "num_layers", num_layers)
        self.dtype = check_dtype(where, dtype)
        self.batch_first = bool(batch_first)
        self.stateful = bool(stateful)
        self.forget_bias = float(forget_bias)
        if not np.isfinite(self.forget_bias):
            raise ValueError(f"LSTM: forget_bias must be finite, got {forget_bias!r}")
        # PyTorch's init: every weight and bias U(-1/sqrt(H), 1/sqrt(H)); forget_bias added to the F block.
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        self.params = {}
        for layer in range(self.num_layers):
            D = self.input_size if layer == 0 else H
            n_x, n_h, n_b = param_names(layer)
            self.params[n_x] = rng.uniform(-k, k, (D, 4 * H)).astype(self.dtype)
            self.params[n_h] = rng.uniform(-k, k, (H, 4 * H)).astype(self.dtype)
            b = rng.uniform(-k, k, 4 * H)
            b[H:2 * H] += self.forget_bias
            self.params[n_b] = b.astype(self.dtype)
        self.grads = {}
        self.device, self.kernel, self._xp = "cpu", None, np   # to() below moves everything to `device`
        self.zero_grad()
        self._backend = numpy_backend
        self._caches = None          # per layer, from the last forward
        self._call = None            # layout of the last forward: (batch_first, unbatched, T, N)
        self._state = None           # stateful: (h, c), each (L, N, H)
        self._batch_size = None      # stateful: locked by the first call
        self.to(device, kernel=kernel)

    # ------------------------------------------------------------------ bookkeeping
    def zero_grad(self):
        self.grads = {k: self._xp.zeros_like(v) for k, v in self.params.items()}

    def reset_states(self, rows=None, *, batch_size=None):
        """Stateful mode: zero the carried (h, c).

        rows : (N,) booleans -- zero only those rows (their sequences ended); None -- all rows.
        batch_size : also re-lock the layer to a new batch size (the carried state is dropped).
        """
        where = "LSTM.reset_states"
        if batch_size is not None:
            if rows is not None:
                raise ValueError(f"{where}: give rows or batch_size, not both")
            self._batch_size = check_positive_int(where, "batch_size", batch_size)
            self._state = None
            return
        if rows is None:
            self._state = None
            return
        rows = np.asarray(rows)
        if rows.dtype != bool:
            raise ValueError(f"{where}: rows must be booleans, got dtype {rows.dtype}")
        if self._batch_size is not None:
            check_shape(where, "rows", rows, (self._batch_size,))
        if self._state is not None:
            h, c = self._state
            rows = self._xp.asarray(rows)
            h[:, rows] = 0
            c[:, rows] = 0

    @property
    def state(self):
        """Stateful mode: the carried (h, c), each (L, N, H), or None before the first call."""
        return self._state

    @state.setter
    def state(self, value):
        """Stateful mode: set the carried (h, c), each (L, N, H) (copied), locking the batch size to N; None clears it."""
        where = "LSTM.state"
        if value is None:
            self._state = None
            return
        if not self.stateful:
            raise ValueError(f"{where}: only a stateful layer carries a state; pass state= to forward instead")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"{where}: state must be a pair (h, c), got {type(value).__name__}")
        h, c = (gpu.to_device(as_float_array(where, n, s, self.dtype), self.device) for n, s in zip(("h", "c"), value))
        check_shape(where, "h", h, (self.num_layers, None, self.hidden_size))
        check_shape(where, "c", c, tuple(h.shape))
        self._batch_size = int(h.shape[1])
        self._state = (h.copy(), c.copy())

    def num_parameters(self):
        return sum(v.size for v in self.params.values())

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x, state=None, mask=None):
        return self.forward(x, state, mask)

    def forward(self, x, state=None, mask=None):
        """y, (h_n, c_n) = forward(x, state=(h0, c0) or None, mask=None).

        mask : booleans shaped like x without its feature axis ((T, N), (N, T) with batch_first);
        False marks padding: that step leaves the state unchanged and its output repeats H_{t-1}.
        """
        where = "LSTM.forward"
        L, H = self.num_layers, self.hidden_size
        xp = self._xp
        x = gpu.to_device(as_float_array(where, "x", x, self.dtype), self.device)
        if x.ndim not in (2, 3):
            raise ValueError(f"{where}: x must have 3 dimensions ({self._layout()}) or 2 (T, D) for "
                             f"unbatched input, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{where}: x has {x.shape[-1]} features, expected {self.input_size}")
        unbatched = x.ndim == 2
        x_tm = x[:, None, :] if unbatched else (x.swapaxes(0, 1) if self.batch_first else x)  # (T, N, D)
        T, N = x_tm.shape[:2]
        if T < 1 or N < 1:
            raise ValueError(f"{where}: x has shape {tuple(x.shape)}: needs at least one step and one row")
        state_shape = (L, H) if unbatched else (L, N, H)
        if state is None and self.stateful and self._batch_size is not None and N != self._batch_size:
            raise ValueError(
                f"{where}: stateful layer was started with batch size {self._batch_size}, got {N}: row i "
                f"of each batch continues row i of the previous one, so the batch size cannot change. "
                f"Call reset_states(batch_size={N}) to start over with {N} rows.")
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{where}: state must be a pair (h0, c0), got {type(state).__name__}")
            h0, c0 = (gpu.to_device(as_float_array(where, n, s, self.dtype), self.device)
                      for n, s in zip(("h0", "c0"), state))
            check_shape(where, "h0", h0, state_shape)
            check_shape(where, "c0", c0, state_shape)
            h0, c0 = h0.reshape(L, N, H), c0.reshape(L, N, H)
        elif self.stateful and self._state is not None:
            h0, c0 = self._state
        else:
            h0 = c0 = xp.zeros((L, N, H), self.dtype)
        if mask is not None:
            mask = np.asarray(gpu.to_device(mask, "cpu"))
            if mask.dtype != bool:
                raise ValueError(f"{where}: mask must be booleans, got dtype {mask.dtype}")
            check_shape(where, "mask", mask, x.shape[:-1])
            mask = mask[:, None] if unbatched else (mask.T if self.batch_first else mask)  # (T, N)
            mask = np.ascontiguousarray(mask)

        # -- everything is valid: from here on the call changes state
        inp = xp.ascontiguousarray(x_tm)
        caches, h_n, c_n = [], xp.empty((L, N, H), self.dtype), xp.empty((L, N, H), self.dtype)
        for layer in range(L):
            W_x, W_h, b = (self.params[k] for k in param_names(layer))
            inp, h_n[layer], c_n[layer], cache = self._backend.sequence_forward(
                inp, h0[layer], c0[layer], W_x, W_h, b, mask)
            caches.append(cache)
        self._caches = caches
        self._call = (unbatched, T, N)
        if self.stateful:
            self._batch_size = N
            self._state = (h_n.copy(), c_n.copy())
        y = inp[:, 0] if unbatched else (inp.swapaxes(0, 1) if self.batch_first else inp)
        y = xp.array(y, order="C")  # a copy: inp is a view of the cache that backward reads
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        return y, (h_n, c_n)

    def backward(self, dy, dstate=None):
        """dx, (dh0, dc0) = backward(dy, dstate=(dh_n, dc_n) or None); adds the parameter gradients to grads.

        dy has y's shape; dstate the shapes of (h_n, c_n). Backpropagates through the last forward call.
        """
        where = "LSTM.backward"
        if self._caches is None:
            raise ValueError(f"{where}: call forward first: backward differentiates the last forward call")
        L, H = self.num_layers, self.hidden_size
        unbatched, T, N = self._call
        y_shape = (T, H) if unbatched else ((N, T, H) if self.batch_first else (T, N, H))
        state_shape = (L, H) if unbatched else (L, N, H)
        xp = self._xp
        dy = gpu.to_device(as_float_array(where, "dy", dy, self.dtype), self.device)
        check_shape(where, "dy", dy, y_shape)
        if dstate is not None:
            if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
                raise ValueError(f"{where}: dstate must be a pair (dh_n, dc_n), got {type(dstate).__name__}")
            dh_n, dc_n = (gpu.to_device(as_float_array(where, n, s, self.dtype), self.device)
                          for n, s in zip(("dh_n", "dc_n"), dstate))
            check_shape(where, "dh_n", dh_n, state_shape)
            check_shape(where, "dc_n", dc_n, state_shape)
            dh_n, dc_n = dh_n.reshape(L, N, H), dc_n.reshape(L, N, H)
        else:
            dh_n = dc_n = xp.zeros((L, N, H), self.dtype)

        dY = dy[:, None, :] if unbatched else (dy.swapaxes(0, 1) if self.batch_first else dy)  # (T, N, H)
        dY = xp.ascontiguousarray(dY)
        dh0, dc0 = xp.empty((L, N, H), self.dtype), xp.empty((L, N, H), self.dtype)
        for layer in reversed(range(L)):
            dY, dh0[layer], dc0[layer], dW_x, dW_h, db = self._backend.sequence_backward(
                dY, dh_n[layer], dc_n[layer], self._caches[layer])
            for k, g in zip(param_names(layer), (dW_x, dW_h, db)):
                self.grads[k] += g
        dx = dY[:, 0] if unbatched else (dY.swapaxes(0, 1) if self.batch_first else dY)
        if unbatched:
            dh0, dc0 = dh0[:, 0], dc0[:, 0]
        return xp.ascontiguousarray(dx), (dh0, dc0)

    # ------------------------------------------------------------------ device
    def to(self, device, kernel=None):
        """Move parameters, gradients and carried state to `device` ('cpu' or 'cuda'); returns self.

        kernel : the CUDA kernel version (npylstm.gpu.KERNEL_VERSIONS; None: gpu.DEFAULT_KERNEL); 'cuda' only.
        The cache of the last forward is dropped: call forward again before backward.
        """
        where = "LSTM.to"
        gpu.check_device(where, device)
        if device == "cpu":
            if kernel is not None:
                raise ValueError(f"{where}: kernel selects a CUDA kernel version; it needs device='cuda'")
            self._xp, self._backend = np, numpy_backend
        else:
            kernel = gpu.check_kernel(where, gpu.DEFAULT_KERNEL if kernel is None else kernel)
            self._xp, self._backend = gpu.require_cuda(where), gpu.Backend(kernel)
        move = (lambda a: gpu.to_device(a, device))
        self.params = {k: move(v) for k, v in self.params.items()}
        self.grads = {k: move(v) for k, v in self.grads.items()}
        if self._state is not None:
            self._state = tuple(move(s) for s in self._state)
        self.device, self.kernel, self._caches = device, kernel, None
        return self

    # ------------------------------------------------------------------ interop
    def to_torch_state_dict(self):
        from .interop import to_torch_state_dict
        return to_torch_state_dict(self)

    def to_keras(self):
        from .interop import to_keras
        return to_keras(self)

    def _layout(self):
        return "N, T, D" if self.batch_first else "T, N, D"

    def __repr__(self):
        return (f"LSTM(input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, dtype={self.dtype.name}, stateful={self.stateful}, device={self.device!r})")
