"""Loaders know their process: each of N ranks serves a disjoint, equal share of every epoch."""

import numpy as np
import pytest
import torch

from bigtrain.data.loader import InMemoryLoader, StreamingLoader
from bigtrain.data.tokens import TokenWindowSampler
from bigtrain.errors import CheckpointError


def make(kind, n, rank=0, world=1, shuffle=True, batch=2, seed=3):
    x = (
        np.arange(n, dtype=np.float32)[:, None]
        if kind == "stream"
        else torch.arange(n)[:, None].float()
    )
    y = np.arange(n) if kind == "stream" else torch.arange(n)
    cls = StreamingLoader if kind == "stream" else InMemoryLoader
    kw = {"chunk_size": 4} if kind == "stream" else {}
    return cls(x, y, batch, shuffle=shuffle, seed=seed, rank=rank, world_size=world, **kw)


def epoch(loader):
    return [int(v) for _, yb in loader for v in yb]


@pytest.mark.parametrize("kind", ["memory", "stream"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n", [12, 10])
def test_ranks_cover_the_epoch_once_with_equal_shares(kind, shuffle, n):
    shards = [epoch(make(kind, n, r, 3, shuffle)) for r in range(3)]
    assert [len(s) for s in shards] == [-(-n // 3)] * 3  # equal: every rank takes the same steps
    served = sorted(v for s in shards for v in s)
    assert set(served) == set(range(n))  # every example
    assert len(served) - n == -n % 3  # repeated only to pad an uneven epoch
    for r in range(3):
        loader = make(kind, n, r, 3, shuffle)
        assert len(loader) == -(-len(shards[r]) // 2)
        first = epoch(loader)
        assert epoch(loader) != first or not shuffle  # a new order every epoch


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_one_process_is_the_plain_loader(kind):
    plain = make(kind, 11)
    ranked = make(kind, 11, rank=0, world=1)
    for _ in range(2):
        assert epoch(plain) == epoch(ranked)


def test_a_rank_resumes_mid_epoch_and_refuses_another_world_size():
    straight = make("memory", 10, rank=1, world=2)
    expected = epoch(straight) + epoch(straight)
    part = make("memory", 10, rank=1, world=2)
    it = iter(part)
    got = [int(v) for _ in range(2) for v in next(it)[1]]
    state = part.state_dict()
    resumed = make("memory", 10, rank=1, world=2)
    resumed.load_state_dict(state)
    got += epoch(resumed) + epoch(resumed)
    assert got == expected
    with pytest.raises(CheckpointError, match="2 processes but this run has 4"):
        make("memory", 10, rank=1, world=4).load_state_dict(state)


def test_token_sampler_ranks_draw_their_own_windows(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    one = TokenWindowSampler(path, "uint16", 8, 4, seed=1)
    r0 = TokenWindowSampler(path, "uint16", 8, 4, seed=1, rank=0, world_size=2)
    r1 = TokenWindowSampler(path, "uint16", 8, 4, seed=1, rank=1, world_size=2)
    a, b, c = one.sample()[0], r0.sample()[0], r1.sample()[0]
    assert torch.equal(a, b) and not torch.equal(b, c)
    with pytest.raises(CheckpointError, match="resume with the same number of processes"):
        one.load_state_dict(r1.state_dict())
