"""A run folder: resolved recipe, metrics, checkpoints, summary and report, made safely.

``build_run(recipe)`` locks and checks the folder (never mixes two runs), builds the components
and returns a Run; ``Run.fit()`` trains, tests the best checkpoint and writes summary + report.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bigtrain._io import (
    atomic_write_text,
    describe_os_error,
    json_safe,
    remove_stale_temporaries,
)
from bigtrain.build import BuildWrapper, Components, build, make_strategy
from bigtrain.callbacks.checkpointing import best_weights, read_pointer
from bigtrain.config import RunConfig, dump_config, load_recipe
from bigtrain.core.checkpoint import verify_checkpoint
from bigtrain.core.loop import finished_reason
from bigtrain.errors import (
    BigtrainError,
    CheckpointError,
    PeerError,
    RunFinishedError,
    RunLockedError,
)

# keys that may differ when resuming (extending training, quieter output)
_RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.max_epochs", "trainer.progress"}
# what a run writes into its folder (removed when a run without a checkpoint starts over)
_RUN_FILES = ("metrics.jsonl", "summary.json", "report.html", "tensorboard", "checkpoints")
LOCK_NAME = ".lock"


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


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The raw resolved config a run folder holds (its config.yaml)."""
    saved = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(saved.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a bigtrain run folder (no config.yaml)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{saved} is corrupt; cannot resume this run") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{saved} is corrupt; cannot resume this run")
    return data


class RunLock:
    """An OS lock (``flock``) on ``run_dir/.lock`` held for a run's life.

    A second process asking for the same folder gets RunLockedError naming the holder's pid.
    The lock goes away with the process however it ends (kill -9 included).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(
                f"cannot use {run_dir} as a run folder: {describe_os_error(e)}"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise RunLockedError(
                f"run folder {run_dir} is in use by process {holder}; wait for it to finish "
                "or choose another --run-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _prepare_folder(run_dir: Path) -> bool:
    """Create ``run_dir`` if needed (True when it was created); CheckpointError if unusable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--run-dir {run_dir} is a file, not a folder; choose another path")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create run folder {run_dir}: {describe_os_error(e)}"
        ) from None
    return created


def check_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, quiet: bool = False) -> bool:
    """Refuse to mix two runs in one folder. Returns True when the run continues a checkpoint.

    A folder whose run never wrote a checkpoint (killed early, stopped by a NaN) is started
    over, with a notice; on resume the recipe must be the same as the saved one.
    """
    saved = run_dir / "config.yaml"
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if not saved.is_file():
        if any(not p.name.startswith(".") for p in entries):
            raise CheckpointError(
                f"{run_dir} is not empty and is not a bigtrain run folder; choose another --run-dir"
            )
        if resume:
            raise CheckpointError(f"cannot resume: {run_dir} holds no run")
        return False
    latest = read_pointer(run_dir / "checkpoints" / "latest")
    if latest is None or not latest.is_dir():
        # printed even with --quiet: the user should know the old files are replaced
        _say(False, f"note: {run_dir} holds a run that never wrote a checkpoint; starting it over")
        for name in _RUN_FILES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return False
    if not resume:
        status = _saved_status(run_dir)
        raise CheckpointError(
            f"run folder {run_dir} already holds a run{status}; pass --resume to continue it "
            "or choose another --run-dir"
        )
    from bigtrain.config.loader import validate

    # both sides validated: a field that one side spells out and the other leaves at its
    # default is the same run
    saved = validate(saved_config(run_dir), str(run_dir / "config.yaml"))
    old, new = _flat(saved.model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
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
    state = verify_checkpoint(latest)["state"]  # before anything in the folder changes
    reason = finished_reason(state, cfg.trainer.max_steps, cfg.trainer.max_epochs)
    if reason is not None:
        raise RunFinishedError(f"cannot resume {run_dir}: {reason}")
    return True


def _saved_status(run_dir: Path) -> str:
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({status})" if isinstance(status, str) else ""


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


class Run:
    """A configured run bound to its (locked) folder. ``fit()`` trains and writes the results."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        components: Components,
        resume: bool,
        lock: RunLock | None = None,
        report: bool = True,
    ):
        self.config, self.run_dir, self.components, self.resume = (
            config,
            run_dir,
            components,
            resume,
        )
        self.lock = lock
        self.report = report  # write report.html at the end (seconds: sweeps of many runs skip it)

    @property
    def trainer(self):
        return self.components.trainer

    def fit(self) -> dict[str, Any]:
        """Train (or continue), then test the best checkpoint; returns the summary dict."""
        try:
            return self._fit()
        except OSError as e:  # the run folder became unwritable (full disk, read-only)
            raise CheckpointError(
                f"cannot write to the run folder {self.run_dir}: {describe_os_error(e)}"
            ) from None
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        trainer = self.trainer
        resume_from = read_pointer(self.run_dir / "checkpoints" / "latest") if self.resume else None
        status = "completed"
        try:
            state = trainer.fit(resume_from=resume_from)
            if state.stop_reason and state.stop_reason != "completed":
                status = f"stopped: {state.stop_reason}"
        except RunFinishedError:
            raise  # nothing was changed: the finished run's summary stays as it is
        except BigtrainError as e:
            if self.resume and trainer.state.step == 0:
                raise  # the checkpoint did not load: the folder's results stay as they were
            if trainer.strategy.is_main:
                self.write_summary(f"failed: {e}", {})
            raise
        finally:
            logger = self.components.callbacks.get("logger")
            if logger is not None:
                logger.close()
        test = self.test()
        if not trainer.strategy.is_main:
            return {}  # the main process writes and returns the summary
        return self.write_summary(status, test)

    def close(self) -> None:
        """Release the run folder's lock (also done by fit)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def best_checkpoint(self) -> Path | None:
        return best_weights(self.run_dir)

    def test(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split (the whole val split if there is no
        test split: a language model's periodic evaluations only sample it)."""
        batches, split = self.components.test_batches, "test"
        if batches is None:
            batches = self.components.extras.get("full_val_batches", self.trainer.state.val_data)
            split = "val"
        if batches is None:
            return {}
        strategy = self.trainer.strategy
        strategy.barrier()  # the main process has written the best weights
        best = self.best_checkpoint()
        if best is not None:
            strategy.load_weights(best, self.trainer.state.model)
        metrics = self.trainer.evaluate(batches, split=split)
        if not strategy.is_main:
            return metrics
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            scalars = {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}
            s = self.trainer.state
            record = {"kind": "test", "split": split, "step": s.step, "epoch": s.epoch, **scalars}
            f.write(json.dumps(json_safe(record)) + "\n")
        return metrics

    def write_summary(self, status: str, test: dict[str, Any]) -> dict[str, Any]:
        s = self.trainer.state
        ckpt = self.components.callbacks.get("checkpointer")
        summary: dict[str, Any] = {
            "name": self.config.name,
            "status": status,
            "steps": s.step,
            "epochs": s.epoch,
            "wall_time_s": round(float(s.wall_time_s), 3),
            "parameters": sum(p.numel() for p in s.model.parameters()),
            "best": {
                "metric": s.monitor,
                "value": ckpt.best if ckpt is not None else None,
                "step": ckpt.best_step if ckpt is not None else None,
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
        privacy = self.components.callbacks.get("privacy")
        if privacy is not None:  # a DP-SGD run: the budget it spent (bigtrain.privacy)
            summary["privacy"] = privacy.summary()
        pruning = self.components.callbacks.get("prune")
        if pruning is not None:  # a prune: section: the sparsity reached (bigtrain.compress)
            summary["pruning"] = pruning.summary()
        notes = self.notes()
        if notes:
            summary["notes"] = notes
        summary = json_safe(summary)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if not self.report:
            return summary
        try:
            from bigtrain.report import write_report

            summary["report"] = str(write_report(self.run_dir))
        except Exception as e:  # a broken figure must not lose the trained model
            summary["report_error"] = f"{type(e).__name__}: {e}"
        return summary

    def notes(self) -> dict[str, Any]:
        """Recipe-specific results worth showing (e.g. the fitted line of a 1-D linear model)."""
        from bigtrain.models import Linear

        model = self.trainer.strategy.unwrap(self.trainer.state.model)
        if not isinstance(model, Linear):
            return {}
        weight, bias = model.coefficients()
        if weight.numel() == 1 and bias is not None and bias.numel() == 1:
            return {"slope": round(float(weight), 4), "intercept": round(float(bias), 4)}
        return {}


def build_run(
    recipe: str | Path | RunConfig | None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    report: bool = True,
) -> Run:
    """Load (if needed) and build a recipe into a Run whose folder is locked, checked and ready.

    With ``resume`` and no recipe, the run folder's own resolved config is used.
    ``extra_wrappers`` add features at the build seams (e.g. a tuner's pruning callback);
    ``report=False`` skips report.html (a study or sweep of many runs). Under torchrun
    every process calls this: the main one names, locks and checks the folder and tells the
    others (a failure there becomes PeerError on them).
    """
    if recipe is None:
        if not (resume and run_dir is not None):
            raise CheckpointError("name a recipe, or pass --resume with --run-dir")
        from bigtrain.config.loader import apply_overrides, validate

        saved = saved_config(Path(run_dir))  # CheckpointError when the folder holds no run
        recipe = validate(
            apply_overrides(saved, list(overrides or [])), str(Path(run_dir) / "config.yaml")
        )
        overrides = None
    cfg = recipe if isinstance(recipe, RunConfig) else load_recipe(recipe, overrides)
    if isinstance(recipe, RunConfig) and overrides:
        from bigtrain.config.loader import apply_overrides, validate

        cfg = validate(apply_overrides(cfg.model_dump(mode="json"), overrides))
    strategy = make_strategy(cfg)  # joins the process group: the processes can talk from here
    main = strategy.is_main
    chosen = run_dir if run_dir is not None else (default_run_dir(cfg.name) if main else None)
    run_dir = Path(strategy.broadcast_object(str(chosen) if chosen is not None else None))
    lock, created = None, False
    try:
        if main:
            created, lock, continues = _claim_folder(run_dir, cfg, resume, quiet)
        outcome = strategy.broadcast_object(("ok", continues) if main else None)
    except BigtrainError as e:
        strategy.broadcast_object(("error", str(e)))
        raise
    if outcome[0] == "error":
        raise PeerError(f"process 0 could not use the run folder: {outcome[1]}")
    continues = outcome[1]
    try:
        components = build(
            cfg, run_dir, quiet=quiet or not main, extra_wrappers=extra_wrappers, strategy=strategy
        )
        if main:
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    except BaseException as e:
        if lock is not None:
            lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing of this run was written
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write to {run_dir}: {describe_os_error(e)}") from None
        raise
    return Run(cfg, run_dir, components, continues, lock, report)


def _claim_folder(
    run_dir: Path, cfg: RunConfig, resume: bool, quiet: bool
) -> tuple[bool, RunLock, bool]:
    """Create (if needed), lock and check the run folder: (created, lock, continues)."""
    if resume and not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"cannot resume: {run_dir} holds no run")
    created = _prepare_folder(run_dir)
    lock = RunLock(run_dir)
    try:
        continues = check_run_dir(run_dir, cfg, resume, quiet)
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_stale_temporaries(folder)  # left by a process killed while saving
    except BaseException as e:
        lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write to {run_dir}: {describe_os_error(e)}") from None
        raise
    return created, lock, continues


def restarted_with_checkpoint(run_dir: str | Path | None) -> bool:
    """True in a worker that torchrun restarted (``--max-restarts``) when its run folder holds
    a checkpoint: the run continues from it without ``--resume``."""
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if run_dir is None or not restarts.isdigit() or int(restarts) == 0:
        return False
    return (Path(run_dir) / "checkpoints" / "latest").is_file()
