"""Bad input on the command line is one readable line and exit code 2, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bigtrain._io import host_tag
from bigtrain.cli.main import main
from bigtrain.config import dump_config, load_recipe
from bigtrain.run import build_run

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line_error(capsys, *argv) -> str:
    """Run the CLI in-process; assert exit 2 and a single ``error: ...`` line on stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    return err


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "iris"
    build_run("tiny/iris-mlp", ["trainer.tensorboard=false"], run_dir=run_dir, quiet=True).fit()
    return run_dir


def config_only_run(folder, recipe):
    """A run folder holding only the config.yaml a run of ``recipe`` writes (nothing trained)."""
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(load_recipe(recipe)))
    return folder


# ----------------------------------------------------------------------------- predict
def test_predict_refuses_pickled_npz(capsys, tmp_path, iris_run):
    np.savez(tmp_path / "obj.npz", x=np.array([[1, 2, 3, 4]], dtype=object))
    err = one_line_error(capsys, "predict", iris_run, tmp_path / "obj.npz")
    assert "pickled Python objects" in err
    (tmp_path / "pickle.npz").write_bytes(__import__("pickle").dumps({"x": [1, 2, 3, 4]}))
    err = one_line_error(capsys, "predict", iris_run, tmp_path / "pickle.npz")
    assert "pickled Python objects" in err


def test_predict_refuses_npz_of_strings_and_a_single_npy(capsys, tmp_path, iris_run):
    np.savez(tmp_path / "s.npz", x=np.array([["a", "b", "c", "d"]]))
    assert "must be numbers" in one_line_error(capsys, "predict", iris_run, tmp_path / "s.npz")
    np.save(tmp_path / "a.npy", np.zeros((2, 4)))
    os.rename(tmp_path / "a.npy", tmp_path / "a.npz")
    assert "single .npy array" in one_line_error(capsys, "predict", iris_run, tmp_path / "a.npz")


@pytest.mark.parametrize(
    "rows, message",
    [
        ("5.1,3.5,1.4,0.2\n5.1,,1.4,0.2\n", "row 2 (line 3), column 'sepal width (cm)' is missing"),
        ("5.1,3.5,1.4,0.2\n5.1,3.5,inf,0.2\n", "row 2 (line 3), column 'petal length (cm)' is inf"),
        ("5.1,3.5,1.4,nan\n", "row 1 (line 2), column 'petal width (cm)' is missing or NaN"),
        ("5.1,abc,1.4,0.2\n", "row 1 (line 2), column 'sepal width (cm)' is 'abc', not a number"),
    ],
)
def test_predict_refuses_nan_inf_and_text_naming_row_and_column(
    capsys, tmp_path, iris_run, rows, message
):
    csv = tmp_path / "new.csv"
    csv.write_text(",".join(IRIS_COLUMNS) + "\n" + rows)
    before = files_under(tmp_path)
    err = one_line_error(capsys, "predict", iris_run, csv, "--out", tmp_path / "preds.csv")
    assert message in err
    assert files_under(tmp_path) == before  # no predictions file, no temp file


def test_predict_refuses_nan_in_headerless_csv_and_npz(capsys, tmp_path, iris_run):
    (tmp_path / "rows.csv").write_text("5.1,3.5,1.4,0.2\n5.1,-inf,1.4,0.2\n")
    err = one_line_error(capsys, "predict", iris_run, tmp_path / "rows.csv")
    assert "row 2 (line 2), column 2 is infinite" in err
    np.savez(tmp_path / "x.npz", x=np.array([[5.1, 3.5, 1.4, 0.2], [np.nan, 1, 1, 1]]))
    assert "row 2, column 1 is missing or NaN" in one_line_error(
        capsys, "predict", iris_run, tmp_path / "x.npz"
    )
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 5)))
    assert "5 features each, the model takes 4" in one_line_error(
        capsys, "predict", iris_run, tmp_path / "wide.npz"
    )


def test_predict_refuses_empty_inputs(capsys, tmp_path, iris_run):
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in one_line_error(capsys, "predict", iris_run, tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text(",".join(IRIS_COLUMNS) + "\n")
    assert "no rows" in one_line_error(capsys, "predict", iris_run, tmp_path / "header.csv")


def test_predict_out_must_be_a_file_in_an_existing_folder(capsys, tmp_path, iris_run):
    csv = tmp_path / "new.csv"
    csv.write_text(",".join(IRIS_COLUMNS) + "\n5.1,3.5,1.4,0.2\n")
    (tmp_path / "folder").mkdir()
    before = files_under(tmp_path)
    err = one_line_error(capsys, "predict", iris_run, csv, "--out", tmp_path / "folder")
    assert "is a folder" in err
    err = one_line_error(capsys, "predict", iris_run, csv, "--out", tmp_path / "no" / "p.csv")
    assert f"folder {tmp_path / 'no'} does not exist" in err
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("tiny/shakespeare-char", "use `bigtrain generate"),
        ("tiny/shakespeare-lstm", "use `bigtrain generate"),
        ("tiny/shakespeare-genre", "classifies text"),
    ],
)
def test_predict_refuses_text_runs(capsys, tmp_path, recipe, message):
    run_dir = config_only_run(tmp_path / "run", recipe)
    (tmp_path / "new.csv").write_text("a,b\n1,2\n")
    err = one_line_error(capsys, "predict", run_dir, tmp_path / "new.csv")
    assert "predict is for tabular/image runs" in err and message in err
    assert files_under(run_dir) == ["config.yaml"]


# ----------------------------------------------------------------------------- float targets
@pytest.fixture
def grades(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"hours": rng.normal(size=80), "absences": rng.normal(size=80)})
    frame["GRADE"] = (frame["hours"] > 0).astype(float)  # 0.0 / 1.0
    frame.to_csv(tmp_path / "grades.csv", index=False)
    return tmp_path / "grades.csv"


@pytest.mark.parametrize("task", ["classification", "binary"])
def test_float_01_target_trains_as_classifier(capsys, tmp_path, grades, task):
    data = ["data.name=csv", f"data.path={grades}", "data.target=GRADE", f"task.name={task}"]
    argv = ["train", "tiny/iris-mlp", *data, "trainer.tensorboard=false", "--json"]
    code = main([*argv, "--run-dir", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 0, err
    code = main(["predict", str(tmp_path / "r"), str(grades)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert {line.split(",")[0] for line in out.splitlines()[1:]} <= {"0", "1"}


def test_continuous_target_with_classification_task_is_one_line(capsys, tmp_path, grades):
    frame = pd.read_csv(grades)
    frame["GRADE"] = frame["hours"]  # continuous
    frame.to_csv(grades, index=False)
    data = ["data.name=csv", f"data.path={grades}", "data.target=GRADE"]
    err = one_line_error(
        capsys, "train", "tiny/iris-mlp", *data, "task.name=classification", "--run-dir",
        tmp_path / "r",
    )  # fmt: skip
    assert "task.name" in err  # names the setting that asked for classes
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- generate
@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--top-k", "-3"], "--top-k must be >= 1"),
        (["--temperature", "-1"], "--temperature must be a number >= 0"),
        (["--temperature", "nan"], "--temperature must be a number >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ],
)
def test_generate_rejects_bad_sampling_options_first(capsys, tmp_path, args, message):
    # checked before the run folder is read: a missing folder is not what is reported
    assert message in one_line_error(capsys, "generate", tmp_path / "nothing", *args)


# ----------------------------------------------------------------------------- recipes cp
def test_recipes_cp_into_missing_folder(capsys, tmp_path):
    err = one_line_error(capsys, "recipes", "cp", "iris-mlp", tmp_path / "missing" / "my.yaml")
    assert f"folder {tmp_path / 'missing'} does not exist" in err
    err = one_line_error(capsys, "recipes", "cp", "iris-mlp", f"{tmp_path / 'missing'}/")
    assert "no such folder" in err
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, "recipes", "cp", "iris-mlp", tmp_path / "file" / "my.yaml")
    assert "is not a folder" in err
    assert files_under(tmp_path) == ["file"]


# ----------------------------------------------------------------------------- optim compare
@pytest.mark.parametrize("name", ["X", "plot.jpg", "plot.png.bak"])
def test_optim_compare_out_needs_png_or_folder(capsys, tmp_path, name):
    err = one_line_error(capsys, "optim", "compare", "--steps", "2", "--out", tmp_path / name)
    assert "neither a folder nor a .png file" in err
    assert files_under(tmp_path) == []


def test_optim_compare_out_folder_gets_a_named_png(capsys, tmp_path):
    argv = ["optim", "compare", "--function", "beale", "--optimizers", "adam", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert f"plot: {tmp_path / 'optim_beale.png'}" in capsys.readouterr().out
    assert files_under(tmp_path) == ["optim_beale.png"]
    assert (tmp_path / "optim_beale.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- data prepare
def test_data_prepare_removes_temp_folders_of_dead_processes_only(capsys, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = host_tag()
    left = {
        "dead": f".out.tmp-{host}-{dead.pid}-abc12345",
        "running": f".out.tmp-{host}-{os.getppid()}-def12345",  # a live process
        "other_host": f".out.tmp-00000000-{dead.pid}-ghi12345",  # fresh: might be running
        "old_style_stale": ".out.tmp-k3j_x9ab",
        "old_style_fresh": ".out.tmp-q1w_e2rt",
        "swapped_out": f".out.old-{host}-{dead.pid}-0123abcd",  # moved back, then replaced
        "another_output": f".other.tmp-{host}-{dead.pid}-jkl12345",
    }
    for name in left.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.bin").write_bytes(b"\0" * 8)
    two_days_ago = os.path.getmtime(tmp_path) - 2 * 24 * 3600
    for p in (tmp_path / left["old_style_stale"], tmp_path / left["old_style_stale"] / "train.bin"):
        os.utime(p, (two_days_ago, two_days_ago))
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question\n" * 20)
    argv = ["data", "prepare", "--text", tmp_path / "corpus.txt", "--out", tmp_path / "out"]
    assert main([str(a) for a in [*argv, "--no-progress"]]) == 0
    capsys.readouterr()
    kept = {k for k, name in left.items() if (tmp_path / name).exists()}
    assert kept == {"running", "other_host", "old_style_fresh", "another_output"}
    assert (tmp_path / "out" / "meta.json").is_file()


def test_data_prepare_temp_folder_names_its_process(tmp_path, monkeypatch):
    import bigtrain.data.text as text

    seen = []
    real = text.train_tokenizer

    def spy(*args, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-"))
        return real(*args, **kwargs)

    monkeypatch.setattr(text, "train_tokenizer", spy)
    text.prepare_text([("a", "hello world\n" * 10)], "char", None, tmp_path / "out", progress=False)
    assert len(seen) == 1 and seen[0].startswith(f".out.tmp-{host_tag()}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # renamed into place
