"""Resumable batch sources for the training loop (bigtrain.core.state.BatchSource).

Both loaders draw each epoch's order from their own ``torch.Generator`` (never the global RNG).
With ``world_size`` processes, ``batch_size`` is the global batch: each process serves
``batch_size // world_size`` examples of it, so step k of an epoch takes positions
``[k * batch_size, (k + 1) * batch_size)`` of the epoch order on any number of processes.

``state_dict`` saves ``{"epoch", "consumed", "generator", "num_examples"}``: the generator state
at the start of the epoch and how many examples of the epoch's order all processes together
served (always a prefix of it). That does not depend on the number of processes: restoring
redraws the order and shards the rest of the epoch over the new processes, and with as many
processes as before the batches are bitwise equal to those of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bigtrain.data.config import DataConfig
from bigtrain.data.tables import Split, apply_normalization
from bigtrain.errors import CheckpointError, ConfigError, DataError

BatchSize = int | Literal["full"]


def split_global_batch(batch_size: int, world_size: int) -> int:
    """Examples per process of a global batch of ``batch_size`` split over ``world_size``."""
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size {batch_size} is not a multiple of the {world_size} processes; "
            f"use a multiple of {world_size} (the batch size is the global batch, split across "
            "processes)"
        )
    return batch_size // world_size


class _Resumable:
    """Epoch/position bookkeeping and the state_dict contract shared by both loaders.

    With ``world_size`` processes, every process draws the same epoch order (same seed), pads it
    by repeating its start to a multiple of ``world_size`` and serves every ``world_size``-th
    example from ``rank`` on (``torch.utils.data.DistributedSampler``'s rule): the shards of an
    epoch are disjoint but for the padding, and equal in size, so every process takes the same
    number of steps. ``batch_size`` is the global batch, ``local_batch_size`` this process's part.

    A resumed epoch is a segment: the examples ``order[start:]`` not yet served, sharded (and
    padded from the start of ``order``) the same way over the current processes.
    """

    def __init__(
        self,
        n: int,
        batch_size: BatchSize,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n < 1:
            raise DataError("a loader needs at least one example; the split is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.shuffle, self.drop_last, self.seed = n, shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch_span = -(-n // world_size)  # examples this process serves in a whole epoch
        self.batch_size = batch_size  # type: ignore[assignment]  (the setter takes "full")
        self.epoch = 0
        self.start = 0  # examples of the epoch's order served before this segment (a resume)
        self.position = 0  # examples this process served in the current segment
        self._gen = torch.Generator().manual_seed(seed)
        self._epoch_start = self._gen.get_state()
        self._order: Any = None  # this segment's shard of the order, drawn from _epoch_start

    @property
    def batch_size(self) -> int:
        """Examples per step over all processes; set an int (a multiple of ``world_size``,
        taking effect at the next batch) or ``"full"`` (the whole epoch in one step)."""
        return self._local * self.world_size

    @batch_size.setter
    def batch_size(self, value: BatchSize) -> None:
        if value == "full":
            self._local = self.epoch_span
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"batch size must be a positive integer or 'full', got {value!r}")
        self._local = split_global_batch(value, self.world_size)

    @property
    def local_batch_size(self) -> int:
        """Examples per batch on this process: ``batch_size // world_size``."""
        return self._local

    @property
    def span(self) -> int:
        """Examples this process serves in the current segment (the whole epoch unless resumed)."""
        return -(-(self.n - self.start) // self.world_size)

    @property
    def consumed(self) -> int:
        """Examples of this epoch's order that all processes together have served."""
        return min(self.n, self.start + self.position * self.world_size)

    def _take(self, start: int, position: int, local: int) -> int:
        """Examples per process in the next batch of the segment from ``start`` at
        ``position``; 0 at the end of the epoch. ``drop_last`` drops a batch with fewer than
        ``local * world_size`` real (unpadded) examples left, so every world size drops alike."""
        w = self.world_size
        left = -(-(self.n - start) // w) - position
        unserved = self.n - min(self.n, start + position * w)
        if left <= 0 or (self.drop_last and unserved < min(local * w, self.n)):
            return 0
        return min(local, left)

    def __len__(self) -> int:
        """Batches in a whole epoch at the current batch size (the same for any world size)."""
        if self.drop_last:
            return max(1, self.n // self.batch_size)
        return -(-self.epoch_span // min(self._local, self.epoch_span))

    def at_epoch_end(self) -> bool:
        """True when the current epoch has no batch left at the current batch size."""
        return self._take(self.start, self.position, self._local) == 0

    def steps_in_epochs(self, epochs: int, batch_size_at: Callable[[int], int]) -> int:
        """Optimizer steps that ``epochs`` whole epochs take when step ``s`` uses a global batch
        of ``batch_size_at(s)`` (a batch-size schedule), counted the way ``__iter__`` serves
        them."""
        step = 0
        for _ in range(epochs):
            position = 0
            while take := self._take(
                0, position, split_global_batch(batch_size_at(step), self.world_size)
            ):
                position += take
                step += 1
        return step

    def _next_range(self) -> tuple[int, int] | None:
        """(start, stop) of the next batch in this segment's shard, or None at the epoch's end."""
        take = self._take(self.start, self.position, self._local)
        if not take:
            return None
        start = self.position
        self.position = start + take
        return start, self.position

    def _shard(self, order: Any) -> Any:
        """This process's part of the segment ``order[start:]`` (a tensor or an array of the n
        indices of the epoch), padded with ``order[0], order[1], ...`` to a multiple of
        ``world_size``: the same padding whether or not the epoch was resumed."""
        rest = order[self.start :]
        if self.world_size == 1:
            return rest
        pad = self.span * self.world_size - len(rest)
        if isinstance(order, np.ndarray):
            padded = np.concatenate([rest, np.resize(order, pad)])  # resize repeats from the start
        else:
            padded = torch.cat([rest, order.repeat(-(-pad // self.n))[:pad]])
        return padded[self.rank :: self.world_size]

    @property
    def _indexed(self) -> bool:
        """Batches are gathered through an order (shuffled, or a shard of several processes)."""
        return self.shuffle or self.world_size > 1

    def _end_epoch(self) -> None:
        if self.shuffle and self._order is None:
            self._draw_order()  # an epoch that served nothing still advances the generator
        self.epoch += 1
        self.start = self.position = 0
        self._epoch_start = self._gen.get_state()
        self._order = None

    def _draw_order(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "consumed", "generator", "num_examples"}``, for any world size."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "generator": self._epoch_start.clone(),
            "num_examples": self.n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state_dict`` was taken (same data, any batch size, any world size).

        The epoch's unserved examples are sharded over this run's processes; with the world size
        of the saved run the batches are those of an uninterrupted run.
        """
        n = int(state.get("num_examples", self.n))
        if n != self.n:
            raise CheckpointError(
                f"the saved data position is for {n} examples but this data set has {self.n}; "
                "resume with the same data settings"
            )
        if "consumed" in state:
            consumed = int(state["consumed"])
        else:  # older checkpoints: examples per process, from the start of the epoch
            consumed = int(state["position"]) * int(state.get("world_size", 1))
        self.epoch, self.start, self.position = int(state["epoch"]), min(self.n, consumed), 0
        self._epoch_start = torch.as_tensor(state["generator"], dtype=torch.uint8).clone()
        self._gen.set_state(self._epoch_start)
        self._order = None


class InMemoryLoader(_Resumable):
    """Batches ``(x[i], y[i])`` of in-memory tensors, reshuffled every epoch.

    A batch costs one ``index_select`` per tensor (a slice when not shuffling); a full batch
    without shuffling passes the tensors through uncopied. The tensors may live on any device.

    Args:
        x: inputs, first dimension = examples.
        y: targets with the same first dimension.
        batch_size: examples per batch over all processes (a multiple of ``world_size``) or
            ``"full"`` (one batch of everything per epoch).
        shuffle: draw a new order each epoch from this loader's own generator.
        seed: seed of that generator.
        drop_last: skip the last batch of an epoch when it has fewer than ``batch_size``
            examples (over all processes, padding excluded).
        rank / world_size: this process's shard of every epoch (see ``_Resumable``).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: BatchSize,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        self.x, self.y = x, y
        super().__init__(int(x.shape[0]), batch_size, shuffle, seed, drop_last, rank, world_size)

    def _draw_order(self) -> None:
        self._gen.set_state(self._epoch_start)
        order = (
            torch.randperm(self.n, generator=self._gen) if self.shuffle else torch.arange(self.n)
        )
        self._order = self._shard(order).to(self.x.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the rest of the current epoch, then move on to the next epoch."""
        if self._indexed and self._order is None:
            self._draw_order()
        x, y, order = self.x, self.y, self._order
        while (span := self._next_range()) is not None:
            start, stop = span
            if not self._indexed:
                start, stop = start + self.start, stop + self.start
                whole = start == 0 and stop == self.n
                yield (x, y) if whole else (x[start:stop], y[start:stop])  # views: no copy
            else:
                idx = order[start:stop]
                yield x.index_select(0, idx), y.index_select(0, idx)
        self._end_epoch()


class StreamingLoader(_Resumable):
    """Batches from arrays too large for memory (``np.memmap``, ``np.load(mmap_mode="r")``).

    Each epoch visits chunks of ``chunk_size`` consecutive examples in a random order and the
    examples within a chunk in a random order, so every batch reads from one or two nearby
    regions of the file; rows are read in file order and converted to tensors per batch.

    Args:
        x, y: arrays indexed by example (memory-mapped or not).
        batch_size, shuffle, seed, drop_last: as for :class:`InMemoryLoader`.
        chunk_size: examples per contiguous chunk (larger: more random, less local).
        transform: applied to each input batch tensor (default: cast to float32), e.g.
            ``lambda t: apply_normalization(t, bundle.normalization)``.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: BatchSize,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        chunk_size: int = 4096,
        transform: Callable[[Tensor], Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(x) != len(y):
            raise DataError(f"x has {len(x)} examples but y has {len(y)}")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
        self.x, self.y, self.chunk_size = x, y, chunk_size
        self.transform = transform or (lambda t: t.to(torch.float32))
        super().__init__(len(x), batch_size, shuffle, seed, drop_last, rank, world_size)

    def _draw_order(self) -> None:
        self._gen.set_state(self._epoch_start)
        if not self.shuffle:
            self._order = self._shard(np.arange(self.n))
            return
        n_chunks = -(-self.n // self.chunk_size)
        chunk_rank = torch.randperm(n_chunks, generator=self._gen).to(torch.float64)
        jitter = torch.rand(self.n, generator=self._gen, dtype=torch.float64)  # in [0, 1)
        chunk_of = torch.arange(self.n) // self.chunk_size
        # sort by (rank of the example's chunk, random key within the chunk)
        self._order = self._shard(torch.argsort(chunk_rank[chunk_of] + jitter).numpy())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the rest of the current epoch, then move on to the next epoch."""
        if self._indexed and self._order is None:
            self._draw_order()
        while (span := self._next_range()) is not None:
            start, stop = span
            if self._indexed:
                rows: Any = np.sort(self._order[start:stop])  # forward reads
            else:
                rows = slice(self.start + start, self.start + stop)
            xb = torch.from_numpy(_native(np.asarray(self.x[rows])))
            yb = torch.from_numpy(_native(np.asarray(self.y[rows])))
            yield self.transform(xb), yb
        self._end_epoch()


def _native(a: np.ndarray) -> np.ndarray:
    """Writable, native-byte-order copy-if-needed (memmaps of IDX files are big-endian)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.writeable else a.copy()


def make_loader(
    split: Split,
    cfg: DataConfig,
    seed: int = 0,
    *,
    train: bool = True,
    normalization: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> InMemoryLoader | StreamingLoader:
    """The loader for one split: shuffled batches of ``cfg.batch_size`` for training; in order,
    all examples kept, for evaluation (``train=False``).

    Tensors give an :class:`InMemoryLoader`; numpy arrays (e.g. memory-mapped files) give a
    :class:`StreamingLoader` that applies ``normalization`` batch by batch.
    """
    shuffle = cfg.shuffle and train
    drop_last = cfg.drop_last and train
    if isinstance(split.x, np.ndarray):
        norm = normalization or {}
        y = split.y if isinstance(split.y, np.ndarray) else split.y.numpy()
        return StreamingLoader(
            split.x, y, cfg.batch_size, shuffle, seed, drop_last,
            transform=lambda t: apply_normalization(t, norm), rank=rank, world_size=world_size,
        )  # fmt: skip
    return InMemoryLoader(
        split.x, split.y, cfg.batch_size, shuffle, seed, drop_last, rank, world_size
    )
