"""Feedback reasons that are not technical artifacts change something measurable: known biology
re-ranks, a contamination example becomes a check on every hypothesis, a single-donor verdict
excludes the donor, a rejection removes the plans; and the child run says which feedback did it."""

from __future__ import annotations

import copy
import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from discovery.io.feedback import REASONS, resolve_reason
from discovery.tl.expert import (
    EXPERT_REASONS,
    apply_expert,
    contamination_ratio,
    donors_to_exclude,
    expert_notes,
    same_hypothesis,
)
from discovery.tl.records import Hypothesis
from pipelines.cli import main

TYPES = ("Microglia", "Astrocytes", "Neurons")
GENES = ([f"M{i}" for i in range(12)] + [f"A{i}" for i in range(12)]
         + [f"N{i}" for i in range(12)])


def _cohort() -> ad.AnnData:
    """Three cell types, each expressing its own 12 genes (log scale ~2) and others' at ~0.2."""
    rng = np.random.default_rng(0)
    cts = np.repeat(TYPES, 60)
    x = rng.gamma(2.0, 0.1, size=(len(cts), len(GENES)))
    for t in TYPES:
        x[np.ix_(cts == t, [i for i, g in enumerate(GENES) if g[0] == t[0]])] += 2.0
    a = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame(
        {"cell_type": cts, "diagnosis": np.tile(["AD", "Control"], 90),
         "donor": np.tile([f"d{i}" for i in range(6)], 30)},
        index=[f"c{i}" for i in range(len(cts))]), var=pd.DataFrame(index=GENES))
    a.uns["discovery"] = {"keys": json.dumps({
        "label_key": "diagnosis", "case": "AD", "donor_key": "donor",
        "cell_type_key": "cell_type", "batch_key": None})}
    return a


def _hyp(i: int, ct: str, genes: list[str], direction: str = "up", **ev) -> Hypothesis:
    return Hypothesis.from_dict({
        "id": f"H{i}", "rank": i, "cell_type": ct, "direction": direction,
        "genes": [{"symbol": g, "weight": 1.0} for g in genes], "features": [f"pooled:F{i}"],
        "feature_labels": {}, "flags": [], "status": "candidate", "score": 1.0 - i / 10,
        "evidence": {"attribution": 0.1, "attribution_weight": 1.0, "ablation_predicted": -1.0,
                     "donor_level": {}, "stability": 0.5, "replication": {},
                     "confounds": ev.get("confounds", {}), "gene_sides": {}},
        "population_graph": "", "biomarker": {}, "donors": []})


def _hyps() -> list[Hypothesis]:
    return [
        _hyp(1, "Neurons", [f"M{i}" for i in range(10)]),  # microglial genes read in neurons
        _hyp(2, "Astrocytes", [f"A{i}" for i in range(10)]),  # its own genes
        _hyp(3, "Astrocytes", [f"M{i}" for i in range(2, 10)] + ["A0", "A1"], "down"),
        _hyp(4, "Neurons", [f"N{i}" for i in range(10)], "down"),
        _hyp(5, "Microglia", [f"M{i}" for i in range(10)]),
    ]


def _items(*rows: tuple[int, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"id": i, "verdict": v, "reason": r, "target_kind": "hypothesis",
                          "target_id": t, "author": "Ada", "note": "because"}
                         for i, v, r, t in rows])


def test_reasons_are_offered_and_typed_words_resolve():
    assert set(EXPERT_REASONS) <= set(REASONS)
    assert resolve_reason("contamination") == "wrong_cell_type"
    assert resolve_reason("donor") == "single_donor"


def test_contamination_ratio_says_where_the_genes_belong():
    a = _cohort()
    r, other = contamination_ratio(a, [f"M{i}" for i in range(10)], "Neurons")
    assert other == "Microglia" and r > 5
    r, _ = contamination_ratio(a, [f"A{i}" for i in range(10)], "Astrocytes")
    assert r < 0.5


def test_each_reason_changes_the_ranking_as_stated():
    a = _cohort()
    parent = [h.to_dict() for h in _hyps()]
    child = _hyps()
    notes = expert_notes(_items((1, "disagree", "wrong_cell_type", "H1"),
                                (2, "disagree", "known_biology", "H2"),
                                (3, "disagree", "implausible_direction", "H4"),
                                (4, "agree", "other", "H5")), parent)
    assert [n.feedback_id for n in notes] == [1, 2, 3]  # a thumbs-up changes nothing
    effects = apply_expert(a, child, notes)
    by_genes = {h.genes[0]["symbol"] + h.cell_type: h for h in child}
    contaminated, own = by_genes["M0Neurons"], by_genes["A0Astrocytes"]
    assert contaminated.status == "rejected" and contaminated.flags[-1].kind == "expert"
    # the example became a check: H3 (microglial genes read in astrocytes) is flagged, the
    # microglial program in microglia is not
    mixed = by_genes["M2Astrocytes"]
    assert mixed.status == "flagged" and mixed.flags[-1].kind == "contamination"
    assert mixed.flags[-1].by == "Microglia" and 0 < mixed.flags[-1].strength < 1
    assert mixed.score == pytest.approx(0.7 * 0.25)  # flagged factor: its plans follow it down
    assert by_genes["M0Microglia"].status == "candidate"
    # known biology: kept, marked, ranked after every hypothesis nobody called known
    assert own.status == "candidate" and own.extra["novelty"] == "known"
    untouched = [h for h in child if h.status == "candidate" and "novelty" not in h.extra]
    assert own.rank > max(h.rank for h in untouched)
    # rejected ones last; ranks and ids follow the new order
    assert [h.status for h in child][-2:] == ["rejected", "rejected"]
    assert [h.rank for h in child] == [1, 2, 3, 4, 5]
    assert [h.id for h in child] == ["H1", "H2", "H3", "H4", "H5"]
    # every effect names its feedback and what moved
    fx = {e["feedback"]: e for e in effects}
    assert fx[1]["check"]["flagged"] == [mixed.id] and fx[1]["check"]["threshold"] > 1
    assert fx[2]["child_hypotheses"][0]["rank_before_feedback"] == 2
    assert fx[2]["child_hypotheses"][0]["rank"] == own.rank
    assert fx[3]["child_hypotheses"][0]["status"] == "rejected"


def test_a_contamination_example_in_its_own_cell_type_gives_no_rule():
    a = _cohort()
    parent = [h.to_dict() for h in _hyps()]
    child = _hyps()
    effects = apply_expert(a, child, expert_notes(
        _items((1, "disagree", "wrong_cell_type", "H2")), parent))
    assert effects[0]["check"]["rule"] is None and "no expression rule" in effects[0]["check"]["why"]
    assert effects[0]["effect"].startswith("rejected; no contamination check")
    assert sum(h.status == "rejected" for h in child) == 1
    assert not any(h.status == "flagged" for h in child)


def test_single_donor_names_the_donor_that_drives_the_hypothesis():
    parent = [h.to_dict() for h in _hyps()]
    parent[0]["evidence"]["confounds"] = {"donor": {"donor": "d3", "max_t_drop": 0.8}}
    notes = expert_notes(_items((7, "disagree", "single_donor", "H1"),
                                (8, "disagree", "single_donor", "H2")), parent)
    out = donors_to_exclude(notes)
    assert out == [{"donor": "d3", "feedback": [7], "hypotheses": ["H1"], "t_drop": 0.8}]
    # the verdict without a donor record says that nothing was excluded
    effects = apply_expert(_cohort(), _hyps(), notes, excluded=out)
    assert effects[0]["excluded_donors"] == ["d3"]
    assert effects[1]["excluded_donors"] == []
    assert effects[1]["effect"].startswith("no donor excluded")


def test_same_hypothesis_needs_cell_type_direction_and_shared_genes():
    h = _hyps()
    a, b = h[0].to_dict(), copy.deepcopy(h[0].to_dict())
    assert same_hypothesis(a, b)
    b["genes"] = b["genes"][5:] + [{"symbol": f"X{i}", "weight": 1} for i in range(5)]
    assert same_hypothesis(a, b)  # 5 of 10 shared
    b["genes"] = b["genes"][1:]
    assert not same_hypothesis(a, b)
    assert not same_hypothesis(a, {**a, "direction": "down"})


@pytest.mark.slow
def test_refine_acts_on_non_artifact_feedback_and_the_report_says_so(tiny_run, tmp_path):
    """A run with only non-artifact feedback: the model is kept (mode rerank), the donor that
    drives the single-donor hypothesis is gone from the child, the known hypothesis moves down,
    and the child's report names each feedback and its effect."""
    parent = tmp_path / "parent"
    shutil.copytree(tiny_run, parent)
    (parent / "feedback.sqlite").unlink(missing_ok=True)
    hyps = json.loads((parent / "hypotheses.json").read_text())["hypotheses"]
    with_donor = next(h for h in hyps if h["evidence"]["confounds"].get("donor", {}).get("donor"))
    known = next(h for h in hyps if h["id"] != with_donor["id"])
    donor = with_donor["evidence"]["confounds"]["donor"]["donor"]
    for target, reason in ((with_donor["id"], "donor"), (known["id"], "known_biology")):
        assert main(["feedback", str(parent), "--target", target, "--verdict", "disagree",
                     "--reason", reason, "--note", "seen in the literature", "--by", "Ada",
                     "--quiet"]) == 0
    child = tmp_path / "child"
    assert main(["refine", str(parent), "--out", str(child), "--quiet"]) == 0
    res = json.loads((child / "refine.json").read_text())
    assert res["mode"] == "rerank" and res["suppressed"] == []
    assert [d["donor"] for d in res["excluded_donors"]] == [donor]
    obs = ad.read_h5ad(child / "adata.h5ad", backed="r").obs
    keys = json.loads((parent / "input_summary.json").read_text())["keys"]
    assert donor not in set(obs[keys["donor_key"]].astype(str))
    assert res["excluded_donors"][0]["cells"] > 0
    # the model is the parent's
    assert (child / "model" / "model.safetensors").read_bytes() == \
        (parent / "model" / "model.safetensors").read_bytes()
    fx = {e["reason"]: e for e in res["expert_feedback"]}
    assert fx["single_donor"]["excluded_donors"] == [donor]
    child_hyps = json.loads((child / "hypotheses.json").read_text())["hypotheses"]
    for c in fx["known_biology"]["child_hypotheses"]:
        h = next(x for x in child_hyps if x["id"] == c["id"])
        assert h["novelty"] == "known"
        assert any(cv["kind"] == "known_biology" for cv in h["caveats"])
    md = (child / "report.md").read_text()
    assert "What the feedback changed" in md and "single donor" in md and "known biology" in md


def test_refine_warns_when_the_child_takes_the_next_shortcut_or_loses_claims(tmp_path,
                                                                             monkeypatch):
    """A child denied the batch that now reads the mitochondrial fraction is told so, with the
    refinement that would act on it; a supported claim the child lost is named."""
    import pipelines.child_run as cr

    parent, child = tmp_path / "p", tmp_path / "c"
    for run, by in ((parent, ["batch", None]), (child, ["pct_counts_mt", "total_counts"])):
        (run / "features").mkdir(parents=True)
        pd.DataFrame({"feature": ["pooled:F0", "pooled:F1"], "confounded_by": by}).to_json(
            run / "features" / "annotations.json")
    shares = {(parent, "batch"): 0.9, (child, "batch"): 0.0,
              (parent, "pct_counts_mt"): 0.0, (child, "pct_counts_mt"): 0.86,
              (parent, "total_counts"): 0.05, (child, "total_counts"): 0.08}
    monkeypatch.setattr(cr, "covariate_shares",
                        lambda run, terms: {t: shares[run, t] for t in terms})
    # the terms are those either run's features are annotated with
    both = cr.shares_before_after(parent, child, ["batch"])
    assert set(both) == {"batch", "pct_counts_mt", "total_counts"}
    hyps = [h.to_dict() for h in _hyps()]
    hyps[0]["status"] = hyps[1]["status"] = "supported"
    kept = copy.deepcopy(hyps[1])
    other, warnings = cr.refine_warnings(both, "batch", hyps, [kept])
    assert set(other) == {"pct_counts_mt", "total_counts"}  # the acted-on term is not listed
    assert len(warnings) == 2
    assert "leans on pct_counts_mt" in warnings[0] and "--covariate pct_counts_mt" in warnings[0]
    assert "1 of the parent's 2 supported hypotheses" in warnings[1] and "H1" in warnings[1]
    # a small rise (0.05 -> 0.08) is not a new shortcut; nothing lost, nothing said
    shares[child, "pct_counts_mt"] = 0.0
    both = cr.shares_before_after(parent, child, ["batch"])
    _, quiet = cr.refine_warnings(both, "batch", hyps, copy.deepcopy(hyps))
    assert quiet == []


def test_feedback_on_a_target_the_run_does_not_have_is_refused(tiny_run, tmp_path, capsys):
    """H99999 would be stored and then break refine: it is refused, naming the run's ids; the
    store is left as it was."""
    from discovery.io.feedback import FeedbackStore, default_url

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    tiny_run = run

    before = len(FeedbackStore(default_url(tiny_run)).items())
    for target in ("H99999", "P99999", "pooled:F999999"):
        assert main(["feedback", str(tiny_run), "--target", target, "--verdict", "disagree",
                     "--reason", "other", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "the run has no" in err and repr(target) in err
    feats = [r["feature"] for r in json.loads(
        (tiny_run / "features" / "annotations.json").read_text())]
    assert feats[0] in err  # the run's own ids are named
    assert len(FeedbackStore(default_url(tiny_run)).items()) == before
    hyp = json.loads((tiny_run / "hypotheses.json").read_text())["hypotheses"][0]["id"]
    assert main(["feedback", str(tiny_run), "--target", feats[0], "--verdict", "agree",
                 "--reason", "other", "--quiet"]) == 0
    assert main(["feedback", str(tiny_run), "--target", hyp, "--verdict", "agree",
                 "--reason", "other", "--quiet"]) == 0
