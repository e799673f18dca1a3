"""Shared widgets: the interactive (offline) attribution-graph view and node details."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pandas as pd
import streamlit as st

__all__ = ["METRIC_HELP", "graph_legend", "graph_view", "node_details", "number_table"]

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


#: one line of meaning per metric the app shows (hover help on the column header)
METRIC_HELP = {
    "cell AUROC": "chance that a random case cell scores above a random control cell "
                  "(0.5 = chance, 1 = perfect)",
    "donor AUROC": "the same over donors (each donor's mean case probability): the number that "
                   "counts, since cells of one donor are not independent",
    "donor AUROC 95% interval": "from resampling the test donors of each class; an interval "
                                "that includes 0.5 cannot tell the model from chance",
    "accuracy": "share of cells called correctly at probability 0.5",
    "ECE": "expected calibration error: mean gap between predicted probability and observed "
           "frequency (0 = calibrated)",
    "case": "probe score within case cells (batch: balanced accuracy, chance 0.5; numeric "
            "covariates: R²)",
    "control": "the same within control cells",
    "explained variance": "share of the activations' variance the SAE reconstructs",
    "L0": "mean number of SAE features active per cell",
    "dead": "share of features that never fire",
    "agreement (spliced)": "share of cells whose predicted class is unchanged when the SAE's "
                           "reconstruction replaces the model's activations",
    "donor AUROC (spliced)": "test-donor AUROC of the model with the reconstruction spliced in",
    "replacement": "share of the influence on the logit that flows through genes and features "
                   "rather than the SAE's error nodes (1 = fully explained)",
    "completeness": "share of each node's inputs explained by non-error nodes, influence-"
                    "weighted (circuit-tracer's definition)",
    "ablation Spearman (model)": "rank agreement between the graph's predicted and the model's "
                                 "measured effects of ablating each feature",
    "features for faithfulness 0.8": "fewest features whose circuit reproduces 80% of the "
                                     "logit change",
    "precision_at_k": "share of the top 10 genes that belong to the planted program",
    "auprc": "area under the precision-recall curve of the program's genes",
    "artifact_fd": "planted artifact genes among the top 20 (false discoveries)",
    "weight": "mean direct effect of the source on the target over the cells (logit units)",
    "95% CI": "95% interval of the edge's weight from resampling donors",
    "donor sign agreement": "share of donors in whom the edge has the same sign as the mean",
    "influence": "the node's total effect on the case logit, direct and through later nodes",
    "activation": "mean activation over the graph's cells",
    "artifact share": "share of the hypothesis's attribution through features that a batch or "
                      "QC covariate explains better than the label (0-1)",
    "biomarker AUROC": "AUROC of the hypothesis's score between the held-out test donors' "
                       "groups (replication; 0.5 = chance)",
    "donor q": "Benjamini–Hochberg q of the donor-level (pseudobulk) test",
    "attribution": "share of its cohort graph's attribution to the case logit that flows "
                   "through the hypothesis's features",
}


def number_table(rows: list[dict[str, Any]] | pd.DataFrame, *, digits: int = 2) -> None:
    """A table of numbers a reader can take in: fixed decimals, integers as integers, '–' for
    missing values, and each known metric's meaning as hover help on its header."""
    df = pd.DataFrame(rows).copy()
    config: dict[str, Any] = {}
    for col in df.columns:
        values = pd.to_numeric(df[col], errors="coerce")
        numeric = df[col].map(lambda v: v is None or isinstance(v, int | float)).all() \
            and values.notna().any() and not pd.api.types.is_bool_dtype(df[col])
        if numeric and values.notna().all():
            whole = (values % 1 == 0).all()
            df[col] = values
            config[col] = st.column_config.NumberColumn(
                col, format="%d" if whole else f"%.{digits}f", help=METRIC_HELP.get(col))
        elif numeric:  # a gap would show as "None": text, '–' where missing
            fmt = "{:.0f}" if (values.dropna() % 1 == 0).all() else f"{{:.{digits}f}}"
            df[col] = values.map(lambda v, fmt=fmt: "–" if v != v else fmt.format(v))
            config[col] = st.column_config.Column(col, help=METRIC_HELP.get(col))
        else:
            df[col] = df[col].map(lambda v: "–" if v is None or (isinstance(v, float) and v != v)
                                  else v)
            if col in METRIC_HELP:
                config[col] = st.column_config.Column(col, help=METRIC_HELP[col])
    st.dataframe(df, hide_index=True, column_config=config)


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
    number_table([{k: v for k, v in d.items() if not isinstance(v, dict | list)}], digits=3)
    cols = st.columns(2)
    for col, title, edges in ((cols[0], "incoming", g.in_edges(node, data=True)),
                              (cols[1], "outgoing", g.out_edges(node, data=True))):
        rows = sorted(({"from": u, "to": v, "weight": e["weight"],
                        "95% CI": _interval(e.get("ci_low"), e.get("ci_high")),
                        "donor sign agreement": e.get("donor_sign_agreement")}
                       for u, v, e in edges), key=lambda r: -abs(r["weight"]))[:15]
        with col:
            st.caption(f"{title} edges (strongest {len(rows)})")
            if rows:
                number_table(rows, digits=3)


def _interval(lo: Any, hi: Any) -> str:
    """'[lo, hi]' with 3 significant digits; '–' when the interval was not computed."""
    if lo is None or hi is None or lo != lo or hi != hi:
        return "–"
    return f"[{lo:.3g}, {hi:.3g}]"
