"""The recipe's ``finetune:`` section: freezing, gradual unfreezing and per-group learning rates
(docs/transfer.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FinetuneConfig(BaseModel):
    """How a (pretrained) model is fine-tuned.

    Attributes:
        freeze: glob patterns on parameter names (``net._blocks.*``, ``bert.embeddings.*``);
            matching parameters never train. Each pattern must match at least one parameter.
        freeze_blocks: freeze the model's first N blocks (input side). The model says what its
            blocks are (``blocks``): EfficientNet-Lite0's stem, 16 MBConv blocks and conv head
            (18), MiniLM's embeddings and 6 layers (7), a bigtrain GPT's or encoder's
            transformer blocks. ``-1`` = all of them.
        unfreeze_every: gradual unfreezing (ULMFiT): every K steps the top-most still frozen
            block of ``freeze_blocks`` starts training. Pattern-frozen parameters stay frozen.
        lr_scales: ``{glob: scale}``; a parameter's learning rate is the schedule's times the
            scale of the first pattern (in recipe order) its name matches, 1.0 if none does
            (e.g. ``{"net.*": 0.1}``: backbone at a tenth, head at the full rate).
        freeze_norm_stats: batch-norm layers whose parameters are all frozen run in inference
            mode while training, so their running statistics stay as pretrained (Keras' rule);
            false lets them normalise with batch statistics and update the running ones.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    freeze: list[str] = Field(default_factory=list)
    freeze_blocks: int | None = Field(None, ge=-1)
    unfreeze_every: int | None = Field(None, ge=1)
    lr_scales: dict[str, float] = Field(default_factory=dict)
    freeze_norm_stats: bool = True

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.unfreeze_every is not None and not self.freeze_blocks:
            raise ValueError(
                "finetune.unfreeze_every unfreezes the blocks of finetune.freeze_blocks; "
                "set freeze_blocks (e.g. -1: all blocks) too"
            )
        bad = {k: v for k, v in self.lr_scales.items() if not v > 0}
        if bad:
            raise ValueError(f"finetune.lr_scales: scales must be > 0, got {bad}")
        return self
