"""Features: where a feature fires (UMAP), its genes, enrichment, confounds, donors, stability."""

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app_pages.data import current_run, json_file, load_adata, table, umap
from app_pages.feedback_box import feedback_box
from discovery.io import layout
from discovery.io.contract import get_keys
from discovery.io.layout import sae_key
from discovery.tl.annotate import donor_means

#: most cells drawn in one UMAP panel (a fixed random subset beyond it: the browser stays fast)
MAX_POINTS = 20_000


def _umap_panels(run, adata, act: np.ndarray, fid: str) -> None:
    """Two UMAPs side by side: the cells coloured by cell type (each type's name at its centre)
    and by ``fid``'s activation (active cells drawn on top)."""
    emb = umap(run)
    if emb is None:
        st.info("No UMAP in this run's adata.h5ad (obsm['X_umap']).")
        return
    ct_key = get_keys(adata).cell_type_key
    df = pd.DataFrame({"UMAP1": emb[:, 0], "UMAP2": emb[:, 1], "activation": act,
                       "cell type": adata.obs[ct_key].astype(str).to_numpy()})
    if len(df) > MAX_POINTS:
        df = df.iloc[np.sort(np.random.default_rng(0).choice(len(df), MAX_POINTS,
                                                             replace=False))]
    centres = df.groupby("cell type", observed=True)[["UMAP1", "UMAP2"]].median().reset_index()
    base = alt.Chart(df).mark_circle(size=14, opacity=0.7).encode(
        x=alt.X("UMAP1:Q", axis=None), y=alt.Y("UMAP2:Q", axis=None))
    types = base.encode(color=alt.Color("cell type:N", legend=None,
                                        scale=alt.Scale(scheme="tableau20")),
                        tooltip=["cell type"])
    names = alt.Chart(centres).mark_text(fontWeight="bold", fontSize=13).encode(
        x="UMAP1:Q", y="UMAP2:Q", text="cell type:N")
    fired = alt.Chart(df.sort_values("activation")).mark_circle(size=14).encode(
        x=alt.X("UMAP1:Q", axis=None), y=alt.Y("UMAP2:Q", axis=None),
        color=alt.Color("activation:Q", scale=alt.Scale(scheme="viridis"),
                        title=f"{fid} activation"),
        tooltip=["cell type", alt.Tooltip("activation:Q", format=".3f")])
    left, right = st.columns(2)
    left.altair_chart((types + names).properties(height=380, title="cell types"),
                      width="stretch")
    right.altair_chart(fired.properties(height=380, title=f"where {fid} fires"),
                       width="stretch")
    st.caption(f"UMAP of {len(df):,} cells" + (f" (a fixed random {MAX_POINTS:,} of "
                                               f"{len(emb):,})" if len(emb) > MAX_POINTS
                                               else "") + ".")


def _donor_panel(adata, act: np.ndarray, fid: str, where: str) -> None:
    """Each donor's mean activation of ``fid`` in its ``where`` cells, by group, coloured by
    batch, held-out test donors as triangles; and the same numbers as a table."""
    st.subheader("Donors")
    per = donor_means(adata, act, cell_type=where).rename(columns={"value": "activation"})
    if per.empty:
        st.info(f"No donor has {where} cells.")
        return
    if "split" in per:
        per["donors"] = np.where(per["split"] == "test", "held-out test (replication)",
                                 "discovery")
    enc = {"x": alt.X("label:N", title=None),
           "y": alt.Y("activation:Q", title=f"{fid} mean activation in {where} cells"),
           "tooltip": [c for c in ("donor", "label", "batch", "split") if c in per]
           + [alt.Tooltip("activation:Q", format=".3f")]}
    if "batch" in per:
        enc["color"] = alt.Color("batch:N", scale=alt.Scale(scheme="dark2"))
    if "donors" in per:
        enc["shape"] = alt.Shape("donors:N", scale=alt.Scale(
            domain=["discovery", "held-out test (replication)"],
            range=["circle", "triangle-up"]))
    st.altair_chart(alt.Chart(per).mark_point(filled=True, size=90, opacity=0.85)
                    .encode(**enc).properties(height=320), width="stretch")
    st.caption(f"Each point is a donor: the mean activation of {fid} over its {where} cells"
               + (", coloured by batch" if "batch" in per else "")
               + ("; triangles are the held-out test donors" if "donors" in per else "")
               + ".")
    st.dataframe(per.drop(columns=["donors"], errors="ignore")
                 .sort_values(["label", "activation"]), hide_index=True,
                 column_config={"activation": st.column_config.NumberColumn(format="%.3f")})


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
        c = st.columns([2.2, 1, 1, 1, 1])
        c[0].metric("acts in", where, help=f"most active in {row['home_cell_type']}")
        c[1].metric("active in cells", f"{row['frac_active']:.1%}")
        c[2].metric("donor effect", "–" if pd.isna(row["donor_effect"]) else
                    f"{row['donor_effect']:+.2f}",
                    help="Case − control difference of the donors' mean activation in "
                         f"{where} cells ('–': too few donors with such cells in a group)")
        c[3].metric("donor q", "–" if pd.isna(row["donor_q"]) else f"{row['donor_q']:.1e}",
                    help="Benjamini–Hochberg q of that donor-level test over the features")
        c[4].metric("stability", "–" if pd.isna(row["stability"]) else f"{row['stability']:.2f}",
                    help="How reliably the feature is found again when the sparse autoencoder "
                         "is refitted with other seeds: its decoder direction's best-match "
                         "cosine, averaged over the seeds (0-1)")
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
        if key in adata.obsm:
            act = np.asarray(adata.obsm[key])[:, int(row["index"])]
            _umap_panels(run, adata, act, fid)
            _donor_panel(adata, act, fid, where)
        st.subheader("Genes")
        g = st.columns(2)
        g[0].dataframe(pd.DataFrame({"gene": row["signature"],
                                     "attribution": row["signature_weights"]}), hide_index=True,
                       column_config={"attribution": st.column_config.NumberColumn(
                           format="%.3f", help="the gene's attribution into the feature")})
        g[1].dataframe(pd.DataFrame(row["enrichment"]) if row["enrichment"] else pd.DataFrame(),
                       hide_index=True)
        st.subheader(f"Confound scores (partial R², within {where})")
        r2 = pd.DataFrame([{str(k)[3:]: row[k] for k in row.index if str(k).startswith("r2_")}])
        st.dataframe(r2, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="%.3f") for c in r2.columns})
        st.caption("The share of the feature's cell-level variation each covariate explains "
                   "beyond the others (0-1); a technical covariate above the label means the "
                   "feature follows it rather than the diagnosis.")
