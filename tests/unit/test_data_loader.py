"""InMemoryLoader / StreamingLoader: epochs, variable and full batches, bitwise resume."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from bigtrain.core.state import BatchSource
from bigtrain.data import (
    DataConfig,
    InMemoryLoader,
    Split,
    StreamingLoader,
    apply_normalization,
    make_loader,
)
from bigtrain.data.files import read_idx
from bigtrain.errors import CheckpointError, ConfigError

N = 23


def _data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return x, torch.arange(n)


def _batches(loader, count: int, sizes=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches across epochs; ``sizes[i]`` (if given) is set before batch i."""
    out: list = []
    while len(out) < count:
        before = len(out)
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                break
            if sizes is not None:
                loader.batch_size = sizes[len(out)]
        assert len(out) > before or loader.position == 0, "an epoch yielded nothing"
    return out


def _streaming(tmp_path, n: int = N, **kw) -> StreamingLoader:
    x, y = _data(n)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    xs = np.load(tmp_path / "x.npy", mmap_mode="r")
    ys = np.load(tmp_path / "y.npy", mmap_mode="r")
    return StreamingLoader(xs, ys, **kw)


def _loaders(tmp_path):
    return {
        "memory": lambda **kw: InMemoryLoader(*_data(), **kw),
        "streaming": lambda **kw: _streaming(tmp_path, chunk_size=5, **kw),
    }


@pytest.mark.parametrize("kind", ["memory", "streaming"])
def test_each_epoch_visits_every_example_once(tmp_path, kind):
    loader = _loaders(tmp_path)[kind](batch_size=4, seed=1)
    assert isinstance(loader, BatchSource) and len(loader) == 6
    epochs = []
    for _ in range(3):
        ys = torch.cat([y for _, y in loader])
        assert sorted(ys.tolist()) == list(range(N))
        epochs.append(ys)
    assert loader.epoch == 3 and not torch.equal(epochs[0], epochs[1])
    for x, y in _batches(_loaders(tmp_path)[kind](batch_size=4), 6):
        assert torch.equal(x, _data()[0][y])  # inputs travel with their targets
    ordered = _loaders(tmp_path)[kind](batch_size=4, shuffle=False)
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(N))


def test_own_generator_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = torch.cat([y for _, y in InMemoryLoader(*_data(), batch_size=5, seed=3)])
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)  # a different global seed changes nothing
    b = torch.cat([y for _, y in InMemoryLoader(*_data(), batch_size=5, seed=3)])
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["memory", "streaming"])
@pytest.mark.parametrize("stop", [1, 5, 6, 7, 13])
def test_resume_is_bitwise_equal(tmp_path, kind, stop):
    make = _loaders(tmp_path)[kind]
    sizes = [4] * 8 + [3, 7, 2] * 10  # a batch-size schedule that changes mid-epoch
    straight = _batches(make(batch_size=4, seed=5), 20, sizes)
    first = make(batch_size=4, seed=5)
    head = _batches(first, stop, sizes)
    state = first.state_dict()
    json.dumps({k: v for k, v in state.items() if k != "generator"})  # JSON-able besides it
    assert state["generator"].dtype == torch.uint8
    resumed = make(batch_size=sizes[stop], seed=999)  # the seed comes from the state
    resumed.load_state_dict(state)
    tail = _batches(resumed, 20 - stop, sizes[stop:])
    assert len(head + tail) == len(straight)
    for (x1, y1), (x2, y2) in zip(straight, head + tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_variable_batch_size_and_len():
    loader = InMemoryLoader(*_data(), batch_size=10, shuffle=False)
    assert len(loader) == 3
    it = iter(loader)
    assert len(next(it)[1]) == 10
    loader.batch_size = 4  # the next batch uses the new size
    assert len(loader) == 6
    rest = [len(y) for _, y in it]
    assert rest == [4, 4, 4, 1] and loader.epoch == 1
    loader.batch_size = 100  # larger than the data: one batch
    assert len(loader) == 1 and [len(y) for _, y in loader] == [N]
    with pytest.raises(ConfigError, match="positive integer"):
        loader.batch_size = 0


def test_drop_last():
    loader = InMemoryLoader(*_data(), batch_size=10, drop_last=True, seed=2)
    assert len(loader) == 2
    sizes = [len(y) for _, y in loader]
    assert sizes == [10, 10] and loader.epoch == 1


def test_full_batch():
    x, y = _data()
    plain = InMemoryLoader(x, y, batch_size="full", shuffle=False)
    batches = list(plain)
    assert len(plain) == 1 and len(batches) == 1
    assert batches[0][0] is x and batches[0][1] is y  # passed through, no copy
    shuffled = list(InMemoryLoader(x, y, batch_size="full", seed=0))
    assert len(shuffled) == 1 and sorted(shuffled[0][1].tolist()) == list(range(N))
    assert torch.equal(shuffled[0][0], x[shuffled[0][1]])


def test_state_from_other_data_is_refused():
    state = InMemoryLoader(*_data(), batch_size=4).state_dict()
    with pytest.raises(CheckpointError, match="23 examples but this data set has 10"):
        InMemoryLoader(*_data(10), batch_size=4).load_state_dict(state)


def test_streaming_reads_contiguous_chunks(tmp_path):
    loader = _streaming(tmp_path, n=100, batch_size=10, chunk_size=20, seed=4)
    for _, y in loader:
        chunks = set((y // 20).tolist())
        assert len(chunks) <= 2  # a batch touches at most two neighbouring-in-order chunks
    starts = [y.min().item() // 20 for _, y in _batches(loader, 10)[::2]]
    assert sorted(starts) == [0, 1, 2, 3, 4] and starts != [0, 1, 2, 3, 4]  # chunk order shuffled


def test_streaming_over_big_endian_idx_memmap(tmp_path):
    arr = np.arange(60, dtype=">i2").reshape(15, 2, 2)
    head = struct.pack(">BBBB", 0, 0, 0x0B, 3) + struct.pack(">3I", *arr.shape)
    (tmp_path / "a.idx").write_bytes(head + arr.tobytes())
    x = read_idx(tmp_path / "a.idx", mmap=True)
    loader = StreamingLoader(x, np.arange(15), batch_size=4, seed=0)
    for xb, yb in loader:
        assert xb.dtype == torch.float32
        assert torch.equal(xb, torch.from_numpy(arr.astype(np.float32)[yb.numpy()]))


def test_make_loader(tmp_path):
    x, y = _data()
    cfg = DataConfig(name="iris", batch_size=5, drop_last=True)
    train = make_loader(Split(x, y), cfg, seed=1)
    assert isinstance(train, InMemoryLoader) and train.shuffle and train.drop_last
    val = make_loader(Split(x, y), cfg, train=False)
    assert torch.cat([b for _, b in val]).tolist() == list(range(N))  # in order, nothing dropped
    norm = {"scale": 2.0, "mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 8.0], "axis": "feature"}
    arrays = Split(x.numpy(), y.numpy())  # type: ignore[arg-type]  (a memmap-backed split)
    stream = make_loader(arrays, cfg, train=False, normalization=norm)
    assert isinstance(stream, StreamingLoader)
    xb, yb = next(iter(stream))
    expected = (x[yb] / 2.0 - torch.tensor([1.0, 2.0, 3.0])) / torch.tensor([2.0, 4.0, 8.0])
    assert torch.allclose(xb, expected) and torch.allclose(
        apply_normalization(x[yb], norm), expected
    )
