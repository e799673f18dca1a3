"""``dc.pl``: every figure the report and the app show (matplotlib figures, headless)."""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> (module that defines it, its name there when it differs); loaded on first use
_LAZY: dict[str, tuple[str, str | None]] = {
    "donor_activation": ("discovery.pl.figures", None),
    "faithfulness": ("discovery.pl.figures", None),
    "graph_path": ("discovery.pl.figures", None),
    "subgraph_around": ("discovery.pl.figures", None),
    "umap_panels": ("discovery.pl.figures", None),
    "volcano": ("discovery.pl.figures", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Load the module that defines ``name`` on first use."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg) from None
    mod = importlib.import_module(module)
    value = mod if module.endswith(f".{name}") and attr is None else getattr(mod, attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
