"""Real datasets that load offline, shaped for the input contract.

``pbmc68k_reduced``: scanpy's bundled subset of the 68k PBMC dataset (Zheng et al. 2017, Nat
Commun 8:14049): 700 real 10x cells x 765 genes from one donor, labels ``bulk_labels`` (ten
sorted reference populations). scanpy ships it with ``X`` scaled (z-scores) and ``.raw``
log-normalised, and without raw counts, so it is returned log-normalised (``.raw``) for the
``lognorm`` input mode, with the QC the original counts gave (``total_counts`` = ``n_counts``,
``pct_counts_mt`` = 100 x ``percent_mito``). It has no donor structure: use it with
``donor_key=None`` (every cell its own unit) — the ``pbmc68k`` preset does.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from discovery.io.contract import InputError

__all__ = ["DATASETS", "load_dataset", "pbmc68k_reduced"]


def pbmc68k_reduced() -> ad.AnnData:
    """The 700 PBMCs of scanpy's ``pbmc68k_reduced``, log-normalised (see the module docstring)."""
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw
    X = raw.X if sp.issparse(raw.X) else sp.csr_matrix(raw.X)
    obs = src.obs[["bulk_labels", "phase", "louvain"]].copy()
    obs["bulk_labels"] = obs["bulk_labels"].astype(str)
    obs["total_counts"] = src.obs["n_counts"].to_numpy(float)
    obs["pct_counts_mt"] = 100.0 * src.obs["percent_mito"].to_numpy(float)
    adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(raw.var_names.astype(str))))
    adata.obsm["X_umap"] = np.asarray(src.obsm["X_umap"])
    adata.uns["dataset"] = {
        "name": "pbmc68k_reduced", "input": "lognorm", "label_key": "bulk_labels",
        "source": "Zheng GXY et al. (2017) Nat Commun 8:14049, doi:10.1038/ncomms14049; "
                  "subset bundled with scanpy (scanpy.datasets.pbmc68k_reduced)",
    }
    return adata


#: name -> loader of a real dataset that ships inside an installed package
DATASETS = {"pbmc68k_reduced": pbmc68k_reduced}


def load_dataset(name: str) -> ad.AnnData:
    """Load a bundled real dataset by name."""
    if name not in DATASETS:
        msg = f"unknown dataset {name!r}; bundled real datasets: {', '.join(DATASETS)}"
        raise InputError(msg)
    return DATASETS[name]()
