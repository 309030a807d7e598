"""How right is `bigtrain plan`? Predicted vs measured peak memory and run time on this CPU.

    python bench/plan_accuracy.py [--quick]

For each case (digits MLP, digits CNN, three GPT sizes on Shakespeare characters):
- memory: the plan's peak per device vs the measured peak of live tensor bytes over 3 real
  training steps (torch profiler allocation events, `bigtrain.plan.measure`) plus the weights
  and buffers already resident;
- time: the plan calibrated with a few seconds of real steps and one evaluation
  (`bigtrain plan --calibrate`: 5 warm-up steps, then at least 10 steps and 2 s) predicts the
  whole run; the run is then trained for real (`Trainer.fit`, its
  evaluations included) and timed. The uncalibrated CPU default (MFU 0.3) is shown too.
Run it on a quiet machine: nothing else may share the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

CASES = [
    ("digits-mlp", "digits-mlp", []),
    ("digits-cnn", "digits-cnn", []),
    ("gpt 2x64", "shakespeare-char", ["model.n_layer=2", "model.n_embd=64", "model.n_head=4"]),
    ("gpt 3x144", "shakespeare-char", []),
    ("gpt 4x256", "shakespeare-char", ["model.n_layer=4", "model.n_embd=256", "model.n_head=8"]),
]
GPT_STEPS = "trainer.max_steps=300"


def measure_run(cfg) -> float:
    from bigtrain.build import build

    built = build(cfg, run_dir=None, quiet=True)
    start = time.perf_counter()
    built.trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    args = parser.parse_args()
    from bigtrain.build.describe import calibrate, describe_run, measure_training_peak
    from bigtrain.config import load_recipe
    from bigtrain.plan.hardware import get_hardware
    from bigtrain.plan.planner import Settings, make_plan
    from bigtrain.plan.timing import calibrated_mfu

    rows = []
    for label, recipe, overrides in CASES:
        extra = [GPT_STEPS] if recipe.startswith("shakespeare") else []
        if args.quick:
            extra = ["trainer.max_steps=20"] if extra else ["trainer.max_epochs=2"]
        cfg = load_recipe(recipe, [*overrides, *extra, "trainer.progress=false"])
        described = describe_run(cfg)
        hw = get_hardware("cpu", described.precision)
        settings = Settings(hw, precision=described.precision, optimizer=cfg.optim.name,
                            momentum=cfg.optim.momentum)  # fmt: skip
        default = make_plan(described, settings)
        measured = calibrate(cfg)
        mfu = calibrated_mfu(default.flops_per_step, measured.step_seconds,
                             hw.peak(described.precision))  # fmt: skip
        calibrated = make_plan(
            described,
            dataclasses.replace(settings, mfu=mfu, eval_seconds=measured.eval_seconds),
            trace=default.trace,
        )
        memory = measure_training_peak(cfg)
        run_s = measure_run(cfg)
        rows.append((label, default.total_parameters, calibrated.memory.total, memory,
                     mfu, default.run_seconds, calibrated.run_seconds, run_s, described.steps))  # fmt: skip
        print(f"{label}: done", flush=True)
    print()
    print(
        "| case | params | planned peak | measured peak | ratio | MFU (calibrated) | "
        "run: default plan | run: calibrated plan | run: measured | calibrated / measured |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, pm, mm, mfu, d_s, c_s, r_s, steps in rows:
        print(f"| {label} ({steps} steps) | {n:,} | {pm / 2**20:.2f} MiB | {mm / 2**20:.2f} MiB | "
              f"{pm / mm:.3f} | {mfu:.4f} | {d_s:.1f} s | {c_s:.1f} s | {r_s:.1f} s | "
              f"{c_s / r_s:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
