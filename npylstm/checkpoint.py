"""Checkpoints of a Sequential: one .npz holding everything needed to continue training bit for bit.

Entries (read back with allow_pickle=False):

    config              JSON in a string array: layers, return_sequences, stateful, seed, epochs trained,
                        locked batch size, loss, clip_norm, optimizer hyperparameters and step count
    param/<name>        every parameter, named as Sequential.params names it ('0.W_x_l0', '2.W', ...)
    optim/<buf>/<name>  the optimizer's buffers (Adam: m, v; SGD: velocity)
    state/<j>/<name>    the carried state of recurrent layer j, one entry per tensor of its
                        state_names (LSTM: h, c; GRU: h), only with include_state=True
    digest              SHA-256 over all of the above (names, dtypes, shapes, bytes)

A layer's config records its cell type ("LSTM" / "GRU") and what its parameters do not show (an
LSTM's forget_bias, a GRU's reset_after); a GRU layer is rebuilt as a GRU, a mixed stack as mixed.

The shuffling order of fit is drawn from (seed, epoch), and both are saved, so a resumed run ends
with exactly the weights of the uninterrupted one.

Writing is atomic: the file is written to a temporary file in the same directory, flushed to disk,
and moved over `path` with os.replace; on any failure the temporary file is removed and whatever was
at `path` stays as it was. Loading reads every entry (the zip's CRC-32s and the digest catch truncated
and corrupted files), then validates the config, every shape and dtype, before it builds anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Union

import numpy as np

from .checks import check_positive_int
from .files import atomic_write
from .layers import Linear
from .gru import GRU
from .lstm import LSTM
from .model import Sequential
from .optim import SGD, Adam

OPTIMIZERS = {"SGD": SGD, "Adam": Adam}
FORMAT, VERSION = "npylstm.Sequential", 1


def save(model, path, include_state=False):
    """Write `model` to `path` (see the module docstring); Sequential.save calls this."""
    where = "Sequential.save"
    config = {"format": FORMAT, "version": VERSION, **model.config()}
    arrays = {f"param/{k}": _host(v) for k, v in model.params.items()}
    config["compile"] = None
    if model.loss is not None:
        sd = model.optimizer.state_dict()
        if sd.get("type") not in OPTIMIZERS:
            raise ValueError(f"{where}: can only save the optimizers {sorted(OPTIMIZERS)}, got {sd.get('type')!r}")
        buffers = sd.pop("buffers")
        config["compile"] = {"loss": model.loss, "clip_norm": model.clip_norm, "optimizer": sd,
                             "buffers": sorted(buffers)}
        for b, d in buffers.items():
            for k, v in d.items():
                arrays[f"optim/{b}/{k}"] = _host(v)
    config["has_state"] = False
    if include_state:
        if not model.stateful:
            raise ValueError(f"{where}: include_state=True needs a stateful model (a stateless one carries nothing)")
        states = model.states
        if states is not None:
            config["has_state"] = True
            for j, (layer, st) in enumerate(zip(model.rnns, states)):
                for name, a in zip(layer.state_names, layer._unpack(where, "state", st, layer.state_names)):
                    arrays[f"state/{j}/{name}"] = _host(a)
    arrays["config"] = np.array(json.dumps(config))
    arrays["digest"] = np.array(_digest(arrays))
    _atomic_savez(path, arrays)


def _host(a):
    """A NumPy copy of `a` (a GPU array is copied to the host with .get())."""
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.array(a)


def _digest(arrays):
    """SHA-256 over every array's name, dtype, shape and bytes (the 'digest' entry itself excluded)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        if k == "digest":
            continue
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _atomic_savez(path, arrays):
    """np.savez into a temp file in path's directory, fsync, os.replace over path; no temp file survives a failure."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: Union[str, "os.PathLike[str]"]) -> Sequential:
    """A Sequential from a checkpoint written by save: architecture, weights, compile settings and
    optimizer state, epochs trained, and the carried state if it was saved. Validates everything and
    raises ValueError saying what is wrong; a truncated or corrupted file is refused."""
    where = "load"
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no checkpoint at {path!r}")
    bad = f"{where}: {path!r} is not a readable npylstm checkpoint (truncated or corrupted?)"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}             # reads every member: zip CRCs are checked here
    except Exception as e:  # BadZipFile, bad CRC, EOFError, "compression method not supported", pickled data, ...
        raise ValueError(f"{bad}: {type(e).__name__}: {e}") from None
    if not isinstance(arrays, dict) or "config" not in arrays or "digest" not in arrays:
        raise ValueError(f"{bad}: it lacks the 'config' and 'digest' entries")
    if str(arrays["digest"]) != _digest(arrays):
        raise ValueError(f"{bad}: its content does not match its SHA-256 digest")
    try:
        config = json.loads(str(arrays["config"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{bad}: config is not JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{where}: {path!r} is not a {FORMAT} checkpoint (format {fmt!r})")
    if config.get("version") != VERSION:
        raise ValueError(f"{where}: {path!r} has checkpoint version {config.get('version')!r}, this npylstm reads {VERSION}")
    try:
        model = _model_from_config(config)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: {path!r} has an incomplete or malformed config ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"{where}: {path!r} has an invalid config: {e}") from None

    params = model.params
    expected = {f"param/{k}" for k in params}
    got = {k for k in arrays if k.startswith("param/")}
    if got != expected:
        raise ValueError(f"{where}: {path!r} holds parameters {sorted(got)}, the config needs {sorted(expected)}")
    for k, v in params.items():
        a = arrays[f"param/{k}"]
        if a.shape != v.shape or a.dtype != v.dtype:
            raise ValueError(f"{where}: parameter {k!r} has shape {a.shape} and dtype {a.dtype}, the config "
                             f"needs {v.shape} and {v.dtype}")
    for k, v in params.items():
        v[...] = arrays[f"param/{k}"]

    comp = config.get("compile")
    if comp is not None:
        try:
            sd = dict(comp["optimizer"])
            kind = sd.get("type")
            if kind not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {kind!r}")
            buffers = {b: {} for b in comp["buffers"]}
            for name, a in arrays.items():
                if name.startswith("optim/"):
                    _, b, k = name.split("/", 2)
                    if b not in buffers:
                        raise ValueError(f"optimizer buffer {b!r} is not in the config")
                    if k not in params or a.shape != params[k].shape or a.dtype != params[k].dtype:
                        raise ValueError(f"optimizer buffer {name!r} does not match a parameter of the model")
                    buffers[b][k] = a.copy()
            sd["buffers"] = buffers
            opt = OPTIMIZERS[kind](**{h: sd[h] for h in sd if h not in ("type", "t", "buffers")})
            opt.load_state_dict(sd)
            model.compile(loss=comp["loss"], optimizer=opt, clip_norm=comp["clip_norm"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {path!r} has an invalid optimizer state: {e}") from None

    if config.get("has_state"):
        states = []
        for j, layer in enumerate(model.rnns):
            try:
                st = tuple(arrays[f"state/{j}/{name}"] for name in layer.state_names)
            except KeyError as e:
                raise ValueError(f"{where}: {path!r} says it holds the carried state but lacks {e}") from None
            states.append(st[0] if len(st) == 1 else st)
        try:
            model.states = states
        except ValueError as e:
            raise ValueError(f"{where}: {path!r} has an invalid carried state: {e}") from None
    return model


def _model_from_config(config):
    layers = []
    for spec in config["layers"]:
        if spec["type"] == "LSTM":
            layers.append(LSTM(spec["input_size"], spec["hidden_size"], num_layers=spec["num_layers"],
                               batch_first=spec["batch_first"], dtype=spec["dtype"],
                               forget_bias=spec["forget_bias"], stateful=config["stateful"], seed=0))
        elif spec["type"] == "GRU":
            if not isinstance(spec["reset_after"], bool):
                raise ValueError(f"a GRU layer's reset_after must be true or false, got {spec['reset_after']!r}")
            layers.append(GRU(spec["input_size"], spec["hidden_size"], num_layers=spec["num_layers"],
                              batch_first=spec["batch_first"], dtype=spec["dtype"],
                              reset_after=spec["reset_after"], stateful=config["stateful"], seed=0))
        elif spec["type"] == "Linear":
            layers.append(Linear(spec["in_features"], spec["out_features"], dtype=spec["dtype"], seed=0))
        else:
            raise ValueError(f"unknown layer type {spec['type']!r}")
    model = Sequential(layers, return_sequences=config["return_sequences"], stateful=config["stateful"],
                       seed=config["seed"])
    epochs = config["epochs_trained"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs_trained must be a non-negative int, got {epochs!r}")
    model.epochs_trained = epochs
    bs = config["batch_size"]
    if bs is not None:
        if not model.stateful:
            raise ValueError("a stateless model has no locked batch size")
        model.reset_states(batch_size=check_positive_int("load", "batch_size", bs))
    return model
