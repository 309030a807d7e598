"""Recipes: loading, inheritance, overrides and the one-line errors."""

import pytest

from bigtrain.config import dump_config, load_recipe, recipe_names
from bigtrain.config.loader import apply_overrides, parse_override
from bigtrain.errors import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
data: {name: iris}
model: {name: mlp, hidden: [8]}
trainer: {max_epochs: 3}
"""


def test_shipped_recipes_all_load():
    names = recipe_names(include_tiny=True)
    assert "digits-mlp" in names and "tiny/digits-mlp" in names
    for name in names:
        cfg = load_recipe(name)
        assert cfg.model.name


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\noptim: {lr: 0.5}\n")
    cfg = load_recipe(child, ["trainer.max_epochs=7", "model.hidden=[4, 4]"])
    assert cfg.optim.lr == 0.5 and cfg.trainer.max_epochs == 7
    assert cfg.model.config.hidden == [4, 4] and cfg.data.name == "iris"
    assert cfg.name == "child"
    again = load_recipe(write(tmp_path, "dumped.yaml", dump_config(cfg)))
    assert again == cfg


def test_unknown_key_names_key_and_suggestion(tmp_path):
    p = write(tmp_path, "r.yaml", BASE + "optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'lr'\?\)"):
        load_recipe(p)
    with pytest.raises(
        ConfigError, match=r"unknown key 'trainer.max_epoch' \(did you mean 'max_epochs'"
    ):
        load_recipe(write(tmp_path, "b.yaml", BASE), ["trainer.max_epoch=3"])


def test_wrong_type_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(write(tmp_path, "r.yaml", BASE), ["optim.lr=fast"])
    msg = str(e.value)
    assert "optim.lr" in msg and "'fast'" in msg and "\n" not in msg


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'digits-mlp'"):
        load_recipe("digits-mpl")
    bad = write(tmp_path, "bad.yaml", "data: [unclosed\n")
    with pytest.raises(ConfigError, match="line 2 is not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_override_syntax():
    assert parse_override("optim.betas=[0.9, 0.95]") == (["optim", "betas"], [0.9, 0.95])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
