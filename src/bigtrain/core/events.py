"""The events a Callback can handle. The loop, as pseudocode (see loop.py for the real thing)::

    SETUP                               # once, before anything (also on resume)
    FIT_START
    while not done:
        for batch in train_loader:
            EPOCH_START                        # at the first batch of an epoch
            BATCH_START
            for micro_batch in split(batch, grad_accum):
                task.forward_backward(model, micro_batch)   # forward, then strategy.backward
                MICRO_BATCH_END                # state.output holds this micro-batch's StepOutput
            AFTER_BACKWARD                     # gradients are complete and true-scale
            clip gradients; set lr from the schedule; optimizer.step(); zero_grad
            AFTER_STEP                         # state.step was incremented
            if the epoch's data is used up: state.epoch += 1
            if evaluation is due (eval_every, epoch end or last step):
                EVAL_START; metrics = evaluate(val_loader); EVAL_END
            if the epoch ended: EPOCH_END
            STEP_END                           # the step is complete; checkpoints are taken here
            if state.should_stop or a limit is reached: stop
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
    MICRO_BATCH_END = "micro_batch_end"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    EVAL_START = "eval_start"
    EVAL_END = "eval_end"
    EPOCH_END = "epoch_end"
    STEP_END = "step_end"
    CHECKPOINT = "checkpoint"
    FIT_END = "fit_end"

    @property
    def hook(self) -> str:
        """Name of the Callback method that handles this event, e.g. ``on_after_step``."""
        return f"on_{self.value}"
