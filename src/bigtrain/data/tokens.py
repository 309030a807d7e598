"""Token files and the resumable random-window sampler that language models train from.

A prepared folder (see :func:`bigtrain.data.text.prepare_text`) holds ``train.bin`` / ``val.bin``:
raw uint16 or uint32 token ids, as in nanoGPT. The sampler reads them through a read-only
``np.memmap``, so memory does not grow with the corpus. Its ``batch_size`` is the global batch:
every process draws the same window starts and keeps its own slice of them, so the saved
position is the same on every rank and resumes on any number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain.data.loader import split_global_batch
from bigtrain.errors import CheckpointError, ConfigError, DataError


@dataclass(frozen=True)
class PreparedText:
    """A folder written by ``prepare_text`` and its summary (also in ``meta.json``)."""

    out_dir: Path
    tokenizer: str
    vocab_size: int
    dtype: str
    n_train: int
    n_val: int
    characters: int
    files: int
    source_hash: str
    val_fraction: float

    @property
    def train_path(self) -> Path:
        return self.out_dir / "train.bin"

    @property
    def val_path(self) -> Path:
        return self.out_dir / "val.bin"

    @property
    def tokenizer_path(self) -> Path:
        return self.out_dir / "tokenizer.json"

    @classmethod
    def load(cls, out_dir: str | Path) -> PreparedText:
        """Read ``out_dir/meta.json``; DataError if the folder was not made by prepare_text."""
        out_dir = Path(out_dir)
        try:
            meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
            fields = {k: meta[k] for k in cls.__dataclass_fields__ if k != "out_dir"}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{out_dir} is not a prepared text folder ({type(e).__name__}: {e}); "
                "run `bigtrain data prepare`"
            ) from None
        return cls(out_dir=out_dir, **fields)


def token_dtype(vocab_size: int, requested: str | None = None) -> np.dtype:
    """uint16 when the vocabulary fits (<= 65,536 ids), else uint32; DataError when it can't fit."""
    if requested not in (None, "uint16", "uint32"):
        raise ConfigError(f"token dtype must be 'uint16' or 'uint32', not {requested!r}")
    if vocab_size > 2**32:
        raise DataError(
            f"a vocabulary of {vocab_size:,} tokens does not fit uint32 token files "
            f"(at most {2**32:,}); use a smaller vocab size"
        )
    auto = "uint16" if vocab_size <= 2**16 else "uint32"
    if requested == "uint16" and auto == "uint32":
        raise DataError(
            f"a vocabulary of {vocab_size:,} tokens overflows uint16 token files (at most 65,536); "
            "use dtype uint32 or a smaller vocab size"
        )
    return np.dtype(requested or auto)


def count_tokens(path: str | Path, dtype: str | np.dtype) -> int:
    """Number of tokens in a raw token file, checked for existence and truncation."""
    path, dt = Path(path), np.dtype(dtype)
    if not path.is_file():
        raise DataError(f"token file {path} does not exist; run `bigtrain data prepare` first")
    size = path.stat().st_size
    if size % dt.itemsize:
        raise DataError(
            f"token file {path} has {size} bytes, not a multiple of {dt.itemsize} ({dt.name}): "
            "it is truncated or has another dtype; prepare it again"
        )
    return size // dt.itemsize


class TokenWindowSampler:
    """Random ``block_size`` windows of a token file: batches ``(x, y)`` with ``y`` shifted by one.

    Implements the loop's ``BatchSource``: an endless stream cut into epochs of
    ``steps_per_epoch`` batches (default: about one pass over the tokens). Window starts come from
    the sampler's own ``torch.Generator``, seeded alike on every process: each step draws
    ``batch_size`` starts and process ``rank`` keeps ``starts[rank * b:(rank + 1) * b]`` with
    ``b = local_batch_size``, so the processes together see one process's batch and
    ``state_dict`` / ``load_state_dict`` resume the exact same batches on any world size.
    ``batch_size`` may change between batches.

    Args:
        path: raw token file (``train.bin``).
        dtype: its dtype, ``"uint16"`` or ``"uint32"`` (``meta.json`` says which).
        block_size: context length T; batches are int64 tensors of shape (B // world_size, T).
        batch_size: windows per batch B over all processes (a multiple of ``world_size``).
        seed: seeds the generator (the same on every process).
        steps_per_epoch: batches per epoch; default ``n_tokens // (batch_size * block_size)``.
        rank / world_size: this process among ``world_size``; it yields (B // world_size, T).
    """

    def __init__(
        self,
        path: str | Path,
        dtype: str | np.dtype,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if int(block_size) < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size}")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.block_size = int(block_size)
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.n_tokens = count_tokens(self.path, self.dtype)
        if self.n_tokens < self.block_size + 1:
            raise DataError(
                f"corpus {self.path} has {self.n_tokens} tokens, fewer than one context window "
                f"(block_size+1 = {self.block_size + 1}); use more text or a smaller block_size"
            )
        if steps_per_epoch is None:
            steps_per_epoch = max(1, self.n_tokens // (self.batch_size * self.block_size))
        if int(steps_per_epoch) < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches already yielded in the current epoch
        # one stream on every process (each keeps its slice of every step's starts)
        self._gen = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(self.block_size + 1, dtype=np.int64)  # (T+1,)
        self._tokens: np.memmap | None = None

    @classmethod
    def from_prepared(
        cls,
        out_dir: str | Path,
        split: str,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> TokenWindowSampler:
        """Sampler over ``out_dir/<split>.bin`` (split ``"train"`` or ``"val"``)."""
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', not {split!r}")
        prepared = PreparedText.load(out_dir)
        return cls(
            prepared.out_dir / f"{split}.bin",
            prepared.dtype,
            block_size,
            batch_size,
            seed,
            steps_per_epoch,
            rank,
            world_size,
        )

    @property
    def batch_size(self) -> int:
        """Windows per step over all processes (set a multiple of ``world_size``)."""
        return self._local * self.world_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {value}")
        self._local = split_global_batch(int(value), self.world_size)

    @property
    def local_batch_size(self) -> int:
        """Windows per batch on this process: ``batch_size // world_size``."""
        return self._local

    def _memmap(self) -> np.memmap:
        # Opened lazily and kept: pages are read on demand, never the whole file.
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw this process's part ``(x, y)`` of one batch, each int64 (b, T) with
        ``b = local_batch_size``; advances the generator by the whole batch's B starts."""
        tokens = self._memmap()
        high = self.n_tokens - self.block_size  # starts in [0, n - T - 1]
        starts = torch.randint(0, high, (self.batch_size,), generator=self._gen).numpy()  # (B,)
        b = self._local
        starts = starts[self.rank * b : (self.rank + 1) * b]  # (b,)
        idx = starts[:, None] + self._offsets[None, :]  # (b, T+1)
        window = torch.from_numpy(tokens[idx].astype(np.int64))  # one gather from the memmap
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (b, T), (b, T)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.position < self.steps_per_epoch:
            batch = self.sample()
            self.position += 1  # before yielding, so a checkpoint taken now counts this batch
            yield batch
        self.epoch += 1
        self.position = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def at_epoch_end(self) -> bool:
        return self.position >= self.steps_per_epoch

    def steps_in_epochs(self, epochs: int, batch_size_at: Callable[[int], int]) -> int:
        """An epoch is ``steps_per_epoch`` batches whatever their size."""
        return epochs * self.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "generator": uint8 tensor, "n_tokens"}``, alike on every
        process and valid for any world size."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator": self._gen.get_state(),
            "n_tokens": self.n_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; the following batches equal those of an uninterrupted run (on
        another world size: their union over processes does). An old ``"world_size"`` key is
        ignored."""
        n = state.get("n_tokens", self.n_tokens)
        if n != self.n_tokens:
            raise CheckpointError(
                f"the checkpoint's sampler was over {n} tokens but {self.path} has "
                f"{self.n_tokens}: the token file changed since the checkpoint"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._gen.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))


def full_split_batches(
    path: str | Path, dtype: str | np.dtype, block_size: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of a split predicted once: consecutive non-overlapping windows.

    The final number of a run (its whole validation split), where ``fixed_eval_batches`` is a
    cheap, noisier estimate for the periodic evaluations. Windows of ``block_size`` inputs
    (and the next token as each target) cover tokens ``1 .. n_windows * block_size``; the
    last partial window is dropped, as is every such full-split evaluation's.
    """
    tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    n_windows = (len(tokens) - 1) // block_size
    if n_windows < 1:
        raise DataError(
            f"{path} holds {len(tokens)} tokens, fewer than one window of block_size + 1 = "
            f"{block_size + 1}; use more text or a smaller block_size"
        )
    used = np.asarray(tokens[: n_windows * block_size + 1], dtype=np.int64)
    x = torch.from_numpy(used[:-1].reshape(n_windows, block_size))
    y = torch.from_numpy(used[1:].reshape(n_windows, block_size))
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_windows, batch_size)]


def fixed_eval_batches(
    path: str | Path,
    dtype: str | np.dtype,
    block_size: int,
    batch_size: int,
    n_batches: int,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same ``n_batches`` random windows every time (for comparable evaluation losses)."""
    sampler = TokenWindowSampler(path, dtype, block_size, batch_size, seed)
    return [sampler.sample() for _ in range(n_batches)]
