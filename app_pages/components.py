"""Shared widgets: the interactive (offline) attribution-graph view and node details."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pandas as pd
import streamlit as st

__all__ = ["graph_view", "node_details"]

_KIND_COLOUR = {"gene": "#457b9d", "feature": "#e9c46a", "error": "#adb5bd", "output": "#e76f51"}


def _stylesheet() -> list[dict[str, Any]]:
    return [
        {"selector": "node", "style": {"label": "data(short)", "font-size": "10px",
                                       "text-valign": "center", "text-halign": "right",
                                       "text-margin-x": 4,
                                       "background-color": "data(colour)",
                                       "width": "data(size)", "height": "data(size)"}},
        {"selector": "node.ref", "style": {"border-width": 3, "border-color": "#d62828"}},
        {"selector": "node:selected", "style": {"border-width": 4, "border-color": "#000"}},
        {"selector": "edge", "style": {"width": "data(width)", "line-color": "data(colour)",
                                       "target-arrow-color": "data(colour)",
                                       "target-arrow-shape": "triangle",
                                       "curve-style": "bezier", "opacity": 0.7}},
    ]


def graph_view(g: nx.DiGraph, *, highlight: set[str] | None = None, key: str,
               height: str = "520px") -> list[str]:
    """Render ``g`` with Cytoscape.js (bundled with st-cytoscape: no network); returns the ids
    of the selected nodes."""
    from st_cytoscape import cytoscape

    highlight = highlight or set()
    wmax = max((abs(d["weight"]) for _, _, d in g.edges(data=True)), default=1.0) or 1.0
    # left-to-right by layer (genes | features per SAE | error nodes with their layer | logit);
    # within a column, ordered by influence
    columns: dict[int, list[str]] = {}
    for n, d in g.nodes(data=True):
        columns.setdefault(int(d.get("layer", 0)), []).append(n)
    pos = {}
    for layer, nodes in columns.items():
        nodes.sort(key=lambda n: (g.nodes[n].get("kind") == "error",
                                  -abs(float(g.nodes[n].get("influence", 0.0)))))
        top = -(len(nodes) - 1) * 18
        for i, n in enumerate(nodes):
            pos[n] = {"x": 320 * layer, "y": top + 36 * i}
    elements = []
    for n, d in g.nodes(data=True):
        label = str(d.get("label", n))
        if d.get("kind") == "feature":
            label = f"{n.rsplit(':', 1)[-1]} · {label}"
        elements.append({"data": {
            "id": n, "short": label if len(label) <= 40 else label[:38] + "…",
            "colour": _KIND_COLOUR.get(d.get("kind"), "#999"),
            "size": 34 if d.get("kind") == "output" else 22 if d.get("kind") == "feature" else 16,
        }, "position": pos[n], "classes": "ref" if n in highlight else ""})
    for u, v, d in g.edges(data=True):
        w = float(d["weight"])
        elements.append({"data": {"id": f"{u}->{v}", "source": u, "target": v,
                                  "width": 0.5 + 5 * abs(w) / wmax,
                                  "colour": "#2a9d8f" if w > 0 else "#d62828"}})
    layout = {"name": "preset", "fit": True, "padding": 30, "animationDuration": 0}
    sel = cytoscape(elements, _stylesheet(), height=height, layout=layout,
                    selection_type="single", key=key)
    return list((sel or {}).get("nodes", []))


def node_details(g: nx.DiGraph, node: str) -> None:
    """Attributes and strongest incoming / outgoing edges of one node."""
    d = dict(g.nodes[node])
    st.markdown(f"**{node}** · {d.get('kind')} · {d.get('label', '')}")
    st.dataframe(pd.DataFrame([{k: v for k, v in d.items() if not isinstance(v, dict | list)}]),
                 hide_index=True)
    cols = st.columns(2)
    for col, title, edges in ((cols[0], "incoming", g.in_edges(node, data=True)),
                              (cols[1], "outgoing", g.out_edges(node, data=True))):
        rows = sorted(({"from": u, "to": v, "weight": e["weight"],
                        "95% CI": f"[{e.get('ci_low', float('nan')):.3g}, "
                                  f"{e.get('ci_high', float('nan')):.3g}]",
                        "donor sign agreement": e.get("donor_sign_agreement")}
                       for u, v, e in edges), key=lambda r: -abs(r["weight"]))[:15]
        col.caption(f"{title} edges (strongest {len(rows)})")
        col.dataframe(pd.DataFrame(rows), hide_index=True)
