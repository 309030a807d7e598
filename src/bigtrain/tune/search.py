"""Optuna studies: each trial is a real run of the recipe with sampled values, in one study folder.

A study folder::

    study.db            the Optuna study (SQLite): a second `bigtrain tune` continues it
    trials/trial-NNN/   each trial's ordinary run folder (config, metrics, checkpoints, summary)
    trials.csv          one row per trial: state, best val metric, values, test metrics
    history.png         the metric per trial and each trial's learning curve (pruned ones grey)
    params.png          the metric against each searched value
    best.yaml           the recipe with the best trial's values: `bigtrain train best.yaml`

``trials`` is the study's total: continuing a study of 12 trials with ``trials=20`` runs 8 more.
Trials are sampled by TPE (seeded with the recipe's seed plus the number of trials already in the
study, so a continued study does not redraw the first ones) and pruned by the median rule on the
monitored val metric. A folder holding a study of another recipe, other overrides or another
space is refused.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigtrain._io import atomic_write_text
from bigtrain.build.common import BuildWrapper
from bigtrain.config import RunConfig, dump_config, load_recipe
from bigtrain.config.loader import validate
from bigtrain.core.callback import Callback
from bigtrain.errors import BigtrainError, CheckpointError, ConfigError, TrainingError
from bigtrain.tune.space import Param, check_space, fingerprint, load_space, set_values

STUDY_NAME = "bigtrain"
STUDY_FILE = "study.db"
# median rule: the first PRUNE_STARTUP trials always finish; no trial is pruned in its first
# quarter (early val metrics of good learning rates are often behind, warmup is not over)
PRUNE_STARTUP = 5
PRUNE_WARMUP = 250  # in PROGRESS_SCALE units
PROGRESS_SCALE = 1000  # intermediate values are reported at the run's progress in per mille


def import_optuna():
    """Optuna, or a one-line BigtrainError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("`bigtrain tune` needs Optuna: pip install 'bigtrain[tune]'") from None
    return optuna


class TrialReporter(Callback):
    """Reports the monitored val metric to an Optuna trial after every evaluation and ends the
    run cleanly (``state.should_stop``) when the pruner says so.

    The step is the run's progress in per mille of its planned steps, not the optimizer step:
    trials with different batch sizes take different numbers of steps, and the median rule must
    compare them at the same point of their training.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self._reported: set[int] = set()

    def on_eval_end(self, state) -> None:
        value = state.metrics.get(state.monitor)
        if not isinstance(value, float) or not math.isfinite(value):
            return
        step = round(PROGRESS_SCALE * state.step / max(1, state.max_steps))
        if step in self._reported:
            return  # Optuna keeps the first value of a step (and warns about the second)
        self._reported.add(step)
        self.trial.report(value, step)
        # a run at its end is complete whatever the median says
        if step < PROGRESS_SCALE and self.trial.should_prune():
            self.pruned_at = step
            state.should_stop = True
            state.stop_reason = f"pruned at {step / 10:.0f}% of training (median rule)"


class WithReporter(BuildWrapper):
    """Adds the trial's reporter at the build's callback seam (before the checkpointer)."""

    def __init__(self, reporter: TrialReporter) -> None:
        self.reporter = reporter

    def callbacks(self, cfg) -> dict[str, Callback]:
        return {"tune": self.reporter}


@dataclass
class TuneResult:
    """What a study holds after ``tune``: its trials as rows, the best one, the files written."""

    study_dir: Path
    monitor: str
    mode: str
    space: list[Param]
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    ran: int  # trials run by this call
    files: dict[str, Path] = field(default_factory=dict)


def _claim_study_dir(study_dir: Path):
    """Create and lock the study folder; refuse a folder holding something else."""
    from bigtrain.errors import RunLockedError
    from bigtrain.run import RunLock

    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"--study-dir {study_dir} is a file, not a folder")
    if study_dir.is_dir() and not (study_dir / STUDY_FILE).is_file():
        if any(not p.name.startswith(".") for p in study_dir.iterdir()):
            raise ConfigError(
                f"--study-dir {study_dir} is not empty and holds no study; choose another folder"
            )
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create study folder {study_dir}: {e.strerror}") from None
    try:
        return RunLock(study_dir)
    except RunLockedError:
        raise CheckpointError(
            f"study folder {study_dir} is in use by another `bigtrain tune`; wait for it to "
            "finish or choose another --study-dir"
        ) from None


def _monitor_of(cfg: RunConfig) -> tuple[str, str]:
    """The recipe's monitored metric and its direction, from a throwaway build (which also
    proves the recipe builds before any study is written)."""
    from bigtrain.build import build

    built = build(cfg, run_dir=None, quiet=True)
    state = built.trainer.state
    if state.val_data is None:
        raise ConfigError(
            f"recipe {cfg.name} has no validation split to tune on; set data.val_fraction > 0"
        )
    if not state.monitor.startswith("val/"):
        raise ConfigError(
            f"tune needs a val/ metric to monitor, got trainer.monitor {state.monitor}"
        )
    return state.monitor, state.monitor_mode


def _open_study(optuna, study_dir: Path, cfg: RunConfig, space: list[Param], fp: str, flat):
    """Create the study, or load it after checking it is a study of this recipe and space."""
    storage_url = f"sqlite:///{(study_dir / STUDY_FILE).resolve()}"
    try:
        storage = optuna.storages.RDBStorage(storage_url)
        names = optuna.get_all_study_names(storage)
    except Exception as e:  # sqlalchemy/optuna raise their own types for a damaged file
        raise CheckpointError(
            f"{study_dir / STUDY_FILE} is not a readable Optuna study ({type(e).__name__})"
        ) from None
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_STARTUP, n_warmup_steps=PRUNE_WARMUP
    )
    if STUDY_NAME in names:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner)
        _check_same_study(study, study_dir, cfg, space, fp, flat)
    else:
        monitor, mode = _monitor_of(cfg)
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            direction="maximize" if mode == "max" else "minimize",
            pruner=pruner,
        )
        attrs = {"fingerprint": fp, "recipe": cfg.name, "recipe_keys": flat, "monitor": monitor}
        attrs.update(mode=mode, space={p.key: p.as_dict() for p in space})
        for k, v in attrs.items():
            study.set_user_attr(k, v)
    # a continued study draws new values: seeded by the trials already drawn
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    return study


def _check_same_study(study, study_dir: Path, cfg: RunConfig, space, fp: str, flat) -> None:
    attrs = study.user_attrs
    if "fingerprint" not in attrs:
        raise ConfigError(
            f"{study_dir / STUDY_FILE} is not a bigtrain study; choose another --study-dir"
        )
    saved_space = attrs.get("space", {})
    if saved_space != {p.key: p.as_dict() for p in space}:
        changed = sorted(set(saved_space) ^ {p.key for p in space}) or sorted(
            p.key for p in space if saved_space.get(p.key) != p.as_dict()
        )
        raise ConfigError(
            f"study folder {study_dir} was searched over another space (changed: "
            f"{', '.join(changed[:4])}); use the same space or choose another --study-dir"
        )
    if attrs["fingerprint"] != fp:
        old = attrs.get("recipe_keys", {})
        changed = sorted(k for k in old.keys() | flat.keys() if old.get(k) != flat.get(k))
        raise ConfigError(
            f"study folder {study_dir} holds a study of another recipe or other overrides "
            f"(it tuned {attrs.get('recipe')}; changed: {', '.join(changed[:4])}); use the same "
            "recipe and overrides or choose another --study-dir"
        )


def _counts(trial) -> bool:
    """A trial that counts towards ``trials``: finished, pruned or diverged (not interrupted)."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED") or trial.user_attrs.get("outcome") == "diverged"


def tune(
    recipe: str | Path,
    space: str | Path | list[Param],
    trials: int,
    study_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    on_trial: Callable[[dict[str, Any], int], None] | None = None,
) -> TuneResult:
    """Search ``space`` for the recipe's best monitored val metric over ``trials`` trials in all.

    Args:
        recipe: a shipped recipe name or a YAML path.
        space: a space file (or shipped space name), or parsed Params.
        trials: how many trials the study holds when done (continuing a study runs the rest).
        study_dir: the study folder (default ``studies/<recipe name>``).
        overrides: ``key=value`` recipe overrides applied to every trial (and to best.yaml).
        on_trial: called with each finished trial's row and the study's total.
    """
    optuna = import_optuna()
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    cfg = load_recipe(recipe, list(overrides))
    data = cfg.model_dump(mode="json")
    params = space if isinstance(space, list) else load_space(space)
    check_space(params, data, cfg.name)
    fp, flat = fingerprint(data, params)
    study_dir = Path(study_dir) if study_dir is not None else Path("studies") / cfg.name
    lock = _claim_study_dir(study_dir)
    try:
        study = _open_study(optuna, study_dir, cfg, params, fp, flat)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # the folder is locked: a running trial is one whose process was killed
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        ran = 0
        while sum(map(_counts, study.get_trials(deepcopy=False))) < trials:
            trial = study.ask()
            _run_trial(optuna, study, trial, params, data, study_dir)
            ran += 1
            if on_trial is not None:
                done = study.get_trials(deepcopy=False)[trial.number]
                on_trial(_row(done, params, study.user_attrs["mode"]), trials)
        return _results(study, cfg, params, study_dir, ran)
    finally:
        lock.release()


def _run_trial(optuna, study, trial, params: list[Param], data, study_dir: Path) -> None:
    """Run one trial and tell the study how it ended (always, even on Ctrl-C)."""
    from bigtrain.run import build_run

    state, outcome, value = optuna.trial.TrialState.FAIL, "interrupted", None
    try:
        values = {p.key: p.suggest(trial) for p in params}
        cfg = validate(set_values(data, values), f"trial {trial.number}")
        run_dir = study_dir / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(study_dir)))
        reporter = TrialReporter(trial)
        # no report.html per trial: it costs seconds each, the study writes its own figures
        run = build_run(cfg, run_dir=run_dir, quiet=True, extra_wrappers=[WithReporter(reporter)],
                        report=False)  # fmt: skip
        try:
            summary = run.fit()
        except TrainingError as e:  # the loss diverged: a bad region of the space, not a bug
            outcome = "diverged"
            trial.set_user_attr("error", str(e))
            return
        test = {k: v for k, v in summary.get("test", {}).items() if isinstance(v, float)}
        trial.set_user_attr("test", test)
        trial.set_user_attr("steps", summary.get("steps"))
        trial.set_user_attr("wall_time_s", summary.get("wall_time_s"))
        value = summary.get("best", {}).get("value")
        if reporter.pruned_at is not None:
            state, outcome = optuna.trial.TrialState.PRUNED, "pruned"
        elif isinstance(value, float) and math.isfinite(value):
            state, outcome = optuna.trial.TrialState.COMPLETE, "complete"
        else:
            outcome = "diverged"  # never a finite val metric
    except BigtrainError as e:
        outcome = "failed"
        trial.set_user_attr("error", str(e))
        raise
    finally:
        trial.set_user_attr("outcome", outcome)
        study.tell(trial, value if state.name == "COMPLETE" else None, state=state)


def _row(t, params: list[Param], mode: str) -> dict[str, Any]:
    """A trial as a plain dict (what the table, the CSV and the figures read). ``value`` is the
    best monitored value the trial reached (a pruned trial's best before it was stopped)."""
    by_key = {p.key: p for p in params}
    best = t.value if t.state.name == "COMPLETE" else None
    reached = [v for v in t.intermediate_values.values() if math.isfinite(v)]
    if best is None and reached and t.state.name == "PRUNED":
        best = max(reached) if mode == "max" else min(reached)
    duration = t.duration.total_seconds() if t.duration is not None else None
    return {
        "number": t.number,
        "state": t.user_attrs.get("outcome", t.state.name.lower()),
        "value": best,
        "params": {k: by_key[k].decode(v) if k in by_key else v for k, v in t.params.items()},
        "intermediate": dict(sorted(t.intermediate_values.items())),
        "test": t.user_attrs.get("test", {}),
        "steps": t.user_attrs.get("steps"),
        "seconds": duration,
        "run_dir": t.user_attrs.get("run_dir", ""),
        "error": t.user_attrs.get("error", ""),
    }


def _results(study, cfg: RunConfig, params, study_dir: Path, ran: int) -> TuneResult:
    monitor, mode = study.user_attrs["monitor"], study.user_attrs["mode"]
    rows = [_row(t, params, mode) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    if complete:
        pick = max if mode == "max" else min
        best = pick(complete, key=lambda r: r["value"])
    result = TuneResult(study_dir, monitor, mode, params, rows, best, ran)
    result.files["trials.csv"] = atomic_write_text(study_dir / "trials.csv", trials_csv(result))
    if best is not None:
        text = best_recipe_text(cfg, best, monitor, study_dir)
        result.files["best.yaml"] = atomic_write_text(study_dir / "best.yaml", text)
    try:
        from bigtrain.report.tuning import history_figure, params_figure, save_png

        searched = [{"key": p.key, **p.as_dict()} for p in params]
        for name, fig in (
            ("history.png", history_figure(rows, monitor, mode)),
            ("params.png", params_figure(rows, searched, monitor)),
        ):
            if fig is not None:
                result.files[name] = save_png(fig, study_dir / name)
    except Exception as e:  # a broken figure must not lose the study's results
        result.files["plot error"] = Path(f"{type(e).__name__}: {e}")
    return result


def trials_csv(result: TuneResult) -> str:
    """The trials as CSV: trial, state, metric, each searched key, test metrics, steps, time."""
    keys = [p.key for p in result.space]
    tests = list(dict.fromkeys(k for r in result.rows for k in r["test"]))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["trial", "state", result.monitor, *keys, *(f"test/{k}" for k in tests),
                "steps", "seconds", "run_dir"])  # fmt: skip
    for r in result.rows:
        w.writerow(
            [r["number"], r["state"], _cell(r["value"])]
            + [_cell(r["params"].get(k)) for k in keys]
            + [_cell(r["test"].get(k)) for k in tests]
            + [_cell(r["steps"]), _cell(r["seconds"]), r["run_dir"]]
        )
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def best_recipe_text(cfg: RunConfig, best: dict[str, Any], monitor: str, study_dir: Path) -> str:
    """The recipe (with the study's overrides) and the best trial's values, as YAML that
    ``bigtrain train`` runs; a comment header says where it came from."""
    data = set_values(cfg.model_dump(mode="json"), best["params"])
    data["name"] = f"{cfg.name}-tuned"
    data["description"] = (
        f"{cfg.name} with the best values of `bigtrain tune` (trial {best['number']}, "
        f"{monitor} {best['value']:.4g})"
    )
    tuned = validate(data, "best trial")
    shown = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    header = (
        f"# written by `bigtrain tune` from the study in {study_dir}\n"
        f"# trial {best['number']}: {monitor} = {best['value']:.6g}; {shown}\n"
        f"# generated {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    return header + dump_config(tuned)


__all__ = ["TrialReporter", "TuneResult", "WithReporter", "import_optuna", "trials_csv", "tune"]
