"""The one check every ``from_dict`` makes: no setting the dataclass does not know."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_known"]


def check_known(d: Mapping[str, Any], allowed: Iterable[str], what: str, *,
                error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the unknown keys of ``d`` and the known ones."""
    allowed = set(allowed)
    unknown = set(d) - allowed
    if unknown:
        msg = f"unknown {what} {sorted(unknown)}; known: {sorted(allowed)}"
        raise error(msg)
