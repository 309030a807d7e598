"""Planning: hardware peaks today; parameters, FLOPs, memory, time and scaling laws next."""

from bigtrain.plan.hardware import measured_peak_flops

__all__ = ["measured_peak_flops"]
