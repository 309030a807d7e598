"""``bigtrain compress quantize RUN_DIR --out OUT_DIR [--method dynamic|static|qat]``.

Loads a trained run, quantizes it to int8 (dynamic: Linear/LSTM/GRU weights; static: weights
and activations, calibrated on the run's own training batches; qat: converts a run trained with
a ``quantize:`` section), measures the run's metrics before and after on the CPU, and writes a
variant run folder that eval/predict/generate read like any other (docs/quantization.md). The
source run is never modified.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8-quantize a trained run into a new run folder",
        description="Quantize a trained run to int8 for CPU inference and write the result as "
        "a run folder OUT_DIR (docs/quantization.md).",
    )
    p.add_argument("run_dir", help="a trained run folder (never modified)")
    p.add_argument("--out", required=True, help="the new run folder (must not exist or be empty)")
    p.add_argument(
        "--method",
        choices=["dynamic", "static", "qat"],
        help="dynamic (default): int8 weights, activations quantized on the fly; static: "
        "int8 activations too, calibrated on training batches; qat: convert a run trained "
        "with a quantize: section (the default for such runs)",
    )
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=10,
        metavar="N",
        help="static: training batches that calibrate the activation ranges (10)",
    )
    p.add_argument(
        "--layers",
        default="linear,lstm,gru",
        help="dynamic: comma-separated layer types to quantize (linear,lstm,gru)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="dynamic: leave modules whose name matches in float (repeatable)",
    )
    p.add_argument(
        "--backend",
        choices=["x86", "fbgemm", "onednn", "qnnpack"],
        default="x86",
        help="static: the int8 kernels the ranges are chosen for (x86)",
    )
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def cpu_config(cfg):
    """``cfg`` for int8 inference: CPU, fp32 (no autocast around int8 kernels), no compile."""
    trainer = cfg.trainer.model_copy(
        update={"device": "cpu", "precision": "fp32", "compile": False}
    )
    return cfg.model_copy(update={"trainer": trainer})


def variant_config(run_dir: str | Path) -> dict[str, Any]:
    """The source's config.yaml as a mapping, for an int8 variant: CPU, fp32, no compile, and
    without the ``quantize:`` section (the variant's steps rebuild the int8 structure)."""
    import yaml

    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    raw.pop("quantize", None)
    trainer = raw.setdefault("trainer", {})
    trainer.update(device="cpu", precision="fp32", compile=False)
    return raw


def _check_args(args: argparse.Namespace, cfg) -> str:
    """One-line ConfigErrors before the model is quantized; returns the method."""
    from bigtrain.errors import ConfigError

    out, src = Path(args.out), Path(args.run_dir)
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the source run itself; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder")
    if args.calibration_batches < 1:
        raise ConfigError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")
    qat_run = cfg.quantize is not None
    method = args.method or ("qat" if qat_run else "dynamic")
    if method == "qat" and not qat_run:
        raise ConfigError(
            f"{src} was not trained with a quantize: section; use --method dynamic or static "
            "(or train with quantize.method=qat)"
        )
    if qat_run and method != "qat":
        raise ConfigError(
            f"{src} was trained with fake quantization (quantize: section); convert it with "
            "--method qat"
        )
    return method


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibration_inputs(built, n: int) -> list:
    """The inputs of the first ``n`` training batches of the run (its own data)."""
    inputs = []
    for batch in built.trainer.state.train_data:
        inputs.append(_inputs(batch))
        if len(inputs) >= n:
            break
    return inputs


def _scalars(metrics: dict) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}


def quantize_model(method: str, model, built, args: argparse.Namespace):
    """(int8 model, variant step) by ``method``."""
    from bigtrain.compress import quantize as q

    if method == "dynamic":
        types = q.layer_types([s for s in args.layers.split(",") if s.strip()], "dynamic")
        return q.quantize_dynamic_int8(model, types, tuple(args.exclude))
    if method == "static":
        return q.quantize_static_int8(
            model, calibration_inputs(built, args.calibration_batches), args.backend
        )
    example = calibration_inputs(built, 1)[0][:1]
    backend = built.config.quantize.backend
    return q.convert_prepared(model), q.static_step(example, backend, "qat")


def run(args: argparse.Namespace) -> int:
    from bigtrain.build.variant import save_variant_run
    from bigtrain.cli.eval_cmd import load_run, run_config
    from bigtrain.compress.measure import parameter_count
    from bigtrain.compress.quantize import quantized_modules, weight_bytes
    from bigtrain.core.checkpoint import weights_copy

    cfg = cpu_config(run_config(args.run_dir))
    method = _check_args(args, cfg)
    built, _ = load_run(args.run_dir, args.checkpoint, cfg)
    trainer = built.trainer
    batches, split = built.test_batches, "test"
    if batches is None:
        batches, split = built.extras.get("full_val_batches", trainer.state.val_data), "val"

    def measure() -> dict[str, float]:
        return _scalars(trainer.evaluate(batches, split=split)) if batches is not None else {}

    model = trainer.state.model
    before, bytes_before, n = measure(), weight_bytes(model), parameter_count(model)
    qmodel, step = quantize_model(method, model, built, args)
    trainer.state.model = qmodel
    after, bytes_after = measure(), weight_bytes(qmodel)
    info = {
        "method": method,
        "split": split,
        "before": before,
        "after": after,
        "weight_bytes_before": bytes_before,
        "weight_bytes_after": bytes_after,
        "parameters": n,
        "quantized_modules": sorted({v for v in quantized_modules(qmodel).values()}),
    }
    summary = {"name": cfg.name, "parameters": n, "test": after, "test_split": split,
               "quantization": info}  # fmt: skip
    out = save_variant_run(
        args.run_dir, args.out, qmodel, [step], summary,
        state=weights_copy(qmodel),  # tied weights (a GPT's head and embedding) stored once
        config=variant_config(args.run_dir),
    )  # fmt: skip
    if args.json:
        print(json.dumps({"out": str(out), **info}))
        return 0
    _print(info, out)
    return 0


def _print(info: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b0, b1 = info["weight_bytes_before"], info["weight_bytes_after"]
    table = Table(title=f"{info['method']} int8: {info['split']} metrics (CPU, fp32 vs int8)")
    for col in ("metric", "float", "int8"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, v in info["before"].items():
        table.add_row(name, f"{v:.4f}", f"{info['after'].get(name, float('nan')):.4f}")
    console.print(table)
    total0, total1 = b0["float"] + b0["int8"], b1["float"] + b1["int8"]
    ratio = f" ({total0 / total1:.2f}x smaller)" if total1 else ""
    console.print(
        f"layer weights {total0:,} -> {total1:,} bytes{ratio} "
        f"(int8 {b1['int8']:,}, float {b1['float']:,}); variant run folder: {out}"
    )
