"""A 2-D embedding of the cells for figures and the app, computed by scanpy itself so that the
output AnnData carries scanpy's own keys (``X_pca``, ``neighbors``, ``X_umap``) and a user's next
``sc.tl.leiden`` or ``sc.pl.umap`` works on it as it is.

Steps:
1. PCA (``sc.pp.pca``, ``min(30, genes - 1, cells - 1)`` components over every gene, seeded).
2. k nearest neighbours (``sc.pp.neighbors``, k = 15) on the PCs: exact (scikit-learn's
   transformer) up to :data:`EXACT_KNN_MAX_CELLS` cells, approximate (scanpy's default,
   pynndescent) above.
3. UMAP (McInnes et al. 2018) of that graph (``sc.tl.umap``, seeded).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["EXACT_KNN_MAX_CELLS", "umap"]

#: above this many cells the neighbours come from pynndescent (approximate) instead of an exact
#: search: pynndescent's numba compilation costs ~40 s, more than an exact search below this
EXACT_KNN_MAX_CELLS = 50_000


def umap(adata: ad.AnnData, *, seed: int = 0, key_added: str = "X_umap") -> None:
    """Embed the cells in 2-D (see the module docstring).

    Reads log-normalised ``X``. Writes what scanpy's calls write: ``obsm['X_pca']``,
    ``varm['PCs']``, ``uns['pca']``, ``obsp['distances', 'connectivities']``,
    ``uns['neighbors']``, ``uns['umap']`` and ``obsm[key_added]`` ((cells, 2) float32).
    """
    import scanpy as sc

    n_comps = min(30, adata.n_vars - 1, adata.n_obs - 1)
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed, mask_var=None)
    exact = adata.n_obs <= EXACT_KNN_MAX_CELLS
    log.info("UMAP of %d cells (%s neighbours)", adata.n_obs, "exact" if exact else "approximate")
    sc.pp.neighbors(adata, n_neighbors=min(15, adata.n_obs - 1), use_rep="X_pca",
                    random_state=seed, transformer="sklearn" if exact else None)
    sc.tl.umap(adata, random_state=seed)
    emb = np.asarray(adata.obsm.pop("X_umap"), dtype=np.float32)
    adata.obsm[key_added] = emb
