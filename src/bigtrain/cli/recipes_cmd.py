"""`bigtrain recipes ls|show|cp|validate`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="list, show, copy and validate recipes",
        description="Work with the recipes shipped with bigtrain or your own.",
    )
    rs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = rs.add_parser("ls", help="list shipped recipes")
    ls.add_argument("--tiny", action="store_true", help="include the tiny CI overlays")
    ls.set_defaults(func=run_ls)
    show = rs.add_parser("show", help="print a recipe fully resolved (bases and overrides applied)")
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=run_show)
    cp = rs.add_parser("cp", help="copy a shipped recipe to a file to edit")
    cp.add_argument("recipe")
    cp.add_argument("dest")
    cp.set_defaults(func=run_cp)
    val = rs.add_parser(
        "validate", help="check recipes without training (all shipped if none given)"
    )
    val.add_argument("recipes", nargs="*")
    val.set_defaults(func=run_validate)


def run_ls(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console
    from rich.table import Table

    from bigtrain.config import recipe_names, recipe_path

    table = Table(title="bigtrain recipes")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name in recipe_names(include_tiny=args.tiny):
        data = yaml.safe_load(recipe_path(name).read_text()) or {}
        table.add_row(name, data.get("description", f"(overlay of {data.get('base', '?')})"))
    Console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from bigtrain.config import dump_config, load_recipe

    print(dump_config(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def run_cp(args: argparse.Namespace) -> int:
    from bigtrain._io import atomic_write_bytes, describe_os_error
    from bigtrain.config import recipe_path
    from bigtrain.errors import ConfigError

    src = recipe_path(args.recipe)
    dest = Path(args.dest).expanduser()
    if dest.is_dir():
        dest = dest / src.name
    elif args.dest.endswith(("/", os.sep)):  # cp semantics: a trailing slash names a folder
        raise ConfigError(f"cannot copy to {args.dest}: no such folder")
    if dest.exists():
        raise ConfigError(f"{dest} already exists; choose another destination")
    if not dest.parent.is_dir():
        what = "is not a folder" if dest.parent.exists() else "does not exist"
        raise ConfigError(f"cannot copy to {dest}: folder {dest.parent} {what}")
    try:  # never a half-written recipe, never over a file that appeared meanwhile
        atomic_write_bytes(dest, src.read_bytes(), overwrite=False)
    except FileExistsError:
        raise ConfigError(f"{dest} already exists; choose another destination") from None
    except OSError as e:
        raise ConfigError(f"cannot write {dest}: {describe_os_error(e)}") from None
    print(dest)
    return 0


def validate_one(name: str) -> None:
    """Load and type-check a recipe including its model section (no data is loaded)."""
    from bigtrain.config import load_recipe

    load_recipe(name)  # the schema validates the model section into the model's Config


def run_validate(args: argparse.Namespace) -> int:
    from bigtrain.config import recipe_names
    from bigtrain.errors import BigtrainError

    names = args.recipes or recipe_names(include_tiny=True)
    failed = 0
    for name in names:
        try:
            validate_one(name)
            print(f"ok      {name}")
        except BigtrainError as e:
            failed += 1
            print(f"invalid {name}: {e}")
    return 2 if failed else 0
