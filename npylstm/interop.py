"""PyTorch and Keras weights in and out, for the LSTM and the GRU, without importing either.

    from_torch(module_or_state_dict, **options) -> LSTM or GRU   nn.LSTM, nn.GRU, or the state_dict of one
    from_keras(layer_or_weights, **options)     -> LSTM or GRU   a Keras LSTM / GRU layer, or its get_weights()
    to_torch_state_dict(layer)  what nn.LSTM / nn.GRU .load_state_dict(sd, strict=True) takes as it is
    to_keras(layer)             [kernel, recurrent_kernel, bias], what the Keras layer's set_weights takes

LSTM, gate blocks i, f, g, o in all three libraries:
    nn.LSTM   W_x = weight_ih_l{k}.T    W_h = weight_hh_l{k}.T    b = bias_ih_l{k} + bias_hh_l{k}
              (export: bias_ih = b, bias_hh = 0)
    Keras 3   kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,): our layout, as it is
GRU, gate blocks r, z, n (ours and PyTorch's):
    nn.GRU    W_x = weight_ih_l{k}.T    W_h = weight_hh_l{k}.T    b_x = bias_ih_l{k}    b_h = bias_hh_l{k}
              (nn.GRU computes reset_after=True only)
    Keras 3   kernel (D, 3H), recurrent_kernel (H, 3H), blocks z, r, h: the first two swap both ways;
              bias (2, 3H) = [input; recurrent] with reset_after=True, (3H,) with reset_after=False
              (there only b_x + b_h matters: import puts it in b_x, export writes b_x + b_h)

Which cell: the recurrent matrix decides. weight_hh_l0 is (G H, H), Keras's recurrent_kernel (H, G H):
G = 4 is an LSTM, G = 3 a GRU, and both cannot hold at once. The input matrix alone would not do: a
kernel (D, 12) is an LSTM with H = 3 or a GRU with H = 4; recurrent_kernel (3, 12) or (4, 12) says
which. What the source says about itself (an nn.Module's mode, a Keras layer's class and config) must
agree with the weights.

Strict: every key of every layer must be there (a missing bias is refused, never taken as zero) and no
other key; what npylstm cannot compute is refused (proj_size, bidirectional, bias=False, nn.RNN; Keras
use_bias=False, another activation or recurrent_activation, go_backwards). Each refusal is a ValueError
naming the key. Keras's dropout and recurrent_dropout act in training only and are not carried over.

Options are the layer's keyword arguments (dtype, batch_first, stateful, seed, device, kernel, and an
LSTM's forget_bias). dtype defaults to the weights' (float64 stays float64, any other float becomes
float32); batch_first to the module's (from_torch) or True (from_keras: Keras is batch-first); stateful
to a Keras layer's. input_size, hidden_size, num_layers (and a GRU's reset_after) are read from the
weights: giving one that disagrees is a ValueError naming it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Union

import numpy as np

from .checks import to_numpy
from .gru import GRU, gru_param_names
from .lstm import LSTM, param_names

Layer = Union[LSTM, GRU]
CELLS = {4: LSTM, 3: GRU}                      # gate blocks G -> layer class
TORCH_KEY = re.compile(r"(weight|bias)_(ih|hh)_l(0|[1-9][0-9]*)")
TORCH_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
KERAS_NAMES = ("kernel", "recurrent_kernel", "bias")
KERAS_CLASSES = {"LSTM": LSTM, "GRU": GRU, "LSTMCell": LSTM, "GRUCell": GRU}
KERAS_ACTIVATIONS = {"activation": "tanh", "recurrent_activation": "sigmoid"}


# ------------------------------------------------------------------------------------------ helpers
def _array(where, name, v):
    """`v` as a float ndarray, or a ValueError naming `name`."""
    try:
        a = to_numpy(v)
    except Exception as e:  # an object NumPy cannot read
        raise ValueError(f"{where}: {name} is not an array ({type(e).__name__}: {e})") from None
    if a.dtype.kind != "f":
        raise ValueError(f"{where}: {name} has dtype {a.dtype}, expected a float array")
    return a


def _default_dtype(a):
    """float64 weights make a float64 layer; float32, float16 and bfloat16 a float32 one (exact)."""
    return np.float64 if a.dtype == np.float64 else np.float32


def _build(where, cls, derived, options, evidence):
    """cls(**options, **derived), refusing an unknown option or one that contradicts the weights."""
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for k in options:
        if k not in allowed:
            free = [a for a in allowed if a not in derived]
            raise ValueError(f"{where}: {k} is not an option of the {cls.name} these weights make ({evidence}); "
                             f"its options are {free}")
    for k, v in derived.items():
        if k in options and options[k] != v:
            raise ValueError(f"{where}: {k}={options[k]!r} contradicts the weights, which give {k}={v!r} ({evidence})")
    try:
        return cls(**{**options, **derived})
    except ValueError as e:                     # an option the layer refuses: "from_torch: LSTM: seed must be ..."
        raise ValueError(f"{where}: {e}") from None


def _swap_rz(a):
    """[ r | z | n ] <-> [ z | r | n ] along the last axis (Keras's order; the swap is its own inverse)."""
    H = a.shape[-1] // 3
    return np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)


def _host(a):
    """A C-contiguous NumPy copy (a CUDA layer's CuPy array is copied to the host)."""
    return np.array(a.get() if hasattr(a, "__cuda_array_interface__") else a, order="C")


def _check_layer(where, layer):
    if not isinstance(layer, (LSTM, GRU)):
        raise ValueError(f"{where}: expected an npylstm LSTM or GRU, got {type(layer).__name__}")


# ------------------------------------------------------------------------------------------ PyTorch
def from_torch(module_or_state_dict: Any, **options: Any) -> Layer:
    """An LSTM or a GRU holding the weights of a torch nn.LSTM / nn.GRU, or of its state_dict.

    module_or_state_dict : the module, or its state_dict (torch tensors or NumPy arrays), with or
                           without a prefix such as 'rnn.' (the keys of a model holding one LSTM/GRU)
    options              : the layer's keyword options (see the module docstring)

    The cell comes from the weights (weight_hh_l0 is (4H, H) for an LSTM, (3H, H) for a GRU). Refused
    with a ValueError naming the key: a missing or unknown key, a wrong shape, proj_size,
    bidirectional, bias=False, nn.RNN, and keys of several recurrent modules.
    """
    where = "from_torch"
    obj, module = module_or_state_dict, None
    if callable(getattr(obj, "state_dict", None)):
        module, sd = obj, obj.state_dict()
        _check_torch_module(where, module)
    elif hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        sd = obj
    else:
        raise ValueError(f"{where}: expected an nn.LSTM, an nn.GRU or the state_dict of one, got {type(obj).__name__}")
    prefix, L = _torch_keys(where, sd)
    arrays = {k: _array(where, repr(prefix + k), sd[prefix + k])
              for k in (f"{n}_l{layer}" for layer in range(L) for n in TORCH_NAMES)}
    W_hh = arrays["weight_hh_l0"]
    rows, H = W_hh.shape if W_hh.ndim == 2 else (0, 0)
    if H < 1 or rows not in (4 * H, 3 * H):
        raise ValueError(f"{where}: {prefix + 'weight_hh_l0'!r} has shape {W_hh.shape}, expected (4H, H) for an "
                         f"LSTM or (3H, H) for a GRU" + (" (an nn.RNN's (H, H) is not supported)" if rows == H else ""))
    G = rows // H
    cls = CELLS[G]
    W_ih = arrays["weight_ih_l0"]
    if W_ih.ndim != 2 or W_ih.shape[0] != G * H or W_ih.shape[1] < 1:
        raise ValueError(f"{where}: {prefix + 'weight_ih_l0'!r} has shape {W_ih.shape}, expected ({G * H}, D)")
    D = W_ih.shape[1]
    for k, a in arrays.items():
        layer = int(k.rsplit("_l", 1)[1])
        want = (G * H,) if k.startswith("bias") else (G * H, D if k.startswith("weight_ih") and layer == 0 else H)
        if a.shape != want:
            raise ValueError(f"{where}: {prefix + k!r} has shape {a.shape}, expected {want}")
    what = f"an nn.{cls.name}: {prefix}weight_hh_l0 has shape {W_hh.shape}"
    if module is not None and isinstance(getattr(module, "batch_first", None), bool):
        options.setdefault("batch_first", module.batch_first)
    options.setdefault("dtype", _default_dtype(W_ih))
    derived = dict(input_size=D, hidden_size=H, num_layers=L)
    if cls is GRU:
        derived["reset_after"] = True
    layer = _build(where, cls, derived, options, what)
    values = {}
    for k in range(L):
        W_x, W_h, b_ih, b_hh = (arrays[f"{n}_l{k}"] for n in TORCH_NAMES)
        parts = (W_x.T, W_h.T, b_ih + b_hh) if cls is LSTM else (W_x.T, W_h.T, b_ih, b_hh)
        names = param_names(k) if cls is LSTM else gru_param_names(k)
        values.update(zip(names, parts))
    layer.load_state_dict(values)
    return layer


def _check_torch_module(where, m):
    """Refuse what the module says npylstm cannot compute, before looking at its keys."""
    mode = getattr(m, "mode", None)
    if isinstance(mode, str) and mode not in ("LSTM", "GRU"):
        raise ValueError(f"{where}: nn.{type(m).__name__} (mode {mode!r}) is not supported: npylstm has the LSTM "
                         f"and the GRU")
    proj = getattr(m, "proj_size", 0)
    if isinstance(proj, int) and proj > 0:
        raise ValueError(f"{where}: proj_size={proj} is not supported (key weight_hr_l0): npylstm's LSTM has no "
                         f"projection")
    if getattr(m, "bidirectional", False) is True:
        raise ValueError(f"{where}: bidirectional modules are not supported (keys weight_ih_l0_reverse, ...)")
    if getattr(m, "bias", True) is False:
        raise ValueError(f"{where}: the module has bias=False (no bias_ih_l0, bias_hh_l0): npylstm layers always "
                         f"have biases, which nn.{mode or 'LSTM'}(bias=False) could not load back. To use it with "
                         f"zero biases, add zero bias_ih_l{{k}} and bias_hh_l{{k}} to its state_dict (they then train)")


def _torch_keys(where, sd):
    """(prefix, L) of an nn.LSTM / nn.GRU state_dict, refusing unknown, foreign and missing keys."""
    keys = list(sd.keys())
    for k in keys:
        if not isinstance(k, str):
            raise ValueError(f"{where}: state_dict keys must be strings, got {k!r}")
    anchor = "weight_ih_l0"
    prefixes = sorted({k[:-len(anchor)] for k in keys if k == anchor or k.endswith("." + anchor)})
    if not prefixes:
        shown = keys if len(keys) <= 8 else keys[:8] + ["..."]
        raise ValueError(f"{where}: missing key 'weight_ih_l0': expected the keys of an nn.LSTM or nn.GRU "
                         f"(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ...), got {shown}")
    if len(prefixes) > 1:
        raise ValueError(f"{where}: the state_dict holds several recurrent modules (key prefixes {prefixes}): "
                         f"pass one of them, or only its keys")
    prefix = prefixes[0]
    layers = set()
    for k in keys:
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest is not None and re.fullmatch(r"(weight|bias)_(ih|hh|hr)_l\d+_reverse", rest):
            raise ValueError(f"{where}: bidirectional modules are not supported (key {k!r})")
        if rest is not None and re.fullmatch(r"weight_hr_l\d+", rest):
            raise ValueError(f"{where}: proj_size is not supported (key {k!r}): npylstm's LSTM has no projection")
        m = TORCH_KEY.fullmatch(rest) if rest is not None else None
        if m is None:
            hint = (" (pass the recurrent module itself, e.g. model.rnn, or only its keys)" if rest is None
                    else "")
            raise ValueError(f"{where}: unexpected key {k!r}: an nn.LSTM / nn.GRU state_dict holds only "
                             f"{prefix}weight_ih_l{{k}}, {prefix}weight_hh_l{{k}}, {prefix}bias_ih_l{{k}} and "
                             f"{prefix}bias_hh_l{{k}}{hint}")
        layers.add(int(m.group(3)))
    L = max(layers) + 1
    missing = [prefix + f"{n}_l{k}" for k in range(L) for n in TORCH_NAMES if prefix + f"{n}_l{k}" not in sd]
    if missing:
        no_bias = len(missing) == 2 * L and all(k.startswith(prefix + "bias") for k in missing)
        hint = ("; a module built with bias=False has none: npylstm layers always have biases, so add zero "
                "bias_ih_l{k} and bias_hh_l{k} to use it with zero biases (they then train)") if no_bias else ""
        raise ValueError(f"{where}: missing key {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                         + hint)
    return prefix, L


def to_torch_state_dict(layer: Layer) -> dict:
    """The layer's weights keyed as nn.LSTM / nn.GRU keys them, in PyTorch's key order.

    `nn.LSTM(D, H, num_layers=L).load_state_dict(sd, strict=True)` takes it as it is. The values are
    CPU torch tensors when torch is importable (imported here, at call time only), else NumPy
    arrays; copies either way. LSTM: bias_ih = b, bias_hh = 0. A reset_after=False GRU is refused:
    nn.GRU cannot compute it.
    """
    where = "to_torch_state_dict"
    _check_layer(where, layer)
    if isinstance(layer, GRU) and not layer.reset_after:
        raise ValueError(f"{where}: nn.GRU has no reset_after=False variant; this GRU has reset_after=False, so "
                         f"its weights would compute a different function there")
    sd = {}
    for k in range(layer.num_layers):
        if isinstance(layer, LSTM):
            W_x, W_h, b = (_host(layer.params[n]) for n in param_names(k))
            b_ih, b_hh = b, np.zeros_like(b)
        else:
            W_x, W_h, b_ih, b_hh = (_host(layer.params[n]) for n in gru_param_names(k))
        sd[f"weight_ih_l{k}"] = np.ascontiguousarray(W_x.T)
        sd[f"weight_hh_l{k}"] = np.ascontiguousarray(W_h.T)
        sd[f"bias_ih_l{k}"] = b_ih
        sd[f"bias_hh_l{k}"] = b_hh
    try:
        import torch
    except ImportError:
        return sd
    return {k: torch.from_numpy(v) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------ Keras
def from_keras(layer_or_weights: Any, **options: Any) -> Layer:
    """An LSTM or a GRU holding the weights of a Keras (3) LSTM / GRU layer, or of its get_weights() list.

    layer_or_weights : the layer (anything with get_weights(), a class named LSTM / GRU or a subclass,
                       and optionally get_config()), or [kernel, recurrent_kernel, bias]
    options          : the layer's keyword options (see the module docstring); batch_first defaults
                       to True, Keras's layout

    The cell comes from recurrent_kernel's shape ((H, 4H) LSTM, (H, 3H) GRU), a GRU's reset_after from
    the bias shape; the layer's class and config (units, reset_after, activation,
    recurrent_activation, use_bias, go_backwards) must agree. Refusals are ValueErrors naming the key.
    """
    where = "from_keras"
    obj, kind, config = layer_or_weights, None, {}
    if callable(getattr(obj, "get_weights", None)):
        found = [c.__name__ for c in type(obj).__mro__ if c.__name__ in KERAS_CLASSES]
        if not found:
            hint = ": pass one of its recurrent layers, model.layers[i]" if hasattr(obj, "layers") else ""
            raise ValueError(f"{where}: expected a Keras LSTM or GRU layer (or its get_weights() list), got a "
                             f"{type(obj).__name__}{hint}")
        kind = KERAS_CLASSES[found[0]]
        if callable(getattr(obj, "get_config", None)):
            config = obj.get_config()
            if not isinstance(config, dict):
                raise ValueError(f"{where}: the layer's get_config() returned a {type(config).__name__}, expected a dict")
        _check_keras_config(where, config)
        weights = obj.get_weights()
    elif isinstance(obj, (list, tuple)):
        weights = obj
    else:
        raise ValueError(f"{where}: expected a Keras LSTM or GRU layer or its get_weights() list "
                         f"[kernel, recurrent_kernel, bias], got {type(obj).__name__}")
    weights = list(weights)
    if len(weights) != 3:
        hint = ("; a layer with use_bias=False has no bias: npylstm layers always have one, so append zeros "
                "((4H,) for an LSTM, (2, 3H) for a GRU) to use it with zero biases (they then train)"
                if len(weights) == 2 else
                "; a model's get_weights() holds every layer's arrays: pass one layer, model.layers[i], or its "
                "get_weights()" if len(weights) > 3 else "")
        raise ValueError(f"{where}: expected [kernel, recurrent_kernel, bias] of one LSTM or GRU layer, got "
                         f"{len(weights)} arrays{hint}")
    kernel, recurrent, bias = (_array(where, n, w) for n, w in zip(KERAS_NAMES, weights))
    H, cols = recurrent.shape if recurrent.ndim == 2 else (0, 0)
    if H < 1 or cols not in (4 * H, 3 * H):
        raise ValueError(f"{where}: recurrent_kernel has shape {recurrent.shape}, expected (H, 4H) for an LSTM "
                         f"or (H, 3H) for a GRU")
    G = cols // H
    cls = CELLS[G]
    evidence = f"recurrent_kernel has shape {recurrent.shape} = (H, {G}H), H = {H}"
    if kind is not None and kind is not cls:
        raise ValueError(f"{where}: the layer is a {kind.name} but its {evidence}: a {cls.name}'s weights")
    if kernel.ndim != 2 or kernel.shape[1] != G * H or kernel.shape[0] < 1:
        raise ValueError(f"{where}: kernel has shape {kernel.shape}, expected (D, {G * H}) ({evidence})")
    if "units" in config and config["units"] != H:
        raise ValueError(f"{where}: the config's units={config['units']!r} contradicts the weights: {evidence}")
    derived = dict(input_size=kernel.shape[0], hidden_size=H, num_layers=1)
    if cls is LSTM:
        if bias.shape != (4 * H,):
            raise ValueError(f"{where}: bias has shape {bias.shape}, expected ({4 * H},)")
        values = dict(zip(param_names(0), (kernel, recurrent, bias)))
    else:
        if bias.shape == (2, 3 * H):
            reset_after, b_x, b_h = True, bias[0], bias[1]
        elif bias.shape == (3 * H,):
            reset_after, b_x, b_h = False, bias, np.zeros_like(bias)
        else:
            raise ValueError(f"{where}: bias has shape {bias.shape}, expected (2, {3 * H}) (reset_after=True) "
                             f"or ({3 * H},) (reset_after=False)")
        if "reset_after" in config and config["reset_after"] is not reset_after:
            raise ValueError(f"{where}: the config's reset_after={config['reset_after']!r} contradicts the bias "
                             f"shape {bias.shape}, which means reset_after={reset_after}")
        derived["reset_after"] = reset_after
        evidence += f", bias {bias.shape} means reset_after={reset_after}"
        values = dict(zip(gru_param_names(0), (_swap_rz(a) for a in (kernel, recurrent, b_x, b_h))))
    options.setdefault("batch_first", True)
    if isinstance(config.get("stateful"), bool):
        options.setdefault("stateful", config["stateful"])
    options.setdefault("dtype", _default_dtype(kernel))
    layer = _build(where, cls, derived, options, evidence)
    layer.load_state_dict(values)
    return layer


def _check_keras_config(where, config):
    """Refuse the settings that change what the layer computes and npylstm does not."""
    for key, want in KERAS_ACTIVATIONS.items():
        if key in config and config[key] != want:
            raise ValueError(f"{where}: {key}={config[key]!r} is not supported: npylstm computes {key}={want!r}")
    if config.get("use_bias", True) is not True:
        raise ValueError(f"{where}: use_bias={config['use_bias']!r} is not supported: npylstm layers always have "
                         f"a bias (to use the layer with zero biases, append zeros to its get_weights() list)")
    if config.get("go_backwards", False) is not False:
        raise ValueError(f"{where}: go_backwards={config['go_backwards']!r} is not supported: reverse the time "
                         f"axis of the input instead")


def to_keras(layer: Layer) -> list[np.ndarray]:
    """[kernel, recurrent_kernel, bias] for a one-layer LSTM or GRU, as Keras 3's layer holds them.

    LSTM: kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,). GRU: the r and z blocks swapped,
    bias (2, 3H) with reset_after=True, (3H,) = b_x + b_h with reset_after=False. Copies (NumPy).
    """
    where = "to_keras"
    _check_layer(where, layer)
    if layer.num_layers != 1:
        names = ("W_x_l{k}, W_h_l{k}, b_l{k}" if isinstance(layer, LSTM) else "W_x_l{k}, W_h_l{k}, b_x_l{k}, b_h_l{k}")
        raise ValueError(f"{where}: a Keras {layer.name} layer holds one layer, this {layer.name} has "
                         f"{layer.num_layers}: export each layer's {names} from state_dict()")
    if isinstance(layer, LSTM):
        return [_host(layer.params[n]) for n in param_names(0)]
    W_x, W_h, b_x, b_h = (_host(layer.params[n]) for n in gru_param_names(0))
    bias = np.stack([_swap_rz(b_x), _swap_rz(b_h)]) if layer.reset_after else _swap_rz(b_x + b_h)
    return [_swap_rz(W_x), _swap_rz(W_h), bias]
