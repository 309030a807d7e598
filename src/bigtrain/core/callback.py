"""Callback: the one extension mechanism. Override only the hooks you need; the loop skips the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    def on_after_forward(self, state: TrainState) -> None: ...
    def on_after_backward(self, state: TrainState) -> None: ...
    def on_after_step(self, state: TrainState) -> None: ...
    def on_eval_start(self, state: TrainState) -> None: ...
    def on_eval_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
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
    """Dispatches events to the callbacks that override them (cheap callbacks cost nothing)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)
        self._bound = {
            event: [getattr(cb, event.hook) for cb in self.callbacks if overrides(cb, event)]
            for event in Event
        }

    def fire(self, event: Event, state: TrainState) -> None:
        for hook in self._bound[event]:
            hook(state)

    def has(self, event: Event) -> bool:
        return bool(self._bound[event])
