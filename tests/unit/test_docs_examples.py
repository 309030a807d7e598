"""The Python examples of the engine page run as written (docs that cannot silently rot)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCKS = re.findall(r"```python\n(.*?)```", (DOCS / "engine.md").read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_engine_page_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    exec(compile(BLOCKS[index], f"docs/engine.md block {index}", "exec"), {})
