"""Callback: the one extension mechanism. Override only the hooks you need; the loop skips the rest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bigtrain.core.events import Event

if TYPE_CHECKING:
    from bigtrain.core.state import TrainState


class Callback:
    """Base class: every ``on_<event>(state)`` hook is a no-op.

    A callback that keeps state across a resume implements ``state_dict``/``load_state_dict``
    (JSON-serialisable values only: checkpoints never unpickle).
    """

    def on_setup(self, state: TrainState) -> None: ...
    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_start(self, state: TrainState) -> None: ...
    def on_micro_batch_end(self, state: TrainState) -> None: ...
    def on_after_backward(self, state: TrainState) -> None: ...
    def on_after_step(self, state: TrainState) -> None: ...
    def on_eval_start(self, state: TrainState) -> None: ...
    def on_eval_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_checkpoint(self, state: TrainState) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def overrides(callback: Callback, event: Event) -> bool:
    """True when ``callback`` overrides the hook for ``event`` (so the loop must call it)."""
    hook = event.hook
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList:
    """Dispatches events to the callbacks that override them (cheap callbacks cost nothing).

    Callbacks are named (a mapping's keys, or the class name for a sequence, numbered when
    repeated): checkpoints store each callback's state under its name, so a resumed run may
    add or drop a callback (a progress bar under ``--quiet``) without losing the others' state.
    """

    def __init__(self, callbacks: Mapping[str, Callback] | Sequence[Callback]) -> None:
        if isinstance(callbacks, Mapping):
            self.named = dict(callbacks)
        else:
            self.named = {}
            for cb in callbacks:
                base = type(cb).__name__
                name, i = base, 1
                while name in self.named:
                    i += 1
                    name = f"{base}{i}"
                self.named[name] = cb
        self.callbacks = list(self.named.values())
        self._bound = {
            event: [getattr(cb, event.hook) for cb in self.callbacks if overrides(cb, event)]
            for event in Event
        }

    def fire(self, event: Event, state: TrainState) -> None:
        for hook in self._bound[event]:
            hook(state)

    def has(self, event: Event) -> bool:
        return bool(self._bound[event])

    def state_dict(self) -> dict[str, Any]:
        return {name: cb.state_dict() for name, cb in self.named.items()}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Restore each callback saved under its name; state of absent callbacks is ignored."""
        for name, cb in self.named.items():
            if name in states:
                cb.load_state_dict(states[name])


@runtime_checkable
class MetricsSink(Protocol):
    """A callback that writes metric records (the run's MetricsLogger). A feature that computes
    metrics on its own schedule (the privacy accountant's epsilon) hands them to it."""

    def log_metrics(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
