"""Every cell counted: donor-level statistics streamed over a whole file, serial or on Dask."""

from __future__ import annotations

import json
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from discovery.io.contract import InputError
from discovery.io.simulate import write_simulated
from discovery.io.sketch import sketch_anndata
from discovery.io.stream import Chunks, read_block, reduce_chunks
from discovery.pp.preprocess import preprocess
from discovery.tl.donor_tests import AllCells, donor_gene_tests

KW = {"seed": 5, "n_donors": 10, "cells_per_donor": 120, "n_genes": 300}
MEAN_TEST = ["effect", "t", "p", "r2_technical", "r2_label"]
ALL_NUMBERS = [*MEAN_TEST, "q", "t_tail_up", "t_tail_down", "p_up", "p_down"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "cohort.h5ad"
    write_simulated(path, "confounded", chunk_cells=211, **KW)
    full = ad.read_h5ad(path)
    preprocess(full)
    return path, full


def _joined(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    return a.merge(b, on=["cell_type", "gene"], suffixes=("", "_ref"), validate="1:1")


def test_blocks_read_from_the_file_are_its_rows(cohort):
    path, _ = cohort
    raw = ad.read_h5ad(path)
    x = read_block(str(path), 250, 400)
    assert (x != raw.X[250:400]).nnz == 0
    blocks = Chunks(str(path), raw.n_obs, 173).bounds()
    assert blocks[0] == (0, 173) and blocks[-1][1] == raw.n_obs
    assert sum(b - a for a, b in blocks) == raw.n_obs


def test_streamed_tests_over_every_cell_equal_the_in_memory_tests(cohort):
    path, full = cohort
    ref = donor_gene_tests(full)
    streamed = donor_gene_tests(full, all_cells=AllCells.from_file(path, chunk=173))
    j = _joined(streamed, ref)
    assert len(j) == len(ref) == len(streamed) > 1000
    for col in ALL_NUMBERS:
        np.testing.assert_allclose(j[col], j[f"{col}_ref"], rtol=1e-5, atol=1e-6, err_msg=col)
    assert (j["n_case"] == j["n_case_ref"]).all() and (j["covariates"] == j["covariates_ref"]).all()


def test_a_sketched_run_still_tests_every_cell(cohort):
    """The model sees a sketch; the donor-level effects are those of every cell (only the tail
    thresholds, quantiles, come from the sketch's cells)."""
    path, full = cohort
    ref = donor_gene_tests(full)
    sketch, _ = sketch_anndata(full, full.n_obs // 3, strata="donor", seed=0)
    alone = _joined(donor_gene_tests(sketch), ref)
    streamed = _joined(donor_gene_tests(sketch, all_cells=AllCells.from_file(path, chunk=173)),
                       ref)
    assert len(streamed) > 0.95 * len(ref)
    for col in MEAN_TEST:
        np.testing.assert_allclose(streamed[col], streamed[f"{col}_ref"], rtol=1e-5, atol=1e-6,
                                   err_msg=col)
    # the sketch alone estimates them with a third of the cells: visibly different
    assert np.abs(alone["effect"] - alone["effect_ref"]).max() > 0.05


def test_a_file_missing_the_runs_genes_is_refused(cohort, tmp_path):
    path, full = cohort
    other = full.copy()
    other.var_names = [f"X{g}" for g in other.var_names]
    with pytest.raises(InputError, match="lacks 300 genes of the run"):
        donor_gene_tests(other, all_cells=AllCells.from_file(path))


def _sums(x, a, b):  # noqa: ANN001, ANN202 - a picklable block function
    return np.asarray(x.sum(0)).ravel().astype(float), np.array([b - a], float)


def test_dask_local_cluster_gives_the_serial_numbers(cohort):
    path, full = cohort
    n = full.n_obs
    chunks = Chunks(str(path), n, 97)
    serial = reduce_chunks(chunks, _sums)
    raw = ad.read_h5ad(path)
    assert np.array_equal(serial[0], np.asarray(raw.X.sum(0)).ravel().astype(float))
    assert serial[1][0] == n
    cells_serial = AllCells.from_file(path, chunk=173, engine="serial")
    cells_dask = AllCells.from_file(path, chunk=173, engine="dask", workers=2)
    with cells_dask.session():
        on_dask = reduce_chunks(chunks, _sums, client=cells_dask._client)
        assert np.array_equal(on_dask[0], serial[0]) and on_dask[1][0] == n
    a = donor_gene_tests(full, all_cells=cells_serial)
    b = donor_gene_tests(full, all_cells=cells_dask)
    pd.testing.assert_frame_equal(a, b, rtol=1e-9, atol=1e-12)


def test_the_scan_on_dask_gives_the_serial_qc_and_names_the_first_bad_row(cohort, tmp_path):
    from discovery.io.sketch import read_sketched

    path, full = cohort
    serial, s1 = read_sketched(path, max_cells=300, strata="donor", chunk=173)
    dask, s2 = read_sketched(path, max_cells=300, strata="donor", chunk=173, engine="dask")
    assert s1 == s2 and (serial.X != dask.X).nnz == 0
    raw = ad.read_h5ad(path)
    raw.X = raw.X.tocsr()
    raw.X[400, 3] = 0.5  # a non-integer count in the third block
    bad = tmp_path / "bad.h5ad"
    raw.write_h5ad(bad)
    for engine in ("serial", "dask"):
        with pytest.raises(InputError, match=r"non-integer values .* first at row 400 "):
            read_sketched(bad, max_cells=300, strata="donor", chunk=173, engine=engine)


def test_an_unknown_engine_is_said(cohort):
    path, full = cohort
    with pytest.raises(InputError, match="engine must be one of"):
        reduce_chunks(Chunks(str(path), full.n_obs), partial(_sums), engine="spark")


def test_a_script_without_a_main_guard_is_told_how_to_start_a_local_cluster(cohort, tmp_path):
    """Local workers are spawned, never forked (a fork taken while another thread holds a lock
    hangs for ever); a spawned worker imports the calling script again, so a script without
    ``if __name__ == "__main__":`` cannot start one: it is told so and how to fix it."""
    import subprocess
    import sys

    path, _ = cohort
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from discovery.io.contract import InputError\n"
        "from discovery.io.stream import Chunks, reduce_chunks\n"
        "def total(x, a, b):\n"
        "    return x.sum()\n"
        f"chunks = Chunks({str(path)!r}, 40, 20)\n"
        "try:\n"
        "    reduce_chunks(chunks, total, engine='dask', workers=1)\n"
        "except InputError as err:\n"
        "    print('INPUTERROR', err)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, check=False)
    said = [line for line in out.stdout.splitlines() if line.startswith("INPUTERROR")]
    assert said, out.stdout[-2000:] + out.stderr[-2000:]
    assert 'if __name__ == "__main__":' in said[0] and "engine='serial'" in said[0]


@pytest.mark.slow
def test_a_run_on_a_file_larger_than_the_sketch_counts_every_cell(cohort, tmp_path):
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    from .conftest import TINY

    path, full = cohort
    cfg = load_config(overrides={**TINY, "preprocess": {**TINY.get("preprocess", {}),
                                                         "max_cells": 400}})
    run_pipeline(tmp_path / "run", data=path, config=cfg, quiet=True,
                 stream={"engine": "serial", "chunk": 173})
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["input"]["cells_seen"] == full.n_obs
    assert stages["model"]["cells_seen"] == stages["features"]["cells_seen"] == 400
    assert stages["hypotheses"]["cells_seen_by"] == {"donor_tests": full.n_obs, "model": 400}
    tests = pd.read_csv(tmp_path / "run" / "donor_tests.csv")
    ref = donor_gene_tests(full)
    j = _joined(tests, ref)
    np.testing.assert_allclose(j["effect"], j["effect_ref"], rtol=1e-5, atol=1e-6)
