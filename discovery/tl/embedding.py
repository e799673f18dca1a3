"""A 2-D embedding of the cells for figures and the app: PCA of log-normalised expression, then
UMAP (McInnes et al. 2018).

Steps:
1. PCA (scanpy, ``min(30, genes - 1, cells - 1)`` components, seeded).
2. k nearest neighbours (k = 15) on the PCs: exact (scikit-learn) up to
   :data:`EXACT_KNN_MAX_CELLS` cells, approximate (pynndescent, inside umap-learn) above.
3. UMAP of the PCs with those neighbours (umap-learn, seeded, one thread).
"""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["EXACT_KNN_MAX_CELLS", "umap"]

#: above this many cells the UMAP neighbours come from pynndescent (approximate) instead
EXACT_KNN_MAX_CELLS = 50_000


def umap(adata: ad.AnnData, *, seed: int = 0, key_added: str = "X_umap") -> None:
    """Embed the cells in 2-D (see the module docstring).

    Reads log-normalised ``X``. Writes ``obsm[key_added]`` (``X_umap``: (cells, 2) float32).
    umap-learn runs directly on the PCA: exact neighbours from scikit-learn skip pynndescent,
    whose numba compilation took 42 s of a 2.9-min default run (profiled), for the same graph
    UMAP would approximate.
    """
    import scanpy as sc
    import umap as umap_learn

    tmp = ad.AnnData(X=adata.X, obs=adata.obs[[]].copy())
    sc.pp.pca(tmp, n_comps=min(30, tmp.n_vars - 1, tmp.n_obs - 1), random_state=seed)
    pcs = tmp.obsm["X_pca"]
    k = min(15, tmp.n_obs - 1)
    knn = None
    if tmp.n_obs <= EXACT_KNN_MAX_CELLS:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k).fit(pcs).kneighbors(pcs)
        knn = (idx, dist.astype(np.float32), None)
    log.info("UMAP of %d cells (%s neighbours)", tmp.n_obs, "exact" if knn else "approximate")
    reducer = umap_learn.UMAP(n_neighbors=k, random_state=seed, n_jobs=1,
                              precomputed_knn=knn or (None, None, None))
    with warnings.catch_warnings():  # no NNDescent index: transform() of new cells is not used
        warnings.filterwarnings("ignore", message="precomputed_knn")
        adata.obsm[key_added] = reducer.fit_transform(pcs).astype(np.float32)
