"""Hardening below the command line: target reading by task, report titles, recipes, imports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bigtrain.cli import main as cli_main
from bigtrain.config import load_recipe
from bigtrain.data import DataConfig, load_data
from bigtrain.data.files import read_inputs
from bigtrain.data.tables import target_task
from bigtrain.errors import DataError


@pytest.fixture
def grades(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"hours": rng.normal(size=60), "absences": rng.normal(size=60)})
    frame["GRADE"] = (frame["hours"] > 0).astype(float)  # a 0.0/1.0 float column
    frame.to_csv(tmp_path / "grades.csv", index=False)
    return frame, tmp_path / "grades.csv"


def test_float_01_targets_become_class_ids_for_a_classification_task(grades):
    frame, path = grades
    cfg = DataConfig(name="csv", path=str(path), target="GRADE")
    assert load_data(cfg).kind == "regression"  # no task asked for: inferred from the floats
    for task in ("classification", "binary"):
        b = load_data(cfg, task=task)
        assert b.kind == "binary" and b.num_classes == 2 and b.train.y.dtype == torch.int64
        # the same split as data.task: classification (stratified on the labels)
        same = load_data(cfg.model_copy(update={"task": "classification"}))
        assert torch.equal(b.train.index, same.train.index)
        ys = torch.cat([b.train.y, b.val.y, b.test.y])[
            torch.cat([b.train.index, b.val.index, b.test.index]).argsort()
        ]
        assert ys.tolist() == frame["GRADE"].astype(int).tolist()  # fmt: skip


def test_continuous_targets_with_a_classification_task_name_the_setting(grades):
    frame, path = grades
    frame["GRADE"] = frame["hours"]
    frame.to_csv(path, index=False)
    cfg = DataConfig(name="csv", path=str(path), target="GRADE")
    with pytest.raises(DataError, match="whole numbers or names.*set task.name: regression") as e:
        load_data(cfg, task="classification")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="set data.task: regression"):
        load_data(cfg.model_copy(update={"task": "classification"}))


def test_task_name_regression_reads_integer_labels_as_values_and_binary_needs_two():
    b = load_data(DataConfig(name="iris"), task="regression")
    assert b.kind == "regression" and b.train.y.dtype == torch.float32
    with pytest.raises(DataError, match="task.name 'binary' needs 2 classes.*have 3"):
        load_data(DataConfig(name="iris"), task="binary")
    assert load_data(DataConfig(name="iris"), task="language_model").kind == "classification"


def test_target_task_prefers_data_task():
    assert target_task("regression", "classification") == ("regression", "data.task")
    assert target_task("auto", "binary") == ("classification", "task.name")
    assert target_task("auto", "auto") == ("auto", "data.task")
    assert target_task("auto", None) == ("auto", "data.task")


def test_read_inputs_npz_never_unpickles(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([[1.0, 2.0]], dtype=object))
    with pytest.raises(DataError, match="pickled Python objects"):
        read_inputs(tmp_path / "obj.npz", None, 2)
    np.savez(tmp_path / "ok.npz", x=np.array([1.0, 2.0, 3.0]))  # 1-D: one feature each
    assert read_inputs(tmp_path / "ok.npz", None, 1).shape == (3, 1)


def test_training_npz_single_array_is_one_line(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 2)))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(DataError, match="single .npy array, not an .npz archive"):
        load_data(DataConfig(name="npz", path=str(tmp_path / "a.npz")))


def test_report_titles_final_metrics_after_the_split_evaluated(tmp_path):
    from bigtrain.report import write_report

    for split, title in (("val", "Validation metrics"), ("test", "Test metrics"), (None, "Test")):
        run = tmp_path / str(split)
        run.mkdir()
        summary = {"name": "lm", "status": "completed", "test": {"loss": 1.5}, "test_split": split}
        (run / "summary.json").write_text(json.dumps(summary))
        page = write_report(run).read_text()
        assert f'<h2 id="test">{title}' in page
        if split == "val":
            assert "Test metrics" not in page


def test_textbook_linear_regression_says_it_does_not_converge():
    slow, fast = load_recipe("linear-regression-gd"), load_recipe("linear-regression-gd-converged")
    assert "not converge in 1000 steps" in slow.description.replace("NOT", "not")
    assert "linear-regression-gd-converged" in slow.description
    assert (slow.optim.lr, fast.optim.lr) == (0.01, 0.5)
    assert fast.data == slow.data and fast.trainer.max_steps == slow.trainer.max_steps == 1000


def test_a_command_module_that_fails_to_import_is_not_skipped(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", [*cli_main.COMMAND_MODULES, "broken_cmd"])
    with pytest.raises(ModuleNotFoundError, match="bigtrain.cli.broken_cmd"):
        cli_main.main(["recipes", "ls"])


def test_optim_plot_path_is_a_png_or_a_folder(tmp_path):
    from bigtrain.cli.optim_cmd import plot_path
    from bigtrain.errors import ConfigError

    assert plot_path(None, "beale").name == "optim_beale.png"
    assert plot_path(str(tmp_path), "beale") == tmp_path / "optim_beale.png"
    assert plot_path(f"{tmp_path}/new/", "beale") == tmp_path / "new" / "optim_beale.png"
    assert plot_path(str(tmp_path / "a" / "b.PNG"), "beale") == tmp_path / "a" / "b.PNG"
    (tmp_path / "f").write_text("")
    for bad, message in (("f", "neither a folder nor a .png"), ("f/x.png", "is a file")):
        with pytest.raises(ConfigError, match=message):
            plot_path(str(tmp_path / bad), "beale")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing created
