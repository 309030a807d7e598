"""Recurrent models: an LSTM/GRU/RNN language model and a sequence classifier.

Builder mapping: ``RNNLM.from_config(cfg, (block_size,), vocab_size)`` and
``RNNClassifier.from_config(cfg, (block_size,), num_classes)`` (the classifier's vocab_size must
be set in its config).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bigtrain.models.gpt import LMOutput

__all__ = ["RNNLM", "RNNLMConfig", "RNNClassifier", "RNNClassifierConfig"]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _check_cell(cell: str) -> None:
    if cell not in _CELLS:
        raise ValueError(f"cell: must be one of {', '.join(_CELLS)}, got '{cell}'")


def _as_config(cls: type, cfg: Any) -> Any:
    return cls(**cfg) if isinstance(cfg, dict) else (cfg or cls())


@dataclass
class RNNLMConfig:
    """RNN language model settings.

    Attributes:
        cell: "lstm", "gru" or "rnn" (tanh).
        n_embd: token embedding size; hidden: recurrent state size; n_layers: stacked layers.
        dropout: on embeddings, between layers and before the head.
        tie_weights: share embedding and head weights (needs hidden == n_embd).
        block_size: training sequence length (informational: the state carries any length).
        vocab_size: filled from ``num_outputs`` by ``from_config``.
    """

    cell: str = "lstm"
    n_embd: int = 128
    hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.1
    tie_weights: bool = False
    block_size: int = 64
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        _check_cell(self.cell)
        if self.tie_weights and self.hidden != self.n_embd:
            raise ValueError(
                f"tie_weights: needs hidden == n_embd, got hidden={self.hidden} and "
                f"n_embd={self.n_embd}"
            )


class RNNLM(nn.Module):
    """Embedding -> stacked LSTM/GRU/RNN -> Linear to the vocabulary.

    ``forward(idx, targets)`` returns ``(logits, loss)`` like GPT; ``step(idx, state)`` is the
    stateful path used for generation.
    """

    Config = RNNLMConfig

    def __init__(self, config: RNNLMConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("vocab_size: not set; build with RNNLM.from_config")
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.rnn = _CELLS[cfg.cell](
            cfg.n_embd,
            cfg.hidden,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)
        # word_language_model init: small uniform embedding and head (default N(0, 1) is too big)
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if cfg.tie_weights:
            self.head.weight = self.wte.weight

    @classmethod
    def from_config(
        cls, cfg: RNNLMConfig | dict | None, input_shape: tuple[int, ...], num_outputs: int
    ) -> RNNLM:
        """``input_shape = (block_size,)``, ``num_outputs`` = vocabulary size."""
        cfg = _as_config(RNNLMConfig, cfg)
        return cls(replace(cfg, block_size=int(input_shape[0]), vocab_size=num_outputs))

    def step(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) for ``idx`` (B, T) continuing from ``state``, and the new state."""
        x = self.drop(self.wte(idx))  # (B, T, n_embd)
        out, state = self.rnn(x, state)  # (B, T, hidden)
        return self.head(self.drop(out)), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        """Logits (B, T, vocab) and mean cross-entropy (targets == -1 ignored) if targets given."""
        logits, _ = self.step(idx)
        if targets is None:
            return LMOutput(logits)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return LMOutput(logits, loss, loss)


@dataclass
class RNNClassifierConfig:
    """RNN sequence classifier settings.

    Attributes:
        cell, n_embd, hidden, n_layers, dropout: as in RNNLMConfig.
        bidirectional: run a second RNN right to left and concatenate.
        pooling: "last" (final hidden state of the last layer, each direction) or "mean"
            (average of the top layer's outputs over non-pad positions).
        pad_id: padding token id (sequences are right-padded); None = no padding.
        block_size: sequence length, from ``input_shape[0]``.
        vocab_size: must be set (``num_outputs`` is the number of classes).
    """

    cell: str = "lstm"
    n_embd: int = 128
    hidden: int = 256
    n_layers: int = 1
    dropout: float = 0.1
    bidirectional: bool = False
    pooling: str = "last"
    pad_id: int | None = 0
    block_size: int = 128
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        _check_cell(self.cell)
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling: must be 'last' or 'mean', got '{self.pooling}'")


class RNNClassifier(nn.Module):
    """Embedding -> LSTM/GRU/RNN -> pooled state -> Linear; ``forward(idx) -> logits (B, classes)``.

    Padding is handled by packing, so pad tokens never enter the recurrence.
    """

    Config = RNNClassifierConfig

    def __init__(self, config: RNNClassifierConfig, num_classes: int) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("vocab_size: must be set (the tokenizer's vocabulary size)")
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        self.rnn = _CELLS[cfg.cell](
            cfg.n_embd,
            cfg.hidden,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
            bidirectional=cfg.bidirectional,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), num_classes)

    @classmethod
    def from_config(
        cls, cfg: RNNClassifierConfig | dict | None, input_shape: tuple[int, ...], num_outputs: int
    ) -> RNNClassifier:
        """``input_shape = (block_size,)``, ``num_outputs`` = number of classes."""
        cfg = _as_config(RNNClassifierConfig, cfg)
        return cls(replace(cfg, block_size=int(input_shape[0])), num_outputs)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.drop(self.wte(idx))  # (B, T, n_embd)
        if self.config.pad_id is None:
            lengths = None
            out, h = self.rnn(x)  # out (B, T, D*hidden)
        else:
            # right padding assumed; an all-pad row still gets one step so packing is valid
            lengths = (idx != self.config.pad_id).sum(1).clamp(min=1)  # (B,)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, h = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        if self.config.pooling == "last":
            h = h[0] if isinstance(h, tuple) else h  # LSTM: (h_n, c_n)
            d = 2 if self.config.bidirectional else 1
            pooled = h[-d:].transpose(0, 1).reshape(B, -1)  # (B, D*hidden) top layer
        elif lengths is None:
            pooled = out.mean(1)
        else:
            pooled = out.sum(1) / lengths[:, None].to(out.dtype)  # padded outputs are zero
        return self.head(self.drop(pooled))
