"""Tuning tools below the command line: measured memory, search spaces, the pruning callback,
the LR range test and the batch-size search, on tiny seeded CPU problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigtrain.build import build
from bigtrain.config import load_recipe
from bigtrain.errors import ConfigError, TrainingError
from bigtrain.plan.measure import peak_tensor_memory, process_peak_rss
from bigtrain.tune.batch_size import find_batch_size, measure, parse_memory
from bigtrain.tune.lr_find import lr_find, ramp, suggest
from bigtrain.tune.space import check_space, fingerprint, load_space

MiB = 2**20


# ---------------------------------------------------------------- peak_tensor_memory
def test_peak_tensor_memory_counts_a_kept_4mb_tensor():
    kept = []
    peak = peak_tensor_memory(lambda: kept.append(torch.empty(4_000_000, dtype=torch.uint8)))
    assert 4_000_000 <= peak < 4_500_000


def test_peak_tensor_memory_sees_two_tensors_held_at_once():
    def together():
        a, b = torch.ones(MiB // 4), torch.ones(MiB // 4)  # 1 MiB each (float32)
        a.add_(b)

    def one_after_the_other():
        a = torch.ones(MiB // 4)
        a.add_(1)
        del a
        b = torch.ones(MiB // 4)
        b.add_(1)

    both, single = peak_tensor_memory(together), peak_tensor_memory(one_after_the_other)
    assert single == pytest.approx(MiB, rel=0.05)
    assert both - single == pytest.approx(MiB, rel=0.05)


def test_peak_tensor_memory_ignores_what_was_live_before_and_rejects_other_devices():
    before = torch.ones(4 * MiB)  # 16 MiB live before the call: the baseline
    assert peak_tensor_memory(lambda: before.add_(1)) < 1024  # in place: nothing allocated
    with pytest.raises(ValueError, match="cpu or cuda"):
        peak_tensor_memory(lambda: None, "meta")
    rss = process_peak_rss()
    assert rss is None or rss > before.numel() * 4


# ---------------------------------------------------------------- spaces
def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_space_file_parses_every_type(tmp_path):
    space = load_space(
        _space(
            tmp_path,
            "optim.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}\n"
            "model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}\n"
            "data.batch_size: {type: int, low: 16, high: 128, log: true}\n"
            "model.hidden: {type: categorical, choices: [[32], [64, 32]]}\n",
        )
    )
    assert [p.key for p in space] == [
        "optim.lr",
        "model.dropout",
        "data.batch_size",
        "model.hidden",
    ]
    assert space[0].log and space[1].step == 0.1 and space[2].type == "int"
    assert space[3].choices == ([32], [64, 32])


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{type: flaot, low: 0, high: 1}", "did you mean 'float'"),
        ("{type: float, low: 0.5, high: 0.5}", "low must be below high"),
        ("{type: float, low: 0.9, high: 0.1}", "low must be below high"),
        ("{type: float, low: 0.0, high: 0.1, log: true}", "log: true needs low > 0"),
        ("{type: float, low: 0.0}", "needs 'high'"),
        ("{type: int, low: 1.5, high: 4}", "low must be an integer"),
        ("{type: categorical, choices: []}", "choices must be a non-empty list"),
        ("{type: categorical, choices: [1, 1]}", "choices repeat a value"),
        ("{type: float, low: 0, high: 1, logg: true}", "did you mean 'log'"),
        ("0.5", "must be a mapping"),
    ],
)
def test_malformed_space_entries_are_one_line_errors(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_space(_space(tmp_path, f"model.dropout: {entry}\n"))
    assert "\n" not in str(err.value) and "model.dropout" in str(err.value)


def test_space_keys_are_checked_against_the_recipe(tmp_path):
    data = load_recipe("tiny/digits-mlp").model_dump(mode="json")
    for typo, closest in (("optim.lrr", "optim.lr"), ("model.dropuot", "model.dropout")):
        space = load_space(_space(tmp_path, f"{typo}: {{type: float, low: 0.01, high: 0.1}}\n"))
        with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
            check_space(space, data, "digits-mlp")
    # a bound the schema refuses is caught before any trial runs
    space = load_space(_space(tmp_path, "model.dropout: {type: float, low: 0.0, high: 1.5}\n"))
    with pytest.raises(ConfigError, match="reaches 1.5"):
        check_space(space, data, "digits-mlp")
    # a key of a section the recipe leaves unset is a key all the same
    space = load_space(_space(tmp_path, "batch_size_schedule.start: {type: int, low: 8, high: 16}"))
    check_space(space, data, "digits-mlp")


def test_every_shipped_space_fits_its_recipe():
    from bigtrain.tune.space import space_names

    assert "digits-cnn" in space_names()
    for name in space_names():
        check_space(load_space(name), load_recipe(name).model_dump(mode="json"), name)


def test_fingerprint_ignores_the_searched_keys_only(tmp_path):
    space = load_space(_space(tmp_path, "optim.lr: {type: float, low: 1.0e-4, high: 0.1}\n"))
    base = load_recipe("tiny/digits-mlp").model_dump(mode="json")
    other_lr = load_recipe("tiny/digits-mlp", ["optim.lr=0.5", "name=x"]).model_dump(mode="json")
    other_wd = load_recipe("tiny/digits-mlp", ["optim.weight_decay=0.5"]).model_dump(mode="json")
    assert fingerprint(base, space)[0] == fingerprint(other_lr, space)[0]
    assert fingerprint(base, space)[0] != fingerprint(other_wd, space)[0]


def test_params_draw_recipe_values_from_an_optuna_trial(tmp_path):
    optuna = pytest.importorskip("optuna", reason="pip install 'bigtrain[tune]'")
    space = load_space(
        _space(
            tmp_path,
            "data.batch_size: {type: int, low: 16, high: 128, log: true}\n"
            "model.hidden: {type: categorical, choices: [[32], [64, 32]]}\n"
            "model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.25}\n",
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in space}
        assert 16 <= values["data.batch_size"] <= 128 and isinstance(values["data.batch_size"], int)
        assert values["model.hidden"] in ([32], [64, 32])
        assert values["model.dropout"] in (0.0, 0.25, 0.5)
        assert space[1].decode(trial.params["model.hidden"]) == values["model.hidden"]
        study.tell(trial, 0.0)


# ---------------------------------------------------------------- pruning
def _tiny(*overrides: str):
    return load_recipe(
        "tiny/digits-mlp",
        ["trainer.max_steps=20", "trainer.eval_every=5", "schedule.warmup_steps=0", *overrides],
    )


@pytest.mark.parametrize("others_reached, pruned", [(0.99, True), (0.0, False)])
def test_trial_reporter_prunes_a_trial_behind_the_median(others_reached, pruned):
    optuna = pytest.importorskip("optuna", reason="pip install 'bigtrain[tune]'")
    from bigtrain.tune.search import TrialReporter, WithReporter

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    # an earlier trial that reached `others_reached` at every quarter of its training
    curve = {250: others_reached, 500: others_reached, 750: others_reached, 1000: others_reached}
    study.add_trial(optuna.trial.create_trial(value=others_reached, intermediate_values=curve))
    trial = study.ask()
    reporter = TrialReporter(trial)
    built = build(_tiny("optim.lr=1e-5"), run_dir=None, quiet=True,  # learns almost nothing
                  extra_wrappers=[WithReporter(reporter)])  # fmt: skip
    state = built.trainer.fit()
    if pruned:
        assert reporter.pruned_at == 250 and state.step == 5
        assert "pruned at 25%" in state.stop_reason
        assert list(study.trials[1].intermediate_values) == [250]
    else:
        assert reporter.pruned_at is None and state.step == 20
        assert list(study.trials[1].intermediate_values) == [250, 500, 750, 1000]


# ---------------------------------------------------------------- LR range test
def test_suggestions_of_a_known_curve():
    lrs = list(np.logspace(-6, 0, 61))
    # falls fastest at lr = 1e-3 (tanh's inflection), lowest at 1e-1, then rises
    loss = [2 - math.tanh(math.log10(lr) + 3) + max(0.0, math.log10(lr) + 1) ** 2 for lr in lrs]
    steepest, min_over_10 = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-3, rel=0.01)
    assert min_over_10 == pytest.approx(lrs[int(np.argmin(loss))] / 10)
    assert suggest(lrs[:10], [1.0 + i for i in range(10)]) == (None, None)  # never fell


def _loss_after_training(lr: float) -> float:
    cfg = _tiny(f"optim.lr={lr}", "schedule.name=constant", "trainer.max_steps=40",
                "trainer.eval_every=40")  # fmt: skip
    built = build(cfg, run_dir=None, quiet=True)
    try:
        state = built.trainer.fit()
    except TrainingError:  # diverged: the loss became non-finite
        return math.inf
    loss = state.metrics["val/loss"]
    return loss if math.isfinite(loss) else math.inf


def test_lr_find_suggests_a_rate_that_trains_better_than_the_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start, end = 1e-5, 10.0
    result = lr_find(_tiny(), start=start, end=end, steps=100)
    assert list(tmp_path.iterdir()) == []  # a throwaway model: nothing written
    assert result.stopped_early  # lr 10 with AdamW diverges
    assert result.lrs[0] == pytest.approx(start) and result.lrs[1] == pytest.approx(
        ramp(start, end, 100)(1)
    )
    assert 1e-4 <= result.steepest <= 1.0 and 1e-4 <= result.min_over_10 <= 1.0
    # the smoothed loss is the bias-corrected EMA of the raw losses
    avg = 0.0
    for i, loss in enumerate(result.losses[:5]):
        avg = 0.98 * avg + 0.02 * loss
        assert result.smoothed[i] == pytest.approx(avg / (1 - 0.98 ** (i + 1)))
    at_suggestion = _loss_after_training(result.steepest)
    assert at_suggestion < _loss_after_training(start)
    assert at_suggestion < _loss_after_training(end)


def test_lr_find_refuses_bad_ranges():
    cfg = _tiny()
    for kwargs, message in (
        ({"start": 0.0}, "--start"),
        ({"start": 1e-3, "end": 1e-4}, "--end must be above"),
        ({"steps": 2}, "--steps"),
    ):
        with pytest.raises(ConfigError, match=message):
            lr_find(cfg, **kwargs)


# ---------------------------------------------------------------- batch-size search
@pytest.mark.parametrize(
    "text, expected",
    [("4GiB", 4 * 2**30), ("512MiB", 512 * MiB), ("8GB", 8 * 10**9), ("2g", 2 * 2**30),
     ("1.5 kib", 1536), ("1000", 1000)],
)  # fmt: skip
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["4 GBB", "-1GiB", "0", "lots"])
def test_parse_memory_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="--memory-limit"):
        parse_memory(text)


def test_batch_size_search_stays_under_the_limit_and_bisects():
    cfg = _tiny()  # batch 16
    limit = int(measure(cfg, 16, 1)[0] * 2.5)  # room for a few doublings, not for the split
    result = find_batch_size(cfg, memory_limit=limit, steps=1)
    tried = [p for p in result.probes if p.peak_bytes is not None]
    assert result.best is not None and result.best >= 32
    best = next(p for p in tried if p.batch_size == result.best)
    assert best.peak_bytes <= limit and best.fits
    for p in result.probes:  # a size predicted to pass the limit is never tried
        if p.predicted_bytes is not None and p.predicted_bytes > limit:
            assert p.peak_bytes is None and not p.fits
        assert p.fits == (p.peak_bytes is not None and p.peak_bytes <= limit)
    too_big = min(p.batch_size for p in result.probes if not p.fits)
    assert result.best < too_big <= result.best + max(1, result.best // 16)
    curve = result.curve()
    assert [p.peak_bytes for p in curve] == sorted(p.peak_bytes for p in curve)  # grows with b
    assert all(p.throughput > 0 for p in curve)


def test_batch_size_search_stops_at_max_batch():
    result = find_batch_size(_tiny(), memory_limit=2**40, max_batch=40, steps=1)
    assert [p.batch_size for p in result.probes] == [16, 32, 40]
    assert result.best == 40 and "caps" in result.reason


# ---------------------------------------------------------------- figures
def test_tuning_figures_plot_what_they_are_given():
    from bigtrain.report.tuning import batch_size_figure, history_figure, params_figure

    rows = [
        {"number": 0, "state": "complete", "value": 0.5, "params": {"optim.lr": 1e-3},
         "intermediate": {500: 0.4, 1000: 0.5}},
        {"number": 1, "state": "pruned", "value": 0.2, "params": {"optim.lr": 1e-1},
         "intermediate": {500: 0.2}},
        {"number": 2, "state": "complete", "value": 0.7, "params": {"optim.lr": 1e-2},
         "intermediate": {500: 0.6, 1000: 0.7}},
    ]  # fmt: skip
    assert history_figure([{**rows[0], "value": None}], "val/accuracy", "max") is None
    history = history_figure(rows, "val/accuracy", "max").axes[0]
    best_line = history.lines[0]
    assert list(best_line.get_xdata()) == [0, 2] and list(best_line.get_ydata()) == [0.5, 0.7]
    space = [{"key": "optim.lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True}]
    ax = params_figure(rows, space, "val/accuracy").axes[0]
    assert ax.get_xscale() == "log" and len(ax.collections) == 2  # complete and pruned
    points = [{"batch_size": 16, "peak_bytes": MiB, "throughput": 100.0},
              {"batch_size": 32, "peak_bytes": None, "throughput": None}]  # fmt: skip
    memory = batch_size_figure(points, 2 * MiB).axes[1]
    assert list(memory.lines[0].get_ydata()) == [1.0]  # MiB; the unmeasured size is left out
