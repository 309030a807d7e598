"""LR schedules against torch.optim.lr_scheduler and hand-computed values; batch-size ramps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler as torch_sched

from bigtrain.errors import ConfigError
from bigtrain.optim import (
    SCHEDULES,
    BatchSizeScheduleConfig,
    ScheduleConfig,
    build_batch_size_schedule,
    build_schedule,
)

BASE = 0.1


def torch_lrs(make_scheduler, steps: int) -> list[float]:
    """The LR a dummy optimizer uses at each step 0..steps-1 under a torch scheduler."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(
    ("cfg", "make_torch"),
    [
        (
            ScheduleConfig(name="step", step_size=7, gamma=0.5),
            lambda o: torch_sched.StepLR(o, step_size=7, gamma=0.5),
        ),
        (
            ScheduleConfig(name="multistep", milestones=(3, 10, 11), gamma=0.3),
            lambda o: torch_sched.MultiStepLR(o, milestones=[3, 10, 11], gamma=0.3),
        ),
        (
            ScheduleConfig(name="exponential", gamma=0.9),
            lambda o: torch_sched.ExponentialLR(o, gamma=0.9),
        ),
        (
            ScheduleConfig(name="linear", min_lr=0.01),
            lambda o: torch_sched.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30),
        ),
        (
            ScheduleConfig(name="one_cycle"),
            lambda o: torch_sched.OneCycleLR(o, max_lr=BASE, total_steps=30, cycle_momentum=False),
        ),
        (
            ScheduleConfig(
                name="one_cycle",
                pct_start=0.4,
                div_factor=10,
                final_div_factor=100,
                anneal_strategy="linear",
            ),
            lambda o: torch_sched.OneCycleLR(
                o,
                max_lr=BASE,
                total_steps=30,
                pct_start=0.4,
                div_factor=10,
                final_div_factor=100,
                anneal_strategy="linear",
                cycle_momentum=False,
            ),
        ),
    ],
    ids=["step", "multistep", "exponential", "linear", "one_cycle", "one_cycle_linear"],
)
def test_schedules_match_torch(cfg, make_torch):
    steps = 30  # OneCycleLR cannot go past total_steps
    ours = build_schedule(cfg, BASE, total_steps=steps)
    expected = torch_lrs(make_torch, steps)
    assert [ours(s) for s in range(steps)] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert len(set(expected)) > 2  # the schedule really changes the LR


def test_warmup_cosine_hand_values():
    sched = build_schedule(
        ScheduleConfig(name="warmup_cosine", warmup_steps=10, min_lr=0.1), 1.0, total_steps=110
    )
    assert sched(0) == pytest.approx(1 / 11)  # nanoGPT: lr * (it + 1) / (warmup + 1)
    assert sched(9) == pytest.approx(10 / 11)
    assert sched(10) == pytest.approx(1.0)  # peak right after warmup
    assert sched(60) == pytest.approx(0.55)  # half way down: min + 0.5 * (base - min)
    assert sched(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert sched(110) == pytest.approx(0.1) and sched(500) == pytest.approx(0.1)
    lrs = [sched(s) for s in range(111)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # strictly up during warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never up afterwards


def test_wsd_warms_up_holds_then_decays():
    sched = build_schedule(
        ScheduleConfig(name="wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1),
        2.0,
        total_steps=100,
    )
    assert sched(0) == pytest.approx(2.0 / 11)
    assert [sched(s) for s in range(10, 81)] == [2.0] * 71  # stable phase, decay starts at 80
    assert sched(90) == pytest.approx(1.1)  # half way from 2.0 to 0.2
    assert sched(100) == pytest.approx(0.2) and sched(1000) == pytest.approx(0.2)
    lrs = [sched(s) for s in range(80, 101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_linear_with_warmup_and_constant_with_warmup():
    lin = build_schedule(ScheduleConfig(name="linear", warmup_steps=4), 1.0, total_steps=14)
    assert [lin(s) for s in (0, 3, 4, 9, 14, 20)] == pytest.approx([0.2, 0.8, 1.0, 0.5, 0.0, 0.0])
    const = build_schedule(ScheduleConfig(name="constant", warmup_steps=3), 0.5, total_steps=0)
    assert [const(s) for s in range(5)] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5])


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.95, 0.9, 0.91, 0.5, 0.6, 0.6, 0.6, 0.6, 0.49995, 0.7, 0.7]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 1},
        {"patience": 0, "factor": 0.5, "cooldown": 2},
        {"patience": 1, "threshold": 0.05, "threshold_mode": "abs", "min_lr": 0.02},
        {"mode": "max", "patience": 2, "factor": 0.2},
    ],
)
def test_reduce_on_plateau_matches_torch(kwargs):
    sched = build_schedule(ScheduleConfig(name="reduce_on_plateau", **kwargs), BASE, 100)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    ref = torch_sched.ReduceLROnPlateau(opt, **kwargs)
    seen = []
    for metric in PLATEAU_METRICS:
        sched.observe(metric)
        ref.step(metric)
        assert sched(123) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        seen.append(sched(0))
    assert len(set(seen)) > 1  # the LR was cut at least once


def test_reduce_on_plateau_state_round_trips_through_json():
    cfg = ScheduleConfig(name="reduce_on_plateau", patience=1, cooldown=1)
    straight = build_schedule(cfg, BASE, 0)
    first = build_schedule(cfg, BASE, 0)
    for m in PLATEAU_METRICS[:6]:
        first.observe(m)
        straight.observe(m)
    resumed = build_schedule(cfg, BASE, 0)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))
    for m in PLATEAU_METRICS[6:]:
        resumed.observe(m)
        straight.observe(m)
        assert resumed(0) == straight(0)
    assert build_schedule(cfg, BASE, 0).state_dict()["best"] is None  # no infinities in JSON


def test_pure_schedules_have_empty_state_and_ignore_observe():
    sched = build_schedule(ScheduleConfig(name="step", step_size=2), 1.0, 10)
    sched.observe(123.0)
    assert sched.state_dict() == {}
    assert [sched(s) for s in range(5)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            ScheduleConfig(name="step", step_size=5, warmup_steps=3),
            "schedule.warmup_steps does not apply to 'step' (it takes: step_size, gamma)",
        ),
        (
            ScheduleConfig(name="warmup_cosine", gamma=0.5),
            "schedule.gamma does not apply to 'warmup_cosine' (it takes: warmup_steps, min_lr, "
            "min_lr_ratio)",
        ),
        (ScheduleConfig(name="step"), "schedule.step_size is required for lr schedule 'step'"),
        (
            ScheduleConfig(name="warmup_cosine", warmup_steps=100),
            "schedule.warmup_steps (100) must be less than the total steps (100)",
        ),
        (ScheduleConfig(name="cosine"), "unknown lr schedule 'cosine'"),
        (ScheduleConfig(name="linear", min_lr=0.5), "is above the base lr"),
    ],
)
def test_bad_schedule_configs_are_config_errors(cfg, message):
    with pytest.raises(ConfigError) as e:
        build_schedule(cfg, BASE, total_steps=100)
    assert message in str(e.value)


def test_registry_lists_every_schedule():
    assert SCHEDULES.names() == sorted(
        ["constant", "step", "multistep", "exponential", "warmup_cosine", "linear", "one_cycle"]
        + ["wsd", "reduce_on_plateau"]
    )


# ---- batch-size schedules -------------------------------------------------------------------


def test_linear_batch_ramp_rounds_to_multiple():
    f = build_batch_size_schedule(
        BatchSizeScheduleConfig(
            name="linear_ramp", start=32, end=512, ramp_steps=100, multiple_of=32
        )
    )
    assert f(0) == 32 and f(100) == 512 and f(10_000) == 512
    assert f(50) == 288  # 32 + 480 * 0.5 = 272 -> nearest multiple of 32 is 288 (272 = 8.5 * 32)
    assert f(10) == 96  # 32 + 48 = 80 = 2.5 * 32 -> 96
    sizes = [f(s) for s in range(101)]
    assert all(s % 32 == 0 for s in sizes) and sizes == sorted(sizes)


def test_step_batch_ramp_doubles_at_even_intervals():
    f = build_batch_size_schedule(
        BatchSizeScheduleConfig(name="step_ramp", start=32, end=256, ramp_steps=300)
    )
    assert [f(s) for s in (0, 99, 100, 199, 200, 299, 300, 10**6)] == [
        32, 32, 64, 64, 128, 128, 256, 256
    ]  # fmt: skip
    capped = build_batch_size_schedule(
        BatchSizeScheduleConfig(name="step_ramp", start=16, end=48, ramp_steps=10)
    )
    assert [capped(s) for s in (0, 4, 5, 10)] == [16, 16, 32, 48]  # 2 doublings, last capped


def test_constant_batch_size_and_bad_ramps():
    assert build_batch_size_schedule(BatchSizeScheduleConfig(start=64))(1234) == 64
    bad = [
        BatchSizeScheduleConfig(name="linear_ramp", start=64, end=32, ramp_steps=10),
        BatchSizeScheduleConfig(
            name="linear_ramp", start=32, end=100, ramp_steps=10, multiple_of=8
        ),
        BatchSizeScheduleConfig(name="step_ramp", start=32, end=64),
        BatchSizeScheduleConfig(name="linear_ramp", start=32),
    ]
    for cfg in bad:
        with pytest.raises(ConfigError, match="batch_size_schedule"):
            build_batch_size_schedule(cfg)
