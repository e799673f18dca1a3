"""The shortcut probe's findings in words: ``model/metrics.json`` in, sentences out.

Kept apart from :mod:`discovery.tl.classifier` (which trains and probes the model with PyTorch)
so that the app's first page and the report can say what the probe found without loading it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROBE_MARGIN", "PROBE_MIN_R2", "shortcut_findings"]

#: a probe is "beyond chance" when its balanced accuracy exceeds chance by this much (batch) ...
PROBE_MARGIN = 0.15
#: ... or its cross-validated R² exceeds this (QC covariates)
PROBE_MIN_R2 = 0.2


def shortcut_findings(metrics: dict[str, Any], *, brief: bool = False) -> list[str]:
    """Sentences for every covariate the shortcut probe finds encoded beyond chance, and for a
    model at chance on held-out donors (``model/metrics.json`` in, words out). ``brief``: the
    probe's findings in one sentence (for summaries)."""
    out, short = [], []
    for col, v in metrics.get("shortcut_probe", {}).items():
        if not isinstance(v, dict):
            continue
        groups = [g for g in (v.get("case"), v.get("control")) if g]
        if not groups:
            continue
        if v.get("kind") == "batch":
            acc = float(np.mean([g["balanced_accuracy"] for g in groups]))
            chance = float(groups[0]["chance"])
            if acc > chance + PROBE_MARGIN:
                short.append(f"{col} (probe {acc:.2f}, chance {chance:.2f})")
                out.append(f"The model's representation encodes {col} beyond chance (probe "
                           f"balanced accuracy {acc:.2f} within each label group, chance "
                           f"{chance:.2f}): it can tell the processing batch apart, so a "
                           "feature it relies on may be a batch shortcut.")
        else:
            r2 = float(np.mean([g["r2"] for g in groups]))
            if r2 > PROBE_MIN_R2:
                short.append(f"{col} (R² {r2:.2f})")
                out.append(f"The model's representation encodes {col} (probe R² {r2:.2f} within "
                           "each label group): a QC covariate it could use as a shortcut.")
    if brief and short:
        out = [f"The model encodes {', '.join(short[:-1]) + ' and ' if len(short) > 1 else ''}"
               f"{short[-1]} within each label group: a feature it relies on may be a shortcut."]
    test = metrics.get("test") or {}
    ci = test.get("donor_auroc_ci")
    if test.get("at_chance") and ci:
        out.append(f"On the {test['n_donors']} held-out test donors the model's donor AUROC is "
                   f"{test['donor_auroc']:.2f} (95% interval {ci[0]:.2f}-{ci[1]:.2f}), which "
                   "includes chance: claims about its mechanism cannot be supported; the "
                   "donor-level findings (de_only hypotheses) stand on their own evidence.")
    return out
