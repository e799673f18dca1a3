"""Data as scientists download it: a CELLxGENE-schema .h5ad, a 10x Genomics .h5 file and a
Cell Ranger matrix folder (each written by the simulator, so the truth is known) are read back
count for count, and run end to end with genes named by symbol."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from discovery.io import layout
from discovery.io.contract import InputError, counts_matrix, read, standardise, validate
from discovery.io.downloads import LAYOUTS, write_layout
from discovery.io.simulate import simulate
from discovery.tl.cohorts import same_cell_type
from pipelines.cli import main

from .conftest import TINY


@pytest.fixture(scope="module")
def cohort():
    return simulate("alzheimers", seed=0, **TINY["cohort"])


@pytest.mark.parametrize("kind", LAYOUTS)
def test_each_layout_reads_back_the_same_cohort(cohort, tmp_path, kind):
    data, meta = write_layout(cohort, tmp_path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = read(data, metadata=meta)
        keys = validate(adata)
    # the same counts under the same symbols, whatever the layout
    assert list(adata.var_names) == list(cohort.var_names)
    assert list(adata.obs_names) == list(cohort.obs_names)
    diff = counts_matrix(adata) - counts_matrix(cohort)
    assert abs(diff).sum() == 0
    said = " ".join(str(w.message) for w in caught)
    if kind == "cellxgene":
        # ids became symbols (ids kept), counts came from .raw, schema columns were used
        assert adata.var["gene_id"].str.startswith("ENSG").all()
        assert (keys.label_key, keys.donor_key) == ("disease", "donor_id")
        assert keys.case == "Alzheimer disease" and keys.controls == ("normal",)
        assert "'disease'" in said and "'donor_id'" in said
        assert "microglial cell" in set(adata.obs["cell_type"])
    else:
        assert (keys.label_key, keys.case) == ("diagnosis", "AD")
        assert said == ""


@pytest.mark.parametrize("kind", LAYOUTS)
def test_each_layout_runs_end_to_end_naming_genes_by_symbol(cohort, tmp_path, tiny_config,
                                                            kind):
    data, meta = write_layout(cohort, tmp_path / "in", kind)
    out = tmp_path / "run"
    argv = ["run", str(data), "--out", str(out), "--quiet", "--config", str(tiny_config)]
    assert main(argv + (["--metadata", str(meta)] if meta else [])) == 0
    hyps = json.loads((out / layout.HYPOTHESES).read_text())["hypotheses"]
    plans = (out / layout.PLANS).read_text()
    report = (out / layout.REPORT_HTML).read_text()
    symbols = set(cohort.var_names)
    assert hyps
    for h in hyps:
        assert {g["symbol"] for g in h["genes"]} <= symbols
    assert "ENSG" not in plans and "ENSG" not in report
    # a feature is called a possible doublet only when its marker set names another cell type
    # (Cell Ontology labels are the bundled sets' cell types, not strangers)
    ann = json.loads((out / layout.ANNOTATIONS).read_text())
    for a in ann:
        if "possible doublets" in a["label"]:
            assert not same_cell_type(a["top_set_cell_type"], a["cell_type"])
    if kind == "cellxgene":  # the ontology names did meet the bundled marker sets' names
        assert any(a["top_set_cell_type"] and a["top_set_cell_type"] != a["cell_type"]
                   and same_cell_type(a["top_set_cell_type"], a["cell_type"]) for a in ann)
    if kind == "cellxgene":
        assert {h["cell_type"] for h in hyps} <= set(cohort.obs["cell_type"].map(
            {"Microglia": "microglial cell", "Astrocytes": "astrocyte",
             "Oligodendrocytes": "oligodendrocyte", "OPC": "oligodendrocyte precursor cell",
             "Excitatory neurons": "glutamatergic neuron",
             "Inhibitory neurons": "GABAergic neuron", "Endothelial": "endothelial cell"}))


def test_ontology_names_match_the_bundled_marker_sets():
    assert same_cell_type("microglial cell", "Microglia")
    assert same_cell_type("oligodendrocyte precursor cell", "OPC")
    assert same_cell_type("glutamatergic neuron", "Excitatory neurons")
    assert same_cell_type("Oligodendrocyte", "oligodendrocytes")
    # a subtype is not its parent; different populations stay apart
    assert not same_cell_type("CD4 T cells", "T cells")
    assert not same_cell_type("astrocyte", "microglial cell")
    assert not same_cell_type(None, None)


def test_download_errors_name_the_problem_and_the_fix(cohort, tmp_path):
    folder = tmp_path / "not10x"
    folder.mkdir()
    (folder / "matrix.mtx.gz").write_bytes(b"")
    with pytest.raises(InputError, match="features.tsv.gz or genes.tsv"):
        read(folder)
    data, meta = write_layout(cohort, tmp_path / "h5", "10x_h5")
    with pytest.raises(InputError, match="--metadata"):
        read(data)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError, match="not a readable 10x .h5 file"):
        read(bad, metadata=meta)
    # Ensembl ids with no symbol column: said, not silently used as symbols
    ids = cohort.copy()
    ids.var_names = [f"ENSG{i:011d}" for i in range(ids.n_vars)]
    with pytest.warns(UserWarning, match="feature_name"):
        out = standardise(ids)
    assert out.var_names[0] == "ENSG00000000000"
    # normalised X with integer .raw: counts from .raw; without .raw the contract's error stays
    norm = cohort.copy()
    norm.raw = norm
    norm.X = norm.X.astype(np.float32) * 0.5
    assert abs(counts_matrix(standardise(norm)) - counts_matrix(cohort)).sum() == 0
    # a normalised X over fewer genes than .raw (the usual download): the full counts, aligned
    sub = cohort.copy()
    sub.var["feature_name"] = sub.var_names
    sub.var_names = [f"ENSG{i:011d}" for i in range(sub.n_vars)]
    sub.raw = sub.copy()
    sub = sub[:, ::3].copy()
    sub.X = sub.X.astype(np.float32) * 0.5
    full = standardise(sub)
    assert full.n_vars == cohort.n_vars and list(full.var_names) == list(cohort.var_names)
    assert abs(counts_matrix(full) - counts_matrix(cohort)).sum() == 0
    # one metadata row per cell: a repeated id is refused, not a traceback
    data, meta = write_layout(cohort, tmp_path / "dup", "10x_mtx")
    text = meta.read_text().splitlines()
    meta.write_text("\n".join([*text, text[1]]) + "\n")
    with pytest.raises(InputError, match="more than once"):
        read(data, metadata=meta)
