"""Hostile input: every malformed file or name is a clear error with a non-zero exit code, leaves
no partial run behind and writes nothing outside the run directory; fixable defects (empty cells
and genes, odd gene names) are fixed with a warning instead of corrupting the analysis."""

from __future__ import annotations

import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from discovery.io.contract import InputError, Keys, read, validate
from discovery.pp.preprocess import drop_empty, preprocess
from pipelines.cli import main
from pipelines.rundir import child_run_dir


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run_fails(data, tmp_path, capsys, expect: str) -> None:
    """``discovery run DATA`` exits 2 with ``expect`` in its message, no traceback, no run dir."""
    before = _files(tmp_path)
    out = tmp_path / "run"
    rc = main(["run", str(data), "--out", str(out), "--quiet", "--preset", "quick"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expect in " ".join(err.split()), err
    assert "Traceback" not in err
    assert not out.exists(), _files(out)
    assert _files(tmp_path) == before  # nothing written anywhere else either


def _write(adata: ad.AnnData, path) -> str:
    adata.write_h5ad(path)
    return str(path)


def test_truncated_h5ad(raw_small, tmp_path, capsys):
    good = tmp_path / "good.h5ad"
    raw_small.write_h5ad(good)
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    _run_fails(cut, tmp_path, capsys, "is not a readable AnnData .h5ad file")


def test_zero_byte_file(tmp_path, capsys):
    p = tmp_path / "empty.h5ad"
    p.write_bytes(b"")
    _run_fails(p, tmp_path, capsys, "is empty (0 bytes)")


def test_wrong_dtype(raw_small, tmp_path, capsys):
    raw_small.X = raw_small.X.toarray() > 0
    p = _write(raw_small, tmp_path / "bool.h5ad")
    _run_fails(p, tmp_path, capsys, "X has dtype bool; expression must be numeric")


def test_all_zero_matrix(raw_small, tmp_path, capsys):
    raw_small.X = sp.csr_matrix(raw_small.shape, dtype=np.float32)
    p = _write(raw_small, tmp_path / "zero.h5ad")
    _run_fails(p, tmp_path, capsys, "every value is 0")


def test_duplicated_cell_ids(raw_small, tmp_path, capsys):
    raw_small.obs_names = ["AAACCTG-1"] * raw_small.n_obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning on write
        p = _write(raw_small, tmp_path / "dup.h5ad")
    _run_fails(p, tmp_path, capsys, "cell ids occur more than once in obs_names")


def test_label_column_of_floats(raw_small, tmp_path, capsys):
    raw_small.obs["diagnosis"] = np.random.default_rng(0).random(raw_small.n_obs)
    p = _write(raw_small, tmp_path / "float.h5ad")
    _run_fails(p, tmp_path, capsys, "looks like a measurement, not a case/control label")


def test_empty_cells_and_genes_are_dropped_with_a_warning(raw_small):
    X = raw_small.X.toarray()
    X[:7] = 0
    X[:, :5] = 0
    raw_small.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="dropped 7 of .* cells with no counts"):
        preprocess(raw_small)
    assert raw_small.n_obs == X.shape[0] - 7
    assert raw_small.n_vars == X.shape[1] - 5
    x = raw_small.X.toarray() if sp.issparse(raw_small.X) else raw_small.X
    assert np.isfinite(x).all()  # no NaN from dividing by an empty library


def test_unicode_and_odd_gene_names_survive(raw_small):
    odd = {0: "GÈNE-α", 1: "weird/name with space", 2: "ΔNp63", 3: "<tag>&amp;"}
    raw_small.var_names = [odd.get(i, g) for i, g in enumerate(raw_small.var_names)]
    preprocess(raw_small, copy=False)
    assert set(odd.values()) <= set(raw_small.var_names)


def test_pickle_checkpoint_is_refused(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model" / "model.safetensors").unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")
    rc = main(["perturb", str(run), "--genes", "APOE", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "refusing to load" in err and "pickle" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x" * 101, "a\\b",
                                  "run\n", "run\n../x"])
def test_run_names_cannot_leave_the_run_root(tmp_path, name):
    root = tmp_path / "runs"
    root.mkdir()
    with pytest.raises(InputError, match="run name .* is not allowed"):
        child_run_dir(root, name)
    assert child_run_dir(root, "cohort_1.refined") == (root / "cohort_1.refined").resolve()


def test_batch_run_name_with_dotdot_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "batch.yaml"
    spec.write_text(f"out: {tmp_path / 'runs'}\nruns:\n  - name: ../../evil\n    scenario: null\n")
    before = _files(tmp_path)
    rc = main(["batch", str(spec), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "needs a 'name' made of letters" in err
    assert _files(tmp_path) == before


# ------------------------------------------------------------------------------------- fuzzing
_counts = st.integers(0, 50).map(float)
_odd = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def _cohorts(draw):
    """Mostly well-formed small cohorts (a label per donor, integer counts), each with a chance
    of one defect: odd values, a missing or NaN key, a mixed-label donor, odd gene names."""
    n_cells = draw(st.integers(0, 24))
    n_genes = draw(st.integers(0, 6))
    odd_rate = draw(st.sampled_from([0.0, 0.0, 0.1]))
    X = np.array([[draw(_odd) if odd_rate and draw(st.floats(0, 1)) < odd_rate
                   else draw(_counts) for _ in range(n_genes)] for _ in range(n_cells)],
                 dtype=np.float32).reshape(n_cells, n_genes)
    donor_label = {f"d{i}": draw(st.sampled_from(["AD", "Control", "AD", "Control", "other"]))
                   for i in range(6)}
    donors = draw(st.lists(st.sampled_from(sorted(donor_label)), min_size=n_cells,
                           max_size=n_cells))
    obs = pd.DataFrame({"diagnosis": [donor_label[d] for d in donors], "donor": donors,
                        "cell_type": "Microglia"}, index=[f"c{i}" for i in range(n_cells)])
    defect = draw(st.sampled_from(["none", "none", "none", "nan", "drop", "mixed"]))
    if defect == "nan" and n_cells:
        obs.loc[obs.index[0], "diagnosis"] = np.nan
    elif defect == "drop":
        obs = obs.drop(columns=draw(st.sampled_from(["diagnosis", "donor", "cell_type"])))
    elif defect == "mixed" and n_cells:
        obs.loc[obs.index[0], "diagnosis"] = "AD" if obs["diagnosis"].iloc[0] != "AD" else "Control"
    genes = draw(st.lists(st.sampled_from(["A", "B", "MT-1", "Ω", "g/1", "C"]),
                          min_size=n_genes, max_size=n_genes))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_cohorts())
def test_fuzz_validate_is_an_input_error_or_valid(adata):
    """Any AnnData either validates (and then preprocessing's empty-cell step leaves only
    non-empty cells) or raises InputError — never another exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            keys = validate(adata, Keys(case="AD"), min_donors_per_class=1)
        except InputError as err:
            event(f"InputError: {str(err)[:40]}")
            return
        event("valid")
        labels = set(adata.obs["diagnosis"].astype(str))
        drop_empty(adata)
    assert keys.case == "AD" and set(keys.controls) == labels - {"AD"} and keys.controls
    assert adata.var_names.is_unique
    assert (np.asarray(adata.X.sum(1)).ravel() > 0).all()
    assert np.isfinite(adata.X).all() and (adata.X >= 0).all()


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512), st.sampled_from([".h5ad", ".csv", ".tsv"]))
def test_fuzz_loader_bytes(tmp_path, blob, suffix):
    """Arbitrary bytes in a data file: read() loads them or raises InputError, nothing else."""
    p = tmp_path / f"data{suffix}"
    p.write_bytes(blob)
    meta = tmp_path / "meta.csv"
    meta.write_text("cell,diagnosis,donor,cell_type\nc0,AD,d0,Microglia\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            adata = read(p, metadata=meta if suffix != ".h5ad" else None)
        except InputError:
            return
    assert isinstance(adata, ad.AnnData)


def test_export_writes_and_reads_nothing_outside_the_run(tiny_run, tmp_path, capsys):
    """An edited graphs/index.json (a slug with '../', a cell-graph file outside the run) and a
    symlinked exports/ folder are refused with exit 2; nothing is written outside the run."""
    import json

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    index_path = run / "graphs" / "index.json"
    clean = index_path.read_text()

    def export(*extra: str) -> tuple[int, str]:
        rc = main(["export", str(run), "--format", "graphml", "--quiet", *extra])
        return rc, " ".join(capsys.readouterr().err.split())

    index = json.loads(clean)
    index["graphs"][0]["slug"] = "../../outside/pwn"
    index_path.write_text(json.dumps(index))
    rc, err = export()
    assert rc == 2 and "is not a plain file name" in err and "Traceback" not in err

    index = json.loads(clean)
    index["graphs"][0]["files"].append("graphs/cells/../../../outside/secret.json")
    (outside / "secret.json").write_text("{}")
    index_path.write_text(json.dumps(index))
    rc, err = export("--cells")
    assert rc == 2 and "outside the run directory" in err

    index_path.write_text(clean)
    shutil.rmtree(run / "exports", ignore_errors=True)
    (run / "exports").symlink_to(outside, target_is_directory=True)
    rc, err = export()
    assert rc == 2 and "outside the run directory" in err
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]

    (run / "exports").unlink()
    rc, err = export()
    assert rc == 0, err
    assert any(p.suffix == ".graphml" for p in (run / "exports").iterdir())


def test_safe_name_and_inside_run(tmp_path):
    from discovery.io.layout import inside_run, safe_name

    for bad in ("../x", "a/b", "..", "", ".hidden", "x\n", None):
        with pytest.raises(InputError, match="not a plain file name"):
            safe_name(bad)
    assert safe_name("microglia_case") == "microglia_case"
    run = tmp_path / "run"
    (run / "graphs").mkdir(parents=True)
    assert inside_run(run, "graphs/a.json") == (run / "graphs" / "a.json").resolve()
    for bad in ("../x.json", "/etc/passwd", "graphs/../../x"):
        with pytest.raises(InputError, match="outside the run directory"):
            inside_run(run, bad)
    (run / "graphs" / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError, match="outside the run directory"):
        inside_run(run, "graphs/link/x.json")
