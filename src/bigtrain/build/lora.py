"""Being written (issue 9)."""

from __future__ import annotations

from bigtrain.build.common import BuildWrapper
from bigtrain.config import RunConfig
from bigtrain.errors import ConfigError


class Lora(BuildWrapper):
    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        raise ConfigError("this recipe section is being written")
