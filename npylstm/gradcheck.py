"""Finite-difference gradient checks in float64: for any hand-written backward pass, any layer, and npylstm's own.

    rows = check_backward(forward, backward, {"x": x, "W": W})   # forward(**inputs) -> (out, cache),
                                                                  # backward(dout, cache) -> {"x": dx, "W": dW}
    assert_backward(forward, backward, {"x": x, "W": W})         # the same; AssertionError with the table
    rows = check_layer(layer, x)                                 # dx and every parameter of a layer
    rows = check_gradients()                                     # npylstm's LSTM and GRU: cell, sequence, layer, model

For a scalar loss of the outputs with random, non-zero upstream gradients,

    loss = Σ_k Σ dout_k ⊙ out_k          (for the LSTM layer: Σ dY ⊙ Y + Σ dh_n ⊙ h_n + Σ dc_n ⊙ c_n)

the gradient backward returns for a tensor P is compared, entry by entry, with the fourth-order central
difference (L(s) = loss(P + s e_k))

    dloss/dP[k] ≈ (L(−2ε) − 8 L(−ε) + 8 L(ε) − L(2ε)) / 12ε

and each tensor gets one number, its relative error

    max|analytic − numeric| / max(max|analytic|, max|numeric|, FD_FLOOR).

`npylstm gradcheck` checks npylstm's own backward passes this way, with biases, initial states and upstream
gradients all drawn non-zero (a zero bias or a zero state hides some bugs: `npylstm gradcheck --bugs` shows
which), prints the table and exits 1 if a tensor fails.
"""

import inspect
import math
import sys
from functools import partial
from typing import NamedTuple

import numpy as np

from . import cell, gru_cell, gru_sequence, sequence
from .checks import as_float_array, check_positive_int
from .files import write_json
from .gru import GRU, gru_param_names
from .layers import Linear
from .losses import cross_entropy_loss, mse_loss
from .lstm import LSTM, param_names

FD_EPS = 1e-4     # step of the 4-point stencil: truncation O(ε⁴) ≈ 1e-16 f⁽⁵⁾, round-off ~1.5 ulp(loss)/ε ≈ 1e-11.
                  # (The 2-point stencil at ε = 1e-6 had round-off ulp(loss)/2ε ≈ 2e-10, above the 1e-10
                  # the floor below allows: hypothesis found such a case, T=2, N=1, D=3, H=1, L=3, seed 6.)
FD_FLOOR = 1e-4   # the round-off above (~1e-11) is 1e-7 of this: a tensor whose gradients all sit below
                  # it (fully saturated gates) is held to max|a − b| < REL_TOL * FD_FLOOR = 1e-10 instead
REL_TOL = 1e-6    # the pass mark; float64 BPTT agrees with these differences to ~1e-10 or better
REPEAT_RTOL = 1e-12   # two forward calls on the same inputs may differ by BLAS rounding, never by more
WORST_ENTRIES = 3     # entries with the largest |analytic − numeric| a row keeps, for the failure report

LEVELS = ("cell", "sequence", "layer", "model")
VARIANTS = ("lstm", "gru-after", "gru-before")   # gru-after: reset_after=True (PyTorch, cuDNN, Keras); gru-before: False
MASKS = ("none", "pre", "post")                  # padding at the start or at the end of the rows
LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy_loss}


class GradcheckRow(NamedTuple):
    level: str          # where: "backward", a layer's class name, or "lstm cell", "gru-after sequence post", ...
    tensor: str         # "x", "h0", "W_x_l0", ... (the key in inputs / params)
    shape: tuple
    max_rel_error: float
    passed: bool
    worst: tuple = ()   # ((index, analytic, numeric), ...): the WORST_ENTRIES largest |analytic − numeric|


def rel_error(a, b, floor=FD_FLOOR):
    """max|a − b| / max(max|a|, max|b|, floor): one number per tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), floor)
    return float(np.abs(a - b).max()) / scale


def numeric_gradient(loss, a, eps=FD_EPS):
    """Fourth-order central differences of the scalar `loss()` with respect to the array `a` (which loss
    reads; any layout whose flat view is a view, e.g. C-contiguous).

    `a` is perturbed in place one entry at a time and restored exactly (the saved value is written
    back), so the caller's arrays are unchanged afterwards.
    """
    grad = np.empty(a.shape, np.float64)
    flat, g = a.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, a) and a.size:
        raise ValueError("numeric_gradient: a must be contiguous (it is perturbed in place through a flat view)")
    for k in range(flat.size):
        saved = flat[k]
        L = []
        for step in (-2 * eps, -eps, eps, 2 * eps):
            flat[k] = saved + step
            L.append(loss())
        flat[k] = saved
        g[k] = (L[0] - 8 * L[1] + 8 * L[2] - L[3]) / (12 * eps)
    return grad


def _row(level, name, analytic, numeric, tol):
    """One GradcheckRow: the relative error and the worst entries."""
    err = rel_error(analytic, numeric)
    diff = np.abs(analytic - numeric).reshape(-1)
    order = np.argsort(-np.nan_to_num(diff, nan=np.inf), kind="stable")[:WORST_ENTRIES]
    worst = tuple((tuple(int(i) for i in np.unravel_index(int(k), analytic.shape)),
                   float(analytic.flat[k]), float(numeric.flat[k])) for k in order)
    return GradcheckRow(level, name, tuple(analytic.shape), err, bool(err < tol), worst)


def compare(level, analytic, arrays, loss, tol=REL_TOL, eps=FD_EPS):
    """One GradcheckRow per name in `analytic` (a dict name -> gradient); arrays[name] is what loss reads."""
    return [_row(level, name, np.asarray(grad, np.float64), numeric_gradient(loss, arrays[name], eps), tol)
            for name, grad in analytic.items()]


def _draw(rng, shape, scale=1.0):
    """Random, non-zero, float64: scale * U(±[0.1, 1]) -- no entry is near zero."""
    return scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


# ---------------------------------------------------------------------- argument checks shared below
def _check_callable(where, name, f):
    if not callable(f):
        raise TypeError(f"{where}: {name} must be callable, got {type(f).__name__}")


def _check_settings(where, tol, eps, seed):
    for name, v in (("tol", tol), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: {name} must be a positive number, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed must be a non-negative int, got {seed!r}")
    return float(tol), float(eps)


def _float64_copy(where, name, a):
    """A float64, C-contiguous copy of a float array (refused: ints, bools, complex, NaN, inf)."""
    return np.array(as_float_array(where, name, a), dtype=np.float64, order="C", copy=True)


def _outputs(where, what, out):
    """The float arrays of `out` (an array, or a tuple/list of them, nested), as float64 copies."""
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _outputs(where, what, o)]
    a = np.asarray(out)
    if a.dtype.kind != "f":
        raise TypeError(f"{where}: {what} must be float arrays, got dtype {a.dtype}")
    return [np.array(a, np.float64)]


def _like(template, leaves):
    """`leaves` (an iterator of arrays) put back into template's nesting of tuples."""
    if isinstance(template, (tuple, list)):
        return tuple(_like(t, leaves) for t in template)
    return next(leaves)


def _same(outs, again):
    return len(outs) == len(again) and all(
        o.shape == a.shape and np.allclose(o, a, rtol=REPEAT_RTOL, atol=REPEAT_RTOL * float(np.abs(o).max(initial=1.0)))
        for o, a in zip(outs, again))


# ---------------------------------------------------------------------- any forward/backward pair
def _split_forward(where, result):
    """forward's return -> (outputs as returned, cache, form).

    (out, cache): form "single" if out is an array, "tuple" if a tuple of arrays (backward gets a tuple);
    (out_1, ..., out_k, cache), k >= 2: form "spread" (backward(dout_1, ..., dout_k, cache), CS231n's LSTM step).
    """
    if not isinstance(result, tuple) or len(result) < 2:
        raise TypeError(f"{where}: forward must return (out, cache) or (out_1, ..., out_k, cache), "
                        f"got {type(result).__name__}")
    if len(result) > 2:
        return tuple(result[:-1]), result[-1], "spread"
    out, cache = result
    return out, cache, "tuple" if isinstance(out, (tuple, list)) else "single"


def _named_gradients(where, grads, a):
    """backward's return (a dict keyed like inputs, a tuple in their order, or one array for one input) ->
    {name: float64 copy}, each checked against its input's shape."""
    names = list(a)
    if isinstance(grads, np.ndarray) and len(names) == 1:
        grads = {names[0]: grads}
    if isinstance(grads, dict):
        if set(grads) != set(names):
            raise ValueError(f"{where}: backward returned gradients for {sorted(map(str, grads))}, "
                             f"expected the keys of inputs {sorted(names)}")
    elif isinstance(grads, (tuple, list)):
        if len(grads) != len(names):
            raise ValueError(f"{where}: backward returned {len(grads)} gradients, expected {len(names)}, one per "
                             f"input in order ({', '.join(names)}); return a dict to name them")
        grads = dict(zip(names, grads))
    else:
        raise TypeError(f"{where}: backward must return a dict keyed like inputs or a tuple in their order, "
                        f"got {type(grads).__name__}")
    out = {}
    for name in names:
        g = grads[name]
        g = np.asarray(g) if g is not None else None
        if g is None or g.dtype.kind != "f":
            raise TypeError(f"{where}: backward's gradient for {name!r} must be a float array, "
                            f"got {'None' if g is None else f'dtype {g.dtype}'}")
        if g.shape != a[name].shape:
            raise ValueError(f"{where}: backward's gradient for {name!r} has shape {g.shape}, expected "
                             f"{a[name].shape} (the shape of inputs[{name!r}])")
        out[name] = np.array(g, np.float64)   # a copy: a later forward may reuse the buffer it lives in
    return out


def _check_backward(forward, backward, inputs, tol, eps, seed, where="check_backward", level="backward"):
    _check_callable(where, "forward", forward)
    _check_callable(where, "backward", backward)
    tol, eps = _check_settings(where, tol, eps, seed)
    if not isinstance(inputs, dict) or not inputs:
        raise TypeError(f"{where}: inputs must be a non-empty dict name -> float array, got "
                        f"{type(inputs).__name__ if not isinstance(inputs, dict) else 'an empty dict'}")
    for name in inputs:
        if not isinstance(name, str):
            raise TypeError(f"{where}: the keys of inputs must be the argument names (str), got {name!r}")
    a = {name: _float64_copy(where, f"inputs[{name!r}]", v) for name, v in inputs.items()}
    saved = {name: v.copy() for name, v in a.items()}

    out, cache, form = _split_forward(where, forward(**a))
    changed = [name for name in a if not np.array_equal(a[name], saved[name])]
    if changed:
        raise ValueError(f"{where}: forward changed {changed} in place; it must leave its inputs as they are")
    outs = _outputs(where, "forward's outputs", out)
    if not _same(outs, _outputs(where, "forward's outputs", _split_forward(where, forward(**a))[0])):
        raise ValueError(f"{where}: forward returned different outputs for the same inputs "
                         f"(does it draw random numbers, or keep state from call to call?)")
    rng = np.random.default_rng(seed)
    douts = [_draw(rng, o.shape) for o in outs]
    dargs = list(map(np.copy, douts))
    if form == "single":
        grads = backward(dargs[0], cache)
    elif form == "tuple":
        grads = backward(_like(out, iter(dargs)), cache)
    else:
        grads = backward(*_like(out, iter(dargs)), cache)
    analytic = _named_gradients(where, grads, a)

    def loss():
        res = _outputs(where, "forward's outputs", _split_forward(where, forward(**a))[0])
        return sum(float(np.sum(d * o)) for d, o in zip(douts, res))

    return compare(level, analytic, a, loss, tol, eps)


def check_backward(forward, backward, inputs, *, tol=REL_TOL, eps=FD_EPS, seed=0):
    """Check a hand-written backward against central differences; returns one GradcheckRow per input.

    forward(**inputs) -> (out, cache)            out : an array or a tuple of arrays; cache : anything, or None
                      or (out_1, ..., out_k, cache)   (then backward(dout_1, ..., dout_k, cache))
    backward(dout, cache) -> gradients: a dict keyed like inputs, or a tuple in their order
    inputs : dict name -> float array, every tensor to check (anything else: bind it with functools.partial).
             The check works on float64 copies: the caller's arrays are never changed.

    The upstream gradient dout is drawn random and non-zero from `seed`; the loss is Σ dout ⊙ out, whose
    gradient backward must return. A tensor passes when its relative error (module docstring) < tol.
    """
    return _check_backward(forward, backward, inputs, tol, eps, seed)


def assert_backward(forward, backward, inputs, *, tol=REL_TOL, eps=FD_EPS, seed=0):
    """check_backward, raising AssertionError if a tensor fails: the message is the table and, for each
    failing tensor, its worst entries (index, analytic, numeric). Returns the rows when every tensor passes."""
    rows = _check_backward(forward, backward, inputs, tol, eps, seed, where="assert_backward")
    if not all(r.passed for r in rows):
        raise AssertionError("assert_backward: gradient check failed\n" + format_table(rows, tol, eps))
    return rows


# ---------------------------------------------------------------------- any layer
def _positional_capacity(f):
    """How many positional arguments f accepts (a large number for *args)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 1 << 30
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _state_names(layer, state):
    """Row names of the initial state tensors: the layer's state_names + "0" (h0, c0), else state[i]."""
    leaves = len(_outputs("", "", state)) if state is not None else 0
    names = tuple(getattr(layer, "state_names", ()))
    if len(names) == leaves:
        return [f"{n}0" for n in names]
    return ["state"] if not isinstance(state, (tuple, list)) else [f"state[{i}]" for i in range(leaves)]


def _layer_protocol(where, layer, selected):
    """(forward, names of the parameters to check), once the layer is known to follow the protocol with
    float64 parameters and no carried state."""
    for attr in ("backward", "zero_grad"):
        _check_callable(where, f"layer.{attr}", getattr(layer, attr, None))
    fwd = getattr(layer, "forward", layer)
    _check_callable(where, "layer.forward (or the layer itself)", fwd)
    params, grads = getattr(layer, "params", None), getattr(layer, "grads", None)
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"{where}: layer must have dicts params and grads (name -> array), "
                        f"got {type(params).__name__} and {type(grads).__name__}")
    if selected is not None:
        unknown = [k for k in selected if k not in params] if not isinstance(selected, str) else [selected]
        if unknown:
            raise ValueError(f"{where}: params must be names in layer.params, got {unknown!r} "
                             f"(the layer has {sorted(params)})")
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype != np.float64 or not p.flags.c_contiguous:
            what = type(p).__name__ if not isinstance(p, np.ndarray) else (
                f"dtype {p.dtype}" if p.dtype != np.float64 else "not C-contiguous")
            raise ValueError(f"{where}: parameter {name!r} must be a C-contiguous float64 NumPy array "
                             f"(finite differences need float64: build the layer with dtype=np.float64), got {what}")
    if getattr(layer, "stateful", False):
        raise ValueError(f"{where}: the layer is stateful: each call starts from the state the last one left, "
                         f"so its output is not a function of x alone; check a stateless layer")
    return fwd, list(params if selected is None else selected)


def check_layer(layer, x, *, state=None, mask=None, loss=None, target=None, params=None, seed=0, tol=REL_TOL,
                eps=FD_EPS):
    """Check a layer's backward against central differences: dx, the initial state's gradient (if `state`
    is given), and every parameter's gradient. Returns one GradcheckRow per tensor, named "x", "h0", ...
    and by the keys of layer.params.

    The layer protocol (npylstm's LSTM, GRU, Linear, Sequential, or a user's own layer):
        forward(x) (or __call__) -> y, or (y, extra, ...)  e.g. the LSTM's y, (h_n, c_n)
        backward(dy[, dextra, ...]) -> dx, or (dx, dstate) with a state; adds parameter gradients into grads
        params, grads : dicts name -> float64 array;  zero_grad()
    Extra outputs enter the loss only if backward takes their gradients (the LSTM's backward(dy, (dh_n, dc_n))).

    x, state : float arrays (state: an array or a tuple, passed as forward's second argument); checked on
        float64 copies.  mask : passed to forward as mask=.
    loss : None (loss = Σ dout ⊙ out, dout random non-zero from `seed`), or "mse" / "cross_entropy" / a
        callable (y, target) -> (loss, dy) such as npylstm.mse_loss: the loss of y against `target`, whose
        gradient dy then comes from the loss.
    params : the names of the parameters to check (default: all of layer.params).
    The parameters are perturbed in place and restored exactly (so are the grads); the layer is left as
    after a forward on x. A stateful layer (its output depends on earlier calls) is refused.
    """
    where = "check_layer"
    tol, eps = _check_settings(where, tol, eps, seed)
    fwd, params = _layer_protocol(where, layer, params)
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"{where}: loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
        loss = LOSSES[loss]
    if loss is not None:
        _check_callable(where, "loss", loss)
        if target is None:
            raise ValueError(f"{where}: a loss needs a target")
    x = _float64_copy(where, "x", x)
    if state is not None:
        state = _like(state, iter(_float64_copy(where, "state", s) for s in _outputs(where, "state", state)))
    names = ["x"] + _state_names(layer, state)
    arrays = dict(zip(names, [x] + ([] if state is None else _outputs(where, "state", state))))
    if state is not None:   # the state forward reads: views of the arrays perturbed below
        state = _like(state, iter(arrays[n] for n in names[1:]))
    args = (x,) if state is None else (x, state)
    kwargs = {} if mask is None else {"mask": mask}

    def call():
        out = fwd(*args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        if np.asarray(y).dtype != np.float64:
            raise ValueError(f"{where}: the layer's output is {np.asarray(y).dtype}: finite differences need "
                             f"float64 (build the layer with dtype=np.float64)")
        return out

    saved_params = {k: p.copy() for k, p in layer.params.items()}
    saved_grads = {k: np.array(g) for k, g in layer.grads.items()}
    try:
        out = call()
        if not _same(_outputs(where, "the layer's outputs", out), _outputs(where, "the layer's outputs", call())):
            raise ValueError(f"{where}: the layer returned different outputs for the same x (does it draw random "
                             f"numbers, or keep state from call to call?)")
        extras = list(out[1:]) if isinstance(out, tuple) else []
        extras = extras[:max(_positional_capacity(layer.backward) - 1, 0)] if loss is None else []
        y = out[0] if isinstance(out, tuple) else out
        if loss is None:
            rng = np.random.default_rng(seed)
            douts = [_draw(rng, o.shape) for o in _outputs(where, "the layer's outputs", [y] + extras)]
            dy, dextras = douts[0], list(_like(extras, iter(douts[1:])))
        else:
            dy, dextras = np.asarray(loss(y, target)[1], np.float64), []
        layer.zero_grad()
        back = layer.backward(np.copy(dy), *dextras)
        if state is not None:
            if not isinstance(back, tuple) or len(back) < 2:
                raise ValueError(f"{where}: with a state, backward must return (dx, dstate), got {type(back).__name__}")
            dstate = _outputs(where, "backward's dstate", back[1])
        dx = back[0] if isinstance(back, tuple) else back
        analytic = {"x": dx}
        if state is not None:
            if len(dstate) != len(names) - 1:
                raise ValueError(f"{where}: backward returned {len(dstate)} state gradients, expected {len(names) - 1}")
            analytic.update(zip(names[1:], dstate))
        grads = layer.grads
        missing = [k for k in params if k not in grads]
        if missing:
            raise ValueError(f"{where}: layer.grads has no entry for {missing}: backward must add every "
                             f"parameter's gradient into grads")
        analytic.update((k, grads[k]) for k in params)
        arrays.update(layer.params)
        for name, g in analytic.items():
            g = np.asarray(g)
            if g.shape != arrays[name].shape:
                raise ValueError(f"{where}: the gradient for {name!r} has shape {g.shape}, expected {arrays[name].shape}")
            analytic[name] = np.array(g, np.float64)

        def value():
            out = call()
            if loss is not None:
                return float(loss(out[0] if isinstance(out, tuple) else out, target)[0])
            leaves = _outputs(where, "the layer's outputs", [out[0]] + list(out[1:1 + len(extras)])
                              if isinstance(out, tuple) else [out])
            return sum(float(np.sum(d * o)) for d, o in zip(douts, leaves))

        rows = compare(type(layer).__name__, analytic, arrays, value, tol, eps)
    finally:
        for k, p in layer.params.items():
            if k in saved_params:
                np.copyto(p, saved_params[k])
        for k, g in layer.grads.items():
            if k in saved_grads and np.shape(g) == saved_grads[k].shape:
                np.copyto(g, saved_grads[k])
    call()   # the cache of a forward at the unperturbed parameters
    return rows


# ---------------------------------------------------------------------- npylstm's own LSTM and GRU
def padding_mask(kind, T, N):
    """(T, N) booleans, or None for "none": row n holds T − ⌊n T / (N − 1)⌋ real steps (all of them, some,
    none: row 0 full, the last row all padding), at the end of the row ("post") or at its start ("pre")."""
    if kind == "none":
        return None
    lengths = T - (np.arange(N) * T) // max(N - 1, 1)
    t = np.arange(T)[:, None]
    return t < lengths if kind == "post" else t >= T - lengths


def _weights(rng, variant, D, H, scale):
    """The cell's weights, drawn: W_x (D, G H), W_h (H, G H), biases (G H,) non-zero (G = 4 LSTM, 3 GRU);
    weights U(±scale/√(D+H)) (between 0.1 and 1 of it), biases half the scale."""
    k = scale / np.sqrt(D + H)
    G = 4 if variant == "lstm" else 3
    W = [_draw(rng, (D, G * H), k), _draw(rng, (H, G * H), k)]
    return W + [_draw(rng, G * H, scale * 0.5) for _ in range(1 if variant == "lstm" else 2)]


def _inputs(rng, variant, level, T, N, D, H, scale, zero_init):
    """The tensors of a cell or sequence check, drawn non-zero; zero_init: biases and initial states 0."""
    x = _draw(rng, (N, D) if level == "cell" else (T, N, D))
    states = ("h_prev", "c_prev") if level == "cell" else ("h0", "c0")
    states = states if variant == "lstm" else states[:1]
    a = dict(x=x, **{s: _draw(rng, (N, H)) for s in states})
    weights = _weights(rng, variant, D, H, scale)
    a.update(zip(("W_x", "W_h", "b") if variant == "lstm" else ("W_x", "W_h", "b_x", "b_h"), weights))
    if zero_init:
        for k in a:
            if k in states or k.startswith("b"):
                a[k] = np.zeros_like(a[k])
    return a


def _implementation(variant, level, module=None, mask=None):
    """(forward, backward) of a cell step or a sequence; `module`: a replacement for npylstm's own module."""
    if variant == "lstm":
        m = module or (cell if level == "cell" else sequence)
        if level == "cell":
            return m.step_forward, m.step_backward
        return partial(m.sequence_forward, mask=mask), m.sequence_backward
    m = module or (gru_cell if level == "cell" else gru_sequence)
    after = variant == "gru-after"
    if level == "cell":
        return partial(m.gru_step_forward, reset_after=after), m.gru_step_backward
    return partial(m.gru_sequence_forward, reset_after=after, mask=mask), m.gru_sequence_backward


def _label(variant, level, mask_kind):
    return f"{variant} {level}" + ("" if mask_kind == "none" else f" {mask_kind}")


def check_function(rng, variant, level, mask_kind="none", T=5, N=3, D=3, H=4, scale=2.0, tol=REL_TOL,
                   module=None, zero_init=False):
    """A cell step ("cell") or a sequence ("sequence", with a padding mask) of the LSTM or a GRU variant,
    checked with check_backward on drawn tensors. module replaces cell.py / sequence.py / gru_*.py (the bug
    gallery passes planted copies); zero_init draws the biases and initial states as zeros instead."""
    mask = None if level == "cell" else padding_mask(mask_kind, T, N)
    forward, backward = _implementation(variant, level, module, mask)
    a = _inputs(rng, variant, level, T, N, D, H, scale, zero_init)
    return check_backward(forward, backward, a, tol=tol, seed=int(rng.integers(2**32)))


def _layer(rng, variant, D, H, layers, scale, batch_first=False):
    """An LSTM or GRU layer in float64 with every parameter drawn (non-zero biases)."""
    if variant == "lstm":
        layer = LSTM(D, H, num_layers=layers, batch_first=batch_first, dtype=np.float64)
    else:
        layer = GRU(D, H, num_layers=layers, batch_first=batch_first, dtype=np.float64,
                    reset_after=variant == "gru-after")
    for k in range(layers):
        names = param_names(k) if variant == "lstm" else gru_param_names(k)
        layer.params.update(zip(names, _weights(rng, variant, D if k == 0 else H, H, scale)))
    layer.zero_grad()
    return layer


def check_rnn_layer(rng, variant, mask_kind="none", T=5, N=3, D=3, H=4, layers=2, scale=2.0, tol=REL_TOL):
    """An L-layer LSTM or GRU with check_layer: x, the initial state and every layer's parameters."""
    layer = _layer(rng, variant, D, H, layers, scale)
    x = _draw(rng, (T, N, D))
    state = tuple(_draw(rng, (layers, N, H)) for _ in layer.state_names)
    rows = check_layer(layer, x, state=state if variant == "lstm" else state[0],
                       mask=padding_mask(mask_kind, T, N), seed=int(rng.integers(2**32)), tol=tol)
    return [r._replace(level=_label(variant, "layer", mask_kind)) for r in rows]


def check_model(rng, variants, mask_kind="post", T=5, N=3, D=3, H=4, classes=3, scale=2.0, tol=REL_TOL):
    """Sequential models with check_layer, through their losses: one layer per variant (batch_first and
    time-major alternating) and a Linear head, every step's output (masked) into the cross-entropy against
    soft targets whose rows do not sum to 1; then the first variant's layer, the last step's output and the
    MSE. Checks x, the head's W and b, and each recurrent layer's biases (the layer level checks the rest)."""
    from .model import Sequential
    rows = []
    for loss_name, stack in (("cross_entropy", variants), ("mse", variants[:1])):
        every_step = loss_name == "cross_entropy"
        rnns = [_layer(rng, v, D if i == 0 else H, H, 1, scale, batch_first=i % 2 == 0) for i, v in enumerate(stack)]
        head = Linear(H, classes, dtype=np.float64)
        head.params.update(W=_draw(rng, (H, classes), scale / np.sqrt(H)), b=_draw(rng, classes, scale * 0.5))
        model = Sequential(rnns + [head], return_sequences=every_step, seed=0)
        x = _draw(rng, (N, T, D))
        mask = padding_mask(mask_kind, T, N)
        mask = None if mask is None else mask.T.copy()                                # (N, T)
        target = rng.uniform(0.1, 1.0, (N, T, classes) if every_step else (N, classes))   # rows not summing to 1
        loss = partial(LOSSES[loss_name], mask=mask if every_step else None)
        checked = [k for k in model.params if k.startswith(f"{len(rnns)}.") or k.split(".", 1)[1].startswith("b")]
        r = check_layer(model, x, mask=mask, loss=loss, target=target, params=checked, tol=tol)
        rows += [row._replace(level=f"model {loss_name}" + ("" if mask is None else f" {mask_kind}")) for row in r]
    return rows


def check_gradients(layers=2, hidden=4, steps=5, batch=3, input_size=3, seed=0, weight_scale=2.0, tol=REL_TOL,
                    variants=VARIANTS, masks=MASKS, levels=LEVELS):
    """Check every hand-written gradient of npylstm's LSTM and GRUs; returns a list of GradcheckRow.

    variants : of "lstm", "gru-after" (reset_after=True), "gru-before" (reset_after=False)
    masks    : of "none", "pre", "post": the sequence level runs each; the layer and model levels run the
               last one (the default, all three: the layer and the model with post-padding)
    levels   : of "cell", "sequence", "layer", "model" (the model: a Sequential of the variants' layers, a
               Linear head, the cross-entropy and the MSE)
    weight_scale widens the weights (U(±scale/√(D+H))) so that some gates run saturated.
    """
    return [r for rows in iter_gradients(layers, hidden, steps, batch, input_size, seed, weight_scale, tol,
                                         variants, masks, levels) for r in rows]


def iter_gradients(layers=2, hidden=4, steps=5, batch=3, input_size=3, seed=0, weight_scale=2.0, tol=REL_TOL,
                   variants=VARIANTS, masks=MASKS, levels=LEVELS):
    """check_gradients one check at a time: yields each check's rows (the same draws), so a caller may stop
    at the first failure."""
    where = "check_gradients"
    for name, v in (("layers", layers), ("hidden", hidden), ("steps", steps), ("batch", batch),
                    ("input_size", input_size)):
        check_positive_int(where, name, v)
    if isinstance(weight_scale, bool) or not isinstance(weight_scale, (int, float, np.floating)) \
            or not (np.isfinite(weight_scale) and weight_scale > 0):
        raise ValueError(f"{where}: weight_scale must be a positive number, got {weight_scale!r}")
    for name, given, allowed in (("variants", variants, VARIANTS), ("masks", masks, MASKS), ("levels", levels, LEVELS)):
        if isinstance(given, str) or (not given and name != "levels") or any(g not in allowed for g in given):
            raise ValueError(f"{where}: {name} must be a non-empty list of {', '.join(allowed)}; got {given!r}")
    rng = np.random.default_rng(seed)
    size = dict(T=steps, N=batch, D=input_size, H=hidden, scale=weight_scale, tol=tol)
    for v in variants:
        if "cell" in levels:
            yield [r._replace(level=_label(v, "cell", "none")) for r in check_function(rng, v, "cell", **size)]
        if "sequence" in levels:
            for m in masks:
                yield [r._replace(level=_label(v, "sequence", m)) for r in check_function(rng, v, "sequence", m, **size)]
        if "layer" in levels:
            yield check_rnn_layer(rng, v, masks[-1], layers=layers, **size)
    if "model" in levels:
        yield check_model(rng, variants, masks[-1], **size)


# ---------------------------------------------------------------------- report
def format_table(rows, tol=REL_TOL, eps=FD_EPS):
    """The fixed-width table `npylstm gradcheck` prints; each failing tensor is followed by its worst entries."""
    w_level = max([len("level")] + [len(r.level) for r in rows])
    w_tensor = max([len("tensor")] + [len(r.tensor) for r in rows])
    w_shape = max([len("shape")] + [len(str(tuple(r.shape))) for r in rows])
    lines = [f"{'level':<{w_level}} {'tensor':<{w_tensor}} {'shape':<{w_shape}} {'max rel error':>13}  result",
             f"{'-' * w_level} {'-' * w_tensor} {'-' * w_shape} {'-' * 13}  ------"]
    for r in rows:
        lines.append(f"{r.level:<{w_level}} {r.tensor:<{w_tensor}} {str(tuple(r.shape)):<{w_shape}} "
                     f"{r.max_rel_error:>13.2e}  {'pass' if r.passed else 'FAIL'}")
        if not r.passed:
            lines += [f"{'':<{w_level}}   at {list(i)}: analytic {an:.6g}, numeric {nu:.6g}" for i, an, nu in r.worst]
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed}/{len(rows)} tensors pass (tolerance {tol:.0e}, 4-point central differences, "
                 f"eps {eps:.0e}, float64)")
    return "\n".join(lines)


def rows_as_dicts(rows):
    """The rows as JSON-ready dicts (worst entries for failing tensors only)."""
    return [dict(level=r.level, tensor=r.tensor, shape=list(r.shape), max_rel_error=r.max_rel_error,
                 passed=r.passed, **({} if r.passed else {"worst": [dict(index=list(i), analytic=a, numeric=n)
                                                                   for i, a, n in r.worst]})) for r in rows]


# ---------------------------------------------------------------------- CLI: npylstm gradcheck
class _ArgumentError(Exception):
    pass


def add_arguments(parser):
    parser.add_argument("--cell", choices=("lstm", "gru"), default=None,
                        help="check only this cell (default: the LSTM and both GRU variants)")
    parser.add_argument("--reset-after", choices=("true", "false"), default=None,
                        help="GRU: only reset_after=True (PyTorch, Keras) or False (default: both)")
    parser.add_argument("--mask", choices=MASKS, default=None,
                        help="padding mask of the sequence and layer checks (default: sequences with none, pre "
                             "and post; layers and the model post)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the rows as JSON to PATH")
    parser.add_argument("--bugs", action="store_true",
                        help="the gallery: classic backward bugs planted in copies of the cells, and what catches them")
    parser.add_argument("--layers", type=int, default=2, help="stacked layers L (default 2)")
    parser.add_argument("--hidden", type=int, default=4, help="hidden size H (default 4)")
    parser.add_argument("--steps", type=int, default=5, help="time steps T (default 5)")
    parser.add_argument("--batch", type=int, default=3, help="batch size N (default 3)")
    parser.add_argument("--input-size", type=int, default=3, help="input size D (default 3)")
    parser.add_argument("--scale", type=float, default=2.0,
                        help="weight scale: weights U(±scale/sqrt(D+H)); larger saturates gates (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _plan(args):
    """(variants, masks, levels) from --cell, --reset-after, --mask; _ArgumentError on a bad combination."""
    if args.bugs and (args.cell or args.reset_after or args.mask):
        raise _ArgumentError("--bugs runs its own checks: it takes no --cell, --reset-after or --mask")
    if args.reset_after and args.cell == "lstm":
        raise _ArgumentError("--reset-after is the GRU's: use it with --cell gru (or without --cell)")
    grus = [f"gru-{'after' if ra == 'true' else 'before'}" for ra in ([args.reset_after] if args.reset_after
                                                                      else ["true", "false"])]
    variants = {"lstm": ["lstm"], "gru": grus, None: ["lstm"] * (not args.reset_after) + grus}[args.cell]
    masks = list(MASKS) if args.mask is None else [args.mask]
    return variants, masks


def _check_json_path(path):
    import os
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _ArgumentError(f"--json {path}: the folder {directory} does not exist")
    if os.path.isdir(path):
        raise _ArgumentError(f"--json {path}: is a folder, expected a file name")


def run(args):
    prog = "npylstm gradcheck"
    try:
        variants, masks = _plan(args)
        if args.json is not None:
            _check_json_path(args.json)
        if args.seed < 0:
            raise _ArgumentError(f"--seed must be a non-negative int, got {args.seed}")
        sizes = dict(layers=args.layers, hidden=args.hidden, steps=args.steps, batch=args.batch,
                     input_size=args.input_size, seed=args.seed, weight_scale=args.scale)
        check_gradients(levels=(), **sizes)   # checks the sizes, runs nothing
        if args.bugs:
            from .gradcheck_bugs import run_gallery
            ok, payload = run_gallery(sizes)
        else:
            rows = check_gradients(variants=variants, masks=masks, **sizes)
            print(f"gradient check: {', '.join(variants)}; masks {', '.join(masks)}; layers={args.layers} "
                  f"hidden={args.hidden} steps={args.steps} batch={args.batch} input_size={args.input_size} "
                  f"scale={args.scale} seed={args.seed}")
            print(format_table(rows))
            ok = all(r.passed for r in rows)
            payload = dict(command="gradcheck", variants=variants, masks=masks, **sizes, tolerance=REL_TOL, eps=FD_EPS,
                           passed=sum(r.passed for r in rows), total=len(rows), rows=rows_as_dicts(rows))
    except (ValueError, _ArgumentError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.json is not None:
        try:
            write_json(args.json, payload)
        except OSError as e:
            print(f"{prog}: --json {args.json}: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0 if ok else 1
