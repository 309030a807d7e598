"""Step arithmetic the loop relies on: micro-batch splits, the planned step count, and when a
checkpoint's run is finished. Plain functions, so builders and the run folder share them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bigtrain.core.state import BatchSource


def split_batch(batch: Any, parts: int) -> list[tuple[Any, float]]:
    """Split a batch along dim 0 into ``parts`` micro-batches with their share of the examples.

    Weighting each micro-batch's mean loss by its share makes accumulated gradients equal to the
    gradient of the whole batch's mean loss, even when the last micro-batch is smaller.
    """
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    n = first.shape[0]
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        if isinstance(batch, dict):
            micro = {k: v[lo:hi] for k, v in batch.items()}
        elif isinstance(batch, (tuple, list)):
            micro = type(batch)(b[lo:hi] for b in batch)
        else:
            micro = batch[lo:hi]
        out.append((micro, (hi - lo) / n))
    return out


def planned_steps(
    max_steps: int | None,
    max_epochs: int | None,
    train_data: BatchSource,
    batch_size_schedule: Callable[[int], int] | None = None,
) -> int:
    """Optimizer steps a run will take: max_steps, the steps of max_epochs epochs, or the fewer.

    With a batch-size schedule an epoch's step count changes as the batch grows, so the epochs
    are counted under the schedule (the LR schedule's horizon must be the real one).
    """
    if max_epochs is None:
        return int(max_steps)
    if batch_size_schedule is None:
        by_epochs = max_epochs * max(1, len(train_data))
    else:
        by_epochs = max(1, train_data.steps_in_epochs(max_epochs, batch_size_schedule))
    return by_epochs if max_steps is None else min(max_steps, by_epochs)


def finished_reason(
    saved: dict[str, Any], max_steps: int | None, max_epochs: int | None
) -> str | None:
    """Why a checkpoint's run cannot continue under these limits (None: it can)."""
    stop, step, epoch = saved.get("stop_reason", ""), saved.get("step", 0), saved.get("epoch", 0)
    if stop and stop != "completed":
        return f"it is finished ({stop}, at step {step}); nothing to resume"
    if (max_steps is not None and step >= max_steps) or (
        max_epochs is not None and epoch >= max_epochs
    ):
        return (
            f"it is finished: it reached step {step}, epoch {epoch}; raise trainer.max_steps "
            "or trainer.max_epochs to train further"
        )
    return None


__all__ = ["finished_reason", "planned_steps", "split_batch"]
