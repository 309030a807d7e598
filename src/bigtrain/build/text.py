"""Builders for text: GPT/RNN language models on token files, and text classification.

Both end in ``assemble`` (the same loop, callbacks and run folder as tabular runs)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bigtrain.build.common import (
    BuildWrapper,
    Components,
    assemble,
    eval_batches,
    make_model,
    make_strategy,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from bigtrain.config.schema import RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState
from bigtrain.core.strategy import Strategy
from bigtrain.errors import ConfigError
from bigtrain.models import GPT
from bigtrain.tasks import ClassificationTask, LanguageModelTask

LANGUAGE_MODELS = ("gpt", "rnn_lm", "smollm2")


class TrainLossEstimate(Callback):
    """At each evaluation, also measure the loss on fixed *train* batches (nanoGPT's estimate)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def on_eval_end(self, state: TrainState) -> None:
        metrics = state.trainer.evaluate(self.batches, split="train_eval")
        state.metrics.update(metrics)
        if state.history:
            state.history[-1].update(metrics)


def prepared_folder(cfg: RunConfig, quiet: bool) -> Path:
    """The prepared token folder of a recipe's text data (prepared once, cached by content)."""
    from bigtrain.data.corpus import DEFAULT_CORPUS, load_sources
    from bigtrain.data.text import prepare_cached

    d = cfg.data
    if d.name == "prepared":
        return Path(d.path)
    spec = DEFAULT_CORPUS if d.name == "shakespeare" else d.path
    sources = load_sources(spec)
    if d.max_chars is not None:
        kept, left = [], d.max_chars
        for name, text in sources:
            if left <= 0:
                break
            kept.append((name, text[:left]))
            left -= len(text)
        sources = kept
    return prepare_cached(
        sources,
        d.tokenizer,
        d.vocab_size,
        d.cache_dir,
        val_fraction=d.val_fraction,
        progress=not quiet,
    )


def model_block_size(cfg: RunConfig) -> int:
    block = cfg.model.fields().get("block_size")
    if not block:
        raise ConfigError(f"model '{cfg.model.name}' has no block_size (context length)")
    return int(block)


def language_model_task(cfg: RunConfig) -> LanguageModelTask:
    """The LM task, refusing task settings it cannot honour (never ignoring them silently)."""
    t = cfg.task
    if t.name not in ("auto", "language_model"):
        raise ConfigError(f"task.name '{t.name}' does not apply to language modelling")
    if t.loss not in ("auto", "cross_entropy"):
        raise ConfigError(f"task.loss '{t.loss}' does not apply to language modelling")
    if t.label_smoothing:
        raise ConfigError(
            "task.label_smoothing is not supported for language models (the loss is the "
            "model's fused next-token cross-entropy); remove it"
        )
    return LanguageModelTask(metrics=t.metrics)


def build_language_model(
    cfg: RunConfig,
    run_dir: Path | None,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    strategy: Strategy | None = None,
) -> Components:
    """Token files -> random-window sampler -> GPT/RNN LM -> Trainer with MFU logging."""
    from bigtrain.data.text import load_tokenizer
    from bigtrain.data.tokens import (
        PreparedText,
        TokenWindowSampler,
        fixed_eval_batches,
        full_split_batches,
    )

    name = cfg.model.name
    if name not in LANGUAGE_MODELS:
        raise ConfigError(f"model '{name}' is not a language model; use one of {LANGUAGE_MODELS}")
    task = language_model_task(cfg)
    seed_everything(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    strategy = strategy or make_strategy(cfg)
    if not strategy.is_main:
        strategy.barrier()  # the main process prepares the token cache; the others reuse it
    prepared = PreparedText.load(prepared_folder(cfg, quiet or not strategy.is_main))
    if strategy.is_main:
        strategy.barrier()
    block = model_block_size(cfg)
    model = make_model(cfg, (block,), prepared.vocab_size)
    d = cfg.data
    sampler = TokenWindowSampler(
        prepared.train_path, prepared.dtype, block, d.batch_size, seed=cfg.seed,
        rank=strategy.rank, world_size=strategy.world_size,
    )  # fmt: skip
    eval_bs = d.eval_batch_size or d.batch_size
    val = fixed_eval_batches(
        prepared.val_path, prepared.dtype, block, eval_bs, d.eval_batches, seed=cfg.seed + 1
    )
    train_eval = fixed_eval_batches(
        prepared.train_path, prepared.dtype, block, eval_bs, d.eval_batches, seed=cfg.seed + 2
    )
    logger_kwargs: dict[str, Any] = {}
    flops = model.flops_per_token() if isinstance(model, GPT) else None
    if run_dir is not None and flops is not None:
        from bigtrain.plan import measured_peak_flops

        device = resolve_device(cfg.trainer.device)
        precision = resolve_precision(cfg.trainer.precision, device)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        logger_kwargs.update(flops_per_unit=flops, peak_flops=measured_peak_flops(dtype, device))
    built = assemble(
        cfg,
        model,
        task,
        sampler,
        val,
        run_dir,
        prepared,
        quiet=quiet,
        logger_kwargs=logger_kwargs,
        first_callbacks={"train_loss_estimate": TrainLossEstimate(train_eval)},
        extra_wrappers=extra_wrappers,
        counts_tokens=True,
        strategy=strategy,
    )
    built.extras.update(block_size=block, flops_per_token=flops or 0.0, prepared=prepared)
    # the final number: the whole validation split (the periodic evaluations use d.eval_batches)
    built.extras["full_val_batches"] = full_split_batches(
        prepared.val_path, prepared.dtype, block, eval_bs
    )
    built.tokenizer = load_tokenizer(prepared.tokenizer_path)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prepared.tokenizer_path, run_dir / "tokenizer.json")
    return built


def build_text_classifier(
    cfg: RunConfig,
    run_dir: Path | None,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    strategy: Strategy | None = None,
) -> Components:
    """Labelled texts (genre passages, class folders) -> tokens -> classifier.

    Char/BPE tokenizers are trained on the training texts and pad with an extra id; a
    pretrained tokenizer (``minilm``) keeps its vocabulary, its ``[PAD]`` id and its
    ``[CLS] ... [SEP]`` specials, cut to the model's block_size.
    """
    from bigtrain.data import InMemoryLoader
    from bigtrain.data.pretrained_tokenizers import PretrainedTokenizer
    from bigtrain.data.tables import DataBundle, Split
    from bigtrain.data.text import train_tokenizer
    from bigtrain.data.text_classification import classification_texts, encode_for_classification

    seed_everything(cfg.seed)
    d = cfg.data
    block = model_block_size(cfg)
    train_texts, train_y, test_texts, test_y, classes = classification_texts(d, cfg.seed)
    # the tokenizer is trained on the training passages only (no peeking at test plays)
    tokenizer = train_tokenizer(d.tokenizer, train_texts, d.vocab_size)
    pretrained = isinstance(tokenizer, PretrainedTokenizer)
    if pretrained and tokenizer.pad_id is None:
        raise ConfigError(
            f"data.tokenizer '{d.tokenizer}' has no padding token; text classification pads "
            "passages to the model's block_size (use minilm, char or bpe)"
        )
    pad = tokenizer.pad_id if pretrained else tokenizer.vocab_size  # else: an id no token uses
    known = set(getattr(tokenizer, "chars", ()))

    def encode(texts: list[str]) -> torch.Tensor:
        if known:  # char tokenizer: characters unseen in training are dropped
            texts = ["".join(c for c in t if c in known) for t in texts]
        return encode_for_classification(texts, tokenizer, block, pad_id=pad, specials=pretrained)

    x, y = encode(train_texts), torch.tensor(train_y)
    n_val = max(1, int(len(x) * d.val_fraction))
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(x), generator=g)
    tr, va = perm[n_val:], perm[:n_val]
    data = DataBundle(
        train=Split(x[tr], y[tr]),
        val=Split(x[va], y[va]),
        test=Split(encode(test_texts), torch.tensor(test_y)),
        kind="classification",
        num_classes=len(classes),
        input_shape=(block,),
        class_names=classes,
    )
    if "vocab_size" not in cfg.model.fields():
        raise ConfigError(
            f"model '{cfg.model.name}' cannot read tokens (use encoder or rnn_classifier)"
        )
    # every model that skips padding (encoder, rnn_classifier) must know the pad id
    n_vocab = tokenizer.vocab_size if pretrained else pad + 1
    vocab = {"vocab_size": n_vocab} | ({"pad_id": pad} if "pad_id" in cfg.model.fields() else {})
    model = make_model(cfg, (block,), len(classes), cfg.model.replace(**vocab))
    if cfg.task.name not in ("auto", "classification") or cfg.task.loss not in (
        "auto",
        "cross_entropy",
    ):
        raise ConfigError("text classification is a classification task with cross_entropy loss")
    task = ClassificationTask(len(classes), cfg.task.label_smoothing, cfg.task.metrics)
    strategy = strategy or make_strategy(cfg)
    loader = InMemoryLoader(
        data.train.x, data.train.y, d.batch_size, shuffle=True, seed=cfg.seed,
        rank=strategy.rank, world_size=strategy.world_size,
    )  # fmt: skip
    built = assemble(
        cfg,
        model,
        task,
        loader,
        eval_batches(data.val.x, data.val.y, 256),
        run_dir,
        data,
        quiet=quiet,
        extra_wrappers=extra_wrappers,
        strategy=strategy,
    )
    built.test_batches = eval_batches(data.test.x, data.test.y, 256)
    built.tokenizer = tokenizer
    return built
