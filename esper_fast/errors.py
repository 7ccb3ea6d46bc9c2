"""Exceptions raised by esper_fast (floor 1)."""

from __future__ import annotations

__all__ = ["InvalidActionMaskError", "InvalidStateMachineError", "BackendUnavailableError"]


class InvalidActionMaskError(RuntimeError):
    """A row of an action mask has no valid entry.

    The message always starts with ``"No valid actions available"`` (esper's wording) and names the
    first offending row indices.
    """


class InvalidStateMachineError(InvalidActionMaskError):
    """esper's name for an empty action mask (``esper.tamiyo.policy.action_masks``).

    Raised by :class:`esper_fast.FactoredPolicy`; it is an :class:`InvalidActionMaskError`, so either
    name catches it. When esper is importable, ``InvalidStateMachineError(...)`` builds an instance of
    a subclass that ALSO derives from esper's own ``InvalidStateMachineError``, so ``except`` /
    ``pytest.raises`` written against esper's class catch it too
    (:func:`esper_fast.integrations.esper.esper_error_class`).
    """

    def __new__(cls, *args: object, **kwargs: object):
        if cls is InvalidStateMachineError:
            from esper_fast.integrations.esper import esper_error_class

            cls = esper_error_class() or cls
        return super().__new__(cls, *args, **kwargs)


class BackendUnavailableError(ValueError):
    """An explicitly requested backend cannot run here (not built, no GPU, wrong device...)."""
