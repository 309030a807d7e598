"""DataConfig: which data set, how to split it, how to batch it. Validated once, then frozen."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from bigtrain.errors import ConfigError

#: names whose data come from the user's file at ``path``
FILE_FORMATS = ("csv", "parquet", "npz", "idx")
#: names that read a table and so need a ``target`` column
TABLE_FORMATS = ("csv", "parquet")
#: names that may take a separate ``test_path`` (fashion_mnist brings its own t10k files)
TEST_FILE_NAMES = (*FILE_FORMATS, "fashion_mnist")
#: synthetic generators and the parameters each one accepts
SYNTHETIC_PARAMS = {
    "moons": ("n_samples", "noise"),
    "linear": ("n_samples", "noise", "slope", "intercept"),
}
_ALL_SYNTHETIC = ("n_samples", "noise", "slope", "intercept")


class DataConfig(BaseModel):
    """The ``data:`` section of a recipe.

    Attributes:
        name: a registered data set (``digits``, ``iris``, ``wine``, ``breast_cancer``,
            ``diabetes``, ``mnist``, ``fashion_mnist``, ``moons``, ``linear``) or a file format
            (``csv``, ``parquet``, ``npz``, ``idx``).
        path: the data file (or, for ``idx`` and ``fashion_mnist``, a folder of IDX files).
        test_path: a separate test file; the test split is then taken from it, not carved out.
        target: the label column of a table (required for csv/parquet).
        features: the feature columns of a table (default: every column but the target).
        task: ``auto`` infers classification (integer/string labels) or regression (floats).
        val_fraction: share of the examples held out for validation.
        test_fraction: share of the examples held out for the final test.
        split_seed: seed of the (deterministic) split.
        stratify: keep class proportions equal across splits (classification only).
        standardize: normalise inputs with mean/std of the train split (images: scale to [0, 1]
            first and use one mean/std per channel).
        layout: ``flat`` gives (N, D) inputs, ``image`` keeps (N, C, H, W).
        batch_size: examples per training batch, or ``full`` for full-batch training.
        shuffle: reshuffle the training examples every epoch.
        drop_last: drop the last, smaller batch of an epoch.
        n_samples, noise, slope, intercept: parameters of the synthetic ``moons``/``linear`` sets.
        limit: keep only the first ``limit`` examples (of each file), for tiny test runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str | None = None
    test_path: str | None = None
    target: str | None = None
    features: list[str] | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    stratify: bool = True
    standardize: bool = True
    layout: Literal["flat", "image"] = "flat"
    batch_size: int | Literal["full"] = 64
    shuffle: bool = True
    drop_last: bool = False
    n_samples: int | None = None
    noise: float | None = None
    slope: float | None = None
    intercept: float | None = None
    limit: int | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        from bigtrain.data.builtin import DATASETS  # lazy: builtin imports this module's users

        DATASETS.get(self.name)  # ConfigError with a suggestion on an unknown name
        name = self.name
        if name in FILE_FORMATS and not self.path:
            raise ConfigError(f"data.name '{name}' needs data.path (the {name} file to read)")
        if name in TABLE_FORMATS and not self.target:
            raise ConfigError(f"data.name '{name}' needs data.target (the label column's name)")
        if name not in TABLE_FORMATS:
            for key in ("target", "features"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"data.{key} only applies to csv/parquet, not '{name}'")
        if self.path is not None and name not in (*FILE_FORMATS, "fashion_mnist"):
            raise ConfigError(f"data.path does not apply to the built-in data set '{name}'")
        if self.test_path is not None:
            if name not in TEST_FILE_NAMES:
                raise ConfigError(f"data.test_path does not apply to '{name}'")
            if "test_fraction" in self.model_fields_set and self.test_fraction > 0:
                raise ConfigError("set either data.test_path or data.test_fraction, not both")
        allowed = SYNTHETIC_PARAMS.get(name, ())
        for key in _ALL_SYNTHETIC:
            if getattr(self, key) is not None and key not in allowed:
                where = f"only to {', '.join(k for k, v in SYNTHETIC_PARAMS.items() if key in v)}"
                raise ConfigError(f"data.{key} applies {where}, not '{name}'")
        if self.n_samples is not None and self.n_samples < 2:
            raise ConfigError(f"data.n_samples must be at least 2, got {self.n_samples}")
        if self.noise is not None and self.noise < 0:
            raise ConfigError(f"data.noise must be >= 0, got {self.noise}")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction must be below 1 (got "
                f"{self.val_fraction} + {self.test_fraction}); nothing would be left to train on"
            )
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ConfigError(
                f"data.batch_size must be a positive integer or 'full', got {self.batch_size}"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be a positive integer, got {self.limit}")
        if self.features is not None and (not self.features or self.target in self.features):
            raise ConfigError("data.features must be a non-empty list that excludes data.target")
        return self
