"""TokenWindowSampler: windows, epochs, bitwise resume, fixed eval batches, memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain.core.state import BatchSource
from bigtrain.data.tokens import TokenWindowSampler, fixed_eval_batches, token_dtype
from bigtrain.errors import CheckpointError, ConfigError, DataError


def write_tokens(path: Path, n: int, dtype=np.uint16) -> Path:
    """Token i has id i (mod dtype range), so a window's content reveals where it starts."""
    np.arange(n, dtype=np.int64).astype(dtype).tofile(path)
    return path


def test_windows_are_shifted_slices_of_the_file(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 1000)
    s = TokenWindowSampler(path, "uint16", block_size=16, batch_size=8, seed=0)
    assert isinstance(s, BatchSource) and len(s) == 1000 // (8 * 16)
    starts = []
    for _ in range(50):
        x, y = s.sample()
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous window of the file
        assert torch.equal(y, x + 1)  # targets are the next tokens
        starts += x[:, 0].tolist()
    assert min(starts) >= 0 and max(starts) <= 1000 - 16 - 1
    assert len(set(starts)) > 300  # many different windows, not one repeated


def test_corpus_of_exactly_one_window(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 9)
    x, y = TokenWindowSampler(path, "uint16", 8, 3, seed=1).sample()
    assert torch.equal(x, torch.arange(8).repeat(3, 1)) and torch.equal(y, x + 1)


def test_bad_token_files(tmp_path):
    small = write_tokens(tmp_path / "small.bin", 8)
    msg = rf"corpus {small} has 8 tokens, fewer than one context window \(block_size\+1 = 9\)"
    with pytest.raises(DataError, match=msg):
        TokenWindowSampler(small, "uint16", 8, 2)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="7 bytes, not a multiple of 2"):
        TokenWindowSampler(tmp_path / "odd.bin", "uint16", 2, 2)
    with pytest.raises(DataError, match="does not exist"):
        TokenWindowSampler(tmp_path / "none.bin", "uint16", 2, 2)
    s = TokenWindowSampler(small, "uint16", 2, 2)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        s.batch_size = 0
    with pytest.raises(CheckpointError, match="token file changed"):
        s.load_state_dict({**s.state_dict(), "n_tokens": 9})


def test_epochs_and_batch_size_changes(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 500)
    s = TokenWindowSampler(path, "uint16", 10, 4, seed=0, steps_per_epoch=3)
    assert len(list(s)) == 3 and (s.epoch, s.position) == (1, 0)
    it = iter(s)
    next(it)
    assert (s.epoch, s.position) == (1, 1)
    s.batch_size = 6
    assert next(it)[0].shape == (6, 10)


def _run(sampler, n):
    out = []
    while len(out) < n:
        for batch in sampler:
            out.append(batch)
            if len(out) == n:
                break
    return out


def test_resume_is_bitwise_identical(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 5000, np.uint32)
    straight = _run(TokenWindowSampler(path, "uint32", 32, 4, seed=7, steps_per_epoch=5), 12)

    first = TokenWindowSampler(path, "uint32", 32, 4, seed=7, steps_per_epoch=5)
    head = _run(first, 7)  # stops in the middle of epoch 2
    state = first.state_dict()
    assert {k: v for k, v in state.items() if k != "generator"} == {
        "epoch": 1,
        "position": 2,
        "n_tokens": 5000,
    }
    assert state["generator"].dtype == torch.uint8
    buf = io.BytesIO()
    torch.save(state, buf)  # what a checkpoint does
    buf.seek(0)
    resumed = TokenWindowSampler(path, "uint32", 32, 4, seed=123, steps_per_epoch=5)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    tail = _run(resumed, 5)
    assert len(head + tail) == len(straight)
    for (x1, y1), (x2, y2) in zip(straight, head + tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_fixed_eval_batches_are_deterministic(tmp_path):
    path = write_tokens(tmp_path / "t.bin", 3000)
    a = fixed_eval_batches(path, "uint16", 16, 4, n_batches=3, seed=0)
    b = fixed_eval_batches(path, "uint16", 16, 4, n_batches=3, seed=0)
    c = fixed_eval_batches(path, "uint16", 16, 4, n_batches=3, seed=1)
    assert len(a) == 3 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_token_dtype_choice():
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    with pytest.raises(DataError, match="overflows uint16"):
        token_dtype(65_537, "uint16")


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sampling_does_not_load_the_corpus(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:  # 10M uint16 tokens = 20 MB, written in 1 MB pieces
        for i in range(20):
            (np.arange(500_000, dtype=np.uint32) + i * 7).astype(np.uint16).tofile(f)
    # Warm up torch's RNG and allocator on a tiny file so they don't count.
    TokenWindowSampler(write_tokens(tmp_path / "tiny.bin", 300), "uint16", 256, 16).sample()
    before = _rss_anon_kib()
    s = TokenWindowSampler(path, "uint16", block_size=256, batch_size=16, seed=0)
    for _ in range(100):
        x, y = s.sample()
    grown_mib = (_rss_anon_kib() - before) / 1024
    # Loading the file would add >= 20 MiB (80 MiB as int64); memmap pages are file-backed.
    assert grown_mib < 8, f"anonymous memory grew by {grown_mib:.1f} MiB"


def test_full_split_batches_predict_every_token_once(tmp_path):
    import numpy as np

    from bigtrain.data.tokens import full_split_batches

    tokens = np.arange(103, dtype=np.uint16)
    path = tmp_path / "val.bin"
    tokens.tofile(path)
    batches = full_split_batches(path, "uint16", block_size=10, batch_size=4)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert [len(b[0]) for b in batches] == [4, 4, 2]  # 10 windows of 10: tokens 0..100
    assert torch.equal(x.flatten(), torch.arange(100))
    assert torch.equal(y.flatten(), torch.arange(1, 101))
