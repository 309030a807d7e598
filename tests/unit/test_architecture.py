"""Design rules enforced in CI: import layering (import-linter) and a module size budget."""

import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bigtrain"
MAX_LINES = 500  # ARCHITECTURE.md: modules under ~400 lines; this is the hard stop


def test_import_layering_contracts():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    # a dev dependency: a missing linter is a broken environment, not a reason to skip
    assert exe is not None, "import-linter is not installed: pip install -e '.[dev]'"
    out = subprocess.run([exe], capture_output=True, text=True, cwd=SRC.parents[1])
    assert out.returncode == 0, out.stdout[-2000:]


def test_module_size_budget():
    too_big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not too_big, f"split these modules: {too_big}"
