"""`bigtrain explain RUN_DIR --method ...` (attributions through Captum).

The adapter: rebuild the run (``eval_cmd.load_run``), take N inputs of a split, call
``bigtrain.explain.attribute`` and ``write_explanation``, rewrite the run's report.html.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

METHOD_HELP = "ig, gradient_shap, saliency, occlusion, kernel_shap or lime"


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "explain",
        help="attributions of a trained model's predictions",
        description="Explain a trained tabular, image or text-classification run: attribute "
        "its outputs to the input features with a Captum method, on N inputs of a split. "
        "Writes attributions.npz, summary.json and figures into RUN_DIR/explain/<method>/ "
        "and adds an Explanations section to RUN_DIR/report.html.",
    )
    e.add_argument("run_dir")
    e.add_argument("--method", default="ig", help=f"{METHOD_HELP} (default ig)")
    e.add_argument("--inputs", type=int, default=16, help="how many inputs of the split")
    e.add_argument(
        "--target",
        help="class (index or name) or output index to explain; default: the predicted class",
    )
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--out", help="output folder (default RUN_DIR/explain/<method>)")
    e.add_argument(
        "--baseline",
        choices=["zeros", "mean"],
        help="reference input: zeros in the model's input space (default; the train mean for "
        "standardized inputs) or the mean train input; text uses the pad token",
    )
    e.add_argument("--n-steps", type=int, default=64, help="ig integration steps")
    e.add_argument("--n-samples", type=int, help="samples of gradient_shap, kernel_shap, lime")
    e.add_argument("--patch", type=int, help="images: superpixel size of kernel_shap/lime and "
                   "occlusion window (default 2 for 8x8, ~min(H,W)/7 for larger)")  # fmt: skip
    e.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    e.set_defaults(func=run_explain)


def _refuse_unsupported(cfg, run_dir: str) -> str:
    """The run's data kind (tabular or text_classification); ConfigError for other runs."""
    from bigtrain.build import data_kind
    from bigtrain.data.ratings_config import RATINGS_DATA_NAMES
    from bigtrain.errors import ConfigError

    if cfg.data.name in RATINGS_DATA_NAMES:
        raise ConfigError(f"explain applies to tabular, image and text classifiers; {run_dir} "
                          "is a recommender")  # fmt: skip
    kind = data_kind(cfg)
    if kind == "language_model":
        raise ConfigError(
            f"explain applies to tabular, image and text classifiers; {run_dir} is a language "
            f"model (model '{cfg.model.name}'), which explain does not support"
        )
    return kind


def _output_names(data) -> tuple[list[str], str]:
    """Names of the output indices, and the task kind (classification, binary, regression)."""
    if data.kind == "regression":
        return [f"output {i}" for i in range(data.num_outputs)], "regression"
    n = 2 if data.kind == "binary" else int(data.num_classes)
    names = list(data.class_names or [str(i) for i in range(n)])
    return names, data.kind


def parse_target(text: str | None, names: list[str], task: str) -> int | None:
    """``--target`` as an output index (an index or a class name); ConfigError naming the range."""
    from bigtrain.errors import ConfigError, did_you_mean

    if text is None:
        return None
    what = "outputs" if task == "regression" else "classes"
    listing = (
        "" if task == "regression" else ", ".join(f"{i}={n}" for i, n in enumerate(names[:12]))
    )
    listing = f" ({listing})" if listing else ""
    if text in names and not text.lstrip("-").isdigit():
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        raise ConfigError(
            f"--target '{text}' is not a class{did_you_mean(text, names)}; the run's {what} "
            f"are 0..{len(names) - 1}{listing}"
        ) from None
    if not 0 <= index < len(names):
        raise ConfigError(
            f"--target {index} is out of range: the run's {what} are 0..{len(names) - 1}{listing}"
        )
    return index


def _image_shape(cfg, data) -> tuple[int, ...] | None:
    """(C, H, W) of image inputs, also of images the run reads as flat rows (digits-mlp)."""
    if len(data.input_shape) == 3:
        return tuple(data.input_shape)
    if cfg.data.name in ("csv", "parquet"):
        return None
    from bigtrain.data.builtin import DATASETS

    # the flat layout drops the image shape from the bundle: ask the data set (cheap for
    # the built-in sets; only reached for data that can be images)
    shape = DATASETS.get(cfg.data.name)(cfg.data)[2].get("image_shape")
    return tuple(shape) if shape and math.prod(shape) == data.input_shape[0] else None


def _unnormalize(x, norm: dict):
    """Inputs as stored (pixels), undoing ``apply_normalization``."""
    import torch

    if not norm:
        return x.clone()
    mean = torch.tensor(norm["mean"], dtype=torch.float32)
    std = torch.tensor(norm["std"], dtype=torch.float32)
    n = x.shape[0]
    if norm.get("axis") == "channel":
        view = x.reshape(n, mean.numel(), -1) * std.view(1, -1, 1) + mean.view(1, -1, 1)
    else:
        view = x.reshape(n, -1) * std + mean
    return (view * float(norm.get("scale", 1.0))).reshape(x.shape)


def _baseline(choice: str | None, text: bool, train_x, shape):
    """(baseline, its description)."""
    from bigtrain.errors import ConfigError

    if text:
        if choice is not None:
            raise ConfigError(
                "--baseline applies to tabular and image inputs; a text classifier is "
                "explained against the pad token at every position"
            )
        return None, "the pad token at every position (token methods replace a token by it)"
    if choice == "mean":
        return train_x.float().mean(0).reshape(shape), "the mean train input"
    return 0.0, "zeros in the model's input space (standardized inputs: the train mean)"


def _split(built, split: str, run_dir: str):
    from bigtrain.errors import DataError

    part = getattr(built.data, split, None)
    if part is None or not len(part):
        raise DataError(f"run {run_dir} has no {split} split")
    return part


def run_explain(args: argparse.Namespace) -> int:
    from bigtrain import explain
    from bigtrain.cli.eval_cmd import load_run, run_config
    from bigtrain.errors import ConfigError

    method = explain.check_method(args.method)
    explain.captum_attr()  # before the (slower) rebuild: say what to install
    if args.inputs < 1:
        raise ConfigError(f"--inputs must be >= 1, got {args.inputs}")
    cfg = run_config(args.run_dir)
    text = _refuse_unsupported(cfg, args.run_dir) == "text_classification"
    out = Path(args.out) if args.out else Path(args.run_dir) / "explain" / method
    _check_out(out)
    built, ckpt = load_run(args.run_dir, args.checkpoint, cfg=cfg)
    data = built.data
    names, task = _output_names(data)
    target = parse_target(args.target, names, task)
    if task == "regression" and target is None:
        target = 0  # regression has no predicted class: the first output
    part = _split(built, args.split, args.run_dir)
    x, y = part.x[: args.inputs], part.y[: args.inputs]
    model = built.trainer.state.model
    if cfg.privacy is not None:  # a DP-SGD run's per-example gradient hooks: training only
        from bigtrain.privacy import disable_per_example_gradients

        disable_per_example_gradients(model)
    notes = []
    if task == "binary":
        notes.append(
            "binary model: one logit z (the log-odds of class 1); class 1 is explained as z, "
            "class 0 as -z"
        )
    image = None if text else _image_shape(cfg, data)
    flat_image = image is not None and x.ndim == 2
    scores = explain.Scores(model, two_sided=task == "binary", flatten=flat_image)
    if image is not None:
        x = x.reshape(len(x), *image)
    base, base_text = _baseline(args.baseline, text, data.train.x, x.shape[1:])
    kwargs: dict = {"n_steps": args.n_steps, "n_samples": args.n_samples}
    subject_kw: dict = {}
    if text:
        pad = built.tokenizer.vocab_size  # the id the builder pads with (no token uses it)
        base = pad
        tok = built.tokenizer
        subject_kw.update(decode=lambda i: tok.decode([i]) if i != pad else "<pad>", pad_id=pad)
    elif image is not None:
        subject_kw.update(_image_setup(method, image, args.patch, x, data, kwargs, notes))
    a = explain.attribute(scores, x, method, target=target, baseline=base, **kwargs)
    info = {
        "run": str(args.run_dir),
        "checkpoint": str(ckpt),
        "split": args.split,
        "task": task,
        "target": "the predicted class" if target is None else names[target],
        "baseline": base_text,
    }
    subject = explain.Subject(
        kind="text" if text else ("image" if image is not None else "tabular"),
        output_names=names,
        labels=y,
        feature_names=_feature_names(data, image),
        info=info,
        notes=notes,
        **subject_kw,
    )
    summary = explain.write_explanation(out, a, x, subject)
    _print(summary, out)
    _rewrite_report(args.run_dir, out)
    return 0


def _image_setup(method, image, patch, x, data, kwargs: dict, notes: list) -> dict:
    """Superpixels / occlusion window for ``method`` (into ``kwargs``), and the Subject's
    display pixels and foreground (pixels brighter than the background)."""
    from bigtrain import explain

    patch = patch or max(2, min(image[1:]) // 7)
    if method in ("kernel_shap", "lime"):
        kwargs["feature_mask"] = explain.patch_mask(image, patch)
        notes.append(f"{method} perturbs {patch}x{patch}-pixel patches (superpixels); a patch's "
                     "value is shared equally by its pixels")  # fmt: skip
    if method == "occlusion":
        kwargs["window"] = (image[0], patch, patch)
        notes.append(f"occlusion slides a {patch}x{patch} window of the baseline")
    shown = _unnormalize(x, data.normalization)
    return {"display": shown, "foreground": shown > shown.amin()}


def _feature_names(data, image) -> list[str] | None:
    if image is None:
        return list(data.feature_names) if data.feature_names else None
    c, h, w = image
    pre = (lambda ch: f"c{ch}_") if c > 1 else (lambda ch: "")
    return [f"{pre(ch)}pixel_{r}_{col}" for ch in range(c) for r in range(h) for col in range(w)]


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a folder holding something else than an explanation
    (it is replaced whole)."""
    from bigtrain.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise ConfigError(
            f"--out {out} is a folder that holds other files; explain replaces its folder "
            "whole, so give a new or an explain output folder"
        )


def _print(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    n, method = summary["n_inputs"], summary["method"]
    title = f"{method}: top features over {n} {summary['split']} inputs ({summary['target']})"
    table = Table(title=title)
    last_col = "count" if summary["kind"] == "text" else "mean attr"
    for col in ("rank", "feature", "mean |attr|", last_col):
        table.add_column(col, justify="left" if col == "feature" else "right")
    for i, row in enumerate(summary["global"][:10], start=1):
        last = row.get("mean", row.get("count"))
        last = f"{last:+.4g}" if isinstance(last, float) else str(last)
        table.add_row(str(i), repr(row["feature"]), f"{row['mean_abs']:.4g}", last)
    Console().print(table)
    lines = []
    delta = summary.get("convergence_delta")
    if delta:
        lines.append(
            f"completeness: max |sum(attr) - (f(x) - f(baseline))| = {delta['max_abs']:.3g} "
            f"(mean |f(x) - f(baseline)| = {delta['mean_abs_output_change']:.3g})"
        )
    fg = summary.get("foreground")
    if fg:
        lines.append(
            f"{fg['attribution_share']:.1%} of |attribution| on the {fg['feature_share']:.1%} "
            "of pixels brighter than the background"
        )
    for other, agree in summary.get("agreement", {}).items():
        k = agree["k"]
        lines.append(
            f"agreement with {other}: Spearman {agree['spearman']:.3f}, top-{k} overlap "
            f"{agree[f'top{k}_overlap']}/{k}"
        )
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    lines.append(f"-> {out}")
    print("\n".join(lines), file=sys.stderr)


def _rewrite_report(run_dir: str, out: Path) -> None:
    """Rewrite report.html when the explanation is one it shows (RUN_DIR/explain/*/)."""
    from bigtrain.report import write_report

    if out.resolve().parent != (Path(run_dir) / "explain").resolve():
        print(f"note: report.html shows RUN_DIR/explain/*/ only; not rewritten for {out}",
              file=sys.stderr)  # fmt: skip
        return
    try:
        write_report(run_dir)
    except Exception as e:  # the explanation is written: a broken figure must not hide it
        print(f"warning: report.html not rewritten ({type(e).__name__}: {e})", file=sys.stderr)
