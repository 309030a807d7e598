"""Knowledge distillation (Hinton et al. 2015): plain loss functions plus ``DistillTask``.

``distillation_loss`` mixes the teacher's softened distribution with the labels' loss and works
on any logits (classifiers ``(B, C)``, language models ``(B, T, V)`` averaged per token).
``DistillTask`` wraps the run's task: in training it runs the frozen teacher once per
micro-batch and returns the mixed loss; in evaluation it is the inner task unchanged, so the
metrics are the student's own. The teacher is held by the task, never by the student, so it is
neither optimized nor saved in the student's checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.core.callback import Callback
from bigtrain.core.task import StepOutput, Task, TaskWrapper
from bigtrain.errors import ConfigError

HardLoss = torch.Tensor | Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``: summed over classes, averaged over rows.

    Rows are examples for ``(B, C)`` logits and tokens for ``(B, T, V)``; ``mask`` (the shape of
    the logits without the class dimension) keeps only the rows where it is True. The T^2
    factor keeps the soft term's gradients the same size whatever the temperature. Computed in
    float32 (bf16 log-softmax over a large vocabulary loses the small probabilities).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"distill: the student's logits have shape {tuple(student_logits.shape)} but the "
            f"teacher's {tuple(teacher_logits.shape)}"
        )
    width = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, width) / temperature
    t = teacher_logits.float().reshape(-1, width) / temperature
    if mask is not None:
        keep = mask.reshape(-1)
        s, t = s[keep], t[keep]
    if s.shape[0] == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    kl = F.kl_div(
        F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True
    )
    return kl * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    temperature: float,
    alpha: float,
    hard_loss: HardLoss,
    ignore_index: int = -1,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * hard_loss``.

    Args:
        student_logits / teacher_logits: ``(B, C)`` or ``(B, T, V)``, the same shape.
        targets: the labels; integer targets equal to ``ignore_index`` (padding tokens) are left
            out of the soft term as the hard cross-entropy leaves them out. May be None.
        temperature: T > 0.
        alpha: weight of the soft term in [0, 1]; with 0 the result is ``hard_loss`` exactly.
        hard_loss: the label loss already computed (a tensor), or a function
            ``(student_logits, targets) -> loss``.
    """
    if not temperature > 0:
        raise ConfigError(f"distill.temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha}")
    hard = hard_loss if isinstance(hard_loss, torch.Tensor) else hard_loss(student_logits, targets)
    if alpha == 0:
        return hard
    mask = target_mask(student_logits, targets, ignore_index)
    soft = soft_target_loss(student_logits, teacher_logits, temperature, mask)
    return alpha * soft + (1.0 - alpha) * hard


def target_mask(logits: torch.Tensor, targets: Any, ignore_index: int = -1) -> torch.Tensor | None:
    """True where an integer target is not ``ignore_index`` (None when the targets are not one
    label per row of ``logits``)."""
    if (
        isinstance(targets, torch.Tensor)
        and not targets.is_floating_point()
        and tuple(targets.shape) == tuple(logits.shape[:-1])
    ):
        return targets != ignore_index
    return None


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or an output object's ``.logits``
    (bigtrain's LMOutput, Hugging Face model outputs)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"distill: the teacher returned {type(output).__name__}, neither logits nor an "
            "output with .logits"
        )
    return logits


def module_width(module: nn.Module) -> int | None:
    """The feature width a module outputs (last dimension; channels for convolutions), read from
    its own layer or, for a block, from the last layer inside it with a known width."""
    candidates = [module, *list(module.modules())[1:][::-1]]  # a block: its last layer
    for m in candidates:
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, nn.Embedding):
            return m.embedding_dim
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            return int(m.normalized_shape[-1])
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.out_channels
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            return m.num_features
    return None


def _features(h: torch.Tensor) -> torch.Tensor:
    """Convolution maps (B, C, ...) with channels last, so the projection acts on channels."""
    return h.movedim(1, -1) if h.ndim >= 4 else h


class HiddenStateMatch(nn.Module):
    """MSE between a student layer's output, projected to the teacher's width, and the teacher's.

    The projection (learned, trained with the student) is the identity when the widths agree.
    """

    def __init__(self, student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.projection: nn.Module = (
            nn.Identity()
            if student_width == teacher_width
            else nn.Linear(student_width, teacher_width, bias=False)
        )

    def forward(self, student_h: torch.Tensor, teacher_h: torch.Tensor) -> torch.Tensor:
        s, t = _features(student_h), _features(teacher_h)
        if isinstance(self.projection, nn.Linear):
            s = self.projection(s.to(self.projection.weight.dtype))
        if s.shape != t.shape:
            raise ConfigError(
                f"distill: the matched layers' outputs do not line up: student "
                f"{tuple(student_h.shape)} (projected {tuple(s.shape)}), teacher "
                f"{tuple(teacher_h.shape)}; choose layers with the same positions"
            )
        return F.mse_loss(s.float(), t.float())


class _Capture:
    """A forward hook keeping a module's latest output while ``active``."""

    def __init__(self, module: nn.Module) -> None:
        self.active = False
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.active:
            self.value = output[0] if isinstance(output, (tuple, list)) else output

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise ConfigError("distill: a matched layer did not run in the forward pass")
        return value


def find_module(model: nn.Module, name: str, what: str) -> nn.Module:
    """``model``'s submodule ``name`` (through a DDP/compile wrapper's ``module``), or a
    ConfigError listing a few valid names."""
    for root in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if isinstance(root, nn.Module):
            try:
                return root.get_submodule(name)
            except AttributeError:
                continue
    names = [n for n, _ in model.named_modules() if n][:8]
    raise ConfigError(f"distill.{what} '{name}' is not a module of the model (e.g. {names})")


class DistillTask(TaskWrapper):
    """The inner task's loss mixed with a frozen teacher's soft targets, in training only.

    Args:
        inner: the run's task; its ``loss`` must return the student's ``logits``.
        teacher: the teacher model (put in eval mode with gradients off here).
        temperature, alpha: see ``distillation_loss``.
        hidden: optional ``(HiddenStateMatch, student module, teacher module, weight)``.
        teacher_input: turns a batch into the teacher's input (default: ``batch[0]``).
    """

    def __init__(
        self,
        inner: Task,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        hidden: tuple[HiddenStateMatch, nn.Module, nn.Module, float] | None = None,
        teacher_input: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(inner)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.teacher_input = teacher_input or (lambda batch: batch[0])
        self.match = None
        if hidden is not None:
            self.match, student_layer, teacher_layer, self.hidden_weight = hidden
            self._student_h, self._teacher_h = _Capture(student_layer), _Capture(teacher_layer)

    @torch.no_grad()
    def teacher_logits(self, batch: Any) -> torch.Tensor:
        """The teacher's logits for ``batch`` (eval mode, no autograd graph)."""
        if self.teacher.training:  # something called .train() on it: dropout must stay off
            self.teacher.eval()
        return output_logits(self.teacher(self.teacher_input(batch)))

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        if not model.training:  # evaluation: the student's own loss and metrics
            return self.inner.loss(model, batch)
        matching = self.match is not None and self.hidden_weight > 0
        if matching:
            self._student_h.active = self._teacher_h.active = True
        try:
            out = self.inner.loss(model, batch)
            if out.logits is None:
                raise ConfigError(
                    f"distill: task {type(self.inner).__name__} does not return the student's "
                    "logits (StepOutput.logits)"
                )
            teacher = self.teacher_logits(batch)  # once per micro-batch
        finally:
            if matching:
                self._student_h.active = self._teacher_h.active = False
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if self.alpha == 0:
            mixed = out.loss
        else:
            mask = target_mask(out.logits, targets)
            soft = soft_target_loss(out.logits, teacher, self.temperature, mask)
            mixed = self.alpha * soft + (1.0 - self.alpha) * out.loss
            out.extras["soft_loss"] = soft.detach()
        out.extras["hard_loss"] = out.loss.detach()
        if matching:
            h = self.match(self._student_h.take(), self._teacher_h.take())
            mixed = mixed + self.hidden_weight * h
            out.extras["hidden_loss"] = h.detach()
        return dataclasses.replace(out, loss=mixed)


class DistillState(Callback):
    """Saves the hidden-state projection with the run's checkpoints, so a resumed run continues
    with the projection it had learned (the projection is not part of the student)."""

    def __init__(self, match: HiddenStateMatch) -> None:
        self.match = match

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().tolist() for k, v in self.match.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = self.match.state_dict()
        self.match.load_state_dict(
            {k: torch.tensor(v, dtype=own[k].dtype, device=own[k].device) for k, v in state.items()}
        )
