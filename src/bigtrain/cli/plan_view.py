"""How ``bigtrain plan`` shows a Plan: rich tables, or one JSON object."""

from __future__ import annotations

from typing import Any

from bigtrain.plan.planner import Plan

_ROWS = {"weights": "weights", "gradients": "grads", "optimizer": "optimizer",
         "autocast_copies": "autocast", "activations": "activations", "communication": "comm",
         "overhead": "overhead", "total": "total"}  # fmt: skip


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, 3 significant digits)."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6),
                          ("k", 1e3)):  # fmt: skip
        if abs(n) >= scale:
            return f"{n / scale:.3g}{prefix}{unit}"
    return f"{n:.3g}{unit}"


def size(n: float) -> str:
    """Bytes in binary units: 1536 -> '1.50 KiB'."""
    for prefix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def print_plan(plan: Plan, name: str, model_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    s, hw = plan.settings, plan.settings.hardware
    console = Console()
    console.print(
        f"[bold]{name}[/bold]: {model_name}, {human(plan.total_parameters)} parameters on "
        f"{s.devices} x {hw.description} ({s.strategy}, {s.precision}"
        f"{', activation checkpointing' if s.activation_checkpointing else ''})",
        highlight=False,
    )
    params = Table(title="Parameters (exact, shared tensors once)")
    params.add_column("module type")
    params.add_column("parameters", justify="right")
    for kind, n in plan.parameters.items():
        params.add_row(kind, f"{n:,}")
    params.add_row("[bold]total[/bold]", f"[bold]{plan.total_parameters:,}[/bold]")
    params.add_row("non-embedding", f"{plan.non_embedding_parameters:,}")
    console.print(params)

    t = plan.trace
    flops = Table(title="FLOPs (torch.utils.flop_counter on the meta device)")
    flops.add_column("")
    flops.add_column(f"per {plan.unit[:-1]}", justify="right")
    flops.add_column("per step", justify="right")
    for label, count in (("forward", plan.per_step(t.forward_flops)),
                         ("backward", plan.per_step(t.backward_flops)),
                         ("training step", plan.flops_per_step)):  # fmt: skip
        flops.add_row(label, human(count / plan.units_per_step), human(count))
    if plan.formula_flops_per_token is not None:
        ratio = plan.per_step(t.flops) / plan.units_per_step / plan.formula_flops_per_token
        flops.add_row("6N + 12 L d T formula", human(plan.formula_flops_per_token),
                      f"counted / formula = {ratio:.3f}")  # fmt: skip
    console.print(flops)

    mem = Table(title=f"Peak memory per device (micro-batch {plan.micro_batch})")
    mem.add_column("")
    columns = [
        (st, label)
        for st, plans in plan.memory_by_strategy.items()
        for label in plans
        if (st == "single") == (s.devices == 1)  # other strategies only shard over several
    ]
    for st, label in columns:
        chosen = st == s.strategy and (label == "checkpointed") == s.activation_checkpointing
        head = st + (" + AC" if label == "checkpointed" else "")
        mem.add_column(f"[bold]{head} *[/bold]" if chosen else head, justify="right")
    for row, label in _ROWS.items():
        cells = [size(plan.memory_by_strategy[st][lb].as_dict()[row]) for st, lb in columns]
        mem.add_row(label, *cells)
    console.print(mem)
    verdict = "fits" if plan.fits else "[red]does NOT fit[/red]"
    console.print(
        f"* chosen: {size(plan.memory.total)} of {size(hw.memory_bytes)} per device: {verdict}",
        highlight=False,
    )

    time = Table(title="Time")
    time.add_column("")
    time.add_column("", justify="right")
    peak = hw.peak(s.precision)
    time.add_row("peak per device", f"{human(peak, 'FLOP/s')} ({s.precision})")
    time.add_row("MFU", f"{plan.mfu:.3f} ({plan.mfu_source})")
    time.add_row("step", f"{duration(plan.step.seconds)} ({plan.step.bound}-bound)")
    if plan.step.communication_s:
        time.add_row("  gradient communication", duration(plan.step.communication_s))
    time.add_row(f"{plan.unit}/s", human(plan.units_per_second))
    time.add_row(f"run ({plan.steps:,} steps + evaluation)", duration(plan.run_seconds))
    if plan.cost is not None:
        time.add_row("cost", f"{plan.cost:,.2f} ({s.devices} devices x {s.price_per_hour:g}/h)")
    console.print(time)
    if hw.measured and plan.mfu_source == "default":
        console.print(
            "note: the CPU's MFU is a stated guess; --calibrate measures it with a few steps",
            highlight=False,
        )
    if plan.budget is not None:
        _print_budget(console, plan)


def _print_budget(console: Any, plan: Plan) -> None:
    from rich.table import Table

    b = plan.budget
    table = Table(title=f"Budget {human(b.flops, 'FLOP')} (Chinchilla, C = 6ND)")
    for col in ("", "parameters", "tokens", "tokens/param", "Chinchilla loss"):
        table.add_column(col, justify="left" if not col else "right")
    for label, a in (("compute-optimal (fitted law)", b.optimal),
                     ("~20 tokens per parameter", b.rule_of_thumb),
                     ("this recipe (non-embedding N)", b.recipe)):  # fmt: skip
        table.add_row(label, human(a.parameters), human(a.tokens), f"{a.tokens_per_parameter:.3g}",
                      f"{a.loss:.3f}")  # fmt: skip
    console.print(table)
    off = b.recipe.parameters / b.optimal.parameters
    console.print(
        f"the recipe's model is {off:.3g}x the compute-optimal size for this budget; the budget "
        f"pays for {b.affordable_steps:,} of its steps ({plan.steps:,} planned). Loss values "
        "are on the paper's data (MassiveText); sizes and ratios are what transfer.",
        highlight=False,
    )


def plan_json(plan: Plan, name: str) -> dict[str, Any]:
    """The plan as plain JSON values."""
    s, t = plan.settings, plan.trace
    out: dict[str, Any] = {
        "recipe": name,
        "hardware": s.hardware.name,
        "devices": s.devices,
        "strategy": s.strategy,
        "precision": s.precision,
        "activation_checkpointing": s.activation_checkpointing,
        "parameters": {
            "total": plan.total_parameters,
            "trainable": plan.trainable_parameters,
            "non_embedding": plan.non_embedding_parameters,
            "by_module_type": plan.parameters,
        },  # fmt: skip
        "micro_batch": plan.micro_batch,
        "flops": {
            "forward_per_micro_batch": t.forward_flops,
            "backward_per_micro_batch": t.backward_flops,
            "per_step": plan.flops_per_step,
            f"per_{plan.unit[:-1]}": plan.flops_per_unit,
            "formula_per_token": plan.formula_flops_per_token,
        },
        "memory_bytes": plan.memory.as_dict(),
        "memory_by_strategy": {
            st: {label: m.as_dict() for label, m in plans.items()}
            for st, plans in plan.memory_by_strategy.items()
        },
        "device_memory_bytes": s.hardware.memory_bytes,
        "fits": plan.fits,
        "mfu": plan.mfu,
        "mfu_source": plan.mfu_source,
        "step_seconds": plan.step.seconds,
        "communication_seconds": plan.step.communication_s,
        "steps": plan.steps,
        "run_seconds": plan.run_seconds,
        f"{plan.unit}_per_second": plan.units_per_second,
        "cost": plan.cost,
    }
    if plan.budget is not None:
        b = plan.budget
        out["budget"] = {
            "flops": b.flops,
            "affordable_steps": b.affordable_steps,
            **{
                key: {"parameters": a.parameters, "tokens": a.tokens, "loss": a.loss}
                for key, a in (
                    ("compute_optimal", b.optimal),
                    ("rule_of_thumb", b.rule_of_thumb),
                    ("recipe", b.recipe),
                )  # fmt: skip
            },
        }
    return out
