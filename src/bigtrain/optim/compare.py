"""The textbook optimizer comparison: run optimizers on 2-D test functions and plot their paths.

The optimizers are the training ones (built through ``OPTIMIZERS``) acting on a single 2-element
float64 parameter ``(x, y)``. Functions and their global minima:

* ``quadratic``: ``0.5 * (x^2 + 10 y^2)``, an ill-conditioned bowl (condition number 10), min (0, 0)
* ``rosenbrock``: ``(1 - x)^2 + 100 (y - x^2)^2``, a curved flat valley, min (1, 1)
* ``beale``: ``(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``, min (3, 0.5)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bigtrain._io import atomic_write_bytes
from bigtrain.errors import ConfigError, did_you_mean
from bigtrain.optim.config import OptimConfig
from bigtrain.optim.optimizers import OPTIMIZERS, make_optimizer

# comparison names that are an optimizer plus settings rather than a registry entry
VARIANTS: dict[str, dict] = {
    "momentum": {"name": "sgd", "momentum": 0.9},
    "nesterov": {"name": "sgd", "momentum": 0.9, "nesterov": True},
}


@dataclass(frozen=True)
class Function2D:
    """A 2-D function ``f(p) -> scalar`` (``p`` has shape (2,)) with its known minimum."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    minimum: tuple[float, float]
    start: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    default_lrs: dict[str, float] = field(default_factory=dict)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        return self.fn(p)


def _quadratic(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p[0] ** 2 + 10.0 * p[1] ** 2)


def _rosenbrock(p: torch.Tensor) -> torch.Tensor:
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def _beale(p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


# default LRs: near the best of a grid 1e-4..1 after 500 steps from `start`, backed off where the
# best sits next to divergence (measured; see docs/optimizers.md)
FUNCTIONS: dict[str, Function2D] = {
    "quadratic": Function2D(
        "quadratic", _quadratic, (0.0, 0.0), (-4.0, 2.0), (-5.0, 5.0), (-3.0, 3.0),
        {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 1.0, "rmsprop": 0.05,
         "adam": 0.2, "adamw": 0.2, "lamb": 0.2, "lion": 0.05, "adafactor": 0.5},
    ),
    "rosenbrock": Function2D(
        "rosenbrock", _rosenbrock, (1.0, 1.0), (-1.2, 1.0), (-2.0, 2.0), (-1.0, 3.0),
        {"sgd": 2e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 1.0, "rmsprop": 0.01,
         "adam": 0.2, "adamw": 0.2, "lamb": 0.05, "lion": 0.01, "adafactor": 0.5},
    ),
    "beale": Function2D(
        "beale", _beale, (3.0, 0.5), (1.0, 1.5), (-0.5, 4.5), (-1.5, 2.0),
        {"sgd": 0.01, "momentum": 2e-3, "nesterov": 2e-3, "adagrad": 0.5, "rmsprop": 0.01,
         "adam": 0.1, "adamw": 0.1, "lamb": 0.01, "lion": 0.01, "adafactor": 0.02},
    ),
}  # fmt: skip


@dataclass
class Trajectory:
    """Where an optimizer went: ``points[i]`` and ``losses[i]`` after ``i`` steps (i = 0..steps)."""

    points: list[tuple[float, float]]
    losses: list[float]

    def steps_to(self, threshold: float) -> int | None:
        """First step at which the loss is below ``threshold``, or None."""
        return next((i for i, v in enumerate(self.losses) if v < threshold), None)


def get_function(name: str) -> Function2D:
    """Look a test function up; ConfigError with a suggestion when unknown."""
    if name not in FUNCTIONS:
        raise ConfigError(
            f"unknown test function '{name}'{did_you_mean(name, FUNCTIONS)}; "
            f"choose one of: {', '.join(FUNCTIONS)}"
        )
    return FUNCTIONS[name]


def default_lr(function: str | Function2D, optimizer_name: str) -> float:
    """The measured default LR of ``optimizer_name`` on ``function`` (1e-3 if none)."""
    fn = get_function(function) if isinstance(function, str) else function
    return fn.default_lrs.get(optimizer_name, 1e-3)


def optimizer_choices() -> list[str]:
    """Names accepted by ``run_on_function``: registered optimizers plus momentum/nesterov."""
    return OPTIMIZERS.names() + list(VARIANTS)


def _optim_config(optimizer_name: str, lr: float) -> OptimConfig:
    if optimizer_name in VARIANTS:
        return OptimConfig(lr=lr, **VARIANTS[optimizer_name])
    if optimizer_name not in OPTIMIZERS:
        choices = optimizer_choices()
        raise ConfigError(
            f"unknown optimizer '{optimizer_name}'{did_you_mean(optimizer_name, choices)}; "
            f"choose one of: {', '.join(choices)}"
        )
    return OptimConfig(name=optimizer_name, lr=lr)


def run_on_function(
    function: str | Function2D,
    optimizer_name: str,
    lr: float | None = None,
    steps: int = 500,
    start: tuple[float, float] | None = None,
) -> Trajectory:
    """Minimise ``function`` from ``start`` with ``steps`` optimizer steps (float64).

    ``lr=None`` uses the function's default for that optimizer. Non-finite values are recorded
    as they are (a diverging run is a result, not an error).
    """
    fn = get_function(function) if isinstance(function, str) else function
    if lr is None:
        lr = default_lr(fn, optimizer_name)
    if lr <= 0 or steps < 0:
        raise ConfigError(f"need lr > 0 and steps >= 0, got lr={lr}, steps={steps}")
    p = torch.tensor(fn.start if start is None else start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([p], _optim_config(optimizer_name, lr))
    points: list[tuple[float, float]] = []
    losses: list[float] = []
    for i in range(steps + 1):
        loss = fn(p)
        points.append((p[0].item(), p[1].item()))
        losses.append(loss.item())
        if i == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Trajectory(points, losses)


def compare(
    function: str,
    optimizers: Iterable[str],
    steps: int = 500,
    lrs: dict[str, float] | None = None,
) -> dict[str, Trajectory]:
    """Run each optimizer on ``function``; ``lrs`` overrides the per-optimizer default LRs."""
    fn = get_function(function)
    lrs = lrs or {}
    return {name: run_on_function(fn, name, lrs.get(name), steps) for name in optimizers}


def distance_to_minimum(function: str | Function2D, point: tuple[float, float]) -> float:
    """Euclidean distance from ``point`` to the function's global minimum."""
    fn = get_function(function) if isinstance(function, str) else function
    return math.dist(point, fn.minimum)


def plot_comparison(results: dict[str, Trajectory], function: str, path: str | Path) -> Path:
    """One PNG: contour plot with every trajectory (left), log10 loss against step (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fn = get_function(function)
    xs = torch.linspace(*fn.xlim, 300, dtype=torch.float64)
    ys = torch.linspace(*fn.ylim, 300, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = fn(torch.stack([gx, gy])) + 1e-12  # (H, W): fn broadcasts over a (2, H, W) grid
    # log-spaced levels: the interesting structure is near the minimum, many decades down
    levels = torch.logspace(math.log10(z.min()), math.log10(z.max()), 30).numpy()

    fig = Figure(figsize=(12, 5), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax, ax_loss = fig.subplots(1, 2)
    ax.contour(
        gx.numpy(), gy.numpy(), z.numpy(), levels=levels, norm=LogNorm(), cmap="viridis", alpha=0.6
    )
    for name, traj in results.items():
        px, py = zip(*traj.points)
        (line,) = ax.plot(px, py, marker=".", markersize=2, linewidth=1.2, label=name)
        ax_loss.plot(range(len(traj.losses)), traj.losses, color=line.get_color(), label=name)
    ax.plot(*fn.minimum, marker="*", color="black", markersize=14, linestyle="none", zorder=5)
    ax.set_xlim(*fn.xlim)
    ax.set_ylim(*fn.ylim)
    ax.set_title(f"{fn.name}: trajectories from {fn.start}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="best", fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss (log scale)")
    ax_loss.grid(True, which="both", alpha=0.3)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return atomic_write_bytes(path, png.getvalue())
