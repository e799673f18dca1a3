"""Shared fixtures: small simulated cohorts built once per session; every test gets a copy."""

from __future__ import annotations

import os

import anndata as ad
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one thread per worker, not two workers fighting over both cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import torch

    torch.set_num_threads(1)

from discovery.io.simulate import simulate  # noqa: E402
from discovery.pp.preprocess import preprocess  # noqa: E402

SMALL = {"n_donors": 16, "cells_per_donor": 80, "n_genes": 600}


@pytest.fixture(scope="session")
def _raw_small() -> ad.AnnData:
    return simulate("alzheimers", seed=0, **SMALL)


@pytest.fixture
def raw_small(_raw_small: ad.AnnData) -> ad.AnnData:
    """A small simulated Alzheimer's cohort (raw counts), fresh copy per test."""
    return _raw_small.copy()


@pytest.fixture(scope="session")
def _pp_small(_raw_small: ad.AnnData) -> ad.AnnData:
    a = _raw_small.copy()
    preprocess(a)
    return a


@pytest.fixture
def pp_small(_pp_small: ad.AnnData) -> ad.AnnData:
    """The small cohort after :func:`discovery.pp.preprocess.preprocess`, fresh copy per test."""
    return _pp_small.copy()


#: a tiny but complete pipeline configuration (every stage runs; seconds, not minutes)
TINY = {
    "cohort": {"n_donors": 12, "cells_per_donor": 40, "n_genes": 400},
    "preprocess": {"n_top_genes": 300},
    "model": {"kind": "mlp", "train": {"epochs": 4}},
    "features": {"seeds": [0], "d_sae": 64, "k": 12, "train": {"epochs": 4}},
    "graphs": {"n_boot": 10, "n_top": 10, "min_cells": 10, "edge_threshold": 0.9},
    "hypotheses": {"n_null": 5, "ig_cells": 40},
}


#: the pipeline settings of TINY for a run on a data file (the file fixes the cohort)
TINY_STAGES = {k: v for k, v in TINY.items()
               if k in ("model", "features", "graphs", "hypotheses")}


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """A config file (JSON) with the TINY stage settings, for CLI runs on a data file."""
    import json

    p = tmp_path_factory.mktemp("cfg") / "tiny.json"
    p.write_text(json.dumps(TINY_STAGES))
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run directory of the whole pipeline on a tiny simulated cohort (read-only:
    copy it before changing files). Built once per test session, shared by the ``pytest -n``
    workers (the first one builds it under a file lock)."""
    from filelock import FileLock

    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder all workers' temp folders live in
    out = shared / "tiny_run"
    with FileLock(str(shared / "tiny_run.lock")):
        if not (out / "report.html").is_file():
            run_pipeline(out, config=load_config(overrides=TINY), quiet=True)
    return out
