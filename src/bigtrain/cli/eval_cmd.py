"""`bigtrain eval RUN_DIR [--split test] [--json]` and `bigtrain predict RUN_DIR INPUT.csv`."""

from __future__ import annotations

import argparse
import json
import math
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
    p.add_argument(
        "input",
        nargs="?",
        help="CSV, Parquet or NPZ (key x) file of inputs; for a recommender, a CSV of "
        "(user, item) pairs to score",
    )
    p.add_argument("--out", help="write predictions as CSV here (default: stdout)")
    p.add_argument("--user", help="recommender runs: recommend items for this user id")
    p.add_argument("--top-k", type=int, default=10, help="recommender runs: how many items")
    p.set_defaults(func=run_predict)


def run_config(run_dir: str | Path):
    """The validated RunConfig saved in a run folder's config.yaml, for one process (progress
    bar off; a distributed run's folder is evaluated by one plain process)."""
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
    return cfg.model_copy(
        update={
            "trainer": cfg.trainer.model_copy(update={"progress": False}),
            "distributed": cfg.distributed.model_copy(update={"strategy": "single"}),
        }
    )


def load_run(run_dir: str | Path, checkpoint: str = "best", cfg=None):
    """(components, checkpoint path) of a finished or interrupted run folder.

    ``cfg`` is the run's config when the caller has already read it (``run_config``).
    """
    from bigtrain.build import build
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.core.checkpoint import load_weights
    from bigtrain.errors import CheckpointError

    built = build(cfg or run_config(run_dir), run_dir=None, quiet=True)
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
        batches = built.test_batches
    else:
        train = getattr(built.data, "train", None)
        batches = eval_batches(train.x, train.y) if train is not None else None
    if batches is None:
        raise DataError(f"run {args.run_dir} has no {args.split} split")
    metrics = built.trainer.evaluate(batches, split=args.split)
    result = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    if args.json:
        from bigtrain._io import json_safe

        print(json.dumps(json_safe(result), allow_nan=False))
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


def _check_predictable(cfg, run_dir: str | Path) -> None:
    """ConfigError unless the run trained a tabular/image model (predict reads rows of numbers)."""
    from bigtrain.data.text_config import TEXT_DATA_NAMES
    from bigtrain.errors import ConfigError

    if cfg.data.name not in TEXT_DATA_NAMES:
        return
    model = cfg.model.name
    if cfg.data.name == "shakespeare_genre" and model not in ("gpt", "rnn_lm"):
        raise ConfigError(
            f"predict is for tabular/image runs; {run_dir} classifies text (data "
            f"'{cfg.data.name}', model '{model}'): use `bigtrain eval {run_dir}` for its metrics"
        )
    raise ConfigError(
        f"predict is for tabular/image runs; {run_dir} is a language model (data "
        f"'{cfg.data.name}', model '{model}'): use `bigtrain generate {run_dir} --prompt ...`"
    )


def _check_out(out: Path) -> None:
    from bigtrain.errors import ConfigError

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. {out / 'preds.csv'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from bigtrain.data.files import existing_file, read_inputs
    from bigtrain.data.tables import apply_normalization

    if args.out:
        _check_out(Path(args.out))
    cfg = run_config(args.run_dir)
    from bigtrain.data.ratings_config import RATINGS_DATA_NAMES

    if cfg.data.name in RATINGS_DATA_NAMES:  # recommenders score users and items, not rows
        from bigtrain.cli.recommend_view import run_recommend

        return run_recommend(args, cfg)
    if args.user is not None:
        from bigtrain.errors import ConfigError

        raise ConfigError(f"--user applies to recommender runs; {args.run_dir} is not one")
    if args.input is None:
        from bigtrain.errors import ConfigError

        raise ConfigError("predict needs an input file of rows to predict for")
    _check_predictable(cfg, args.run_dir)
    existing_file(args.input, "input file")  # before the (slower) rebuild of the run
    built, _ = load_run(args.run_dir, cfg=cfg)
    data = built.data
    width = math.prod(data.input_shape)
    x = read_inputs(Path(args.input), data.feature_names, width)
    x = apply_normalization(x, data.normalization) if data.normalization else torch.from_numpy(x)
    x = x.reshape(len(x), *data.input_shape)
    model = built.trainer.state.model
    model.eval()
    with torch.no_grad():
        out = built.task.predict(model, x)
    if data.kind != "regression" and out.ndim == 2:  # softmax rows (also 2 classes by choice)
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
        from bigtrain._io import atomic_write_text

        atomic_write_text(Path(args.out), text)
        print(f"{len(rows)} predictions -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
