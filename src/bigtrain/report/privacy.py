"""Report section: the privacy budget a DP-SGD run spent."""

from __future__ import annotations

from .html import RunData


def section(run: RunData) -> str:
    """HTML for the run's privacy section, or "" when the run has none."""
    return ""
