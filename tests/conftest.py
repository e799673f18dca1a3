"""Shared fixtures: small simulated cohorts built once per session; every test gets a copy."""

from __future__ import annotations

import os

import anndata as ad
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

from discovery.preprocess import preprocess  # noqa: E402
from discovery.simulate import simulate  # noqa: E402

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
    """The small cohort after :func:`discovery.preprocess.preprocess`, fresh copy per test."""
    return _pp_small.copy()
