"""Next-token prediction: the model returns an LMOutput for (x, y) token windows."""

from __future__ import annotations

import math

from torch import nn

from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import ConfigError

#: metrics a language model reports besides its loss
LM_METRICS = ("perplexity",)


class LanguageModelTask(Task):
    """Mean cross-entropy per token; ``n`` counts tokens.

    The model's ``forward(idx, targets)`` returns an LMOutput, so the loss is computed where the
    model can fuse it; the logits are not kept (they are B*T*vocab floats). Training minimises
    the model's objective (cross-entropy plus the MoE load-balancing term); evaluation reports
    the cross-entropy as the loss and the auxiliary loss as its own metric, so MoE and dense
    models compare on the same number.
    """

    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, metrics: list[str] | None = None) -> None:
        unknown = [m for m in metrics or [] if m not in LM_METRICS]
        if unknown:
            raise ConfigError(
                f"task.metrics: {', '.join(map(repr, unknown))} not available for language "
                f"models; they report loss and {', '.join(LM_METRICS)}"
            )
        self.metric_names = list(LM_METRICS if metrics is None else metrics)

    def loss(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        out = model(x, y)
        loss = out.loss if model.training else out.cross_entropy
        step = StepOutput(loss, y.numel(), logits=out.logits)  # for distillation
        if out.aux_loss is not None:
            step.extras["aux_loss"] = out.aux_loss.detach()
            if model.training:
                step.extras["cross_entropy"] = out.cross_entropy.detach()
            counts = out.expert_counts
            if counts is not None and counts.numel():
                share = counts.float() / counts.sum().clamp(min=1)  # expert utilisation
                for i, v in enumerate(share):
                    step.extras[f"expert{i}_share"] = v
        return step

    def derived_metrics(self, loss: float) -> dict[str, float]:
        if "perplexity" not in self.metric_names:
            return {}
        return {"perplexity": math.exp(min(loss, 50.0))}
