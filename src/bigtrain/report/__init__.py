"""Plots and the self-contained HTML report of a run folder."""

from __future__ import annotations

from .html import load_run, render_html, write_report

__all__ = ["load_run", "render_html", "write_report"]
