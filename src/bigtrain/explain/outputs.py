"""The files of one explanation: ``attributions.npz``, ``summary.json``, figures and, for text,
``tokens.html``. Written into a temporary folder that replaces the output folder whole, so a
reader sees the old explanation or the new one, and sibling folders (other methods) are
untouched."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain._io import (
    atomic_write_bytes,
    atomic_write_text,
    json_safe,
    remove_stale_temporaries,
    replace_folder,
    temp_dir_beside,
)

from .attribution import COMPLETE_METHODS, Attributions
from .summary import compare_importance, global_importance, mask_share, token_importance

MAX_EXAMPLES_SHOWN = 8


@dataclass
class Subject:
    """What was explained, in plain values (the CLI fills it from a run folder).

    ``kind`` is ``tabular``, ``image`` (inputs (N, C, H, W)) or ``text`` (token ids (N, T)).
    ``output_names`` name the output indices (class names). ``display`` holds images as a
    person sees them (un-normalised pixels); ``foreground`` marks the pixels that are not
    background, for the share of attribution they get. Text needs ``decode`` (one id -> its
    text) and ``pad_id``.
    """

    kind: str
    output_names: list[str]
    labels: torch.Tensor | None = None
    feature_names: list[str] | None = None
    display: torch.Tensor | None = None
    foreground: torch.Tensor | None = None
    decode: Callable[[int], str] | None = None
    pad_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # copied into summary.json
    notes: list[str] = field(default_factory=list)


def digest(inputs: torch.Tensor, targets: torch.Tensor, context: str = "") -> str:
    """A short hash of (inputs, targets, context: the baseline and checkpoint): explanations
    of the same question (same model, sample, outputs and reference) compare."""
    h = hashlib.sha256(inputs.detach().cpu().contiguous().numpy().tobytes())
    h.update(targets.detach().cpu().long().numpy().tobytes())
    h.update(context.encode())
    return h.hexdigest()[:16]


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def _global_rows(a: Attributions, inputs: torch.Tensor, subject: Subject) -> list[dict]:
    """summary.json's ``global``: every feature (text: every token seen), most important first."""
    if subject.kind == "text":
        skip = [] if subject.pad_id is None else [subject.pad_id]
        stats = token_importance(inputs, a.values, skip=skip)
        decode = subject.decode or str
        rows = [
            {"feature": decode(t), "id": t, "mean_abs": m, "count": c}
            for t, (m, c) in stats.items()
        ]
        return sorted(rows, key=lambda r: -r["mean_abs"])
    imp = global_importance(a.values).reshape(-1)
    signed = a.values.float().mean(0).reshape(-1)
    names = subject.feature_names or [f"x{i}" for i in range(len(imp))]
    order = torch.argsort(imp, descending=True, stable=True).tolist()
    return [
        {"feature": names[i], "mean_abs": float(imp[i]), "mean": float(signed[i])} for i in order
    ]


def _key(row: dict) -> Any:
    return row.get("id", row["feature"])


def agreement(summary: dict, folder: Path, k: int = 5) -> dict[str, dict]:
    """Agreement of this explanation's global importance with those of the other methods in
    ``folder``'s sibling folders that explained the same sample (same digest)."""
    found: dict[str, dict] = {}
    for other in sorted(folder.parent.glob("*/summary.json")):
        if other.parent == folder:
            continue
        try:
            theirs = json.loads(other.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(theirs, dict) or theirs.get("digest") != summary["digest"]:
            continue
        mine = {_key(r): r["mean_abs"] for r in summary["global"]}
        other_rows = {_key(r): r.get("mean_abs") for r in theirs.get("global", [])}
        keys = [key for key in mine if isinstance(other_rows.get(key), int | float)]
        if len(keys) < 2:
            continue
        found[str(theirs.get("method", other.parent.name))] = compare_importance(
            [mine[key] for key in keys], [other_rows[key] for key in keys], k=k
        )
    return found


def _captions(a: Attributions, subject: Subject, n: int) -> list[str]:
    out = []
    for i in range(n):
        text = f"#{i} target {_name(subject.output_names, int(a.targets[i]))}"
        if subject.info.get("task") != "regression":
            text += f", pred {_name(subject.output_names, int(a.outputs[i].argmax()))}"
        out.append(text)
    return out


def _figures(a: Attributions, inputs: torch.Tensor, subject: Subject, rows: list[dict]) -> list:
    """(file name, caption, Figure) of the explanation."""
    from . import figures

    n = min(len(inputs), MAX_EXAMPLES_SHOWN)
    caps = _captions(a, subject, n)
    top = [(r["feature"], r["mean_abs"]) for r in rows]
    what = f"{a.method}, mean |attribution| over {len(inputs)} inputs"
    out = [("global.png", f"Global importance ({what})", figures.importance_bars(top, what))]
    if subject.kind == "image":
        shown = subject.display if subject.display is not None else inputs
        out.append(
            (
                "examples.png",
                "Inputs and their attributions (blue raises the target's score, red lowers it)",
                figures.image_attributions(shown[:n].numpy(), a.values[:n].numpy(), caps),
            )
        )
        imp = global_importance(a.values).numpy()
        out.append(("global_map.png", f"Mean |attribution| per pixel ({a.method})",
                    figures.importance_map(imp, what)))  # fmt: skip
    elif subject.kind == "tabular":
        names = subject.feature_names or [f"x{i}" for i in range(inputs.shape[1])]
        k = min(n, 4)
        out.append(
            (
                "examples.png",
                "Signed attributions of the first inputs (blue raises the target's score)",
                figures.example_bars(names, a.values[:k].numpy(), caps[:k]),
            )
        )
    return out


def _predictions(a: Attributions, subject: Subject) -> torch.Tensor:
    """Predicted classes, or for regression the predicted values (N, K)."""
    return a.outputs if subject.info.get("task") == "regression" else a.outputs.argmax(1)


def _token_examples(a: Attributions, inputs: torch.Tensor, subject: Subject) -> list[dict]:
    decode = subject.decode or str
    caps = _captions(a, subject, len(inputs))
    out = []
    for i in range(len(inputs)):
        keep = [j for j, t in enumerate(inputs[i].tolist()) if t != subject.pad_id]
        out.append(
            {
                "caption": caps[i],
                "tokens": [decode(int(inputs[i, j])) for j in keep],
                "scores": [float(a.values[i, j]) for j in keep],
            }
        )
    return out


def write_explanation(
    out: Path, a: Attributions, inputs: torch.Tensor, subject: Subject
) -> dict[str, Any]:
    """Write the explanation of ``inputs`` into the folder ``out`` (replaced whole) and return
    its summary (also written as ``summary.json``)."""
    from . import figures

    inputs = inputs.detach().cpu()
    info = subject.info
    rows = _global_rows(a, inputs, subject)
    summary: dict[str, Any] = {
        "method": a.method,
        "kind": subject.kind,
        "n_inputs": len(inputs),
        **subject.info,
        "settings": a.settings,
        "targets": a.targets.tolist(),
        "target_names": [_name(subject.output_names, int(t)) for t in a.targets],
        "predictions": _predictions(a, subject).tolist(),
        "digest": digest(inputs, a.targets, f"{info.get('baseline')}|{info.get('checkpoint')}"),
        "global": rows,
    }
    if a.gap is not None and a.method in COMPLETE_METHODS:
        rows_idx = torch.arange(len(inputs))
        change = (a.outputs[rows_idx, a.targets] - a.reference_outputs[rows_idx, a.targets]).abs()
        summary["convergence_delta"] = {
            "max_abs": float(a.gap.abs().max()),
            "mean_abs": float(a.gap.abs().mean()),
            "mean_abs_output_change": float(change.mean()),
            "what": "sum of attributions - (f(x) - f(baseline)) per input",
        }
    if subject.foreground is not None:
        summary["foreground"] = {
            **mask_share(a.values, subject.foreground),
            "what": "share of total |attribution| on pixels brighter than the background, "
            "next to their share of all pixels",
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    summary["agreement"] = agreement(summary, out)
    made = _figures(a, inputs, subject, rows)
    summary["figures"] = [{"file": f, "caption": c} for f, c, _ in made]
    if subject.kind == "text":
        examples = _token_examples(a, inputs, subject)
        summary["examples"] = examples[:MAX_EXAMPLES_SHOWN]
    summary["notes"] = subject.notes
    summary = json_safe(summary)

    remove_stale_temporaries(out.parent, names=out.name)
    tmp = temp_dir_beside(out)
    try:
        arrays = {
            "inputs": inputs.numpy(),
            "attributions": a.values.numpy(),
            "targets": a.targets.numpy(),
            "predictions": _predictions(a, subject).numpy(),
            "outputs": a.outputs.numpy(),
            "global_importance": global_importance(a.values).numpy(),
        }
        if subject.labels is not None:
            arrays["labels"] = subject.labels.cpu().numpy()
        if subject.display is not None:
            arrays["display"] = subject.display.cpu().numpy()
        if a.gap is not None:
            arrays["convergence_delta"] = a.gap.numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(tmp / "attributions.npz", buf.getvalue())
        for name, _, fig in made:
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=100, metadata={"Software": None})
            atomic_write_bytes(tmp / name, png.getvalue())
        if subject.kind == "text":
            parts = [figures.token_html(e["tokens"], e["scores"], e["caption"]) for e in examples]
            atomic_write_text(tmp / "tokens.html", "\n".join(parts) + "\n")
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
        replace_folder(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
