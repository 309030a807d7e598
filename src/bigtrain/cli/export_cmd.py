"""``bigtrain export RUN_DIR --format safetensors|onnx --out PATH`` (docs/export.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained run's model: safetensors (+ what rebuilds it) or ONNX",
        description="safetensors: the weights with the model name, config, input shape and "
        "number of outputs in the file's metadata (bigtrain.build.export.load_exported rebuilds "
        "it). onnx: torch's dynamo exporter with a dynamic batch (and sequence) dimension, "
        "checked against onnxruntime at another batch size before PATH is written.",
    )
    p.add_argument("run_dir", help="a trained run folder (variants included)")
    p.add_argument("--format", choices=["safetensors", "onnx"], required=True)
    p.add_argument("--out", required=True, help="the file to write (.safetensors / .onnx)")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def _example(built, run_dir: str):
    from bigtrain.cli.eval_cmd import _split_batches
    from bigtrain.errors import ConfigError, DataError

    try:
        batches = _split_batches(built, "val", run_dir)
    except DataError:
        batches = _split_batches(built, "test", run_dir)
    x = batches[0][0] if isinstance(batches[0], (tuple, list)) else batches[0]
    if not isinstance(x, __import__("torch").Tensor):
        raise ConfigError(f"export takes models of one input tensor; {run_dir}'s take several")
    return x[:2]


def run(args: argparse.Namespace) -> int:
    import yaml

    from bigtrain.build.export import model_io, model_params, save_exported
    from bigtrain.build.variant import variant_steps
    from bigtrain.cli.compress_quantize import cpu_config
    from bigtrain.cli.eval_cmd import load_run, run_config
    from bigtrain.errors import ConfigError

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    if args.format == "onnx":
        from bigtrain.export.onnx import require_onnx

        require_onnx()  # before the (slower) rebuild of the run
    cfg = cpu_config(run_config(args.run_dir))
    built, _ = load_run(args.run_dir, args.checkpoint, cfg)
    model = built.trainer.state.model.eval()
    x = _example(built, args.run_dir)
    if args.format == "onnx":
        from bigtrain.export.onnx import export_onnx

        sequence = x.ndim == 2 and not x.is_floating_point()
        check = export_onnx(model, x, out, sequence=sequence)
        result = {"out": str(out), "format": "onnx", **check}
        shape = f"batch {check['batch']}" + (f" x {check['seq']} positions" if sequence else "")
        line = (
            f"exported {out} (ONNX); onnxruntime vs torch at {shape} (traced: {x.shape[0]}"
            f"{' x ' + str(x.shape[1]) if sequence else ''}): max abs diff "
            f"{check['max_abs_diff']:.3g} (tolerance {check['atol']:g} + {check['rtol']:g} x max|y|)"
        )
    else:
        raw = yaml.safe_load((Path(args.run_dir) / "config.yaml").read_text())
        steps = variant_steps(args.run_dir)
        # a variant's restorers act on the float model as the config builds it
        params = model_params(model, cfg) if not steps else cfg.model.fields()
        save_exported(model, out, name=cfg.model.name, params=params, io=model_io(model, x),
                      steps=steps, config=raw)  # fmt: skip
        result = {"out": str(out), "format": "safetensors", "bytes": out.stat().st_size}
        line = (
            f"exported {out} ({out.stat().st_size:,} bytes; rebuild with "
            "bigtrain.build.export.load_exported)"
        )
    print(json.dumps(result) if args.json else line)
    return 0
