"""`Sequential`: stacked recurrent layers (LSTM, GRU, mixed) and an optional Linear head, trained
Keras-style; checkpoints.

    x (N, T, D) ─► RNN ─► … ─► RNN ─► [last step, or every step] ─► Linear ─► loss
                 ◄──────────────── backward, in reverse ◄──────────────────────┘ ─► optimizer

Data is batch-first, as in Keras: x (N, T, D); outputs (N, out), or (N, T, out) with return_sequences.

A recurrent layer is any npylstm.recurrent.Recurrent (LSTM, GRU): the model never names a state
tensor, it passes each layer's state in the layer's own form (LSTM: (h, c); GRU: h; see
Recurrent.state_names), so one loop serves both cells and any mix of them.

Stateful contract (Keras `stateful=True`, PyTorch's detached (h_n, c_n) fed back):
* a model is stateful when its recurrent layers are: build them with stateful=True. Sequential never
  changes the layers it is given; a stateful= that contradicts them (or a mix) is refused;
* row i of batch k+1 continues row i of batch k, so the batch size is locked by the first call and a
  different one is refused (reset_states(batch_size=n) starts over with n rows);
* fit resets the state at the start of every epoch, refuses shuffle=True and a last partial batch;
* gradients stop at the batch boundary (truncated BPTT): the incoming state is a constant.

Every public method validates all of its arguments before it changes anything: a refused call leaves
weights, optimizer state and carried state as they were.

Outputs: predict returns what the head computes. For loss="cross_entropy" those are logits (the loss
applies the softmax itself, in one overflow-safe step, as PyTorch's CrossEntropyLoss does, and the
argmax is the same); predict_proba returns the softmax probabilities, as a Keras model with a softmax
output would.

Parameters: state_dict() / load_state_dict(sd) over every layer, keys '<layer index>.<name>'
('0.W_x_l0', '2.W'). Copy and pickle work (the layers and the optimizer are copied).

Checkpoints: model.save(path) and npylstm.load(path), in checkpoint.py.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from .checks import IncompatibleKeys, as_float_array, check_bool, check_positive_int, check_seed, load_params
from .layers import Linear
from .losses import accuracy, class_targets, cross_entropy_loss, log_softmax, mse_loss
from .gru import GRU
from .lstm import LSTM
from .recurrent import Recurrent
from .optim import Adam, clip_grad_norm

LOSSES = {"mse": mse_loss, "cross_entropy": cross_entropy_loss}


class Sequential:
    """Stacked recurrent layers (LSTM or GRU, each its own hidden size), optionally followed by one
    Linear head, trained Keras-style: compile, fit, evaluate, predict, predict_proba, generate, save.

        x (N, T, D)  ->  (N, out), or (N, T, out) with return_sequences     (batch-first, as in Keras)

    layers           : [RNN, ..., RNN] or [RNN, ..., RNN, Linear], each RNN an LSTM or a GRU (mixing
                       allowed); any batch_first setting (the model feeds each layer its layout). The
                       model holds these objects: training updates them.
    return_sequences : False -- the last step's output (N, H) goes to the head: out[:, -1, :] -> Linear;
                       True  -- every step's (N, T, H), the head applied at every step.
    stateful         : None (default) -- stateful when the recurrent layers are (all of them, or none);
                       True / False -- must agree with every recurrent layer (the layers are not changed:
                       build them with stateful=True).
    seed             : seeds the shuffling of fit (the order of epoch e is drawn from (seed, e), so a
                       resumed run shuffles as the uninterrupted one); None draws one.
    """

    def __init__(self, layers: Sequence[Any], *, return_sequences: bool = False, stateful: Optional[bool] = None,
                 seed: Optional[int] = None):
        where = "Sequential"
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"{where}: layers must be a non-empty list of LSTM/GRU layers and an optional Linear head")
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Recurrent, Linear)):
                raise ValueError(f"{where}: layers[{i}] is a {type(layer).__name__}, expected LSTM, GRU or Linear")
            if isinstance(layer, Linear) and i != len(layers) - 1:
                raise ValueError(f"{where}: layers[{i}] is a Linear: only the last layer may be the Linear head")
        if not isinstance(layers[0], Recurrent):
            raise ValueError(f"{where}: layers[0] must be an LSTM or a GRU, got {type(layers[0]).__name__}")
        dtypes = {np.dtype(layer.dtype) for layer in layers}
        if len(dtypes) != 1:
            raise ValueError(f"{where}: all layers must share one dtype, got {sorted(d.name for d in dtypes)}")
        size = layers[0].input_size
        for i, layer in enumerate(layers):
            n_in = layer.input_size if isinstance(layer, Recurrent) else layer.in_features
            if n_in != size:
                raise ValueError(f"{where}: layers[{i}] takes {n_in} features, but the layer before gives {size}")
            size = layer.hidden_size if isinstance(layer, Recurrent) else layer.out_features
        seed = check_seed(where, "seed", seed)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))
        return_sequences = check_bool(where, "return_sequences", return_sequences)
        rnns = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, Recurrent)]
        if stateful is None:
            stateful = rnns[0][1].stateful
            for i, layer in rnns:
                if layer.stateful != stateful:
                    raise ValueError(f"{where}: layers[0] has stateful={stateful} but layers[{i}] has "
                                     f"stateful={layer.stateful}: a model's recurrent layers are all stateful or none")
        stateful = check_bool(where, "stateful", stateful)
        for i, layer in rnns:
            if layer.stateful != stateful:
                raise ValueError(f"{where}: stateful={stateful} but layers[{i}] ({layer.name}) has stateful="
                                 f"{layer.stateful}: build the layers with stateful={stateful} (Sequential does not "
                                 f"change the layers it is given), or leave stateful unset to take it from them")
        locked = {layer._batch_size for layer in layers
                  if isinstance(layer, Recurrent) and layer._batch_size is not None}
        if len(locked) > 1:
            raise ValueError(f"{where}: the stateful layers passed are locked to different batch sizes {sorted(locked)}")

        self.layers = layers
        self.rnns = [layer for layer in layers if isinstance(layer, Recurrent)]   # LSTM and GRU layers, bottom up
        self.head = layers[-1] if isinstance(layers[-1], Linear) else None
        self.return_sequences = return_sequences
        self.stateful = stateful
        self.seed = int(seed)
        self.dtype = dtypes.pop()
        self.input_size = layers[0].input_size
        self.output_size = size
        self.loss = None                # set by compile
        self.optimizer = None
        self.clip_norm = None
        self.epochs_trained = 0         # epochs fit has completed, over every call (and across checkpoints)
        self._batch_size = locked.pop() if locked else None   # stateful: locked by the first call
        self._last = None               # (N, T) of the last forward, for backward

    # ------------------------------------------------------------------ parameters and state
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter, keyed '<layer index>.<name>' (e.g. '0.W_x_l0', '2.W'): the arrays themselves."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Every gradient, keyed as params."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    def zero_grad(self) -> None:
        """Set every layer's gradients to zero."""
        for layer in self.layers:
            layer.zero_grad()

    def num_parameters(self) -> int:
        """How many numbers the parameters of every layer hold."""
        return sum(layer.num_parameters() for layer in self.layers)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter as NumPy arrays, keyed as params: '<layer index>.<name>' ('0.W_x_l0')."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.state_dict().items()}

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy every parameter in from `state_dict` (keys as state_dict gives them), checked as
        LSTM.load_state_dict checks: a ValueError names the key, and no layer changes on refusal."""
        return load_params("Sequential.load_state_dict", self.params, state_dict, strict)

    @property
    def batch_size(self) -> Optional[int]:
        """Stateful mode: the batch size the model is locked to (None until the first call)."""
        return self._batch_size

    @property
    def lstms(self):
        """The recurrent layers, bottom up (the name predates the GRU; `rnns` is the same list)."""
        return self.rnns

    @property
    def states(self):
        """Stateful mode: the carried state, one entry per recurrent layer in that layer's own form --
        (h, c) for an LSTM, h for a GRU -- each tensor (L, N, H) (copies); or None."""
        if not self.stateful or any(layer.state is None for layer in self.rnns):
            return None
        return [_copy_state(layer.state) for layer in self.rnns]

    @states.setter
    def states(self, value):
        """Set the carried state of every recurrent layer ([(h, c), h, ...] as `states` gives it) or clear it (None)."""
        where = "Sequential.states"
        if value is None:
            self.reset_states()
            return
        if not self.stateful:
            raise ValueError(f"{where}: only a stateful model carries a state")
        if not isinstance(value, (list, tuple)) or len(value) != len(self.rnns):
            forms = ", ".join("(h, c)" if len(layer.state_names) == 2 else "h" for layer in self.rnns)
            raise ValueError(f"{where}: expected one state per recurrent layer ({len(self.rnns)}): [{forms}]")
        backup = [layer._state for layer in self.rnns], [layer._batch_size for layer in self.rnns], self._batch_size
        try:
            for layer, st in zip(self.rnns, value):
                layer.state = st
            sizes = {layer._state[0].shape[1] for layer in self.rnns}
            if len(sizes) != 1:
                raise ValueError(f"{where}: the layers' states have different batch sizes {sorted(sizes)}")
        except ValueError:
            for layer, st, bs in zip(self.rnns, backup[0], backup[1]):
                layer._state, layer._batch_size = st, bs
            raise
        self._batch_size = sizes.pop()

    def reset_states(self, rows: Optional[ArrayLike] = None, *, batch_size: Optional[int] = None) -> None:
        """Stateful mode: zero the carried state of every layer.

        rows       : (N,) booleans -- zero only those rows (their sequences ended, new ones start there).
        batch_size : also re-lock the model to a new batch size (the carried state is dropped).
        A stateless model carries nothing: this is then a no-op.
        """
        where = "Sequential.reset_states"
        if batch_size is not None:
            if rows is not None:
                raise ValueError(f"{where}: give rows or batch_size, not both")
            batch_size = check_positive_int(where, "batch_size", batch_size)
        if rows is not None:
            rows = np.asarray(rows)
            if rows.dtype != bool:
                raise ValueError(f"{where}: rows must be booleans (True = reset that row), got dtype {rows.dtype}")
            if rows.ndim != 1 or (self._batch_size is not None and rows.shape[0] != self._batch_size):
                raise ValueError(f"{where}: rows has shape {tuple(rows.shape)}, expected ({self._batch_size},): "
                                 f"one flag per row of the locked batch")
        if not self.stateful:
            return
        for layer in self.rnns:
            layer.reset_states(rows, batch_size=batch_size)
        if batch_size is not None:
            self._batch_size = batch_size

    # ------------------------------------------------------------------ compile
    def compile(self, loss: str = "mse", optimizer: Any = None, clip_norm: Optional[float] = None) -> "Sequential":
        """Set the loss ("mse" | "cross_entropy"), the optimizer (an SGD / Adam instance; default Adam())
        and gradient clipping (clip_norm: None, or the largest global L2 norm). Returns self."""
        where = "Sequential.compile"
        if loss not in LOSSES:
            raise ValueError(f"{where}: loss must be one of {sorted(LOSSES)}, got {loss!r}")
        optimizer = Adam() if optimizer is None else optimizer
        if not all(hasattr(optimizer, a) for a in ("step", "state_dict", "load_state_dict")):
            raise ValueError(f"{where}: optimizer must have step, state_dict and load_state_dict, "
                             f"got {type(optimizer).__name__}")
        if clip_norm is not None:
            if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.floating)) \
                    or not math.isfinite(clip_norm) or clip_norm <= 0:
                raise ValueError(f"{where}: clip_norm must be None or a positive number, got {clip_norm!r}")
            clip_norm = float(clip_norm)
        self.loss, self.optimizer, self.clip_norm = loss, optimizer, clip_norm
        return self

    # ------------------------------------------------------------------ validation
    def _check_x(self, where, x, mask=None, names=("x", "mask")):
        """x (N, T, D) and mask (N, T) or None, checked; `names` are what the messages call them."""
        xn, mn = names
        x = as_float_array(where, xn, x, self.dtype)
        if x.ndim != 3:
            raise ValueError(f"{where}: {xn} must be batch-first (N, T, D), got shape {tuple(x.shape)}")
        N, T, D = x.shape
        if D != self.input_size:
            raise ValueError(f"{where}: {xn} has {D} features, expected {self.input_size}")
        if N < 1 or T < 1:
            raise ValueError(f"{where}: {xn} has shape {tuple(x.shape)}: needs at least one row and one step")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool:
                raise ValueError(f"{where}: {mn} must be booleans (True = real step), got dtype {mask.dtype}")
            if mask.shape != (N, T):
                raise ValueError(f"{where}: {mn} has shape {tuple(mask.shape)}, expected (N, T) = {(N, T)}")
        return np.ascontiguousarray(x), mask

    def _check_y(self, where, y, N, T, names=("x", "y")):
        """The targets for N rows of T steps, checked against the loss; `names` as in _check_x."""
        xn, yn = names
        lead = (N, T) if self.return_sequences else (N,)
        out = self.output_size
        if not hasattr(y, "shape"):
            y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != N:
            got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
            raise ValueError(f"{where}: {xn} has {N} rows but {yn} has {got}: one target per sample")
        if self.loss == "cross_entropy":
            if y.dtype.kind in "iu":
                class_targets(where if yn == "y" else f"{where}: {yn}", y, lead + (out,))  # shape, class range
                return np.asarray(y)
            if y.dtype.kind != "f":
                raise ValueError(f"{where}: {yn} must be integer class ids or float one-hot rows for "
                                 f"cross_entropy, got dtype {y.dtype}")
            y = as_float_array(where, yn, y, self.dtype)
        else:
            if y.dtype.kind != "f":
                raise ValueError(f"{where}: {yn} must be a real floating array for mse, got dtype {y.dtype} "
                                 f"(class ids belong with loss='cross_entropy')")
            y = as_float_array(where, yn, y, self.dtype)
            if out == 1 and tuple(y.shape) == lead:
                y = y[..., None]
        if tuple(y.shape) != lead + (out,):
            raise ValueError(f"{where}: {yn} has shape {tuple(y.shape)}, expected {lead + (out,)}"
                             f"{' (return_sequences: one target per step)' if self.return_sequences else ''}")
        return np.ascontiguousarray(y)

    def _check_batches(self, where, N, batch_size):
        """The batch size to use; stateful: the locked one, dividing N."""
        if batch_size is not None:
            batch_size = check_positive_int(where, "batch_size", batch_size)
        if not self.stateful:
            return batch_size or N
        bs = batch_size or self._batch_size or N
        if self._batch_size is not None and bs != self._batch_size:
            raise ValueError(
                f"{where}: the model is stateful with batch size {self._batch_size}, got batches of {bs}: row i "
                f"of each batch continues row i of the previous one, so the batch size cannot change. Call "
                f"reset_states(batch_size={bs}) to start over with {bs} rows.")
        if N % bs:
            raise ValueError(
                f"{where}: {N} samples are not a whole number of batches of {bs}: a stateful model needs every "
                f"batch full (row i continues row i of the batch before), and the last one would have {N % bs} "
                f"rows. Drop or pad the last {N % bs} samples, or use stream_batches.")
        return bs

    def _check_compiled(self, where):
        if self.loss is None:
            raise ValueError(f"{where}: call compile(loss=..., optimizer=...) first")

    def _check_validation(self, where, validation_data):
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError(f"{where}: validation_data must be (x_val, y_val) or (x_val, y_val, mask_val)")
        xv, yv, mv = (*validation_data, None)[:3]
        names = ("validation_data[0]", "validation_data[1]", "validation_data[2]")
        xv, mv = self._check_x(where, xv, mv, names[0::2])
        yv = self._check_y(where, yv, xv.shape[0], xv.shape[1], names[:2])
        return xv, yv, mv

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x: ArrayLike, mask: Optional[ArrayLike] = None) -> np.ndarray:
        """Same as forward."""
        return self.forward(x, mask)

    def forward(self, x: ArrayLike, mask: Optional[ArrayLike] = None) -> np.ndarray:
        """x : (N, T, D), mask : (N, T) bool or None  ->  (N, out), or (N, T, out) with return_sequences.

        Stateful: starts from the carried state and carries the final one on. Keeps what backward needs.
        """
        where = "Sequential.forward"
        x, mask = self._check_x(where, x, mask)
        if self.stateful:
            self._check_batches(where, x.shape[0], x.shape[0])
        return self._forward(x, mask)[0]

    def _forward(self, x, mask, states=None):
        """Trusted inputs. states: None (zeros, or the carried state when stateful) or one state per
        recurrent layer in its own form ((h, c) for an LSTM, h for a GRU)."""
        N, T, _ = x.shape
        final = []
        for j, layer in enumerate(self.rnns):
            xin = x if layer.batch_first else x.swapaxes(0, 1)               # the layer's layout
            m = None if mask is None else (mask if layer.batch_first else mask.T)
            y, hc = layer.forward(xin, None if states is None else states[j], m)
            x = y if layer.batch_first else y.swapaxes(0, 1)                 # (N, T, H)
            final.append(hc)
        if self.stateful:
            self._batch_size = N
        if not self.return_sequences:
            x = x[:, -1, :]                                                  # the last step: (N, H)
        out = self.head.forward(x) if self.head is not None else np.array(x, order="C")
        self._last = (N, T)
        return out, final

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """dout : the output's shape  ->  dx : (N, T, D); adds every layer's parameter gradients to grads.

        Truncated BPTT: the incoming state of a stateful call is a constant, nothing flows into it.
        """
        where = "Sequential.backward"
        if self._last is None:
            raise ValueError(f"{where}: call forward first: backward differentiates the last forward call")
        N, T = self._last
        if self.head is not None:
            dY = self.head.backward(dout)                                   # checks dout's shape itself
        else:
            dY = as_float_array(where, "dout", dout, self.dtype)
            expected = (N, T, self.output_size) if self.return_sequences else (N, self.output_size)
            if tuple(dY.shape) != expected:
                raise ValueError(f"{where}: dout has shape {tuple(dY.shape)}, expected the output's {expected}")
        if not self.return_sequences:
            # forward: out = Y[:, -1, :]  ->  dY is zero except at the last step
            full = np.zeros((N, T, dY.shape[-1]), self.dtype)
            full[:, -1, :] = dY
            dY = full
        for layer in reversed(self.rnns):
            dx, _ = layer.backward(dY if layer.batch_first else dY.swapaxes(0, 1))
            dY = dx if layer.batch_first else dx.swapaxes(0, 1)
        return np.ascontiguousarray(dY)

    # ------------------------------------------------------------------ training
    def _loss(self, out, y, mask):
        """(loss, dout, weight, correct): weight = how many elements (mse) or rows (cross_entropy) the loss averages."""
        loss_mask = mask if self.return_sequences else None
        loss, dout = LOSSES[self.loss](out, y, loss_mask)
        if self.loss == "mse":
            weight = out.size if loss_mask is None else int(loss_mask.sum()) * out.shape[-1]
            return loss, dout, weight, 0
        weight = int(np.prod(out.shape[:-1])) if loss_mask is None else int(loss_mask.sum())
        return loss, dout, weight, round(accuracy(out, y, loss_mask) * weight)   # accuracy = hits / weight

    def _train_step(self, x, y, mask):
        self.zero_grad()
        out, _ = self._forward(x, mask)
        loss, dout, weight, correct = self._loss(out, y, mask)
        if not math.isfinite(loss):
            raise FloatingPointError(f"Sequential.fit: the loss became {loss} (diverged): lower the learning "
                                     f"rate or set compile(clip_norm=...); the weights were not updated by this batch")
        self.backward(dout)
        grads = self.grads
        if self.clip_norm is not None:
            clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(self.params, grads)
        return loss, weight, correct

    def train_on_batch(self, x: ArrayLike, y: ArrayLike, mask: Optional[ArrayLike] = None) -> float:
        """One optimizer step on one batch; returns the batch loss. Stateful: carries the state on."""
        where = "Sequential.train_on_batch"
        self._check_compiled(where)
        x, mask = self._check_x(where, x, mask)
        y = self._check_y(where, y, x.shape[0], x.shape[1])
        if self.stateful:
            self._check_batches(where, x.shape[0], x.shape[0])
        return self._train_step(x, y, mask)[0]

    def fit(self, x: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: Optional[int] = 32, shuffle: bool = True,
            validation_data: Optional[tuple] = None, mask: Optional[ArrayLike] = None,
            progress: bool = True) -> dict[str, list[float]]:
        """Train; returns history {"loss": [...], "val_loss": [...], "accuracy": [...], "val_accuracy": [...]}.

        x : (N, T, D); y : (N, out) or (N, T, out) (cross_entropy: class ids (N,) / (N, T) or one-hot);
        mask : (N, T) bool or None. The epoch loss is the mean over every sample (element) of the epoch.
        Stateful: reset_states() at the start of each epoch; batch k = rows [k batch_size, (k+1) batch_size)
        in order; shuffle=True and a last partial batch are refused.
        """
        where = "Sequential.fit"
        self._check_compiled(where)
        x, mask = self._check_x(where, x, mask)
        N, T = x.shape[:2]
        y = self._check_y(where, y, N, T)
        epochs = check_positive_int(where, "epochs", epochs)
        shuffle = check_bool(where, "shuffle", shuffle)
        progress = check_bool(where, "progress", progress)
        if self.stateful and shuffle:
            raise ValueError(
                f"{where}: shuffle=True is refused for a stateful model: row i of batch k+1 must continue row i "
                f"of batch k, and shuffling would feed each row a state carried over from an unrelated sequence. "
                f"Pass shuffle=False (and data in stateful order, e.g. from stream_batches).")
        bs = self._check_batches(where, N, batch_size)
        val = None if validation_data is None else self._check_validation(where, validation_data)
        if val is not None and self.stateful:
            self._check_batches(where, val[0].shape[0], bs)

        history = {"loss": []}
        if self.loss == "cross_entropy":
            history["accuracy"] = []
        if val is not None:
            history["val_loss"] = []
            if self.loss == "cross_entropy":
                history["val_accuracy"] = []
        starts = range(0, N, bs)
        for e in range(epochs):
            epoch = self.epochs_trained
            if self.stateful:
                self.reset_states()
            order = np.random.default_rng([self.seed, epoch]).permutation(N) if shuffle else np.arange(N)
            bar = _progress(progress, len(starts), f"epoch {epoch + 1} ({e + 1}/{epochs})")
            total = weight = correct = 0
            for s in starts:
                rows = order[s:s + bs] if shuffle else slice(s, s + bs)     # stateful: batch k = rows [k bs, (k+1) bs)
                loss, w, c = self._train_step(x[rows], y[rows], None if mask is None else mask[rows])
                total, weight, correct = total + loss * w, weight + w, correct + c
                bar.update(loss=total / weight if weight else 0.0)
            self.epochs_trained += 1
            history["loss"].append(total / weight if weight else 0.0)
            if self.loss == "cross_entropy":
                history["accuracy"].append(correct / weight if weight else 0.0)
            if val is not None:
                carried = self.states
                if self.stateful:
                    self.reset_states()
                res = self._evaluate(*val, bs)
                if self.stateful:
                    self.states = carried
                history["val_loss"].append(res["loss"])
                if "accuracy" in res:
                    history["val_accuracy"].append(res["accuracy"])
            bar.close({k: v[-1] for k, v in history.items()})
        return history

    # ------------------------------------------------------------------ inference
    def predict(self, x: ArrayLike, batch_size: Optional[int] = None,
                mask: Optional[ArrayLike] = None) -> np.ndarray:
        """x : (N, T, D) -> (N, out), or (N, T, out) with return_sequences: what the head computes.

        For loss="cross_entropy" these are logits (unnormalised log-probabilities; their argmax is the
        predicted class): predict_proba gives the probabilities.
        batch_size: None = all rows at once (stateful: the locked batch size). Stateful: batches run in
        order from the carried state, which they update (as Keras's predict).
        """
        return self._predict("Sequential.predict", x, batch_size, mask)

    def predict_proba(self, x: ArrayLike, batch_size: Optional[int] = None,
                      mask: Optional[ArrayLike] = None) -> np.ndarray:
        """Class probabilities softmax(predict(x)) over the last axis: (N, C), or (N, T, C); rows sum to 1.

        Needs a model compiled with loss="cross_entropy" (for mse the outputs are values, not scores).
        batch_size, mask and the stateful behaviour are predict's.
        """
        where = "Sequential.predict_proba"
        if self.loss != "cross_entropy":
            raise ValueError(f"{where}: needs a model compiled with loss='cross_entropy' (its outputs are class "
                             f"scores), this one has loss={self.loss!r}: use predict")
        return np.exp(log_softmax(self._predict(where, x, batch_size, mask)))

    def _predict(self, where, x, batch_size, mask):
        x, mask = self._check_x(where, x, mask)
        bs = self._check_batches(where, x.shape[0], batch_size)
        outs = [self._forward(x[s:s + bs], None if mask is None else mask[s:s + bs])[0]
                for s in range(0, x.shape[0], bs)]
        return np.concatenate(outs, axis=0)

    def evaluate(self, x: ArrayLike, y: ArrayLike, batch_size: Optional[int] = None,
                 mask: Optional[ArrayLike] = None) -> dict[str, float]:
        """{"loss": mean over every sample (element), "accuracy": ... (cross_entropy only)}; batches as predict."""
        where = "Sequential.evaluate"
        self._check_compiled(where)
        x, mask = self._check_x(where, x, mask)
        y = self._check_y(where, y, x.shape[0], x.shape[1])
        bs = self._check_batches(where, x.shape[0], batch_size)
        return self._evaluate(x, y, mask, bs)

    def _evaluate(self, x, y, mask, bs):
        total = weight = correct = 0
        for s in range(0, x.shape[0], bs):
            mb = None if mask is None else mask[s:s + bs]
            out, _ = self._forward(x[s:s + bs], mb)
            loss, _, w, c = self._loss(out, y[s:s + bs], mb)
            total, weight, correct = total + loss * w, weight + w, correct + c
        res = {"loss": total / weight if weight else 0.0}
        if self.loss == "cross_entropy":
            res["accuracy"] = correct / weight if weight else 0.0
        return res

    def generate(self, seed_sequence: ArrayLike, steps: int) -> np.ndarray:
        """Run seed_sequence (T0, D), then feed each prediction back as the next input, carrying the state.

        returns (steps, D): the predictions. A cross_entropy model feeds back (and returns) the one-hot of
        its most likely class. Needs output size == input size. Batch of one; a stateful model starts from
        (and updates) its carried state, so it must be locked to batch size 1 (or not locked yet).
        """
        where = "Sequential.generate"
        if self.output_size != self.input_size:
            raise ValueError(f"{where}: the model maps {self.input_size} features to {self.output_size}: feeding "
                             f"predictions back needs output size == input size")
        steps = check_positive_int(where, "steps", steps)
        seed = as_float_array(where, "seed_sequence", seed_sequence, self.dtype)
        if seed.ndim != 2 or seed.shape[1] != self.input_size or seed.shape[0] < 1:
            raise ValueError(f"{where}: seed_sequence has shape {tuple(seed.shape)}, expected (T0, {self.input_size})")
        if self.stateful and self._batch_size not in (None, 1):
            raise ValueError(f"{where}: the model is stateful with batch size {self._batch_size}; generate runs one "
                             f"sequence: call reset_states(batch_size=1) first (or copy the weights to a stateless model)")
        carry = not self.stateful           # stateless: carry the states from call to call here
        out, states = self._forward(np.ascontiguousarray(seed[None]), None)
        preds = np.empty((steps, self.input_size), self.dtype)
        for k in range(steps):
            p = out[0, -1] if self.return_sequences else out[0]               # (D,)
            if self.loss == "cross_entropy":
                p = np.eye(self.input_size, dtype=self.dtype)[int(np.argmax(p))]
            preds[k] = p
            if k + 1 < steps:
                out, states = self._forward(preds[k].reshape(1, 1, -1), None, states if carry else None)
        return preds

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return (f"Sequential([{inner}], return_sequences={self.return_sequences}, stateful={self.stateful}, "
                f"seed={self.seed})")

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict:
        """The architecture and training settings, JSON-ready."""
        layers = []
        for layer in self.layers:
            if isinstance(layer, Recurrent):
                spec = {"type": layer.name, "input_size": layer.input_size, "hidden_size": layer.hidden_size,
                        "num_layers": layer.num_layers, "batch_first": layer.batch_first,
                        "dtype": layer.dtype.name}
                if isinstance(layer, LSTM):
                    spec["forget_bias"] = layer.forget_bias
                elif isinstance(layer, GRU):
                    spec["reset_after"] = layer.reset_after
                layers.append(spec)
            else:
                layers.append({"type": "Linear", "in_features": layer.in_features,
                               "out_features": layer.out_features, "dtype": layer.dtype.name})
        return {"layers": layers, "return_sequences": self.return_sequences,
                "stateful": self.stateful, "seed": self.seed, "epochs_trained": self.epochs_trained,
                "batch_size": self._batch_size}

    def save(self, path: Union[str, "os.PathLike[str]"], include_state: bool = False) -> None:
        """Write config, weights, optimizer state (and, with include_state, the carried state) to one .npz.

        Atomic: written to a temporary file beside `path`, then os.replace'd over it. See checkpoint.py.
        """
        from .checkpoint import save
        save(self, path, include_state)


def _copy_state(state):
    """A copy of one layer's state in its public form: a tuple of tensors (LSTM) or one tensor (GRU)."""
    return tuple(s.copy() for s in state) if isinstance(state, tuple) else state.copy()


# ---------------------------------------------------------------------- progress
class _progress:
    """A tqdm bar showing the running loss; plain one line per epoch if tqdm is missing; nothing if disabled."""

    def __init__(self, enabled, total, desc):
        self.enabled, self.desc, self.bar = bool(enabled), desc, None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="batch", leave=True, file=sys.stderr)

    def update(self, loss):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.bar.update(1)

    def close(self, summary):
        text = ", ".join(f"{k}={v:.4g}" for k, v in summary.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
        elif self.enabled:
            print(f"{self.desc}: {text}", file=sys.stderr)
