"""The global batch and the saved data position do not depend on the number of processes.

Step k of an epoch takes positions [k*B, (k+1)*B) of the epoch order on any world size W, and a
checkpoint written with W processes resumes with any other W (bitwise with the same W).
"""

from collections import Counter

import numpy as np
import pytest
import torch

from bigtrain.data.loader import InMemoryLoader, StreamingLoader
from bigtrain.data.tokens import TokenWindowSampler


def make(kind, n, rank=0, world=1, batch=6, shuffle=True, drop_last=False, seed=3):
    """A loader over examples 0..n-1 whose targets are the example ids."""
    if kind == "stream":
        x, y, cls = np.arange(n, dtype=np.float32)[:, None] * 10, np.arange(n), StreamingLoader
        kw = {"chunk_size": 4}
    else:
        x, y, cls, kw = torch.arange(n)[:, None].float() * 10, torch.arange(n), InMemoryLoader, {}
    return cls(x, y, batch, shuffle, seed, drop_last, rank=rank, world_size=world, **kw)


def ids(batches):
    return [[int(v) for v in yb] for _, yb in batches]


def orders(kind, n, epochs=1, **kw):
    """The epoch orders of one process: batches of one example show it (the streaming loader
    sorts the rows within a batch)."""
    loader = make(kind, n, **kw | {"batch": 1})
    return [[b[0] for b in ids(loader)] for _ in range(epochs)]


def ranks(kind, n, world, **kw):
    return [make(kind, n, r, world, **kw) for r in range(world)]


def union(step_batches):
    return Counter(v for batch in step_batches for v in batch)


def check_segment(ref_order, start, per_rank, batch, world):
    """Step j of the ranks' batches takes ref_order[start + j*B : start + (j+1)*B], padded from
    the start of ref_order in the last step."""
    steps = len(per_rank[0])
    assert all(len(r) == steps for r in per_rank)  # the ranks step together
    total = Counter()
    for j in range(steps):
        got = union([r[j] for r in per_rank])
        expected = Counter(ref_order[start + j * batch : start + (j + 1) * batch])
        if j < steps - 1:
            assert got == expected  # padding shows up in the last step only
        total += got
    rest = ref_order[start:]
    pad = -len(rest) % world
    if sum(total.values()) == len(rest) + pad:  # the whole rest was served (no drop_last cut)
        assert total == Counter(rest + ref_order[:pad])
    return steps


@pytest.mark.parametrize("kind", ["memory", "stream"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize(("n", "batch"), [(23, 6), (10, 6), (4, 12)])
def test_a_step_takes_the_same_examples_on_any_world_size(
    kind, shuffle, drop_last, world, n, batch
):
    kw = {"batch": batch, "shuffle": shuffle, "drop_last": drop_last}
    one = make(kind, n, **kw)
    many = ranks(kind, n, world, **kw)
    for order in orders(kind, n, 2, **kw):  # two epochs: a new order, the same rule
        ref = ids(one)
        shards = [ids(loader) for loader in many]
        assert len(shards[0]) == len(ref)  # as many steps as one process takes
        for k, batch_ids in enumerate(ref):
            got = union([s[k] for s in shards])
            if k < len(ref) - 1 or drop_last and n >= batch:
                assert got == Counter(batch_ids)  # the same examples, no padding
            else:
                assert got == Counter(batch_ids) + Counter(order[: -n % world])  # padded
        assert [lo.epoch for lo in many] == [one.epoch] * world


@pytest.mark.parametrize("kind", ["memory", "stream"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_steps_per_epoch_do_not_depend_on_the_world_size(kind, drop_last):
    lens = {}
    for world in (1, 2, 4):
        loader = make(kind, 1797, rank=world - 1, world=world, batch=64, drop_last=drop_last)
        served = len(ids(loader))
        assert len(loader) == served  # __len__ counts what __iter__ serves
        assert loader.steps_in_epochs(3, lambda step: 64) == 3 * served
        schedule = loader.steps_in_epochs(2, lambda step: 32 if step < 40 else 128)
        lens[world] = (len(loader), schedule)
    assert lens[1] == lens[2] == lens[4] == ((28, 58) if drop_last else (29, 60))
    # the padding of 10 examples over 3 processes completes the last batch of 6: still dropped
    for world in (1, 2, 3):
        loader = make(kind, 10, world=world, batch=6, drop_last=True)
        assert len(loader) == len(ids(loader)) == loader.steps_in_epochs(1, lambda s: 6) == 1


def _run_after_resume(kind, n, saved_world, world, stop, **kw):
    """Every rank of ``saved_world`` serves ``stop`` batches and saves; ``world`` ranks resume.

    Returns the saved state and, per resumed rank, the rest of the epoch and the next epoch.
    """
    before = ranks(kind, n, saved_world, **kw)
    iters = [iter(loader) for loader in before]
    for it in iters:
        for _ in range(stop):
            next(it)
    states = [loader.state_dict() for loader in before]
    assert all(s["consumed"] == states[0]["consumed"] for s in states)  # one position for all
    assert all(torch.equal(s["generator"], states[0]["generator"]) for s in states)
    after = ranks(kind, n, world, seed=77, **kw)  # the seed comes from the state
    for loader in after:
        loader.load_state_dict(states[0])
    return states[0], [(list(loader), list(loader)) for loader in after]


@pytest.mark.parametrize("kind", ["memory", "stream"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("stop", [1, 3, 4])
def test_resume_with_the_same_world_size_is_bitwise_equal(kind, shuffle, world, stop):
    n, kw = 23, {"batch": 6, "shuffle": shuffle}
    straight = [list(loader) + list(loader) for loader in ranks(kind, n, world, **kw)]
    state, resumed = _run_after_resume(kind, n, world, world, stop, **kw)
    assert state["consumed"] == min(n, 6 * stop) and state["epoch"] == 0
    assert set(state) == {"epoch", "consumed", "generator", "num_examples"}
    for rank in range(world):
        rest, following = resumed[rank]
        tail = straight[rank][stop:]
        assert len(rest) + len(following) == len(tail) == 8 - stop  # 4 batches per epoch
        for (x1, y1), (x2, y2) in zip(tail, rest + following):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("kind", ["memory", "stream"])
@pytest.mark.parametrize(("saved_world", "world"), [(2, 1), (1, 2), (2, 3), (3, 2), (3, 1)])
@pytest.mark.parametrize("stop", [1, 2])
def test_resume_with_another_world_size_serves_the_rest_of_the_epoch(
    kind, saved_world, world, stop
):
    n, kw = 23, {"batch": 6}
    (order,) = orders(kind, n, **kw)
    state, resumed = _run_after_resume(kind, n, saved_world, world, stop, **kw)
    consumed = state["consumed"]
    assert consumed == 6 * stop
    steps = check_segment(order, consumed, [ids(rest) for rest, _ in resumed], 6, world)
    assert steps == -(-(n - consumed) // 6)
    fresh = ranks(kind, n, world, **kw)  # the next epoch is a normal one
    for rank, loader in enumerate(fresh):
        list(loader)
        for (x1, y1), (x2, y2) in zip(list(loader), resumed[rank][1], strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert torch.equal(x2, y2[:, None].float() * 10)  # inputs travel with targets


@pytest.mark.parametrize("world", [1, 2, 3])
def test_at_epoch_end_is_right_just_after_a_resume(world):
    state = make("memory", 23).state_dict()
    for consumed, drop_last, at_end in [(23, False, True), (18, False, False), (18, True, True)]:
        for loader in ranks("memory", 23, world, drop_last=drop_last):
            loader.load_state_dict(state | {"consumed": consumed})
            assert loader.at_epoch_end() is at_end
            assert len(list(loader)) == (0 if at_end else 1) and loader.epoch == 1
            assert not loader.at_epoch_end()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_old_checkpoints_with_a_per_process_position_still_load(world):
    n = 23
    (order,) = orders("memory", n)
    state = make("memory", n).state_dict()
    old = {k: v for k, v in state.items() if k != "consumed"} | {"position": 4, "world_size": 2}
    resumed = ranks("memory", n, world)
    for loader in resumed:
        loader.load_state_dict(old)  # 4 examples on each of 2 processes: 8 served
        assert loader.state_dict()["consumed"] == 8
    check_segment(order, 8, [ids(loader) for loader in resumed], 6, world)
    past_the_end = old | {"position": 12}  # 24 > 23: the padded epoch was all served
    resumed[0].load_state_dict(past_the_end)
    assert resumed[0].at_epoch_end() and resumed[0].state_dict()["consumed"] == n


@pytest.mark.parametrize("world", [2, 3])
def test_token_ranks_together_draw_one_process_batch(tmp_path, world):
    path = tmp_path / "train.bin"
    np.arange(7000, dtype=np.uint16).tofile(path)

    def sampler(rank=0, size=1, seed=4):
        return TokenWindowSampler(path, "uint16", 16, 6, seed=seed, rank=rank, world_size=size)

    one, many = sampler(), [sampler(r, world) for r in range(world)]
    assert all(s.steps_per_epoch == one.steps_per_epoch == 7000 // 96 for s in many)
    for _ in range(3):
        x, y = one.sample()
        parts = [s.sample() for s in many]
        assert all(p[0].shape == (6 // world, 16) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # rank order = one batch
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    # a checkpoint of these ranks resumes on one process and on another world size
    state = many[-1].state_dict()
    for size in (1, 2, 3):
        resumed = [sampler(r, size, seed=0) for r in range(size)]
        for s in resumed:
            s.load_state_dict(state)
        expected = sampler()
        expected.load_state_dict(one.state_dict())
        x = expected.sample()[0]
        assert torch.equal(torch.cat([s.sample()[0] for s in resumed]), x)
