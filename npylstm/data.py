"""Data for sequence models: windows, a leak-free time split, stateful stream batches, padding, one-hot.

Every function returns batch-first arrays, as the model takes them: x (N, T, D).

make_windows(series, window, horizon=1)        -> X (M, window, D), y (M, D)
chronological_split(series, test_fraction, window=None, horizon=1) -> train, test
stream_batches(series, batch_size, steps)      -> StreamBatches(x, y, dropped)
pad_sequences(sequences, maxlen=None, padding="pre", value=0.0, truncating="pre") -> x (N, T, D), mask (N, T)
one_hot(indices, num_classes, dtype=float32)   -> (..., num_classes)

A series is a NumPy array or a list of numbers, (S,) or (S, D). A float array keeps its dtype; integer
arrays and lists become float32 (the layers' default, as pad_sequences does with lists), unless
dtype= says otherwise (float32 or float64).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .checks import as_float_array, check_dtype, check_positive_int


def _float_series(where, series, dtype):
    """`series` as a float array (see the module docstring for the dtype), finite, any shape."""
    if dtype is not None:
        dtype = check_dtype(where, dtype)
    a = series if isinstance(series, np.ndarray) else np.asarray(series)
    if a.dtype.kind in "iu" or (a.dtype.kind == "f" and not isinstance(series, np.ndarray)):
        a = a.astype(dtype or np.float32)
    elif a.dtype.kind == "f" and dtype is not None:
        a = a.astype(dtype, copy=False)
    elif a.dtype.kind != "f":
        raise ValueError(f"{where}: series must hold real numbers (a float or integer array, or a list of "
                         f"numbers), got dtype {a.dtype}")
    return as_float_array(where, "series", a)


def _series(where, series, dtype=None):
    """(S,) or (S, D) series -> (S, D) float (a view for (S, D) float input)."""
    s = _float_series(where, series, dtype)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"{where}: series must be (S,) or (S, D), got shape {tuple(s.shape)}")
    return s


def make_windows(series: ArrayLike, window: int, horizon: int = 1,
                 dtype: Optional[DTypeLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows over one series.

    series : (S,) or (S, D);  returns X : (M, window, D), y : (M, D) with M = S - window - horizon + 1:
        X[i] = series[i : i + window]        y[i] = series[i + window + horizon - 1]
    (y is the value `horizon` steps after the window's last point). dtype: see the module docstring.
    """
    where = "make_windows"
    s = _series(where, series, dtype)
    window = check_positive_int(where, "window", window)
    horizon = check_positive_int(where, "horizon", horizon)
    S, D = s.shape
    M = S - window - horizon + 1
    if M < 1:
        raise ValueError(f"{where}: series has {S} points, needs at least window + horizon = {window + horizon} "
                         f"for one window")
    idx = np.arange(M)[:, None] + np.arange(window)[None, :]          # (M, window)
    X = s[idx]                                                          # (M, window, D)
    y = s[np.arange(M) + window + horizon - 1]                         # (M, D)
    return X, y.copy()


def chronological_split(series: ArrayLike, test_fraction: float = 0.2, window: Optional[int] = None,
                        horizon: int = 1, dtype: Optional[DTypeLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a series in time order: the first points train, the last round(S * test_fraction) test.

    With `window` given, the test part starts with the window + horizon - 1 points before the split
    (context only), so make_windows(test, window, horizon) yields exactly the windows whose targets lie
    in the test part, and no window of make_windows(train, ...) has a target there.
    series : (S,) or (S, D); returns (train, test) in the series' own shape convention (dtype: see
    the module docstring).
    """
    where = "chronological_split"
    s = _float_series(where, series, dtype)
    if s.ndim not in (1, 2):
        raise ValueError(f"{where}: series must be (S,) or (S, D), got shape {tuple(s.shape)}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{where}: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    horizon = check_positive_int(where, "horizon", horizon)
    S = s.shape[0]
    n_test = int(round(S * test_fraction))
    split = S - n_test
    if n_test < 1 or split < 1:
        raise ValueError(f"{where}: test_fraction={test_fraction} of {S} points leaves {split} to train and "
                         f"{n_test} to test: both need at least one")
    if window is None:
        return s[:split].copy(), s[split:].copy()
    window = check_positive_int(where, "window", window)
    context = window + horizon - 1
    if split < window + horizon:
        raise ValueError(f"{where}: the train part has {split} points, needs at least window + horizon = "
                         f"{window + horizon} for one window")
    return s[:split].copy(), s[split - context:].copy()


class StreamBatches(NamedTuple):
    """Stateful batches of one long series; see stream_batches."""
    x: np.ndarray     # (K * N, steps, D)   inputs, batch k = rows [k N, (k+1) N)
    y: np.ndarray     # (K * N, steps, D)   targets: the series one step ahead of x
    dropped: int      # points at the end of the series that appear nowhere (neither in x nor in y)


def stream_batches(series: ArrayLike, batch_size: int, steps: int,
                   dtype: Optional[DTypeLike] = None) -> StreamBatches:
    """Cut one long series into batch_size parallel streams, served as `steps`-step chunks (Keras stateful order).

    series : (S,) or (S, D).  Each stream is L = K * steps consecutive points, K = (S - 1) // (N * steps)
    chunks (the -1: the last input needs a target after it). Stream i covers inputs
    series[i L : (i+1) L] and targets series[i L + 1 : (i+1) L + 1]. Row i of batch k is chunk k of stream i:

        x[k N + i] = series[i L + k steps : i L + (k+1) steps]        y[k N + i] = the same, one step later

    so row i of batch k+1 continues row i of batch k exactly. dropped = S - (N L + 1): the tail that does
    not fill a whole chunk in every stream. Feed to fit(x, y, batch_size=N, shuffle=False) on a stateful
    return_sequences model. dtype: see the module docstring.
    """
    where = "stream_batches"
    s = _series(where, series, dtype)
    N = check_positive_int(where, "batch_size", batch_size)
    steps = check_positive_int(where, "steps", steps)
    S, D = s.shape
    K = (S - 1) // (N * steps)
    if K < 1:
        raise ValueError(f"{where}: series has {S} points, needs at least batch_size * steps + 1 = "
                         f"{N * steps + 1} for one batch ({N} streams of {steps} steps, plus one target)")
    L = K * steps
    # index of every input point: [k, i, t] -> i L + k steps + t
    idx = (np.arange(N)[None, :, None] * L + np.arange(K)[:, None, None] * steps
           + np.arange(steps)[None, None, :]).reshape(K * N, steps)
    x = s[idx]                                  # (K N, steps, D)
    y = s[idx + 1]
    return StreamBatches(x, y, S - (N * L + 1))


def pad_sequences(sequences: Sequence[ArrayLike], maxlen: Optional[int] = None, padding: str = "pre",
                  value: float = 0.0, truncating: str = "pre",
                  dtype: Optional[DTypeLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length sequences into one batch, with a mask of the real steps.

    sequences : a list of (T_i,) or (T_i, D) arrays (all with the same D).
    padding   : "pre" puts the padding before each sequence (its last step is real), "post" after.
    maxlen    : pad/truncate to this length (default: the longest); truncating="pre" drops the oldest
                steps of a longer sequence, "post" the newest.
    dtype     : of x; default the sequences' common dtype (float32 if they are Python lists of numbers).
    returns x : (N, T, D), mask : (N, T) bool, True on real steps. Pass both on: masked steps leave the
    LSTM state unchanged and add no loss.
    """
    where = "pad_sequences"
    if padding not in ("pre", "post"):
        raise ValueError(f"{where}: padding must be 'pre' or 'post', got {padding!r}")
    if truncating not in ("pre", "post"):
        raise ValueError(f"{where}: truncating must be 'pre' or 'post', got {truncating!r}")
    if isinstance(sequences, np.ndarray) and sequences.dtype != object:
        sequences = list(sequences)
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise ValueError(f"{where}: sequences must be a non-empty list of arrays")
    seqs = []
    for i, q in enumerate(sequences):
        q = np.asarray(q)
        if q.dtype.kind not in "fiu":
            raise ValueError(f"{where}: sequences[{i}] must hold numbers, got dtype {q.dtype}")
        if q.dtype.kind == "f" and q.size and not np.isfinite(q).all():
            raise ValueError(f"{where}: sequences[{i}] must be finite, got NaN or inf")
        if q.ndim == 1:
            q = q[:, None]
        if q.ndim != 2:
            raise ValueError(f"{where}: sequences[{i}] must be (T,) or (T, D), got shape {tuple(q.shape)}")
        seqs.append(q)
    D = seqs[0].shape[1]
    for i, q in enumerate(seqs):
        if q.shape[1] != D:
            raise ValueError(f"{where}: sequences[{i}] has {q.shape[1]} features, sequences[0] has {D}")
    if maxlen is None:
        T = max(q.shape[0] for q in seqs)
        if T < 1:
            raise ValueError(f"{where}: every sequence is empty")
    else:
        T = check_positive_int(where, "maxlen", maxlen)
    if dtype is None:
        dtype = np.result_type(*[q.dtype for q in seqs])
        if not all(isinstance(s, np.ndarray) for s in sequences) and dtype.kind == "f":
            dtype = np.float32
    x = np.full((len(seqs), T, D), value, dtype=dtype)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for n, q in enumerate(seqs):
        q = q[-T:] if truncating == "pre" else q[:T]
        if len(q) == 0:
            continue
        sl = slice(T - len(q), T) if padding == "pre" else slice(0, len(q))
        x[n, sl] = q
        mask[n, sl] = True
    return x, mask


def one_hot(indices: ArrayLike, num_classes: int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """indices : int array (...), values in [0, num_classes)  ->  (..., num_classes) with a 1 at each index."""
    where = "one_hot"
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"{where}: indices must be integers, got dtype {idx.dtype}")
    C = check_positive_int(where, "num_classes", num_classes)
    if idx.size and (idx.min() < 0 or idx.max() >= C):
        raise ValueError(f"{where}: indices must lie in [0, {C}), got values in [{idx.min()}, {idx.max()}]")
    return np.eye(C, dtype=dtype)[idx]
