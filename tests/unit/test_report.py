"""HTML run report: figures embedded, sections by run kind, robust reading, atomic writing."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import precision_recall_fscore_support

from bigtrain.errors import CheckpointError
from bigtrain.report import figures, load_run, write_report
from bigtrain.report.html import per_class_rows

VOID = {"meta", "img", "br", "hr", "link", "input"}
IMG = re.compile(r'<figure id="fig-([\w-]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"')


class TagChecker(HTMLParser):
    """Fails on a closing tag that does not match the open one; records the title text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.title = ""
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title":
            self.title += data


def parse(page: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    return checker


def write_run(path: Path, name: str, steps: int, classifier: bool, val: bool = True) -> Path:
    """A run folder like the engine writes: decaying loss, warmup+cosine LR, periodic val."""
    path.mkdir(parents=True, exist_ok=True)
    records = []
    for step in range(1, steps + 1):
        lr = 1e-3 * min(1.0, step / 10) * 0.5 * (1 + math.cos(math.pi * step / (steps + 1)))
        loss = 2.3 * math.exp(-step / 40) + 0.1 + 0.05 * math.sin(step)
        records.append(
            {"kind": "train", "step": step, "epoch": step // 50, "time": 0.01 * step,
             "loss": loss, "lr": lr, "grad_norm": 1.0 / (1 + step / 20),
             "examples_per_s": 5000.0, "unknown_key": "tolerated"}
        )  # fmt: skip
        if val and step % 25 == 0:
            metrics = (
                {"accuracy": 1 - loss / 3, "f1": 1 - loss / 2.9}
                if classifier
                else {"mse": loss, "r2": 1 - loss / 2.4}
            )
            records.append({"kind": "val", "step": step, "epoch": step // 50, "time": 0.01 * step,
                            "loss": loss * 1.1, **metrics})  # fmt: skip
        if step % 25 == 0:
            norms = {f"layers.{i}.weight": (i + 1) * 0.01 / (1 + step / 20) for i in range(20)}
            norms["frozen.bias"] = 0.0  # log axis cannot show it: must be skipped, not crash
            records.append({"kind": "grad_norms", "step": step, "epoch": 0, "time": 0.0,
                            "norms": norms})  # fmt: skip
    records.append({"kind": "mystery", "step": steps, "payload": [1, 2]})
    lines = [json.dumps(r) for r in records]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = {"name": name, "model": {"name": "mlp", "hidden": [64]}, "optim": {"lr": 1e-3}}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"name": name, "status": "completed", "steps": steps, "epochs": steps // 50,
               "wall_time_s": 3725.0}  # fmt: skip
    if classifier:
        summary |= {
            "best": {"metric": "val/accuracy", "value": 0.95, "step": 150},
            "test": {"loss": 0.2, "accuracy": 0.93},
            "confusion_matrix": [[50, 2, 0], [3, 40, 5], [0, 1, 60]],
            "class_names": ["cat", "dog", "<bird>"],
        }
    else:
        summary |= {"test": {"mse": 0.04, "r2": 0.97}, "notes": {"slope": 2.98, "intercept": 2.01}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture(scope="module")
def classifier_page(tmp_path_factory) -> str:
    run = write_run(tmp_path_factory.mktemp("cls") / "run", "digits-mlp", 200, classifier=True)
    return write_report(run).read_text(encoding="utf-8")


def test_classifier_report_has_every_figure_as_png(classifier_page):
    found = dict(IMG.findall(classifier_page))
    expected = {"loss", "val-metrics", "lr", "grad-norms", "throughput", "confusion-matrix"}
    assert set(found) == expected
    for data in found.values():
        assert base64.b64decode(data, validate=True).startswith(b"\x89PNG\r\n\x1a\n")


def test_report_is_well_formed_and_self_contained(classifier_page):
    checker = parse(classifier_page)
    assert "digits-mlp" in checker.title
    assert not re.search(r"https?://", classifier_page)
    urls = [v for k, v in checker.attrs if k in {"src", "href"}]
    assert urls and all(v.startswith("data:image/png;base64,") for v in urls)


def test_classifier_sections(classifier_page):
    assert 'id="confusion-matrix"' in classifier_page
    assert "&lt;bird&gt;" in classifier_page and "<bird>" not in classifier_page  # escaped
    assert "1h 02m 05s" in classifier_page  # wall time 3725 s
    assert "0.95 at step 150" in classifier_page
    assert '<td>accuracy</td><td class="num">0.93</td>' in classifier_page
    assert "161 examples, accuracy 0.9317" in classifier_page  # (50 + 40 + 60) / 161
    assert "<pre>name: digits-mlp" in classifier_page


def test_regression_report_has_notes_and_no_confusion_matrix(tmp_path):
    run = write_run(tmp_path / "reg", "line-fit", 100, classifier=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "stopped: early stopping"
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run).read_text()
    parse(page)
    assert '<span class="status stopped">stopped: early stopping</span>' in page
    assert "confusion-matrix" not in page
    assert '<td>slope</td><td class="num">2.98</td>' in page
    assert set(dict(IMG.findall(page))) == {"loss", "val-metrics", "lr", "grad-norms", "throughput"}


def test_single_step_run_without_val(tmp_path):
    run = write_run(tmp_path / "one", "tiny", 1, classifier=False, val=False)
    (run / "summary.json").unlink()
    page = write_report(run).read_text()
    parse(page)
    assert set(dict(IMG.findall(page))) == {"loss", "lr", "grad-norms", "throughput"}
    assert "no summary.json" in page and "<title>tiny" in page  # name falls back to config.yaml


def test_truncated_metrics_line_is_skipped_with_a_warning(tmp_path):
    run = write_run(tmp_path / "cut", "cut", 30, classifier=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 31, "lo')  # killed mid-write
    data = load_run(run)
    assert len([r for r in data.records if r.get("kind") == "train"]) == 30
    assert data.warnings == ["metrics.jsonl: skipped 1 malformed line(s), first at line 34"]


def test_malformed_confusion_matrix_is_skipped_with_a_warning(tmp_path):
    run = write_run(tmp_path / "bad", "bad-cm", 3, classifier=True, val=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["confusion_matrix"] = [[1, 2], [3]]
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run).read_text()
    assert 'id="confusion-matrix"' not in page
    assert "confusion_matrix is not a square matrix of counts" in page


def test_missing_or_empty_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        write_report(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is not a run folder"):
        write_report(tmp_path)


def test_write_is_atomic(tmp_path, monkeypatch):
    run = write_run(tmp_path / "r", "atomic", 5, classifier=False, val=False)
    (run / "report.html").write_text("old report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(run)
    assert (run / "report.html").read_text() == "old report"
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "report.html",
        "summary.json",
    ]


def test_per_class_rows_match_sklearn():
    y_true = [0] * 5 + [1] * 4 + [2] * 3
    y_pred = [0, 0, 0, 1, 2, 1, 1, 1, 0, 2, 2, 1]
    cm = [
        [sum(t == i and p == j for t, p in zip(y_true, y_pred)) for j in range(3)] for i in range(3)
    ]
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred)
    rows = per_class_rows(cm, ["a", "b", "c"])
    for i, (_, sup, p, r, f) in enumerate(rows):
        assert (sup, p, r, f) == pytest.approx((support[i], precision[i], recall[i], f1[i]))


def test_series_skips_missing_and_non_finite():
    records = [
        {"kind": "train", "step": 1, "loss": 1.0},
        {"kind": "train", "step": 2, "loss": float("nan")},
        {"kind": "train", "step": 3, "loss": None},
        {"kind": "train", "step": 4},
        {"kind": "val", "step": 5, "loss": 0.5, "accuracy": True, "note": "x"},
        {"kind": "train", "step": 6, "loss": 0.25},
    ]
    assert figures.series(records, "train", "loss") == ([1.0, 6.0], [1.0, 0.25])
    assert figures.metric_names(records, "val") == ["loss"]  # bools and strings are not metrics


def test_smooth_is_debiased_ema():
    assert figures.smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    # avg1 = 0.1, avg2 = 0.9 * 0.1 + 0.1 * 2 = 0.29; debiased by 1 - 0.9 ** i
    assert figures.smooth([1.0, 2.0]) == pytest.approx([1.0, 0.29 / 0.19])


def test_grad_norm_figure_shows_top_layers():
    records = [
        {"kind": "grad_norms", "step": s, "norms": {f"p{i}": float(i + 1) for i in range(20)}}
        for s in (1, 2)
    ]
    fig = figures.grad_norm_figure(records, top_k=12)
    (ax,) = fig.axes if len(fig.axes) == 1 else fig.axes[1:]
    assert sorted(line.get_label() for line in ax.lines) == sorted(f"p{i}" for i in range(8, 20))
    assert figures.grad_norm_figure([{"kind": "train", "step": 1, "loss": 1.0}]) is None
