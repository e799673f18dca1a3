"""Features: where a feature fires (UMAP), its genes, enrichment, confounds, donors, stability."""

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app_pages.data import current_run, json_file, load_adata, table, umap
from app_pages.feedback_box import feedback_box
from discovery.io import layout
from discovery.io.layout import sae_key
from discovery.tl.annotate import donor_means

run = current_run()
if run is not None:
    st.title("Features")
    ann = table(run, layout.ANNOTATIONS)
    quality = json_file(run, layout.SAE_QUALITY)
    if ann is None or quality is None:
        st.info("This run has no features yet (the 'features' stage).")
    else:
        ann = ann[ann["frac_active"] > 0]
        wanted = st.query_params.get("feature")  # a link from a plan or hypothesis
        only_sig = st.toggle("only features that differ between donors (q < 0.05)", value=True,
                             key="features_only_sig")
        view = ann[ann["donor_q"] < 0.05] if only_sig else ann
        if view.empty:
            view = ann
        options = view["feature"].tolist()
        if wanted in set(ann["feature"]) and wanted not in options:
            options.insert(0, wanted)  # a linked feature is shown whatever the filter
        fid = st.selectbox("Feature", options,
                           index=options.index(wanted) if wanted in options else 0,
                           format_func=lambda f: f"{f} · {ann.set_index('feature').loc[f, 'label']}")
        st.query_params["feature"] = fid
        row = ann.set_index("feature").loc[fid]
        # the cell type the statistics describe: where the feature acts (older runs: its home)
        where = row["cell_type"] if "cell_type" in row and pd.notna(row["cell_type"]) \
            else row["home_cell_type"]
        c = st.columns(4)
        c[0].metric("acts in", where, help=f"most active in {row['home_cell_type']}")
        c[1].metric("active in cells", f"{row['frac_active']:.1%}")
        c[2].metric("donor effect (q)", f"{row['donor_effect']:+.2f} ({row['donor_q']:.1e})")
        c[3].metric("stability", "–" if pd.isna(row["stability"]) else f"{row['stability']:.2f}")
        if row.get("confounded_by"):
            st.warning(f"Explained by {row['confounded_by']} better than by the label "
                       f"in {where} (cell level, strength {row['confound_strength']:.2f}).")
        feedback_box(run, "feature", fid)
        acts_in = row.get("acts_in") if "acts_in" in row else None
        if isinstance(acts_in, dict) and acts_in:
            st.caption("Share of the attribution to the case logit it carries, per cell type's "
                       "cohort graph: " + ", ".join(f"{k} {v:.1%}" for k, v in acts_in.items()))
        adata = load_adata(run)
        key = sae_key(quality['hook'])
        left, right = st.columns([3, 2])
        if key in adata.obsm:
            act = np.asarray(adata.obsm[key])[:, int(row["index"])]
            emb = umap(run)
            if emb is None:
                left.info("No UMAP in this run's adata.h5ad (obsm['X_umap']).")
            df = pd.DataFrame({"UMAP1": emb[:, 0], "UMAP2": emb[:, 1], "activation": act}
                              if emb is not None else {"UMAP1": [], "UMAP2": [], "activation": []})
            left.altair_chart(alt.Chart(df).mark_circle(size=6).encode(
                x="UMAP1:Q", y="UMAP2:Q",
                color=alt.Color("activation:Q", scale=alt.Scale(scheme="viridis"))
            ).properties(height=360), width="stretch")
            per = donor_means(adata, act, cell_type=where).rename(
                columns={"value": "activation"})
            right.altair_chart(alt.Chart(per).mark_circle(size=60).encode(
                x=alt.X("label:N", title=None), y=alt.Y("activation:Q",
                                                        title=f"mean in {where}"),
                color="label:N", tooltip=["donor", "activation"]).properties(height=360),
                width="stretch")
        st.subheader("Genes")
        g = st.columns(2)
        g[0].dataframe(pd.DataFrame({"gene": row["signature"],
                                     "attribution": row["signature_weights"]}), hide_index=True)
        g[1].dataframe(pd.DataFrame(row["enrichment"]) if row["enrichment"] else pd.DataFrame(),
                       hide_index=True)
        st.subheader(f"Confound scores (partial R², within {where})")
        st.dataframe(pd.DataFrame([{k: row[k] for k in row.index if str(k).startswith("r2_")}]),
                     hide_index=True)
