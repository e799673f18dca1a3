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


# ------------------------------------------------------------------------ the hostile corpus
# Every case: a cohort file (or config) a user could bring, and the words the refusal must use.
# `discovery run` must exit 2 with that message, no traceback, before any work (no run
# directory) and without writing anywhere else. Cases that a warning can fix are further down.


def _h5ad(adata, tmp_path, name="data.h5ad"):
    p = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warnings on odd content
        adata.write_h5ad(p)
    return p


def _dense(a):
    a.X = a.X.toarray().astype(np.float32)
    return a


def _case_truncated(a, tmp):
    good = _h5ad(a, tmp, "good.h5ad")
    cut = tmp / "cut.h5ad"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return [cut]


def _case_zero_bytes(a, tmp):
    (tmp / "empty.h5ad").write_bytes(b"")
    return [tmp / "empty.h5ad"]


def _case_not_anndata_hdf5(a, tmp):
    import h5py

    with h5py.File(tmp / "plain.h5ad", "w") as f:
        f["x"] = np.arange(10)
    return [tmp / "plain.h5ad"]


def _set_x(values):
    def case(a, tmp):
        a = _dense(a)
        X = a.X
        values(X)
        a.X = X
        return [_h5ad(a, tmp)]
    return case


def _set_obs(change):
    def case(a, tmp):
        change(a)
        return [_h5ad(a, tmp)]
    return case


def _relabel_first_donors(value):
    def change(a):
        lab = a.obs["diagnosis"].astype(str)
        first = a.obs["donor"].astype(str).isin(a.obs["donor"].astype(str).unique()[:3])
        a.obs["diagnosis"] = np.where(first & (lab == "AD"), value, lab)
    return change


def _mixed_donor(a):
    lab = a.obs["diagnosis"].astype(str).to_numpy().copy()
    d0 = np.flatnonzero(a.obs["donor"].astype(str) == a.obs["donor"].astype(str).iloc[0])
    lab[d0[::2]] = "AD"
    lab[d0[1::2]] = "Control"
    a.obs["diagnosis"] = lab


def _case_csv(counts_text, meta_text=None):
    def case(a, tmp):
        (tmp / "counts.csv").write_text(counts_text)
        args = [tmp / "counts.csv"]
        if meta_text is not None:
            (tmp / "meta.csv").write_text(meta_text)
            args += ["--metadata", tmp / "meta.csv"]
        return args
    return case


def _case_config(cfg):
    def case(a, tmp):
        import json

        (tmp / "big.json").write_text(json.dumps(cfg))
        return [_h5ad(a, tmp), "--config", tmp / "big.json"]
    return case


def _case_yaml_object(a, tmp):
    (tmp / "evil.yaml").write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    return [_h5ad(a, tmp), "--config", tmp / "evil.yaml"]


def _few_cells(a):
    rng = np.random.default_rng(0)  # 14 cells of each donor, spread over its cell types
    keep = np.concatenate([rng.choice(np.flatnonzero(a.obs["donor"] == d), 14, replace=False)
                           for d in a.obs["donor"].unique()])
    a._inplace_subset_obs(np.isin(np.arange(a.n_obs), keep))


_META = "cell,diagnosis,donor,cell_type\nc0,AD,d0,Microglia\nc1,Control,d1,Microglia\n"

CORPUS = {
    "truncated h5ad": (_case_truncated, "is not a readable AnnData .h5ad file"),
    "zero-byte file": (_case_zero_bytes, "is empty (0 bytes)"),
    "HDF5 that is not AnnData": (_case_not_anndata_hdf5, "is not a readable AnnData"),
    "all-zero matrix": (_set_x(lambda X: X.__imul__(0)), "every value is 0"),
    "boolean matrix": (_set_obs(lambda a: setattr(a, "X", a.X.toarray() > 0)),
                       "X has dtype bool; expression must be numeric"),
    "fractional counts": (_set_x(lambda X: X.__setitem__((0, 0), 0.5)),
                          "holds non-integer values"),
    "NaN in counts": (_set_x(lambda X: X.__setitem__((3, 4), np.nan)), "NaN/Inf values"),
    "Inf in counts": (_set_x(lambda X: X.__setitem__((3, 4), np.inf)), "NaN/Inf values"),
    "negative counts": (_set_x(lambda X: X.__setitem__((1, 1), -3)), "holds negative values"),
    "duplicated cell ids": (_set_obs(lambda a: setattr(a, "obs_names",
                                                       ["AAACCTG-1"] * a.n_obs)),
                            "cell ids occur more than once"),
    "label of floats": (_set_obs(lambda a: a.obs.__setitem__(
        "diagnosis", np.random.default_rng(0).random(a.n_obs))),
        "looks like a measurement, not a case/control label"),
    "label spelled two ways": (_set_obs(_relabel_first_donors("ad")),
                               "spells one label in more than one way"),
    "label 'None' as text": (_set_obs(_relabel_first_donors("None")), "missing"),
    "one class only": (_set_obs(lambda a: a.obs.__setitem__("diagnosis", "AD")),
                       "has one class only"),
    "label column missing": (_set_obs(lambda a: a.obs.drop(columns="diagnosis", inplace=True)),
                             "obs column 'diagnosis' (given by --label-key) is missing"),
    "donor with two labels": (_set_obs(_mixed_donor), "carry cells with different"),
    "too few cells per donor and cell type": (_set_obs(_few_cells),
                                              "too few cells per donor and cell type"),
    "gene names are column positions": (_set_obs(lambda a: setattr(
        a, "var_names", [str(i) for i in range(a.n_vars)])),
        "gene names are all column positions"),
    "gene names all empty": (_set_obs(lambda a: setattr(a, "var_names", [""] * a.n_vars)),
                             "gene names are all empty"),
    "counts CSV without metadata": (_case_csv("cell,A,B\nc0,1,2\nc1,0,3\n"),
                                    "pass --metadata"),
    "counts CSV with a header only": (_case_csv("cell,A,B\n", _META), "it is empty"),
    "metadata for other cells": (_case_csv("cell,A,B\nx0,1,2\nx1,0,3\n", _META),
                                 "none of the 2 cell ids"),
    "classifier too large for memory": (_case_config({"model": {"arch": {"d_model": 10**6}}}),
                                        "Nothing was allocated"),
    "a million layers": (_case_config({"model": {"arch": {"n_layers": 10**6}}}),
                         "Nothing was allocated"),
    "SAE too large for memory": (_case_config({"features": {"d_sae": 10**8}}),
                                 "Nothing was allocated. Lower features.d_sae"),
    "YAML that builds Python objects": (_case_yaml_object, "is not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_corpus_is_refused_before_any_work(name, raw_small, tmp_path, capsys):
    build, expect = CORPUS[name]
    src = tmp_path / "src"
    src.mkdir()
    args = [str(x) for x in build(raw_small, src)]
    before = _files(tmp_path)
    out = tmp_path / "run"
    rc = main(["run", *args, "--out", str(out), "--quiet", "--preset", "quick"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2, err
    assert expect in err, err
    assert "Traceback" not in err
    assert not out.exists(), _files(out)
    assert _files(tmp_path) == before  # nothing written anywhere else either


# Cases a warning can fix: the run goes on with a sensible result and says what it did.

def test_semicolon_csv_with_a_byte_order_mark_is_read(tmp_path):
    """A European Excel export: ';' between fields and a UTF-8 BOM before the header."""
    counts = "\ufeffcell;APOE;TREM2;GFAP\nc0;1;0;3\nc1;0;2;1\n"
    (tmp_path / "counts.csv").write_bytes(counts.encode("utf-8"))
    (tmp_path / "meta.csv").write_bytes(
        "\ufeffcell;diagnosis;donor\nc0;AD;d0\nc1;Control;d1\n".encode())
    a = read(tmp_path / "counts.csv", metadata=tmp_path / "meta.csv")
    assert a.shape == (2, 3) and list(a.var_names) == ["APOE", "TREM2", "GFAP"]
    assert list(a.obs["diagnosis"]) == ["AD", "Control"]
    assert a.X.toarray().tolist() == [[1, 0, 3], [0, 2, 1]]


def test_empty_gene_names_are_renamed_with_a_warning(raw_small):
    names = list(raw_small.var_names)
    names[3] = names[7] = ""
    raw_small.var_names = names
    with pytest.warns(UserWarning, match="2 genes have no name"):
        validate(raw_small, Keys())
    assert {"unnamed_gene_3", "unnamed_gene_7"} <= set(raw_small.var_names)
    assert not any(n.startswith("-") for n in raw_small.var_names)


def test_numeric_gene_names_are_kept_with_a_warning(raw_small):
    raw_small.var_names = ["12", "13.5", *raw_small.var_names[2:]]
    with pytest.warns(UserWarning, match="2 gene names are plain numbers"):
        validate(raw_small, Keys())
    assert raw_small.n_vars == 600
    # Entrez ids: all numbers, but gene ids, not positions: kept with a warning
    entrez = raw_small.copy()
    entrez.var_names = [str(7157 + 13 * i) for i in range(entrez.n_vars)]
    with pytest.warns(UserWarning, match="600 gene names are plain numbers"):
        validate(entrez, Keys())
    assert entrez.var_names[0] == "7157"


def test_a_placeholder_gene_name_is_dropped_with_a_warning(raw_small):
    """A name on hundreds of columns would fill the gene panel with its copies."""
    raw_small.var_names = ["NA"] * 300 + list(raw_small.var_names[300:])
    with pytest.warns(UserWarning, match="300 of 600 columns share a name"):
        validate(raw_small, Keys())
    assert raw_small.n_vars == 300 and "NA" not in set(raw_small.var_names)
    assert raw_small.var_names.is_unique


def test_extreme_values_are_warned_about(raw_small):
    raw_small = _dense(raw_small)
    raw_small.X[0, 0] = 1e12
    with pytest.warns(UserWarning, match="values up to 1e\\+12 .* implausible"):
        validate(raw_small, Keys())


def test_a_one_cell_donor_is_warned_about(raw_small):
    from discovery.io.contract import check_donor_coverage

    lone = raw_small[:1].copy()
    lone.obs_names = ["lone-cell"]
    lone.obs["donor"] = "D_lone"
    a = ad.concat([raw_small, lone])
    with pytest.warns(UserWarning, match="1 of 17 donors have fewer than 10 cells .*D_lone "
                                         "\\(1 cell\\)"):
        keys = validate(a, Keys())
        check_donor_coverage(a, keys)


def test_duplicated_gene_names_are_made_unique_with_a_warning(raw_small):
    raw_small.var_names = ["APOE", "APOE", *raw_small.var_names[2:]]
    with pytest.warns(UserWarning, match="1 duplicated gene names"):
        validate(raw_small, Keys())
    assert raw_small.var_names.is_unique and raw_small.n_vars == 600


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


# ------------------------------------------------------------- a damaged or linked run directory
def test_a_link_out_of_the_run_directory_is_refused(tiny_run, tmp_path, capsys):
    """``model/`` replaced by a link to a folder elsewhere: a rerun would delete and rewrite
    that folder; it is refused before any work and the folder is untouched."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(tiny_run, run)
    shutil.move(run / "model", elsewhere)
    (run / "model").symlink_to(elsewhere, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    manifest = (run / "manifest.json").read_bytes()
    from tests.conftest import TINY

    cfg = tmp_path / "tiny.json"
    cfg.write_text(__import__("json").dumps(TINY))
    rc = main(["run", "--config", str(cfg), "--out", str(run), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "is a symbolic link to" in err and "outside the run directory" in err
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    assert (run / "manifest.json").read_bytes() == manifest


def test_a_damaged_checkpoint_is_a_clear_error(tiny_run, tmp_path, capsys):
    """A truncated model.safetensors, or one tensor short: a one-line error naming the file,
    never a traceback and never a model with randomly initialised weights."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "model" / "model.safetensors"
    good = weights.read_bytes()
    tensors = load_file(str(weights))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    rc = main(["perturb", str(run), "--genes", "APOE", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "does not match config.json" in err and "missing_keys" in err, err
    weights.write_bytes(good[: len(good) // 2])
    rc = main(["perturb", str(run), "--genes", "APOE", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "model.safetensors is truncated" in err and "Traceback" not in err, err


def test_a_feedback_file_that_is_not_a_database_is_left_alone(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "feedback.sqlite").write_text("notes, not a database")
    rc = main(["feedback", str(run), "--target", "H1", "--verdict", "disagree", "--reason",
               "batch", "--by", "me", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "is not a feedback database" in err and "Traceback" not in err, err
    assert (run / "feedback.sqlite").read_text() == "notes, not a database"


def test_a_truncated_json_file_is_named(tmp_path):
    from discovery.io.files import read_json

    p = tmp_path / "hypotheses.json"
    p.write_text('{"hypotheses": [{"id": "H1", ')
    with pytest.raises(InputError, match="hypotheses.json is not valid JSON .* truncated"):
        read_json(p)


def test_a_new_run_in_an_existing_folder_leaves_its_files_alone(tmp_path):
    """Cleaning temporary files and refusing links applies to run directories only: `--out` on
    an existing folder of other work (a `.x.tmp` of another tool, a link out) changes nothing
    there; in a run directory (manifest.json) the run's own leftovers go."""
    from pipelines.rundir import RunDir

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / ".editor.swp.tmp").write_text("someone else's")
    (folder / "python").symlink_to("/usr/bin/env")
    RunDir(folder).init(config={}, seed=0, input_desc={"kind": "test"})
    assert (folder / ".editor.swp.tmp").read_text() == "someone else's"
    (folder / "python").unlink()
    (folder / ".adata.h5ad.abcd1234.tmp").write_text("left by a killed run")
    RunDir(folder).init(config={}, seed=0, input_desc={"kind": "test"})
    assert not (folder / ".adata.h5ad.abcd1234.tmp").exists()
