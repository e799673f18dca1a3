"""Shared widgets: the interactive (offline) attribution-graph view and node details."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pandas as pd
import streamlit as st

__all__ = ["graph_legend", "graph_view", "node_details"]

_KIND_COLOUR = {"gene": "#457b9d", "feature": "#e9c46a", "error": "#adb5bd", "output": "#e76f51"}
#: edge colours: towards the case call (positive weight) and away from it
_EDGE_POS, _EDGE_NEG = "#2a9d8f", "#d62828"
#: outline of the nodes a plan's rationale refers to
_REF_OUTLINE = "#7b2cbf"


def _stylesheet() -> list[dict[str, Any]]:
    return [
        {"selector": "node", "style": {"label": "data(short)", "font-size": "10px",
                                       "text-valign": "center", "text-halign": "right",
                                       "text-margin-x": 4,
                                       "background-color": "data(colour)",
                                       "width": "data(size)", "height": "data(size)"}},
        {"selector": "node.ref", "style": {"border-width": 3, "border-color": _REF_OUTLINE}},
        {"selector": "node:selected", "style": {"border-width": 4, "border-color": "#000",
                                                "label": "data(full)", "font-size": "11px",
                                                "z-index": 9999}},
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
    imax = max((abs(float(d.get("influence", 0.0))) for _, d in g.nodes(data=True)
                if d.get("kind") != "output"), default=1.0) or 1.0
    for n, d in g.nodes(data=True):
        label = str(d.get("label", n))
        if d.get("kind") == "feature":
            label = f"{n.rsplit(':', 1)[-1]} · {label}"
        # node area by influence on the logit (features and genes), the logit fixed
        size = (34.0 if d.get("kind") == "output"
                else 12.0 + 26.0 * (abs(float(d.get("influence", 0.0))) / imax) ** 0.5)
        elements.append({"data": {
            "id": n, "short": label if len(label) <= 40 else label[:38] + "…", "full": label,
            "colour": _KIND_COLOUR.get(d.get("kind"), "#999"), "size": round(size, 1),
        }, "position": pos[n], "classes": "ref" if n in highlight else ""})
    for u, v, d in g.edges(data=True):
        w = float(d["weight"])
        elements.append({"data": {"id": f"{u}->{v}", "source": u, "target": v,
                                  "width": 0.5 + 5 * abs(w) / wmax,
                                  "colour": _EDGE_POS if w > 0 else _EDGE_NEG}})
    layout = {"name": "preset", "fit": True, "padding": 30, "animationDuration": 0}
    sel = cytoscape(elements, _stylesheet(), height=height, layout=layout,
                    selection_type="single", key=key)
    return list((sel or {}).get("nodes", []))


def graph_legend(*, outline: str | None = None) -> None:
    """What the graph's colours, sizes and outlines mean (under every graph view); ``outline``:
    what the outlined nodes are, when some are."""
    def dot(colour: str, border: str | None = None) -> str:
        edge = f"border:3px solid {border};" if border else ""
        return (f"<span style='display:inline-block;width:11px;height:11px;border-radius:50%;"
                f"background:{colour};{edge}vertical-align:middle'></span>")

    def line(colour: str) -> str:
        return (f"<span style='display:inline-block;width:22px;height:3px;background:{colour};"
                "vertical-align:middle'></span>")

    parts = [f"{dot(_KIND_COLOUR['gene'])} gene", f"{dot(_KIND_COLOUR['feature'])} SAE feature",
             f"{dot(_KIND_COLOUR['error'])} SAE error (what the features miss)",
             f"{dot(_KIND_COLOUR['output'])} case logit",
             f"{line(_EDGE_POS)} pushes towards the case call",
             f"{line(_EDGE_NEG)} pushes towards control"]
    if outline:
        parts.append(f"{dot('#ffffff', _REF_OUTLINE)} {outline}")
    st.markdown(" &nbsp; ".join(parts), unsafe_allow_html=True)
    st.caption("Node size: influence on the case logit (direct and through later features); "
               "edge width: |mean direct effect|. Columns, left to right: genes, features, the "
               "logit. Click a node for its full label, edges and 95% intervals.")


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
