"""Recipe loading: shipped name or YAML path -> `base:` inheritance -> `a.b=c` overrides ->
validated RunConfig. Every mistake becomes one ConfigError line naming the key."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bigtrain.config.schema import RunConfig
from bigtrain.errors import ConfigError, did_you_mean

_MAX_BASE_DEPTH = 10


def _recipes_dir() -> Path:
    return Path(str(resources.files("bigtrain") / "recipes"))


def recipe_names(include_tiny: bool = False) -> list[str]:
    """Names of the recipes shipped with bigtrain (tiny CI overlays as ``tiny/<name>``)."""
    root = _recipes_dir()
    names = sorted(p.stem for p in root.glob("*.yaml"))
    if include_tiny:
        names += sorted(f"tiny/{p.stem}" for p in (root / "tiny").glob("*.yaml"))
    return names


def recipe_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Resolve a recipe name (``digits-mlp``, ``tiny/digits-mlp``) or a YAML path to a file."""
    text = str(name_or_path)
    candidates = [Path(text)]
    if relative_to is not None:
        candidates.insert(0, relative_to / text)
    for c in candidates:
        if c.is_file():
            return c
    shipped = _recipes_dir() / f"{text.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    if text.endswith((".yaml", ".yml")) or "/" in text and not text.startswith("tiny/"):
        raise ConfigError(f"recipe file {text} does not exist")
    hint = did_you_mean(text, recipe_names(include_tiny=True))
    raise ConfigError(f"unknown recipe '{text}'{hint}; `bigtrain recipes ls` lists them")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"recipe {path}{where} is not valid YAML: {problem}") from None
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys to values")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            # a new model name starts the model section afresh: its options differ
            if k == "model" and "name" in v and v["name"] != out[k].get("name"):
                out[k] = copy.deepcopy(v)
            else:
                out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_with_bases(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_BASE_DEPTH:
        raise ConfigError(
            f"recipe {path}: `base:` chain is longer than {_MAX_BASE_DEPTH} (a cycle?)"
        )
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = recipe_path(base, relative_to=path.parent)
    return deep_merge(_load_with_bases(base_path, depth + 1), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def set_dotted(data: dict[str, Any], keys: list[str], value: Any, what: str) -> None:
    """Set ``data[k1][k2]...[kn] = value`` in place, making missing sections; ConfigError
    (naming ``what``) when a parent is a value, not a section."""
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{what}: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(out, keys, value, f"override '{text}'")
    return out


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel] = RunConfig) -> list[str]:
    """The valid keys of the schema section at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        ann = model.model_fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return list(model.model_fields) if model is not None else []


def format_validation_error(
    err: ValidationError,
    source: str,
    root: type[BaseModel] = RunConfig,
    prefix: tuple[str, ...] = (),
) -> ConfigError:
    """Turn pydantic's multi-line report into one line about the first problem."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    dotted = ".".join(str(p) for p in (*prefix, *loc))
    if first["type"] == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _fields_at(loc[:-1], root))
        msg = f"unknown key '{dotted}'{hint}"
    elif first["type"] == "missing":
        msg = f"missing required key '{dotted}'"
    else:
        given = first.get("input")
        shown = repr(given) if not isinstance(given, dict) else "a mapping"
        text = first["msg"].removeprefix("Value error, ")
        msg = f"{dotted}: {text} (got {shown})" if dotted else text
        if first["type"] == "literal_error" and isinstance(given, str):
            choices = re.findall(r"'([^']*)'", first.get("ctx", {}).get("expected", ""))
            msg += did_you_mean(given, choices)
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ConfigError(f"{source}: {msg}{suffix}" if source else f"{msg}{suffix}")


def validate(data: dict[str, Any], source: str = "recipe") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise format_validation_error(e, source) from None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a shipped recipe (by name) or a YAML file, apply ``key=value`` overrides, validate."""
    path = recipe_path(name_or_path)
    data = _load_with_bases(path)
    data = apply_overrides(data, list(overrides or []))
    data.setdefault("name", path.stem)
    return validate(data, source=f"recipe {name_or_path}")


def dump_config(cfg: RunConfig) -> str:
    """The resolved recipe as YAML (what is written to a run folder's config.yaml)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
