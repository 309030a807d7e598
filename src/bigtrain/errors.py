"""Errors a user can act on. Each one prints as a single readable line from the CLI (exit code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BigtrainError(Exception):
    """Base class for every error bigtrain raises about the user's input or files."""


class ConfigError(BigtrainError):
    """A recipe, override or argument is invalid."""


class DataError(BigtrainError):
    """A data file is missing or malformed, or data does not fit the model/task."""


class CheckpointError(BigtrainError):
    """A checkpoint or run folder is missing, corrupt, truncated or belongs to another run."""


class RunFinishedError(CheckpointError):
    """``--resume`` on a run that has already finished (nothing was changed)."""


class RunLockedError(CheckpointError):
    """Another process is using the run folder."""


class PeerError(BigtrainError):
    """Another process of a distributed run failed first; its own message says why."""


class TrainingError(BigtrainError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
