"""``dc.pl``: every figure the report and the app show (matplotlib figures, headless)."""

from __future__ import annotations

from discovery.io.lazy import attach

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


__getattr__, __dir__ = attach(__name__, _LAZY)
