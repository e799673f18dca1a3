"""The error both packages raise for bad user input (``models`` sits below ``discovery``, so the
class lives here and ``discovery`` re-exports it as ``discovery.InputError``)."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """The user's input breaks the contract; the message names the problem and the fix."""
