"""The yardstick on hand-built rankings whose scores are known."""

from __future__ import annotations

import pandas as pd
import pytest

from discovery.tl.yardstick import (
    artifact_false_discoveries,
    average_precision,
    precision_at_k,
    score_ranking,
)


def test_precision_at_k():
    assert precision_at_k(["a", "b", "c", "d"], {"a", "c"}, k=2) == 0.5
    assert precision_at_k(["a", "b", "c", "d"], {"a", "c"}, k=4) == 1.0  # min(k, |P|) = 2


def test_average_precision_known_values():
    universe = list("abcdef")
    assert average_precision(["a", "b"], {"a", "b"}, universe) == 1.0
    # positives at ranks 2 and 4: (1/2 + 2/4) / 2
    assert average_precision(["x", "a", "y", "b"], {"a", "b"}, list("xaybzz")) == pytest.approx(0.5)
    # unranked positives go last: b is ranked first, a is appended after c..f
    ap = average_precision(["b"], {"a", "b"}, universe)
    assert ap == pytest.approx((1 / 1 + 2 / 6) / 2)


def _ranking(lists):
    rows = []
    for (ct, d), genes in lists.items():
        rows += [{"cell_type": ct, "direction": d, "rank": i + 1, "gene": g}
                 for i, g in enumerate(genes)]
    return pd.DataFrame(rows)


def test_artifact_false_discoveries_counts_top20_of_each_list():
    r = _ranking({("Mg", "up"): ["FOS"] + [f"g{i}" for i in range(30)] + ["JUN"],
                  ("Mg", "down"): ["JUN", "FOS"]})
    assert artifact_false_discoveries(r, {"FOS", "JUN"}) == 3  # JUN at rank 32 not counted


def test_score_ranking():
    truth = {
        "programs": {"P": {"cell_type": "Mg", "direction": "up", "genes": ["A", "B"],
                           "effect_size": 1.0}},
        "artifacts": {"batch": {"genes": ["FOS"]}},
    }
    r = _ranking({("Mg", "up"): ["A", "FOS", "B", "C"], ("Mg", "down"): ["C", "B", "A", "FOS"]})
    s = score_ranking(r, truth, ["A", "B", "C", "FOS"])
    row = s.iloc[0]
    assert row["precision_at_k"] == 1.0
    assert row["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    assert row["artifact_fd"] == 2
