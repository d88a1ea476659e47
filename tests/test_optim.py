"""SGD, Adam and clip_grad_norm against torch.optim and torch.nn.utils (float64), and state_dict round trips."""

import numpy as np
import pytest
import torch

from npylstm import SGD, Adam, clip_grad_norm

TORCH_RTOL = 1e-10   # float64 on both sides; the update formulas are the same, only the operation order may differ

OPTIMIZERS = [
    (lambda: SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (lambda: Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: Adam(lr=0.003, betas=(0.8, 0.99), eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=0.003, betas=(0.8, 0.99), eps=1e-6)),
]


def _problem(seed):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    grads_seq = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(6)]
    return params, grads_seq


@pytest.mark.parametrize("make_ours, make_torch", OPTIMIZERS)
def test_optimizer_matches_torch(make_ours, make_torch):
    params, grads_seq = _problem(0)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = make_torch(list(tp.values()))
    ours = make_ours()
    for grads in grads_seq:
        ours.step(params, {k: g.copy() for k, g in grads.items()})
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
    for k in params:
        np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=TORCH_RTOL, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("make_ours, _", OPTIMIZERS)
def test_state_dict_resume_is_bit_exact(make_ours, _):
    params_a, grads_seq = _problem(1)
    params_b = {k: v.copy() for k, v in params_a.items()}
    a = make_ours()
    for g in grads_seq:
        a.step(params_a, g)
    b = make_ours()
    for g in grads_seq[:3]:
        b.step(params_b, g)
    c = make_ours()                      # a fresh optimizer continues from b's state
    c.load_state_dict(b.state_dict())
    for g in grads_seq[3:]:
        c.step(params_b, g)
    for k in params_a:
        assert np.array_equal(params_a[k], params_b[k]), k


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(2)
    grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    total_after = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    assert total_after <= max_norm * (1 + 1e-12)
    for t, g in zip(tensors, grads.values()):
        # torch scales by max_norm / (norm + 1e-6); we scale by max_norm / norm (exactly max_norm after)
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5)


def test_float32_params_stay_float32():
    p = {"W": np.ones((2, 2), np.float32)}
    for opt in (SGD(lr=0.1, momentum=0.5), Adam()):
        opt.step(p, {"W": np.full((2, 2), 0.5, np.float32)})
        assert p["W"].dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    (lambda: SGD(lr=0), "SGD: lr"),
    (lambda: SGD(momentum=1.0), "momentum"),
    (lambda: Adam(betas=(0.9,)), "betas"),
    (lambda: Adam(eps=float("nan")), "eps"),
    (lambda: clip_grad_norm({}, -1.0), "max_norm"),
    (lambda: Adam().step({"W": np.ones(2)}, {"V": np.ones(2)}), "same keys"),
    (lambda: Adam().step({"W": np.ones(2)}, {"W": np.ones(3)}), r"grads\['W'\] has shape"),
    (lambda: Adam().load_state_dict(SGD().state_dict()), "expected a Adam state_dict"),
    (lambda: SGD().load_state_dict({"type": "SGD", "lr": 0.1}), "lacks"),
])
def test_optimizer_misuse(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_bad_state_dict_leaves_optimizer_unchanged():
    params, grads_seq = _problem(3)
    opt = Adam(lr=0.01)
    opt.step(params, grads_seq[0])
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["buffers"]["v"].pop("W")
    with pytest.raises(ValueError, match="different parameter keys"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["t"] == before["t"] and after["lr"] == before["lr"]
    for b in ("m", "v"):
        for k in before["buffers"][b]:
            assert np.array_equal(after["buffers"][b][k], before["buffers"][b][k])
