"""Feedback that explains why, acted on: suppression is exact, the loop runs from the CLI and
the app, runs are linked, and every step is in the audit trail."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from streamlit.testing.v1 import AppTest

from discovery.get.run import open_run
from discovery.io.feedback import FeedbackStore, default_url
from discovery.io.simulate import truth
from discovery.tl.classifier import encode
from discovery.tl.refine import (
    _pooled_mean,
    _projection_hook,
    covariate_penalty,
    finetune_without,
    fold_projection,
    suppression_basis,
)
from models.errors import InputError
from pipelines.cli import main

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def parent(tiny_run, tmp_path):
    out = tmp_path / "parent"
    shutil.copytree(tiny_run, out)
    (out / "feedback.sqlite").unlink(missing_ok=True)
    return out


def _batch_feature(run: Path) -> str:
    ann = pd.read_json(run / "features" / "annotations.json")
    ann = ann[ann["frac_active"] > 0]
    conf = ann[ann["confounded_by"].notna()]
    return str((conf if len(conf) else ann).iloc[0]["feature"])


def test_folded_head_edit_equals_mean_ablation_along_the_directions(tiny_run):
    run = open_run(tiny_run)
    model, sae = run.model, run.saes[0].sae
    basis = suppression_basis(sae, [0, 3, 5])
    assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)
    center = _pooled_mean(run.adata, model)
    folded = fold_projection(model, basis, center)
    x = encode(run.adata[:200], list(model.config.gene_names))
    with torch.no_grad():
        hooked = model.run_with_hooks(x, {"pooled": _projection_hook(basis, center)}).logits
        np.testing.assert_allclose(folded(x).logits.numpy(), hooked.numpy(), atol=1e-4)
        # the head no longer reads the suppressed directions at all
        assert folded.head.weight.data[0] @ basis == pytest.approx(0.0, abs=1e-5)


def test_finetune_runs_in_the_one_training_loop_and_ignores_the_directions(tiny_run):
    """finetune_without: the shared training loop with the projection hook and the covariate
    penalty; the child's head reads nothing along the suppressed directions, and the loop kept
    the epoch with the best validation AUROC."""
    run = open_run(tiny_run)
    model, sae = run.model, run.saes[0].sae
    basis = suppression_basis(sae, [0, 3])
    child, hist = finetune_without(run.adata, model, basis, covariate="batch", epochs=3, seed=0)
    aucs = [e["val_auroc"] for e in hist["epochs"]]
    assert 1 <= len(aucs) <= 3 and hist["best_val_auroc"] == max(aucs)
    x = encode(run.adata[:100], list(model.config.gene_names))
    shift = 5.0 * basis.sum(1)
    with torch.no_grad():
        moved = child.run_with_hooks(x, {"pooled": lambda a, n: a + shift}).logits
        np.testing.assert_allclose(moved.numpy(), child(x).logits.numpy(), atol=1e-4)
        # the parent does read them: the check can fail
        parent_moved = model.run_with_hooks(x, {"pooled": lambda a, n: a + shift}).logits
        assert not np.allclose(parent_moved.numpy(), model(x).logits.numpy(), atol=1e-3)
    # the penalty is zero when the covariate has one level within each label
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    same = covariate_penalty(y, torch.zeros(8, dtype=torch.long))
    acts = {"pooled": torch.randn(8, 4)}
    assert float(same(acts, torch.arange(8))) == 0.0
    split = covariate_penalty(y, torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]))
    acts = {"pooled": torch.tensor([[0.0], [0.0], [4.0], [4.0], [1.0], [1.0], [1.0], [1.0]])}
    assert float(split(acts, torch.arange(8))) > 0.5  # batch splits the controls apart


@pytest.mark.slow
def test_feedback_and_refine_from_the_cli(parent, tmp_path, capsys):
    feature = _batch_feature(parent)
    assert main(["refine", str(parent), "--out", str(tmp_path / "child"), "--quiet"]) == 2
    assert "no actionable feedback" in capsys.readouterr().err
    assert main(["feedback", str(parent), "--target", feature, "--verdict", "disagree",
                 "--reason", "batch", "--note", "dissociation stress genes", "--by", "Ada",
                 "--quiet"]) == 0
    assert main(["feedback", str(parent), "--target", "nonsense", "--verdict", "agree",
                 "--reason", "other", "--quiet"]) == 2
    child = tmp_path / "child"
    assert main(["refine", str(parent), "--out", str(child), "--mode", "ablate",
                 "--quiet"]) == 0
    manifest = json.loads((child / "manifest.json").read_text())
    parent_id = json.loads((parent / "manifest.json").read_text())["run_id"]
    assert manifest["parent_run"] == parent_id
    assert manifest["feedback"]["suppressed"] == [feature]
    # later stages are keyed on the child's weights, so a rebuilt child never reuses stale ones
    import hashlib

    assert manifest["stages"]["model"]["params"]["weights_sha256"] == hashlib.sha256(
        (child / "model" / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["stages"]["features"]["params"]["model_stage"] == \
        manifest["stages"]["model"]["params_hash"]
    res = json.loads((child / "refine.json").read_text())
    assert res["parent_run"] == parent_id and res["mode"] == "ablate"
    for side in ("before", "after"):
        assert {"test_donor_auroc", "balanced_donor_auroc", "covariate_attribution_share",
                "program_ranks"} <= set(res[side])
    # the suppressed feature no longer feeds the case logit in any child graph
    for e in json.loads((child / "graphs" / "index.json").read_text())["graphs"]:
        g = json.loads((child / "graphs" / f"{e['slug']}.json").read_text())
        w = [ed["weight"] for ed in g["edges"] if ed["source"] == feature
             and ed["target"] == "output"]
        assert all(abs(v) < 1e-3 for v in w), (e["slug"], w)
    assert (child / "hypotheses.json").is_file() and (child / "report.html").is_file()
    # audit trail: the feedback, and each step it caused, linked to the child run
    store = FeedbackStore(default_url(parent))
    assert store.items(parent_id)["note"].tolist() == ["dissociation stress genes"]
    actions = store.actions(parent_id)
    assert ["refine:start", "propagate:proposed", "generalise:check", "model:ablate",
            "child:done"] == actions["action"].tolist()
    assert actions["child_run"].dropna().str.endswith("child").all()


@pytest.mark.slow
def test_refine_loop_from_the_app(parent, monkeypatch):
    monkeypatch.setenv("DISCOVERY_RUN", str(parent))
    monkeypatch.delenv("DISCOVERY_FEEDBACK_URL", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("app_pages/feedback.py")
    at.run()
    at.radio(key="fb_kind").set_value("feature").run()
    feature = _batch_feature(parent)
    at.selectbox(key="fb_target").set_value(feature)
    at.selectbox(key="fb_reason").set_value("technical_artifact")
    at.text_input(key="fb_author").input("Ada")
    at.button[0].click().run()
    assert any("Saved as feedback" in s.value for s in at.success)
    at.radio(key="rf_mode").set_value("ablate")
    at.text_input(key="rf_name").input("child-from-app")
    at.button[1].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # the refine is a job of its own: the page shows its progress, and it outlives the page
    child = parent.parent / "child-from-app"
    from pipelines.jobs import job_state

    assert job_state(child) in ("running", "done")
    deadline = time.time() + 600
    while job_state(child) == "running" and time.time() < deadline:
        time.sleep(1)
    assert job_state(child) == "done", (child / "job.log").read_text()
    at.run()
    assert any("Child run child-from-app" in s.value and "complete" in s.value
               for s in at.success), [e.value for e in at.error]
    assert json.loads((child / "manifest.json").read_text())["parent_run"]
    actions = FeedbackStore(default_url(parent)).actions()
    assert "child:done" in set(actions["action"])


@pytest.mark.slow
def test_retrain_withholds_the_genes_that_carry_the_batch(parent, tmp_path):
    """``--mode retrain``: the marked features' driver genes that batch explains better than the
    label (donor level) leave the model's panel, and the model is retrained without them."""
    from discovery.io.simulate import truth

    ann = pd.read_json(parent / "features" / "annotations.json")
    marked = ann.loc[(ann["confounded_by"] == "batch") & (ann["frac_active"] > 0), "feature"]
    assert len(marked) >= 3
    for f in marked:
        assert main(["feedback", str(parent), "--target", f, "--verdict", "disagree",
                     "--reason", "batch", "--by", "Ada", "--quiet"]) == 0
    child = tmp_path / "retrained"
    assert main(["refine", str(parent), "--out", str(child), "--mode", "retrain",
                 "--quiet"]) == 0
    res = json.loads((child / "refine.json").read_text())
    metrics = json.loads((child / "model" / "metrics.json").read_text())
    withheld = metrics["refine"]["history"]["withheld"]["genes"]
    batch_genes = set(truth(open_run(parent).adata)["artifacts"]["technical batch"]["genes"])
    assert len(withheld) >= 5
    # mostly the planted batch program (tiny cohort: 12 donors, so a few chance genes)
    assert np.mean([g in batch_genes for g in withheld]) >= 0.6, withheld
    child_genes = json.loads((child / "model" / "config.json").read_text())["gene_names"]
    parent_genes = json.loads((parent / "model" / "config.json").read_text())["gene_names"]
    hist1 = metrics["refine"]["history"]
    # the panel is chosen again on the corrected data: same size, none of the withheld genes
    assert not set(child_genes) & set(withheld)
    assert len(child_genes) == len(parent_genes)
    assert hist1["panel"]["entered"] == sorted(set(child_genes) - set(parent_genes))
    # the batch's depth difference was thinned away
    assert hist1["depth_matched"]["thinned"], hist1.get("depth_matched")
    assert res["mode"] == "retrain" and (child / "hypotheses.json").is_file()
    actions = FeedbackStore(default_url(parent)).actions(res["parent_run"])["action"].tolist()
    assert "retrain:withheld" in actions and actions[-1] == "child:done"

    # second round, a QC reason: the expert names the mitochondrial fraction on the child. The
    # grandchild is retrained on data normalised without mitochondrial reads, without the MT
    # genes, and still without the batch genes of the first round
    f = _batch_feature(child)
    assert main(["feedback", str(child), "--target", f, "--verdict", "disagree", "--reason",
                 "technical_artifact", "--note", "mitochondrial fraction", "--by", "Ada",
                 "--quiet"]) == 0
    assert main(["refine", str(child), "--out", str(tmp_path / "bad"), "--mode", "retrain",
                 "--covariate", "no_such_column", "--quiet"]) == 2
    grand = tmp_path / "qc"
    assert main(["refine", str(child), "--out", str(grand), "--mode", "retrain",
                 "--covariate", "pct_counts_mt", "--quiet"]) == 0
    hist = json.loads((grand / "model" / "metrics.json").read_text())["refine"]["history"]
    grand_genes = json.loads((grand / "model" / "config.json").read_text())["gene_names"]
    mt_in_panel = {g for g in child_genes if g.startswith("MT-")}
    mt_all = {g for g in open_run(child).adata.var_names if g.startswith("MT-")}
    assert mt_in_panel and set(hist["withheld"]["genes"]) == mt_all
    assert set(hist["withheld_before"]) == set(withheld)
    assert not set(grand_genes) & (set(withheld) | mt_in_panel)
    assert len(grand_genes) == len(parent_genes)
    # every MT gene and every gene withheld so far is left out of the library size
    assert hist["renormalised"]["group"] == "refine_size_without"
    gad = open_run(grand).adata
    assert gad.uns["normalize"]["params"]["size_without"] == "refine_size_without"
    out_of_size = set(gad.var_names[gad.var["refine_size_without"].to_numpy(bool)])
    assert out_of_size == set(gad.var_names[gad.var["mt"].to_numpy(bool)]) | set(withheld)
    res2 = json.loads((grand / "refine.json").read_text())
    assert res2["covariate"] == "pct_counts_mt"
    log = FeedbackStore(default_url(child)).actions(res2["parent_run"])
    detail = json.loads(log.loc[log["action"] == "retrain:withheld", "detail"].iloc[-1])
    assert detail["renormalised"]["group"] == "refine_size_without"


def test_artifact_genes_floor_is_calibrated_on_null_covariates(tiny_run):
    """The withholding rule is calibrated on data, not on a planted value: over 20 random
    donor-level 'batches' that explain nothing, the data-derived effect floor (median + 3 MADs
    of the covariate's effect over the panel) is the edge of the effects' typical reach (a
    few percent of null effects lie beyond it: |effects| on few donors are heavy-tailed), and
    the whole rule withholds genes in at most 2 of the 20 (BH at 5% over the panel holds the
    chance of any false withholding near 1 in 20). The planted batch, through the same rule, is
    found."""
    from discovery.tl.refine import artifact_genes

    run = open_run(tiny_run)
    adata = run.adata
    ann = pd.read_json(tiny_run / "features" / "annotations.json")
    panel = list(run.model.config.gene_names)
    donors = adata.obs["donor"].astype(str)
    ids = sorted(set(donors))
    above, hit = [], 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        fake = dict(zip(ids, rng.permutation(np.arange(len(ids)) % 2).astype(str)))
        adata.obs["fake_batch"] = donors.map(fake).astype("category")
        res = artifact_genes(adata, ann, ann["index"].tolist(), covariate="fake_batch",
                             genes=panel)
        assert res["candidates"] == len(panel) > 100
        effects = np.array([r["effect"] for r in res["table"]])
        above.append(float((effects > res["min_effect"]).mean()))
        hit += bool(res["genes"])
    print(f"null: share above floor {np.mean(above):.3f}, draws withholding {hit}/20")
    assert np.mean(above) < 0.1
    assert hit <= 2
    real = artifact_genes(adata, ann, ann["index"].tolist(), covariate="batch", genes=panel)
    print(f"batch: floor {real['min_effect']}, withheld {len(real['genes'])}")
    assert len(real["genes"]) >= 5
    truth_genes = set(truth(adata)["artifacts"]["technical batch"]["genes"])
    assert len(set(real["genes"]) & truth_genes) >= 0.8 * len(real["genes"])
    # a fixed floor is still possible, and a bad one is refused by name
    fixed = artifact_genes(adata, ann, [], covariate="batch", genes=panel, min_effect=0.5)
    assert fixed["min_effect"] == 0.5
    with pytest.raises(InputError, match="min_effect must be 'auto' or a number"):
        artifact_genes(adata, ann, [], covariate="batch", genes=panel, min_effect="big")


def test_renormalising_without_mitochondrial_reads_removes_their_share(tiny_run):
    """After renormalisation every cell's non-mitochondrial reads sum to the target, so the
    mitochondrial fraction no longer scales every other gene (it did before)."""
    from discovery.tl.refine import renormalise_without

    adata = open_run(tiny_run).adata
    mt = adata.var["mt"].to_numpy(bool)
    assert mt.sum() >= 5

    def nuclear_total(a):
        return np.asarray(np.expm1(a.X[:, ~mt].toarray()).sum(1)).ravel()

    before = nuclear_total(adata)
    pct = adata.obs["pct_counts_mt"].to_numpy()
    assert np.corrcoef(before, pct)[0, 1] < -0.9  # more mito reads, less of everything else
    info = renormalise_without(adata, "mt")
    after = nuclear_total(adata)
    np.testing.assert_allclose(after, 1e4, rtol=1e-4)
    assert set(info["genes"]) == set(adata.var_names[mt])
    assert 0.5 < info["median_size_ratio"] < 1
    assert adata.uns["normalize"]["params"]["size_without"] == "mt"


def test_matching_depth_thins_the_deeper_batch_to_the_shallower_one(tiny_run):
    """A batch sequenced deeper is binomially thinned, per cell type, to the other batch's
    depth: medians agree afterwards, counts only go down, the result is seeded, and nothing is
    thinned when the batches already agree."""
    from discovery.tl.refine import match_depth

    adata = open_run(tiny_run).adata
    counts = adata.layers["counts"].tocsr().astype(np.float64)
    deep = (adata.obs["batch"].astype(str) == adata.obs["batch"].astype(str).iloc[0]).to_numpy()
    # make one batch 1.6x deeper: its counts x 1.6, rounded
    scaled = (sp.diags(np.where(deep, 1.6, 1.0)) @ counts).tocsr()
    scaled.data = np.round(scaled.data)
    adata.layers["counts"] = scaled
    a, b = adata.copy(), adata.copy()
    info = match_depth(a, "batch", seed=3)
    match_depth(b, "batch", seed=3)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0  # seeded
    assert info["thinned"], info
    assert (a.layers["counts"] - scaled).max() <= 0  # thinning never adds counts
    ct = a.obs["cell_type"].astype(str).to_numpy()
    total = np.asarray(a.layers["counts"].sum(1)).ravel()
    np.testing.assert_allclose(a.obs["total_counts"], total)  # QC metrics recomputed
    first = a.obs["batch"].astype(str).iloc[0]
    for row in info["thinned"]:  # the deep batch is thinned, the other kept whole
        assert (row["keep_probability"] < 0.95 if row["level"] == first
                else row["keep_probability"] == 1.0), row
    for c in {r["cell_type"] for r in info["thinned"]}:
        med = [np.median(total[(ct == c) & (deep == d)]) for d in (True, False)]
        assert abs(np.log(med[0] / med[1])) < 0.15, (c, med)
    # X follows the thinned counts
    np.testing.assert_allclose(np.expm1(a.X[:5].toarray()).sum(1), 1e4, rtol=1e-3)
    # batches of equal depth are left alone
    same = adata.copy()
    same.layers["counts"] = counts.tocsr()
    assert match_depth(same, "batch", min_ratio=1.5)["thinned"] == []


def test_refine_reads_the_users_batch_column_name():
    """A cohort whose batch column is ``seq_run``: annotations call the term ``batch``, so the
    check is fitted on ``r2_batch`` and the retraining acts on the ``seq_run`` column (it once
    answered "annotations have no r2_seq_run column")."""
    from collections import Counter

    from discovery.tl.refine import fit_check
    from pipelines.child_run import covariate_and_term

    assert covariate_and_term(None, Counter({"batch": 3}), "seq_run") == ("seq_run", "batch")
    assert covariate_and_term("seq_run", Counter(), "seq_run") == ("seq_run", "batch")
    assert covariate_and_term(None, Counter({"pct_counts_mt": 2, "batch": 1}), "seq_run") == (
        "pct_counts_mt", "pct_counts_mt")
    assert covariate_and_term(None, Counter(), None) == (None, None)
    ann = pd.DataFrame({"index": [0, 1, 2], "feature": ["F0", "F1", "F2"],
                        "r2_batch": [0.4, 0.5, 0.01], "r2_label": [0.05, 0.1, 0.2],
                        "frac_active": [0.2, 0.2, 0.2]})
    _, term = covariate_and_term("seq_run", Counter(), "seq_run")
    check = fit_check(ann, [0], covariate=term)
    assert check["rule"] is not None and check["flags"] == ["F1"]


def test_aligned_technical_finds_a_qc_metric_that_carries_the_label(tiny_run):
    """A mitochondrial fraction higher in case donors is reported (AUROC > 0.5, p < 0.05) from
    the discovery donors alone; the same values shuffled across donors are not, and a shift
    planted only in the test donors is never seen (their labels are not read)."""
    from discovery.io.contract import case_mask, get_keys
    from discovery.tl.refine import aligned_technical

    adata = open_run(tiny_run).adata.copy()
    keys = get_keys(adata)
    rng = np.random.default_rng(0)
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()
    case = case_mask(adata, keys)
    base = {d: rng.normal(3.0, 0.3) for d in sorted(set(donors))}
    noise = rng.normal(0, 0.5, adata.n_obs)
    adata.obs["pct_counts_mt"] = [base[d] for d in donors] + 1.5 * case + noise
    found = aligned_technical(adata, covariates=("pct_counts_mt",))
    assert [r["covariate"] for r in found] == ["pct_counts_mt"]
    assert found[0]["donor_auroc"] > 0.9 and found[0]["p"] < 0.05
    n_disc = len(set(donors[adata.obs["split"].isin(["train", "val"]).to_numpy()]))
    assert found[0]["n_case"] + found[0]["n_control"] == n_disc

    adata.obs["pct_counts_mt"] = [base[d] for d in donors] + noise
    assert aligned_technical(adata, covariates=("pct_counts_mt",)) == []
    # a shift too small to be a shortcut is not reported, however it tests
    small = [base[d] for d in donors] + 1.5 * case + noise
    assert aligned_technical(adata, covariates=("x",), values={"x": small},
                             min_auroc_shift=0.51) == []
    # cells are not donors: data without donors report nothing
    cells = adata.copy()
    cells.uns["discovery"] = {**cells.uns["discovery"],
                              "keys": json.dumps({**keys.to_dict(), "donor_key": "cell_unit"})}
    cells.obs["cell_unit"] = cells.obs_names
    assert aligned_technical(cells, covariates=("x",), values={"x": small}) == []
    test = (adata.obs["split"] == "test").to_numpy()
    adata.obs["pct_counts_mt"] = [base[d] for d in donors] + 5.0 * (case & test) + noise
    assert aligned_technical(adata, covariates=("pct_counts_mt",)) == []


def test_match_depth_to_a_quantile_thins_only_the_deeper_donors(tiny_run):
    """Donors deeper than the lower quartile of their cell type are thinned to it (their median
    depth falls to within 10% of the target); shallower donors keep every count."""
    from discovery.io.contract import get_keys
    from discovery.tl.refine import match_depth

    adata = open_run(tiny_run).adata.copy()
    keys = get_keys(adata)
    before = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    res = match_depth(adata, keys.donor_key, seed=0, min_cells=10, target_quantile=0.25)
    assert res["thinned"] and res["target_quantile"] == 0.25
    after = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    donor = adata.obs[keys.donor_key].astype(str).to_numpy()
    ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    for c in {r["cell_type"] for r in res["thinned"]}:
        rows = [r for r in res["thinned"] if r["cell_type"] == c]
        target = np.quantile([r["median_depth"] for r in rows], 0.25)
        for r in rows:
            m = (ct == c) & (donor == r["level"])
            if r["keep_probability"] == 1.0:
                assert np.array_equal(after[m], before[m])
            else:
                assert abs(np.median(after[m]) / target - 1) < 0.1
