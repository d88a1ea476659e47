"""PyTorch and Keras weights in and out, without importing either.

PyTorch nn.LSTM keeps W_ih (4H, D), W_hh (4H, H) and two biases per layer, gate rows i, f, g, o:
    W_x = weight_ih_l{k}.T    W_h = weight_hh_l{k}.T    b = bias_ih_l{k} + bias_hh_l{k}
Keras 3 LSTM keeps kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,), gates i, f, c, o: the same
layout as ours, taken as it is. Export writes bias_ih = b and bias_hh = 0.
"""

import re

import numpy as np

from .lstm import LSTM, param_names


def _to_numpy(v):
    """A torch tensor (any device), a NumPy array or a nested list -> ndarray, without importing torch."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def torch_layers(where, obj, module_name, blocks, options):
    """Read an nn.LSTM / nn.GRU (or its state_dict) for a from_torch: returns (sd, L, D, H).

    sd maps PyTorch's keys to NumPy arrays; `blocks` is the number of gate blocks (4 LSTM, 3 GRU).
    Fills batch_first (the module's) and dtype (the weights') into `options` unless given there.
    Refuses bidirectional modules, proj_size, and layer keys that are not 0 .. L-1.
    """
    sd = obj.state_dict() if hasattr(obj, "state_dict") else obj
    if not hasattr(sd, "keys"):
        raise ValueError(f"{where}: expected an {module_name} or its state_dict, got {type(obj).__name__}")
    sd = {k: _to_numpy(v) for k, v in sd.items()}
    unsupported = [k for k in sd if k.endswith("_reverse") or k.startswith("weight_hr")]
    if unsupported:
        raise ValueError(f"{where}: bidirectional modules and proj_size are not supported, found {unsupported}")
    layers = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"weight_ih_l(\d+)", k)))
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"{where}: expected keys weight_ih_l0, weight_hh_l0, ... , got {sorted(sd)}")
    W_ih, W_hh = sd["weight_ih_l0"], sd.get("weight_hh_l0", np.zeros(0))
    if W_hh.ndim != 2 or W_hh.shape[0] != blocks * W_hh.shape[1]:
        raise ValueError(f"{where}: weight_hh_l0 has shape {W_hh.shape}, expected ({blocks}H, H)")
    if hasattr(obj, "batch_first"):
        options.setdefault("batch_first", obj.batch_first)
    if W_ih.dtype.kind == "f":
        options.setdefault("dtype", W_ih.dtype)
    return sd, len(layers), W_ih.shape[1], W_hh.shape[1]


def set_params(where, layer_obj, layer, names, values):
    """layer_obj.params[name] = value (in its dtype, contiguous) for one layer, refusing a wrong shape."""
    for name, value in zip(names, values):
        if value.shape != layer_obj.params[name].shape:
            raise ValueError(f"{where}: layer {layer} gives {name} shape {value.shape}, "
                             f"expected {layer_obj.params[name].shape}")
        layer_obj.params[name] = np.ascontiguousarray(value, dtype=layer_obj.dtype)


def from_torch(module_or_state_dict, **lstm_options):
    """An LSTM holding the weights of a torch.nn.LSTM (or of its state_dict).

    lstm_options are LSTM's keyword options; batch_first defaults to the module's, dtype to the
    weights' dtype.
    """
    where = "from_torch"
    sd, L, D, H = torch_layers(where, module_or_state_dict, "nn.LSTM", 4, lstm_options)
    lstm = LSTM(D, H, num_layers=L, **lstm_options)
    zeros = np.zeros(4 * H)
    for layer in range(L):
        b = sd.get(f"bias_ih_l{layer}", zeros) + sd.get(f"bias_hh_l{layer}", zeros)
        set_params(where, lstm, layer, param_names(layer),
                   (sd[f"weight_ih_l{layer}"].T, sd[f"weight_hh_l{layer}"].T, b))
    return lstm


def to_torch_state_dict(lstm):
    """The LSTM's weights keyed as nn.LSTM keys them (NumPy arrays; bias_hh is zero)."""
    sd = {}
    for layer in range(lstm.num_layers):
        W_x, W_h, b = (lstm.params[k] for k in param_names(layer))
        sd[f"weight_ih_l{layer}"] = np.ascontiguousarray(W_x.T)
        sd[f"weight_hh_l{layer}"] = np.ascontiguousarray(W_h.T)
        sd[f"bias_ih_l{layer}"] = b.copy()
        sd[f"bias_hh_l{layer}"] = np.zeros_like(b)
    return sd


def from_keras(weights, **lstm_options):
    """An LSTM (one layer) from Keras LSTM weights [kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H,)]."""
    where = "from_keras"
    if len(weights) != 3:
        raise ValueError(f"{where}: expected [kernel, recurrent_kernel, bias], got {len(weights)} arrays "
                         f"(a Keras LSTM with use_bias=False has no bias: pass zeros)")
    kernel, recurrent, bias = (_to_numpy(w) for w in weights)
    if recurrent.ndim != 2 or recurrent.shape[1] != 4 * recurrent.shape[0]:
        raise ValueError(f"{where}: recurrent_kernel has shape {recurrent.shape}, expected (H, 4H)")
    H = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * H:
        raise ValueError(f"{where}: kernel has shape {kernel.shape}, expected (D, {4 * H})")
    if bias.shape != (4 * H,):
        raise ValueError(f"{where}: bias has shape {bias.shape}, expected ({4 * H},)")
    if kernel.dtype.kind == "f":
        lstm_options.setdefault("dtype", kernel.dtype)
    lstm = LSTM(kernel.shape[0], H, num_layers=1, **lstm_options)
    for name, value in zip(param_names(0), (kernel, recurrent, bias)):
        lstm.params[name] = np.ascontiguousarray(value, dtype=lstm.dtype)
    return lstm


def to_keras(lstm):
    """[kernel, recurrent_kernel, bias] for a one-layer Keras LSTM."""
    if lstm.num_layers != 1:
        raise ValueError(f"to_keras: a Keras LSTM layer holds one layer, this LSTM has {lstm.num_layers}: "
                         f"export each layer's W_x_l{{k}}, W_h_l{{k}}, b_l{{k}} from params")
    return [lstm.params[k].copy() for k in param_names(0)]
