"""A cohort written in the layouts data is downloaded in, so that each reader is tested on a file
whose truth is known (the simulator's cohort, count for count).

- ``cellxgene``: an ``.h5ad`` in the CELLxGENE schema: Ensembl-like ids as ``var_names`` with
  symbols in ``var['feature_name']``, log-normalised values in ``X``, raw counts in ``.raw.X``,
  the label as ``obs['disease']`` with ``normal`` for controls, donors as ``obs['donor_id']``,
  cell types as Cell Ontology labels ("microglial cell").
- ``10x_h5``: Cell Ranger's ``filtered_feature_bc_matrix.h5`` (HDF5, CSC genes x cells) and a
  metadata CSV (cell barcode in the first column).
- ``10x_mtx``: Cell Ranger's matrix folder (``matrix.mtx.gz``, ``features.tsv.gz``,
  ``barcodes.tsv.gz``) and a metadata CSV.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from discovery.io.bundled import read_yaml
from discovery.io.contract import _CONTROL_NAMES, InputError, counts_matrix
from discovery.io.files import atomic_write

__all__ = ["LAYOUTS", "ensembl_like_ids", "write_layout"]

LAYOUTS = ("cellxgene", "10x_h5", "10x_mtx")


def ensembl_like_ids(n: int) -> list[str]:
    """``ENSG00000000001``, ... : the shape of human Ensembl gene ids (not real ids)."""
    return [f"ENSG{i:011d}" for i in range(1, n + 1)]


def _ontology_label(name: str) -> str:
    """The Cell Ontology label of a bundled cell-type name ("Microglia" -> "microglial cell")."""
    for term in read_yaml("cell_types.yaml")["cell_types"]:
        if name == term["label"] or name in term.get("synonyms", []):
            return str(term["label"])
    return name


def _counts(adata: ad.AnnData) -> sp.csr_matrix:
    return sp.csr_matrix(counts_matrix(adata), dtype=np.float32)


def write_layout(adata: ad.AnnData, out: str | Path, layout: str) -> tuple[Path, Path | None]:
    """Write the cohort ``adata`` (raw counts in ``X`` or ``layers['counts']``, obs columns
    ``diagnosis``, ``donor``, ``cell_type``, ...) in ``layout`` under the folder ``out``.

    Reads the counts, ``var_names`` (symbols) and obs. Writes files only. Returns
    ``(data path, metadata CSV or None)``: what ``discovery run --data ... --metadata ...``
    takes.
    """
    if layout not in LAYOUTS:
        msg = f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}"
        raise InputError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = _counts(adata)
    ids = ensembl_like_ids(adata.n_vars)
    symbols = adata.var_names.astype(str).tolist()
    if layout == "cellxgene":
        obs = adata.obs.copy()
        control = obs["diagnosis"].astype(str).str.strip().str.lower().isin(_CONTROL_NAMES)
        obs["disease"] = pd.Categorical(np.where(control, "normal", "Alzheimer disease"))
        obs["donor_id"] = obs["donor"].astype(str)
        obs["cell_type"] = pd.Categorical(obs["cell_type"].astype(str).map(_ontology_label))
        obs = obs.drop(columns=["diagnosis", "donor"])
        var = pd.DataFrame({"feature_name": symbols, "feature_reference": "NCBITaxon:9606",
                            "feature_biotype": "gene"}, index=pd.Index(ids))
        raw = ad.AnnData(X=counts, obs=obs, var=var)
        lib = np.asarray(counts.sum(1)).ravel()
        norm = sp.diags(1e4 / np.maximum(lib, 1.0)) @ counts
        norm.data = np.log1p(norm.data)
        cx = ad.AnnData(X=sp.csr_matrix(norm, dtype=np.float32), obs=obs, var=var.copy())
        cx.raw = raw
        cx.uns["schema_version"] = "5.0.0"
        path = out / "cellxgene.h5ad"
        atomic_write(path, lambda p: cx.write_h5ad(p, compression="gzip"))
        return path, None
    meta_path = out / "metadata.csv"
    meta = adata.obs.copy()
    meta.index.name = "barcode"
    atomic_write(meta_path, lambda p: meta.to_csv(p))
    genes_by_cells = sp.csc_matrix(counts.T.astype(np.int64))
    if layout == "10x_h5":
        path = out / "filtered_feature_bc_matrix.h5"
        atomic_write(path, lambda p: _write_10x_h5(p, genes_by_cells, adata.obs_names, ids,
                                                   symbols))
        return path, meta_path
    folder = out / "filtered_feature_bc_matrix"
    folder.mkdir(exist_ok=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(genes_by_cells), field="integer")
    pd.DataFrame({"id": ids, "name": symbols, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names.astype(str)).to_csv(folder / "barcodes.tsv.gz", sep="\t",
                                                  header=False, index=False)
    return folder, meta_path


def _write_10x_h5(path: str | Path, genes_by_cells: sp.csc_matrix, barcodes: pd.Index,
                  ids: list[str], symbols: list[str]) -> None:
    """Cell Ranger >= 3's HDF5 matrix: group ``matrix`` with CSC ``data/indices/indptr/shape``
    (genes x cells), ``barcodes`` and ``features/{id,name,feature_type,genome}``."""
    import h5py

    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=genes_by_cells.data.astype(np.int32))
        m.create_dataset("indices", data=genes_by_cells.indices.astype(np.int64))
        m.create_dataset("indptr", data=genes_by_cells.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.asarray(genes_by_cells.shape, dtype=np.int32))
        m.create_dataset("barcodes", data=np.asarray(barcodes.astype(str), dtype="S"))
        feat = m.create_group("features")
        feat.create_dataset("id", data=np.asarray(ids, dtype="S"))
        feat.create_dataset("name", data=np.asarray(symbols, dtype="S"))
        feat.create_dataset("feature_type",
                            data=np.asarray(["Gene Expression"] * len(ids), dtype="S"))
        feat.create_dataset("genome", data=np.asarray(["GRCh38"] * len(ids), dtype="S"))
        feat.create_dataset("_all_tag_keys", data=np.asarray([b"genome"]))
