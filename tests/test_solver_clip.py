"""hieradet.solver.clip_gradient_norm and ``train.clip_grad_norm`` in do_train."""

import math

import pytest
import torch

from hieradet.solver import clip_gradient_norm


def _model_with_grads(scale: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    (model(torch.randn(16, 4)).sum() * scale).backward()
    return model


def _total_norm(model):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def test_step_clips_the_total_norm_then_updates():
    model = _model_with_grads(100.0)
    before = [p.detach().clone() for p in model.parameters()]
    raw = _total_norm(model)
    assert raw > 10
    opt = clip_gradient_norm(torch.optim.SGD(model.parameters(), lr=1.0), max_norm=0.5)
    opt.step()
    assert opt.last_grad_norm == pytest.approx(raw, rel=1e-5)  # the norm before clipping is reported
    assert _total_norm(model) == pytest.approx(0.5, rel=1e-4)
    # SGD with lr 1 moves every parameter by exactly its (clipped) gradient
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(b - p.detach(), p.grad)


def test_small_gradients_are_left_alone():
    model = _model_with_grads(1e-3)
    grads = [p.grad.clone() for p in model.parameters()]
    clip_gradient_norm(torch.optim.SGD(model.parameters(), lr=0.1), max_norm=10.0).step()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


def test_state_dict_is_the_plain_optimizers():
    model = _model_with_grads(1.0)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped = clip_gradient_norm(torch.optim.AdamW(model.parameters(), lr=1e-3), max_norm=1.0)
    wrapped.step()
    plain.load_state_dict(wrapped.state_dict())  # a checkpoint of the clipped optimizer loads into a plain one
    assert plain.state_dict()["state"].keys() == wrapped.state_dict()["state"].keys()


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, float("nan"), "1"])
def test_bad_max_norm_is_refused(bad):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_norm"):
        clip_gradient_norm(opt, bad)


def test_clipping_twice_is_refused():
    opt = clip_gradient_norm(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), 1.0)
    with pytest.raises(ValueError, match="already clips"):
        clip_gradient_norm(opt, 2.0)


def test_works_under_an_lr_scheduler():
    model = _model_with_grads(100.0)
    opt = clip_gradient_norm(torch.optim.SGD(model.parameters(), lr=1.0), max_norm=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    assert _total_norm(model) == pytest.approx(0.5, rel=1e-4)
