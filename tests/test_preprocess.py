"""Preprocessing keeps the counts, selects genes, and splits by donor."""

from __future__ import annotations

import numpy as np
import pytest

from discovery.io.contract import InputError, Keys, get_keys
from discovery.pp.preprocess import PreprocessConfig, preprocess, select_genes, split_donors


def test_counts_kept_and_x_log_normalised(raw_small):
    counts = raw_small.X.toarray().copy()
    preprocess(raw_small)
    np.testing.assert_array_equal(raw_small.layers["counts"].toarray(), counts)
    x = raw_small.X.toarray()
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)
    assert {"pct_counts_mt", "total_counts", "n_genes_by_counts"} <= set(raw_small.obs)
    assert raw_small.uns["preprocess"]["params"]["target_sum"] == 1e4
    assert get_keys(raw_small).case == "AD"


def test_copy_returns_new_object(raw_small):
    out = preprocess(raw_small, copy=True)
    assert out is not None and "split" in out.obs and "split" not in raw_small.obs


def test_pinned_genes_always_selected(pp_small):
    low = pp_small.var_names[np.argsort(pp_small.var["dispersions_norm"].to_numpy())[:3]]
    select_genes(pp_small, n_top_genes=50, pin_genes=list(low))
    assert pp_small.var.loc[low, "highly_variable"].all()
    assert pp_small.var["highly_variable"].sum() == 53


def test_unknown_pinned_gene(pp_small):
    with pytest.raises(InputError, match="1 pinned gene\\(s\\) are not in var_names: \\['NOTAGENE'\\]"):
        select_genes(pp_small, pin_genes=["NOTAGENE"])


def test_split_holds_out_donors_and_is_stratified(pp_small):
    obs = pp_small.obs
    per_donor = obs.groupby("donor", observed=True)["split"].nunique()
    assert (per_donor == 1).all()  # no donor in two splits
    table = obs.groupby(["split", "diagnosis"], observed=True)["donor"].nunique().unstack()
    assert (table >= 1).all().all()  # every split has both classes
    donors = pp_small.uns["split"]["params"]["donors"]
    assert not set(donors["train"]) & set(donors["test"])


def test_split_is_deterministic_and_seeded(pp_small):
    keys = Keys(case="AD", controls=("Control",))
    split_donors(pp_small, keys, seed=5, key_added="s1")
    split_donors(pp_small, keys, seed=5, key_added="s2")
    split_donors(pp_small, keys, seed=6, key_added="s3")
    assert (pp_small.obs["s1"] == pp_small.obs["s2"]).all()
    assert not (pp_small.obs["s1"] == pp_small.obs["s3"]).all()


def test_config_validation():
    with pytest.raises(ValueError, match="summing to 1"):
        PreprocessConfig(split_fractions=(0.5, 0.5, 0.5))
    cfg = PreprocessConfig(pin_genes=("TREM2",))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
