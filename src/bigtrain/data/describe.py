"""What a recipe's data looks like, without loading it: the planner's view of a data set.

The built-in sets are described by their published shapes (``BUILTIN``); the split sizes follow
the same arithmetic as ``load_data``, and a test checks both agree for every built-in recipe.
A user's file has no description but itself, so it is read (tables are small next to models).
Text data is described by its prepared folder's ``meta.json`` (prepared once and cached, as
training does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigtrain.data.config import DataConfig
from bigtrain.data.split import _count


@dataclass(frozen=True)
class BuiltinSet:
    """A built-in data set's size and shape (before splitting)."""

    examples: int
    shape: tuple[int, ...]  # one raw example: features, or (C, H, W) for images
    kind: str  # classification, binary or regression
    classes: int = 0
    test_examples: int = 0  # a separate test file (fashion_mnist's t10k)
    image: bool = False


BUILTIN: dict[str, BuiltinSet] = {
    "iris": BuiltinSet(150, (4,), "classification", 3),
    "wine": BuiltinSet(178, (13,), "classification", 3),
    "breast_cancer": BuiltinSet(569, (30,), "binary", 2),
    "diabetes": BuiltinSet(442, (10,), "regression"),
    "digits": BuiltinSet(1797, (1, 8, 8), "classification", 10, image=True),
    "mnist": BuiltinSet(5000, (1, 28, 28), "classification", 10, image=True),
    "fashion_mnist": BuiltinSet(60000, (1, 28, 28), "classification", 10, 10000, image=True),
    "moons": BuiltinSet(1000, (2,), "binary", 2),
    "linear": BuiltinSet(100, (1,), "regression"),
}


@dataclass(frozen=True)
class DataShape:
    """The numbers a plan needs: one example's input shape, the output width, split sizes."""

    input_shape: tuple[int, ...]
    num_outputs: int
    kind: str  # classification, binary, regression or language_model
    train_examples: int  # examples (token windows are not counted: see train_tokens)
    val_examples: int = 0
    test_examples: int = 0
    vocab_size: int = 0  # language models
    train_tokens: int = 0  # language models: tokens in the training split
    read_from_data: bool = False  # True when the data had to be loaded to describe it


def describe_table(cfg: DataConfig, task: str = "auto") -> DataShape:
    """The shape of tabular or image data, from ``BUILTIN`` when possible."""
    known = BUILTIN.get(cfg.name)
    if known is None or cfg.path is not None or cfg.test_path is not None:
        return _loaded(cfg, task)
    n = known.examples
    if cfg.name in ("moons", "linear") and cfg.n_samples is not None:
        n = cfg.n_samples
    if cfg.limit is not None:
        n = min(n, cfg.limit)
    test_file = min(known.test_examples, cfg.limit or known.test_examples)
    n_test = 0 if test_file else _count(cfg.test_fraction, n)
    n_val = _count(cfg.val_fraction, n)
    if cfg.layout == "image" and not known.image:
        return _loaded(cfg, task)  # load_data explains why a table has no image layout
    shape = known.shape if cfg.layout == "image" else (math.prod(known.shape),)
    kind = known.kind
    outputs = known.classes if kind == "classification" else 1
    if task == "classification" and kind == "binary":
        kind, outputs = "classification", 2  # two-logit softmax chosen explicitly
    return DataShape(
        input_shape=tuple(shape),
        num_outputs=outputs,
        kind=kind,
        train_examples=n - n_test - n_val,
        val_examples=n_val,
        test_examples=test_file or n_test,
    )


def _loaded(cfg: DataConfig, task: str) -> DataShape:
    from bigtrain.data.split import load_data

    data = load_data(cfg, task=task)
    kind = data.kind
    outputs = data.num_outputs
    if task == "classification" and kind == "binary":
        kind, outputs = "classification", 2
    return DataShape(
        input_shape=tuple(data.input_shape),
        num_outputs=outputs,
        kind=kind,
        train_examples=len(data.train),
        val_examples=len(data.val) if data.val is not None else 0,
        test_examples=len(data.test) if data.test is not None else 0,
        read_from_data=True,
    )
