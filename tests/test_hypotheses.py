"""Hypotheses, plans, reports and batches: status rules, rationale refs, offline reports."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from discovery.io.graph_files import load_graph
from discovery.tl.hypotheses import (
    HypothesisSpec,
    _status_and_score,
    hypotheses_to_ranking,
)
from discovery.tl.plans import load_assays
from discovery.tl.records import SCORE_FORMULA, SCORE_WEIGHTS, Flag, Hypothesis, score_hypothesis
from discovery.tl.stats import partial_r2
from pipelines.cli import main

from .conftest import TINY


def _hyp(**over) -> Hypothesis:
    h = {
        "id": "H1", "rank": 1, "cell_type": "Microglia", "direction": "up",
        "genes": [{"symbol": g, "weight": 1.0 - i / 10} for i, g in enumerate("ABCDE")],
        "features": ["pooled:F1"], "feature_labels": {"pooled:F1": "x"}, "flags": [],
        "evidence": {
            "attribution": 0.3, "attribution_weight": 1.0, "ablation_delta": -1.0,
            "ablation_predicted": -1.0,
            "donor_level": {"effect": 1.0, "t": 8.0, "p": 1e-8, "q": 1e-7, "n_donors": 36},
            "stability": 0.6,
            "replication": {"effect": 1.0, "p_one_sided": 0.001, "same_direction": True,
                            "replicated": True, "biomarker_auroc_test": 0.9},
            "cross_check": {"agreement": 0.8, "in_silico_hits": 3},
            "confounds": {}, "gene_sides": {},
        },
        "population_graph": "microglia_case", "biomarker": {}, "donors": [],
    }
    h.update(over)
    return Hypothesis.from_dict(h)


def test_status_rules():
    spec = HypothesisSpec()
    h = _hyp()
    _status_and_score(h, 0.3, spec)
    assert h.status == "supported" and h.kind == "biomarker"
    assert 0 < h.score <= 1
    # a technical confound is never supported, however strong the statistics
    f = _hyp(flags=[{"kind": "confounded", "by": "batch", "strength": 0.9, "detail": "d"}])
    assert isinstance(f.flags[0], Flag)
    _status_and_score(f, 0.3, spec)
    assert f.status == "flagged" and f.score < 0.3 * h.score
    # no replication on held-out donors -> candidate
    c = _hyp()
    c.evidence.replication["replicated"] = False
    _status_and_score(c, 0.3, spec)
    assert c.status == "candidate"
    # unstable across SAE seeds -> candidate
    u = _hyp()
    u.evidence.stability = 0.1
    _status_and_score(u, 0.3, spec)
    assert u.status == "candidate"
    # a caveat (informational) never changes the status; any flag demotes
    cav = _hyp(caveats=[{"kind": "artifact_genes", "by": "Heat shock", "strength": 0,
                         "detail": ""}])
    _status_and_score(cav, 0.3, spec)
    twin = _hyp()  # the same evidence without the caveat: same status, same score
    _status_and_score(twin, 0.3, spec)
    assert cav.status == twin.status == "supported" and cav.score == twin.score
    mech = _hyp(flags=[{"kind": "artifact_mechanism", "by": "batch", "strength": 0.6,
                        "detail": "d"}])
    _status_and_score(mech, 0.3, spec)
    assert mech.status == "candidate"
    # the model's feature differs between donors but its genes do not separate held-out donors
    genes = _hyp()
    genes.evidence.replication["biomarker_auroc_test"] = 0.55
    _status_and_score(genes, 0.3, spec)
    assert genes.status == "candidate" and genes.kind == "mechanism"
    weak = _hyp()
    weak.evidence.donor_level["q"] = 0.2
    _status_and_score(weak, 0.3, spec)
    assert weak.status == "candidate" and weak.score < h.score


def test_score_is_one_formula():
    """The weights that compute the score also write the formula text; parts by hand."""
    h = _hyp()
    s = score_hypothesis(h.evidence, max_share=0.6, flagged=False)
    assert s.parts == {"A": 0.5, "D": 1.0, "R": 1.0, "S": 0.6, "G": 0.8}
    assert abs(s.score - (0.30 * 0.5 + 0.25 * 1.0 + 0.15 * 1.0 + 0.15 * 0.6 + 0.15 * 0.8)) < 1e-12
    assert score_hypothesis(h.evidence, max_share=0.6, flagged=True).score == s.score * 0.25
    assert abs(sum(SCORE_WEIGHTS.values()) - 1) < 1e-12
    for k, w in SCORE_WEIGHTS.items():
        assert f"{w:.2f}·{k}" in SCORE_FORMULA


def test_records_round_trip_the_json_files(tiny_run):
    """hypotheses.json and plans.json read into typed records and back, byte for byte."""
    from discovery.tl.records import Plan

    for name, klass, key in (("hypotheses.json", Hypothesis, "hypotheses"),
                             ("plans.json", Plan, "plans")):
        text = (tiny_run / name).read_text()
        doc = json.loads(text)
        assert doc[key], name
        back = [klass.from_dict(r).to_dict() for r in doc[key]]
        assert json.dumps(back) == json.dumps(doc[key]), name


def test_partial_r2_separates_label_from_batch():
    rng = np.random.default_rng(0)
    n = 40
    label = np.repeat([0.0, 1.0], n // 2)
    batch = label.copy()
    batch[:4], batch[-4:] = 1.0, 0.0  # 8 donors in the "wrong" batch
    y_batch = 2 * batch + rng.normal(0, 0.1, n)
    r2_b, r2_l = partial_r2(y_batch, label, batch[:, None])
    assert r2_b > 0.5 and r2_l < 0.05
    y_label = 2 * label + rng.normal(0, 0.1, n)
    r2_b, r2_l = partial_r2(y_label, label, batch[:, None])
    assert r2_l > 0.5 and r2_b < 0.05


def test_ranking_leaves_out_flagged_and_keeps_order():
    a = _hyp(status="supported")
    b = _hyp(id="H2", rank=2, status="flagged",
             genes=[{"symbol": "FOS", "weight": 1.0}, {"symbol": "JUN", "weight": 0.5}])
    c = _hyp(id="H3", rank=3, status="candidate",
             genes=[{"symbol": "B", "weight": 1.0}, {"symbol": "Z", "weight": 0.9}])
    for h, s in ((a, 0.9), (b, 0.5), (c, 0.4)):
        h.score = s
    r = hypotheses_to_ranking([c, b, a])
    assert "FOS" not in set(r["gene"])
    assert r["gene"].tolist() == ["A", "B", "C", "D", "E", "Z"]  # B kept at its first place
    assert r["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert "FOS" in set(hypotheses_to_ranking([a, b], include_flagged=True)["gene"])


def test_assay_catalog_is_complete_and_cited():
    assays = load_assays()
    assert len(assays) >= 8
    for a in assays:
        for field in ("id", "name", "modality", "tests", "readout", "cost_tier", "time_tier",
                      "prerequisites", "kinds", "directions", "statuses", "design", "expected",
                      "falsified_if", "source"):
            assert field in a, (a["id"], field)
        assert re.search(r"doi:10\.\d{4,}/", a["source"]), a["id"]
        assert "http" not in json.dumps(a)
    # every combination of kind x direction x status except rejected has an assay
    for kind in ("biomarker", "mechanism"):
        for direction in ("up", "down"):
            for status in ("supported", "candidate", "flagged"):
                assert any(kind in a["kinds"] and direction in a["directions"]
                           and status in a["statuses"] for a in assays), (kind, direction, status)


@pytest.mark.slow
def test_batch_records_failures_and_keeps_other_reports(tmp_path, capsys):
    batch = tmp_path / "batch.yaml"
    batch.write_text(json.dumps({
        "out": "out",
        "defaults": TINY,
        "runs": [{"name": "missing_file", "data": "nope.h5ad"},
                 {"name": "good", "scenario": "alzheimers", "seed": 1},
                 {"name": "bad_keys", "scenario": "alzheimers",
                  "keys": {"label_key": "no_such_column"}}],
    }))
    rc = main(["batch", str(batch), "--quiet"])
    assert rc == 1  # some runs failed
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    status = {r["name"]: r for r in index["runs"]}
    assert status["good"]["status"] == "done"
    assert status["missing_file"]["status"] == "failed"
    assert "not found" in status["missing_file"]["error"]
    assert status["bad_keys"]["status"] == "failed"
    assert "no_such_column" in status["bad_keys"]["error"]
    good = tmp_path / "out" / "good"
    report = (good / "report.html").read_text()
    assert "<table>" in report and "Experimental plans" in report
    page = (tmp_path / "out" / "index.html").read_text()
    assert "good/report.html" in page and "failed" in page
    # plans: every rationale step's refs resolve to nodes of the hypothesis's exported graph
    hyps = json.loads((good / "hypotheses.json").read_text())["hypotheses"]
    plans = json.loads((good / "plans.json").read_text())["plans"]
    assert hyps and plans
    by_id = {h["id"]: h for h in hyps}
    for p in plans:
        assert p["rationale"], p["id"]
        h = by_id[p["hypothesis"]]
        g = load_graph(good / "graphs" / f"{h['population_graph']}.json")
        refs = [n for st in p["rationale"] for n in st["refs"]["nodes"]]
        assert refs, p["id"]
        assert all(n in g for n in refs), [n for n in refs if n not in g]
        assert p["id"] in h["plans"]
        for field in ("design", "expected_outcome", "falsified_if", "controls", "priority"):
            assert p[field], (p["id"], field)
    for h in hyps:
        assert h["status"] in ("supported", "candidate", "flagged")
        assert h["genes"] == sorted(h["genes"], key=lambda g: -g["weight"])
        assert {"attribution", "ablation_delta", "donor_level", "stability",
                "replication"} <= set(h["evidence"])


def test_report_is_self_contained(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "report.html").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    text = (out / "report.html").read_text()
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)  # no external URL
    assert not re.search(r"""(?i)(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "data:image/png;base64," in text
    # the figures: a UMAP, and per top hypothesis its graph path and its cell type's volcano
    hyps = json.loads((out / "hypotheses.json").read_text())["hypotheses"][:10]
    alts = re.findall(r'<img alt="([^"]*)"', text)
    assert "UMAP of the cells by cell type and label" in alts
    tested = set(pd.read_csv(out / "donor_tests.csv")["cell_type"])
    assert hyps and tested
    for h in hyps:
        assert any(a.startswith(f"donor-level volcano of {h['cell_type']} ")
                   for a in alts) == (h["cell_type"] in tested)
        assert (f"graph path of {h['id']}" in alts) == bool(h["features"])
    # every figure is a decodable PNG
    import base64

    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text().startswith("# discovery report")
    assert main(["report", str(tmp_path / "nope"), "--quiet"]) == 2


def _roles(*rows):
    return [{"feature": f, "share": sh, "label": lab, "confounded_by": by,
             "confound_strength": 0.8 if by else 0.0,
             "artifact": by is not None or lab.startswith("artifact")}
            for f, sh, lab, by in rows]


def test_mechanism_honesty_weighs_the_artifact_share():
    """A leading artifact-explained feature, or > 30% of the attribution through such features,
    is a demoting flag with a non-zero strength; a small non-leading share is a caveat."""
    from discovery.tl.hypotheses import _mechanism

    spec = HypothesisSpec()
    h = _hyp()
    flags, caveats = _mechanism(h, _roles(("pooled:F1", 0.2, "Microglia · program", None),
                                          ("pooled:F2", 0.05, "x", "batch")), spec)
    assert not flags and [c.kind for c in caveats] == ["artifact_features"]
    assert h.evidence.extra["artifact_share"] == pytest.approx(0.2)
    flags, _ = _mechanism(h, _roles(("pooled:F1", 0.2, "artifact · batch-explained", "batch"),
                                    ("pooled:F2", 0.1, "Microglia · program", None)), spec)
    assert [f.kind for f in flags] == ["artifact_mechanism"] and flags[0].strength > 0.5
    assert "batch-explained feature" in flags[0].detail
    # not leading, but 40% of the attribution
    flags, _ = _mechanism(h, _roles(("pooled:F1", 0.3, "Microglia · program", None),
                                    ("pooled:F2", 0.2, "artifact · library-size", None)), spec)
    assert [f.kind for f in flags] == ["artifact_mechanism"]
    h.flags = flags
    _status_and_score(h, 0.3, spec)
    assert h.status == "candidate"
    assert _mechanism(h, _roles(("pooled:F1", 0.3, "Microglia · program", None)), spec) == \
        ([], [])


def test_the_why_is_true_on_a_run(tiny_run):
    """Over a whole run: one program one hypothesis, flags always demote with a reason, no
    supported hypothesis stands on an artifact feature, labels name the cell type where the
    feature acts (as its graphs measure it), plans are one per experiment, modality matches."""
    _assert_the_why_is_true(tiny_run)


@pytest.mark.slow
def test_the_why_is_true_on_a_confounded_cohort(tmp_path):
    """The same checks where the batch is aligned with diagnosis (the `confounded` scenario):
    the model has a shortcut to take, and no supported claim may stand on it."""
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    cohort = {**TINY["cohort"], "scenario": "confounded", "n_donors": 16}
    run_pipeline(tmp_path / "run", config=load_config(overrides={**TINY, "cohort": cohort}),
                 quiet=True)
    _assert_the_why_is_true(tmp_path / "run")


def _assert_the_why_is_true(run) -> None:
    import pandas as pd

    from discovery.tl.annotate import acting_cell_type, feature_roles
    from discovery.tl.records import Plan

    hyps = [Hypothesis.from_dict(h)
            for h in json.loads((run / "hypotheses.json").read_text())["hypotheses"]]
    assert hyps
    for h in hyps:
        assert all(f.strength > 0 and f.detail for f in h.flags), h.id
        if h.status == "supported":
            assert not h.flags
            lead = h.evidence.extra["feature_roles"][0]
            assert not lead["artifact"] and h.evidence.extra["artifact_share"] <= 0.3
        if h.kind != "de_only":
            assert 0.0 <= h.evidence.extra["artifact_share"] <= 1.0
            side = h.evidence.extra["gene_side"]
            word = "higher" if h.direction == "up" else "lower"
            assert f"are {word} in" in h.statement
            assert ("rise as" if side > 0 else "fall as") in h.statement
    top = hyps[:20]
    for i, a in enumerate(top):
        for b in top[i + 1:]:
            if (a.cell_type, a.direction) == (b.cell_type, b.direction):
                ga = {g["symbol"] for g in a.genes[:20]}
                gb = {g["symbol"] for g in b.genes[:20]}
                assert len(ga & gb) < 0.3 * min(len(ga), len(gb)), (a.id, b.id)
    # labels: the cell type where the feature carries the most attribution in the graphs
    index = json.loads((run / "graphs" / "index.json").read_text())
    graphs = [load_graph(run / e["files"][0]) for e in index["graphs"]]
    roles = feature_roles(graphs)
    ann = pd.read_json(run / "features" / "annotations.json").set_index("feature")
    assert roles
    for f, by in roles.items():
        where = acting_cell_type(by)
        assert ann.loc[f, "cell_type"] == where, f
        assert where in ann.loc[f, "label"], (f, ann.loc[f, "label"])
        for g in graphs:
            if f in g and g.graph.get("cell_type") == where:
                assert g.nodes[f]["label"] == ann.loc[f, "label"]
    plans = [Plan.from_dict(p)
             for p in json.loads((run / "plans.json").read_text())["plans"]]
    by_id = {h.id: h for h in hyps}
    seen = []
    for p in plans:
        h = by_id[p.hypothesis]
        key = (p.assay_id, h.cell_type, {g["symbol"] for g in h.genes[:5]})
        assert not any(k[0] == key[0] and k[1] == key[1] and len(k[2] & key[2]) >= 3
                       for k in seen), p.id
        seen.append(key)
        if "qpcr" in p.assay_id:
            assert "qPCR" in p.modality
        assert p.readout and p.prerequisites and p.source
        for hid in [p.hypothesis, *p.extra.get("also_tests", [])]:
            assert p.id in by_id[hid].plans
            if any(f.kind == "artifact_mechanism" for f in by_id[hid].flags):
                assert any("batch / QC-explained feature" in c for c in p.controls)


def test_one_plan_per_experiment_keeps_every_hypothesis_and_its_caveats():
    """The same assay on the same genes in one cell type and direction is one plan: it lists
    the twin hypothesis, keeps its controls and mechanism step, and survives a JSON round trip;
    the opposite direction stays a plan of its own."""
    from discovery.tl.plans import make_plans
    from discovery.tl.records import Plan

    a = _hyp(id="H1", rank=1, status="supported")
    b = _hyp(id="H2", rank=2, status="candidate",
             flags=[{"kind": "artifact_mechanism", "by": "batch", "strength": 0.5,
                     "detail": "d"}])
    b.evidence.extra.update(artifact_share=0.5, feature_roles=[
        {"feature": "pooled:F1", "share": 0.3, "label": "x", "confounded_by": "batch",
         "confound_strength": 0.9, "artifact": True}])
    c = _hyp(id="H3", rank=3, status="supported", direction="down")
    for h, sc in ((a, 0.9), (b, 0.8), (c, 0.7)):
        h.score = sc
        h.biomarker = {"genes": ["A", "B"], "direction": h.direction, "definition": "",
                       "auroc_test": 0.9}
    plans = make_plans([a, b, c], {}, case="AD")
    twins = [p for p in plans if p.hypothesis == "H1" and p.extra.get("also_tests") == ["H2"]]
    assert twins, [(p.hypothesis, p.assay_id, p.extra) for p in plans]
    p = twins[0]
    assert any("batch / QC-explained feature" in x for x in p.controls)
    assert any(st.step == "mechanism (H2)" for st in p.rationale)
    assert p.id in a.plans and p.id in b.plans and p.id not in c.plans
    assert any(q.hypothesis == "H3" for q in plans)
    back = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back.extra["also_tests"] == ["H2"]


def test_donors_needed_matches_the_textbook_two_sample_sizes():
    """Cohen's d = 1 needs 17 donors per group and d = 0.5 needs 64 for 80% power at a
    two-sided alpha of 0.05 (Cohen 1988, table 2.4.1); d is recovered from the observed t."""
    from discovery.tl.plans import donors_needed

    for d, n in ((1.0, 17), (0.5, 64), (0.8, 26)):
        n1 = n2 = 10
        t = d / np.sqrt(1 / n1 + 1 / n2)
        got = donors_needed(t, n1, n2)
        assert abs(got["cohens_d"] - d) < 1e-3
        assert abs(got["per_group"] - n) <= 1, (d, got)
    assert donors_needed(0.05, 10, 10)["per_group"] is None  # beyond MAX_DONORS: said so
    assert "more than" in donors_needed(0.05, 10, 10)["why"]
    assert donors_needed(float("nan"), 3, 3)["per_group"] is None


def test_plan_tiers_follow_the_evidence():
    """Supported -> recommended; a candidate with independent evidence -> exploratory; a
    candidate without any, or a flagged hypothesis -> needs more data, with what is missing and
    the donors that would settle it; P1 is a recommended plan."""
    from discovery.tl.plans import TIERS, make_plans

    sup = _hyp(id="H1", status="supported", score=0.5)
    weak = _hyp(id="H2", status="candidate", score=0.9, cell_type="Astrocytes")
    weak.evidence.donor_level.update(q=0.4, t=1.2, n_case=4, n_control=4)
    weak.evidence.replication.update(replicated=False, biomarker_auroc_test=0.55)
    weak.evidence.cross_check["agreement"] = 0.1
    half = _hyp(id="H3", status="candidate", score=0.8, cell_type="OPC")
    half.evidence.replication.update(replicated=False)
    flagged = _hyp(id="H4", status="flagged", score=0.95, cell_type="Endothelial",
                   flags=[{"kind": "confounded", "by": "batch", "strength": 0.9,
                           "detail": "batch explains it"}])
    for h in (sup, weak, half, flagged):
        h.biomarker = {"genes": ["A", "B"], "direction": h.direction, "definition": "",
                       "auroc_test": 0.9}
    plans = make_plans([weak, flagged, half, sup], {}, case="AD")
    tier = {p.hypothesis: p.tier for p in plans}
    assert tier == {"H1": "recommended", "H2": "needs more data", "H3": "exploratory",
                    "H4": "needs more data"}
    assert plans[0].hypothesis == "H1"  # despite the lowest score
    assert [TIERS.index(p.tier) for p in plans] == sorted(TIERS.index(p.tier) for p in plans)
    basis = next(p for p in plans if p.hypothesis == "H2").tier_basis
    assert any("q = 0.4" in m for m in basis["missing"])
    assert any("not replicated" in m for m in basis["missing"])
    assert basis["evidence"] == []
    assert basis["donors_needed"]["per_group"] > 4
    fb = next(p for p in plans if p.hypothesis == "H4").tier_basis
    assert any("confounded (by batch)" in m for m in fb["missing"])
    assert fb["donors_needed"]["balanced_across"] == ["batch"]
    assert "balanced_across" not in basis["donors_needed"]


def _rec(hid, ct, direction, genes, status="candidate", score=0.5, effect=1.0):
    return {"id": hid, "cell_type": ct, "direction": direction, "status": status,
            "score": score, "kind": "mechanism",
            "genes": [{"symbol": g, "weight": 1.0} for g in genes],
            "evidence": {"donor_level": {"effect": effect, "q": 0.01},
                         "replication": {"replicated": False}}}


def test_compare_cohorts_matches_shared_programs_and_keeps_private_ones_apart():
    """Three programs in both cohorts (gene order, extra genes and cell-type spelling differ),
    one private program each, a program in the same cell type but the other direction, and an
    artifact flagged in both: 3 replicated, 3 single-cohort, the artifact excluded."""
    from discovery.tl.cohorts import compare_cohorts

    a = [_rec("H1", "Microglia", "up", ["TREM2", "APOE", "CD9", "SPP1", "ITGAX"], score=0.9),
         _rec("H2", "Astrocytes", "up", ["GFAP", "AQP4", "SERPINA3", "CHI3L1"]),
         _rec("H3", "Excitatory neurons", "down", ["SYT1", "SNAP25", "NRGN", "VGF"]),
         _rec("H4", "OPC", "up", ["PDGFRA", "CSPG4", "OLIG1"]),
         _rec("H5", "Microglia", "down", ["P2RY12", "CX3CR1", "TMEM119"]),
         _rec("H6", "Endothelial", "up", ["FOS", "JUN", "EGR1", "HSPA1A"], status="flagged")]
    b = [_rec("H1", "microglia", "up", ["APOE", "TREM2", "SPP1", "LPL", "CD9"], score=0.7,
              effect=0.8),
         _rec("H2", "Astrocyte", "up", ["AQP4", "GFAP", "CHI3L1", "VIM"]),
         _rec("H3", "Excitatory Neurons", "down", ["NRGN", "SYT1", "VGF", "CALM1"]),
         _rec("H4", "Oligodendrocytes", "down", ["MBP", "PLP1", "MOBP"]),
         _rec("H5", "Endothelial", "up", ["FOS", "JUN", "EGR1", "HSPA1B"], status="flagged")]
    cmp = compare_cohorts({"discovery": a, "replication": b})
    progs = cmp["programs"]
    rep = [p for p in progs if p["status"] == "replicated"]
    single = [p for p in progs if p["status"] == "single-cohort"]
    assert len(rep) == 3 and len(single) == 3
    assert {p["cell_type"] for p in rep} == {"Microglia", "Astrocytes", "Excitatory neurons"}
    micro = next(p for p in rep if p["cell_type"] == "Microglia")
    assert set(micro["shared_genes"]) == {"TREM2", "APOE", "CD9", "SPP1"}
    assert micro["cohorts"]["replication"][0]["donor_effect"] == 0.8  # effects side by side
    assert {(p["cell_type"], p["direction"]) for p in single} == {
        ("OPC", "up"), ("Microglia", "down"), ("Oligodendrocytes", "down")}
    assert all("Endothelial" not in str(p["cell_type"]) for p in progs)  # artifacts excluded
    assert [p["id"] for p in progs] == [f"R{i}" for i in range(1, 7)]


def test_report_opens_with_the_findings_and_shows_only_plans_worth_a_lab(tiny_run):
    """The summary comes first and names every supported hypothesis; only recommended and
    exploratory plans are written out in full; each plan that needs more data says in one line
    what is missing. The same summary heads report.md."""
    text = (tiny_run / "report.html").read_text()
    hyps = json.loads((tiny_run / "hypotheses.json").read_text())["hypotheses"]
    plans = json.loads((tiny_run / "plans.json").read_text())
    assert set(plans["tier_rules"]) == {"recommended", "exploratory", "needs more data"}
    summary = text[text.index("<div class='summary'"):text.index("</div>",
                                                                 text.index("class='summary'"))]
    assert text.index("class='summary'") < text.index("Cohort and model")
    for h in hyps:
        if h["status"] == "supported":
            assert f"{h['id']} (supported" in summary
    tiers = [p["tier"] for p in plans["plans"]]
    assert text.count("<div class='plan'") == tiers.count("recommended") + tiers.count(
        "exploratory")
    for p in plans["plans"]:
        if p["tier"] == "needs more data":
            assert p["tier_basis"]["missing"], p["id"]
            row = text[text.index(f"<td>{p['id']}</td>"):]
            row = row[:row.index("</tr>")]
            assert p["tier_basis"]["missing"][0].split(" (")[0] in html_unescape(row)
    md = (tiny_run / "report.md").read_text()
    assert md.index("## Summary") < md.index("## Cohort and model")


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)


@pytest.mark.slow
def test_batch_comparison_finds_the_programs_two_cohorts_share(tmp_path, monkeypatch):
    """A discovery and a replication cohort (different donors) share three planted programs
    and each has one of its own: the batch comparison marks the three shared programs
    replicated and each private one single-cohort. The batch is started from another folder:
    its relative data paths resolve from the batch file's folder."""
    import dataclasses
    import warnings

    from discovery.io.scenarios import ProgramSpec, draw_scenario, simulate_scenario
    from tests.conftest import TINY_STAGES

    base = draw_scenario(3, donors=(16, 16), cells_per_donor=(120, 120), n_genes=(600, 600),
                         max_programs=0)
    base = dataclasses.replace(base, artifacts=())
    pool = [g for g, o in base.origin.items() if o != "marker" and not g.startswith("MT-")]

    def program(i: int, cell_type: str, direction: str) -> ProgramSpec:
        return ProgramSpec(name=f"p{i}", kind="shift", cell_type=cell_type,
                           direction=direction, genes=tuple(pool[i * 8:(i + 1) * 8]),
                           effect=1.5, responder_fraction=1.0, state_fraction=(0.8, 1.0))

    shared = [program(0, "Excitatory neurons", "up"), program(1, "Oligodendrocytes", "down"),
              program(2, "Inhibitory neurons", "up")]
    private = {"discovery": program(3, "Astrocytes", "up"),
               "replication": program(4, "Excitatory neurons", "down")}
    cohorts = tmp_path / "cohorts"
    cohorts.mkdir()
    for name, seed in (("discovery", base.seed), ("replication", base.seed + 100)):
        s = dataclasses.replace(base, seed=seed, programs=(*shared, private[name]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simulate_scenario(s).write_h5ad(cohorts / f"{name}.h5ad")
    keys = {**base.keys, "case": base.labels[0]}
    (cohorts / "batch.json").write_text(json.dumps({
        "out": "out", "defaults": TINY_STAGES,
        "runs": [{"name": n, "data": f"{n}.h5ad", "keys": keys}
                 for n in ("discovery", "replication")]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["batch", str(cohorts / "batch.json"), "--quiet"]) == 0
    cmp = json.loads((cohorts / "out" / "comparison.json").read_text())
    index = json.loads((cohorts / "out" / "index.json").read_text())
    assert index["comparison"] == "comparison.json"
    assert "comparison.html" in (cohorts / "out" / "index.html").read_text()

    def found(prog: ProgramSpec) -> list[dict]:
        return [p for p in cmp["programs"] if p["cell_type"] == prog.cell_type
                and p["direction"] == prog.direction
                and len(set(p["genes"]) & set(prog.genes)) >= 3]

    for prog in shared:
        hits = found(prog)
        assert hits and hits[0]["status"] == "replicated", (prog.name, hits)
        assert set(hits[0]["cohorts"]) == {"discovery", "replication"}
    for name, prog in private.items():
        hits = found(prog)
        assert hits and all(h["status"] == "single-cohort" for h in hits), (prog.name, hits)
        assert all(set(h["cohorts"]) == {name} for h in hits)


def test_exported_graphs_carry_the_plans_and_tiers_that_rest_on_them(tiny_run, tmp_path):
    import shutil

    import networkx as nx

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["export", str(run), "--format", "graphml", "--quiet"]) == 0
    hyps = json.loads((run / "hypotheses.json").read_text())["hypotheses"]
    plans = json.loads((run / "plans.json").read_text())["plans"]
    home = {h["id"]: h["population_graph"] for h in hyps}
    slug = home[plans[0]["hypothesis"]]
    g = nx.read_graphml(run / "exports" / f"{slug}.graphml")
    listed = json.loads(g.graph["plans"])
    assert {(p["id"], p["tier"]) for p in listed} == {
        (p["id"], p["tier"]) for p in plans if home[p["hypothesis"]] == slug}
    refs = {n for st in plans[0]["rationale"] for n in st["refs"]["nodes"]}
    marked = {n for n, d in g.nodes(data=True)  # "P1 (recommended); P10 (exploratory)"
              if plans[0]["id"] in {x.split(" (")[0] for x in d.get("plans", "").split("; ")}}
    assert refs and refs == marked & refs
    assert all(g.nodes[n]["best_tier"] in ("recommended", "exploratory", "needs more data")
               for n in marked)
