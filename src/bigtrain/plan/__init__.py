"""Planning before training: parameters, FLOPs, memory, time, cost and compute-optimal size
(``planner.make_plan``), the hardware table, measured peaks and scaling-law fits."""

from bigtrain.plan.hardware import measured_peak_flops

__all__ = ["measured_peak_flops"]
