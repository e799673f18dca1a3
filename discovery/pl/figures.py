"""Figures of the report and the app, each a function that returns a matplotlib ``Figure``.

They read results (hypotheses, graph validations), not the model: a notebook, the report and the
app draw the same picture from the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

__all__ = ["donor_activation", "faithfulness", "graph_path", "subgraph_around", "umap_panels",
           "volcano"]

CASE_COLOR, CONTROL_COLOR = "#e76f51", "#457b9d"


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def donor_activation(hypotheses: Sequence[Any], *, n: int = 6) -> Any | None:
    """Donor-level activation of the top ``n`` hypotheses: one panel each, control vs case
    donors, discovery donors left of each group and held-out test donors right.

    Reads each hypothesis's ``donors`` records (:class:`discovery.tl.records.Hypothesis`
    objects or hypotheses.json records). Returns a matplotlib
    ``Figure``, or None when no hypothesis has donor records.
    """
    plt = _pyplot()
    records = [h.to_dict() if hasattr(h, "to_dict") else h for h in hypotheses]
    top = [h for h in records if h.get("donors")][:n]
    if not top:
        return None
    fig, axes = plt.subplots(1, len(top), figsize=(2.6 * len(top), 2.8), squeeze=False)
    for ax, h in zip(axes[0], top):
        d = pd.DataFrame(h["donors"])
        for j, (lab, grp) in enumerate(d.groupby("case")):
            color = CASE_COLOR if lab else CONTROL_COLOR
            x = j + (grp["split"] == "test").map({True: 0.15, False: -0.15})
            ax.scatter(x, grp["activation"], s=14, color=color, marker="o", alpha=0.8)
        ax.set_xticks([0, 1], ["control", "case"])
        ax.set_title(f"{h['id']} · {h['cell_type']}", fontsize=8)
        ax.set_ylabel("donor mean activation", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("Donor-level activation (left of each group: discovery donors; right: "
                 "held-out test donors)", fontsize=8)
    return fig


def faithfulness(validations: Mapping[str, Mapping[str, Any]]) -> Any | None:
    """Circuit faithfulness against the number of feature nodes kept, one curve per graph, with
    the 0.8 line (Marks et al. 2024).

    Reads each validation's ``circuit_curve`` (``graphs/<slug>.validation.json``). Returns a
    matplotlib ``Figure``, or None without validations.
    """
    if not validations:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, val in validations.items():
        curve = val.get("circuit_curve", [])
        ax.plot([c["n_features"] for c in curve], [c["faithfulness"] for c in curve],
                marker="o", ms=3, label=name)
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xscale("symlog")
    ax.set_xlabel("feature nodes in the circuit", fontsize=8)
    ax.set_ylabel("faithfulness", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    return fig


def umap_panels(coords: np.ndarray, obs: pd.DataFrame, columns: Sequence[str]) -> Any:
    """The cells' 2-D embedding (``obsm['X_umap']``), one panel per obs column in ``columns``
    (categorical: one colour per value, legend beside). Returns a matplotlib ``Figure``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns), 3.6), squeeze=False)
    order = np.random.default_rng(0).permutation(len(coords))  # no group drawn on top of all
    for ax, col in zip(axes[0], columns):
        values = obs[col].astype(str).to_numpy()
        cats = sorted(set(values))
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        colours = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
        ax.scatter(coords[order, 0], coords[order, 1], s=1.5, linewidths=0, alpha=0.7,
                   c=[colours[v] for v in values[order]], rasterized=True)
        for c in cats:
            ax.scatter([], [], s=12, color=colours[c], label=c)
        ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  markerscale=1.2)
        ax.set_title(col, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1", fontsize=7)
        ax.set_ylabel("UMAP 2", fontsize=7)
    fig.tight_layout()
    return fig


def volcano(tests: pd.DataFrame, *, highlight: Sequence[str] = (), title: str = "",
            q_line: float = 0.05) -> Any | None:
    """Donor-level volcano of one cell type: effect (case - control, log2 CPM of pseudobulk) vs
    -log10 p for every tested gene, ``highlight`` genes marked and named, the genes at q <
    ``q_line`` darker.

    Reads ``effect``, ``p``, ``q`` and ``gene`` columns (``donor_tests.csv`` rows of one cell
    type). Returns a matplotlib ``Figure``, or None without rows.
    """
    if tests.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    y = -np.log10(np.clip(tests["p"].to_numpy(float), 1e-300, 1.0))
    x = tests["effect"].to_numpy(float)
    sig = tests["q"].to_numpy(float) < q_line
    ax.scatter(x[~sig], y[~sig], s=4, color="#b8bfcc", linewidths=0, rasterized=True)
    ax.scatter(x[sig], y[sig], s=5, color="#6c757d", linewidths=0, rasterized=True,
               label=f"q < {q_line:g}")
    hl = tests["gene"].isin(list(highlight)).to_numpy()
    ax.scatter(x[hl], y[hl], s=14, color=CASE_COLOR, edgecolors="black", linewidths=0.3,
               label="hypothesis genes")
    for gx, gy, name in sorted(zip(x[hl], y[hl], tests["gene"].to_numpy()[hl]),
                               key=lambda t: -t[1])[:8]:
        ax.annotate(str(name), (gx, gy), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("donor-level effect (case - control)", fontsize=7)
    ax.set_ylabel("-log10 p (donor level)", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def subgraph_around(g: nx.DiGraph, nodes: Sequence[str], *,
                    genes_per_feature: int = 5) -> nx.DiGraph:
    """The referenced nodes, the logit, and each referenced feature's strongest gene inputs."""
    keep = {n for n in nodes if n in g}
    if "output" in g:
        keep.add("output")
    for n in list(keep):
        if g.nodes[n].get("kind") == "feature":
            ins = sorted(g.in_edges(n, data="weight"), key=lambda e: -abs(e[2]))
            keep |= {u for u, _, _ in ins[:genes_per_feature]}
    return g.subgraph(keep).copy()


def graph_path(g: nx.DiGraph, features: Sequence[str], *, title: str = "",
               genes_per_feature: int = 4) -> Any | None:
    """A small static picture of a hypothesis's graph path: its features' strongest gene inputs
    (left) -> the features (middle) -> the case logit (right); edge width by |weight|, red for
    positive (towards the case call) and blue for negative. Returns a matplotlib ``Figure``, or
    None when none of ``features`` is in ``g``."""
    sub = subgraph_around(g, [f for f in features if f in g], genes_per_feature=genes_per_feature)
    feats = [n for n in sub if sub.nodes[n].get("kind") == "feature"]
    if not feats:
        return None
    sub = sub.subgraph([n for n in sub if sub.nodes[n].get("kind") in ("gene", "feature")
                        or n == "output"]).copy()
    plt = _pyplot()
    columns = {"gene": [], "feature": [], "output": []}
    for n in sub:
        kind = "output" if n == "output" else sub.nodes[n].get("kind")
        columns[kind].append(n)
    pos: dict[str, tuple[float, float]] = {}
    for x, kind in enumerate(("gene", "feature", "output")):
        nodes = sorted(columns[kind], key=lambda n: (-sum(abs(w) for *_, w in
                                                          sub.edges(n, data="weight", default=0))
                                                     - sum(abs(w) for *_, w in
                                                           sub.in_edges(n, data="weight",
                                                                        default=0))))
        for i, n in enumerate(nodes):
            pos[n] = (float(x), -(i - (len(nodes) - 1) / 2))
    height = max(len(columns["gene"]), len(columns["feature"]), 2)
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * height + 1.0))
    wmax = max((abs(w) for *_, w in sub.edges(data="weight", default=0)), default=1.0) or 1.0
    for u, v, w in sub.edges(data="weight", default=0.0):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.plot([x0, x1], [y0, y1], color=CASE_COLOR if w > 0 else CONTROL_COLOR,
                lw=0.4 + 3.0 * abs(w) / wmax, alpha=0.75, zorder=1)
    for n, (x, y) in pos.items():
        label = ("case logit" if n == "output" else
                 sub.nodes[n].get("label", n) if sub.nodes[n].get("kind") == "gene"
                 else n.rsplit(":", 1)[-1])
        ax.scatter([x], [y], s=40, color="#14213d" if n in features or n == "output"
                   else "#8d99ae", zorder=2)
        ax.annotate(label, (x, y), fontsize=6, zorder=3, xytext=(0, 5),
                    textcoords="offset points", ha="center")
    ax.set_xticks([0, 1, 2], ["genes", "SAE features", "prediction"], fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(-0.4, 2.4)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
