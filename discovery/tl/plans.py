"""Experimental plans from hypotheses, each with the rationale chain that says why.

Assays come from the bundled catalog (``data/assays.yaml``): an assay is eligible for a
hypothesis when the hypothesis's kind (biomarker | mechanism), direction and status are among the
assay's. Flagged hypotheses get only the assays that test the shortcut (e.g. batch-balanced
re-processing); rejected ones get none. Up to ``per_hypothesis`` assays per hypothesis, chosen by
priority:

``priority = expected information x feasibility``, with expected information = hypothesis score
x assay informativeness and feasibility = 1 / sqrt(cost tier x time tier).

Every plan has a tier (:data:`TIER_RULES`, written to plans.json): ``recommended`` (the
hypothesis is supported), ``exploratory`` (a candidate with evidence independent of the model's
attribution) or ``needs more data`` (what is missing, and how many donors per group would detect
the observed donor-level effect). Plans are numbered by tier, then by priority, so P1 is never a
plan for noise when a recommended one exists.

Every text field is a catalog template filled with the hypothesis's measured numbers; controls
come from its flags and the cohort (batch balance, sex and age matching, a positive-control
gene set, the cell type's marker). The rationale chain walks plan -> hypothesis -> graph path ->
features -> genes -> evidence numbers; ``refs.nodes`` name nodes of the hypothesis's exported
cohort graph (only nodes that are in it), ``refs.features`` feature ids.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from discovery.io.bundled import gene_sets, read_yaml
from discovery.tl.cohorts import same_cell_type
from discovery.tl.records import Hypothesis, Plan

__all__ = ["PRIORITY_FORMULA", "TIERS", "TIER_RULES", "donors_needed", "load_assays",
           "make_plans", "plan_tier"]

PRIORITY_FORMULA = ("priority = (hypothesis score × assay informativeness) × "
                    "1/sqrt(cost tier × time tier)")


#: plan tiers, best first
TIERS = ("recommended", "exploratory", "needs more data")
#: cross-check agreement (share of the hypothesis's genes the baselines also rank high) that
#: counts as independent support
MIN_AGREEMENT = 0.5
#: significance and power of the donor-count estimate
POWER_ALPHA, POWER = 0.05, 0.8
#: beyond this many donors per group an effect is called too small to settle
MAX_DONORS = 500

TIER_RULES = {
    "recommended": "the hypothesis is supported (see status_rules in hypotheses.json: "
                   "donor-level q < 0.05, replicated on held-out test donors, biomarker AUROC "
                   ">= min_gene_auroc on test donors, stable, no flag)",
    "exploratory": "a candidate hypothesis with at least one line of evidence independent of the "
                   "model's attribution: donor-level q < 0.05 on the discovery donors, "
                   "replication on test donors (same direction, one-sided p < 0.05), a "
                   "biomarker AUROC >= min_gene_auroc on test donors, or baselines that agree "
                   f"(cross-check agreement >= {MIN_AGREEMENT})",
    "needs more data": "every other plan, flagged hypotheses included: it names the missing "
                       "evidence and the donors per group that would detect the observed "
                       f"donor-level effect (two-sided alpha {POWER_ALPHA}, power {POWER}, "
                       "normal approximation + 1); reports list it in one line, not as a lab "
                       "protocol",
}


def donors_needed(effect_t: float, n_case: int, n_control: int, *,
                  alpha: float = POWER_ALPHA, power: float = POWER) -> dict[str, Any]:
    """Donors per group for a two-sided two-sample test to detect the observed donor-level
    effect: Cohen's d from the observed t (``d = |t| sqrt(1/n1 + 1/n2)``), then
    ``n = 2 (z_{1-alpha/2} + z_{power})^2 / d^2 + 1`` (normal approximation, +1 for the t test).
    The observed effect of a small cohort is itself uncertain: the number is a planning
    guide, not a guarantee."""
    from scipy.stats import norm

    n1, n2 = int(n_case or 0), int(n_control or 0)
    if n1 < 2 or n2 < 2 or not np.isfinite(effect_t) or effect_t == 0:
        return {"per_group": None, "cohens_d": None,
                "why": "no donor-level effect to plan from (too few donors, or no effect)"}
    d = abs(float(effect_t)) * math.sqrt(1 / n1 + 1 / n2)
    n = 2 * ((norm.ppf(1 - alpha / 2) + norm.ppf(power)) / d) ** 2 + 1
    per_group = int(math.ceil(n))
    out = {"per_group": per_group if per_group <= MAX_DONORS else None,
           "cohens_d": round(d, 3), "alpha": alpha, "power": power,
           "observed": {"n_case": n1, "n_control": n2}}
    if per_group > MAX_DONORS:
        out["why"] = (f"the observed effect (d = {d:.2f}) would need more than {MAX_DONORS} "
                      "donors per group")
    return out


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def plan_tier(h: dict[str, Any], *, min_gene_auroc: float = 0.7) -> tuple[str, dict[str, Any]]:
    """The tier of a plan for hypothesis ``h`` (a hypotheses.json record) and its basis: the
    independent evidence present, what is missing (each with its number), and the donors per
    group that would settle the donor-level question (:func:`donors_needed`; for a hypothesis a
    technical covariate explains, ``balanced_across`` names the covariates the new donors'
    cases and controls must be balanced across)."""
    ev = h.get("evidence", {})
    dl = ev.get("donor_level", {}) or {}
    rep = ev.get("replication", {}) or {}
    q = _num(dl.get("q"))
    auroc = _num(rep.get("biomarker_auroc_test"))
    agree = _num((ev.get("cross_check") or {}).get("agreement"))
    present, missing = [], []
    checks = [
        (q < 0.05, f"donor-level q = {q:.3g} on discovery donors",
         f"donor-level q = {q:.3g} (needs < 0.05)" if np.isfinite(q)
         else "no donor-level test (too few donors in this cell type)"),
        (bool(rep.get("replicated")),
         f"replicated on {rep.get('n_donors')} test donors (p = "
         f"{_num(rep.get('p_one_sided')):.3g})",
         f"not replicated on the {rep.get('n_donors', 0)} test donors"
         + (f" (one-sided p = {_num(rep.get('p_one_sided')):.3g})"
            if np.isfinite(_num(rep.get("p_one_sided"))) else "")),
        (auroc >= min_gene_auroc, f"biomarker AUROC {auroc:.2f} on test donors",
         f"biomarker AUROC {auroc:.2f} on test donors (needs >= {min_gene_auroc:g})"
         if np.isfinite(auroc) else "no biomarker AUROC on test donors"),
        (agree >= MIN_AGREEMENT, f"baselines agree ({agree:.2f})",
         f"baselines agree weakly ({agree:.2f}, needs >= {MIN_AGREEMENT})"
         if np.isfinite(agree) else None),
    ]
    for ok, yes, no in checks:
        if ok:
            present.append(yes)
        elif no:
            missing.append(no)
    flags = h.get("flags", [])
    for f in flags:
        missing.append(f"flag {f.get('kind')}" + (f" (by {f['by']})" if f.get("by") else "")
                       + ": " + str(f.get("detail", "")).split(";")[0][:160])
    status = h.get("status")
    if status == "supported":
        tier = "recommended"
    elif status == "candidate" and present:
        tier = "exploratory"
    else:
        tier = "needs more data"
    need = donors_needed(_num(dl.get("t")), dl.get("n_case", 0), dl.get("n_control", 0))
    technical = sorted({str(f["by"]) for f in flags if f.get("by")
                        and f.get("kind") in ("confounded", "artifact_mechanism")})
    if technical:  # more donors settle nothing unless the covariate stops tracking the label
        need["balanced_across"] = technical
    basis = {"status": status, "evidence": present, "missing": missing, "donors_needed": need}
    return tier, basis


def load_assays() -> list[dict[str, Any]]:
    """The bundled assay catalog (``data/assays.yaml``)."""
    return read_yaml("assays.yaml")["assays"]


def _marker(cell_type: str) -> str:
    for gs in gene_sets(category="marker"):
        if (cell_type in (gs.name, gs.cell_type) or same_cell_type(cell_type, gs.cell_type)) \
                and gs.genes:
            return gs.genes[0]
    return f"a marker of {cell_type}"


def _fill(text: str, facts: dict[str, Any]) -> str:
    out = " ".join(str(text).split())
    for k, v in facts.items():
        out = out.replace("{" + k + "}", str(v))
    return out


def _facts(h: dict[str, Any], case: str) -> dict[str, Any]:
    ev = h["evidence"]
    dl = ev["donor_level"]
    genes = [g["symbol"] for g in h["genes"][:5]]
    pred = ev.get("in_silico", {}).get("mean_effect")
    conf = next((f["by"] for f in h["flags"] if f["kind"] == "confounded"), "batch")
    return {
        "genes": ", ".join(genes), "gene1": genes[0] if genes else "the lead gene",
        "cell_type": h["cell_type"], "case": case, "marker": _marker(h["cell_type"]),
        "effect": f"{dl['effect']:+.2f}", "q": f"{dl['q']:.2g}", "n_donors": dl["n_donors"],
        "auroc": f"{ev['replication']['biomarker_auroc_test']:.2f}",
        "pred_effect": "n/a" if pred is None or not math.isfinite(pred) else f"{pred:+.2f}",
        "direction_word": "higher" if h["direction"] == "up" else "lower",
        "perturb_mode": "delete" if h["direction"] == "up" else "up",
        "confounder": conf,
    }


def _controls(h: dict[str, Any], facts: dict[str, Any], covariates: list[str]) -> list[str]:
    out = [f"non-{facts['cell_type']} cells of the same sections / donors as a cell-type control",
           f"{facts['marker']} as the {facts['cell_type']} identity marker"]
    kinds = {f["kind"] for f in h["flags"]}
    bys = {f["by"] for f in h["flags"]}
    out.append("case and control donors balanced within every processing batch"
               + (" (batch was flagged here)" if "batch" in bys else ""))
    for c in ("sex", "age"):
        if c in covariates:
            out.append(f"groups matched on {c}")
    if "pct_counts_mt" in bys or "total_counts" in bys:
        out.append("quality-matched samples (RIN / mitochondrial fraction), QC covariates in the "
                   "model")
    if "artifact_mechanism" in kinds:
        out.append("the model reaches this through a batch / QC-explained feature: measure the "
                   "genes in donors balanced across processing batches and with QC covariates "
                   "recorded, so the gene-level claim is tested without the model's shortcut")
    if "single_donor" in kinds:
        out.append("a sensitivity analysis leaving out the most influential donor")
    return out


def _rationale(h: dict[str, Any], graph: nx.DiGraph | None, assay: dict[str, Any],
               case: str) -> list[dict[str, Any]]:
    ev = h["evidence"]
    feats = h["features"]

    def in_graph(n: str) -> bool:
        return graph is not None and n in graph

    f_nodes = [f for f in feats if in_graph(f)]
    steps = [{
        "step": "attribution graph",
        "claim": f"In the cohort graph of {h['cell_type']} {case} cells, "
                 f"{len(feats)} feature(s) carry {ev['attribution']:.1%} of the attribution to "
                 f"the case logit.",
        "refs": {"nodes": f_nodes + (["output"] if in_graph("output") else []),
                 "features": feats},
        "numbers": {"attribution_share": ev["attribution"],
                    "direct_effect_on_logit": ev["attribution_weight"]},
    }]
    if graph is not None and f_nodes:
        edges = sorted(((u, v, d["weight"]) for f in f_nodes for u, v, d in
                        graph.in_edges(f, data=True) if graph.nodes[u].get("kind") == "gene"),
                       key=lambda t: -abs(t[2]))[:5]
        if edges:
            steps.append({
                "step": "graph path: genes -> features",
                "claim": "Genes with the largest direct effects on these features in the graph: "
                         + ", ".join(f"{graph.nodes[u]['label']} -> {v} ({w:+.3f})"
                                     for u, v, w in edges) + ".",
                "refs": {"nodes": sorted({u for u, _, _ in edges} | {v for _, v, _ in edges}),
                         "features": sorted({v for _, v, _ in edges})},
                "numbers": {f"{u}->{v}": w for u, v, w in edges},
            })
    steps.append({
        "step": "intervention",
        "claim": f"Mean-ablating the feature(s) in these cells moves the mean case logit by "
                 f"{ev['ablation_delta']:+.3f} (graph prediction "
                 f"{ev['ablation_predicted']:+.3f}).",
        "refs": {"nodes": f_nodes, "features": feats},
        "numbers": {"ablation_delta": ev["ablation_delta"],
                    "ablation_predicted": ev["ablation_predicted"]},
    })
    gene_nodes = [f"gene:{g['symbol']}" for g in h["genes"][:10] if in_graph(f"gene:{g['symbol']}")]
    side = ev.get("gene_side", 1)
    dl, rep = ev["donor_level"], ev["replication"]
    word = "higher" if h["direction"] == "up" else "lower"
    steps.append({
        "step": "program genes",
        "claim": f"Gene expression: across the {h['cell_type']} cells of discovery donors, "
                 "the genes most correlated with the feature(s)' activity (partial "
                 "correlation r given batch and mitochondrial fraction) are "
                 + ", ".join(f"{g['symbol']} (r = {side * g['weight']:+.2f})"
                             for g in h["genes"][:5])
                 + f": they {'rise' if side > 0 else 'fall'} as the activity rises"
                 + (" (negative r: lower where the feature is active)" if side < 0 else "")
                 + f", and are {word} in {case} donors.",
        "refs": {"nodes": gene_nodes, "features": feats},
        "numbers": {g["symbol"]: side * g["weight"] for g in h["genes"][:10]},
    })
    steps.append({
        "step": "donor-level test",
        "claim": f"Feature activity is {'higher' if dl['effect'] > 0 else 'lower'} in {case} "
                 f"donors: effect {dl['effect']:+.3f}, p = {dl['p']:.2g}, q = "
                 f"{dl['q']:.2g} over {dl['n_donors']} discovery donors (Welch on donor means)"
                 + (f"; with genes that fall as it rises, the program's expression is {word} "
                    f"in {case}." if side < 0 else "."),
        "refs": {"nodes": f_nodes, "features": feats},
        "numbers": {k: dl[k] for k in ("effect", "t", "p", "q", "n_donors")},
    })
    steps.append({
        "step": "replication",
        "claim": f"Held-out test donors: effect {rep['effect']:+.3f}, one-sided p = "
                 f"{rep['p_one_sided']:.2g} ({'replicated' if rep['replicated'] else 'not replicated'}); "
                 f"the distilled biomarker ({len(h['biomarker']['genes'])} genes) reaches AUROC "
                 f"{rep['biomarker_auroc_test']:.2f} on test donors"
                 + (f" vs the model's {rep['model_auroc_test']:.2f}."
                    if rep.get("model_auroc_test") is not None else "."),
        "refs": {"nodes": gene_nodes, "features": feats},
        "numbers": {"effect": rep["effect"], "p_one_sided": rep["p_one_sided"],
                    "biomarker_auroc_test": rep["biomarker_auroc_test"],
                    "model_auroc_test": rep.get("model_auroc_test")},
    })
    cc = ev["cross_check"]
    steps.append({
        "step": "cross-check",
        "claim": f"Agreement of other methods on the top genes: {cc['agreement']:.2f} "
                 f"(share of genes in each method's top 50, and in-silico hits: "
                 f"{cc['in_silico_hits']}).",
        "refs": {"nodes": gene_nodes, "features": feats},
        "numbers": {"agreement": cc["agreement"], "in_silico_hits": cc["in_silico_hits"]},
    })
    conf_txt = "; ".join(f["detail"] for f in h["flags"]) or (
        "no technical covariate, sex, age, composition or single donor explains the "
        "donor-level signal better than the label")
    roles = ev.get("feature_roles", [])
    art = ev.get("artifact_share", 0.0)
    if roles:
        bad = [r["feature"] for r in roles if r["artifact"]]
        steps.append({
            "step": "mechanism",
            "claim": (f"{art:.0%} of its attribution flows through features explained by "
                      f"batch / QC or annotated as artifacts ({', '.join(bad)}): "
                      + ("the model reaches this through a confounded feature, so the claim "
                         "about the model's mechanism is not supported even where the gene-level "
                         "donor evidence holds." if any(f["kind"] == "artifact_mechanism"
                                                         for f in h["flags"])
                         else "a minority that does not lead.")
                      if bad else "None of its features is explained by batch or QC in "
                                  f"{h['cell_type']} or annotated as an artifact."),
            "refs": {"nodes": [n for n in bad if in_graph(n)], "features": feats},
            "numbers": {"artifact_share": art,
                        **{r["feature"]: r["share"] for r in roles}},
        })
    steps.append({
        "step": "confound checks",
        "claim": conf_txt[0].upper() + conf_txt[1:] + ".",
        "refs": {"nodes": f_nodes, "features": feats},
        "numbers": {k: v.get("r2") for k, v in ev["confounds"].items() if "r2" in v},
    })
    steps.append({
        "step": "assay choice",
        "claim": f"{assay['name']}: suits a {h['status']} {h['kind']} hypothesis with genes "
                 f"{'up' if h['direction'] == 'up' else 'down'} in {case}; it tests "
                 f"{' '.join(str(assay['tests']).split())}.",
        "refs": {"nodes": f_nodes, "features": feats},
        "numbers": {"cost_tier": assay["cost_tier"], "time_tier": assay["time_tier"],
                    "informativeness": assay["informativeness"]},
    })
    return steps


def make_plans(
    hypotheses: list[Hypothesis],
    graphs: dict[str, nx.DiGraph],
    *,
    case: str,
    covariates: list[str] | None = None,
    per_hypothesis: int = 2,
    assays: list[dict[str, Any]] | None = None,
    min_gene_auroc: float = 0.7,
) -> list[Plan]:
    """Plans (:class:`discovery.tl.records.Plan`, by decreasing priority) for ``hypotheses``;
    sets each hypothesis's ``plans`` ids.

    ``graphs``: the cohort graphs by name (``hypothesis['population_graph']``), used to resolve
    rationale refs. Plans are returned by tier (:data:`TIERS`), then by decreasing priority,
    ids ``P1``, ``P2`` ...; ``min_gene_auroc``: the hypotheses' biomarker bar (tier rules).
    """
    assays = assays if assays is not None else load_assays()
    covariates = covariates or []
    plans: list[dict[str, Any]] = []
    records = [h.to_dict() for h in hypotheses]  # the facts the assay templates are filled from
    for h in records:
        if h["status"] == "rejected":
            continue
        eligible = [a for a in assays if h["kind"] in a["kinds"]
                    and h["direction"] in a["directions"] and h["status"] in a["statuses"]]
        facts = _facts(h, case)
        tier, basis = plan_tier(h, min_gene_auroc=min_gene_auroc)
        scored = []
        for a in eligible:
            info = h["score"] * float(a["informativeness"])
            feas = 1.0 / math.sqrt(float(a["cost_tier"]) * float(a["time_tier"]))
            scored.append((info * feas, a))
        scored.sort(key=lambda t: (-t[0], t[1]["id"]))
        n = 1 if h["status"] == "flagged" else per_hypothesis
        graph = graphs.get(h.get("population_graph", ""))
        for priority, a in scored[:n]:
            plans.append({
                "id": "", "hypothesis": h["id"], "assay_id": a["id"],
                "title": f"{a['name']}: {facts['genes']} in {h['cell_type']}",
                "assay": a["name"], "modality": a["modality"],
                "design": _fill(a["design"], facts),
                "expected_outcome": _fill(a["expected"], facts),
                "falsified_if": _fill(a["falsified_if"], facts),
                "readout": _fill(a["readout"], facts),
                "prerequisites": [_fill(p, facts) for p in a["prerequisites"]],
                "controls": _controls(h, facts, covariates),
                "priority": float(priority),
                "source": " ".join(str(a["source"]).split()),
                "rationale": _rationale(h, graph, a, case),
                "tier": tier, "tier_basis": basis,
                "_genes": [g["symbol"] for g in h["genes"][:5]], "_cell_type": h["cell_type"],
                "_direction": h["direction"],
            })
    plans.sort(key=lambda p: (TIERS.index(p["tier"]), -p["priority"], p["hypothesis"],
                              p["assay_id"]))
    plans = _one_plan_per_experiment(plans)
    by_h = {h.id: h for h in hypotheses}
    for h in hypotheses:
        h.plans = []
    for i, p in enumerate(plans, 1):
        p["id"] = f"P{i}"
        for hid in [p["hypothesis"], *p.get("also_tests", [])]:
            by_h[hid].plans.append(p["id"])
    return [Plan.from_dict(p) for p in plans]


#: two plans with the same assay in the same cell type and direction whose gene panels share
#: this many of their genes are one experiment
SAME_EXPERIMENT_GENES = 3


def _one_plan_per_experiment(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Near-identical plans (same assay, cell type and direction, >= SAME_EXPERIMENT_GENES
    genes of the panel shared) are one plan: the first by priority is kept, lists the other
    hypotheses it also tests (``also_tests``), and takes over their controls and their
    mechanism caveat (a twin reached through a batch-explained feature keeps saying so)."""
    kept: list[dict[str, Any]] = []
    for p in plans:
        genes = set(p["_genes"])
        twin = next((k for k in kept if k["assay_id"] == p["assay_id"]
                     and k["_cell_type"] == p["_cell_type"]
                     and k["_direction"] == p["_direction"]
                     and len(genes & set(k["_genes"])) >= SAME_EXPERIMENT_GENES), None)
        if twin is None:
            kept.append(p)
            continue
        if p["hypothesis"] == twin["hypothesis"]:
            continue
        also = twin.setdefault("also_tests", [])
        if p["hypothesis"] not in also:
            also.append(p["hypothesis"])
        twin["controls"] += [c for c in p["controls"] if c not in twin["controls"]]
        mech = next((s for s in p["rationale"] if s["step"] == "mechanism"), None)
        if mech is not None and mech not in twin["rationale"]:
            twin["rationale"].append({**mech, "step": f"mechanism ({p['hypothesis']})"})
    for p in kept:
        del p["_genes"], p["_cell_type"], p["_direction"]
    return kept
