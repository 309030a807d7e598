"""Report section: calibration, confidence intervals and membership inference."""

from __future__ import annotations

from .html import RunData


def section(run: RunData) -> str:
    """HTML for the run's trust section, or "" when the run has none."""
    return ""
