"""The events a Callback can handle. The loop, as pseudocode (see loop.py for the real thing)::

    SETUP                               # once, before anything (also on resume)
    FIT_START
    while not done:
        EPOCH_START
        for batch in train_loader:
            BATCH_START
            for micro_batch in split(batch, grad_accum):
                loss = task.loss(model, micro_batch) * share   # strategy.backward(loss)
                AFTER_FORWARD                  # state.output holds the StepOutput
            AFTER_BACKWARD                     # gradients are complete (health checks look here)
            clip gradients; set lr from the schedule; optimizer.step(); zero_grad
            AFTER_STEP                         # state.step was incremented
            if evaluation is due:
                EVAL_START; metrics = evaluate(val_loader); EVAL_END
            if state.should_stop: break
        EPOCH_END
    FIT_END

CHECKPOINT fires when a checkpoint was written (state.last_checkpoint holds its path).
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    SETUP = "setup"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    AFTER_FORWARD = "after_forward"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    EVAL_START = "eval_start"
    EVAL_END = "eval_end"
    EPOCH_END = "epoch_end"
    CHECKPOINT = "checkpoint"
    FIT_END = "fit_end"

    @property
    def hook(self) -> str:
        """Name of the Callback method that handles this event, e.g. ``on_after_step``."""
        return f"on_{self.value}"
