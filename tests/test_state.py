"""Copy, pickle and state dicts of LSTM, GRU, Linear and Sequential; parameters replaced by hand;
constructor arguments checked by name."""

import copy
import pickle

import numpy as np
import pytest

import npylstm
from npylstm import GRU, LSTM, SGD, Adam, Linear, Sequential, gpu

CELLS = {"LSTM": LSTM, "GRU": GRU}


def trained_layer(cls, L, dtype, stateful, seed=0):
    """A layer after a forward and a backward: non-zero grads, and a carried state when stateful."""
    rng = np.random.default_rng(seed)
    layer = CELLS[cls](3, 4, num_layers=L, dtype=dtype, seed=seed, stateful=stateful, batch_first=True)
    y, _ = layer(rng.normal(size=(2, 5, 3)).astype(dtype))
    layer.backward(rng.normal(size=y.shape).astype(dtype))
    return layer


def states_of(layer):
    st = layer.state
    return [] if st is None else list(st) if isinstance(st, tuple) else [st]


def assert_same_layer(a, b):
    """Bit for bit: parameters, gradients, carried state, settings."""
    assert repr(a) == repr(b)
    for d_a, d_b in ((a.params, b.params), (a.grads, b.grads)):
        assert d_a.keys() == d_b.keys()
        for k in d_a:
            assert d_a[k].dtype == d_b[k].dtype and np.array_equal(d_a[k], d_b[k]), k
            assert not np.shares_memory(d_a[k], d_b[k]), k
    sa, sb = states_of(a), states_of(b)
    assert len(sa) == len(sb) and all(np.array_equal(p, q) for p, q in zip(sa, sb))
    assert a._batch_size == b._batch_size


COPIES = {"pickle": lambda o: pickle.loads(pickle.dumps(o)), "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cls", CELLS)
def test_recurrent_layers_copy_and_pickle_bit_for_bit(cls, L, dtype, stateful, how):
    layer = trained_layer(cls, L, dtype, stateful)
    twin = COPIES[how](layer)
    assert_same_layer(layer, twin)
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(dtype)
    (y1, s1), (y2, s2) = layer(x), twin(x)          # stateful: both continue from the same carried state
    assert np.array_equal(y1, y2)
    for a, b in zip(s1 if isinstance(s1, tuple) else [s1], s2 if isinstance(s2, tuple) else [s2]):
        assert np.array_equal(a, b)
    dy = np.ones_like(y1)
    assert np.array_equal(layer.backward(dy)[0], twin.backward(dy)[0])
    assert all(np.array_equal(layer.grads[k], twin.grads[k]) for k in layer.grads)


@pytest.mark.parametrize("cls", CELLS)
def test_a_copy_needs_a_forward_before_backward(cls):
    twin = copy.deepcopy(trained_layer(cls, 1, np.float64, False))
    with pytest.raises(ValueError, match=f"^{cls}.backward: call forward first"):
        twin.backward(np.ones((2, 5, 4)))


@pytest.mark.parametrize("how", COPIES)
def test_linear_copies_and_pickles(how):
    head = Linear(3, 2, dtype=np.float64, seed=1)
    head(np.ones((4, 3)))
    head.backward(np.ones((4, 2)))
    twin = COPIES[how](head)
    for k in head.params:
        assert np.array_equal(head.params[k], twin.params[k]) and np.array_equal(head.grads[k], twin.grads[k])
    assert np.array_equal(head(np.eye(3)), twin(np.eye(3)))


def mixed_model(stateful, dtype=np.float64):
    layers = [GRU(2, 4, batch_first=True, dtype=dtype, seed=1, stateful=stateful),
              LSTM(4, 3, num_layers=2, dtype=dtype, seed=2, stateful=stateful),
              Linear(3, 2, dtype=dtype, seed=3)]
    return Sequential(layers, return_sequences=True, seed=4)


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("stateful", [False, True])
def test_a_sequential_copy_trains_on_exactly_as_the_original(how, stateful):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 5, 2)), rng.normal(size=(4, 5, 2))
    model = mixed_model(stateful).compile("mse", Adam(lr=0.01), clip_norm=1.0)
    model.fit(x, y, epochs=2, batch_size=2, shuffle=not stateful, progress=False)
    model.train_on_batch(x[:2], y[:2])              # stateful: a state is carried into the copy
    twin = COPIES[how](model)
    assert twin.optimizer is not model.optimizer and twin.layers[0] is not model.layers[0]
    for a, b in zip(model.layers, twin.layers):
        assert np.array_equal(a.params[next(iter(a.params))], b.params[next(iter(b.params))])
    h1 = model.fit(x, y, epochs=2, batch_size=2, shuffle=not stateful, progress=False)
    h2 = twin.fit(x, y, epochs=2, batch_size=2, shuffle=not stateful, progress=False)
    assert h1 == h2
    for k, v in model.params.items():
        assert np.array_equal(v, twin.params[k]), k


def test_a_cuda_layer_pickles_its_device_and_needs_cuda_to_come_back(monkeypatch):
    """The GPU stood in by NumPy (as tests/test_device.py does): the pickle holds host arrays and
    device 'cuda'; unpickled where CUDA is missing, require_cuda's RuntimeError says so."""
    with monkeypatch.context() as m:
        m.setattr(gpu, "require_cuda", lambda where="": np)
        m.setattr(gpu, "to_device", lambda a, device: np.asarray(a))
        layer = LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0, stateful=True, device="cuda", kernel=1)
        layer.state = (np.full((2, 3, 4), 0.5), np.full((2, 3, 4), -0.5))     # a carried state (N = 3)
        blob = pickle.dumps(layer)
        back = pickle.loads(blob)
        assert back.device == "cuda" and back.kernel == 1 and isinstance(back._backend, gpu.Backend)
        assert_same_layer(layer, back)
    if _gpu_usable():
        pytest.skip("a usable GPU is present: unpickling succeeds here")
    with pytest.raises(RuntimeError, match=r"^LSTM \(unpickled on device 'cuda'\): .*(CuPy|CUDA device|NVRTC)"):
        pickle.loads(blob)


def _gpu_usable():
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cls", CELLS)
def test_state_dict_round_trip(cls, L, dtype):
    a = CELLS[cls](3, 4, num_layers=L, dtype=dtype, seed=1)
    b = CELLS[cls](3, 4, num_layers=L, dtype=dtype, seed=2)
    sd = a.state_dict()
    assert list(sd) == list(a.params) and all(type(v) is np.ndarray for v in sd.values())
    assert not any(np.shares_memory(sd[k], a.params[k]) for k in sd)      # copies
    ids = {k: id(v) for k, v in b.params.items()}
    assert b.load_state_dict(sd) == ([], [])
    assert {k: id(v) for k, v in b.params.items()} == ids                 # in place: optimizers keep their arrays
    x = np.random.default_rng(3).normal(size=(5, 2, 3)).astype(dtype)
    assert np.array_equal(a(x)[0], b(x)[0])
    sd[next(iter(sd))][...] = 0                                          # a copy: the layer does not change
    assert np.array_equal(a(x)[0], b(x)[0])


def test_load_state_dict_casts_the_other_float_precision_and_takes_tensors():
    a = LSTM(2, 3, dtype=np.float32, seed=0)
    wide = {k: v.astype(np.float64) + 1e-9 for k, v in LSTM(2, 3, dtype=np.float64, seed=1).params.items()}
    a.load_state_dict(wide)
    for k, v in wide.items():
        assert a.params[k].dtype == np.float32 and np.array_equal(a.params[k], v.astype(np.float32)), k
    torch = pytest.importorskip("torch")
    b = GRU(2, 3, dtype=np.float64, seed=0)
    b.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in GRU(2, 3, dtype=np.float64, seed=5).params.items()})
    assert np.array_equal(b.params["W_h_l0"], GRU(2, 3, dtype=np.float64, seed=5).params["W_h_l0"])


def _bad_state_dicts(sd):
    first, shape = "W_x_l0", sd["W_x_l0"].shape
    return [
        ({k: v for k, v in sd.items() if k != "b_l1"}, "missing key 'b_l1'"),
        ({**sd, "W_x_l9": sd[first]}, "unexpected key 'W_x_l9'"),
        ({**sd, first: np.zeros(shape[::-1])}, rf"'W_x_l0' has shape \({shape[1]}, {shape[0]}\), expected"),
        ({**sd, first: np.zeros(shape, np.int64)}, "'W_x_l0' has dtype int64, expected a float array"),
        ({**sd, first: np.zeros(shape, bool)}, "'W_x_l0' has dtype bool"),
        ({**sd, first: np.full(shape, np.nan)}, "'W_x_l0' must be finite"),
        ({**sd, first: "weights"}, "'W_x_l0' has dtype <U7"),
        ([("W_x_l0", 1)], "state_dict must be a mapping"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_load_state_dict_refuses_bad_input_naming_the_key_and_changes_nothing(case):
    layer = LSTM(2, 3, num_layers=2, dtype=np.float64, seed=0)
    sd, match = _bad_state_dicts(LSTM(2, 3, num_layers=2, dtype=np.float64, seed=1).state_dict())[case]
    before = layer.state_dict()
    with pytest.raises(ValueError, match="^LSTM.load_state_dict: " + match):
        layer.load_state_dict(sd)
    assert all(np.array_equal(before[k], layer.params[k]) for k in before)


def test_load_state_dict_not_strict_reports_what_did_not_match():
    layer = GRU(2, 3, dtype=np.float64, seed=0)
    other = GRU(2, 3, dtype=np.float64, seed=1).state_dict()
    res = layer.load_state_dict({"W_x_l0": other["W_x_l0"], "extra": np.zeros(2)}, strict=False)
    assert res.missing_keys == ["W_h_l0", "b_x_l0", "b_h_l0"] and res.unexpected_keys == ["extra"]
    assert np.array_equal(layer.params["W_x_l0"], other["W_x_l0"])
    with pytest.raises(ValueError, match="^GRU.load_state_dict: strict must be True or False"):
        layer.load_state_dict(other, strict="no")


def test_sequential_state_dict_round_trip_and_refusal():
    a, b = mixed_model(False), mixed_model(False)
    b.load_state_dict({k: v + 0.5 for k, v in b.state_dict().items()})
    sd = a.state_dict()
    assert list(sd) == list(a.params) and "0.W_x_l0" in sd and "1.b_l1" in sd and "2.W" in sd
    x = np.random.default_rng(0).normal(size=(3, 4, 2))
    assert not np.array_equal(a.predict(x), b.predict(x))
    before = b.state_dict()
    with pytest.raises(ValueError, match=r"^Sequential.load_state_dict: '2.b' has shape \(3,\), expected \(2,\)"):
        b.load_state_dict({**sd, "2.b": np.zeros(3)})
    assert all(np.array_equal(before[k], b.params[k]) for k in before)     # no layer changed, not even layer 0
    b.load_state_dict(sd)
    assert np.array_equal(a.predict(x), b.predict(x))
    head = Linear(3, 2, seed=0)
    head.load_state_dict(a.layers[2].state_dict())
    assert np.array_equal(head.params["W"], a.layers[2].params["W"].astype(np.float32))


# ---------------------------------------------------------------------------------------- params by hand
@pytest.mark.parametrize("fault, match", [
    ("dtype", r"params\['W_h_l0'\] has dtype float64, expected float32"),
    ("shape", r"params\['W_h_l0'\] has shape \(4, 4\), expected \(4, 16\)"),
    ("list", r"params\['W_h_l0'\] is a builtins.list, expected a numpy.ndarray"),
    ("missing", r"params lacks \['W_h_l0'\]"),
    ("extra", r"params has unknown keys \['W_h_l9'\]"),
])
def test_a_parameter_replaced_by_hand_is_checked_at_forward(fault, match):
    layer = LSTM(3, 4, seed=0)
    W = layer.params["W_h_l0"]
    layer.params.update({"dtype": {"W_h_l0": W.astype(np.float64)}, "shape": {"W_h_l0": W[:, :4].copy()},
                         "list": {"W_h_l0": W.tolist()}, "extra": {"W_h_l9": W}, "missing": {}}[fault])
    if fault == "missing":
        del layer.params["W_h_l0"]
    with pytest.raises(ValueError, match="^LSTM.forward: " + match):
        layer(np.ones((2, 1, 3), np.float32))
    model = Sequential([layer])
    with pytest.raises(ValueError, match="^LSTM.forward: " + match):
        model.predict(np.ones((1, 2, 3), np.float32))


def test_in_place_assignment_and_linear_checks():
    layer = GRU(3, 4, seed=0)
    layer.params["W_h_l0"][...] = np.float64(0.25)         # in place: NumPy casts, no check needed
    layer(np.ones((2, 1, 3), np.float32))
    head = Linear(3, 2)
    head.params["W"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"^Linear.forward: params\['W'\] has shape \(2, 3\), expected \(3, 2\)"):
        head(np.ones((1, 3), np.float32))


# ---------------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), "seed must be a non-negative int or None, got -1"),
    (dict(seed=1.5), "seed must be a non-negative int or None, got 1.5"),
    (dict(seed="1"), "seed must be a non-negative int or None, got '1'"),
    (dict(seed=True), "seed must be a non-negative int or None, got True"),
    (dict(batch_first="yes"), "batch_first must be True or False, got 'yes'"),
    (dict(batch_first=None), "batch_first must be True or False, got None"),
    (dict(stateful=1), "stateful must be True or False, got 1"),
    (dict(num_layers=0), "num_layers must be a positive int, got 0"),
    (dict(dtype="float16"), "dtype must be float32 or float64, got float16"),
    (dict(device="cuda:x"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(device="cuda:-1"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(device=0), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(kernel=1), "kernel selects a CUDA kernel version; it needs device='cuda'"),
])
def test_constructor_refusals_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        CELLS[cls](3, 4, **kwargs)
    assert str(info.value).startswith(f"{cls}: {message}"), str(info.value)


@pytest.mark.parametrize("value", ["1", float("nan"), True, None])
def test_forget_bias_must_be_a_finite_number(value):
    with pytest.raises(ValueError, match=f"^LSTM: forget_bias must be a finite number, got {value!r}"):
        LSTM(3, 4, forget_bias=value)
    assert LSTM(3, 4, forget_bias=np.float32(1.0)).forget_bias == 1.0


@pytest.mark.skipif(_gpu_usable(), reason="a usable GPU is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_devices_without_a_gpu_say_what_is_missing_from_the_constructor(device):
    with pytest.raises(RuntimeError, match=r"^LSTM: .*(CuPy|CUDA device|NVRTC)"):
        LSTM(3, 4, device=device)
    with pytest.raises(RuntimeError, match=r"^GRU.to: .*(CuPy|CUDA device|NVRTC)"):
        GRU(3, 4).to(device)


def test_cuda_n_must_be_the_current_device(monkeypatch):
    """cuda:N runs where CuPy's current device is; another N is refused with what to do."""
    import types
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 1)),
                                 ndarray=np.ndarray, asarray=np.asarray, zeros_like=np.zeros_like)
    monkeypatch.setattr(gpu, "require_cuda", lambda where="": fake)
    monkeypatch.setattr(gpu, "to_device", lambda a, device: np.asarray(a))
    assert LSTM(3, 4, device="cuda:1").device == "cuda"
    with pytest.raises(ValueError, match=r"^LSTM: device 'cuda:0' is not the current CUDA device \(1\).*"
                                         r"cupy.cuda.Device\(0\).use\(\)"):
        LSTM(3, 4, device="cuda:0")


@pytest.mark.parametrize("make, message", [
    (lambda: Linear(3, 2, seed=-1), "Linear: seed must be a non-negative int or None, got -1"),
    (lambda: Linear(3, 2, seed=2.0), "Linear: seed must be a non-negative int or None, got 2.0"),
    (lambda: Sequential([LSTM(2, 3)], seed=-1), "Sequential: seed must be a non-negative int or None"),
    (lambda: Sequential([LSTM(2, 3)], return_sequences="yes"), "Sequential: return_sequences must be True or False"),
    (lambda: Sequential([LSTM(2, 3)], stateful=1), "Sequential: stateful must be True or False, got 1"),
    (lambda: Sequential([LSTM(2, 3)], stateful=True),
     "Sequential: stateful=True but layers[0] (LSTM) has stateful=False: build the layers with stateful=True"),
    (lambda: Sequential([LSTM(2, 3, stateful=True), Linear(3, 1)], stateful=False),
     "Sequential: stateful=False but layers[0] (LSTM) has stateful=True"),
    (lambda: Sequential([LSTM(2, 3, stateful=True), GRU(3, 3)]),
     "Sequential: layers[0] has stateful=True but layers[1] has stateful=False"),
    (lambda: SGD(lr="0.1"), "SGD: lr must be a number in (0.0, inf], got '0.1'"),
    (lambda: SGD(momentum=1.0), "SGD: momentum must be a number in [0.0, 1.0), got 1.0"),
    (lambda: Adam(betas=(0.9,)), "Adam: betas must be a pair"),
    (lambda: Adam(eps=True), "Adam: eps must be a number in (0.0, inf], got True"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_other_constructors_name_the_argument(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message), str(info.value)


def test_sequential_never_changes_the_layers_it_is_given():
    layers = [LSTM(2, 3, stateful=True), GRU(3, 2, stateful=True)]
    model = Sequential(layers)
    assert model.stateful and all(a is b for a, b in zip(model.layers, layers))
    plain = LSTM(2, 3)
    assert not Sequential([plain], stateful=False).stateful and not plain.stateful


def test_predict_proba_is_the_softmax_of_predict():
    model = Sequential([LSTM(2, 4, dtype=np.float64, seed=0), Linear(4, 3, dtype=np.float64, seed=1)], seed=0)
    x = np.random.default_rng(0).normal(size=(5, 6, 2))
    with pytest.raises(ValueError, match="^Sequential.predict_proba: needs a model compiled with loss='cross_entropy'"):
        model.predict_proba(x)
    model.compile("cross_entropy")
    logits, p = model.predict(x), model.predict_proba(x)
    assert p.shape == (5, 3) and np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-15, atol=0)
    assert (p.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_validation_data_errors_name_validation_data():
    model = Sequential([LSTM(2, 3, dtype=np.float64, seed=0), Linear(3, 1, dtype=np.float64)], seed=0).compile("mse")
    x, y = np.ones((4, 3, 2)), np.ones((4, 1))
    for val, match in [((np.ones((4, 3, 5)), y), r"validation_data\[0\] has 5 features, expected 2"),
                       ((x, np.ones((3, 1))), r"validation_data\[0\] has 4 rows but validation_data\[1\] has 3 rows"),
                       ((x, np.ones((4, 2))), r"validation_data\[1\] has shape \(4, 2\), expected \(4, 1\)"),
                       ((x, y, np.ones((4, 3))), r"validation_data\[2\] must be booleans")]:
        with pytest.raises(ValueError, match=r"^Sequential.fit: " + match):
            model.fit(x, y, validation_data=val, progress=False)


def test_public_api_is_documented_and_typed():
    import inspect
    import pydoc
    assert "T steps of one LSTM layer" not in pydoc.render_doc(LSTM)      # sequence.py's docstring stays out
    for name in ("LSTM", "GRU", "Linear", "Sequential", "SGD", "Adam"):
        cls = getattr(npylstm, name)
        assert cls.__doc__ and "(" in cls.__doc__, name
        for meth_name, meth in inspect.getmembers(cls, inspect.isfunction):
            if not meth_name.startswith("_") or meth_name in ("__call__", "__init__"):
                if meth_name != "__init__":
                    assert meth.__doc__, f"{name}.{meth_name} has no docstring"
                assert inspect.signature(meth).return_annotation is not inspect.Signature.empty \
                    or meth_name == "__init__", f"{name}.{meth_name} has no return annotation"
    for fn in (npylstm.from_torch, npylstm.from_keras, npylstm.to_keras, npylstm.to_torch_state_dict,
               npylstm.make_windows, npylstm.pad_sequences, npylstm.load, npylstm.clip_grad_norm):
        assert fn.__doc__ and inspect.signature(fn).return_annotation is not inspect.Signature.empty, fn.__name__
    import pathlib
    assert (pathlib.Path(npylstm.__file__).parent / "py.typed").exists()
    toml = (pathlib.Path(npylstm.__file__).parent.parent / "pyproject.toml").read_text()
    assert '"npylstm" = ["py.typed"]' in toml


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_usable(), reason="no usable CUDA device (cupy.is_available() is False)")
@pytest.mark.parametrize("cls", CELLS)
def test_cuda_layers_state_dict_pickle_and_interop_on_a_gpu(cls):
    """On a GPU: cuda:0, state_dict (host copies), load_state_dict into CuPy arrays, pickle back onto the
    GPU, to_keras from device arrays, and a parameter replaced by a host array refused at forward."""
    import cupy
    cpu = CELLS[cls](3, 4, num_layers=2, dtype=np.float64, seed=0, stateful=True)
    dev = CELLS[cls](3, 4, num_layers=2, dtype=np.float64, seed=1, stateful=True,
                     device=f"cuda:{cupy.cuda.runtime.getDevice()}")
    dev.load_state_dict(cpu.state_dict())
    assert all(isinstance(v, cupy.ndarray) for v in dev.params.values())
    sd = dev.state_dict()
    assert all(type(v) is np.ndarray and np.array_equal(v, cpu.params[k]) for k, v in sd.items())
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    dev(x)
    back = pickle.loads(pickle.dumps(dev))
    assert back.device == "cuda" and all(isinstance(v, cupy.ndarray) for v in back.params.values())
    for a, b in zip(states_of(dev), states_of(back)):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
    (y1, _), (y2, _) = dev(x), back(x)
    assert np.array_equal(cupy.asnumpy(y1), cupy.asnumpy(y2))
    single = CELLS[cls](3, 4, dtype=np.float64, seed=0, device="cuda")
    assert all(type(a) is np.ndarray for a in single.to_keras())
    single.params["W_h_l0"] = cupy.asnumpy(single.params["W_h_l0"])
    with pytest.raises(ValueError, match=rf"^{cls}.forward: params\['W_h_l0'\] is a numpy.ndarray, expected a cupy"):
        single(x)
