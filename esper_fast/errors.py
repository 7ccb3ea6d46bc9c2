"""Exceptions raised by esper_fast (floor 1: imports nothing from esper_fast)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

__all__ = [
    "InvalidActionMaskError",
    "InvalidStateMachineError",
    "BackendUnavailableError",
    "esper_error_class",
    "KASMINA_HINT",
    "no_valid_actions_message",
    "nonfinite_logits_message",
]

logger = logging.getLogger(__name__)

# esper's module that defines its InvalidStateMachineError (esper-lite, 0872525b and HEAD).
ESPER_MASKS_MODULE = "esper.tamiyo.policy.action_masks"


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
    (:func:`esper_error_class`).
    """

    def __new__(cls, *args: object, **kwargs: object):
        if cls is InvalidStateMachineError:
            cls = esper_error_class() or cls
        return super().__new__(cls, *args, **kwargs)


_COMBINED_ERRORS: dict[type, type] = {}


def esper_error_class() -> type | None:
    """A subclass of both esper_fast's and esper's ``InvalidStateMachineError``; None without esper.

    Uses esper's ``esper.tamiyo.policy.action_masks`` if it is already imported, else imports it if
    ``esper`` can be found; any failure to import means "no esper" (the plain esper_fast class is used).
    """
    mod = sys.modules.get(ESPER_MASKS_MODULE)
    if mod is None:
        try:
            if importlib.util.find_spec("esper") is None:
                return None
            mod = importlib.import_module(ESPER_MASKS_MODULE)
        except Exception as exc:  # noqa: BLE001 - an esper that cannot import is no esper
            logger.debug("esper not usable for its exception class: %s", exc)
            return None
    base = getattr(mod, "InvalidStateMachineError", None)
    if not (isinstance(base, type) and issubclass(base, BaseException)):
        return None
    combined = _COMBINED_ERRORS.get(base)
    if combined is None:
        combined = type(
            "InvalidStateMachineError",
            (InvalidStateMachineError, base),
            {
                "__module__": __name__,
                "__doc__": "esper_fast's InvalidStateMachineError that is also esper's "
                f"{base.__module__}.InvalidStateMachineError (same message).",
                # pickles as esper_fast's class, which rebuilds this combined class where esper is importable
                "__reduce__": lambda self: (InvalidStateMachineError, self.args),
            },
        )
        _COMBINED_ERRORS[base] = combined
    return combined


class BackendUnavailableError(ValueError):
    """An explicitly requested backend cannot run here (not built, no GPU, wrong device...)."""


# ---- the one set of validation messages (every validator words its errors with these) ---------------
KASMINA_HINT = "This indicates a bug in the Kasmina state machine."  # esper's hint, on the policy paths


def no_valid_actions_message(
    head: str | None, rows: list[int], count: int, *, where: str = "", cause: str = "", hint: str = ""
) -> str:
    """``No valid [op ]actions available{where}[ for head 'h'] in {count} row(s), first rows [..][ cause].[ hint]``.

    esper's prefixes: ``"No valid actions available"``, and ``"No valid op actions available in forward()"``
    for the op head with ``where=" in forward()"``. ``head`` None: a single-head call (``select_op``);
    ``rows``: the first bad (flattened) row indices; ``cause``: why the head is empty (e.g. the op-dependent
    rules), ``hint``: what it indicates.
    """
    op = "op " if head == "op" and where else ""
    who = "" if head is None else f" for head {head!r}"
    msg = f"No valid {op}actions available{where}{who} in {count} row(s), first rows {rows}"
    return msg + (f" {cause}" if cause else "") + "." + (f" {hint}" if hint else "")


def nonfinite_logits_message(
    head: str | None, rows: list[int], count: int, *, valid_only: bool = True, hint: str = ""
) -> str:
    """``logits['h'] contain inf/nan[ at valid entries] in {count} row(s), first rows [..].[ hint]``."""
    name = "logits" if head is None else f"logits[{head!r}]"
    at = " at valid entries" if valid_only else ""
    return f"{name} contain inf/nan{at} in {count} row(s), first rows {rows}." + (f" {hint}" if hint else "")
