"""Poisson sampling: the batches DP-SGD's privacy accounting assumes.

Every step draws a fresh batch that holds each of the ``n`` training examples independently
with probability ``q = batch_size / n`` (Opacus' ``UniformWithReplacementSampler``), so a batch
has ``q * n`` examples on average and may be empty. The draws come from the loader's own seeded
``torch.Generator`` and the position is resumable (``bigtrain.core.state.BatchSource``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bigtrain.errors import CheckpointError, ConfigError, DataError


class PoissonLoader:
    """Poisson-sampled ``(x[idx], y[idx])`` batches; an epoch is ``steps_per_epoch`` draws.

    Args:
        x, y: the training inputs and targets, indexed by example: tensors (on any device) or
            numpy arrays (memory-mapped files; rows are read in file order and ``transform``
            turns the input rows into a tensor, default a float32 cast).
        batch_size: the expected batch size ``q * n``.
        steps_per_epoch: draws per epoch (the shuffled loader's batches per epoch, so an epoch
            sees each example once on average).
        seed: seed of the loader's generator.

    ``state_dict`` saves ``{"epoch", "step_in_epoch", "generator", "num_examples",
    "sample_rate"}``: the generator state after the last draw, so a resumed run draws the
    batches an uninterrupted run would have drawn, bitwise.
    """

    def __init__(
        self,
        x: Tensor | np.ndarray,
        y: Tensor | np.ndarray,
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        n = len(x)
        if len(y) != n:
            raise DataError(f"x has {n} examples but y has {len(y)}")
        if n < 1:
            raise DataError("a loader needs at least one example; the split is empty")
        if not 1 <= batch_size <= n:
            raise ConfigError(
                f"the expected batch size must be in [1, {n}] (the training examples), "
                f"got {batch_size}"
            )
        self.x, self.y, self.n = x, y, n
        self._batch_size = int(batch_size)
        self.sample_rate = batch_size / n
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.transform = transform or (lambda t: t.to(torch.float32))
        self.epoch = 0
        self.step_in_epoch = 0
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def batch_size(self) -> int:
        """The expected batch size ``q * n``; fixed, since the accountant assumes that ``q``."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if value != self._batch_size:
            raise ConfigError(
                "privacy: the Poisson sampler's batch size is fixed (the privacy accountant "
                "assumes one sampling rate); remove batch_size_schedule / dynamic_batch"
            )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def at_epoch_end(self) -> bool:
        return self.step_in_epoch >= self.steps_per_epoch

    def steps_in_epochs(self, epochs: int, batch_size_at: Callable[[int], int]) -> int:
        return epochs * self.steps_per_epoch

    def draw(self) -> Tensor:
        """Indices of the next batch (ascending; possibly none), advancing the generator."""
        mask = torch.rand(self.n, generator=self._gen) < self.sample_rate
        return mask.nonzero().squeeze(1)

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The examples at ``idx`` as a batch ``(x, y)`` (shape ``(0, ...)`` when empty)."""
        if isinstance(self.x, Tensor):
            idx = idx.to(self.x.device)
            return self.x.index_select(0, idx), self.y.index_select(0, idx.to(self.y.device))
        rows = idx.numpy()
        xb = torch.from_numpy(_native(np.asarray(self.x[rows])))
        yb = torch.from_numpy(_native(np.asarray(self.y[rows])))
        return self.transform(xb), yb

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the rest of the current epoch's draws, then move on to the next epoch."""
        while self.step_in_epoch < self.steps_per_epoch:
            idx = self.draw()
            self.step_in_epoch += 1
            yield self.gather(idx)
        self.epoch += 1
        self.step_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "generator": self._gen.get_state(),
            "num_examples": self.n,
            "sample_rate": self.sample_rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state_dict`` was taken (same data and batch size)."""
        if "step_in_epoch" not in state:
            raise CheckpointError(
                "the checkpoint's data position is not a Poisson sampler's; resume with the "
                "same privacy.poisson_sampling setting"
            )
        n, q = int(state["num_examples"]), float(state["sample_rate"])
        if n != self.n or q != self.sample_rate:
            raise CheckpointError(
                f"the saved Poisson sampler drew from {n} examples at rate {q:.4g}, this one "
                f"from {self.n} at {self.sample_rate:.4g}; resume with the same data settings"
            )
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self._gen.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).clone())


def _native(a: np.ndarray) -> np.ndarray:
    """Writable, native-byte-order array (memory-mapped IDX files are big-endian)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.writeable else a.copy()
