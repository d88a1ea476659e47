"""Windows, the chronological split, stateful stream batching, padding with masks, one-hot."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npylstm import chronological_split, make_windows, one_hot, pad_sequences, stream_batches


def _indexed_series(S, D):
    """A series whose value at time s, feature d is s + d/100: every point says where it came from."""
    return np.arange(S, dtype=np.float64)[:, None] + np.arange(D)[None, :] / 100.0


# ---------------------------------------------------------------- make_windows
@settings(max_examples=30, deadline=None)
@given(S=st.integers(2, 40), window=st.integers(1, 10), horizon=st.integers(1, 5), D=st.integers(1, 3))
def test_make_windows_targets_follow_their_window(S, window, horizon, D):
    s = _indexed_series(S, D)
    if S < window + horizon:
        with pytest.raises(ValueError, match="window \\+ horizon"):
            make_windows(s, window, horizon)
        return
    X, y = make_windows(s, window, horizon)
    M = S - window - horizon + 1
    assert X.shape == (M, window, D) and y.shape == (M, D)
    t = X[:, :, 0]                                          # the time index of every window point
    assert (np.diff(t, axis=1) == 1).all() and (np.diff(t[:, 0]) == 1).all() and t[0, 0] == 0
    assert np.array_equal(y[:, 0], t[:, -1] + horizon)      # `horizon` steps after the window's last point
    assert np.array_equal(y, s[y[:, 0].astype(int)])              # whole rows of the series, every feature


def test_make_windows_of_a_1d_series_has_one_feature():
    X, y = make_windows(np.arange(6.0), 3)
    assert X.shape == (3, 3, 1) and y.shape == (3, 1)


# ---------------------------------------------------------------- chronological_split
@settings(max_examples=40, deadline=None)
@given(S=st.integers(10, 80), frac=st.floats(0.1, 0.5), window=st.integers(1, 6), horizon=st.integers(1, 3))
def test_chronological_split_leaks_no_window(S, frac, window, horizon):
    s = np.arange(S, dtype=np.float64)
    try:
        train, test = chronological_split(s, frac, window=window, horizon=horizon)
    except ValueError as e:
        assert "chronological_split" in str(e)
        return
    split = len(train)
    assert np.array_equal(train, s[:split])
    _, y_train = make_windows(train, window, horizon)
    _, y_test = make_windows(test, window, horizon)
    assert y_train.max() < split                             # no train target in the test part
    assert np.array_equal(y_test[:, 0], np.arange(split, S))  # exactly the test part's points are test targets


def test_chronological_split_without_window_is_a_plain_cut():
    s = np.arange(10.0)
    train, test = chronological_split(s, 0.3)
    assert np.array_equal(train, s[:7]) and np.array_equal(test, s[7:])


# ---------------------------------------------------------------- stream_batches
@settings(max_examples=60, deadline=None)
@given(S=st.integers(1, 120), N=st.integers(1, 6), T=st.integers(1, 8), D=st.integers(1, 2))
def test_stream_batches_rows_continue_across_batches(S, N, T, D):
    s = _indexed_series(S, D)
    if S < N * T + 1:
        with pytest.raises(ValueError, match="stream_batches"):
            stream_batches(s, N, T)
        return
    x, y, dropped = stream_batches(s, N, T)
    K = x.shape[0] // N
    assert x.shape == y.shape == (K * N, T, D) and K >= 1
    t = x[:, :, 0].astype(np.int64)                          # time index of every input point
    assert np.array_equal(y[:, :, 0], t + 1)                 # targets: one step ahead
    assert np.array_equal(x, s[t]) and np.array_equal(y, s[t + 1])  # whole rows, every feature
    assert (np.diff(t, axis=1) == 1).all()                   # each chunk is consecutive
    for k in range(K - 1):                                   # row i of batch k+1 starts where row i of batch k ended
        assert np.array_equal(t[(k + 1) * N:(k + 2) * N, 0], t[k * N:(k + 1) * N, -1] + 1)
    assert len(np.unique(t)) == t.size                       # no input point is used twice
    used = np.union1d(t.ravel(), (t + 1).ravel())           # inputs and targets together
    assert np.array_equal(used, np.arange(len(used)))        # a contiguous prefix of the series ...
    assert dropped == S - len(used)                          # ... and the rest is reported as dropped
    assert dropped < N * T                                   # only a tail too short for one more chunk per stream


def test_stream_batches_1d_series_and_example():
    x, y, dropped = stream_batches(np.arange(11.0), 2, 2)   # L = 4 per stream: [0..3], [4..7]; 8 is a target
    assert x[:, :, 0].tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]
    assert y[:, :, 0].tolist() == [[1, 2], [5, 6], [3, 4], [7, 8]]
    assert dropped == 2


# ---------------------------------------------------------------- pad_sequences
@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(lambda ls: max(ls) > 0),
       padding=st.sampled_from(["pre", "post"]), D=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_pad_sequences_places_every_sequence_and_marks_it(lengths, padding, D, seed):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, D)) for n in lengths]
    x, mask = pad_sequences(seqs, padding=padding, value=-7.0)
    T = max(lengths)
    assert x.shape == (len(seqs), T, D) and mask.shape == (len(seqs), T) and mask.dtype == bool
    for n, q in enumerate(seqs):
        assert mask[n].sum() == len(q)
        assert np.array_equal(x[n][mask[n]], q)
        assert (x[n][~mask[n]] == -7.0).all()
        real = np.flatnonzero(mask[n])
        if len(q):
            assert (real == (np.arange(T - len(q), T) if padding == "pre" else np.arange(len(q)))).all()


@pytest.mark.parametrize("truncating, kept", [("pre", [2.0, 3.0, 4.0]), ("post", [0.0, 1.0, 2.0])])
def test_pad_sequences_truncates(truncating, kept):
    x, mask = pad_sequences([np.arange(5.0), np.arange(2.0)], maxlen=3, truncating=truncating)
    assert x[0, :, 0].tolist() == kept and mask[0].all()
    assert mask[1].tolist() == [False, True, True]


# ---------------------------------------------------------------- one_hot
def test_one_hot_round_trips():
    ids = np.random.default_rng(0).integers(0, 5, size=(3, 4))
    oh = one_hot(ids, 5)
    assert oh.shape == (3, 4, 5) and oh.dtype == np.float32
    assert np.array_equal(oh.argmax(-1), ids) and (oh.sum(-1) == 1).all()


@pytest.mark.parametrize("bad, match", [
    (lambda: make_windows(np.arange(5) * 1j, 2), "series must hold real numbers"),
    (lambda: make_windows(np.ones(5, bool), 2), "series must hold real numbers"),
    (lambda: make_windows(np.ones(5), 2, dtype=np.int32), "dtype must be float32 or float64"),
    (lambda: make_windows(np.array([0.0, np.nan, 1.0, 2.0]), 2), "finite"),
    (lambda: make_windows(np.ones((2, 2, 2)), 1), r"\(S,\) or \(S, D\)"),
    (lambda: make_windows(np.ones(5), 0), "window must be a positive int"),
    (lambda: chronological_split(np.ones(10), 1.0), "test_fraction"),
    (lambda: chronological_split(np.ones(3), 0.5, window=3), "train part"),
    (lambda: stream_batches(np.ones(10), 0, 2), "batch_size"),
    (lambda: pad_sequences([]), "non-empty"),
    (lambda: pad_sequences([np.ones((2, 2)), np.ones((2, 3))]), "3 features"),
    (lambda: pad_sequences([np.ones(2)], padding="middle"), "padding"),
    (lambda: one_hot(np.array([0.0, 1.0]), 2), "integers"),
    (lambda: one_hot(np.array([0, 2]), 2), r"\[0, 2\)"),
])
def test_data_misuse(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("series, dtype, want", [
    (np.arange(8), None, np.float32),                      # integer array -> float32 (the layers' default)
    (list(range(8)), None, np.float32),                    # a list of numbers -> float32, as pad_sequences
    ([0.5 * k for k in range(8)], None, np.float32),
    (np.arange(8, dtype=np.int16), np.float64, np.float64),
    (np.arange(8.0), None, np.float64),                    # a float array keeps its dtype
    (np.arange(8, dtype=np.float32), np.float64, np.float64),
])
def test_integer_series_and_lists_are_windowed_as_floats(series, dtype, want):
    values = np.asarray(series, np.float64)                # every value here is exact in float32
    X, y = make_windows(series, 3, dtype=dtype)
    assert X.dtype == want and y.dtype == want and X.shape == (5, 3, 1)
    np.testing.assert_array_equal(X[:, :, 0], values[np.arange(5)[:, None] + np.arange(3)])
    np.testing.assert_array_equal(y[:, 0], values[3:])
    train, test = chronological_split(series, 0.25, dtype=dtype)
    assert train.dtype == want and test.dtype == want and (len(train), len(test)) == (6, 2)
    assert stream_batches(series, 1, 3, dtype=dtype).x.dtype == want
