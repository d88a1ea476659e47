"""Optimizers and gradient clipping. Parameters are updated in place, named by the keys of `params`.

    SGD (PyTorch's form):  V = μ V + G                 P -= lr V           (μ = momentum; μ = 0: plain SGD)
    Adam:                  M = β₁ M + (1 - β₁) G       S = β₂ S + (1 - β₂) G²
                           M̂ = M / (1 - β₁ᵗ)           Ŝ = S / (1 - β₂ᵗ)     P -= lr M̂ / (√Ŝ + ε)
    clip_grad_norm:        ‖G‖ = √(Σ over every tensor of Σ G²);  if ‖G‖ > max_norm: G *= max_norm / ‖G‖

state_dict() holds everything step() reads besides the gradients (hyperparameters, step count,
moment buffers), so a checkpoint restores an optimizer that continues bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .checks import _xp


def _check_pair(where, params, grads):
    if set(params) != set(grads):
        raise ValueError(f"{where}: params and grads must have the same keys, got {sorted(params)} and {sorted(grads)}")
    for k in params:
        if params[k].shape != grads[k].shape:
            raise ValueError(f"{where}: grads[{k!r}] has shape {tuple(grads[k].shape)}, expected {tuple(params[k].shape)}")


def _check_hyper(where, name, v, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{where}: {name} must be a number in {lb}{lo}, {hi}{rb}, got {v!r}")
    return float(v)


def clip_grad_norm(grads: Mapping[str, Any], max_norm: float) -> float:
    """Scale every gradient in `grads` (in place) so that their global L2 norm is at most max_norm.

    returns the norm before clipping (a float).
    """
    max_norm = _check_hyper("clip_grad_norm", "max_norm", max_norm, lo_open=True)
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    if total > max_norm:
        scale = max_norm / total
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum: V = μ V + G, P -= lr V."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0):
        self.lr = _check_hyper("SGD", "lr", lr, lo_open=True)
        self.momentum = _check_hyper("SGD", "momentum", momentum, 0.0, 1.0, hi_open=True)
        self.t = 0              # steps taken
        self.velocity = {}      # key -> V, created at the first step

    def step(self, params: Mapping[str, Any], grads: Mapping[str, Any]) -> None:
        """Update every params[k] in place from grads[k] (the same keys and shapes)."""
        _check_pair("SGD.step", params, grads)
        self.t += 1
        for k, P in params.items():
            G = grads[k]
            if self.momentum == 0.0:
                P -= P.dtype.type(self.lr) * G                  # P -= lr G
                continue
            V = self.velocity.get(k)
            if V is None:
                V = self.velocity[k] = _xp(P).zeros_like(P)
            V *= V.dtype.type(self.momentum)                    # V = μ V + G
            V += G
            P -= P.dtype.type(self.lr) * V                      # P -= lr V

    def state_dict(self) -> dict:
        """Hyperparameters, step count and velocity buffers (copies): what step() reads besides the gradients."""
        return {"type": "SGD", "lr": self.lr, "momentum": self.momentum, "t": self.t,
                "buffers": {"velocity": {k: v.copy() for k, v in self.velocity.items()}}}

    def load_state_dict(self, d: dict) -> None:
        """Restore what state_dict gave, checked completely first (a bad one changes nothing)."""
        _load_common(self, "SGD", d, ("lr", "momentum"), ("velocity",))

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum})"


class Adam:
    """Adam (Kingma & Ba) with bias correction, as PyTorch's torch.optim.Adam (no weight decay)."""

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        where = "Adam"
        self.lr = _check_hyper(where, "lr", lr, lo_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check_hyper(where, f"betas[{i}]", b, 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))
        self.eps = _check_hyper(where, "eps", eps, lo_open=True)
        self.t = 0              # steps taken
        self.m = {}             # key -> first moment M
        self.v = {}             # key -> second moment S

    def step(self, params: Mapping[str, Any], grads: Mapping[str, Any]) -> None:
        """Update every params[k] in place from grads[k] (the same keys and shapes)."""
        _check_pair("Adam.step", params, grads)
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t         # bias corrections
        for k, P in params.items():
            G = grads[k]
            xp = _xp(P)
            if k not in self.m:
                self.m[k], self.v[k] = xp.zeros_like(P), xp.zeros_like(P)
            M, S = self.m[k], self.v[k]
            f = P.dtype.type
            M *= f(b1)                                          # M = β₁ M + (1 - β₁) G
            M += f(1.0 - b1) * G
            S *= f(b2)                                          # S = β₂ S + (1 - β₂) G²
            S += f(1.0 - b2) * (G * G)
            P -= f(self.lr) * (M / f(c1)) / (xp.sqrt(S / f(c2)) + f(self.eps))   # P -= lr M̂ / (√Ŝ + ε)

    def state_dict(self) -> dict:
        """Hyperparameters, step count and moment buffers (copies): what step() reads besides the gradients."""
        return {"type": "Adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps, "t": self.t,
                "buffers": {"m": {k: a.copy() for k, a in self.m.items()},
                            "v": {k: a.copy() for k, a in self.v.items()}}}

    def load_state_dict(self, d: dict) -> None:
        """Restore what state_dict gave, checked completely first (a bad one changes nothing)."""
        _load_common(self, "Adam", d, ("lr", "betas", "eps"), ("m", "v"))

    def __repr__(self):
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps})"


def _load_common(opt, kind, d, hyper, buffers):
    """Validate a state_dict completely, then install it (a bad one leaves the optimizer unchanged)."""
    where = f"{kind}.load_state_dict"
    if not isinstance(d, dict) or d.get("type") != kind:
        got = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{where}: expected a {kind} state_dict, got {got!r}")
    missing = [k for k in (*hyper, "t", "buffers") if k not in d]
    if missing:
        raise ValueError(f"{where}: state_dict lacks {missing}")
    fresh = type(opt)(**{h: d[h] for h in hyper})
    t = d["t"]
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
        raise ValueError(f"{where}: t must be a non-negative int, got {t!r}")
    bufs = d["buffers"]
    if not isinstance(bufs, dict) or set(bufs) != set(buffers):
        raise ValueError(f"{where}: buffers must have keys {list(buffers)}, got {sorted(bufs) if isinstance(bufs, dict) else bufs!r}")
    keys = [set(bufs[b]) for b in buffers]
    if any(k != keys[0] for k in keys):
        raise ValueError(f"{where}: buffers {list(buffers)} hold different parameter keys")
    for b in buffers:
        for k, a in bufs[b].items():
            if not hasattr(a, "dtype") or a.dtype.kind != "f":
                raise ValueError(f"{where}: buffer {b}[{k!r}] must be a float array")
    for h in hyper:
        setattr(opt, h, getattr(fresh, h))
    opt.t = int(t)
    for b in buffers:
        setattr(opt, b, {k: a.copy() for k, a in bufs[b].items()})
