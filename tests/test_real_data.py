"""Real data that loads offline: scanpy's pbmc68k_reduced through the whole pipeline in the
log-normalised, no-donor mode (and in the app), and celltypist's raw-count sample through the
steps that need no labels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from streamlit.testing.v1 import AppTest

from discovery.io.bundled import read_yaml
from discovery.io.contract import InputError, Keys, validate
from discovery.io.datasets import pbmc68k_reduced
from discovery.pp.preprocess import LOGNORM_SKIPPED, preprocess_unlabelled

APP = str(Path(__file__).resolve().parent.parent / "app.py")
CASE = "Dendritic"


def _pbmc(case: str, out: Path):  # noqa: ANN202 - a RunResult
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    config = load_config(preset="pbmc68k", overrides={
        "keys": {"case": case},
        "model": {"train": {"epochs": 8}},
        "features": {"seeds": [0, 1], "d_sae": 64, "k": 8, "train": {"epochs": 8}},
        "graphs": {"n_boot": 10, "n_top": 10},
    })
    return run_pipeline(out, config=config, quiet=True)


def _markers(case: str) -> set[str]:
    return set(next(c["markers"] for c in read_yaml("pbmc_markers.yaml")["classes"]
                    if c["label"] == case))


@pytest.fixture(scope="module")
def pbmc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pbmc") / "run"
    return out, _pbmc(CASE, out)


@pytest.mark.slow
def test_pbmc68k_runs_end_to_end_in_lognorm_no_donor_mode(pbmc_run):
    out, res = pbmc_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == {"kind": "dataset", "name": "pbmc68k_reduced"}
    adata = res.adata
    assert adata.uns["normalize"]["params"]["skipped"] == LOGNORM_SKIPPED
    assert "counts" not in adata.layers  # nothing pretends to be counts
    keys = json.loads(adata.uns["discovery"]["keys"])
    assert keys["donor_key"] == "cell_unit" and keys["cell_type_key"] == "population"
    assert res.metrics["test"]["cell_auroc"] > 0.9  # dendritic cells vs the rest, held-out cells
    hyps = res.hypotheses["hypotheses"]
    assert hyps
    # one sample: cell-level statistics, never "supported"
    assert all(h["status"] != "supported" for h in hyps)
    assert all(any(f["kind"] == "no_donors" for f in h["flags"]) for h in hyps)
    # the top up-hypothesis names dendritic-cell markers from the literature table
    up = [h for h in hyps if h["direction"] == "up"]
    assert up and {g["symbol"] for g in up[0]["genes"][:10]} & _markers(CASE)
    assert (out / "report.html").is_file() and (out / "plans.json").is_file()


def test_b_cells_are_named_by_their_markers_not_by_what_they_lack(tmp_path):
    """B cells vs the rest: the model's features fire in B cells and are silent in the (many)
    myeloid cells, so myeloid genes anti-correlate with them most strongly; the hypothesis must
    still name what the features detect (CD79A, MS4A1, ...), with the myeloid side kept as the
    other side of the program."""
    res = _pbmc("CD19+ B", tmp_path / "b")
    top = res.hypotheses["hypotheses"][0]
    assert top["direction"] == "up"
    genes = [g["symbol"] for g in top["genes"][:10]]
    assert {"CD79A", "MS4A1"} <= set(genes), genes
    against = top["evidence"]["gene_sides"]["against_activation"]
    assert {"TYROBP", "FCER1G", "AIF1", "LST1", "CST3", "LYZ"} & set(against), against


def test_the_app_shows_the_pbmc_run(pbmc_run, tmp_path, monkeypatch):
    out, _ = pbmc_run
    monkeypatch.setenv("DISCOVERY_RUN", str(out))
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and not at.error
    for page in ("hypotheses", "plan", "features", "graph"):
        at.switch_page(f"app_pages/{page}.py")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])


def test_scaled_matrix_is_refused_in_lognorm_mode():
    import scanpy as sc

    scaled = sc.datasets.pbmc68k_reduced()  # X holds z-scores
    scaled.obs["cell_type"] = "PBMC"
    with pytest.raises(InputError, match="looks scaled .*adata.raw.to_adata"):
        validate(scaled, Keys(label_key="bulk_labels", case="CD19+ B", donor_key=None),
                 require_counts=False)


def test_pbmc68k_loader_is_log_normalised_with_qc_from_the_counts():
    adata = pbmc68k_reduced()
    assert adata.shape == (700, 765)
    x = adata.X.toarray()
    assert x.min() >= 0 and not np.allclose(x, np.round(x))  # log values, not counts
    assert adata.obs["pct_counts_mt"].between(0, 100).all()
    assert (adata.obs["total_counts"] > 1000).all()


def _celltypist_sample() -> Path:
    import celltypist

    return Path(os.path.dirname(celltypist.__file__)) / "data" / "samples" / \
        "sample_cell_by_gene.csv"


def test_celltypist_raw_counts_without_labels(tiny_run):
    from discovery.io.contract import read
    from discovery.tl import classifier

    path = _celltypist_sample()
    with pytest.raises(InputError, match="--metadata"):
        read(path)  # labelled work needs the metadata file
    adata = read(path, labelled=False)
    assert adata.n_obs == 559
    counts = adata.X.data
    assert np.all(counts == np.round(counts))  # real integer counts
    preprocess_unlabelled(adata)
    assert adata.obs["pct_counts_mt"].median() > 0  # MT- genes found on real symbols
    assert (adata.obs["total_counts"] > 0).all()
    libsize = np.expm1(adata.X.toarray() if sp.issparse(adata.X) else adata.X).sum(1)
    assert np.allclose(libsize, 1e4, rtol=1e-3)
    assert adata.var["highly_variable"].sum() == 1200
    # a model trained on other genes is refused with the count and names of the missing genes
    model = classifier.load(tiny_run / "model")
    with pytest.raises(InputError, match=r"\d+ of the model's \d+ genes are missing"):
        classifier.predict(adata, model)


def test_cli_words_none_switch_off_donor_and_cell_type_keys():
    from pipelines.run import keys_from_args

    assert keys_from_args(donor_key="none", cell_type_key="None", batch_key="none") == {
        "donor_key": None, "cell_type_key": None, "batch_key": None}
    assert keys_from_args(label_key="none", case="none") == {"label_key": "none", "case": "none"}
    assert keys_from_args() == {}  # nothing given: the config and preset keys stand
