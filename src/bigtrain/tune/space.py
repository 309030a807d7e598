"""Search spaces: a YAML file of dotted recipe keys -> ranges, checked against the recipe.

A space file maps each recipe key to one entry::

    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    optim.weight_decay: {type: float, low: 0.0, high: 0.1}
    model.channels: {type: categorical, choices: [[16, 32], [32, 64]]}
    data.batch_size: {type: int, low: 16, high: 128, log: true}

``float`` and ``int`` take ``low < high`` and either ``log: true`` (``low > 0``) or a ``step``;
``categorical`` takes a non-empty list of distinct ``choices`` (any YAML value). Every mistake is
one ConfigError line naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bigtrain.config.loader import set_dotted, validate
from bigtrain.errors import ConfigError, did_you_mean

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
# keys that say nothing about what a trial trains: a study continues across them
_NOT_FINGERPRINTED = ("name", "description", "trainer.progress")


@dataclass(frozen=True)
class Param:
    """One searched recipe key. ``choices`` is set for categorical, ``low``/``high`` otherwise."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The entry as it is written in a space file."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def bounds(self) -> list[Any]:
        """The extreme values a trial may get (checked against the recipe schema up front)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for an Optuna trial (the value a recipe takes)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, log=self.log, step=self.step or 1
            )
        # Optuna stores only scalar choices: a list or mapping travels as its JSON text
        if all(_is_scalar(c) for c in self.choices):
            return trial.suggest_categorical(self.key, list(self.choices))
        return json.loads(trial.suggest_categorical(self.key, [_encode(c) for c in self.choices]))

    def decode(self, stored: Any) -> Any:
        """The recipe value of what Optuna stored for this key (see ``suggest``)."""
        if self.type == "categorical" and not all(_is_scalar(c) for c in self.choices):
            return json.loads(stored)
        return stored


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _parse_entry(key: str, entry: Any, source: str) -> Param:
    where = f"space {source}: {key}"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where} must be a mapping like {{type: float, low: 1.0e-4, high: 0.1}}, got {entry!r}"
        )
    kind = entry.get("type")
    if kind not in TYPES:
        hint = did_you_mean(str(kind), TYPES) if kind is not None else ""
        raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}{hint}")
    for k in entry:
        if k not in _KEYS[kind]:
            raise ConfigError(
                f"{where}: unknown field '{k}' for type {kind}{did_you_mean(k, _KEYS[kind])}; "
                f"it takes {', '.join(_KEYS[kind][1:])}"
            )
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        if len({_encode(c) for c in choices}) < len(choices):
            raise ConfigError(f"{where}: choices repeat a value ({choices!r})")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    for k in ("low", "high"):
        if k not in entry:
            raise ConfigError(f"{where}: type {kind} needs '{k}'")
        if not _number(entry[k], integer):
            what = "an integer" if integer else "a number"
            raise ConfigError(f"{where}: {k} must be {what}, got {entry[k]!r}")
    low, high = entry["low"], entry["high"]
    if low >= high:
        raise ConfigError(f"{where}: low must be below high, got low={low}, high={high}")
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got low={low}")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: give either log: true or a step, not both")
        if not _number(step, integer) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive number, got {step!r}")
    return Param(key, kind, low, high, log, step)


def _spaces_dir() -> Path:
    return Path(str(resources.files("bigtrain") / "recipes" / "spaces"))


def space_names() -> list[str]:
    """Names of the search spaces shipped with bigtrain (``bigtrain tune --space NAME``)."""
    return sorted(p.stem for p in _spaces_dir().glob("*.yaml"))


def space_path(name_or_path: str | Path) -> Path:
    """A space YAML path, or the shipped space of that name (``digits-cnn``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _spaces_dir() / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    hint = did_you_mean(str(name_or_path), space_names())
    raise ConfigError(
        f"space file {name_or_path} does not exist{hint}; shipped spaces: "
        f"{', '.join(space_names()) or 'none'}"
    )


def load_space(name_or_path: str | Path) -> list[Param]:
    """Read and check a space file (see the module docstring for its format)."""
    path = space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"space {path}{where} is not valid YAML") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read space {path}: {getattr(e, 'strerror', e)}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"space {path} must map recipe keys to ranges, e.g. "
            "optim.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}"
        )
    return [_parse_entry(str(k), v, str(path)) for k, v in data.items()]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the recipe mapping ``data`` with dotted ``key: value`` pairs set (typed values:
    unlike ``apply_overrides`` nothing is parsed from text)."""
    out = copy.deepcopy(data)
    for key, value in values.items():
        set_dotted(out, key.split("."), copy.deepcopy(value), f"space key '{key}'")
    return out


def check_space(space: list[Param], data: dict[str, Any], recipe: str) -> None:
    """Refuse a space that names a key the recipe lacks, or a range the schema rejects.

    ``data`` is the resolved recipe (``cfg.model_dump(mode="json")``), in which every key of the
    schema is spelled out, so a key missing from it is a typo (named with the closest key).
    A key inside a section the recipe leaves unset (``batch_size_schedule.name``) is accepted
    when the schema takes it. Every bound (each choice) is validated, so no trial fails on a
    value the schema would refuse.
    """
    keys = flatten(data)
    for p in space:
        if p.key not in keys:
            try:
                validate(set_values(data, {p.key: p.bounds()[0]}), "")
            except ConfigError:
                raise ConfigError(
                    f"space key '{p.key}' is not a key of recipe {recipe}"
                    f"{did_you_mean(p.key, keys)}"
                ) from None
        for value in p.bounds():
            try:
                validate(set_values(data, {p.key: value}), "")
            except ConfigError as e:
                raise ConfigError(
                    f"space key '{p.key}' reaches {value!r}, which the recipe refuses: {e}"
                ) from None


def fingerprint(data: dict[str, Any], space: list[Param]) -> tuple[str, dict[str, Any]]:
    """``(hash, flat recipe)`` of the resolved recipe without the searched keys: the same for
    every trial of a study, and different for any other recipe or overrides."""
    searched = {p.key for p in space}
    flat = {
        k: v
        for k, v in flatten(data).items()
        if k not in searched and k not in _NOT_FINGERPRINTED
        and not any(k.startswith(s + ".") for s in searched)
    }  # fmt: skip
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], flat


__all__ = [
    "TYPES",
    "Param",
    "check_space",
    "fingerprint",
    "flatten",
    "load_space",
    "set_values",
    "space_names",
    "space_path",
]
