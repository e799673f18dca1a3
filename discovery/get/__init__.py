"""``dc.get``: a run directory read back — its file names, ids and contents.

File names and ids are defined once in :mod:`discovery.io.layout` and re-exported here, so a
notebook writes ``dc.get.HYPOTHESES`` or ``dc.get.feature_id("pooled", 12)`` and never spells a
name itself.
"""

from discovery.get.results import attach_results, hypothesis_table
from discovery.get.run import (
    OpenRun,
    annotations,
    artifact_warnings,
    feature_chain,
    graph,
    graph_files,
    graph_index,
    open_run,
    read_json,
    require,
)
from discovery.io.layout import *  # noqa: F403 - the run directory's names, defined once
from discovery.io.layout import __all__ as _layout_names

__all__ = ["OpenRun", "annotations", "artifact_warnings", "attach_results", "hypothesis_table", "feature_chain", "graph",
           "graph_files", "graph_index", "open_run", "read_json", "require", *_layout_names]
