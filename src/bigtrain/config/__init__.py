"""Typed recipes: the pydantic schema, the YAML loader with `base:` inheritance and overrides."""

from bigtrain.config.loader import dump_config, load_recipe, recipe_names, recipe_path
from bigtrain.config.schema import RunConfig, TaskConfig, TrainerConfig

__all__ = [
    "RunConfig",
    "TaskConfig",
    "TrainerConfig",
    "dump_config",
    "load_recipe",
    "recipe_names",
    "recipe_path",
]
