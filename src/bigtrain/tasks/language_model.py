"""Next-token prediction: the model returns (logits, loss) for (x, y) token windows."""

from __future__ import annotations

import math

import torch
from torch import nn

from bigtrain.core.task import StepOutput, Task


class LanguageModelTask(Task):
    """Mean cross-entropy per token; ``n`` counts tokens. Logs the MoE auxiliary loss if any.

    The model's ``forward(idx, targets)`` returns ``(logits, loss)`` (GPT, RNNLM), so the loss is
    computed where the model can fuse it; the logits are not kept (they are B*T*vocab floats).
    """

    monitor = "loss"
    monitor_mode = "min"
    counts_tokens = True

    def loss(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        _, loss = model(x, y)
        out = StepOutput(loss, y.numel())
        aux = getattr(model, "last_aux_loss", None)
        if isinstance(aux, torch.Tensor):
            out.extras["aux_loss"] = aux.detach()
            counts = getattr(model, "last_expert_counts", None)
            if isinstance(counts, torch.Tensor) and counts.numel():
                share = counts.float() / counts.sum().clamp(min=1)  # expert utilisation
                for i, v in enumerate(share):
                    out.extras[f"expert{i}_share"] = v
        return out

    def derived_metrics(self, loss: float) -> dict[str, float]:
        return {"perplexity": math.exp(min(loss, 50.0))}
