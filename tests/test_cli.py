"""The CLI contract: run, simulate, benchmark; clear errors, no tracebacks; resumable runs."""

from __future__ import annotations

import json

import anndata as ad
import pytest

from discovery.io.contract import get_keys
from discovery.io.simulate import simulate
from pipelines.cli import main
from pipelines.rundir import MANIFEST_SCHEMA_VERSION

from .conftest import SMALL, TINY


@pytest.fixture
def small_h5ad(tmp_path):
    p = tmp_path / "cohort.h5ad"
    simulate("alzheimers", seed=0, **SMALL).write_h5ad(p)
    return p


def test_simulate_command_is_deterministic(tmp_path):
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    for p in (a, b):
        assert main(["simulate", str(p), "--scenario", "null", "--seed", "2", "--donors", "12",
                     "--cells-per-donor", "40", "--genes", "500", "--quiet"]) == 0
    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    assert x.X.data.tobytes() == y.X.data.tobytes()
    assert x.uns["simulation"]["truth_json"] == y.uns["simulation"]["truth_json"]


def test_run_writes_run_directory_and_resumes(small_h5ad, tmp_path, tiny_config):
    out = tmp_path / "run"
    assert main(["run", str(small_h5ad), "--out", str(out), "--quiet",
                 "--config", str(tiny_config)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == MANIFEST_SCHEMA_VERSION
    assert set(manifest["files"]) >= {"adata.h5ad", "model/model.safetensors"}
    assert manifest["input"]["checksum"].startswith("sha256:")
    assert manifest["config"]["keys"]["label_key"] == "diagnosis"
    assert {"input", "preprocess", "baselines", "yardstick"} <= set(manifest["stages"])
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert "torch" in manifest["packages"]
    rev = manifest["code"]["git_revision"]  # None only outside a git checkout
    assert rev is None or (len(rev) == 40 and int(rev, 16) >= 0)
    adata = ad.read_h5ad(out / "adata.h5ad")
    assert "split" in adata.obs and "counts" in adata.layers
    assert (out / "baselines" / "rankings.csv.gz").exists()
    # graphs: one per cell type with enough case cells, validated, exported on request
    index = json.loads((out / "graphs" / "index.json").read_text())
    assert index["hook"] == "pooled" and len(index["graphs"]) >= 3
    mg = next(e for e in index["graphs"] if e["cell_type"] == "Microglia")
    assert mg["max_completeness_error"] < 1e-4
    assert mg["validation"]["spearman_graph"] > 0.99  # one SAE at pooled: exact
    assert (out / "graphs" / "microglia_case.graphml").exists()
    assert main(["export", str(out), "--format", "gexf,cyjs", "--graph", "microglia_case",
                 "--cells", "--quiet"]) == 0
    assert (out / "exports" / "microglia_case.gexf").exists()
    assert (out / "exports" / f"{mg['cell_graphs'][0]}.cyjs").exists()
    assert main(["export", str(out), "--format", "dot", "--quiet"]) == 2
    assert main(["export", str(out), "--graph", "nope", "--quiet"]) == 2
    assert main(["graph", str(out), "--cell-type", "Astrocytes", "--label", "control",
                 "--edge-threshold", "0.9", "--out", str(tmp_path / "astro.json"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "astro.json").read_text())["graph"]["n_cells"] > 0
    assert main(["graph", str(out), "--cell-type", "Pericytes", "--out",
                 str(tmp_path / "x.json"), "--quiet"]) == 2
    assert main(["perturb", str(out), "--genes", "TREM2,APOE", "--cell-type", "Microglia",
                 "--n-null", "5", "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("gene,effect")
    # rerun: unchanged stages are reused, run id kept
    mtime = (out / "adata.h5ad").stat().st_mtime_ns
    assert main(["run", str(small_h5ad), "--out", str(out), "--quiet",
                 "--config", str(tiny_config)]) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["run_id"] == manifest["run_id"]
    assert (out / "adata.h5ad").stat().st_mtime_ns == mtime


def test_renamed_columns_run_when_keys_passed(small_h5ad, tmp_path, capsys, tiny_config):
    adata = ad.read_h5ad(small_h5ad)
    adata.obs = adata.obs.rename(columns={"diagnosis": "status", "donor": "subject",
                                          "cell_type": "celltype", "batch": "seq_run"})
    adata.obs["status"] = adata.obs["status"].map({"AD": "alz", "Control": "ctl"})
    p = tmp_path / "renamed.h5ad"
    adata.write_h5ad(p)
    out = tmp_path / "run_renamed"
    rc = main(["run", str(p), "--out", str(out), "--quiet",
                 "--config", str(tiny_config)])
    assert rc == 2
    assert "obs column 'diagnosis' (given by --label-key) is missing" in capsys.readouterr().err
    # `train` runs input -> preprocess -> model: every stage that reads the renamed columns to
    # split donors and learn the label (the baselines read them the same way, via the keys)
    rc = main(["train", str(p), "--out", str(out), "--quiet", "--config", str(tiny_config),
               "--label-key", "status", "--case",
               "alz", "--donor-key", "subject", "--cell-type-key", "celltype", "--batch-key",
               "seq_run", "--covariate-keys", "sex,age"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["model"]["status"] == "done"
    done = ad.read_h5ad(out / "adata.h5ad")
    # donors are held out whole under the renamed donor column
    assert done.obs.groupby("subject", observed=True)["split"].nunique().max() == 1
    keys = get_keys(done)
    assert keys.case == "alz"
    assert keys.covariate_keys == ("sex", "age")


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "file not found" in err and "Traceback" not in err


def test_failed_run_leaves_previous_outputs_intact(small_h5ad, tmp_path, tiny_config):
    out = tmp_path / "run"
    # `train` stops after the model: enough to leave outputs a failed run must not touch
    assert main(["train", str(small_h5ad), "--out", str(out), "--quiet",
                 "--config", str(tiny_config)]) == 0
    before = (out / "adata.h5ad").read_bytes()
    bad = tmp_path / "bad.h5ad"
    bad.write_text("garbage")
    assert main(["run", str(bad), "--out", str(out), "--quiet",
                 "--config", str(tiny_config)]) == 2
    assert (out / "adata.h5ad").read_bytes() == before
    json.loads((out / "manifest.json").read_text())  # still valid JSON


def test_bundled_cohort_quick_preset(tmp_path):
    """Without DATA the bundled cohort is simulated; the preset and a config file combine (the
    config file shrinks the cohort and the stages so the test takes seconds)."""
    out = tmp_path / "demo"
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["run", "--out", str(out), "--preset", "quick", "--config", str(cfg),
                 "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "simulated"
    assert manifest["config"]["preset"] == "quick"
    # the yardstick scores every planted program for every baseline, and the cell-level
    # Wilcoxon finds the bundled cohort's strong programs (effect 2.0) even at 12 donors
    import pandas as pd

    from discovery.get.run import open_run
    from discovery.io.simulate import truth

    yard = pd.read_csv(out / "baselines" / "yardstick.csv")
    planted = set(truth(open_run(out).adata)["programs"])
    for method, grp in yard.groupby("method"):
        assert set(grp["program"]) == planted, method
        assert grp["precision_at_k"].between(0, 1).all()
    assert yard.loc[yard["method"] == "wilcoxon", "precision_at_k"].mean() >= 0.5


def test_config_file_errors(tmp_path, small_h5ad, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preprocess:\n  n_top_gens: 10\n")
    rc = main(["run", str(small_h5ad), "--out", str(tmp_path / "r"), "--config", str(cfg),
               "--quiet"])
    assert rc == 2
    assert "unknown preprocess settings ['n_top_gens']" in capsys.readouterr().err


def test_benchmark_command_writes_markdown(tmp_path):
    """The Markdown holds every scenario's row, and the twin table shows what a name-blind
    method must show: the same batch false discoveries whether or not the batch genes are in a
    bundled gene set (the twins are the same counts under other names)."""
    out = tmp_path / "b.md"
    rc = main(["benchmark", "--scenario", "alzheimers,alzheimers_unlisted,null", "--seeds", "0",
               "--donors", "12", "--cells-per-donor", "50", "--genes", "500", "--methods",
               "pseudobulk,wilcoxon", "--out", str(out), "--quiet"])
    assert rc == 0
    text = out.read_text()
    assert "| alzheimers | pseudobulk |" in text and "| null | pseudobulk |" in text
    twin = text.split("(twin scenarios)")[1].split("## Per run")[0]
    rows = [line for line in twin.splitlines() if line.startswith("| alzheimers |")]
    assert len(rows) == 2
    for row in rows:
        listed, unlisted, diff = (float(x) for x in row.strip("|").split("|")[2:5])
        assert listed == unlisted and diff == 0
    assert "| alzheimers | wilcoxon | 0.000 |" not in twin  # the batch does reach its top 20
    per_run = text.split("## Per run")[1].split("## Per program")[0]
    lines = [line for line in per_run.splitlines() if line.startswith("| ")][1:]
    assert len(lines) == 6  # 3 scenarios x 2 methods
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        total, listed_fd, unlisted_fd = (int(c) for c in cells[3:6])
        assert total == listed_fd + unlisted_fd


def test_train_command_stops_after_the_model(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--out", str(out), "--preset", "quick", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["model"]["status"] == "done"
    assert "features" not in manifest["stages"]
    assert {"config.json", "model.safetensors", "metrics.json"} <= {
        p.name for p in (out / "model").iterdir()}
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert {"cell_auroc", "donor_auroc", "accuracy", "ece"} <= set(metrics["test"])
    assert "batch" in metrics["shortcut_probe"]
    assert "Writing model shards" not in capsys.readouterr().err


def test_version_and_help_on_every_option(capsys):
    """`--version` names the installed version; every option of every command says what it
    does (argparse shows an option without help as a bare flag)."""
    import argparse

    from discovery import __version__
    from pipelines.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"discovery {__version__}"
    bare = []

    def walk(parser, prefix):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif not a.help and a.dest != "help":
                bare.append(f"{prefix} {'/'.join(a.option_strings) or a.dest}")

    walk(build_parser(), "discovery")
    assert bare == []


@pytest.mark.parametrize("preset", ["standard", "quick"])
def test_config_example_lists_every_key_and_reads_back(tmp_path, preset):
    """The example config holds every key with its value under the preset, commented, and
    `load_config` reads it back to the same settings (empty default sections written out in
    full resolve to the same specs)."""
    from dataclasses import fields

    import yaml

    from discovery.tl.hypotheses import HypothesisSpec
    from pipelines.config import PipelineConfig, load_config

    out = tmp_path / "example.yaml"
    assert main(["config", "--example", "--preset", preset, "--out", str(out)]) == 0
    text = out.read_text()
    written = yaml.safe_load(text)
    assert set(written) == {f.name for f in fields(PipelineConfig)}
    assert text.count("\n  # ") >= 15  # field comments came along
    from_file, direct = load_config(out), load_config(preset=preset)
    assert from_file.to_dict()["cohort"] == direct.to_dict()["cohort"]
    assert from_file.preprocess == direct.preprocess
    assert from_file.features.to_dict() == direct.features.to_dict()
    assert from_file.graph_settings() == direct.graph_settings()
    assert from_file.hypothesis_spec() == direct.hypothesis_spec()
    assert from_file.model.train_config() == direct.model.train_config()
    assert from_file.model.resolved_arch() == direct.model.resolved_arch()
    assert set(written["hypotheses"]) == set(HypothesisSpec.__dataclass_fields__)
    assert main(["config"]) == 2  # nothing asked: a one-line error, not a traceback


def test_user_gene_sets_join_the_enrichment(tiny_run, tmp_path):
    """A .gmt collection given with --gene-sets is tested beside the bundled sets: a user set
    holding the bundled disease-associated microglia genes is enriched wherever the bundled
    set is, with the same p, and its hit names its collection; the labels, which read the
    cited bundled sets only, do not change (a changed config reruns the stages, as any config
    change does)."""
    import shutil

    import pandas as pd

    from discovery.io import bundled

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    dam = bundled.gene_set("Disease-associated microglia").genes
    gmt = tmp_path / "my_sets.gmt"
    gmt.write_text("MY_DAM\thttps://example.org/dam\t" + "\t".join(dam) + "\n"
                   "MY_OTHER\tno link\tACTB\tGAPDH\tNOT_A_GENE\n")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    before = pd.read_json(run / "features" / "annotations.json")
    assert main(["run", "--out", str(run), "--config", str(cfg), "--gene-sets", str(gmt),
                 "--quiet"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["gene_sets"] == [str(gmt.resolve())]
    assert manifest["stages"]["model"]["status"] == "done"
    ann = pd.read_json(run / "features" / "annotations.json")
    assert ann["label"].tolist() == before["label"].tolist()  # cited sets label the features
    with_bundled = 0
    for row in ann.itertuples():
        assert all(e["collection"] == "bundled" for e in row.enrichment)
        assert all(e["collection"] == "my_sets" for e in row.user_enrichment)
        bundled_p = {e["set"]: e["p"] for e in row.enrichment}
        user_p = {e["set"]: e["p"] for e in row.user_enrichment}
        if "Disease-associated microglia" in bundled_p:
            assert user_p["MY_DAM"] == bundled_p["Disease-associated microglia"]
        if row.top_set == "Disease-associated microglia":
            with_bundled += 1
            assert row.user_top_set == "MY_DAM" and row.user_top_set_collection == "my_sets"
    assert with_bundled >= 1  # the tiny cohort's microglia program is found by some feature


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no gene set"),
    ("SET_A desc GENE1 GENE2\n", "line 1 is not a gene set"),
    ("SET_A\tdesc\tG1\nSET_A\tdesc\tG2\n", "'SET_A' appears twice"),
])
def test_bad_gene_set_files_are_refused_before_any_stage(tmp_path, capsys, content, message):
    gmt = tmp_path / "bad.gmt"
    gmt.write_text(content)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--gene-sets", str(gmt), "--quiet"]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_run_files_are_readable_by_colleagues_as_the_umask_allows(tiny_run):
    """Every file of a run is written with the user's umask (0644 under the usual 022), not
    mkstemp's 0600: colleagues on a shared server can read a run, its report and exports."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    files = [p for p in tiny_run.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert len(files) > 20
    wrong = {str(p.relative_to(tiny_run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) & 0o066 != expected & 0o066}
    assert not wrong, wrong
    dirs = [p for p in tiny_run.rglob("*") if p.is_dir()]
    closed = [str(p) for p in dirs if stat.S_IMODE(p.stat().st_mode) & 0o055
              != (0o777 & ~mask) & 0o055]
    assert not closed, closed
