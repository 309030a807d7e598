"""Time and cost of a run from its FLOPs: peak FLOP/s x MFU, plus gradient communication.

MFU (model FLOPs utilisation, PaLM appendix B) is the share of the peak a run turns into model
FLOPs. Without a measurement it is the hardware table's stated default; ``--calibrate`` measures
it here with a few real steps. Gradient communication is a ring all-reduce (DDP) or
reduce-scatter + all-gather (FSDP) of the fp32 gradients over the slowest link, assumed to
overlap with the backward pass: a step takes the longer of the two.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step, and what sets them."""

    compute_s: float
    communication_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.communication_s)

    @property
    def bound(self) -> str:
        return "communication" if self.communication_s > self.compute_s else "compute"


def step_time(
    flops_per_step: float,
    peak_flops: float,
    mfu: float,
    devices: int = 1,
    gradient_bytes: int = 0,
    link_bytes_per_s: float = 0.0,
    strategy: str = "single",
) -> StepTime:
    """Time of one step of ``flops_per_step`` shared by ``devices`` data-parallel devices.

    ``peak_flops`` is one device's; ``link_bytes_per_s`` the slowest link a collective crosses.
    """
    compute = flops_per_step / devices / (peak_flops * mfu)
    comm = 0.0
    if devices > 1 and link_bytes_per_s > 0 and strategy in ("ddp", "fsdp"):
        # a ring all-reduce moves 2 (N-1)/N of the buffer through every link; FSDP's
        # reduce-scatter of gradients and the two all-gathers of weights move 3 (N-1)/N
        factor = (2 if strategy == "ddp" else 3) * (devices - 1) / devices
        comm = factor * gradient_bytes / link_bytes_per_s
    return StepTime(compute, comm)


def calibrated_mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """The MFU a measured step time implies."""
    return flops_per_step / seconds_per_step / peak_flops
