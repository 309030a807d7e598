"""A run folder: resolved recipe, metrics, checkpoints, summary and report, made safely.

``build_run(recipe)`` checks the folder (never overwrites another run), builds the components
and returns a Run; ``Run.fit()`` trains, tests the best checkpoint and writes summary + report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from bigtrain.build import Components, build
from bigtrain.callbacks.checkpointing import best_weights, read_pointer
from bigtrain.config import RunConfig, dump_config, load_recipe
from bigtrain.core.checkpoint import load_weights
from bigtrain.errors import BigtrainError, CheckpointError

# keys that may differ when resuming (extending training, quieter output)
_RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.max_epochs", "trainer.progress"}


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and os.replace (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def check_run_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Refuse to mix two runs in one folder; on resume, the recipe must be the same."""
    saved = run_dir / "config.yaml"
    if not run_dir.exists():
        if resume:
            raise CheckpointError(f"cannot resume: run folder {run_dir} does not exist")
        return
    if not saved.is_file():
        if any(run_dir.iterdir()):
            raise CheckpointError(
                f"{run_dir} is not empty and is not a bigtrain run folder; choose another --run-dir"
            )
        if resume:
            raise CheckpointError(f"cannot resume: {run_dir} holds no run")
        return
    if not resume:
        raise CheckpointError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it "
            "or choose another --run-dir"
        )
    try:
        old = _flat(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError:
        raise CheckpointError(f"{saved} is corrupt; cannot resume this run") from None
    new = _flat(cfg.model_dump(mode="json"))
    changed = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES
    )
    if changed:
        raise CheckpointError(
            f"run folder {run_dir} holds a different run (changed: {', '.join(changed[:4])}); "
            "resume with the same recipe or choose another --run-dir"
        )
    if read_pointer(run_dir / "checkpoints" / "latest") is None:
        raise CheckpointError(f"cannot resume: {run_dir} has no checkpoint yet")


class Run:
    """A configured run bound to its folder. ``fit()`` trains and writes the results."""

    def __init__(self, config: RunConfig, run_dir: Path, components: Components, resume: bool):
        self.config, self.run_dir, self.components, self.resume = (
            config,
            run_dir,
            components,
            resume,
        )

    @property
    def trainer(self):
        return self.components.trainer

    def fit(self) -> dict[str, Any]:
        """Train (or continue), then test the best checkpoint; returns the summary dict."""
        trainer = self.trainer
        resume_from = read_pointer(self.run_dir / "checkpoints" / "latest") if self.resume else None
        status = "completed"
        try:
            state = trainer.fit(resume_from=resume_from)
            if state.stop_reason and state.stop_reason != "completed":
                status = f"stopped: {state.stop_reason}"
        except BigtrainError as e:
            self.write_summary(f"failed: {e}", {})
            raise
        finally:
            logger = self.components.callbacks.get("logger")
            if logger is not None:
                logger.close()
        test = self.test()
        return self.write_summary(status, test)

    def best_checkpoint(self) -> Path | None:
        return best_weights(self.run_dir)

    def test(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split (val if there is no test split)."""
        batches = self.components.extras.get("test_batches")
        split = "test"
        if batches is None:
            batches, split = self.trainer.state.val_data, "val"
        if batches is None:
            return {}
        best = self.best_checkpoint()
        if best is not None:
            load_weights(best, self.trainer.state.model)
        metrics = self.trainer.evaluate(batches, split=split)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            scalars = {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}
            s = self.trainer.state
            f.write(json.dumps({"kind": split, "step": s.step, "epoch": s.epoch, **scalars}) + "\n")
        return metrics

    def write_summary(self, status: str, test: dict[str, Any]) -> dict[str, Any]:
        s = self.trainer.state
        monitor, _mode = s.extra.get("monitor", ("val/loss", "min"))
        ckpt = self.components.callbacks.get("checkpointer")
        summary: dict[str, Any] = {
            "name": self.config.name,
            "status": status,
            "steps": s.step,
            "epochs": s.epoch,
            "wall_time_s": round(float(s.extra.get("wall_time_s", 0.0)), 3),
            "parameters": sum(p.numel() for p in s.model.parameters()),
            "best": {
                "metric": monitor,
                "value": getattr(ckpt, "best", None),
                "step": getattr(ckpt, "best_step", None),
            },
            "test": {k.split("/", 1)[1]: v for k, v in test.items() if not isinstance(v, list)},
            "test_split": next(iter(test), "test/").split("/", 1)[0] if test else None,
        }
        cm = next((v for k, v in test.items() if k.endswith("/confusion_matrix")), None)
        if cm is not None:
            summary["confusion_matrix"] = cm
            names = getattr(self.components.data, "class_names", None)
            summary["class_names"] = names or [str(i) for i in range(len(cm))]
        health = self.components.callbacks.get("health")
        if health is not None and health.messages:
            summary["health"] = health.messages
        notes = self.notes()
        if notes:
            summary["notes"] = notes
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        try:
            from bigtrain.report import write_report

            summary["report"] = str(write_report(self.run_dir))
        except Exception as e:  # a broken figure must not lose the trained model
            summary["report_error"] = f"{type(e).__name__}: {e}"
        return summary

    def notes(self) -> dict[str, Any]:
        """Recipe-specific results worth showing (e.g. the fitted line of a 1-D linear model)."""
        model = self.trainer.state.model
        coefficients = getattr(model, "coefficients", None)
        if coefficients is None:
            return {}
        weight, bias = coefficients()
        if weight.numel() == 1 and bias is not None and bias.numel() == 1:
            return {"slope": round(float(weight), 4), "intercept": round(float(bias), 4)}
        return {}


def build_run(
    recipe: str | Path | RunConfig,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> Run:
    """Load (if needed) and build a recipe into a Run whose folder is checked and prepared."""
    cfg = recipe if isinstance(recipe, RunConfig) else load_recipe(recipe, overrides)
    if isinstance(recipe, RunConfig) and overrides:
        from bigtrain.config.loader import apply_overrides, validate

        cfg = validate(apply_overrides(cfg.model_dump(mode="json"), overrides))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg.name)
    check_run_dir(run_dir, cfg, resume)
    components = build(cfg, run_dir, quiet=quiet)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_config(cfg))
    return Run(cfg, run_dir, components, resume)
