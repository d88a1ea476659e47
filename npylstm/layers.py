"""`Linear`: the dense head that maps an LSTM's H features to the model's outputs.

    Y = X W + b            X : (N, in) or (N, T, in),  W : (in, out),  b : (out,),  Y : (N, out) or (N, T, out)

Backward (derived by hand; the time axis, when there is one, is folded into the rows):

    dX = dY Wᵀ      dW += Xᵀ dY      db += Σ_rows dY
"""

from typing import NamedTuple

import numpy as np

from .checks import as_float_array, check_dtype, check_positive_int


class LinearCache(NamedTuple):
    """What Linear.backward needs from Linear.forward."""
    x: np.ndarray          # (M, in)  the input, every leading axis folded into M rows
    lead_shape: tuple      # the leading axes of the input: (N,) or (N, T)


class Linear:
    """y = x W + b, with hand-written backward that accumulates into `grads`."""

    def __init__(self, in_features, out_features, dtype=np.float32, seed=None):
        where = "Linear"
        self.in_features = check_positive_int(where, "in_features", in_features)
        self.out_features = check_positive_int(where, "out_features", out_features)
        self.dtype = check_dtype(where, dtype)
        # PyTorch's nn.Linear init: W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self.params = {
            "W": rng.uniform(-k, k, (self.in_features, self.out_features)).astype(self.dtype),
            "b": rng.uniform(-k, k, self.out_features).astype(self.dtype),
        }
        self.grads = {}
        self.zero_grad()
        self._cache = None

    def zero_grad(self):
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def num_parameters(self):
        return sum(v.size for v in self.params.values())

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """x : (N, in) or (N, T, in)  ->  y : (N, out) or (N, T, out);   y = x W + b."""
        where = "Linear.forward"
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

    def backward(self, dy):
        """dy : y's shape  ->  dx : x's shape; adds dW, db to grads."""
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
