"""Loaders know their process: each of N ranks serves a disjoint, equal share of every epoch and
``batch_size`` is the global batch, split across the ranks."""

import numpy as np
import pytest
import torch

from bigtrain.data.loader import InMemoryLoader, StreamingLoader
from bigtrain.data.tokens import TokenWindowSampler
from bigtrain.errors import ConfigError


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
    shards = [epoch(make(kind, n, r, 3, shuffle, batch=6)) for r in range(3)]
    assert [len(s) for s in shards] == [-(-n // 3)] * 3  # equal: every rank takes the same steps
    served = sorted(v for s in shards for v in s)
    assert set(served) == set(range(n))  # every example
    assert len(served) - n == -n % 3  # repeated only to pad an uneven epoch
    for r in range(3):
        loader = make(kind, n, r, 3, shuffle, batch=6)
        assert (loader.batch_size, loader.local_batch_size) == (6, 2)
        sizes = [len(yb) for _, yb in make(kind, n, r, 3, shuffle, batch=6)]
        assert sizes == [2] * len(sizes) and len(loader) == len(sizes) == -(-n // 6)
        first = epoch(loader)
        assert epoch(loader) != first or not shuffle  # a new order every epoch


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_one_process_is_the_plain_loader(kind):
    plain = make(kind, 11)
    ranked = make(kind, 11, rank=0, world=1)
    assert ranked.local_batch_size == ranked.batch_size == 2
    for _ in range(2):
        assert epoch(plain) == epoch(ranked)


def test_a_rank_resumes_mid_epoch_and_saves_no_world_size():
    straight = make("memory", 10, rank=1, world=2, batch=4)
    expected = epoch(straight) + epoch(straight)
    parts = [make("memory", 10, rank=r, world=2, batch=4) for r in range(2)]
    its = [iter(p) for p in parts]
    got = [int(v) for _ in range(2) for v in next(its[1])[1]]
    next(its[0]), next(its[0])  # the ranks step together
    state, other = parts[1].state_dict(), parts[0].state_dict()
    assert set(state) == {"epoch", "consumed", "generator", "num_examples"}
    assert (state["epoch"], state["consumed"], state["num_examples"]) == (0, 8, 10)
    assert state["consumed"] == other["consumed"]  # every rank saves the same position
    assert torch.equal(state["generator"], other["generator"])
    resumed = make("memory", 10, rank=1, world=2, batch=4)
    resumed.load_state_dict(state)
    got += epoch(resumed) + epoch(resumed)
    assert got == expected
    four = [make("memory", 10, rank=r, world=4, batch=4) for r in range(4)]
    for loader in four:
        loader.load_state_dict(state)  # another world size is accepted
    rest = sorted(v for loader in four for v in epoch(loader))
    order = epoch(make("memory", 10, batch=4))  # the one-process order of epoch 0
    assert rest == sorted(order[8:] + order[:2])  # the unserved two, padded from the start


@pytest.mark.parametrize("kind", ["memory", "stream", "tokens"])
def test_batch_size_must_split_evenly_across_processes(tmp_path, kind):
    def build(batch):
        if kind == "tokens":
            path = tmp_path / "train.bin"
            np.arange(5000, dtype=np.uint16).tofile(path)
            return TokenWindowSampler(path, "uint16", 8, batch, rank=1, world_size=3)
        return make(kind, 20, rank=1, world=3, batch=batch)

    message = (
        r"data.batch_size 100 is not a multiple of the 3 processes; use a multiple of 3 "
        r"\(the batch size is the global batch, split across processes\)"
    )
    with pytest.raises(ConfigError, match=message):
        build(100)
    source = build(9)
    assert (source.batch_size, source.local_batch_size) == (9, 3)
    with pytest.raises(ConfigError, match="not a multiple of the 3 processes"):
        source.batch_size = 100  # a batch-size schedule sets it between batches
    assert source.batch_size == 9  # unchanged by the refused value
    source.batch_size = 12
    assert (source.batch_size, source.local_batch_size) == (12, 4)
    if kind != "tokens":
        with pytest.raises(ConfigError, match="not a multiple of the 3 processes"):
            source.steps_in_epochs(1, lambda step: 10)


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_full_batch_is_every_shard_at_once(kind):
    loaders = [make(kind, 10, r, 3, batch="full") for r in range(3)]
    assert [(lo.batch_size, lo.local_batch_size, len(lo)) for lo in loaders] == [(12, 4, 1)] * 3
    batches = [[[int(v) for v in yb] for _, yb in lo] for lo in loaders]
    assert [len(b) for b in batches] == [1, 1, 1]  # one step per epoch on every rank
    served = sorted(v for b in batches for v in b[0])
    assert set(served) == set(range(10)) and len(served) == 12  # plus two padding repeats


def test_token_sampler_ranks_slice_one_shared_stream(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    one = TokenWindowSampler(path, "uint16", 8, 4, seed=1)
    r0 = TokenWindowSampler(path, "uint16", 8, 4, seed=1, rank=0, world_size=2)
    r1 = TokenWindowSampler(path, "uint16", 8, 4, seed=1, rank=1, world_size=2)
    assert (r1.batch_size, r1.local_batch_size) == (4, 2)
    assert r0.steps_per_epoch == r1.steps_per_epoch == one.steps_per_epoch == 5000 // 32
    a, b, c = one.sample()[0], r0.sample()[0], r1.sample()[0]
    assert b.shape == c.shape == (2, 8)
    assert torch.equal(a[:2], b) and torch.equal(a[2:], c) and not torch.equal(b, c)
    state = r1.state_dict()
    assert set(state) == {"epoch", "position", "generator", "n_tokens"}
    assert torch.equal(state["generator"], r0.state_dict()["generator"])  # ranks in lockstep
    assert torch.equal(state["generator"], one.state_dict()["generator"])
    fresh = TokenWindowSampler(path, "uint16", 8, 4, seed=99)
    fresh.load_state_dict(state | {"world_size": 2})  # an old key is accepted and ignored
    assert torch.equal(fresh.sample()[0], one.sample()[0])
