"""`Recurrent`: what the LSTM and GRU layers share, written once.

A layer is L stacked sequences over one functional backend. This base validates arguments once,
converts the layout (batch_first, unbatched input) to time-major, runs the layers, keeps what backward
needs, carries the state in stateful mode, and accumulates gradients into `grads`. A subclass says
only what differs:

    name                   "LSTM" / "GRU": starts every error message
    state_names            ("h", "c") / ("h",): the state tensors, each (L, N, H)
    state_arg, dstate_arg  the public names of the state arguments ("state", "dstate" / "h0", "dh_n")
    _param_names(layer)    the keys of that layer's parameters in `params` (filled by __init__)
    _run_forward           one layer's sequence forward:  (inp, states, params, mask, work) -> (Y, final states, cache)
    _run_backward          one layer's BPTT:             (dY, dstates, cache, work) -> (dx, dstates0, dparams)
                           (work: a dict per layer where the backend may keep its buffers between calls)
    _init_params(rng)      the layer's parameters, freshly drawn: {name: (shape) array}
    _numpy_backend         the module _run_forward/_run_backward call on the CPU
    cuda_backend           kernel version -> the object they call on the GPU (None: CPU only)
    _kernels               the module that knows the kernel versions (check_kernel, DEFAULT_KERNEL)

With one state tensor the public API shows it bare (GRU: `y, h_n = gru(x, h0)`); with several, as a
tuple (LSTM: `y, (h_n, c_n) = lstm(x, (h0, c0))`).

Shapes: x (T, N, D), or (N, T, D) with batch_first, or (T, D) unbatched; y likewise with H features;
every state (L, N, H) whatever batch_first is ((L, H) for unbatched input), as in PyTorch.

Stateful mode (Keras `stateful=True`): with no state given, every call starts from the state the
previous call ended with (zeros at first and after `reset_states()`); the batch size is locked by the
first call. Gradients stop at the call boundary (truncated BPTT): backward returns the gradient on the
carried state but nothing flows into the calls before.

Devices: `to("cuda")` moves parameters, gradients and carried state to the GPU (CuPy arrays) and swaps
the backend; inputs are moved to the layer's device at the boundary, and masks stay on the host.

Parameters: `params` maps names to arrays that the optimizers update in place. `state_dict()` copies
them out as NumPy arrays; `load_state_dict(sd)` checks keys, shapes and dtypes and copies in place. An
array put into `params` by hand is checked at the next forward (name, shape, dtype, device).

Copy and pickle: the layer pickles as NumPy arrays (parameters, gradients, carried state) plus its
device; unpickling a CUDA layer moves it back to the GPU (a RuntimeError from gpu.require_cuda where
there is none). The cache of the last forward and the backend's work buffers are not kept: call
forward again before backward.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import gpu
from .checks import (IncompatibleKeys, as_float_array, check_bool, check_device, check_dtype, check_params,
                     check_positive_int, check_seed, check_shape, load_params)


class Recurrent:
    """What the LSTM and GRU layers share (see the module docstring); not used on its own."""
    name = "Recurrent"
    state_names = ("h",)       # the state tensors, in the order the API gives them
    state_arg = "h0"           # forward's state argument and backward's gradient argument, named in errors
    dstate_arg = "dh_n"
    _numpy_backend = None      # the subclass's sequence module
    cuda_backend = None        # kernel -> GPU backend; None: this layer has no CUDA implementation
    _kernels = gpu             # check_kernel and DEFAULT_KERNEL for this layer's CUDA kernels

    def __init__(self, input_size, hidden_size, num_layers, batch_first, dtype, seed, stateful, device, kernel):
        where = self.name
        self.input_size = check_positive_int(where, "input_size", input_size)
        self.hidden_size = check_positive_int(where, "hidden_size", hidden_size)
        self.num_layers = check_positive_int(where, "num_layers", num_layers)
        self.dtype = check_dtype(where, dtype)
        self.batch_first = check_bool(where, "batch_first", batch_first)
        self.stateful = check_bool(where, "stateful", stateful)
        seed = check_seed(where, "seed", seed)
        check_device(where, device)
        self.params = self._init_params(np.random.default_rng(seed))
        self._shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        self.grads = {}
        self.device, self.kernel, self._xp = "cpu", None, np
        self._backend = self._numpy_backend
        self._caches = None          # per layer, from the last forward
        self._work = None            # per layer, buffers the backend reuses from call to call (set by `to`)
        self._call = None            # layout of the last forward: (unbatched, T, N)
        self._state = None           # stateful: a tuple of state tensors, each (L, N, H)
        self._batch_size = None      # stateful: locked by the first call
        self.zero_grad()
        self._move(where, device, kernel)

    # ------------------------------------------------------------------ what a subclass defines
    def _init_params(self, rng):
        raise NotImplementedError

    def _param_names(self, layer):
        raise NotImplementedError

    def _run_forward(self, inp, states, params, mask, work):
        raise NotImplementedError

    def _run_backward(self, dY, dstates, cache, work):
        raise NotImplementedError

    # ------------------------------------------------------------------ bookkeeping
    def zero_grad(self) -> None:
        """Set every gradient in `grads` to zero (backward adds to them, as in PyTorch)."""
        self.grads = {k: self._xp.zeros_like(v) for k, v in self.params.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy arrays (copies, also for a CUDA layer), keyed as `params`: W_x_l0, ..."""
        return {k: np.array(gpu.to_device(v, "cpu")) for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy parameters in from `state_dict` (keys as `params`; NumPy arrays, torch tensors or lists).

        Every key, shape and dtype is checked before anything is copied: a ValueError names the key,
        and the layer is unchanged. A float array of the other precision is cast to the layer's dtype
        (float64 -> float32 rounds to nearest); integer, boolean and complex arrays are refused.
        strict=False loads the keys that match and returns the others as (missing_keys, unexpected_keys).
        """
        return load_params(f"{self.name}.load_state_dict", self.params, state_dict, strict)

    def reset_states(self, rows: Optional[Any] = None, *, batch_size: Optional[int] = None) -> None:
        """Stateful mode: zero the carried state.

        rows : (N,) booleans -- zero only those rows (their sequences ended); None -- all rows.
        batch_size : also re-lock the layer to a new batch size (the carried state is dropped).
        """
        where = f"{self.name}.reset_states"
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
            rows = self._xp.asarray(rows)
            for s in self._state:
                s[:, rows] = 0

    @property
    def state(self) -> Any:
        """Stateful mode: the carried state ((h, c) for the LSTM, h for the GRU), each (L, N, H), or None."""
        return None if self._state is None else self._pack(self._state)

    @state.setter
    def state(self, value: Any) -> None:
        """Stateful mode: set the carried state (copied), locking the batch size to its N; None clears it."""
        where = f"{self.name}.state"
        if value is None:
            self._state = None
            return
        if not self.stateful:
            raise ValueError(f"{where}: only a stateful layer carries a state; "
                             f"pass {self.state_arg}= to forward instead")
        names = self.state_names
        given = self._unpack(where, "state", value, names)
        states = tuple(gpu.to_device(as_float_array(where, n, s, self.dtype), self.device)
                       for n, s in zip(names, given))
        check_shape(where, names[0], states[0], (self.num_layers, None, self.hidden_size))
        for n, s in zip(names[1:], states[1:]):
            check_shape(where, n, s, tuple(states[0].shape))
        self._batch_size = int(states[0].shape[1])
        self._state = tuple(s.copy() for s in states)

    def num_parameters(self) -> int:
        """How many numbers the parameters hold."""
        return int(sum(v.size for v in self.params.values()))

    def _pack(self, states):
        """A tuple of state tensors as the public API shows it: the tensor itself when there is one."""
        return states[0] if len(states) == 1 else tuple(states)

    def _unpack(self, where, arg, value, names):
        """The public API's state argument (a tensor, or a tuple of them) -> a list of arrays named `names`."""
        k = len(names)
        if k == 1:
            return [value]
        if not isinstance(value, (tuple, list)) or len(value) != k:
            what = "a pair" if k == 2 else f"a tuple of {k}"
            raise ValueError(f"{where}: {arg} must be {what} ({', '.join(names)}), got {type(value).__name__}")
        return list(value)

    # ------------------------------------------------------------------ forward / backward
    def _forward(self, x, state, mask):
        """y, final states (packed) of the stacked layers."""
        where = f"{self.name}.forward"
        L, H = self.num_layers, self.hidden_size
        xp = self._xp
        check_params(where, self.params, self._shapes, self.dtype, xp.ndarray)
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
            states = self._read_states(where, self.state_arg, state, [f"{s}0" for s in self.state_names],
                                       state_shape, (L, N, H))
        elif self.stateful and self._state is not None:
            states = self._state
        else:
            states = (xp.zeros((L, N, H), self.dtype),) * len(self.state_names)
        if mask is not None:
            mask = np.asarray(gpu.to_device(mask, "cpu"))
            if mask.dtype != bool:
                raise ValueError(f"{where}: mask must be booleans, got dtype {mask.dtype}")
            check_shape(where, "mask", mask, x.shape[:-1])
            mask = mask[:, None] if unbatched else (mask.T if self.batch_first else mask)  # (T, N)
            mask = np.ascontiguousarray(mask)

        # -- everything is valid: from here on the call changes state
        inp = xp.ascontiguousarray(x_tm)
        caches = []
        finals = tuple(xp.empty((L, N, H), self.dtype) for _ in self.state_names)
        for layer in range(L):
            params = tuple(self.params[k] for k in self._param_names(layer))
            inp, last, cache = self._run_forward(inp, tuple(s[layer] for s in states), params, mask, self._work[layer])
            for f, s in zip(finals, last):
                f[layer] = s
            caches.append(cache)
        self._caches = caches
        self._call = (unbatched, T, N)
        if self.stateful:
            self._batch_size = N
            self._state = tuple(f.copy() for f in finals)
        y = inp[:, 0] if unbatched else (inp.swapaxes(0, 1) if self.batch_first else inp)
        y = xp.array(y, order="C")  # a copy: inp is a view of the cache that backward reads
        if unbatched:
            finals = tuple(f[:, 0] for f in finals)
        return y, self._pack(finals)

    def _read_states(self, where, arg, value, names, shape, layer_shape):
        """The state tensors given as `arg` (validated, on the layer's device), each reshaped to layer_shape."""
        given = self._unpack(where, arg, value, names)
        states = tuple(gpu.to_device(as_float_array(where, n, s, self.dtype), self.device) for n, s in zip(names, given))
        for n, s in zip(names, states):
            check_shape(where, n, s, shape)
        return tuple(s.reshape(layer_shape) for s in states)

    def _backward(self, dy, dstate):
        """dx, gradients on the initial states (packed); adds the parameter gradients to grads."""
        where = f"{self.name}.backward"
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
            dstates = self._read_states(where, self.dstate_arg, dstate, [f"d{s}_n" for s in self.state_names],
                                        state_shape, (L, N, H))
        else:
            dstates = (xp.zeros((L, N, H), self.dtype),) * len(self.state_names)

        dY = dy[:, None, :] if unbatched else (dy.swapaxes(0, 1) if self.batch_first else dy)  # (T, N, H)
        dY = xp.ascontiguousarray(dY)
        d0 = tuple(xp.empty((L, N, H), self.dtype) for _ in self.state_names)
        for layer in reversed(range(L)):
            dY, ds, dparams = self._run_backward(dY, tuple(s[layer] for s in dstates), self._caches[layer],
                                                 self._work[layer])
            for out, s in zip(d0, ds):
                out[layer] = s
            for k, g in zip(self._param_names(layer), dparams):
                self.grads[k] += g
        dx = dY[:, 0] if unbatched else (dY.swapaxes(0, 1) if self.batch_first else dY)
        if unbatched:
            d0 = tuple(s[:, 0] for s in d0)
        return xp.ascontiguousarray(dx), self._pack(d0)

    # ------------------------------------------------------------------ device
    def to(self, device: str, kernel: Optional[int] = None) -> Recurrent:
        """Move parameters, gradients and carried state to `device`; returns self.

        device : 'cpu', 'cuda' or 'cuda:N' (N must be the current CUDA device: npylstm runs where CuPy
                 does, device 0 unless you select another with cupy.cuda.Device(N).use()).
        kernel : the CUDA kernel version (None: the default; LSTM: gpu.KERNEL_VERSIONS, GRU:
                 gru_gpu.KERNEL_VERSIONS); only with a CUDA device.
        The cache of the last forward is dropped: call forward again before backward.
        """
        return self._move(f"{self.name}.to", device, kernel)

    def _move(self, where, device, kernel):
        """`to`, with errors starting with `where` (the constructor says "LSTM: ...", `to` "LSTM.to: ...")."""
        device, index = check_device(where, device)
        if device == "cpu":
            if kernel is not None:
                raise ValueError(f"{where}: kernel selects a CUDA kernel version; it needs device='cuda'")
            xp, backend = np, self._numpy_backend
        else:
            if self.cuda_backend is None:
                raise ValueError(f"{where}: the {self.name} has no CUDA backend yet; device must be 'cpu'")
            kernel = self._kernels.check_kernel(where, self._kernels.DEFAULT_KERNEL if kernel is None else kernel)
            xp = gpu.require_cuda(where)
            if index is not None:
                current = int(xp.cuda.runtime.getDevice())
                if index != current:
                    raise ValueError(f"{where}: device 'cuda:{index}' is not the current CUDA device ({current}): "
                                     f"npylstm runs on the current device; select it first with "
                                     f"cupy.cuda.Device({index}).use(), or pass device='cuda'")
            backend = self.cuda_backend(kernel)
        move = (lambda a: gpu.to_device(a, device))
        self.params = {k: move(v) for k, v in self.params.items()}
        self.grads = {k: move(v) for k, v in self.grads.items()}
        if self._state is not None:
            self._state = tuple(move(s) for s in self._state)
        self._xp, self._backend = xp, backend
        self.device, self.kernel, self._caches = device, kernel, None
        self._work = [{} for _ in range(self.num_layers)]
        return self

    # ------------------------------------------------------------------ copy and pickle
    def __getstate__(self):
        """Everything but modules, backends, work buffers and the last forward's cache, on the host."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_xp", "_backend", "_work", "_caches", "_call")}
        host = (lambda a: np.array(gpu.to_device(a, "cpu")))
        state["params"] = {k: host(v) for k, v in self.params.items()}
        state["grads"] = {k: host(v) for k, v in self.grads.items()}
        if self._state is not None:
            state["_state"] = tuple(host(s) for s in self._state)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        device, kernel = self.device, self.kernel
        self.device, self.kernel, self._xp, self._backend = "cpu", None, np, self._numpy_backend
        self._caches, self._call, self._work = None, None, [{} for _ in range(self.num_layers)]
        if device != "cpu":
            self._move(f"{self.name} (unpickled on device {device!r})", device, kernel)

    # ------------------------------------------------------------------ interop
    def to_torch_state_dict(self) -> dict:
        """The weights keyed as torch.nn.LSTM / nn.GRU keys them; `nn.LSTM.load_state_dict(sd, strict=True)`
        takes it as it is. torch tensors (CPU) when torch is importable (it is imported here, only here),
        else NumPy arrays. See npylstm.interop for the mapping."""
        from .interop import to_torch_state_dict
        return to_torch_state_dict(self)

    def to_keras(self) -> list:
        """[kernel, recurrent_kernel, bias] as Keras 3's LSTM / GRU layer holds them (set_weights takes
        the list); a one-layer LSTM or GRU only. See npylstm.interop for the mapping."""
        from .interop import to_keras
        return to_keras(self)

    def _layout(self):
        return "N, T, D" if self.batch_first else "T, N, D"

    def _repr_extra(self):
        return ""

    def __repr__(self):
        return (f"{self.name}(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, batch_first={self.batch_first}, dtype={self.dtype.name}, "
                f"stateful={self.stateful}, device={self.device!r}{self._repr_extra()})")
