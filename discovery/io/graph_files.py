"""Graph files: node-link JSON (the run directory's own form), GraphML, GEXF, Cytoscape.js JSON.

Every format carries ``schema_version`` (graph attribute, or top-level key for the JSON forms).
GraphML and GEXF hold only scalar attributes: lists and mappings (graph attributes such as
``ablation_predictions``) are written as JSON strings, ``None`` values are left out, and non-finite
floats are kept as floats (both formats allow NaN). Cytoscape.js JSON is what ``cytoscape.js``
``cy.json()`` reads and Cytoscape Desktop imports: ``{"data": {...}, "elements": {"nodes":
[{"data": {"id", ...}}], "edges": [{"data": {"id", "source", "target", ...}}]}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import networkx as nx

from discovery.io.contract import InputError
from discovery.io.files import atomic_write, read_json
from discovery.io.layout import GRAPH_SCHEMA_VERSION

__all__ = ["AttributionGraph", "CYJS_SCHEMA", "FORMATS", "export_graph", "load_graph", "to_cytoscape",
           "to_node_link"]

#: format name -> file suffix
FORMATS = {"json": ".json", "graphml": ".graphml", "gexf": ".gexf", "cyjs": ".cyjs"}

#: JSON schema of the Cytoscape.js ``elements`` structure written by :func:`to_cytoscape`
CYJS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "elements"],
    "properties": {
        "data": {"type": "object", "required": ["schema_version"]},
        "elements": {
            "type": "object",
            "required": ["nodes", "edges"],
            "properties": {
                "nodes": {"type": "array", "items": {
                    "type": "object", "required": ["data"],
                    "properties": {"data": {
                        "type": "object", "required": ["id", "kind", "label"],
                        "properties": {"id": {"type": "string"},
                                       "kind": {"enum": ["gene", "feature", "error", "output"]},
                                       "label": {"type": "string"}}}}}},
                "edges": {"type": "array", "items": {
                    "type": "object", "required": ["data"],
                    "properties": {"data": {
                        "type": "object", "required": ["id", "source", "target", "weight"],
                        "properties": {"id": {"type": "string"}, "source": {"type": "string"},
                                       "target": {"type": "string"},
                                       "weight": {"type": "number"}}}}}},
            },
        },
    },
}


class AttributionGraph(nx.DiGraph):
    """A cohort (or cell) attribution graph: a ``networkx.DiGraph`` whose layout is fixed.

    Nodes, in this order (the row/column order of the adjacency the graph is built from):

    1. ``kind="gene"``: input genes, ``layer`` 0, id = gene symbol, ``activation`` = mean
       input expression;
    2. ``kind="feature"``: SAE features, ``layer`` = 1 + the SAE's position along the model,
       id ``hook:F<i>`` (:func:`discovery.io.layout.feature_id`), with ``hook``, ``feature``,
       ``activation``, ``frac_active``, ``bias``, ``value``;
    3. ``kind="error"``: one SAE error node per hook, id ``hook:error``;
    4. ``kind="output"``: the case logit, id ``output``.

    Every node has ``label``, ``layer``, ``activation`` and ``influence`` (on the logit).
    Edges point from source to target (gene -> feature -> logit) and carry ``weight`` (the
    signed mean direct effect; rows of the adjacency are targets, columns sources) with donor
    bootstrap ``weight_se``, ``ci_low``, ``ci_high`` and ``donor_sign_agreement``. Graph attributes: ``schema_version``, ``name``,
    ``n_donors``, ``hooks``, ``replacement_score``, ``completeness_score``,
    ``max_completeness_error``, thresholds, ``mean_logit`` and the predicted ablation effects.
    """

    KINDS = ("gene", "feature", "error", "output")

    def nodes_of_kind(self, kind: str) -> list[str]:
        """Node ids of one kind, in graph order."""
        if kind not in self.KINDS:
            msg = f"node kind must be one of {self.KINDS}, got {kind!r}"
            raise InputError(msg)
        return [n for n, k in self.nodes(data="kind") if k == kind]


def _json_value(v: Any) -> Any:
    """JSON-safe copy: numpy scalars become Python ones, NaN/inf become None (strict JSON has
    no NaN)."""
    if hasattr(v, "item") and not isinstance(v, dict | list | tuple):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def to_node_link(g: nx.DiGraph) -> dict[str, Any]:
    """Node-link JSON with a top-level ``schema_version``."""
    data = nx.node_link_data(g, edges="edges")
    data["schema_version"] = g.graph.get("schema_version", GRAPH_SCHEMA_VERSION)
    return _json_value(data)


def to_cytoscape(g: nx.DiGraph) -> dict[str, Any]:
    """Cytoscape.js JSON (see module docstring); edge ids are ``source->target``."""
    nodes = [{"data": {"id": n, **d}} for n, d in g.nodes(data=True)]
    edges = [{"data": {"id": f"{u}->{v}", "source": u, "target": v, **d}}
             for u, v, d in g.edges(data=True)]
    graph = dict(g.graph)
    graph.setdefault("schema_version", GRAPH_SCHEMA_VERSION)
    return _json_value({"data": graph, "directed": True, "multigraph": False,
                        "elements": {"nodes": nodes, "edges": edges}})


def _scalar_copy(g: nx.DiGraph) -> nx.DiGraph:
    """Copy whose attributes are all str/int/float/bool (GraphML and GEXF need that)."""

    def fix(d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if v is None:
                continue
            if isinstance(v, dict | list | tuple):
                v = json.dumps(_json_value(v))
            elif hasattr(v, "item"):  # numpy scalar
                v = v.item()
            out[k] = v
        return out

    h = nx.DiGraph()
    h.graph.update(fix(g.graph))
    h.graph.setdefault("schema_version", GRAPH_SCHEMA_VERSION)
    for n, d in g.nodes(data=True):
        h.add_node(n, **fix(d))
    for u, v, d in g.edges(data=True):
        h.add_edge(u, v, **fix(d))
    return h


def export_graph(g: nx.DiGraph, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``g`` to ``path`` in ``fmt`` (default: from the suffix); atomic (temp file + rename)."""
    path = Path(path)
    fmt = fmt or next((f for f, s in FORMATS.items() if path.suffix == s), None)
    if fmt not in FORMATS:
        msg = f"unknown graph format {fmt!r}; choose one of {', '.join(FORMATS)}"
        raise InputError(msg)
    if fmt == "json":
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(to_node_link(g), indent=1)))
    elif fmt == "cyjs":
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(to_cytoscape(g), indent=1)))
    elif fmt == "graphml":
        atomic_write(path, lambda p: nx.write_graphml(_scalar_copy(g), p))
    else:
        atomic_write(path, lambda p: nx.write_gexf(_scalar_copy(g), p))
    return path


def load_graph(path: str | Path) -> AttributionGraph:
    """Read a graph written by :func:`export_graph` (node-link JSON, GraphML, GEXF or cyjs)."""
    path = Path(path)
    if not path.is_file():
        msg = f"graph file not found: {path}"
        raise InputError(msg)
    if path.suffix == ".graphml":
        return AttributionGraph(nx.read_graphml(path))
    if path.suffix == ".gexf":
        return AttributionGraph(nx.read_gexf(path))
    data = read_json(path)
    if "elements" in data:
        g = AttributionGraph()
        g.graph.update(data.get("data", {}))
        for n in data["elements"]["nodes"]:
            d = dict(n["data"])
            g.add_node(d.pop("id"), **d)
        for e in data["elements"]["edges"]:
            d = dict(e["data"])
            d.pop("id", None)
            g.add_edge(d.pop("source"), d.pop("target"), **d)
        return g
    if "nodes" not in data:
        msg = f"{path} is neither node-link nor Cytoscape.js graph JSON"
        raise InputError(msg)
    data = {k: v for k, v in data.items() if k != "schema_version"}
    return AttributionGraph(nx.node_link_graph(data, edges="edges"))
