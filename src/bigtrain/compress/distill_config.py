"""The recipe's ``distill:`` section: learn from a teacher's soft targets (docs/distillation.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DistillConfig(BaseModel):
    """Knowledge distillation (Hinton et al. 2015) from a trained teacher.

    The student's training loss becomes
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * hard_loss``
    (+ ``hidden_weight * MSE(proj(h_student), h_teacher)`` when hidden states are matched).
    Evaluation reports the student's own metrics only.

    Attributes:
        teacher: a trained run folder (its best checkpoint is the teacher).
        teacher_model: instead of a run folder, a model section (``{name: ..., <fields>}``) built
            through the model registry, e.g. a registered pretrained model.
        checkpoint: which checkpoint of the teacher run to load.
        temperature: softening temperature T (> 0) of both distributions.
        alpha: weight of the soft-target term in [0, 1]; 0 trains on the labels alone.
        hidden_weight: weight of the optional hidden-state MSE term (0: off).
        student_layer / teacher_layer: module names (``model.named_modules()``) whose outputs
            are matched; a learned linear projection maps the student's width to the teacher's
            when they differ.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str | None = None
    teacher_model: dict[str, Any] | None = None
    checkpoint: Literal["best", "latest"] = "best"
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    hidden_weight: float = Field(0.0, ge=0.0)
    student_layer: str | None = None
    teacher_layer: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if (self.teacher is None) == (self.teacher_model is None):
            raise ValueError(
                "set exactly one of distill.teacher (a run folder) and distill.teacher_model "
                "(a model section)"
            )
        if self.teacher_model is not None and "name" not in self.teacher_model:
            raise ValueError("distill.teacher_model needs a name (a registered model)")
        if self.hidden_weight > 0 and not (self.student_layer and self.teacher_layer):
            raise ValueError(
                "distill.hidden_weight > 0 needs distill.student_layer and distill.teacher_layer "
                "(module names to match)"
            )
        return self
