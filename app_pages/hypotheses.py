"""Hypotheses: sortable, filterable table with status badges and flags."""

import pandas as pd
import streamlit as st

from app_pages.components import METRIC_HELP
from app_pages.data import badge, current_run, json_file
from app_pages.feedback_box import feedback_box
from discovery.get.run import artifact_warnings, feature_chain
from discovery.io import layout

run = current_run()
if run is not None:
    st.title("Hypotheses")
    doc = json_file(run, layout.HYPOTHESES)
    if not doc:
        st.info("This run has no hypotheses yet (the 'hypotheses' stage of `discovery run`).")
    else:
        hyps = doc["hypotheses"]
        rows = [{
            "id": h["id"], "rank": h["rank"], "status": h["status"], "kind": h["kind"],
            "cell type": h["cell_type"], "direction": h["direction"],
            "top genes": ", ".join(g["symbol"] for g in h["genes"][:6]), "score": h["score"],
            "attribution": h["evidence"]["attribution"],
            # share of its attribution through batch / QC-explained features (mechanism honesty)
            "artifact share": h["evidence"].get("artifact_share"),
            "donor q": h["evidence"]["donor_level"]["q"],
            "replicated": h["evidence"]["replication"]["replicated"],
            "biomarker AUROC": h["evidence"]["replication"]["biomarker_auroc_test"],
            "flags": "; ".join(f"{f['kind']}: {f['by']}" for f in h["flags"]),
            "caveats": "; ".join(c["kind"] for c in h.get("caveats", [])),
            "plans": ", ".join(h.get("plans", [])),
        } for h in hyps]
        df = pd.DataFrame(rows)
        c = st.columns(3)
        status = c[0].multiselect("status", sorted(df["status"].unique()),
                                  default=sorted(df["status"].unique()))
        cts = c[1].multiselect("cell type", sorted(df["cell type"].unique()))
        min_score = c[2].slider("minimum score", 0.0, 1.0, 0.0, 0.05)
        view = df[df["status"].isin(status) & (df["score"] >= min_score)]
        if cts:
            view = view[view["cell type"].isin(cts)]
        n_flag = int((df["status"] == "flagged").sum())
        st.markdown(" ".join(f"{badge(s)} {int((df['status'] == s).sum())}"
                             for s in ("supported", "candidate", "flagged", "rejected")
                             if (df["status"] == s).any()))
        if n_flag:
            st.warning(f"{n_flag} hypotheses are flagged: a technical covariate explains their "
                       "signal better than the label. They are shortcuts, not findings.")
        num = st.column_config.NumberColumn
        st.dataframe(view, hide_index=True, column_config={
            "score": st.column_config.ProgressColumn(
                "score", min_value=0.0, max_value=1.0, format="%.2f",
                help="the ranking score (see 'How the score and the status are decided')"),
            "attribution": num(format="%.3f", help=METRIC_HELP["attribution"]),
            "artifact share": num(format="%.2f", help=METRIC_HELP["artifact share"]),
            "donor q": num(format="%.1e", help=METRIC_HELP["donor q"]),
            "biomarker AUROC": num(format="%.2f", help=METRIC_HELP["biomarker AUROC"])})
        with st.expander("How the score and the status are decided"):
            st.write(doc.get("score_formula", ""))
            for s, rule in doc.get("status_rules", {}).items():
                st.markdown(f"- {badge(s)} {rule}")
        ids = [h["id"] for h in hyps]
        wanted = st.query_params.get("hypothesis")  # a link from a plan
        pick = st.selectbox("Statement of", ids,
                            index=ids.index(wanted) if wanted in ids else 0)
        st.query_params["hypothesis"] = pick
        h = next(h for h in hyps if h["id"] == pick)
        st.markdown(f"{badge(h['status'])} {h['statement']}")
        for w in artifact_warnings(h):
            st.warning(w, icon=":material/warning:")
        feedback_box(run, "hypothesis", h["id"])
        links = st.columns(max(1, len(h.get("plans", [])) + 1))
        for col, pid in zip(links, h.get("plans", [])):
            col.page_link("app_pages/plan.py", label=f"Plan {pid}", icon=":material/route:",
                          query_params={"plan": pid})
        for r in feature_chain(h)[:6]:
            st.page_link("app_pages/features.py",
                         label=f"{r['feature']} · {r['status']} · {r['share']:.0%} of its "
                               "attribution", query_params={"feature": r["feature"]})
        for c in h.get("caveats", []):
            st.caption(f"caveat ({c['kind']}): {c['detail']}")
        if doc.get("model_findings"):
            for line in doc["model_findings"]:
                st.warning(line)
