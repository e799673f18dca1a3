"""The output AnnData is a scanpy object: results live in its keys, and scanpy's own calls work
on it as written (issue: results back in AnnData, environment fixed, not worked around)."""

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from discovery.io import layout
from discovery.io.contract import get_keys

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def out(tiny_run):
    return sc.read_h5ad(tiny_run / layout.ADATA)


def test_rank_genes_groups_hold_each_baseline_in_scanpys_structure(tiny_run, out):
    rankings = pd.read_csv(tiny_run / layout.RANKINGS)
    keys = get_keys(out)
    for method, r in rankings.groupby("method"):
        key = f"rank_genes_groups_{method}"
        assert out.uns[key]["params"]["groupby"] == keys.cell_type_key
        for ct, rc in r[r["direction"] == "up"].groupby("cell_type"):
            df = sc.get.rank_genes_groups_df(out, ct, key=key)
            rc = rc.sort_values("rank")
            assert df["names"].tolist() == rc["gene"].tolist()
            np.testing.assert_allclose(df["scores"], rc["score"], rtol=1e-5)
            if method != "logreg_l1":
                np.testing.assert_allclose(df["pvals_adj"], rc["qval"], rtol=1e-6)
                # scanpy's log fold change: its sign follows the case - control difference
                top, bottom = df.iloc[0], df.iloc[-1]
                assert top["logfoldchanges"] > 0 > bottom["logfoldchanges"]


def test_feature_table_signatures_and_hypothesis_scores_are_in_the_anndata(tiny_run, out):
    ann = json.loads((tiny_run / layout.ANNOTATIONS).read_text())
    table = out.uns["discovery"]["features"]
    assert table["feature"].tolist() == [a["feature"] for a in ann]
    assert table["label"].tolist() == [a["label"] for a in ann]
    assert table["signature"].iloc[0] == "; ".join(ann[0]["signature"])
    # the gene signatures: (genes, features), each feature's top signature gene is its
    # largest loading
    sig = out.varm["X_sae_pooled_signature"]
    assert sig.shape == (out.n_vars, len(ann))
    for a in ann[:20]:
        if a["frac_active"] > 0:
            col = sig[:, a["index"]]
            assert out.var_names[int(np.argmax(col))] == a["signature"][0]
    hyps = json.loads((tiny_run / layout.HYPOTHESES).read_text())["hypotheses"]
    assert out.uns["discovery"]["hypotheses"]["id"].tolist() == [h["id"] for h in hyps]
    h = next(h for h in hyps if h.get("features"))
    score = out.obs[f"discovery_{h['id']}"].to_numpy()
    idx = [layout.feature_index(f) for f in h["features"]]
    np.testing.assert_allclose(score, out.obsm["X_sae_pooled"][:, idx].sum(1), rtol=1e-5)
    # its donor means over the hypothesis's cell type are the donor values it was tested on
    keys = get_keys(out)
    in_type = out.obs[keys.cell_type_key].astype(str) == h["cell_type"]
    means = (out.obs.loc[in_type].groupby(keys.donor_key, observed=True)
             [f"discovery_{h['id']}"].mean())
    tested = {d["donor"]: d["activation"] for d in h["donors"]}
    assert tested
    for donor, value in tested.items():
        assert means[donor] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_scanpy_neighbours_umap_and_plots_work_on_the_output(out):
    adata = out.copy()
    # pynndescent (scanpy's approximate neighbours for large data) chosen explicitly: with
    # pynndescent 0.7 this call fails on scanpy 1.11 ('csr_array' has no 'getnnz')
    sc.pp.neighbors(adata, transformer="pynndescent", random_state=0)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    sc.pp.neighbors(adata, random_state=0)
    sc.tl.umap(adata, random_state=0)
    assert np.isfinite(adata.obsm["X_umap"]).all()
    keys = get_keys(adata)
    sc.pl.umap(adata, color=["discovery_H1", keys.cell_type_key], show=False)
    dot = sc.pl.rank_genes_groups_dotplot(adata, key="rank_genes_groups_pseudobulk",
                                          groupby=keys.label_key, n_genes=2, show=False)
    labels = [t.get_text() for t in dot["mainplot_ax"].get_xticklabels()]
    first = {ct: sc.get.rank_genes_groups_df(adata, ct, key="rank_genes_groups_pseudobulk")
             ["names"].iloc[0] for ct in adata.uns["rank_genes_groups_pseudobulk"]["names"]
             .dtype.names}
    assert set(first.values()) <= set(labels)
    # the run's own embedding is scanpy's: its neighbour graph is in the file
    assert "connectivities" in out.obsp and out.uns["neighbors"]["params"]["n_neighbors"] <= 15
