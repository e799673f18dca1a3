"""Hypotheses across cohorts: which programs replicate, and which one cohort alone shows.

A consortium with several cohorts (or a discovery and a replication cohort) asks first which
findings recur. :func:`compare_cohorts` matches the hypotheses of several runs: two hypotheses are
the same program when they name the same cell type (loosely: case, plural, spaces), the same
direction, and share at least :data:`MIN_SHARED_GENES` of their top :data:`TOP_GENES` genes with
the program's first (highest-scoring) hypothesis. Flagged hypotheses (technical artifacts) are
not matched: an artifact recurring across cohorts is not a replicated finding. A program seen in
two or more cohorts is ``replicated``; one seen in a single cohort is ``single-cohort``.
"""

from __future__ import annotations

from typing import Any

from discovery.io.bundled import canonical_cell_type

__all__ = ["MIN_SHARED_GENES", "TOP_GENES", "compare_cohorts", "same_cell_type"]

#: genes of a hypothesis compared across cohorts (its strongest first)
TOP_GENES = 10
#: shared top genes that make two hypotheses one program
MIN_SHARED_GENES = 3
#: statuses that take part in the comparison
STATUSES = ("supported", "candidate")

COMPARISON_RULES = {
    "match": f"same cell type (case, plural and spacing ignored), same direction, and at least "
             f"{MIN_SHARED_GENES} of the top {TOP_GENES} genes shared with the program's "
             "highest-scoring hypothesis",
    "replicated": "the program has a supported or candidate hypothesis in two or more cohorts",
    "single-cohort": "the program is seen in one cohort only",
    "excluded": "flagged hypotheses (technical artifacts): a recurring artifact is not a finding",
}


def same_cell_type(a: Any, b: Any) -> bool:
    """Cell-type names compared as populations: case, plural 's', spaces and hyphens ignored
    ("Oligodendrocyte" is "oligodendrocytes"), and Cell Ontology labels equal their bundled
    synonyms ("microglial cell" is "Microglia"; :func:`discovery.io.bundled.canonical_cell_type`).
    Missing names (None, NaN) match nothing."""
    ka = canonical_cell_type(a)
    return ka is not None and ka == canonical_cell_type(b)


def _top(h: dict[str, Any]) -> list[str]:
    return [g["symbol"] for g in h.get("genes", [])[:TOP_GENES]]


def _entry(h: dict[str, Any]) -> dict[str, Any]:
    ev = h.get("evidence", {})
    dl, rep = ev.get("donor_level", {}) or {}, ev.get("replication", {}) or {}
    return {"id": h["id"], "status": h["status"], "kind": h.get("kind"),
            "score": h.get("score"), "genes": _top(h),
            "donor_effect": dl.get("effect"), "donor_q": dl.get("q"),
            "replicated_in_cohort": rep.get("replicated"),
            "biomarker_auroc_test": rep.get("biomarker_auroc_test")}


def compare_cohorts(cohorts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Match the hypotheses (hypotheses.json records) of each cohort into programs.

    Returns ``{"rules", "cohorts", "programs"}``; each program has ``id`` (R1, R2 ...),
    ``cell_type``, ``direction``, ``genes`` (its first hypothesis's top genes), ``shared_genes``
    (top genes found in at least two cohorts' matching hypotheses), ``cohorts`` (cohort -> the
    matching hypotheses with their effects side by side), ``n_cohorts`` and ``status``
    (replicated | single-cohort). Replicated programs come first, then by best score.
    """
    entries = [(name, h) for name, hyps in cohorts.items() for h in hyps
               if h.get("status") in STATUSES]
    entries.sort(key=lambda e: (-float(e[1].get("score") or 0), e[0], e[1]["id"]))
    programs: list[dict[str, Any]] = []
    for name, h in entries:
        genes = set(_top(h))
        match = None
        best = MIN_SHARED_GENES - 1
        for prog in programs:
            if (prog["direction"] != h.get("direction")
                    or not same_cell_type(prog["cell_type"], h.get("cell_type"))):
                continue
            shared = len(genes & set(prog["genes"]))
            if shared > best:
                match, best = prog, shared
        if match is None:
            match = {"cell_type": h.get("cell_type"), "direction": h.get("direction"),
                     "genes": _top(h), "cohorts": {}, "best_score": float(h.get("score") or 0)}
            programs.append(match)
        match["cohorts"].setdefault(name, []).append(_entry(h))
    for prog in programs:
        prog["n_cohorts"] = len(prog["cohorts"])
        prog["status"] = "replicated" if prog["n_cohorts"] >= 2 else "single-cohort"
        seen: dict[str, set[str]] = {}
        for cohort, hs in prog["cohorts"].items():
            for g in {g for e in hs for g in e["genes"]}:
                seen.setdefault(g, set()).add(cohort)
        prog["shared_genes"] = [g for g in prog["genes"] if len(seen.get(g, ())) >= 2]
    programs.sort(key=lambda p: (-p["n_cohorts"], -p["best_score"]))
    for i, prog in enumerate(programs, 1):
        prog["id"] = f"R{i}"
        del prog["best_score"]
    ordered = [{k: p[k] for k in ("id", "status", "n_cohorts", "cell_type", "direction", "genes",
                                  "shared_genes", "cohorts")} for p in programs]
    return {"schema_version": 1, "rules": COMPARISON_RULES, "cohorts": list(cohorts),
            "programs": ordered}
