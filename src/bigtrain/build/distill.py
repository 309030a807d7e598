"""The ``distill:`` section wired into a run: the teacher is loaded here and wraps the task.

The teacher comes from a trained run folder (only its model is rebuilt, from its config.yaml,
then its checkpoint loaded: no optimizer, no data beyond the shapes) or from a model section
built through the registry. Teacher and student must read the same inputs and predict over the
same classes or vocabulary; each mismatch is one ConfigError line, raised while the run is
built (before anything is written). ``bigtrain eval`` and the other commands that reopen a run
folder drop the section (``cli.eval_cmd.run_config``): a distilled student stands alone.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigtrain.build.common import BuildWrapper, make_model
from bigtrain.build.text import LANGUAGE_MODELS, model_block_size, prepared_folder
from bigtrain.config.schema import ModelSpec, RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.state import BatchSource
from bigtrain.core.task import Task
from bigtrain.errors import CheckpointError, ConfigError


@dataclass
class Teacher:
    """A loaded teacher and what its outputs mean."""

    model: nn.Module
    kind: str  # "classifier" or "language_model"
    input_shape: tuple[int, ...] | None  # classifiers: one example's shape; None: unknown
    num_outputs: int  # classes, or logits per token (vocabulary)
    tokenizer_file: Path | None = None  # language-model runs
    block_size: int | None = None
    source: str = "teacher"


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Building the teacher must not move the global RNGs: the distilled student then draws
    the same dropout masks as the same recipe trained alone (a like-for-like comparison)."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def read_run_config(run_dir: Path) -> RunConfig:
    """The validated config.yaml of a run folder (CheckpointError when there is none)."""
    import yaml

    from bigtrain.config.loader import validate

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"distill.teacher {run_dir} is not a bigtrain run folder (no config.yaml)"
        )
    try:
        raw = yaml.safe_load(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{cfg_file} is corrupt") from None
    return validate(raw, source=str(cfg_file))


def _student_kind(cfg: RunConfig) -> str:
    from bigtrain.build import data_kind

    kind = data_kind(cfg)
    if kind == "language_model":
        return "language_model"
    if kind == "tabular":
        return "classifier"
    raise ConfigError(
        f"distill: distillation is wired for classifiers on tabular/image data and for language "
        f"models, not {kind.replace('_', ' ')} data '{cfg.data.name}'"
    )


def _classifier_shapes(cfg: RunConfig, what: str) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) of a tabular recipe, read from its data (as build_tabular does)."""
    from bigtrain.data import load_data

    data = load_data(cfg.data, task=cfg.task.name)
    if data.kind == "regression" or (data.kind == "binary" and cfg.task.name != "classification"):
        raise ConfigError(
            f"distill: {what} is a {data.kind} model with one output; distillation needs "
            "class logits (a multi-class classifier, or task.name: classification)"
        )
    return tuple(data.input_shape), max(int(data.num_outputs), 2)


def _vocab_width(cfg: RunConfig, data_vocab: int) -> int:
    """Logits per token of a language-model recipe (a configured vocab_size pads the data's)."""
    return int(cfg.model.fields().get("vocab_size") or data_vocab)


def load_teacher_run(run_dir: str | Path, checkpoint: str = "best") -> Teacher:
    """The model of a trained run folder with its checkpoint loaded, in eval mode.

    Only the model is rebuilt (a classifier's data is read for its shapes); a compressed
    variant folder is restored first, as ``bigtrain eval`` does.
    """
    from bigtrain.build.variant import restore_variant
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.core.checkpoint import load_weights
    from bigtrain.data.text import load_tokenizer

    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"distill.teacher {path} does not exist (train the teacher first)")
    tcfg = read_run_config(path)
    ckpt = best_weights(path, checkpoint)
    if ckpt is None:
        raise CheckpointError(f"distill.teacher {path} has no checkpoint (was it trained?)")
    with preserved_rng():
        if tcfg.model.name in LANGUAGE_MODELS:
            tok_file = path / "tokenizer.json"
            if not tok_file.is_file():
                raise CheckpointError(f"distill.teacher {path} has no tokenizer.json")
            vocab = load_tokenizer(tok_file).vocab_size
            block = model_block_size(tcfg)
            model = make_model(tcfg, (block,), vocab)
            teacher = Teacher(
                model, "language_model", None, _vocab_width(tcfg, vocab), tok_file, block
            )
        else:
            _student_kind(tcfg)  # ConfigError for data distillation is not wired for
            shape, classes = _classifier_shapes(tcfg, f"teacher {path}")
            model = make_model(tcfg, shape, classes)
            teacher = Teacher(model, "classifier", shape, classes)
        model = restore_variant(model, path)
        load_weights(ckpt, model)
    teacher.model = model.eval().requires_grad_(False)
    teacher.source = f"teacher {path}"
    return teacher


def build_teacher_model(spec: dict, cfg: RunConfig) -> Teacher:
    """A teacher from a model section (``distill.teacher_model``), shaped like the student's
    data; a registered pretrained model brings its own weights."""
    from bigtrain.models import validate_model_config

    params = dict(spec)
    name = str(params.pop("name"))
    mspec = ModelSpec(name, validate_model_config(name, params, key="distill.teacher_model"))
    kind = _student_kind(cfg)
    with preserved_rng():
        if kind == "language_model":
            prepared = _prepared(cfg)
            block = model_block_size(cfg)
            model = make_model(cfg, (block,), prepared.vocab_size, mspec)
            width = int(mspec.fields().get("vocab_size") or prepared.vocab_size)
            teacher = Teacher(model, kind, None, width, None, block)
        else:
            shape, classes = _classifier_shapes(cfg, "the student")
            teacher = Teacher(make_model(cfg, shape, classes, mspec), kind, shape, classes)
    teacher.model.eval().requires_grad_(False)
    teacher.source = f"distill.teacher_model '{name}'"
    return teacher


def _prepared(cfg: RunConfig):
    from bigtrain.data.tokens import PreparedText

    return PreparedText.load(prepared_folder(cfg, quiet=True))  # cached: the student's own


def _same_tokenizer(a: Path, b: Path) -> bool:
    try:
        return json.loads(a.read_text()) == json.loads(b.read_text())
    except (OSError, ValueError):
        return False


def check_compatible(teacher: Teacher, cfg: RunConfig, task: Task) -> None:
    """One ConfigError line for the first way teacher and student disagree."""
    kind = _student_kind(cfg)
    who = teacher.source
    if teacher.kind != kind:
        student = "a language model" if kind == "language_model" else "a classifier"
        raise ConfigError(
            f"distill: {who} is a {teacher.kind.replace('_', ' ')} but the student is {student}"
        )
    if kind == "classifier":
        classes = getattr(task, "num_classes", None)
        if classes is None:
            raise ConfigError(
                f"distill: the student's task {type(task).__name__} has no class logits; "
                "distillation needs a multi-class classifier (task.name: classification)"
            )
        if classes != teacher.num_outputs:
            raise ConfigError(
                f"distill: {who} predicts {teacher.num_outputs} classes but the student "
                f"{classes}; teacher and student must share the label set"
            )
        return
    prepared = _prepared(cfg)
    width = _vocab_width(cfg, prepared.vocab_size)
    if width != teacher.num_outputs:
        raise ConfigError(
            f"distill: {who} has a vocabulary of {teacher.num_outputs} tokens but the student "
            f"{width}; use the teacher's tokenizer (data.tokenizer, data.vocab_size)"
        )
    if teacher.tokenizer_file is not None and not _same_tokenizer(
        teacher.tokenizer_file, prepared.tokenizer_path
    ):
        raise ConfigError(
            f"distill: {who}'s tokenizer.json differs from the student's (same size, different "
            "tokens); train the student on the teacher's data and tokenizer"
        )
    block = model_block_size(cfg)
    if teacher.block_size is not None and block > teacher.block_size:
        raise ConfigError(
            f"distill: the student's block_size {block} is longer than {who}'s context of "
            f"{teacher.block_size} tokens; use model.block_size <= {teacher.block_size}"
        )


class Distill(BuildWrapper):
    """Knowledge distillation for a recipe's ``distill:`` section (docs/distillation.md)."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        dc = cfg.distill  # set: default_wrappers adds this wrapper only then
        self.dc = dc
        _student_kind(cfg)
        if dc.teacher is not None:
            self.teacher = load_teacher_run(dc.teacher, dc.checkpoint)
        else:
            self.teacher = build_teacher_model(dc.teacher_model, cfg)
        self.match = None

    def wrap_task(self, task: Task, model: nn.Module, cfg: RunConfig) -> Task:
        from bigtrain.compress.distill import (
            DistillTask,
            HiddenStateMatch,
            find_module,
            module_width,
        )

        check_compatible(self.teacher, cfg, task)
        dc = self.dc
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        teacher = self.teacher.model.to(device)  # the same device as the student
        hidden = None
        if dc.hidden_weight > 0:
            s_layer = find_module(model, dc.student_layer, "student_layer")
            t_layer = find_module(teacher, dc.teacher_layer, "teacher_layer")
            widths = module_width(s_layer), module_width(t_layer)
            if None in widths:
                raise ConfigError(
                    "distill: cannot tell the output width of "
                    f"{dc.student_layer if widths[0] is None else dc.teacher_layer}; "
                    "name a Linear, Embedding, LayerNorm or Conv layer (or a block ending in one)"
                )
            self.match = HiddenStateMatch(*widths).to(device)
            hidden = (self.match, s_layer, t_layer, dc.hidden_weight)
        return DistillTask(task, teacher, dc.temperature, dc.alpha, hidden)

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, cfg: RunConfig
    ) -> torch.optim.Optimizer:
        params = list(self.match.parameters()) if self.match is not None else []
        if params:  # the learned projection trains with the student (it is not saved with it)
            optimizer.add_param_group({"params": params})
        return optimizer

    def wrap_loader(self, loader: BatchSource, cfg: RunConfig) -> BatchSource:
        x = getattr(loader, "x", None)
        shape = self.teacher.input_shape
        if isinstance(x, torch.Tensor) and shape is not None and tuple(x.shape[1:]) != shape:
            raise ConfigError(
                f"distill: {self.teacher.source} reads inputs of shape {shape} but the "
                f"student's data gives {tuple(x.shape[1:])}; give the student the teacher's "
                "data settings (e.g. data.layout)"
            )
        return loader

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        from bigtrain.compress.distill import DistillState

        if self.match is None or not list(self.match.parameters()):
            return {}
        return {"distill": DistillState(self.match)}
