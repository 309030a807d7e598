"""bigtrain.evaluation against references: torchmetrics, sklearn, closed forms, known truths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import ConfigError, DataError
from bigtrain.evaluation import (
    Outputs,
    bootstrap_ci,
    calibration_report,
    collect_outputs,
    expected_calibration_error,
    fit_temperature,
    membership_inference,
    per_class_table,
    percentile_interval,
    reliability_diagram,
    resample_indices,
    task_loss_per_example,
)
from bigtrain.evaluation.bootstrap import _loop, metric_samples
from bigtrain.evaluation.calibration import nll, probabilities
from bigtrain.evaluation.membership import roc_auc_and_advantage
from bigtrain.optim.regularization import PenalizedTask
from bigtrain.tasks.supervised import BinaryClassificationTask, ClassificationTask, RegressionTask


def outputs_of(task: Task, logits: torch.Tensor, y: torch.Tensor) -> Outputs:
    """Outputs as collect_outputs makes them, from fixed logits (an identity 'model')."""

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, i):
            out = logits[i]
            return out.unsqueeze(-1) if out.ndim == 1 else out

    index = torch.arange(len(y))
    return collect_outputs(Fixed(), task, [(index[:70], y[:70]), (index[70:], y[70:])])


# ------------------------------------------------------------------ kinds and losses


def test_collect_outputs_tells_the_three_kinds_and_refuses_others():
    torch.manual_seed(0)
    z3, y3 = torch.randn(100, 3), torch.randint(0, 3, (100,))
    z1, yb = torch.randn(100), torch.randint(0, 2, (100,))
    assert outputs_of(ClassificationTask(3), z3, y3).kind == "multiclass"
    assert outputs_of(BinaryClassificationTask(), z1, yb).kind == "binary"
    assert outputs_of(RegressionTask(), z1, torch.randn(100)).kind == "regression"

    class NoLogits(Task):
        def loss(self, model, batch):
            return StepOutput(torch.zeros(()), len(batch[1]))

    with pytest.raises(ConfigError, match="classification, binary or regression"):
        collect_outputs(nn.Linear(2, 1), NoLogits(), [(torch.randn(4, 2), torch.zeros(4))])
    with pytest.raises(DataError, match="no examples"):
        collect_outputs(nn.Linear(2, 1), RegressionTask(), [])


@pytest.mark.parametrize(
    "task, make",
    [
        (ClassificationTask(4, label_smoothing=0.1), lambda: (torch.randn(100, 4),
                                                              torch.randint(0, 4, (100,)))),
        (BinaryClassificationTask(label_smoothing=0.2), lambda: (torch.randn(100),
                                                                 torch.randint(0, 2, (100,)))),
        (RegressionTask("huber"), lambda: (3 * torch.randn(100), torch.randn(100))),
        (PenalizedTask(RegressionTask("mae"), [nn.Parameter(torch.ones(3))], l2=0.5),
         lambda: (torch.randn(100), torch.randn(100))),
    ],
)  # fmt: skip
def test_task_loss_per_example_averages_to_the_reported_loss(task, make):
    torch.manual_seed(1)
    z, y = make()
    out = outputs_of(task, z, y)
    losses = task_loss_per_example(out, task)
    assert losses is not None and losses.shape == (100,)
    assert float(losses.mean()) == pytest.approx(out.loss_sum / out.n, rel=1e-5)


# ------------------------------------------------------------------ calibration


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_equals_torchmetrics_calibration_error(n_bins):
    torch.manual_seed(2)
    z = torch.randn(500, 6) * 4
    z[:50] *= 30  # confidence exactly 1.0 in float32: torchmetrics' extra bucket
    y = torch.randint(0, 6, (500,))
    ref = torchmetrics.CalibrationError("multiclass", num_classes=6, n_bins=n_bins)(z, y)
    ece = expected_calibration_error(torch.softmax(z, 1), y, n_bins)
    assert ece == pytest.approx(float(ref), abs=1e-6)
    zb, yb = torch.randn(400) * 3, torch.randint(0, 2, (400,))
    p = torch.sigmoid(zb)
    ref = torchmetrics.CalibrationError("binary", n_bins=n_bins)(p, yb)
    assert expected_calibration_error(p, yb, n_bins) == pytest.approx(float(ref), abs=1e-6)


def test_reliability_diagram_bins_add_up_to_the_ece():
    torch.manual_seed(3)
    p, y = torch.softmax(torch.randn(300, 4) * 2, 1).double(), torch.randint(0, 4, (300,))
    rows = reliability_diagram(p, y, 10)
    assert len(rows) == 10 and sum(r["count"] for r in rows) == 300
    assert rows[0]["lower"] == 0 and rows[-1]["upper"] == 1
    # no confidence is exactly 1 here, so the ECE is the count-weighted |accuracy - confidence|
    gap = sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    assert gap / 300 == pytest.approx(expected_calibration_error(p, y, 10), abs=1e-12)


def _calibrated(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax/sigmoid(logits): calibrated at T = 1."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "multiclass":
        z = 1.5 * torch.randn(n, 5, generator=gen)
        return z, torch.multinomial(torch.softmax(z, 1), 1, generator=gen).squeeze(1)
    z = 2.0 * torch.randn(n, generator=gen)
    return z, (torch.rand(n, generator=gen) < torch.sigmoid(z)).long()


@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_temperature_scaling_recovers_a_known_temperature(kind):
    z, y = _calibrated(kind, 8000, seed=4)
    t = fit_temperature(3 * z, y, kind)  # logits scaled by 3: over-confident by T = 3
    assert t == pytest.approx(3.0, rel=0.05)
    # the fitted T lowers the NLL of fresh examples from the same over-confident model
    z2, y2 = _calibrated(kind, 5000, seed=5)
    assert nll(3 * z2, y2, kind, t) < nll(3 * z2, y2, kind) - 0.05
    assert nll(3 * z2, y2, kind, t) == pytest.approx(nll(z2, y2, kind), abs=0.02)


def test_calibration_report_before_and_after():
    task = ClassificationTask(5)
    zv, yv = _calibrated("multiclass", 3000, seed=6)
    zt, yt = _calibrated("multiclass", 2000, seed=7)
    val, test = outputs_of(task, 3 * zv, yv), outputs_of(task, 3 * zt, yt)
    rep = calibration_report(test, val, n_bins=15)
    assert rep["temperature"] == pytest.approx(3.0, rel=0.1)
    assert rep["after"]["ece"] < rep["before"]["ece"] / 2
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert rep["before"]["nll"] == pytest.approx(test.loss_sum / test.n, rel=1e-5)
    with pytest.raises(ConfigError, match="classifiers; this is a regression run"):
        calibration_report(outputs_of(RegressionTask(), torch.randn(100), torch.randn(100)))


def test_no_temperature_when_the_validation_split_is_all_right():
    """Every val example right: NLL(z / T) falls as T -> 0, so no T is fitted (none exists)."""
    task = ClassificationTask(3)
    y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(17))
    z = torch.randn(60, 3) + 3 * F.one_hot(y, 3)
    z[torch.arange(60), y] = z.max(1).values + 0.1  # the label's logit is the top one
    rep = calibration_report(outputs_of(task, z, y), outputs_of(task, z, y))
    assert rep["temperature"] is None and "after" not in rep
    assert "all 60 validation examples are classified correctly" in rep["temperature_note"]
    assert nll(z, y, "multiclass", 0.5) < nll(z, y, "multiclass", 1.0)  # smaller T, lower NLL


def test_probabilities_apply_the_temperature():
    z = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(probabilities(z, "multiclass", 2.0), torch.softmax(z.double() / 2, 1))


# ------------------------------------------------------------------ bootstrap


CASES = {
    "multiclass": (ClassificationTask(5), lambda n: (2 * torch.randn(n, 5),
                                                     torch.randint(0, 5, (n,)))),
    "binary": (BinaryClassificationTask(), lambda n: (torch.randn(n), torch.randint(0, 2, (n,)))),
    "regression": (RegressionTask(), lambda n: (torch.randn(n), torch.randn(n))),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(CASES))
def test_fast_resample_paths_equal_the_task_metric_objects(kind):
    torch.manual_seed(8)
    task, make = CASES[kind]
    out = outputs_of(task, *make(120))
    idx = resample_indices(out.n, 12, seed=1)
    idx[0] = idx[0].clamp(max=10)  # a resample holding few examples (classes missing)
    for name, metric in task.metrics().items():
        if name == "confusion_matrix":
            continue
        fast = metric_samples(metric, out.preds, out.targets, idx)
        reference = _loop(metric, out.preds, out.targets, idx)
        assert torch.allclose(fast, reference, atol=1e-6), name


def test_bootstrap_accuracy_interval_is_the_binomial_closed_form():
    """Resampling n examples of which k are right: accuracy* ~ Binomial(n, k/n) / n."""
    scipy_stats = pytest.importorskip("scipy.stats")
    n, k = 200, 170
    y = torch.zeros(n, dtype=torch.long)
    z = torch.zeros(n, 2)
    z[:k, 0], z[k:, 1] = 1.0, 1.0  # the first k predicted right (class 0), the rest wrong
    task = ClassificationTask(2, metrics=["accuracy"])
    ci = bootstrap_ci(task, outputs_of(task, z, y), level=0.95, n_resamples=5000, seed=0)
    acc = ci["accuracy"]
    assert acc.value == pytest.approx(k / n)
    lo = scipy_stats.binom.ppf(0.025, n, k / n) / n
    hi = scipy_stats.binom.ppf(0.975, n, k / n) / n
    assert abs(acc.low - lo) <= 1 / n + 1e-9 and abs(acc.high - hi) <= 1 / n + 1e-9


def test_bootstrap_intervals_cover_the_true_accuracy_at_about_the_nominal_rate():
    """300 test sets of 200 examples, each right with probability 0.85: ~95% of the 95%
    percentile intervals hold 0.85 (the binomial sd of the rate over 300 sets is 0.013)."""
    gen = torch.Generator().manual_seed(9)
    covered = 0
    for rep in range(300):
        correct = (torch.rand(200, generator=gen) < 0.85).double()
        idx = resample_indices(200, 1000, seed=rep)
        lo, hi = percentile_interval(correct[idx].mean(1), 0.95)
        covered += lo <= 0.85 <= hi
    assert 0.91 <= covered / 300 <= 0.98


def test_bootstrap_ci_keys_values_and_seed():
    torch.manual_seed(10)
    task, make = CASES["multiclass"]
    out = outputs_of(task, *make(150))
    ci = bootstrap_ci(task, out, level=0.9, n_resamples=200, seed=3)
    assert set(ci) == {"loss", "accuracy", "f1", "precision", "recall", "auroc"}
    metrics = task.metrics()
    metrics.update(out.preds, out.targets)
    for name, value in metrics.compute().items():
        if name in ci:
            assert ci[name].value == pytest.approx(float(value))
            assert ci[name].low <= ci[name].value <= ci[name].high
    assert ci == bootstrap_ci(task, out, level=0.9, n_resamples=200, seed=3)
    assert ci != bootstrap_ci(task, out, level=0.9, n_resamples=200, seed=4)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        bootstrap_ci(task, out, level=1.0)


def test_bootstrap_uses_the_generic_path_for_other_metrics():
    """An opt-in metric with no fast path (ECE) is recomputed with a copy of its object."""
    torch.manual_seed(11)
    task = ClassificationTask(3, metrics=["accuracy", "ece"])
    out = outputs_of(task, 3 * torch.randn(100, 3), torch.randint(0, 3, (100,)))
    ci = bootstrap_ci(task, out, n_resamples=50)
    ref = torchmetrics.CalibrationError("multiclass", num_classes=3, n_bins=15)
    assert ci["ece"].value == pytest.approx(float(ref(out.preds, out.targets)))
    assert 0 <= ci["ece"].low <= ci["ece"].high <= 1


# ------------------------------------------------------------------ per-class table


@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_per_class_table_equals_sklearn_classification_report(kind):
    from sklearn.metrics import classification_report

    torch.manual_seed(12)
    if kind == "multiclass":
        task = ClassificationTask(4)
        z, y = torch.randn(200, 4), torch.randint(0, 4, (200,))
        z[:, 3] -= 100  # class 3 is never predicted: precision 0 (zero_division=0)
        pred = z.argmax(1)
    else:
        task = BinaryClassificationTask()
        z, y = torch.randn(200), torch.randint(0, 2, (200,))
        pred = (torch.sigmoid(z) > 0.5).long()
    names = ["a", "b", "c", "d"] if kind == "multiclass" else ["neg", "pos"]
    rows = per_class_table(outputs_of(task, z, y), names)
    report = classification_report(
        y.numpy(), pred.numpy(), labels=list(range(len(names))), target_names=names,
        output_dict=True, zero_division=0,
    )  # fmt: skip
    for row in rows:
        ref = report[row["class"]]
        assert row["precision"] == pytest.approx(ref["precision"], abs=1e-6)
        assert row["recall"] == pytest.approx(ref["recall"], abs=1e-6)
        assert row["f1"] == pytest.approx(ref["f1-score"], abs=1e-6)
        assert row["support"] == ref["support"]
    with pytest.raises(ConfigError, match="3 class names for 2 classes|3 class names for 4"):
        per_class_table(outputs_of(task, z, y), ["x", "y", "z"])


# ------------------------------------------------------------------ membership inference


def test_roc_auc_and_advantage_equal_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score, roc_curve

    gen = torch.Generator().manual_seed(13)
    scores = torch.randint(0, 6, (300,), generator=gen).double()  # many ties
    labels = (torch.rand(300, generator=gen) < 0.3 + 0.1 * scores).long()
    auc, adv = roc_auc_and_advantage(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert adv == pytest.approx(max(tpr - fpr), abs=1e-12)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def test_membership_auc_is_chance_for_a_model_that_saw_neither_set():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))  # untrained
    a, b = _blobs(1000, 1), _blobs(700, 2)
    result = membership_inference(model, ClassificationTask(2), [a], [b])
    assert result.n_members == result.n_nonmembers == 700  # balanced: the larger subsampled
    null_std = math.sqrt((2 * 700 + 1) / (12 * 700**2))
    assert abs(result.auc - 0.5) < 4 * null_std


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_membership_auc_is_high_for_an_overfitted_model(kind):
    torch.manual_seed(15)
    (x, y), (xn, yn) = _blobs(64, 3), _blobs(64, 4)  # labels are noise: only memory fits them
    width = 2 if kind == "multiclass" else 1
    task = {"multiclass": ClassificationTask(2), "binary": BinaryClassificationTask(),
            "regression": RegressionTask()}[kind]  # fmt: skip
    if kind == "regression":
        y, yn = y.float() + 0.3 * torch.randn(64), yn.float() + 0.3 * torch.randn(64)
    model = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, width))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        task.loss(model, (x, y)).loss.backward()
        opt.step()
    result = membership_inference(model, task, [(x, y)], [(xn, yn)])
    # non-members the model happens to get right look like members: AUC ~0.75, not 1
    assert result.auc > 0.7 and result.advantage > 0.4
    assert (result.n_members, result.n_nonmembers) == (64, 64)


def test_membership_needs_both_sets():
    model = nn.Linear(10, 2)
    with pytest.raises(DataError, match="no examples"):
        membership_inference(model, ClassificationTask(2), [_blobs(10, 0)], [])


def test_per_example_losses_are_the_unsmoothed_data_losses():
    from bigtrain.evaluation import per_example_loss

    torch.manual_seed(16)
    z, y = torch.randn(50, 3), torch.randint(0, 3, (50,))
    out = outputs_of(ClassificationTask(3, label_smoothing=0.3), z, y)
    assert torch.allclose(per_example_loss(out), F.cross_entropy(z, y, reduction="none"))


# ------------------------------------------------------------------ report section


def test_report_trust_section_reads_the_files_and_names_a_broken_one(tmp_path):
    import json

    from bigtrain.report import load_run
    from bigtrain.report.trust import section

    (tmp_path / "summary.json").write_text(json.dumps({"name": "r", "status": "completed"}))
    assert section(load_run(tmp_path)) == ""  # no evaluation folder: no section
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "val.json").write_text("{not json")
    record = {
        "split": "test",
        "ci": {"accuracy": {"value": 0.9, "low": 0.8, "high": 0.95}},
        "bootstrap": {"level": 0.95, "resamples": 1000, "n": 50, "seed": 0},
        "calibration": {"n_bins": 15, "before": {"nll": 0.3, "ece": 0.05, "reliability": [
            {"lower": 0.8, "upper": 0.9, "count": 50, "confidence": 0.85, "accuracy": 0.9}]}},
        "per_class": [{"class": "cat", "precision": 1.0, "recall": 0.5, "f1": 0.667,
                       "support": 2}],
        "membership": {"auc": 0.61, "advantage": 0.2, "n_members": 50, "n_nonmembers": 50},
        "unknown": [1, 2],
    }  # fmt: skip
    (tmp_path / "evaluation" / "test.json").write_text(json.dumps(record))
    html = section(load_run(tmp_path))
    assert "evaluation/val.json could not be read" in html
    assert "0.95 confidence intervals" in html and "<td>accuracy</td>" in html
    assert 'id="fig-reliability-test"' in html and "<td>cat</td>" in html
    assert '<td>attack AUC</td><td class="num">0.61</td>' in html
