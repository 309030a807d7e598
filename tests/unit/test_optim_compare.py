"""The 2-D optimizer comparison and the `bigtrain optim compare` command."""

from __future__ import annotations

import pytest
import torch

from bigtrain.cli.main import main
from bigtrain.errors import ConfigError
from bigtrain.optim.compare import (
    FUNCTIONS,
    compare,
    distance_to_minimum,
    get_function,
    plot_comparison,
    run_on_function,
)


@pytest.mark.parametrize(("name", "value_at_min"), [("quadratic", 0.0), ("rosenbrock", 0.0)])
def test_functions_are_zero_at_their_minimum(name, value_at_min):
    fn = FUNCTIONS[name]
    p = torch.tensor(fn.minimum, dtype=torch.float64, requires_grad=True)
    fn(p).backward()
    assert fn(p).item() == value_at_min
    assert p.grad.abs().max().item() < 1e-12  # a stationary point


def test_beale_minimum():
    p = torch.tensor((3.0, 0.5), dtype=torch.float64, requires_grad=True)
    FUNCTIONS["beale"](p).backward()
    assert FUNCTIONS["beale"](p).item() == 0.0 and p.grad.abs().max().item() == 0.0


def test_adam_trajectory_equals_torch_adam_by_hand():
    traj = run_on_function("rosenbrock", "adam", lr=0.05, steps=50)
    p = torch.tensor(FUNCTIONS["rosenbrock"].start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    points = [tuple(p.tolist())]
    for _ in range(50):
        opt.zero_grad()
        FUNCTIONS["rosenbrock"](p).backward()
        opt.step()
        points.append(tuple(p.tolist()))
    assert traj.points == points
    assert len(traj.losses) == 51 and traj.losses[0] == pytest.approx(24.2)  # f(-1.2, 1)


def test_momentum_and_nesterov_are_sgd_variants():
    for name, kwargs in [("momentum", {}), ("nesterov", {"nesterov": True})]:
        traj = run_on_function("quadratic", name, lr=0.01, steps=20)
        p = torch.tensor(FUNCTIONS["quadratic"].start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, **kwargs)
        for _ in range(20):
            opt.zero_grad()
            FUNCTIONS["quadratic"](p).backward()
            opt.step()
        assert traj.points[-1] == tuple(p.tolist())


def test_every_optimizer_decreases_the_quadratic():
    names = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lamb"]
    results = compare("quadratic", names + ["lion", "adafactor"], steps=300)
    for name, traj in results.items():
        # measured at step 300: all below 2e-5; lion's fixed-size sign steps land on the minimum
        assert traj.losses[-1] < 2e-5, name
        assert max(traj.losses[250:]) < 0.02 < traj.losses[0], name  # it settled, not a fluke


def test_adam_reaches_rosenbrock_minimum_with_default_lr():
    traj = run_on_function("rosenbrock", "adam", steps=600)  # default lr 0.2
    assert traj.losses[-1] < 1e-4  # measured 9.8e-05
    assert distance_to_minimum("rosenbrock", traj.points[-1]) < 0.03  # measured 0.022
    assert 400 < traj.steps_to(1e-3) < 550  # measured 486
    assert run_on_function("rosenbrock", "sgd", steps=600).losses[-1] > 0.1  # plain SGD crawls


def test_unknown_names_suggest():
    with pytest.raises(ConfigError, match="did you mean 'beale'"):
        get_function("beal")
    with pytest.raises(ConfigError, match="did you mean 'nesterov'"):
        run_on_function("quadratic", "nesterv", steps=1)


def test_plot_comparison_writes_one_png(tmp_path):
    results = compare("beale", ["sgd", "adam"], steps=20)
    out = plot_comparison(results, "beale", tmp_path / "sub" / "beale.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["beale.png"]  # no temp file left


def test_cli_compare_prints_table_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "rosen.png"
    code = main(
        ["optim", "compare", "--function", "rosenbrock", "--optimizers", "sgd,momentum,adam"]
        + ["--steps", "500", "--lr", "sgd=0.001", "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert set(rows) == {"sgd", "momentum", "adam"}
    adam = [c.strip() for c in rows["adam"].split("│")[1:-1]]
    assert adam == ["adam", "0.2", "0.000761", "0.0611", "486"]  # measured, float64 deterministic
    sgd = [c.strip() for c in rows["sgd"].split("│")[1:-1]]
    assert sgd[1] == "0.001" and sgd[4] == "-"  # the --lr override was used; never below 1e-3
    assert "plot: " in text and "rosen.png" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--function", "rosenbrok"], "did you mean 'rosenbrock'"),
        (["--optimizers", "adam,rmsprp"], "did you mean 'rmsprop'"),
        (["--lr", "adam:0.1"], "is not NAME=VALUE"),
        (["--optimizers", "sgd", "--lr", "adam=0.1"], "not in --optimizers"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, message):
    code = main(["optim", "compare", "--steps", "2", "--out", str(tmp_path / "x.png"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
