"""`bigtrain eval RUN_DIR [--split test] [--json]` and `bigtrain predict RUN_DIR INPUT.csv`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate a trained run on a split",
        description="Rebuild the run's data and model from its folder, load the "
        "best checkpoint and print the metrics of a split.",
    )
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.set_defaults(func=run_eval)
    p = sub.add_parser(
        "predict",
        help="predict for new rows of a CSV/Parquet/NPZ file",
        description="Apply a trained tabular model to new inputs (the feature "
        "columns it was trained on, normalised the same way).",
    )
    p.add_argument("run_dir")
    p.add_argument("input", help="CSV, Parquet or NPZ (key x) file of inputs")
    p.add_argument("--out", help="write predictions as CSV here (default: stdout)")
    p.set_defaults(func=run_predict)


def run_config(run_dir: str | Path):
    """The validated RunConfig saved in a run folder's config.yaml (progress bar off)."""
    import yaml

    from bigtrain.config.loader import validate
    from bigtrain.errors import CheckpointError

    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"{run_dir} is not a bigtrain run folder (no config.yaml)")
    try:
        raw = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError:
        raise CheckpointError(f"{cfg_file} is corrupt") from None
    cfg = validate(raw, source=str(cfg_file))
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"progress": False})})


def load_run(run_dir: str | Path, checkpoint: str = "best"):
    """(components, checkpoint path) of a finished or interrupted run folder."""
    from bigtrain.build import build
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.core.checkpoint import load_weights
    from bigtrain.errors import CheckpointError

    built = build(run_config(run_dir), run_dir=None, quiet=True)
    path = best_weights(run_dir, checkpoint)
    if path is None:
        raise CheckpointError(f"{run_dir} has no checkpoint to evaluate")
    load_weights(path, built.trainer.state.model)
    return built, path


def run_eval(args: argparse.Namespace) -> int:
    from bigtrain.build import eval_batches
    from bigtrain.errors import DataError

    built, path = load_run(args.run_dir, args.checkpoint)
    if args.split == "val":
        batches = built.trainer.state.val_data
    elif args.split == "test":
        batches = built.extras.get("test_batches")
    else:
        train = getattr(built.data, "train", None)
        batches = eval_batches(train.x, train.y) if train is not None else None
    if batches is None:
        raise DataError(f"run {args.run_dir} has no {args.split} split")
    metrics = built.trainer.evaluate(batches, split=args.split)
    result = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.split} metrics of {path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else json.dumps(v))
    Console().print(table)
    return 0


def _read_inputs(path: Path, feature_names: list[str] | None, width: int):
    import numpy as np

    from bigtrain.errors import DataError

    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as z:
            key = "x" if "x" in z else "X" if "X" in z else None
            if key is None:
                raise DataError(f"{path} has no array 'x' (found: {', '.join(z.files)})")
            return np.asarray(z[key], dtype=np.float32), None
    import pandas as pd

    headerless = False
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, header=None)
            # a header row has names in it; a headerless file starts with a row of numbers
            headerless = bool(pd.to_numeric(frame.iloc[0], errors="coerce").notna().all())
            if not headerless:
                frame = pd.read_csv(path)
    except Exception as e:  # pandas raises many types for malformed files
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if feature_names and not headerless:  # named columns: pick them by name, in training order
        missing = [c for c in feature_names if c not in frame.columns]
        if missing:
            raise DataError(f"{path} lacks feature column '{missing[0]}' the model was trained on")
        frame = frame[feature_names]
    if frame.shape[1] != width:
        raise DataError(f"{path} has {frame.shape[1]} feature columns, the model takes {width}")
    try:
        return frame.to_numpy(dtype=np.float32), frame
    except ValueError:
        raise DataError(f"{path} has non-numeric feature values") from None


def run_predict(args: argparse.Namespace) -> int:
    import math

    import torch

    from bigtrain.data.tables import apply_normalization

    built, _ = load_run(args.run_dir)
    data = built.data
    width = math.prod(data.input_shape)
    x, _frame = _read_inputs(Path(args.input), data.feature_names, width)
    x = apply_normalization(x, data.normalization) if data.normalization else torch.from_numpy(x)
    x = x.reshape(len(x), *data.input_shape)
    model = built.trainer.state.model
    model.eval()
    with torch.no_grad():
        out = built.task.predict(model, x)
    if data.kind == "classification":
        names = data.class_names or [str(i) for i in range(out.shape[1])]
        header = ["prediction", *[f"p_{n}" for n in names]]
        rows = [[names[int(r.argmax())], *[f"{v:.6f}" for v in r.tolist()]] for r in out]
    elif data.kind == "binary":
        names = data.class_names or ["0", "1"]
        header = ["prediction", f"p_{names[1]}"]
        rows = [[names[int(p > 0.5)], f"{float(p):.6f}"] for p in out]
    else:
        vals = out.reshape(len(out), -1)
        header = (
            ["prediction"]
            if vals.shape[1] == 1
            else [f"prediction_{i}" for i in range(vals.shape[1])]
        )
        rows = [[f"{v:.6f}" for v in r.tolist()] for r in vals]
    lines = [",".join(header), *(",".join(map(str, r)) for r in rows)]
    text = "\n".join(lines) + "\n"
    if args.out:
        from bigtrain.run import write_atomic

        write_atomic(Path(args.out), text)
        print(f"{len(rows)} predictions -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
