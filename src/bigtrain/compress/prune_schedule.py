"""The callback that updates pruning masks on the recipe's schedule (Zhu & Gupta 2017)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from bigtrain.compress.prune import cubic_sparsity, prune_unstructured, report_dict
from bigtrain.compress.prune_structured import prune_structured
from bigtrain.core.callback import Callback

if TYPE_CHECKING:
    from bigtrain.core.state import TrainState


class PruneSchedule(Callback):
    """Raise the sparsity of ``model`` along the cubic schedule at the end of due steps.

    Due steps: ``start + k * every`` up to ``end``, and ``end`` itself. The masks live in the
    model's state (``*_mask`` buffers), so checkpoints carry them and a resumed run continues
    from the same masks; the callback itself keeps no state. It runs before the checkpointer
    at STEP_END, so a checkpoint holds the masks of its own step.
    """

    def __init__(
        self,
        model: nn.Module,
        amount: float,
        start: int,
        end: int,
        every: int,
        initial: float = 0.0,
        structured: bool = False,
        scope: str = "global",
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.model, self.amount, self.start, self.end, self.every = model, amount, start, end, every
        self.initial, self.structured, self.scope, self.exclude = (
            initial,
            structured,
            scope,
            exclude,
        )
        self.last_step: int | None = None
        self.last_sparsity = 0.0

    def due(self, step: int) -> bool:
        if step == self.end:
            return True
        return self.start <= step < self.end and (step - self.start) % self.every == 0

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.amount, self.start, self.end, self.initial)

    def apply(self, step: int) -> None:
        sparsity = self.target(step)
        if sparsity > 0:
            if self.structured:
                prune_structured(self.model, sparsity, self.exclude)
            else:
                prune_unstructured(self.model, sparsity, self.scope, self.exclude)
        self.last_step, self.last_sparsity = step, sparsity

    def on_fit_start(self, state: TrainState) -> None:
        if state.step == 0 and self.due(0):  # a resumed run applied its step before saving
            self.apply(0)

    def on_step_end(self, state: TrainState) -> None:
        if self.due(state.step):
            self.apply(state.step)

    def summary(self) -> dict[str, Any]:
        """What summary.json records under ``pruning``."""
        return {
            "amount": self.amount,
            "structured": self.structured,
            "scope": "layer" if self.structured else self.scope,
            "schedule": {"start_step": self.start, "end_step": self.end, "every": self.every},
            **report_dict(self.model),
        }
