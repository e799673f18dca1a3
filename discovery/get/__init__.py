"""``dc.get``: a run directory read back — its file names, ids and contents.

File names and ids are defined once in :mod:`discovery.io.layout` and re-exported here, so a
notebook writes ``dc.get.HYPOTHESES`` or ``dc.get.feature_id("pooled", 12)`` and never spells a
name itself.
"""

from discovery.io.layout import *  # noqa: F403 - the run directory's names, defined once
from discovery.io.layout import __all__ as _layout_names
from discovery.io.lazy import attach

#: public name -> (module that defines it, its name there when it differs); loaded on first use
_LAZY: dict[str, tuple[str, str | None]] = {
    "attach_results": ("discovery.get.results", None),
    "hypothesis_table": ("discovery.get.results", None),
    "OpenRun": ("discovery.get.run", None),
    "annotations": ("discovery.get.run", None),
    "artifact_warnings": ("discovery.get.run", None),
    "feature_chain": ("discovery.get.run", None),
    "graph": ("discovery.get.run", None),
    "graph_files": ("discovery.get.run", None),
    "graph_index": ("discovery.get.run", None),
    "open_run": ("discovery.get.run", None),
    "read_json": ("discovery.get.run", None),
    "require": ("discovery.get.run", None),
}

__all__ = [*sorted(_LAZY), *_layout_names]


__getattr__, __dir__ = attach(__name__, _LAZY)
