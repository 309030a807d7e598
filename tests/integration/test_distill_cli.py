"""`bigtrain compress distill` end to end: a run folder that `bigtrain eval` reads; bad input is
one line and exit code 2, with nothing written."""

import json

import pytest

from bigtrain.cli.main import main

QUIET = ["trainer.tensorboard=false", "trainer.progress=false"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "tiny/digits-mlp", "trainer.max_steps=3", *QUIET, "--run-dir",
                 str(run_dir), "--quiet"]) == 0  # fmt: skip
    return run_dir


def test_distilled_student_is_a_run_folder_eval_reads(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    code = main([
        "compress", "distill", "--teacher", str(teacher), "--student", "tiny/digits-mlp",
        "model.hidden=[16]", *QUIET, "--temperature", "3", "--alpha", "0.8", "--out", str(out),
        "--json",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["steps"] == 2
    config = (out / "config.yaml").read_text()
    assert "temperature: 3.0" in config and "alpha: 0.8" in config
    assert str(teacher.resolve()) in config
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("soft_loss" in r for r in records if r["kind"] == "train")
    # eval needs no teacher: it rebuilds the student alone, even with the teacher gone
    (teacher / "config.yaml").rename(teacher / "config.yaml.away")
    try:
        assert main(["eval", str(out), "--json"]) == 0
    finally:
        (teacher / "config.yaml.away").rename(teacher / "config.yaml")
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--student", "tiny/iris-mlp"], "predicts 10 classes but the student 3"),
        (["--student", "tiny/digits-mlp", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["--student", "tiny/digits-mlp", "--temperature", "0"], "--temperature must be > 0"),
        (["--student", "tiny/shakespeare-char"], "is a classifier but the student is a language"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(teacher, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["compress", "distill", "--teacher", str(teacher), *argv, *QUIET,
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written


def test_missing_or_untrained_teacher(tmp_path, teacher, capsys):
    code = main(["compress", "distill", "--teacher", str(tmp_path / "nope"), "--student",
                 "tiny/digits-mlp"])  # fmt: skip
    assert code == 2 and "does not exist" in capsys.readouterr().err
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text((teacher / "config.yaml").read_text())
    out = tmp_path / "out"
    code = main(["compress", "distill", "--teacher", str(untrained), "--student",
                 "tiny/digits-mlp", *QUIET, "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no checkpoint" in err and len(err.splitlines()) == 1
    assert not out.exists()
