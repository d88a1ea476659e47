"""PyTorch and Keras GRU weights in and out, without importing either.

PyTorch nn.GRU (always reset_after) keeps weight_ih_l{k} (3H, D), weight_hh_l{k} (3H, H) and two
biases, gate rows r, z, n -- our order, so:
    W_x = weight_ih_l{k}.T    W_h = weight_hh_l{k}.T    b_x = bias_ih_l{k}    b_h = bias_hh_l{k}
Keras 3 GRU keeps kernel (D, 3H), recurrent_kernel (H, 3H), gate columns z, r, h (= n), and
bias (2, 3H) = [input bias; recurrent bias] with reset_after=True, or one bias (3H,) with
reset_after=False (there only b_x + b_h matters). Import swaps the z and r blocks; export too.
"""

import numpy as np

from .gru import GRU, gru_param_names
from .interop import _to_numpy, set_params, torch_layers


def _swap_rz(a):
    """[ r | z | n ] <-> [ z | r | n ] along the last axis (Keras's order; the swap is its own inverse)."""
    H = a.shape[-1] // 3
    return np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)


def gru_from_torch(module_or_state_dict, **gru_options):
    """A GRU holding the weights of a torch.nn.GRU (or of its state_dict).

    gru_options are GRU's keyword options; batch_first defaults to the module's, dtype to the
    weights' dtype. reset_after must stay True: it is the only GRU PyTorch has.
    """
    where = "gru_from_torch"
    if not gru_options.get("reset_after", True):
        raise ValueError(f"{where}: reset_after must be True: nn.GRU applies the reset gate after the product")
    sd, L, D, H = torch_layers(where, module_or_state_dict, "nn.GRU", 3, gru_options)
    gru = GRU(D, H, num_layers=L, **gru_options)
    zeros = np.zeros(3 * H)
    for layer in range(L):
        set_params(where, gru, layer, gru_param_names(layer),
                   (sd[f"weight_ih_l{layer}"].T, sd[f"weight_hh_l{layer}"].T,
                    sd.get(f"bias_ih_l{layer}", zeros), sd.get(f"bias_hh_l{layer}", zeros)))
    return gru


def gru_to_torch_state_dict(gru):
    """The GRU's weights keyed as nn.GRU keys them (NumPy arrays). Only reset_after=True has an nn.GRU."""
    if not gru.reset_after:
        raise ValueError("gru_to_torch_state_dict: nn.GRU has no reset_after=False variant; this GRU has "
                         "reset_after=False, so its weights would compute a different function there")
    sd = {}
    for layer in range(gru.num_layers):
        W_x, W_h, b_x, b_h = (gru.params[k] for k in gru_param_names(layer))
        sd[f"weight_ih_l{layer}"] = np.ascontiguousarray(W_x.T)
        sd[f"weight_hh_l{layer}"] = np.ascontiguousarray(W_h.T)
        sd[f"bias_ih_l{layer}"] = b_x.copy()
        sd[f"bias_hh_l{layer}"] = b_h.copy()
    return sd


def gru_from_keras(weights, **gru_options):
    """A GRU (one layer) from Keras GRU weights [kernel (D, 3H), recurrent_kernel (H, 3H), bias].

    bias (2, 3H) means reset_after=True, (3H,) reset_after=False; a reset_after option must agree.
    """
    where = "gru_from_keras"
    if len(weights) != 3:
        raise ValueError(f"{where}: expected [kernel, recurrent_kernel, bias], got {len(weights)} arrays "
                         f"(a Keras GRU with use_bias=False has no bias: pass zeros)")
    kernel, recurrent, bias = (_to_numpy(w) for w in weights)
    if recurrent.ndim != 2 or recurrent.shape[1] != 3 * recurrent.shape[0]:
        raise ValueError(f"{where}: recurrent_kernel has shape {recurrent.shape}, expected (H, 3H)")
    H = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 3 * H:
        raise ValueError(f"{where}: kernel has shape {kernel.shape}, expected (D, {3 * H})")
    if bias.shape == (2, 3 * H):
        reset_after, b_x, b_h = True, bias[0], bias[1]
    elif bias.shape == (3 * H,):
        reset_after, b_x, b_h = False, bias, np.zeros_like(bias)
    else:
        raise ValueError(f"{where}: bias has shape {bias.shape}, expected (2, {3 * H}) (reset_after=True) "
                         f"or ({3 * H},) (reset_after=False)")
    if gru_options.setdefault("reset_after", reset_after) != reset_after:
        raise ValueError(f"{where}: reset_after={gru_options['reset_after']} contradicts the bias shape "
                         f"{bias.shape}, which means reset_after={reset_after}")
    if kernel.dtype.kind == "f":
        gru_options.setdefault("dtype", kernel.dtype)
    gru = GRU(kernel.shape[0], H, num_layers=1, **gru_options)
    for name, value in zip(gru_param_names(0), (kernel, recurrent, b_x, b_h)):
        gru.params[name] = np.ascontiguousarray(_swap_rz(value), dtype=gru.dtype)
    return gru


def gru_to_keras(gru):
    """[kernel, recurrent_kernel, bias] for a one-layer Keras GRU with the same reset_after."""
    if gru.num_layers != 1:
        raise ValueError(f"gru_to_keras: a Keras GRU layer holds one layer, this GRU has {gru.num_layers}: "
                         f"export each layer's W_x_l{{k}}, W_h_l{{k}}, b_x_l{{k}}, b_h_l{{k}} from params")
    W_x, W_h, b_x, b_h = (gru.params[k] for k in gru_param_names(0))
    bias = np.stack([_swap_rz(b_x), _swap_rz(b_h)]) if gru.reset_after else _swap_rz(b_x + b_h)
    return [_swap_rz(W_x), _swap_rz(W_h), bias]
