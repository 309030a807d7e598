"""L1/L2/Elastic-Net penalties: analytic gradients, PenalizedTask, and sklearn's ElasticNet."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import ElasticNet, LinearRegression
from torch import nn

from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import ConfigError
from bigtrain.optim import (
    OptimConfig,
    PenalizedTask,
    ScheduleConfig,
    build_optimizer,
    build_schedule,
    penalty_params,
)
from bigtrain.optim.regularization import l1_penalty, l2_penalty, penalty


class MSETask(Task):
    monitor = "val/mse"
    monitor_mode = "min"

    def loss(self, model, batch):
        x, y = batch
        pred = model(x).squeeze(-1)
        return StepOutput(((pred - y) ** 2).mean(), len(y), pred, y, {"inner": 1.0})

    def metrics(self, light=False):
        return "inner-metrics"

    def predict(self, model, x):
        return model(x) * 0 + 7

    def check_batch(self, model, batch):
        raise ValueError("inner check_batch")


def nonzero_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    for p in ps:
        p[p.abs() < 1e-3] = 0.5  # sign() is undefined at 0
        p.requires_grad_(True)
    return ps


@pytest.mark.parametrize(("l1", "l2"), [(0.3, 0.0), (0.0, 0.7), (0.3, 0.7)])
def test_penalty_gradient_is_analytic(l1, l2):
    params = nonzero_params()
    pen = penalty(params, l1=l1, l2=l2)
    pen.backward()
    for p in params:
        torch.testing.assert_close(p.grad, l1 * torch.sign(p) + 2 * l2 * p.detach())
    expected = sum(l1 * p.abs().sum() + l2 * (p**2).sum() for p in params)
    torch.testing.assert_close(pen, expected.detach())


def test_l1_l2_values_and_empty():
    p = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert l1_penalty([p]).item() == 6.0
    assert l2_penalty([p]).item() == 14.0
    assert penalty([], 1.0, 1.0).item() == 0.0


def test_penalty_params_filters_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    model[2].weight.requires_grad_(False)
    assert penalty_params(model, "weights") == [model[0].weight]
    assert len(penalty_params(model, "all")) == 5
    with pytest.raises(ConfigError, match="regularization.apply_to 'bias'"):
        penalty_params(model, "bias")


def test_penalized_task_adds_penalty_and_delegates():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8)
    inner = MSETask()
    task = PenalizedTask(inner, penalty_params(model), l1=0.1, l2=0.2)
    out = task.loss(model, (x, y))
    base = inner.loss(model, (x, y)).loss
    pen = 0.1 * model.weight.abs().sum() + 0.2 * (model.weight**2).sum()
    torch.testing.assert_close(out.loss, base + pen)
    torch.testing.assert_close(out.extras["penalty"], pen.detach())
    assert out.extras["inner"] == 1.0 and out.n == 8 and out.preds is not None
    assert task.monitor == "val/mse" and task.metrics() == "inner-metrics"
    assert task.predict(model, x).unique().tolist() == [7.0]
    with pytest.raises(ValueError, match="inner check_batch"):
        task.check_batch(model, (x, y))

    # forward_backward: one backward of (loss + penalty) * scale
    model.zero_grad()
    out = task.forward_backward(model, (x, y), 0.5, lambda loss: loss.backward())
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ((base + pen) * 0.5).backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    torch.testing.assert_close(out.loss, (base + pen).detach())


def linear_regression_data():
    """100 examples, 8 features of which only the first 3 matter, plus noise and an intercept."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=g, dtype=torch.float64)
    w_true = torch.tensor([2.0, -1.5, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    y = x @ w_true + 0.5 + 0.5 * torch.randn(100, generator=g, dtype=torch.float64)
    return x, y


def fit(x, y, l1: float, l2: float, steps: int = 600, lr: float = 0.1) -> nn.Linear:
    """Full-batch Adam with a linearly decaying LR on the penalised MSE."""
    torch.manual_seed(0)
    model = nn.Linear(8, 1).double()
    task = PenalizedTask(MSETask(), penalty_params(model, "weights"), l1=l1, l2=l2)
    opt = build_optimizer(model, OptimConfig(name="adam", lr=lr))
    sched = build_schedule(ScheduleConfig(name="linear"), lr, steps)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = sched(step) * group["lr_scale"]
        opt.zero_grad()
        task.forward_backward(model, (x, y), 1.0, lambda loss: loss.backward())
        opt.step()
    return model


def test_elastic_net_matches_sklearn_and_zeroes_useless_features():
    x, y = linear_regression_data()
    l1, l2 = 0.2, 0.05
    w = fit(x, y, l1, l2).weight.detach().squeeze(0).numpy()
    # ours: mean sq. err + l1|w| + l2 w^2 = 2 * sklearn's 1/(2n)|r|^2 + a*r|w| + a(1-r)/2 w^2
    alpha = l1 / 2 + l2
    ref = ElasticNet(alpha=alpha, l1_ratio=(l1 / 2) / alpha, tol=1e-12, max_iter=100_000)
    ref.fit(x.numpy(), y.numpy())
    assert (ref.coef_[3:] == 0).all()  # the oracle itself drops the useless features
    assert abs(w - ref.coef_).max() < 2e-3
    assert abs(w[3:]).max() < 1e-3  # "exactly-ish" zero

    w_ols = fit(x, y, 0.0, 0.0).weight.detach().squeeze(0).numpy()
    ols = LinearRegression().fit(x.numpy(), y.numpy())
    assert abs(w_ols - ols.coef_).max() < 1e-4
    assert abs(w_ols[3:]).max() > 0.05  # without the penalty noise leaks into useless weights


def test_negative_coefficients_are_config_errors():
    with pytest.raises(ConfigError, match="must be >= 0"):
        PenalizedTask(MSETask(), [], l1=-1.0)
