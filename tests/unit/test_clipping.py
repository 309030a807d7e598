"""Gradient clipping in the loop, measured on the gradients the optimizer actually receives.

The loop clips after AFTER_BACKWARD and before ``optimizer.step()``: a callback records the
gradients before clipping, an SGD subclass records them inside ``step()``, after clipping.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.core.callback import Callback
from bigtrain.core.loop import Trainer
from bigtrain.core.task import StepOutput, Task
from bigtrain.data import InMemoryLoader

STEPS = 4


def total_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.cat([g.flatten() for g in grads]).double().norm())


class MSE(Task):
    def loss(self, model, batch):
        x, y = batch
        return StepOutput(F.mse_loss(model(x), y), len(y))


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it is asked to apply (the post-clip ones)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


class PreClip(Callback):
    """The gradients as the backward pass left them, before the loop clips them."""

    def __init__(self) -> None:
        self.seen: list[list[torch.Tensor]] = []
        self.reported: list[float | None] = []

    def on_after_backward(self, state) -> None:
        self.seen.append([p.grad.clone() for p in state.model.parameters()])

    def on_after_step(self, state) -> None:
        norm = state.grad_norm
        self.reported.append(None if norm is None else float(norm))


def run(**clip) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], list]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = 3.0 * torch.randn(64, 2, generator=g)  # large targets: gradient norms well above 1
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = RecordingSGD(model.parameters(), lr=0.05)
    pre = PreClip()
    loader = InMemoryLoader(x, y, 16, shuffle=True, seed=0)
    Trainer(model, MSE(), opt, loader, max_steps=STEPS, callbacks=[pre], **clip).fit()
    assert len(pre.seen) == len(opt.seen) == STEPS
    return pre.seen, opt.seen, pre.reported


@pytest.mark.parametrize("max_norm", [0.05, 0.5, 1e3])
def test_clip_grad_norm_leaves_total_norm_at_min_of_max_norm_and_raw_norm(max_norm):
    before, after, reported = run(clip_grad_norm=max_norm)
    for raw, clipped, norm in zip(before, after, reported):
        raw_norm = total_norm(raw)
        assert 1.0 < raw_norm < 100  # so 0.05 and 0.5 clip and 1e3 does not
        assert norm == pytest.approx(raw_norm, rel=1e-5)  # state.grad_norm: the pre-clip norm
        assert total_norm(clipped) == pytest.approx(min(max_norm, raw_norm), rel=1e-5)
        scale = min(1.0, max_norm / raw_norm)  # one factor for every tensor: direction is kept
        for a, b in zip(raw, clipped):
            torch.testing.assert_close(b, a * scale, rtol=1e-5, atol=1e-8)


def test_clip_grad_value_bounds_every_element_and_keeps_the_small_ones():
    limit = 0.1
    before, after, _ = run(clip_grad_value=limit)
    for raw, clipped in zip(before, after):
        raw_all, clipped_all = (
            torch.cat([g.flatten() for g in raw]),
            torch.cat([g.flatten() for g in clipped]),
        )
        big = raw_all.abs() > limit
        assert big.any() and (~big).any()  # both kinds present, so the check can fail
        assert clipped_all.abs().max() <= limit
        assert torch.equal(clipped_all[~big], raw_all[~big])
        assert torch.equal(clipped_all[big], limit * raw_all[big].sign())


def test_without_clipping_the_optimizer_gets_the_raw_gradients():
    before, after, reported = run()
    assert reported == [None] * STEPS
    assert total_norm(before[0]) > 1.0  # a clip at 1 would have shown
    for raw, seen in zip(before, after):
        assert all(torch.equal(a, b) for a, b in zip(raw, seen))
