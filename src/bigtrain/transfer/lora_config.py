"""The recipe's ``lora:`` section (being written, issue 9)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LoraConfig(BaseModel):
    """Being written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
