"""`bigtrain sweep` and `bigtrain scaling` as a user drives them: real tiny runs, resume, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from bigtrain.cli.main import main
from bigtrain.errors import ConfigError
from bigtrain.tune.sweep import grid, split_overrides

# tiny digits MLP; a constant LR so 1e6 diverges at once (a warmup would delay the NaN)
FAST = ["schedule.name=constant", "trainer.max_steps=6", "trainer.eval_every=3"]
FAST += ["trainer.tensorboard=false"]
SWEEP = ["sweep", "tiny/digits-mlp", "optim.name=sgd", "optim.lr=0.05,0.2,1e6", *FAST]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and out == "", err
    return err


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps") / "lr"
    code = main([*SWEEP, "--sweep-dir", str(folder)])
    assert code == 0
    return folder


def test_values_split_only_at_top_level_commas():
    axes, fixed = split_overrides(
        ["model.hidden=[8],[8,8]", "optim.lr=1e-3", "optim.name=sgd, adam", "data.name='a,b'"]
    )
    assert [(a.key, a.values) for a in axes] == [
        ("model.hidden", ("[8]", "[8,8]")),
        ("optim.name", ("sgd", "adam")),
    ]
    assert fixed == ["optim.lr=1e-3", "data.name='a,b'"]
    points = grid(axes)
    assert [p.values for p in points] == [
        {"model.hidden": "[8]", "optim.name": "sgd"},
        {"model.hidden": "[8]", "optim.name": "adam"},
        {"model.hidden": "[8,8]", "optim.name": "sgd"},
        {"model.hidden": "[8,8]", "optim.name": "adam"},
    ]
    assert len({p.name for p in points}) == 4 and points[2].label == "hidden=[8,8] name=sgd"
    for bad, message in (("optim.lr=1e-3,,1e-2", "value 2 of 3 is empty"), ("a.b=1,1", "twice")):
        with pytest.raises(ConfigError, match=message):
            split_overrides([bad])


def test_sweep_records_every_point_and_ranks_them(swept):
    state = json.loads((swept / "sweep.json").read_text())
    assert state["axes"] == [{"key": "optim.lr", "values": ["0.05", "0.2", "1e6"]}]
    by_lr = {p["values"]["optim.lr"]: p for p in state["points"]}
    for lr in ("0.05", "0.2"):
        p = by_lr[lr]
        assert p["status"] == "completed" and p["steps"] == 6 and p["monitor"] == "val/accuracy"
        assert 0 <= p["final"] <= 1 and p["best"] >= p["final"] and 0 <= p["test"] <= 1
        assert (swept / p["run_dir"] / "summary.json").is_file()
    # the diverging LR stopped on a NaN loss: recorded as failed, and the sweep went on
    failed = by_lr["1e6"]
    assert failed["status"] == "failed" and "nan" in failed["message"].lower()
    rows = list(csv.DictReader((swept / "sweep.csv").open()))
    assert [r["optim.lr"] for r in rows][-1] == "1e6" and rows[-1]["rank"] == ""
    best = [float(r["best"]) for r in rows[:2]]
    assert best == sorted(best, reverse=True) and [r["rank"] for r in rows[:2]] == ["1", "2"]
    md = (swept / "sweep.md").read_text()
    assert md.startswith("Ranked by best val/accuracy (higher is better") and "| 1e6 |" in md
    assert (swept / "sweep.png").stat().st_size > 10_000


def test_rerun_skips_completed_points_and_refuses_another_sweep(swept, capsys):
    done = {
        p: (swept / "runs" / p / "summary.json").stat().st_mtime_ns
        for p in [d.name for d in (swept / "runs").iterdir()]
    }
    code, out, err = run_cli(capsys, *SWEEP, "--sweep-dir", swept)
    assert code == 0 and err.count("completed earlier, skipped") == 2
    words = " ".join(out.split())  # rich wraps the table to the terminal's width
    assert "ranked by best val/accuracy" in words and "failed: loss became nan" in words
    state = json.loads((swept / "sweep.json").read_text())
    for p in state["points"]:
        unchanged = (swept / p["run_dir"] / "summary.json").stat().st_mtime_ns == done[p["name"]]
        assert unchanged == (p["status"] == "completed")  # the failed point was tried again
    other = ["sweep", "tiny/digits-mlp", "optim.name=sgd", "optim.lr=0.05,0.1", *FAST]
    err = one_line_error(capsys, *other, "--sweep-dir", swept)
    assert "holds a different sweep" in err and "--sweep-dir" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["optim.lr=0.1"], "nothing to sweep"),
        (["optim.nme=sgd,adam"], "unknown key 'optim.nme' (did you mean 'name'?)"),
        (["optim.name=sgd,adm"], "unknown optimizer 'adm' (did you mean 'adam'?)"),
        (["optim.lr=0.1,,0.2"], "value 2 of 3 is empty"),
        (["optim.lr=0.1,0.2", "optim.lr=3"], "given twice"),
    ],
)
def test_bad_sweeps_are_one_line_and_write_nothing(capsys, tmp_path, argv, message):
    err = one_line_error(capsys, "sweep", "tiny/digits-mlp", *argv, "--sweep-dir", tmp_path / "s")
    assert message in err
    assert not (tmp_path / "s").exists()


def test_scaling_fits_sizes_and_extrapolates(capsys, tmp_path):
    folder = tmp_path / "scaling"
    code, out, err = run_cli(
        capsys, "scaling", "tiny/digits-mlp", "--sizes", "model.hidden=[4],[16],[64]",
        "--target", "1e6", "--sweep-dir", folder, *FAST, "optim.lr=0.1",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((folder / "scaling.json").read_text())
    runs = result["runs"]
    assert [r["size"] for r in runs] == ["[4]", "[16]", "[64]"]
    # an MLP has no embedding table: both counts agree; they grow with the width
    assert all(r["N"] == r["parameters"] == r["non_embedding_parameters"] for r in runs)
    assert runs[0]["N"] < runs[1]["N"] < runs[2]["N"]
    assert all(r["D"] == 6 * 16 and r["final_val_loss"] > 0 for r in runs)  # 6 steps x 16
    fit = result["power_law"]
    assert fit["form"] == "A*N^-alpha" and "2-parameter" in fit["note"] and fit["dof"] == 1
    ex = result["extrapolation"]
    assert ex["N"] == 1e6 and ex["low"] < ex["loss"] < ex["high"]
    assert "extrapolated to N = 1e+06" in out and "95% CI" in out
    assert (folder / "scaling.png").stat().st_size > 10_000 and (folder / "sweep.md").is_file()


def test_scaling_fits_chinchilla_when_the_length_varies_too():
    from types import SimpleNamespace

    from bigtrain.cli.scaling_cmd import fit

    steps = SimpleNamespace(key="trainer.max_steps")
    rows = [
        {"N": n, "D": s * 100, "loss": 1.5 + 40 * n**-0.35 + 400 * (s * 100) ** -0.3,
         "unit": "tokens", "values": {"trainer.max_steps": str(s)}}
        for n in (1e4, 3e4, 1e5, 3e5) for s in (100, 1000, 10000)
    ]  # fmt: skip
    result = fit(rows, None, steps, 1e7, "non-embedding")
    assert result["power_law"]["fitted_on"] == "max_steps=10000"
    assert result["chinchilla"]["estimates"]["beta"]["value"] == pytest.approx(0.3, rel=1e-4)
    assert result["chinchilla"]["dof"] == 7


def test_scaling_bad_sizes_are_one_line(capsys, tmp_path):
    base = ["scaling", "tiny/digits-mlp", "--sweep-dir", tmp_path / "s", "--sizes"]
    for sizes, message in [
        ("model.hidden=[8],,x", "is empty"),
        ("model.hiden=[8],[16]", "unknown key 'model.hiden' (did you mean 'hidden'?)"),
        ("model.hidden=[8]", "a single size"),
        ("model.hidden=[8],[-16]", "'[-16]' is not a positive number"),
        ("model.hidden=[8],[0]", "not a positive number"),
    ]:
        assert message in one_line_error(capsys, *base, sizes)
    assert not (tmp_path / "s").exists()


def test_non_embedding_count_excludes_every_embedding_table(tmp_path):
    from bigtrain.cli.scaling_cmd import _measure
    from bigtrain.run import build_run

    run = build_run(
        "tiny/shakespeare-char", ["trainer.tensorboard=false"], tmp_path / "r", quiet=True
    )
    try:
        facts = _measure(run)
        model = run.trainer.state.model
        wte = model.transformer.wte.weight.numel()  # tied to the head: still an embedding
        assert facts["parameters"] == sum(p.numel() for p in model.parameters())
        assert facts["non_embedding_parameters"] == model.num_parameters(True) - wte
        block = run.config.model.config.block_size
        assert facts["per_step"] == run.config.data.batch_size * block
        assert facts["unit"] == "tokens"
    finally:
        run.close()
