"""ProgressBar: a rich progress bar with loss, monitored metric, lr and throughput."""

from __future__ import annotations

import time

from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState


class ProgressBar(Callback):
    """Redraws at most every ``refresh_s`` seconds (no background thread: the CPU is for training).

    On a terminal it draws a live bar; elsewhere (CI, pipes) it prints one line per evaluation.
    """

    def __init__(self, console=None, refresh_s: float = 0.25, monitor: str | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.refresh_s = refresh_s
        self.monitor = monitor
        self._progress = None
        self._next = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                auto_refresh=False,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=state.max_steps, completed=state.step, info=""
            )

    def _info(self, state: TrainState) -> str:
        parts = []
        if state.train_loss is not None:
            parts.append(f"loss {state.train_loss:.4f}")
        elif state.loss is not None:
            parts.append(f"loss {float(state.loss):.4f}")
        if self.monitor and self.monitor in state.metrics:
            parts.append(f"{self.monitor} {state.metrics[self.monitor]:.4f}")
        parts.append(f"lr {state.lr or state.optimizer.param_groups[0]['lr']:.2e}")
        if "privacy/epsilon" in state.metrics:  # a DP-SGD run's budget spent so far
            parts.append(f"epsilon {state.metrics['privacy/epsilon']:.2f}")
        if state.throughput is not None:
            unit = "tok/s" if state.counts_tokens else "ex/s"
            parts.append(f"{state.throughput:,.0f} {unit}")
        if state.mfu is not None:
            parts.append(f"MFU {state.mfu:.1%}")
        return " | ".join(parts)

    def on_after_step(self, state: TrainState) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        if now >= self._next or state.step >= state.max_steps:
            self._next = now + self.refresh_s
            self._progress.update(self._task, completed=state.step, info=self._info(state))
            self._progress.refresh()

    def on_eval_end(self, state: TrainState) -> None:
        shown = {k: v for k, v in state.metrics.items() if isinstance(v, float)}
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        if self._progress is not None:
            self._progress.console.print(f"step {state.step:>6}  epoch {state.epoch:>3}  {text}")
        else:
            self.console.print(
                f"step {state.step:>6}  epoch {state.epoch:>3}  {text}",
                highlight=False,
                soft_wrap=True,
            )

    def on_fit_end(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.step, info=self._info(state))
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
