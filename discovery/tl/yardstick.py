"""The yardstick: score any ranked gene list against the planted truth of a simulated cohort.

For each planted program (cell type, direction, genes) and a method's ranking of that cell type
in that direction:

1. precision@k: the share of the top k genes that belong to the program (k = 10; the denominator
   is min(k, program size)).
2. AUPRC: average precision over the whole gene universe, program genes positive; genes the
   method did not rank count as ranked last (so a method cannot gain by ranking fewer genes).

And over every (cell type, direction) list of the method:

3. artifact false discoveries: the number of planted artifact genes (technical batch program,
   mitochondrial genes) in the top 20, summed over lists.

The randomised suite (:func:`score_programs`) reports, per program, recall@k = |top k ∩ program|
/ min(k, program size) (the share of what could fit in the top k) for k = 10 and 20, and strict
precision@10 = |top 10 ∩ program| / 10; artifact false discoveries are then counted in the top 10,
over the artifact genes that are not also program genes (an immediate-early gene can be both).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["artifact_false_discoveries", "average_precision", "precision_at_k", "score_programs",
           "score_ranking"]


def precision_at_k(ranked: Sequence[str], positives: Iterable[str], k: int = 10) -> float:
    """|top-k ∩ positives| / min(k, |positives|)."""
    pos = set(positives)
    if not pos:
        return float("nan")
    return len(set(list(ranked)[:k]) & pos) / min(k, len(pos))


def average_precision(
    ranked: Sequence[str], positives: Iterable[str], universe: Sequence[str]
) -> float:
    """Average precision of a ranking over ``universe`` (unranked genes appended last).

    AP = (1 / |P|) * sum over positives p of precision at the rank of p.
    """
    pos = set(positives) & set(universe)
    if not pos:
        return float("nan")
    ranked = list(dict.fromkeys(g for g in ranked if g in set(universe)))
    seen = set(ranked)
    # unranked genes go last, positives after every negative (the least favourable order)
    ranked += [g for g in universe if g not in seen and g not in pos]
    ranked += [g for g in universe if g not in seen and g in pos]
    hits = np.array([g in pos for g in ranked], float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / len(pos))


def artifact_false_discoveries(
    ranking: pd.DataFrame, artifact_genes: Iterable[str], *, top: int = 20
) -> int:
    """Artifact genes in the top ``top`` of every (cell type, direction) list, summed."""
    art = set(artifact_genes)
    total = 0
    for _, grp in ranking.groupby(["cell_type", "direction"], sort=True):
        total += len(set(grp.sort_values("rank")["gene"].head(top)) & art)
    return total


def score_ranking(
    ranking: pd.DataFrame, truth: dict[str, Any], universe: Sequence[str], *, k: int = 10
) -> pd.DataFrame:
    """Score a ranking table (``cell_type, direction, rank, gene``) against a truth dict.

    Returns one row per planted program with ``precision_at_k``, ``auprc``, and the method-wide
    ``artifact_fd`` repeated on each row. Programs with no planted effect are skipped.
    """
    artifact_genes = {g for a in truth["artifacts"].values() for g in a["genes"]}
    fd = artifact_false_discoveries(ranking, artifact_genes)
    rows = []
    for name, prog in sorted(truth["programs"].items()):
        if not prog["effect_size"]:
            continue
        sub = ranking[(ranking["cell_type"] == prog["cell_type"])
                      & (ranking["direction"] == prog["direction"])].sort_values("rank")
        genes = sub["gene"].tolist()
        rows.append({
            "program": name,
            "cell_type": prog["cell_type"],
            "direction": prog["direction"],
            "precision_at_k": precision_at_k(genes, prog["genes"], k),
            "auprc": average_precision(genes, prog["genes"], universe),
            "artifact_fd": fd,
        })
    if not rows:  # null scenario: only the false discoveries are defined
        rows.append({"program": None, "cell_type": None, "direction": None,
                     "precision_at_k": np.nan, "auprc": np.nan, "artifact_fd": fd})
    return pd.DataFrame(rows)


def score_programs(ranking: pd.DataFrame, truth: dict[str, Any]) -> tuple[pd.DataFrame, int]:
    """Per-program recall@10, recall@20 and precision@10 of a ranking, and the artifact false
    discoveries in the top 10 of every list (artifact genes that are no program's genes).

    Returns ``(one row per planted program, false discoveries)``; no rows when nothing is planted.
    """
    program_genes = {g for p in truth["programs"].values() for g in p["genes"]}
    artifact = {g for a in truth["artifacts"].values() for g in a.get("genes", [])}
    fd = artifact_false_discoveries(ranking, artifact - program_genes, top=10)
    lists = {key: grp.sort_values("rank")["gene"].tolist()
             for key, grp in ranking.groupby(["cell_type", "direction"], sort=True)}
    rows = []
    for name, prog in sorted(truth["programs"].items()):
        genes = lists.get((prog["cell_type"], prog["direction"]), [])
        hits10 = len(set(genes[:10]) & set(prog["genes"]))
        rows.append({"program": name, "kind": prog.get("kind", "shift"),
                     "cell_type": prog["cell_type"], "direction": prog["direction"],
                     "effect": float(prog["effect_size"]), "n_genes": len(prog["genes"]),
                     "recall_at_10": precision_at_k(genes, prog["genes"], 10),
                     "recall_at_20": precision_at_k(genes, prog["genes"], 20),
                     "precision_at_10": hits10 / 10})
    return pd.DataFrame(rows), fd
