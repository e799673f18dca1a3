"""What a scientist's reason does when the reason is not a technical artifact.

Technical artifacts and confounders change the model (:mod:`discovery.tl.refine`). The other
reasons change the evidence and the ranking of the child run, each in a stated way, and the
child's ``refine.json`` and report say which feedback caused which change:

- ``known_biology``: the hypothesis is true but not new. It is kept (the model found what is
  known: a positive control), marked ``novelty: known`` with the expert's note as a caveat, and
  ranked after every hypothesis nobody called known.
- ``wrong_cell_type`` (cell-type contamination: ambient RNA, doublets, a mis-annotated cluster):
  the hypothesis is rejected, and the expert's example becomes a check on every hypothesis. A
  contaminating signal is carried by genes that belong to another cell type: the check measures,
  for a hypothesis's top genes, the median ratio of their mean expression in the most expressing
  other cell type to their mean expression in the hypothesis's own cell type
  (:func:`contamination_ratio`). The rule asks for at least half the example's log ratio: the
  threshold is the square root of the smallest ratio among the marked examples (a program
  whose genes lean at least half as far, on the log scale, towards another cell type), and
  there is no rule when an example's genes are less than twice as expressed elsewhere
  (:data:`MIN_EXAMPLE_RATIO`: too weak to separate contamination from shared genes). Every
  other hypothesis at or above the threshold is flagged ``contamination`` (its score takes the
  flagged factor, as a flag the pipeline finds would). A known hypothesis's score is halved,
  so its plans follow it down.
- ``single_donor``: the donor that drives the hypothesis (the largest drop of its donor-level t
  when one discovery donor is left out, ``evidence.confounds.donor``) is excluded from the child
  run, so every donor-level statistic there is computed without it.
- ``implausible_direction`` and ``other``: the hypothesis is rejected (no plans) and ranked last;
  the note is kept.
- ``agree``: recorded; a thumbs-up is not evidence and changes nothing.

A parent hypothesis is found again in the child by :func:`same_hypothesis` (same cell type and
direction, shared top genes); feedback on a feature stands for the parent hypotheses it drives,
feedback on a plan for its hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from discovery.io.contract import get_keys
from discovery.tl.records import FLAGGED_FACTOR, Flag, Hypothesis

__all__ = ["EXPERT_REASONS", "ExpertNote", "apply_expert", "contamination_ratio",
           "donors_to_exclude", "expert_notes", "same_hypothesis"]

#: reasons that change the ranking or the cohort (the artifact reasons change the model)
EXPERT_REASONS = ("known_biology", "wrong_cell_type", "single_donor", "implausible_direction",
                  "other")
#: what each reason does, as the report states it
EFFECTS = {
    "known_biology": "kept as a positive control, ranked after the hypotheses nobody called "
                     "known",
    "wrong_cell_type": "rejected; its genes' expression in other cell types became a "
                       "contamination check on every hypothesis",
    "single_donor": "the donor that drives it was excluded from the child run",
    "implausible_direction": "rejected (no plans), ranked last",
    "other": "rejected (no plans), ranked last",
}
#: shared top-10 genes for a child hypothesis to be the parent's found again
MIN_SHARED = 5
#: a contamination example must lean at least this far towards another cell type to become a
#: rule (genes twice as expressed elsewhere); a weaker one is rejected alone
MIN_EXAMPLE_RATIO = 2.0
#: score factor of a hypothesis an expert called known (plans follow the score)
KNOWN_FACTOR = 0.5


@dataclass
class ExpertNote:
    """One ``disagree`` feedback row with a non-artifact reason, resolved to the parent
    hypotheses it is about."""

    feedback_id: int
    reason: str
    target: str
    author: str
    note: str
    hypotheses: list[dict[str, Any]] = field(default_factory=list)


def same_hypothesis(a: dict[str, Any], b: dict[str, Any], min_shared: int = MIN_SHARED) -> bool:
    """Whether ``a`` and ``b`` (hypothesis records of two runs) are the same claim: same cell
    type and direction, at least ``min_shared`` of their top-10 genes in common."""
    if a["cell_type"] != b["cell_type"] or a["direction"] != b["direction"]:
        return False
    ta = {g["symbol"] for g in a["genes"][:10]}
    tb = {g["symbol"] for g in b["genes"][:10]}
    return len(ta & tb) >= min(min_shared, len(ta), len(tb))


def expert_notes(items: pd.DataFrame, hyps: list[dict[str, Any]],
                 plans: list[dict[str, Any]] | None = None) -> list[ExpertNote]:
    """The ``disagree`` rows of a feedback table whose reason is one of
    :data:`EXPERT_REASONS`, each with the parent hypotheses it names (a feature names the
    hypotheses it drives, a plan its hypothesis)."""
    by_id = {h["id"]: h for h in hyps}
    plan_h = {p["id"]: p["hypothesis"] for p in plans or []}
    notes = []
    for row in items.itertuples():
        if row.verdict != "disagree" or row.reason not in EXPERT_REASONS:
            continue
        if row.target_kind == "hypothesis":
            named = [by_id[row.target_id]] if row.target_id in by_id else []
        elif row.target_kind == "plan":
            hid = plan_h.get(row.target_id)
            named = [by_id[hid]] if hid in by_id else []
        else:
            named = [h for h in hyps if row.target_id in h["features"]]
        notes.append(ExpertNote(int(row.id), str(row.reason), str(row.target_id),
                                str(row.author), str(row.note or ""), named))
    return notes


def donors_to_exclude(notes: list[ExpertNote]) -> list[dict[str, Any]]:
    """For each ``single_donor`` note, the donor that drives each hypothesis it names (the
    largest leave-one-donor-out drop of the donor-level t)."""
    out: dict[str, dict[str, Any]] = {}
    for n in notes:
        if n.reason != "single_donor":
            continue
        for h in n.hypotheses:
            d = h["evidence"].get("confounds", {}).get("donor", {})
            if d.get("donor") is None:
                continue
            rec = out.setdefault(str(d["donor"]), {"donor": str(d["donor"]), "feedback": [],
                                                   "hypotheses": [], "t_drop": 0.0})
            rec["feedback"].append(n.feedback_id)
            rec["hypotheses"].append(h["id"])
            rec["t_drop"] = max(rec["t_drop"], float(d.get("max_t_drop", 0.0)))
    return list(out.values())


def contamination_ratio(adata: ad.AnnData, genes: list[str],
                        cell_type: str) -> tuple[float, str | None]:
    """Median over ``genes`` of (mean expression in the most expressing other cell type) /
    (mean expression in ``cell_type``), on ``adata.X`` (log-normalised); and that other cell
    type. Above 1: the genes belong elsewhere more than to the hypothesis's cell type."""
    keys = get_keys(adata)
    ct_key = keys.cell_type_key
    genes = [g for g in genes if g in adata.var_names]
    if ct_key is None or not genes:
        return float("nan"), None
    x = adata[:, genes].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    cts = adata.obs[ct_key].astype(str).to_numpy()
    if cell_type not in set(cts):
        return float("nan"), None
    means = pd.DataFrame(x, columns=genes).groupby(cts).mean()
    own = means.loc[cell_type].to_numpy()
    others = means.drop(index=cell_type)
    if others.empty:
        return float("nan"), None
    eps = 1e-3
    ratios = (others.to_numpy() + eps) / (own + eps)  # (other types, genes)
    per_type = np.median(ratios, axis=1)
    i = int(np.argmax(per_type))
    return float(per_type[i]), str(others.index[i])


def _find(parent: dict[str, Any], hyps: list[Hypothesis]) -> list[Hypothesis]:
    """The child hypotheses that are ``parent`` found again (matched on the fields
    :func:`same_hypothesis` reads, without serialising each record)."""
    return [h for h in hyps if same_hypothesis(
        parent, {"cell_type": h.cell_type, "direction": h.direction, "genes": h.genes})]


def apply_expert(adata: ad.AnnData, hyps: list[Hypothesis], notes: list[ExpertNote], *,
                 excluded: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Apply ``notes`` to the child run's hypotheses (in place: status, flags, caveats, then
    order, ids and ranks) and return one record per note saying what changed.

    ``excluded``: the donors :func:`donors_to_exclude` took out of the child run."""
    before = {id(h): (h.id, h.rank, h.status) for h in hyps}
    group: dict[int, int] = {}  # 0 untouched, 1 known, 2 flagged by an expert check, 3 rejected
    effects: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for n in notes:
        who = f"{n.author} (feedback #{n.feedback_id})"
        found = [c for p in n.hypotheses for c in _find(p, hyps)]
        rec: dict[str, Any] = {"feedback": n.feedback_id, "reason": n.reason,
                               "target": n.target, "author": n.author, "note": n.note,
                               "parent_hypotheses": [p["id"] for p in n.hypotheses],
                               "effect": EFFECTS[n.reason], "_found": found}
        if n.reason == "known_biology":
            for h in found:
                h.extra["novelty"] = "known"
                h.score *= KNOWN_FACTOR
                h.caveats.append(Flag("known_biology", n.author, 0.0,
                                      f"{who} says this is known biology"
                                      + (f": {n.note}" if n.note else "")))
                group[id(h)] = max(group.get(id(h), 0), 1)
        elif n.reason == "single_donor":
            gone = [d["donor"] for d in excluded or [] if n.feedback_id in d["feedback"]]
            rec["excluded_donors"] = gone
            if not gone:
                rec["effect"] = ("no donor excluded: " + (
                    "no hypothesis of the parent matches the target" if not n.hypotheses else
                    "the hypothesis has no donor-level influence record (a leave-one-donor-out "
                    "test needs discovery donors)"))
        else:  # wrong_cell_type, implausible_direction, other: rejected
            for h in found:
                h.status = "rejected"
                h.flags.append(Flag("expert", n.author, 1.0,
                                    f"{who} rejected it: {n.reason.replace('_', ' ')}"
                                    + (f": {n.note}" if n.note else "")))
                group[id(h)] = 3
            if n.reason == "wrong_cell_type":
                checks.append(_contamination_check(n, adata))
                rec["check"] = checks[-1]
                if checks[-1]["threshold"] is None:
                    rec["effect"] = "rejected; no contamination check: " + checks[-1]["why"]
        effects.append(rec)
    ratios: dict[int, tuple[float, str | None]] = {}  # per hypothesis, shared by the checks
    for chk in checks:
        if chk["threshold"] is None:
            continue
        for h in hyps:
            if h.status == "rejected":
                continue
            if id(h) not in ratios:
                ratios[id(h)] = contamination_ratio(
                    adata, [g["symbol"] for g in h.genes[:10]], h.cell_type)
            ratio, other = ratios[id(h)]
            if np.isfinite(ratio) and ratio >= chk["threshold"]:
                h.flags.append(Flag("contamination", other, float(1 - 1 / ratio),
                                    f"its genes are expressed {ratio:.1f}x more in {other} "
                                    f"than in {h.cell_type} (check from feedback "
                                    f"#{chk['feedback']}: ratio >= {chk['threshold']:.2f})"))
                if h.status != "flagged":
                    h.score *= FLAGGED_FACTOR  # as a flag found by the pipeline would
                h.status = "flagged"
                group[id(h)] = max(group.get(id(h), 0), 2)
                chk.setdefault("_flagged", []).append(h)
    order = sorted(range(len(hyps)), key=lambda i: (group.get(id(hyps[i]), 0), i))
    hyps[:] = [hyps[i] for i in order]
    for i, h in enumerate(hyps, 1):
        h.id, h.rank = f"H{i}", i
    for rec in effects:
        found = rec.pop("_found")
        rec["child_hypotheses"] = [{"id": h.id, "rank": h.rank, "status": h.status,
                                    "rank_before_feedback": before[id(h)][1],
                                    "status_before_feedback": before[id(h)][2]}
                                   for h in found]
        if "check" in rec:
            rec["check"]["flagged"] = [h.id for h in rec["check"].pop("_flagged", [])]
        if not found and rec["reason"] != "single_donor":
            rec["effect"] += (" — but no hypothesis of this run matches "
                              f"{', '.join(rec['parent_hypotheses']) or rec['target']}")
    return effects


def _contamination_check(n: ExpertNote, adata: ad.AnnData) -> dict[str, Any]:
    """The rule a ``wrong_cell_type`` example gives: half the smallest log contamination ratio
    among the hypotheses it names, when every one of them is above 1."""
    ratios = []
    for h in n.hypotheses:
        r, other = contamination_ratio(adata, [g["symbol"] for g in h["genes"][:10]],
                                       h["cell_type"])
        ratios.append({"hypothesis": h["id"], "ratio": r, "other_cell_type": other})
    finite = [r["ratio"] for r in ratios if np.isfinite(r["ratio"])]
    ok = bool(finite) and len(finite) == len(ratios) and min(finite) >= MIN_EXAMPLE_RATIO
    thr = float(np.sqrt(min(finite))) if ok else None
    if ok:
        why = None
    elif not n.hypotheses:
        why = "no hypothesis of the parent matches the target"
    elif len(finite) < len(ratios):
        why = "the example's genes or cell type are not measured in this run"
    else:
        why = (f"the example's genes are at most {min(finite):.2f}x as expressed in another "
               f"cell type as in their own (a rule needs >= {MIN_EXAMPLE_RATIO:g}x), so no "
               "expression rule separates it")
    return {"feedback": n.feedback_id, "examples": ratios, "threshold": thr,
            "rule": (f"flag a hypothesis whose top genes are expressed >= {thr:.2f}x more in "
                     "another cell type than in its own (half the example's log ratio)"
                     if ok else None), "why": why}
