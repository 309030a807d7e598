"""The plan of a run before it runs: parameters, FLOPs, memory per device, time, cost, budget.

``make_plan(subject, settings)`` takes any object shaped like ``PlanSubject`` (the recipe adapter
``bigtrain.build.describe.DescribedRun`` is one): a model on the meta device and the run's
batch geometry. Everything is counted or derived; nothing is allocated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bigtrain.errors import ConfigError, did_you_mean
from bigtrain.plan import chinchilla
from bigtrain.plan.counting import (
    StepTrace,
    matmul_weight_elements,
    parameter_counts,
    trace_step,
)
from bigtrain.plan.hardware import Hardware
from bigtrain.plan.memory import OPTIMIZER_STATES, MemoryPlan, optimizer_state_bytes, plan_memory
from bigtrain.plan.timing import StepTime, step_time

STRATEGIES = ("single", "ddp", "fsdp")


class PlanSubject(Protocol):
    """What the planner needs to know about a run (``DescribedRun`` provides it)."""

    model: nn.Module  # on the meta device
    batch_size: int  # global batch of one optimizer step
    grad_accum: int
    steps: int
    tokens_per_example: int  # 1 unless a language model
    evaluations: int  # evaluations during the run (the final one included)
    eval_examples: int  # examples one evaluation runs forward

    @property
    def is_language_model(self) -> bool: ...
    def example_batch(self, n: int) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> Any: ...
    def blocks(self) -> list[nn.Module] | None: ...


@runtime_checkable
class HasFlopsFormula(Protocol):
    """A model with its own analytic FLOPs count (GPT: 6N + 12 L d T, PaLM appendix B)."""

    def flops_per_token(self) -> int: ...


@dataclass(frozen=True)
class Settings:
    """Where and how the run would go (the ``bigtrain plan`` options)."""

    hardware: Hardware
    devices_per_node: int = 1
    nodes: int = 1
    strategy: str = "single"
    precision: str = "fp32"
    activation_checkpointing: bool = False
    optimizer: str = "adamw"
    momentum: float | None = None
    mfu: float | None = None  # None: the hardware's default
    mfu_source: str = "default"
    eval_seconds: float | None = None  # one evaluation, measured (--calibrate); else from FLOPs
    price_per_hour: float | None = None  # per device
    budget_flops: float | None = None
    budget_hours: float | None = None

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes


@dataclass
class Budget:
    """A compute budget and how Chinchilla would spend it, next to what the recipe does."""

    flops: float
    optimal: chinchilla.Allocation
    rule_of_thumb: chinchilla.Allocation
    recipe: chinchilla.Allocation  # the recipe's own N, D and 6ND
    affordable_steps: int  # the recipe's steps that fit in the budget


@dataclass
class Plan:
    """Everything ``bigtrain plan`` prints (``as_dict`` for --json)."""

    parameters: dict[str, int]
    total_parameters: int
    trainable_parameters: int
    non_embedding_parameters: int
    batch_size: int  # global batch
    micro_batch: int  # examples per device per forward/backward
    trace: StepTrace  # at the micro-batch
    flops_per_step: float  # the whole global batch, forward + backward
    formula_flops_per_token: float | None
    memory: MemoryPlan  # the chosen strategy and activation checkpointing setting
    memory_by_strategy: dict[str, dict[str, MemoryPlan]]  # strategy -> "plain"/"checkpointed"
    fits: bool
    mfu: float
    mfu_source: str
    step: StepTime
    run_seconds: float
    units_per_step: int  # tokens (language models) or examples of one global batch
    units_per_second: float
    unit: str
    cost: float | None
    settings: Settings
    steps: int
    budget: Budget | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def flops_per_unit(self) -> float:
        """Training FLOPs per token (language models) or per example."""
        return self.flops_per_step / self.units_per_step

    def per_step(self, micro_batch_flops: float) -> float:
        """A count traced at the micro-batch, scaled to the global batch."""
        return micro_batch_flops * self.batch_size / self.micro_batch


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters minus lookup tables that do no matmul work (a table tied to an output
    layer counts as that layer, like nanoGPT's ``get_num_params``)."""
    matmul = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tables = {
        id(m.weight): m.weight.numel()
        for m in model.modules()
        if isinstance(m, nn.Embedding) and id(m.weight) not in matmul
    }
    return sum(p.numel() for p in model.parameters()) - sum(tables.values())


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    """Apply ``fn`` to every tensor of a tensor, tuple, list or dict batch."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(tree_map(fn, b) for b in batch)
    if isinstance(batch, dict):
        return {k: tree_map(fn, v) for k, v in batch.items()}
    return batch


def _blocks_of(copy_: nn.Module, original: nn.Module, blocks: list[nn.Module] | None) -> Any:
    """The blocks of a deep copy, in the order ``blocks`` lists the original's."""
    if not blocks:
        return blocks
    names = {id(m): name for name, m in original.named_modules()}
    return [copy_.get_submodule(names[id(b)]) for b in blocks]


def _largest_block(blocks: list[nn.Module] | None) -> int:
    return max((sum(p.numel() for p in b.parameters()) for b in blocks or ()), default=0)


def make_plan(
    subject: PlanSubject,
    settings: Settings,
    trace_fn: Callable[..., StepTrace] = trace_step,
    trace: StepTrace | None = None,
) -> Plan:
    """Count, derive and price one run of ``subject`` under ``settings``.

    ``trace`` reuses the trace of an earlier plan of the same subject, devices and precision
    (a re-plan with a measured MFU need not trace again).
    """
    s = settings
    model = subject.model
    if s.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {s.strategy}")
    if s.strategy == "single" and s.devices > 1:
        raise ConfigError(
            f"--strategy single runs on one device, but {s.devices} were asked for; "
            "use --strategy ddp or fsdp"
        )
    if s.optimizer not in OPTIMIZER_STATES:
        raise ConfigError(
            f"the planner does not know what optimizer '{s.optimizer}' keeps"
            f"{did_you_mean(s.optimizer, OPTIMIZER_STATES)}; it knows: "
            f"{', '.join(OPTIMIZER_STATES)}"
        )
    blocks = subject.blocks()
    if s.strategy == "fsdp" and not blocks:
        raise ConfigError(
            f"fsdp shards a model block by block and '{type(model).__name__}' has no blocks; "
            "use --strategy ddp"
        )
    if s.activation_checkpointing and not blocks:
        raise ConfigError(
            f"activation checkpointing recomputes blocks and '{type(model).__name__}' has none"
        )
    devices = s.devices
    if subject.batch_size % devices:
        raise ConfigError(
            f"data.batch_size {subject.batch_size} is not a multiple of the {devices} devices "
            "(the batch size is the global batch, split across them)"
        )
    local = subject.batch_size // devices
    micro = -(-local // subject.grad_accum)
    if trace is None or trace.batch_size != micro:
        trace = _trace(subject, s.precision, micro, blocks, trace_fn)
    flops_per_step = trace.flops * subject.batch_size / micro
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    opt_bytes = optimizer_state_bytes(s.optimizer, shapes, s.momentum)
    common = dict(
        parameters=total, trainable=trainable, optimizer_bytes=opt_bytes, precision=s.precision,
        matmul_weights=matmul_weight_elements(model), devices=devices,
        largest_block_parameters=_largest_block(blocks), overhead=s.hardware.overhead_bytes,
    )  # fmt: skip
    by_strategy: dict[str, dict[str, MemoryPlan]] = {}
    for name in STRATEGIES:
        if (name == "fsdp" and not blocks) or (name == "single" and devices > 1):
            continue
        by_strategy[name] = {}
        for label, activations in (("plain", trace.saved_bytes),
                                   ("checkpointed", trace.checkpointed_saved_bytes())):  # fmt: skip
            if label == "checkpointed" and not blocks:
                continue
            by_strategy[name][label] = plan_memory(
                activation_bytes=activations, strategy=name, **common
            )
    memory = by_strategy[s.strategy]["checkpointed" if s.activation_checkpointing else "plain"]
    if s.activation_checkpointing:
        flops_per_step += trace.forward_flops * subject.batch_size / micro  # one more forward
    mfu = s.mfu if s.mfu is not None else s.hardware.default_mfu
    peak = s.hardware.peak(s.precision)
    link = s.hardware.network if s.nodes > 1 else s.hardware.interconnect
    if s.hardware.measured and devices > 1:
        peak /= devices  # processes on one CPU share its cores
    timing = step_time(flops_per_step, peak, mfu, devices, trainable * 4, link, s.strategy)
    per_example_forward = trace.forward_flops / micro
    eval_flops = subject.evaluations * subject.eval_examples * per_example_forward
    eval_seconds = eval_flops / devices / (peak * mfu)
    if s.eval_seconds is not None:
        eval_seconds = subject.evaluations * s.eval_seconds
    run_seconds = subject.steps * timing.seconds + eval_seconds
    units = subject.batch_size * subject.tokens_per_example
    unit = "tokens" if subject.is_language_model else "examples"
    cost = None
    if s.price_per_hour is not None:
        cost = run_seconds / 3600 * devices * s.price_per_hour
    formula = None
    if isinstance(model, HasFlopsFormula):
        formula = float(model.flops_per_token())
    plan = Plan(
        parameters=parameter_counts(model), total_parameters=total,
        trainable_parameters=trainable, non_embedding_parameters=non_embedding_parameters(model),
        batch_size=subject.batch_size, micro_batch=micro, trace=trace, flops_per_step=flops_per_step,
        formula_flops_per_token=formula, memory=memory, memory_by_strategy=by_strategy,
        fits=memory.total <= s.hardware.memory_bytes, mfu=mfu, mfu_source=s.mfu_source,
        step=timing, run_seconds=run_seconds, units_per_step=units,
        units_per_second=units / timing.seconds,
        unit=unit, cost=cost, settings=s, steps=subject.steps,
    )  # fmt: skip
    if s.budget_flops is not None or s.budget_hours is not None:
        plan.budget = _budget(plan, subject, peak, mfu, devices)
    return plan


def _trace(
    subject: PlanSubject,
    precision: str,
    micro: int,
    blocks: list[nn.Module] | None,
    trace_fn: Callable[..., StepTrace],
) -> StepTrace:
    """Trace one micro-batch, in the compute precision."""
    model, batch = subject.model, subject.example_batch(micro)
    if precision in ("bf16", "fp16"):
        # autocast runs matmuls and most activations in the low precision: trace a low-precision
        # copy (free on the meta device). Autocast keeps norms, softmax and the loss in fp32,
        # so this slightly undercounts those.
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        copied = copy.deepcopy(model).to(low)
        batch = tree_map(lambda t: t.to(low) if t.is_floating_point() else t, batch)
        model, blocks = copied, _blocks_of(copied, model, blocks)
    return trace_fn(model, batch, subject.loss, micro, blocks)


def _budget(plan: Plan, subject: PlanSubject, peak: float, mfu: float, devices: int) -> Budget:
    s = plan.settings
    if s.budget_flops is not None:
        flops = s.budget_flops
    else:
        flops = float(s.budget_hours) * 3600 * devices * peak * mfu
    if flops < plan.flops_per_step:
        given = f"{s.budget_flops:.3g} FLOPs" if s.budget_flops else f"{s.budget_hours:g} hours"
        raise ConfigError(
            f"the budget ({given}, {flops:.3g} FLOPs) is less than one step of this recipe "
            f"({plan.flops_per_step:.3g} FLOPs); raise the budget or shrink the model or batch"
        )
    n = float(plan.non_embedding_parameters)
    tokens = float(subject.steps * subject.batch_size * subject.tokens_per_example)
    return Budget(
        flops=flops,
        optimal=chinchilla.compute_optimal(flops),
        rule_of_thumb=chinchilla.rule_of_thumb(flops),
        recipe=chinchilla.Allocation(6 * n * tokens, n, tokens),
        affordable_steps=int(flops // plan.flops_per_step),
    )
