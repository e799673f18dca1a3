"""Figures of the report and the app, each a function that returns a matplotlib ``Figure``.

They read results (hypotheses, graph validations), not the model: a notebook, the report and the
app draw the same picture from the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = ["donor_activation", "faithfulness"]

CASE_COLOR, CONTROL_COLOR = "#e76f51", "#457b9d"


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def donor_activation(hypotheses: Sequence[Any], *, n: int = 6) -> Any | None:
    """Donor-level activation of the top ``n`` hypotheses: one panel each, control vs case
    donors, discovery donors left of each group and held-out test donors right.

    Reads each hypothesis's ``donors`` records (:class:`discovery.tl.records.Hypothesis`
    objects or hypotheses.json records). Returns a matplotlib
    ``Figure``, or None when no hypothesis has donor records.
    """
    plt = _pyplot()
    records = [h.to_dict() if hasattr(h, "to_dict") else h for h in hypotheses]
    top = [h for h in records if h.get("donors")][:n]
    if not top:
        return None
    fig, axes = plt.subplots(1, len(top), figsize=(2.6 * len(top), 2.8), squeeze=False)
    for ax, h in zip(axes[0], top):
        d = pd.DataFrame(h["donors"])
        for j, (lab, grp) in enumerate(d.groupby("case")):
            color = CASE_COLOR if lab else CONTROL_COLOR
            x = j + (grp["split"] == "test").map({True: 0.15, False: -0.15})
            ax.scatter(x, grp["activation"], s=14, color=color, marker="o", alpha=0.8)
        ax.set_xticks([0, 1], ["control", "case"])
        ax.set_title(f"{h['id']} · {h['cell_type']}", fontsize=8)
        ax.set_ylabel("donor mean activation", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("Donor-level activation (left of each group: discovery donors; right: "
                 "held-out test donors)", fontsize=8)
    return fig


def faithfulness(validations: Mapping[str, Mapping[str, Any]]) -> Any | None:
    """Circuit faithfulness against the number of feature nodes kept, one curve per graph, with
    the 0.8 line (Marks et al. 2024).

    Reads each validation's ``circuit_curve`` (``graphs/<slug>.validation.json``). Returns a
    matplotlib ``Figure``, or None without validations.
    """
    if not validations:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, val in validations.items():
        curve = val.get("circuit_curve", [])
        ax.plot([c["n_features"] for c in curve], [c["faithfulness"] for c in curve],
                marker="o", ms=3, label=name)
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xscale("symlog")
    ax.set_xlabel("feature nodes in the circuit", fontsize=8)
    ax.set_ylabel("faithfulness", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    return fig
