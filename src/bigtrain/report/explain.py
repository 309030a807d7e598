"""Report section: attributions written by `bigtrain explain`."""

from __future__ import annotations

from .html import RunData


def section(run: RunData) -> str:
    """HTML for the run's explain section, or "" when the run has none."""
    return ""
