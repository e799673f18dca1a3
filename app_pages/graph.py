"""Graph: a cohort attribution graph with display thresholds, node search, details, downloads."""

import json

import networkx as nx
import streamlit as st

from app_pages.components import METRIC_HELP, graph_legend, graph_view, node_details
from app_pages.data import current_run, graph, json_file
from app_pages.feedback_box import feedback_box
from discovery.io import layout
from discovery.io.graph_files import to_cytoscape, to_node_link

run = current_run()
if run is not None:
    st.title("Attribution graph")
    index = json_file(run, layout.GRAPH_INDEX)
    if not index or not index.get("graphs"):
        st.info("This run has no graphs yet (the 'graphs' stage).")
    else:
        entries = {e["slug"]: e for e in index["graphs"]}
        slug = st.selectbox("Population", list(entries), format_func=lambda s: entries[s]["name"])
        g = graph(run, slug)
        if g is None:
            st.info("This graph's file is missing or not inside the run; rerun the 'graphs' "
                    "stage (`discovery run` on the same folder).")
            st.stop()
        e = entries[slug]
        c = st.columns(4)
        c[0].metric("cells / donors", f"{e['n_cells']:,} / {e['n_donors']}")
        c[1].metric("replacement", f"{e['replacement_score']:.3f}",
                    help=METRIC_HELP["replacement"])
        c[2].metric("completeness", f"{e['completeness_score']:.3f}",
                    help=METRIC_HELP["completeness"])
        c[3].metric("ablation Spearman", f"{e['validation']['spearman_model']:.3f}",
                    help=METRIC_HELP["ablation Spearman (model)"])
        c = st.columns(3)
        n_feat = c[0].slider("features shown (by influence)", 1, 60, 12)
        n_gene = c[1].slider("gene inputs per feature", 0, 10, 3)
        query = c[2].text_input("find a node (gene, feature id or label)")
        feats = sorted((n for n, d in g.nodes(data=True) if d["kind"] == "feature"),
                       key=lambda n: -g.nodes[n]["influence"])[:n_feat]
        keep = set(feats) | {n for n, d in g.nodes(data=True) if d["kind"] in ("output", "error")}
        for f in feats:
            ins = sorted((u for u, _ in g.in_edges(f) if g.nodes[u]["kind"] == "gene"),
                         key=lambda u: -abs(g.edges[u, f]["weight"]))
            keep |= set(ins[:n_gene])
        hits = set()
        if query:
            q = query.lower()
            hits = {n for n, d in g.nodes(data=True)
                    if q in n.lower() or q in str(d.get("label", "")).lower()}
            keep |= hits
            st.caption(f"{len(hits)} node(s) match: " + ", ".join(sorted(hits)[:10]))
        sub = g.subgraph(keep).copy()
        selected = graph_view(sub, highlight=hits, key=f"graph-{slug}")
        graph_legend(outline="matches your search" if hits else None)
        if selected:
            node_details(g, selected[0])
            if g.nodes[selected[0]].get("kind") == "feature":
                feedback_box(run, "feature", selected[0])
        st.subheader("Download")
        d = st.columns(4)
        d[0].download_button("node-link JSON", json.dumps(to_node_link(g)), f"{slug}.json")
        d[1].download_button("Cytoscape.js", json.dumps(to_cytoscape(g)), f"{slug}.cyjs")
        gml = layout.inside_run(run, layout.graph_file(slug, ".graphml"))
        if gml.is_file():
            d[2].download_button("GraphML", gml.read_bytes(), f"{slug}.graphml")
        d[3].download_button("GEXF", "\n".join(nx.generate_gexf(nx.DiGraph(
            (u, v, {"weight": w["weight"]}) for u, v, w in g.edges(data=True)))), f"{slug}.gexf")
