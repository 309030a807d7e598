"""The recipe's ``finetune:`` section (being written, issue 9)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FinetuneConfig(BaseModel):
    """Being written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

