"""The command line as a user drives it: train, eval, predict, cv, recipes, resume, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bigtrain.cli.main import main
from bigtrain.core.loop import Trainer
from bigtrain.run import build_run

FAST = ["trainer.max_epochs=2", "trainer.tensorboard=false", "trainer.progress=false"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "iris"
    summary = build_run("iris-mlp", FAST, run_dir=run_dir, quiet=True).fit()
    return run_dir, summary


def test_train_json_and_eval_json(capsys, tmp_path, trained):
    code, out, _ = run_cli(
        capsys,
        "train",
        "tiny/iris-mlp",
        "--run-dir",
        str(tmp_path / "r"),
        "--json",
        "trainer.tensorboard=false",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["steps"] == 2 and "accuracy" in summary["test"]
    run_dir, trained_summary = trained
    code, out, _ = run_cli(capsys, "eval", str(run_dir), "--split", "test", "--json")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["accuracy"] == pytest.approx(trained_summary["test"]["accuracy"])
    assert len(metrics["confusion_matrix"]) == 3


def test_predict_csv(capsys, tmp_path, trained):
    from sklearn.datasets import load_iris

    run_dir, _ = trained
    iris = load_iris()
    csv = tmp_path / "new.csv"
    np.savetxt(csv, iris.data[:5], delimiter=",", header=",".join(iris.feature_names), comments="")
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(csv))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("prediction,p_") and len(lines) == 6
    code, _, err = run_cli(capsys, "predict", str(run_dir), str(tmp_path / "missing.csv"))
    assert code == 2 and "does not exist" in err


def test_report_command_rewrites_the_page(capsys, tmp_path, trained):
    run_dir, _ = trained
    out = tmp_path / "again.html"
    code, stdout, _ = run_cli(capsys, "report", str(run_dir), "--out", str(out))
    assert code == 0 and out.read_text().count("data:image/png;base64,") >= 3
    code, _, err = run_cli(capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and err.count("\n") == 1


def test_cv_prints_mean_and_std(capsys):
    code, out, _ = run_cli(capsys, "cv", "iris-mlp", "--folds", "3", "--json", *FAST)
    assert code == 0
    res = json.loads(out)
    acc = res["metrics"]["accuracy"]
    assert len(acc["folds"]) == 3 and 0.5 < acc["mean"] <= 1 and acc["std"] >= 0


def test_recipes_commands(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "recipes", "ls")
    assert code == 0 and "digits-mlp" in out
    code, out, _ = run_cli(capsys, "recipes", "show", "digits-mlp", "optim.lr=0.1")
    assert "lr: 0.1" in out
    code, out, _ = run_cli(capsys, "recipes", "cp", "digits-mlp", str(tmp_path))
    assert (tmp_path / "digits-mlp.yaml").is_file()
    code, out, _ = run_cli(capsys, "recipes", "validate")
    assert code == 0 and "invalid" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: digits-mlp\nmodel: {name: mlp, hiden: [3]}\n")
    code, out, _ = run_cli(capsys, "recipes", "validate", str(bad))
    assert code == 2 and "did you mean 'hidden'" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "digits-mlp", "trainer.max_epoch=3"],
            "unknown key 'trainer.max_epoch' (did you mean 'max_epochs'?)",
        ),
        (["train", "digits-mlp", "optim.lr=abc"], "optim.lr"),
        (["train", "digits-mlp", "model.activation=relu6"], "relu6"),
        (["train", "nosuch-recipe"], "unknown recipe 'nosuch-recipe'"),
        (["eval", "/nonexistent/run"], "not a bigtrain run folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_data_errors_are_one_line(capsys, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n" * 10)
    code, _, err = run_cli(
        capsys,
        "train",
        "digits-mlp",
        "data.name=csv",
        f"data.path={csv}",
        "data.target=lable",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert code == 2 and "lable" in err and "did you mean 'label'" in err
    code, _, err = run_cli(
        capsys,
        "train",
        "digits-mlp",
        "data.name=csv",
        f"data.path={tmp_path / 'nope.csv'}",
        "data.target=label",
    )
    assert code == 2 and "nope.csv" in err and err.count("\n") == 1


def test_existing_run_folder_is_not_damaged(capsys, tmp_path, trained):
    run_dir, _ = trained
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "train", "iris-mlp", "--run-dir", str(run_dir))
    assert code == 2 and "already holds a run" in err
    code, _, err = run_cli(capsys, "train", "wine-mlp", "--run-dir", str(run_dir), "--resume")
    assert code == 2 and "holds a different run" in err
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_truncated_checkpoint_is_one_line(capsys, tmp_path):
    run_dir = tmp_path / "r"
    build_run("tiny/iris-mlp", ["trainer.tensorboard=false"], run_dir=run_dir, quiet=True).fit()
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    for weights in (run_dir / "checkpoints").rglob("model.safetensors"):
        weights.write_bytes(weights.read_bytes()[:40])
    code, _, err = run_cli(capsys, "eval", str(run_dir))
    assert code == 2 and "is corrupt" in err and err.count("\n") == 1
    assert latest.exists()


def test_resume_after_crash_is_bitwise_identical(tmp_path, monkeypatch):
    overrides = [
        "trainer.max_epochs=null",
        "trainer.max_steps=40",
        "trainer.eval_every=10",
        "trainer.tensorboard=false",
        "trainer.progress=false",
        "model.dropout=0.2",
        "trainer.checkpoint_interval_s=0",
    ]
    straight = build_run("digits-mlp", overrides, run_dir=tmp_path / "a", quiet=True)
    straight.fit()

    real_step = Trainer.train_step

    def crash_at_25(self, batch):
        if self.state.step == 25:
            raise KeyboardInterrupt  # the process dies between checkpoints
        real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        build_run("digits-mlp", overrides, run_dir=tmp_path / "b", quiet=True).fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    torch.manual_seed(1234)  # a new process: other global RNG state
    resumed = build_run("digits-mlp", overrides, run_dir=tmp_path / "b", resume=True, quiet=True)
    assert resumed.trainer.state.step == 0
    resumed.fit()
    a = load_file(str(tmp_path / "a/checkpoints/step-0000040/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step-0000040/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_main_job_runs_as_a_module(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bigtrain.cli.main",
            "train",
            "tiny/digits-mlp",
            "--run-dir",
            str(tmp_path / "m"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "report:" in out.stdout and "accuracy" in out.stdout


def test_monitor_a_metric_the_light_evaluation_would_skip(tmp_path):
    run = build_run(
        "digits-mlp",
        [
            "trainer.monitor=val/auroc",
            "trainer.max_epochs=3",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ],
        run_dir=tmp_path / "r",
        quiet=True,
    )
    best = run.fit()["best"]
    history = run.trainer.state.history
    assert best["metric"] == "val/auroc" and all("val/auroc" in h for h in history)
    assert best["value"] == max(h["val/auroc"] for h in history)  # higher is better


@pytest.mark.parametrize("batch, steps_per_epoch", [(1, 90), (16, 6), ("full", 1)])
def test_stochastic_minibatch_and_full_batch_by_configuration(tmp_path, batch, steps_per_epoch):
    # iris: 150 flowers, 20% validation, 20% test -> 90 training examples
    run = build_run(
        "iris-mlp",
        [
            f"data.batch_size={batch}",
            "trainer.max_epochs=2",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ],
        run_dir=tmp_path / "r",
        quiet=True,
    )
    assert run.fit()["steps"] == 2 * steps_per_epoch


def test_batch_size_ramp_grows_the_batches(tmp_path):
    from bigtrain.core.callback import Callback, CallbackList

    sizes = []

    class Sizes(Callback):
        def on_batch_start(self, state):
            sizes.append(state.batch[0].shape[0])

    run = build_run(
        "digits-mlp",
        [
            "trainer.max_epochs=null",
            "trainer.max_steps=12",
            "batch_size_schedule={name: linear_ramp, start: 16, end: 64, "
            "ramp_steps: 8, multiple_of: 16}",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ],
        run_dir=tmp_path / "r",
        quiet=True,
    )
    trainer = run.trainer
    trainer.callbacks = CallbackList([*trainer.callbacks.callbacks, Sizes()])
    run.fit()
    assert sizes[0] == 16 and sizes[-1] == 64 and sizes == sorted(sizes)


def test_predict_headerless_csv_keeps_every_row(capsys, tmp_path, trained):
    from sklearn.datasets import load_iris

    run_dir, _ = trained
    csv = tmp_path / "rows.csv"
    np.savetxt(csv, load_iris().data[:4], delimiter=",")  # no header line
    code, out, err = run_cli(capsys, "predict", str(run_dir), str(csv))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 5  # header + 4 predictions


def test_user_csv_with_string_labels_train_then_predict(capsys, tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns={"target": "species"})
    frame["species"] = frame["species"].map(dict(enumerate(iris.target_names)))
    csv = tmp_path / "flowers.csv"
    frame.to_csv(csv, index=False)
    code, out, err = run_cli(
        capsys,
        "train",
        "iris-mlp",
        "data.name=csv",
        f"data.path={csv}",
        "data.target=species",
        "--run-dir",
        str(tmp_path / "r"),
        "--json",
        *FAST[1:],
        "trainer.max_epochs=30",
    )
    assert code == 0, err
    assert json.loads(out)["test"]["accuracy"] > 0.8
    new = tmp_path / "new.csv"
    frame.drop(columns="species").iloc[[0, 75, 149]].to_csv(new, index=False)
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "r"), str(new))
    assert code == 0, err
    rows = out.strip().splitlines()
    assert rows[0] == "prediction,p_setosa,p_versicolor,p_virginica"
    assert rows[1].startswith("setosa,")
