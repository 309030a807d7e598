"""Dynamic batch from the gradient noise scale: the estimator against known covariances, the
callback's measurements against autograd, its growth rule, the LR rules, bitwise resume, the
one-line config errors and the report figure."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bigtrain.callbacks.checkpointing import Checkpointer
from bigtrain.callbacks.noise_scale import (
    DynamicBatch,
    DynamicBatchConfig,
    NoiseScaleEMA,
    next_accumulation,
    noise_estimates,
)
from bigtrain.core.callback import Callback
from bigtrain.core.loop import Trainer
from bigtrain.core.task import StepOutput, Task
from bigtrain.data import InMemoryLoader
from bigtrain.errors import ConfigError
from bigtrain.report import figures
from bigtrain.run import build_run

QUIET = ["trainer.tensorboard=false", "trainer.progress=false"]


# ---------------------------------------------------------------------- the estimator
def test_estimates_invert_the_expected_norms_exactly():
    g2, trace = 3.0, 50.0
    for b_small, b_big in ((4, 16), (1, 2), (6, 96)):
        # E|G_B|^2 = |G|^2 + tr(Sigma) / B
        est = noise_estimates(g2 + trace / b_small, g2 + trace / b_big, b_small, b_big)
        assert est == pytest.approx((g2, trace), rel=1e-12)
    with pytest.raises(ValueError):
        noise_estimates(1.0, 1.0, 8, 8)


def test_ema_of_estimates_converges_to_the_true_noise_scale():
    """Per-example gradients G + noise with a known diagonal covariance: B_simple is known."""
    gen = torch.Generator().manual_seed(0)
    d, steps, b_small, b_big = 64, 3000, 8, 32
    G = torch.randn(d, generator=gen, dtype=torch.float64)
    var = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    var *= 40.0 * G.square().sum() / var.sum()  # tr(Sigma) / |G|^2 = 40
    truth = float(var.sum() / G.square().sum())
    assert truth == pytest.approx(40.0)
    per_example = G + var.sqrt() * torch.randn(steps, b_big, d, generator=gen, dtype=torch.float64)
    sq_small = per_example[:, :b_small].mean(1).square().sum(-1)  # (steps,)
    sq_big = per_example.mean(1).square().sum(-1)
    ema, plain = NoiseScaleEMA(beta=0.99), []
    for s, b in zip(sq_small.tolist(), sq_big.tolist()):
        g2, trace = noise_estimates(s, b, b_small, b_big)
        ema.update(g2, trace)
        plain.append((g2, trace))
    assert ema.value == pytest.approx(truth, rel=0.1)
    # averaged over the whole run (numerator and denominator apart), much closer
    mean_g2 = sum(g for g, _ in plain) / steps
    mean_trace = sum(t for _, t in plain) / steps
    assert mean_trace / mean_g2 == pytest.approx(truth, rel=0.03)
    # one step's estimate is far noisier: the reason for averaging before dividing
    ratios = [t / g for g, t in plain[:200]]
    assert max(ratios) / min(ratios) > 3 or min(ratios) < 0


def test_ema_value_is_none_until_both_averages_are_positive():
    ema = NoiseScaleEMA(beta=0.5)
    assert ema.value is None
    ema.update(-1.0, 10.0)
    assert ema.value is None
    ema.update(5.0, 10.0)  # g2 = 0.25*(-1) + 0.5*5 = 2.0 (times 1 - 0.5 each)
    assert ema.value == pytest.approx(ema.trace / ema.g2) and ema.value > 0


def test_growth_rule():
    kw = dict(fraction=1.0, max_growth=2.0, max_accum=16)
    assert next_accumulation(2, 8, 15.0, **kw) == 2  # below the batch (16): no change
    assert next_accumulation(2, 8, 23.9, **kw) == 2  # not a whole micro-batch more
    assert next_accumulation(2, 8, 24.0, **kw) == 3
    assert next_accumulation(2, 8, 1000.0, **kw) == 4  # at most doubling
    assert next_accumulation(12, 8, 1000.0, **kw) == 16  # at most max_accum
    assert next_accumulation(3, 8, 1000.0, **{**kw, "max_growth": 1.1}) == 4  # >= one more
    assert next_accumulation(2, 8, 12.0, **{**kw, "fraction": 2.0}) == 3  # target 24
    assert next_accumulation(16, 8, 1000.0, **kw) == 16


# ---------------------------------------------------------------------- the callback
class MSE(Task):
    def loss(self, model, batch):
        x, y = batch
        return StepOutput((model(x).squeeze(-1) - y).square().mean(), len(y))


class Spy(Callback):
    """Records each step's batch and weights before it, and the LR each step used."""

    def __init__(self):
        self.batches, self.lrs = [], []

    def on_batch_start(self, state):
        w = state.model.weight.detach().clone()
        self.batches.append((w, state.batch))

    def on_after_step(self, state):
        self.lrs.append([g["lr"] for g in state.optimizer.param_groups])


def regression(noise: float, n=4096, d=16, seed=0):
    """Random-sign inputs x, y = noise * (a random sign); a weight v with |v| = 1 away from the
    optimum 0. Per-example gradients 2(x.v - y)x: B_simple = (d - 1) + noise^2 d in
    expectation (signs, not Gaussians: their light tails keep the estimates' variance low)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, d), generator=gen).float() * 2 - 1
    y = noise * (torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.ones(1, d) / math.sqrt(d))
    return x, y, model


def true_noise_scale(model, x, y) -> float:
    """tr(Cov) / |mean|^2 of the data set's exact per-example gradients."""
    w = model.weight.detach().double().reshape(-1)
    r = x.double() @ w - y.double()
    g = 2 * r[:, None] * x.double()  # (n, d): the gradient of (x.w - y)^2
    mean = g.mean(0)
    return float(((g - mean).square().sum(1).mean()) / mean.square().sum())


def fit(x, y, model, cfg, *, batch=32, accum=2, steps=300, lr=0.0, schedule=None, groups=None):
    opt = torch.optim.SGD(groups or model.parameters(), lr=lr)
    loader = InMemoryLoader(x, y, batch, shuffle=True, seed=1)
    spy, dyn = Spy(), DynamicBatch(cfg)
    trainer = Trainer(
        model, MSE(), opt, loader, schedule=schedule, max_steps=steps, grad_accum=accum,
        callbacks={"spy": spy, "dynamic_batch": dyn},
    )  # fmt: skip
    trainer.fit()
    return trainer, dyn, spy


def test_measures_the_first_micro_batch_and_the_whole_batch():
    """The callback's EMAs equal the estimator fed with autograd's gradients of each step's
    first micro-batch and whole batch (uneven micro-batches included)."""
    x, y, model = regression(noise=1.0, n=200)
    cfg = DynamicBatchConfig(max_batch_size=30, ema_beta=0.9)
    _, dyn, spy = fit(x, y, model, cfg, batch=30, accum=3, steps=12, lr=0.05)
    ema = NoiseScaleEMA(beta=0.9)
    for w, (xb, yb) in spy.batches:
        w = w.double().requires_grad_(True)

        def sq_norm(xs, ys, w=w):
            (grad,) = torch.autograd.grad(
                (xs.double() @ w.T).squeeze(-1).sub(ys).square().mean(), w
            )
            return float(grad.square().sum())

        n_small = round(len(yb) / 3)  # split_batch's first part
        small, big = sq_norm(xb[:n_small], yb[:n_small]), sq_norm(xb, yb)
        ema.update(*noise_estimates(small, big, n_small, len(yb)))
    assert len(spy.batches) == 12 and any(len(b[1][1]) < 30 for b in spy.batches)  # epoch end
    assert dyn.ema.count == 12
    assert dyn.ema.g2 == pytest.approx(ema.g2, rel=1e-5)
    assert dyn.ema.trace == pytest.approx(ema.trace, rel=1e-5)


def test_grows_toward_a_noise_scale_above_the_batch():
    x, y, model = regression(noise=2.5)
    truth = true_noise_scale(model, x, y)  # the data set's own; ~ 15 + 2.5^2 * 16 = 115
    assert 80 < truth < 130
    cfg = DynamicBatchConfig(max_batch_size=256, warmup_steps=100, adapt_every=50)
    trainer, dyn, _ = fit(x, y, model, cfg, steps=400)  # lr 0: the noise scale stays put
    assert dyn.ema.value == pytest.approx(truth, rel=0.25)
    # 2 micro-batches of 16 -> 4 (the doubling cap) -> toward B_simple, never far beyond it
    assert 5 <= dyn.accum == trainer.grad_accum and 16 * dyn.accum <= 1.25 * truth
    assert trainer.state.train_data.batch_size == trainer.state.batch_size == 16 * dyn.accum
    assert dyn.lr_multiplier == 1.0  # lr_scaling: none


def test_keeps_the_batch_when_the_noise_scale_is_below_it():
    x, y, model = regression(noise=0.0)
    truth = true_noise_scale(model, x, y)  # d - 1 = 15 for random signs
    assert 13 < truth < 17
    cfg = DynamicBatchConfig(max_batch_size=256, warmup_steps=20, adapt_every=10)
    trainer, dyn, _ = fit(x, y, model, cfg, steps=200)
    assert dyn.ema.value == pytest.approx(truth, rel=0.35) and dyn.ema.value < 24
    assert dyn.accum == trainer.grad_accum == 2
    assert trainer.state.train_data.batch_size == 32


@pytest.mark.parametrize("rule", ["none", "linear", "sqrt"])
@pytest.mark.parametrize("schedule", ["constant", "changing", "absent"])
def test_lr_rule_is_applied_exactly(rule, schedule):
    """Batches 32 -> 64 -> 128 -> 256 (a huge fraction forces growth); every step's LR is the
    schedule's times the group's own lr_scale times the rule's multiplier, bit for bit."""
    x, y, model = regression(noise=5.0)
    extra = nn.Parameter(torch.zeros(3))  # a second group with its own lr_scale
    groups = [
        {"params": list(model.parameters()), "lr_scale": 1.0},
        {"params": [extra], "lr_scale": 0.5},
    ]
    sched = {"constant": lambda s: 1e-3, "changing": lambda s: 1e-3 * (s + 1) / 40, "absent": None}
    cfg = DynamicBatchConfig(
        max_batch_size=256, warmup_steps=5, adapt_every=5, fraction=100.0, lr_scaling=rule
    )
    _, dyn, spy = fit(x, y, model, cfg, steps=30, lr=2e-3, schedule=sched[schedule], groups=groups)
    assert dyn.batch_size == 256
    mult = {"none": lambda b: 1.0, "linear": lambda b: b / 32, "sqrt": lambda b: math.sqrt(b / 32)}
    for step, used in enumerate(spy.lrs):
        batch = 32 * 2 ** min(step // 5, 3)  # grown after steps 5, 10, 15
        m = mult[rule](batch)
        if schedule == "absent":
            assert used == [2e-3 * m, 2e-3 * m]
        else:
            lr = sched[schedule](step)
            assert used == [lr * (1.0 * m), lr * (0.5 * m)], step
    assert dyn.lr_multiplier == mult[rule](256)


# ---------------------------------------------------------------------- resume
TIMING = {"time", "examples_per_s", "tokens_per_s", "mfu"}
DIGITS = [
    "trainer.max_epochs=null", "trainer.max_steps=40", "data.batch_size=32",
    "trainer.grad_accum=2", "trainer.checkpoint_every=8", "trainer.log_every=2",
    "model.dropout=0.2", "dynamic_batch.max_batch_size=256", "dynamic_batch.warmup_steps=4",
    "dynamic_batch.adapt_every=4", "dynamic_batch.max_growth=1.5", "dynamic_batch.fraction=8",
    "dynamic_batch.ema_beta=0.9", "dynamic_batch.lr_scaling=linear", *QUIET,
]  # fmt: skip


class Crash(Exception):
    pass


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def final_weights(run_dir):
    latest = (run_dir / "checkpoints/latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "model.safetensors"))


def test_resume_mid_run_is_bitwise(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # rendering a report costs seconds: only b's is checked
        m.setattr("bigtrain.report.write_report", lambda run_dir: run_dir / "report.html")
        summary_a = build_run("digits-mlp", DIGITS, run_dir=tmp_path / "a", quiet=True).fit()
    real_save = Checkpointer.save

    def save(self, state):
        real_save(self, state)
        if state.step == 16:
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(Crash):
            build_run("digits-mlp", DIGITS, run_dir=tmp_path / "b", quiet=True).fit()
    saved = json.loads((tmp_path / "b/checkpoints/step-0000016/trainer.json").read_text())
    saved = saved["state"]["callbacks"]["dynamic_batch"]
    torch.manual_seed(1234)  # a new process: other global RNG state
    resumed = build_run("digits-mlp", DIGITS, run_dir=tmp_path / "b", resume=True, quiet=True)
    summary_b = resumed.fit()
    final = resumed.trainer.callbacks.named["dynamic_batch"]
    assert 2 < saved["accum"] < final.accum  # it grew before the crash and after it
    assert saved["lr_multiplier"] == saved["accum"] / 2
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = records(tmp_path / "a"), records(tmp_path / "b")
    assert ra == rb
    train = [r for r in ra if r["kind"] == "train"]
    assert all("noise_scale" in r and "batch_size" in r for r in train)
    assert train[-1]["batch_size"] == 16 * final.accum
    assert summary_a["steps"] == summary_b["steps"] == 40
    # the report plots what was logged
    html = (tmp_path / "b/report.html").read_text()
    assert 'id="fig-noise-scale"' in html and "Final batch size" in html


# ---------------------------------------------------------------------- config errors
IRIS = ["trainer.max_epochs=null", "trainer.max_steps=5", "data.batch_size=16", *QUIET]
OK = [*IRIS, "trainer.grad_accum=2", "dynamic_batch.max_batch_size=64"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["trainer.max_epochs=3"], "needs trainer.max_steps and no trainer.max_epochs"),
        (["trainer.grad_accum=1"], r"needs trainer.grad_accum >= 2, got 1"),
        (["trainer.grad_accum=3"], "not a multiple of trainer.grad_accum"),
        (["trainer.precision=fp16"], "does not support trainer.precision fp16"),
        (["dynamic_batch.max_batch_size=8"], r"max_batch_size \(8\) is below data.batch_size"),
        (
            ["batch_size_schedule.start=16"],
            "dynamic_batch and batch_size_schedule both set the batch size",
        ),
        (["dynamic_batch.max_batch=64"], "unknown key 'dynamic_batch.max_batch'"),
        (["dynamic_batch.lr_scaling=cubic"], "dynamic_batch.lr_scaling"),
        (["dynamic_batch.max_growth=1"], "dynamic_batch.max_growth"),
        (["dynamic_batch.ema_beta=1"], "dynamic_batch.ema_beta"),
    ],
)
def test_config_errors_are_one_line(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_run("iris-mlp", [*OK, *extra], run_dir=tmp_path / "r", quiet=True)
    assert "\n" not in str(e.value)


def test_missing_max_batch_size_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'dynamic_batch.max_batch_size'"):
        build_run("iris-mlp", [*IRIS, "dynamic_batch.adapt_every=5"], run_dir=tmp_path / "r")


def test_api_runs_are_checked_at_setup():
    x, y, model = regression(noise=1.0, n=64)
    cfg = DynamicBatchConfig(max_batch_size=64)
    with pytest.raises(ConfigError, match="needs trainer.grad_accum >= 2"):
        fit(x, y, model, cfg, accum=1, steps=2)


# ---------------------------------------------------------------------- the report
def test_noise_scale_figure_only_when_logged():
    plain = [{"kind": "train", "step": s, "loss": 1.0} for s in range(1, 5)]
    assert figures.noise_scale_figure(plain) is None
    logged = [
        {"kind": "train", "step": s, "loss": 1.0, "noise_scale": 10.0 * s, "batch_size": 16}
        for s in range(1, 5)
    ]
    fig = figures.noise_scale_figure(logged)
    assert fig is not None
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["noise scale B_simple (EMA)", "global batch size"]
