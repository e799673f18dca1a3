"""Plan — why: the rationale chain of one plan, its graph path, and the donors behind it."""

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app_pages.components import graph_legend, graph_view, node_details
from app_pages.data import badge, current_run, graph, json_file, table
from app_pages.feedback_box import feedback_box, feedback_notes
from discovery.get.run import artifact_warnings, feature_chain
from discovery.io import layout
from discovery.pl.figures import subgraph_around

run = current_run()
if run is not None:
    st.title("Plan — why was it proposed?")
    plans_doc = json_file(run, layout.PLANS)
    hyps_doc = json_file(run, layout.HYPOTHESES)
    if not plans_doc or not plans_doc["plans"]:
        st.info("This run has no plans yet.")
    else:
        plans = plans_doc["plans"]
        ids = [p["id"] for p in plans]
        wanted = st.query_params.get("plan")
        pid = st.selectbox("Plan", ids, index=ids.index(wanted) if wanted in ids else 0,
                           format_func=lambda i: next(
                               f"{i} · [{p.get('tier', '')}] {p['title']}" for p in plans
                               if p["id"] == i))
        st.query_params["plan"] = pid
        p = next(p for p in plans if p["id"] == pid)
        h = next(h for h in hyps_doc["hypotheses"] if h["id"] == p["hypothesis"])
        st.subheader(p["title"])
        # what the plan rests on, before anything else: a technical reason is not a finding
        for w in artifact_warnings(h):
            st.warning(w, icon=":material/warning:")
        st.markdown(f"for **{h['id']}** {badge(h['status'])} · {h['kind']} · priority "
                    f"{p['priority']:.3f} · {p['modality']}")
        st.page_link("app_pages/hypotheses.py", label=f"Hypothesis {h['id']}: all its evidence",
                     icon=":material/lightbulb:", query_params={"hypothesis": h["id"]})
        st.markdown(f"> {h['statement']}")
        feedback_box(run, "plan", pid)
        basis = p.get("tier_basis") or {}
        tier = p.get("tier", "")
        if tier:
            need = (basis.get("donors_needed") or {})
            text = (f"**Tier: {tier}.** Evidence beyond the model: "
                    f"{'; '.join(basis.get('evidence', [])) or 'none'}. Missing: "
                    f"{'; '.join(basis.get('missing', [])) or 'nothing'}.")
            if need.get("per_group"):
                text += (f" About {need['per_group']} donors per group would detect the observed "
                         f"donor-level effect (d = {need['cohens_d']}, 80% power).")
            (st.success if tier == "recommended" else st.info if tier == "exploratory"
             else st.warning)(text)
        c = st.columns(2)
        c[0].markdown(f"**Design.** {p['design']}")
        c[0].markdown(f"**Expected outcome.** {p['expected_outcome']}")
        c[0].markdown(f"**Readout.** {p.get('readout', '–')}")
        c[1].markdown(f"**Falsified if.** {p['falsified_if']}")
        c[1].markdown("**Controls.**\n" + "\n".join(f"- {x}" for x in p["controls"]))
        c[1].markdown("**Prerequisites.**\n"
                      + ("\n".join(f"- {x}" for x in p.get("prerequisites", [])) or "–"))
        also = p.get("also_tests", [])
        if also:
            st.caption(f"The same experiment also tests {', '.join(also)} (same assay and "
                       "genes): one plan, not several.")
        st.caption(f"Method source: {p.get('source', '–')}")
        st.subheader("Features behind it")
        chain = feature_chain(h, table(run, layout.ANNOTATIONS))
        if not chain:
            st.caption("No feature roles are recorded for this hypothesis (a donor-level "
                       "finding without the model, or a run made before roles were recorded).")
        for r in chain:
            c = st.columns([2, 5])
            c[0].page_link("app_pages/features.py",
                           label=f"{r['feature']} · {r['share']:.0%}"
                                 + (" · leading" if r["leading"] else ""),
                           icon=(":material/check_circle:" if r["status"] == "clean"
                                 else ":material/warning:"),
                           query_params={"feature": r["feature"]})
            r2 = ", ".join(f"{k[3:]} {v:.2f}" for k, v in r.items()
                           if k.startswith("r2 ") and k != "r2 label" and v is not None)
            label_r2 = r.get("r2 label")
            c[1].markdown(
                f"**{r['status']}** · acts in {r.get('acts in') or '–'} · partial R²: label "
                f"{'–' if label_r2 is None else f'{label_r2:.2f}'} vs {r2 or '–'} · top genes "
                f"{', '.join(r.get('top genes', [])) or '–'}")
        feedback_notes(run, [("hypothesis", h["id"])]
                       + [("feature", r["feature"]) for r in chain])
        st.subheader("Rationale chain")
        for i, step in enumerate(p["rationale"], 1):
            st.markdown(f"**{i}. {step['step']}** — {step['claim']}")
            if step["numbers"]:
                with st.expander("numbers and refs", expanded=False):
                    st.dataframe(pd.DataFrame([{"quantity": k, "value": v}
                                               for k, v in step["numbers"].items()]),
                                 hide_index=True)
                    st.caption("graph nodes: " + (", ".join(step["refs"]["nodes"]) or "–"))
        st.subheader("Graph path")
        g = graph(run, h["population_graph"])
        if g is None:
            st.info("The hypothesis's cohort graph is not in this run.")
        else:
            refs = sorted({n for s in p["rationale"] for n in s["refs"]["nodes"]})
            sub = subgraph_around(g, refs)
            st.caption(f"{g.graph.get('name')}: the rationale's nodes (purple outline), the "
                       "case logit, and each feature's strongest gene inputs; click a node.")
            selected = graph_view(sub, highlight=set(refs), key=f"why-{pid}", height="460px")
            graph_legend(outline="named in the plan's rationale")
            if selected:
                node_details(g, selected[0])
        st.subheader("Donors behind the claim")
        donors = pd.DataFrame(h.get("donors", []))
        if not donors.empty:
            donors["group"] = donors["case"].map({True: "case", False: "control"})
            donors["donors"] = donors["split"].map(
                lambda s: "held-out test (replication)" if s == "test" else "discovery")
            # circles cannot take a shape encoding (Vega drops it): filled points can
            chart = alt.Chart(donors).mark_point(filled=True, size=90, opacity=0.85).encode(
                x=alt.X("group:N", title=None),
                y=alt.Y("activation:Q", title=f"{h['id']} activation (donor mean, "
                                              f"{h['cell_type']} cells)"),
                color=alt.Color("batch:N", scale=alt.Scale(scheme="dark2")),
                shape=alt.Shape("donors:N", scale=alt.Scale(
                    domain=["discovery", "held-out test (replication)"],
                    range=["circle", "triangle-up"])),
                tooltip=["donor", "split", "batch", "activation", "biomarker"],
            ).properties(height=300)
            st.altair_chart(chart, width="stretch")
            st.caption(f"Each point is a donor: the mean activation of {h['id']}'s features over "
                       f"its {h['cell_type']} cells (pseudobulk), coloured by batch; triangles "
                       "are the held-out test donors, the replication set.")
        tests = table(run, layout.DONOR_TESTS)
        if tests is not None:
            tests = tests[tests["cell_type"] == h["cell_type"]].copy()
        if tests is not None and not tests.empty:
            st.subheader(f"Every gene in {h['cell_type']}, donor level")
            mine = [g["symbol"] for g in h["genes"][:10]]
            tests["-log10 p"] = -np.log10(tests["p"].clip(lower=1e-300))
            tests["gene set"] = np.where(tests["gene"].isin(mine), f"{h['id']}'s top genes",
                                         np.where(tests["q"] < 0.05, "q < 0.05", "other"))
            volcano = alt.Chart(tests).mark_circle(opacity=0.8).encode(
                x=alt.X("effect:Q", title="donor-level effect (case − control, log2 CPM)"),
                y=alt.Y("-log10 p:Q", title="−log10 p (donor level)"),
                color=alt.Color("gene set:N", scale=alt.Scale(
                    domain=[f"{h['id']}'s top genes", "q < 0.05", "other"],
                    range=["#e76f51", "#6c757d", "#ced4da"])),
                size=alt.condition(alt.datum["gene set"] == f"{h['id']}'s top genes",
                                   alt.value(70), alt.value(12)),
                tooltip=["gene", alt.Tooltip("effect:Q", format=".2f"),
                         alt.Tooltip("p:Q", format=".2e"), alt.Tooltip("q:Q", format=".2e")],
            ).properties(height=300)
            st.altair_chart(volcano, width="stretch")
            st.caption("Each point is a gene: its pseudobulk case-vs-control test over the "
                       f"donors' {h['cell_type']} cells (the donor-level evidence behind "
                       f"{h['id']}); its top genes in orange.")
