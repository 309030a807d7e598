"""Hardware: the measured matmul peak of this machine (the denominator of MFU) and the table of
accelerators the planner knows (``hardware.yaml``), which a user's YAML file extends."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bigtrain._io import atomic_write_text, meminfo
from bigtrain.errors import ConfigError, did_you_mean

CACHE = Path("~/.cache/bigtrain/peak_flops.json").expanduser()


def _key(dtype: torch.dtype, device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()}-{torch.get_num_threads()}threads"
    return f"{name}|{dtype}|torch{torch.__version__}"


def measure_peak_flops(
    dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 512, seconds: float = 0.3
) -> float:
    """FLOP/s of repeated square matmuls (best of several timed rounds)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    flops = 2 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    torch.mm(a, b)  # warm up
    while time.perf_counter() < deadline or best == 0.0:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * flops / (time.perf_counter() - t))
    return best


def measured_peak_flops(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """The highest matmul rate ever measured here (cached in ~/.cache/bigtrain/peak_flops.json).

    Each call measures for 0.3 s and keeps the maximum with the cached value: a measurement
    taken while another process shared the cores is too low, and keeping the maximum lets the
    estimate only move toward the true peak.
    """
    key = _key(dtype, device)
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    peak = max(measure_peak_flops(dtype, device), float(cache.get(key, 0.0)))
    cache[key] = peak
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(CACHE, json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return peak


TABLE = Path(__file__).with_name("hardware.yaml")
CPU_DEFAULT_MFU = 0.3  # a stated guess: small models on a CPU reach far less; use --calibrate


@dataclass(frozen=True)
class Hardware:
    """One device type: peak FLOP/s per precision, memory and links (hardware.yaml)."""

    name: str
    description: str
    peak_flops: dict[str, float]  # precision -> FLOP/s
    memory_bytes: int
    memory_bandwidth: float = 0.0  # bytes/s
    interconnect: float = 0.0  # bytes/s between devices of a node
    network: float = 0.0  # bytes/s per device between nodes
    overhead_bytes: int = 0
    default_mfu: float = 0.35
    source: str = ""
    measured: bool = False  # the cpu entry: peaks measured here, not read from a table

    def peak(self, precision: str) -> float:
        """Peak FLOP/s for training in ``precision`` (fp32 uses TF32 tensor cores if listed)."""
        if precision not in self.peak_flops:
            raise ConfigError(
                f"hardware '{self.name}' lists no peak for {precision} "
                f"(it has: {', '.join(self.peak_flops)})"
            )
        return self.peak_flops[precision]


_FIELDS = {"description", "peak_tflops", "memory_gb", "memory_bandwidth_gbps", "interconnect_gbps",
           "network_gbps", "overhead_gb", "default_mfu", "source"}  # fmt: skip


def _entry(name: str, raw: Any, where: str) -> Hardware:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: hardware '{name}' must be a mapping of its figures")
    unknown = set(raw) - _FIELDS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"{where}: unknown key '{name}.{key}'{did_you_mean(key, _FIELDS)}; "
            f"keys: {', '.join(sorted(_FIELDS))}"
        )
    try:
        peaks = {str(k): float(v) * 1e12 for k, v in dict(raw["peak_tflops"]).items()}
        memory = int(float(raw["memory_gb"]) * 1e9)
        figures = {k: float(raw.get(k, 0.0)) for k in _FIELDS - {"peak_tflops", "description",
                                                                  "source", "memory_gb"}}  # fmt: skip
    except KeyError as e:
        raise ConfigError(f"{where}: hardware '{name}' needs {e.args[0]}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: hardware '{name}' has a figure that is not a number") from None
    if not peaks or min(peaks.values()) <= 0 or memory <= 0:
        raise ConfigError(f"{where}: hardware '{name}' needs positive peak_tflops and memory_gb")
    mfu = figures["default_mfu"] or 0.35
    if not 0 < mfu <= 1:
        raise ConfigError(f"{where}: hardware '{name}': default_mfu must be in (0, 1], got {mfu}")
    return Hardware(
        name=name,
        description=str(raw.get("description", name)),
        peak_flops=peaks,
        memory_bytes=memory,
        memory_bandwidth=figures["memory_bandwidth_gbps"] * 1e9,
        interconnect=figures["interconnect_gbps"] * 1e9,
        network=figures["network_gbps"] * 1e9,
        overhead_bytes=int(figures["overhead_gb"] * 1e9),
        default_mfu=mfu,
        source=str(raw.get("source", where)),
    )


def _read_table(path: Path) -> dict[str, Hardware]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--hardware {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(
            f"--hardware {path}: not a readable YAML file ({type(e).__name__})"
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of hardware names to their figures")
    return {str(name): _entry(str(name), entry, str(path)) for name, entry in raw.items()}


def known_hardware() -> dict[str, Hardware]:
    """The shipped table (``plan/hardware.yaml``); ``cpu`` is added by ``get_hardware``."""
    return _read_table(TABLE)


def cpu_hardware(precision: str = "fp32") -> Hardware:
    """This machine's CPU: the measured matmul peak and its total memory."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    peak = measured_peak_flops(dtype, "cpu")
    memory = meminfo("MemTotal") or 0
    return Hardware(
        name="cpu",
        description=f"this machine's CPU ({torch.get_num_threads()} threads)",
        peak_flops={precision: peak},
        memory_bytes=memory,
        default_mfu=CPU_DEFAULT_MFU,
        source="measured here: best of repeated 512x512 matmuls (bigtrain.plan.hardware)",
        measured=True,
    )


def get_hardware(name: str, precision: str = "fp32") -> Hardware:
    """``cpu``, a name from the shipped table, or a YAML file (its one entry, or
    ``FILE.yaml:NAME`` for one of several)."""
    if name == "cpu":
        return cpu_hardware(precision)
    table = known_hardware()
    if name in table:
        return table[name]
    path, _, entry = name.partition(":") if name.count(":") == 1 else (name, "", "")
    if path.endswith((".yaml", ".yml")):
        own = _read_table(Path(path).expanduser())
        if entry:
            if entry not in own:
                raise ConfigError(f"{path} has no hardware '{entry}' (it has: {', '.join(own)})")
            return own[entry]
        if len(own) > 1:
            raise ConfigError(
                f"{path} lists {len(own)} devices; pick one with --hardware {path}:NAME "
                f"({', '.join(own)})"
            )
        return next(iter(own.values()))
    names = ["cpu", *table]
    raise ConfigError(
        f"unknown hardware '{name}'{did_you_mean(name, names)}; known: {', '.join(names)}, "
        "or a YAML file of your own"
    )
