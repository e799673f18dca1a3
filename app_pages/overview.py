"""Overview: the findings first (the report's summary), then the cohort, the model's held-out
metrics, shortcut probe, SAEs, baselines, graphs."""

import streamlit as st

from app_pages.components import number_table
from app_pages.data import current_run, json_file, table
from discovery.io import layout
from pipelines.report import findings_summary, graph_rows, model_rows, probe_rows, sae_rows

#: batch-probe balanced accuracy from which the page says in words that the model encodes batch
BATCH_PROBE_WARN = 0.7

run = current_run()
if run is not None:
    st.title("Overview")
    manifest = json_file(run, layout.MANIFEST) or {}
    summary = json_file(run, layout.INPUT_SUMMARY) or {}
    st.caption(f"run {manifest.get('run_id')} · config {manifest.get('config_hash')} · "
               f"seed {manifest.get('seed')}")
    found = findings_summary(run)
    ch, cp = found["counts"]["hypotheses"], found["counts"]["plans"]
    with st.container(border=True):
        st.subheader("Summary")
        st.markdown(f"{ch['supported']} supported, {ch['candidate']} candidate and "
                    f"{ch['flagged']} flagged hypotheses; plans: {cp['recommended']} "
                    f"recommended, {cp['exploratory']} exploratory, {cp['needs more data']} "
                    "need more data.")
        st.markdown("**Findings**\n\n" + ("\n".join(f"- {x}" for x in found["hypotheses"])
                                          or "- no supported or candidate hypothesis"))
        st.markdown("**Plans to run first**\n\n" + ("\n".join(
            f"- {p['id']} [{p['tier']}] {p['title']} (for {p['hypothesis']})"
            for p in found["plans"]) or "- no recommended or exploratory plan"))
        for w in found["warnings"]:
            st.warning(w)
    keys = summary.get("keys", {})
    c = st.columns(4)
    c[0].metric("cells", f"{summary.get('n_cells', 0):,}")
    c[1].metric("donors", summary.get("n_donors"))
    c[2].metric("genes", f"{summary.get('n_genes', 0):,}")
    c[3].metric("case label", f"{keys.get('label_key')} = {keys.get('case')}")
    metrics = json_file(run, layout.METRICS)
    if metrics:
        st.subheader(f"Model ({metrics.get('kind')}) on held-out donors")
        number_table(model_rows(metrics))
        st.caption("Donor AUROC 95% interval: from resampling the test donors of each class; "
                   "an interval that includes 0.5 cannot tell the model from chance.")
        rows = probe_rows(metrics)
        if rows:
            st.markdown("**Shortcut probe**: a linear probe reads each covariate off the pooled "
                        "representation, within each label (batch: balanced accuracy, chance 0.5).")
            number_table(rows)
            batch = next((r for r in rows if r["covariate"] == "batch"), None)
            scores = [v for v in (batch or {}).values() if isinstance(v, float) and v == v]
            if batch and scores and max(scores) >= BATCH_PROBE_WARN:
                st.warning(f"The model encodes batch: a linear probe reads the batch off its "
                           f"representation with balanced accuracy {max(scores):.2f} within one "
                           "label (chance 0.50). Predictions may lean on batch; the Hypotheses "
                           "page flags findings that batch explains better than the label.")
    quality = json_file(run, layout.SAE_QUALITY)
    if quality:
        st.subheader(f"Sparse autoencoders at `{quality['hook']}`")
        number_table(sae_rows(quality))
        stab = quality.get("median_stability")
        st.caption(f"median stability across seeds (decoder cosine of matched features) "
                   f"{'–' if stab is None else f'{stab:.2f}'}; "
                   f"{quality['n_donor_q05']} features differ between donors (q < 0.05); "
                   f"{quality['n_confounded']} flagged as confounded")
    yard = table(run, layout.YARDSTICK)
    if yard is not None:
        st.subheader("Baselines against the planted truth")
        number_table(yard)
    index = json_file(run, layout.GRAPH_INDEX)
    if index and index.get("graphs"):
        st.subheader("Attribution graphs")
        number_table(graph_rows(index))
