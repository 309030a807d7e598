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
    t = e.add_argument_group(
        "trust", "results also go to RUN_DIR/evaluation/<split>.json and the run's report.html"
    )
    t.add_argument(
        "--ci",
        type=float,
        metavar="LEVEL",
        help="bootstrap confidence intervals (percentile) of the loss and every metric, e.g. 0.95",
    )
    t.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    t.add_argument("--seed", type=int, default=0, help="seed of the resampling (0)")
    t.add_argument(
        "--calibration", action="store_true", help="classifiers: ECE and reliability diagram"
    )
    t.add_argument(
        "--temperature-scale",
        action="store_true",
        help="fit a temperature on the val split and report calibration before/after "
        "(implies --calibration)",
    )
    t.add_argument("--bins", type=int, default=15, help="equal-width calibration bins (15)")
    t.add_argument("--per-class", action="store_true", help="precision/recall/F1 per class")
    t.add_argument(
        "--membership",
        action="store_true",
        help="loss-threshold membership attack: train examples vs the evaluated split",
    )
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
    bar off; a distributed run's folder is evaluated by one plain process). A distilled run's
    ``distill:`` section is dropped: the teacher only shaped training, the student stands alone."""
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
            "distill": None,
        }
    )


def load_run(run_dir: str | Path, checkpoint: str = "best", cfg=None):
    """(components, checkpoint path) of a finished or interrupted run folder.

    ``cfg`` is the run's config when the caller has already read it (``run_config``).
    """
    from bigtrain.build import build
    from bigtrain.build.variant import restore_variant
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.core.checkpoint import load_weights
    from bigtrain.errors import CheckpointError

    built = build(cfg or run_config(run_dir), run_dir=None, quiet=True)
    path = best_weights(run_dir, checkpoint)
    if path is None:
        raise CheckpointError(f"{run_dir} has no checkpoint to evaluate")
    # a compressed variant (bigtrain compress ...) reshapes the model before its weights load
    built.trainer.state.model = restore_variant(built.trainer.state.model, run_dir)
    load_weights(path, built.trainer.state.model)
    return built, path


def _split_batches(built, split: str, run_dir: str):
    """The evaluation batches of ``split``; DataError when the run has no such split."""
    from bigtrain.build import eval_batches
    from bigtrain.errors import DataError

    if split == "val":  # a language model's whole val split, not its periodic sample
        batches = built.extras.get("full_val_batches", built.trainer.state.val_data)
    elif split == "test":
        batches = built.test_batches
    else:
        train = getattr(built.data, "train", None)
        batches = eval_batches(train.x, train.y) if train is not None else None
    if batches is None:
        raise DataError(f"run {run_dir} has no {split} split")
    return batches


def _trust_asked(args: argparse.Namespace) -> bool:
    return bool(
        args.ci is not None
        or args.calibration
        or args.temperature_scale
        or args.per_class
        or args.membership
    )


def _check_trust_args(args: argparse.Namespace) -> None:
    """One-line ConfigErrors for trust options that cannot work, before the run is rebuilt."""
    from bigtrain.errors import ConfigError
    from bigtrain.evaluation import check_level

    if args.ci is not None:
        check_level(args.ci)
    if args.resamples < 2:
        raise ConfigError(f"--resamples must be at least 2, got {args.resamples}")
    if args.bins < 1:
        raise ConfigError(f"--bins must be at least 1, got {args.bins}")
    if args.membership and args.split == "train":
        raise ConfigError(
            "--membership compares the train split with a held-out one: use --split test or val"
        )
    if args.temperature_scale and args.split == "val":
        raise ConfigError(
            "--temperature-scale fits the temperature on the val split: evaluate another "
            "split (--split test)"
        )


def _trust(args: argparse.Namespace, built, batches) -> dict:
    """The trust measures the options ask for (see bigtrain.evaluation.trust_results)."""
    from bigtrain.evaluation import check_options, collect_outputs, trust_results

    model, task = built.trainer.state.model, built.task
    autocast = built.trainer.strategy.autocast  # the same precision as Trainer.evaluate

    def collect(b):
        return collect_outputs(model, task, b, autocast=autocast)

    outputs = collect(batches)
    calibration = args.calibration or args.temperature_scale
    check_options(outputs.kind, calibration=calibration, per_class=args.per_class)
    val = collect(_split_batches(built, "val", args.run_dir)) if args.temperature_scale else None
    train = collect(_split_batches(built, "train", args.run_dir)) if args.membership else None
    return trust_results(
        task,
        outputs,
        ci=args.ci,
        n_resamples=args.resamples,
        seed=args.seed,
        calibration=calibration,
        val_outputs=val,
        n_bins=args.bins,
        per_class=args.per_class,
        class_names=getattr(built.data, "class_names", None),
        train_outputs=train,
    )


def _save_trust(run_dir: str, split: str, path, metrics: dict, trust: dict) -> Path:
    """Write RUN_DIR/evaluation/<split>.json atomically (keeping the sections of an earlier
    eval of the same checkpoint that this one did not compute) and rewrite report.html."""
    from bigtrain._io import atomic_write_text, json_safe

    target = Path(run_dir) / "evaluation" / f"{split}.json"
    record = {}
    if target.is_file():
        try:
            old = json.loads(target.read_text())
            if isinstance(old, dict) and old.get("checkpoint") == str(path):
                record = old
        except (OSError, json.JSONDecodeError):
            pass  # a damaged file is replaced
    record.update(split=split, checkpoint=str(path), metrics=metrics, **trust)
    target.parent.mkdir(exist_ok=True)
    atomic_write_text(target, json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n")
    from bigtrain.report import write_report

    write_report(run_dir)
    return target


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else json.dumps(v)


def _print_trust(console, trust: dict) -> None:
    from rich.table import Table

    cal = trust.get("calibration")
    if cal is not None:
        table = Table(title=f"calibration ({cal['n_bins']} equal-width bins)")
        table.add_column("")
        for col in ("NLL", "ECE", "temperature"):
            table.add_column(col, justify="right")
        table.add_row("before", _fmt(cal["before"]["nll"]), _fmt(cal["before"]["ece"]), "1")
        if "after" in cal:
            after = cal["after"]
            table.add_row(
                "after (T fitted on val)",
                _fmt(after["nll"]),
                _fmt(after["ece"]),
                f"{cal['temperature']:.4f}",
            )
        console.print(table)
        if cal.get("temperature_note"):
            console.print(f"temperature scaling {cal['temperature_note']}")
    rows = trust.get("per_class")
    if rows is not None:
        table = Table(title="per class")
        for col in ("class", "precision", "recall", "f1", "support"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for r in rows:
            table.add_row(r["class"], *(_fmt(r[k]) for k in ("precision", "recall", "f1")),
                          str(r["support"]))  # fmt: skip
        console.print(table)
    mia = trust.get("membership")
    if mia is not None:
        console.print(
            f"membership inference (loss threshold, {mia['n_members']} train vs "
            f"{mia['n_nonmembers']} held-out examples): AUC {mia['auc']:.4f} (0.5 +- "
            f"{mia['null_std']:.4f} if nothing leaks), advantage {mia['advantage']:.4f}"
        )


def run_eval(args: argparse.Namespace) -> int:
    asked = _trust_asked(args)
    if asked:
        _check_trust_args(args)
    built, path = load_run(args.run_dir, args.checkpoint)
    batches = _split_batches(built, args.split, args.run_dir)
    metrics = built.trainer.evaluate(batches, split=args.split)
    result = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    trust = _trust(args, built, batches) if asked else {}
    saved = _save_trust(args.run_dir, args.split, path, result, trust) if asked else None
    if args.json:
        from bigtrain._io import json_safe

        print(json.dumps(json_safe({**result, **trust}), allow_nan=False))
        if saved is not None:
            print(f"written to {saved}", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ci = trust.get("ci", {})
    level = f" [{trust['bootstrap']['level']:g} CI]" if ci else ""
    table = Table(title=f"{args.split} metrics of {path}")
    table.add_column("metric")
    table.add_column("value" + level, justify="right")
    for k, v in result.items():
        text = _fmt(v)
        if k in ci:
            text += f" [{ci[k]['low']:.4f}, {ci[k]['high']:.4f}]"
        table.add_row(k, text)
    console.print(table)
    if ci:
        b = trust["bootstrap"]
        console.print(
            f"percentile bootstrap over {b['n']} examples, {b['resamples']} resamples, "
            f"seed {b['seed']}"
        )
    _print_trust(console, trust)
    if saved is not None:
        console.print(f"written to {saved}")
    return 0


def _check_predictable(cfg, run_dir: str | Path) -> None:
    """ConfigError unless the run trained a tabular/image model (predict reads rows of numbers)."""
    from bigtrain.data.text_config import TEXT_CLASSIFICATION_NAMES, TEXT_DATA_NAMES
    from bigtrain.errors import ConfigError

    if cfg.data.name not in TEXT_DATA_NAMES:
        return
    model = cfg.model.name
    if cfg.data.name in TEXT_CLASSIFICATION_NAMES:
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
