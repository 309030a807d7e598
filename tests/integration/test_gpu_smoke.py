"""bench/gpu_smoke.py must keep running: on CPU its --dry-run takes bigtrain's whole GPT path
(recipe overrides, build, bf16 autocast, Trainer) and prints the figures a GPU run prints."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_smoke.py"


def test_gpu_smoke_dry_run_prints_tokens_per_second_and_mfu():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--dry-run"], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    rate = next(line for line in lines if line.startswith("tokens/s:"))
    assert float(rate.split()[1].replace(",", "")) > 0
    assert any(line.startswith("MFU vs measured bf16 matmul peak") for line in lines)
