"""`Linear`: the dense head that maps an LSTM's H features to the model's outputs.

    Y = X W + b            X : (N, in) or (N, T, in),  W : (in, out),  b : (out,),  Y : (N, out) or (N, T, out)

Backward (derived by hand; the time axis, when there is one, is folded into the rows):

    dX = dY Wᵀ      dW += Xᵀ dY      db += Σ_rows dY
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .checks import (IncompatibleKeys, as_float_array, check_dtype, check_params, check_positive_int, check_seed,
                     load_params)


class LinearCache(NamedTuple):
    """What Linear.backward needs from Linear.forward."""
    x: np.ndarray          # (M, in)  the input, every leading axis folded into M rows
    lead_shape: tuple      # the leading axes of the input: (N,) or (N, T)


class Linear:
    """The dense head: y = x W + b, with a hand-written backward that adds into `grads` (CPU only).

        y = linear(x)          x : (N, in) or (N, T, in)  ->  y : (N, out) or (N, T, out)
        dx = linear.backward(dy)

    Parameters, in `params` (and `grads`): W (in, out), b (out,); PyTorch's nn.Linear keeps W
    transposed, (out, in). in_features, out_features: positive ints; dtype: float32 or float64;
    seed: None or a non-negative int (PyTorch's init, U(±1/√in)). state_dict / load_state_dict,
    copy.deepcopy and pickle work as for the LSTM.
    """

    def __init__(self, in_features: int, out_features: int, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None):
        where = "Linear"
        self.in_features = check_positive_int(where, "in_features", in_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        self.dtype = check_dtype(where, dtype)
        # PyTorch's nn.Linear init: W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
        rng = np.random.default_rng(check_seed(where, "seed", seed))
        k = 1.0 / np.sqrt(self.in_features)
        self.params = {
            "W": rng.uniform(-k, k, (self.in_features, self.out_features)).astype(self.dtype),
            "b": rng.uniform(-k, k, self.out_features).astype(self.dtype),
        }
        self._shapes = {k: v.shape for k, v in self.params.items()}
        self.grads = {}
        self.zero_grad()
        self._cache = None

    def zero_grad(self) -> None:
        """Set every gradient in `grads` to zero (backward adds to them)."""
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def num_parameters(self) -> int:
        """How many numbers the parameters hold: in * out + out."""
        return int(sum(v.size for v in self.params.values()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters: {"W": (in, out), "b": (out,)}."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy W and b in from `state_dict`, checked as LSTM.load_state_dict checks (unchanged on refusal)."""
        return load_params("Linear.load_state_dict", self.params, state_dict, strict)

    def __getstate__(self):
        """Copy and pickle: everything but the last forward's cache (call forward before backward)."""
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = None

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Same as forward."""
        return self.forward(x)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """x : (N, in) or (N, T, in)  ->  y : (N, out) or (N, T, out);   y = x W + b."""
        where = "Linear.forward"
        check_params(where, self.params, self._shapes, self.dtype, np.ndarray)
        x = as_float_array(where, "x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"{where}: x must be (N, in) or (N, T, in), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x has {x.shape[-1]} features, expected {self.in_features}")
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, self.in_features)                       # (M, in), M = N or N*T
        y = x2 @ self.params["W"] + self.params["b"]               # (M, out)
        self._cache = LinearCache(x2, lead)
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """dy : y's shape  ->  dx : x's shape; adds dW, db to grads (backpropagates the last forward call)."""
        where = "Linear.backward"
        if self._cache is None:
            raise ValueError(f"{where}: call forward first: backward differentiates the last forward call")
        x2, lead = self._cache
        dy = as_float_array(where, "dy", dy, self.dtype)
        if tuple(dy.shape) != lead + (self.out_features,):
            raise ValueError(f"{where}: dy has shape {tuple(dy.shape)}, expected {lead + (self.out_features,)}")
        dy2 = dy.reshape(-1, self.out_features)                    # (M, out)
        # forward: y = x W + b  ->  dW = xᵀ dy, db = Σ_rows dy, dx = dy Wᵀ
        self.grads["W"] += x2.T @ dy2
        self.grads["b"] += dy2.sum(axis=0)
        dx = dy2 @ self.params["W"].T                              # (M, in)
        return dx.reshape(lead + (self.in_features,))

    def __repr__(self):
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype.name})"
