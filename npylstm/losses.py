"""Losses, each returning (loss, gradient on the prediction), backward derived by hand.

mse_loss(y_pred, y_true, mask=None) -> (loss, dy_pred)
    loss = Σ m (P - Y)² / count          count = number of unmasked elements
    dP   = 2 m (P - Y) / count

cross_entropy_loss(logits, target, mask=None) -> (loss, dlogits)      Z : (..., C) logits, class axis last
    log p = Z - max(Z) - log Σ_c exp(Z_c - max(Z))       (stable log-sum-exp: no exp overflows)
    loss  = -Σ_rows m Σ_c Y_c log p_c / rows             rows = number of unmasked rows
    dZ    = m (p Σ_c Y_c - Y) / rows                     (= m (p - Y) / rows for one-hot Y)

Y may be class ids, one-hot rows, probabilities (label smoothing, distillation) or any soft targets: the
gradient above holds whatever Σ_c Y_c is, so rows that do not sum to 1 (weighted rows, partial labels) get
the gradient of the loss as written, checked against finite differences in the tests.

The mask holds booleans over the leading axes (e.g. (N, T) for sequence outputs): False marks padding,
which adds nothing to the loss and gets a zero gradient. With every element masked the loss is 0.0 and
the gradient zero (an empty mean, taken as nothing to learn).
"""

import numpy as np

from .checks import as_float_array


def _check_mask(where, mask, lead_shape, what):
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{where}: mask must be booleans, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}, expected {tuple(lead_shape)} ({what})")
    return mask


def mse_loss(y_pred, y_true, mask=None):
    """Mean squared error over the unmasked elements.

    y_pred, y_true : same shape (..., out);  mask : booleans over leading axes of y_pred (e.g. (N, T)) or None.
    returns loss (float), dy_pred (y_pred's shape and dtype)
    """
    where = "mse_loss"
    P = as_float_array(where, "y_pred", y_pred)
    Y = as_float_array(where, "y_true", y_true, P.dtype)
    if P.shape != Y.shape:
        raise ValueError(f"{where}: y_true has shape {tuple(Y.shape)}, expected y_pred's {tuple(P.shape)}")
    diff = P - Y
    if mask is None:
        count = diff.size
    else:
        mask = np.asarray(mask)
        if not 1 <= mask.ndim <= P.ndim:
            raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}, expected leading axes of y_pred "
                             f"{tuple(P.shape)}")
        mask = _check_mask(where, mask, P.shape[:mask.ndim], "leading axes of y_pred")
        m = mask.reshape(mask.shape + (1,) * (P.ndim - mask.ndim)).astype(P.dtype)
        count = int(mask.sum()) * int(np.prod(P.shape[mask.ndim:], dtype=np.int64))
        diff = diff * m
    if count == 0:
        return 0.0, np.zeros_like(P)
    loss = float((diff * diff).sum() / count)
    # forward: loss = Σ m (P - Y)² / count  ->  dP = 2 m (P - Y) / count
    dP = diff * (2.0 / count)
    return loss, dP.astype(P.dtype, copy=False)


def log_softmax(Z):
    """log p = Z - max(Z) - log Σ exp(Z - max(Z)) over the last axis; never overflows."""
    Z_shift = Z - Z.max(axis=-1, keepdims=True)
    return Z_shift - np.log(np.exp(Z_shift).sum(axis=-1, keepdims=True))


def class_targets(where, target, logits_shape):
    """Integer class ids (...) or one-hot / probability rows (..., C) -> float rows (..., C) in the logits' layout."""
    C = logits_shape[-1]
    target = np.asarray(target)
    if target.dtype.kind in "iu":
        if tuple(target.shape) != tuple(logits_shape[:-1]):
            raise ValueError(f"{where}: integer target has shape {tuple(target.shape)}, expected "
                             f"{tuple(logits_shape[:-1])} (the logits without their class axis)")
        if target.size and (target.min() < 0 or target.max() >= C):
            raise ValueError(f"{where}: target class ids must lie in [0, {C}), got values in "
                             f"[{target.min()}, {target.max()}]")
        return np.eye(C, dtype=np.float64)[target]
    if target.dtype.kind != "f":
        raise ValueError(f"{where}: target must be integer class ids or a float one-hot array, got dtype {target.dtype}")
    target = as_float_array(where, "target", target)
    if tuple(target.shape) != tuple(logits_shape):
        raise ValueError(f"{where}: one-hot target has shape {tuple(target.shape)}, expected the logits' "
                         f"{tuple(logits_shape)}")
    return target


def cross_entropy_loss(logits, target, mask=None):
    """Softmax cross-entropy, mean over the unmasked rows.

    logits : (..., C);  target : int class ids (...) or float rows (..., C): one-hot, probabilities, or soft
    targets whose rows need not sum to 1;  mask : booleans (...) or None.
    returns loss (float), dlogits (logits' shape and dtype)
    """
    where = "cross_entropy_loss"
    Z = as_float_array(where, "logits", logits)
    if Z.ndim < 1 or Z.shape[-1] < 1:
        raise ValueError(f"{where}: logits must have a class axis last, got shape {tuple(Z.shape)}")
    Y = class_targets(where, target, Z.shape).astype(Z.dtype, copy=False)
    if mask is None:
        m = np.ones(Z.shape[:-1] + (1,), Z.dtype)
        rows = int(np.prod(Z.shape[:-1], dtype=np.int64))
    else:
        mask = _check_mask(where, mask, Z.shape[:-1], "the logits without their class axis")
        m = mask[..., None].astype(Z.dtype)
        rows = int(mask.sum())
    if rows == 0:
        return 0.0, np.zeros_like(Z)
    logp = log_softmax(Z)                                              # (..., C)
    loss = float(-(m * Y * logp).sum() / rows)
    # forward: loss = -Σ m Σ_c Y_c (Z_c - lse(Z)) / rows,  ∂lse/∂Z = p  ->  dZ = m (p Σ_c Y_c - Y) / rows
    p = np.exp(logp)
    dZ = m * (p * Y.sum(axis=-1, keepdims=True) - Y) / rows
    return loss, dZ.astype(Z.dtype, copy=False)


def accuracy(logits, target, mask=None):
    """Fraction of unmasked rows whose largest logit is the target class (one-hot targets: their argmax)."""
    target = np.asarray(target)
    cls = target if target.dtype.kind in "iu" else np.asarray(target).argmax(axis=-1)
    hit = np.asarray(logits).argmax(axis=-1) == cls
    if mask is not None:
        n = int(np.sum(mask))
        return float(hit[mask].sum() / n) if n else 0.0
    return float(hit.mean()) if hit.size else 0.0
