"""Every violation of the input contract gets a message that names the problem and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from discovery.io.contract import InputError, Keys, read, validate


def _err(adata, keys=None, **kw) -> str:
    with pytest.raises(InputError) as info:
        validate(adata, keys, **kw)
    return str(info.value)


def test_valid_cohort_resolves_case_and_controls(raw_small):
    keys = validate(raw_small)
    assert keys.case == "AD"
    assert keys.controls == ("Control",)
    assert keys.batch_key == "batch"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found: .*nope.h5ad"):
        read(tmp_path / "nope.h5ad")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.h5ad"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="is empty \\(0 bytes\\)"):
        read(p)


def test_not_anndata(tmp_path):
    p = tmp_path / "bad.h5ad"
    p.write_text("this is not hdf5")
    with pytest.raises(InputError, match="not a readable AnnData .h5ad file"):
        read(p)


def test_unknown_file_type(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        read(p)


def test_empty_anndata(raw_small):
    assert "data is empty (0 cells" in _err(raw_small[:0].copy())


def test_missing_obs_key_lists_available_columns(raw_small):
    msg = _err(raw_small, Keys(label_key="disease"))
    assert "obs column 'disease' (given by --label-key) is missing" in msg
    assert "diagnosis" in msg and "donor" in msg  # the available columns are listed


def test_explicit_batch_key_missing(raw_small):
    assert "obs column 'run' (given by --batch-key) is missing" in _err(
        raw_small, Keys(batch_key="run"))


def test_default_batch_key_is_optional(raw_small):
    del raw_small.obs["batch"]
    assert validate(raw_small).batch_key is None


def test_nan_in_key_column(raw_small):
    raw_small.obs["cell_type"] = raw_small.obs["cell_type"].astype(object)
    raw_small.obs.iloc[:3, raw_small.obs.columns.get_loc("cell_type")] = np.nan
    assert "has 3 missing values (NaN)" in _err(raw_small)


def test_one_class_only(raw_small):
    raw_small.obs["diagnosis"] = "AD"
    assert "has one class only ('AD')" in _err(raw_small)


def test_more_than_two_classes_needs_case(raw_small):
    lab = raw_small.obs["diagnosis"].astype(str).to_numpy().copy()
    donors = raw_small.obs["donor"].astype(str)
    lab[donors.isin(donors.unique()[:2]).to_numpy()] = "MCI"
    raw_small.obs["diagnosis"] = lab
    msg = _err(raw_small)
    assert "has 3 values" in msg and "--case" in msg
    keys = validate(raw_small, Keys(case="AD"))
    assert set(keys.controls) == {"Control", "MCI"}


def test_case_value_absent(raw_small):
    msg = _err(raw_small, Keys(case="Alzheimer"))
    assert "--case 'Alzheimer' is not a value of obs['diagnosis']" in msg
    assert "'AD'" in msg


def test_ambiguous_two_labels_need_case(raw_small):
    raw_small.obs["diagnosis"] = np.where(raw_small.obs["diagnosis"] == "AD", "groupA", "groupB")
    assert "cannot tell which of ['groupA', 'groupB']" in _err(raw_small)
    assert validate(raw_small, Keys(case="groupA")).case == "groupA"


def test_donor_with_both_labels(raw_small):
    lab = raw_small.obs["diagnosis"].astype(str).to_numpy().copy()
    first = raw_small.obs["donor"].astype(str).to_numpy() == raw_small.obs["donor"].iloc[0]
    idx = np.flatnonzero(first)[:5]
    lab[idx] = "Control" if lab[idx[0]] == "AD" else "AD"
    raw_small.obs["diagnosis"] = lab
    msg = _err(raw_small)
    assert "1 donor(s) carry cells with different 'diagnosis' values" in msg
    assert str(raw_small.obs["donor"].iloc[0]) in msg


def test_non_integer_counts(raw_small):
    raw_small.X = raw_small.X.astype(np.float32) * 0.5
    raw_small.X.data[0] = 0.5
    msg = _err(raw_small)
    assert "non-integer values" in msg and "layers['counts']" in msg


def test_negative_counts(raw_small):
    raw_small.X.data[0] = -3
    assert "negative values" in _err(raw_small)


def test_nan_and_inf_in_counts(raw_small):
    raw_small.X.data[0] = np.nan
    raw_small.X.data[1] = np.inf
    assert "holds 2 NaN/Inf values" in _err(raw_small)


def test_counts_layer_is_used_when_present(raw_small):
    raw_small.layers["counts"] = raw_small.X.copy()
    raw_small.X = sp.csr_matrix(np.log1p(raw_small.X.toarray()))
    validate(raw_small)  # X is log data, but layers['counts'] holds integers


def test_duplicated_gene_names_are_made_unique_with_warning(raw_small):
    names = raw_small.var_names.to_numpy().copy()
    names[1] = names[0]
    raw_small.var_names = names
    with pytest.warns(UserWarning, match="1 duplicated gene names"):
        validate(raw_small)
    assert raw_small.var_names.is_unique


def test_too_few_donors_per_class(raw_small):
    donors = raw_small.obs["donor"].astype(str)
    ad_donors = donors[raw_small.obs["diagnosis"] == "AD"].unique()
    keep = ~donors.isin(ad_donors[2:]).to_numpy()
    msg = _err(raw_small[keep].copy())
    assert "found 2 'AD' and 8 control donors; at least 3 per class are needed" in msg


def _write_csv_pair(adata, tmp_path):
    counts = pd.DataFrame(adata.X.toarray().astype(int), index=adata.obs_names,
                          columns=adata.var_names)
    counts.to_csv(tmp_path / "counts.csv")
    adata.obs.to_csv(tmp_path / "meta.csv")
    return tmp_path / "counts.csv", tmp_path / "meta.csv"


def test_csv_pair_loads_and_validates(raw_small, tmp_path):
    small = raw_small[:300].copy()
    c, m = _write_csv_pair(small, tmp_path)
    loaded = read(c, metadata=m)
    assert loaded.shape == small.shape
    np.testing.assert_array_equal(loaded.X.toarray(), small.X.toarray())
    assert (loaded.obs["donor"].astype(str) == small.obs["donor"].astype(str)).all()


def test_csv_without_metadata(raw_small, tmp_path):
    c, _ = _write_csv_pair(raw_small[:50].copy(), tmp_path)
    with pytest.raises(InputError, match="pass --metadata META.csv"):
        read(c)


def test_csv_metadata_ids_do_not_match(raw_small, tmp_path):
    c, m = _write_csv_pair(raw_small[:50].copy(), tmp_path)
    meta = pd.read_csv(m, index_col=0)
    meta.index = [f"other{i}" for i in range(len(meta))]
    meta.to_csv(m)
    with pytest.raises(InputError, match="none of the 50 cell ids .* --genes-in-rows"):
        read(c, metadata=m)


def test_csv_metadata_missing_some_cells(raw_small, tmp_path):
    c, m = _write_csv_pair(raw_small[:50].copy(), tmp_path)
    meta = pd.read_csv(m, index_col=0).iloc[5:]
    meta.to_csv(m)
    with pytest.raises(InputError, match="5 cells of counts.csv have no metadata row"):
        read(c, metadata=m)


def test_validate_emits_no_warning_on_clean_input(raw_small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(raw_small)


def _relabel(raw_small, n_donors: int, value: str, *, of: str = "AD") -> None:
    """Give the first ``n_donors`` donors labelled ``of`` the label ``value``."""
    lab = raw_small.obs["diagnosis"].astype(str).to_numpy().copy()
    donors = raw_small.obs["donor"].astype(str)
    chosen = donors[(lab == of)].unique()[:n_donors]
    lab[donors.isin(chosen).to_numpy()] = value
    raw_small.obs["diagnosis"] = lab


def test_a_label_spelled_two_ways_is_refused(raw_small):
    """'AD' and 'ad' are one diagnosis: with --case AD the 'ad' donors would become controls."""
    _relabel(raw_small, 2, "ad")
    msg = _err(raw_small, Keys(case="AD"))
    assert "spells one label in more than one way: 'AD' / 'ad'" in msg
    assert ".str.strip()" in msg
    _relabel(raw_small, 1, "Control ", of="Control")
    assert "'Control' / 'Control '" in _err(raw_small, Keys(case="AD"))


@pytest.mark.parametrize("missing", ["None", "nan", "NA", ""])
def test_a_missing_label_written_as_text_is_refused(raw_small, missing):
    """A donor whose diagnosis is the string 'None' must not silently become a control."""
    _relabel(raw_small, 1, missing)
    msg = _err(raw_small, Keys(case="AD"))
    assert f"holds [{missing!r}]" in msg and "missing diagnosis" in msg


def test_too_few_cells_per_donor_and_cell_type_is_refused_before_any_work(raw_small, tmp_path):
    """~14 cells per donor spread over 7 cell types: every donor-level test would be empty. The
    run stops at validation with the fix named, and writes no run directory."""
    from discovery.io.contract import check_donor_coverage
    from pipelines.run import run_pipeline

    keep = raw_small.obs.groupby("donor", observed=True).sample(n=14, random_state=0).index
    few = raw_small[keep].copy()
    data = tmp_path / "few.h5ad"
    few.write_h5ad(data)
    with pytest.raises(InputError, match="too few cells per donor and cell type") as info:
        run_pipeline(tmp_path / "run", data=data, quiet=True)
    assert "coarser cell types" in str(info.value)
    assert not (tmp_path / "run").exists()
    cover = check_donor_coverage(raw_small, validate(raw_small))
    assert any(min(v.values()) >= 2 for v in cover.values())
