"""The recipe's ``lora:`` section: low-rank adapters through peft (docs/transfer.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoraConfig(BaseModel):
    """LoRA fine-tuning: only the adapters train; the base weights stay bitwise as they were.

    Attributes:
        r: adapter rank (>= 1).
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout on each adapter's input while training.
        target_modules: last names of the Linear layers to adapt (GPT: ``c_attn``, ``c_proj``,
            ``c_fc``; SmolLM2: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``,
            ``up_proj``, ``down_proj``); null = every Linear layer except the output head.
        base_run: a run folder whose best weights the model starts from before the adapters
            are added (bigtrain's own models, e.g. a trained shakespeare-char run; its model
            section and tokenizer must match this recipe's). Pretrained models (``smollm2``)
            load their own weights and need none.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1)
    base_run: str | None = None
