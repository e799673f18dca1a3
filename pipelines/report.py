"""Run reports: ``report.html`` (self-contained: inline CSS and PNG figures, no external URL)
and ``report.md``, written from a run directory's files only.

Findings first: a one-screen summary (:func:`findings_summary`, also at the top of the app's
overview) with the supported and strongest candidate hypotheses in a sentence each, the
recommended plans and the warnings that matter; then a table of contents; then the detail:
cohort and model (held-out donors, shortcut probe), features (SAE quality), baselines against
planted truth (simulated cohorts), attribution graphs, hypotheses (status, evidence, flags, with
the score formula and status rules), and experimental plans by tier: recommended and exploratory
plans in full with their rationale chains, plans that need more data in one line each (what is
missing, how many donors would settle it).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.files import read_json, write_text
from discovery.io.graph_files import load_graph
from discovery.tl.shortcuts import shortcut_findings

__all__ = ["findings_summary", "graph_rows", "model_rows", "probe_rows", "refine_effect_rows",
           "sae_rows", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2330;line-height:1.45}
h1,h2,h3{color:#14213d} table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
td,th{border:1px solid #d6dae3;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#eef1f6} .badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;
font-size:.8rem;color:#fff} .supported{background:#2a9d8f} .candidate{background:#6c757d}
.flagged{background:#e76f51} .rejected{background:#343a40} .small{font-size:.85rem;color:#555}
.plan{border:1px solid #d6dae3;border-radius:.4rem;padding:.6rem 1rem;margin:1rem 0}
ol.chain li{margin:.3rem 0} code{background:#f3f4f7;padding:0 .2rem}
.summary{border:2px solid #14213d;border-radius:.5rem;padding:.4rem 1.2rem;margin:1rem 0;
background:#f8f9fc} .summary h2{margin:.4rem 0} .summary ul{margin:.2rem 0 .5rem}
.warn{color:#9b2c1a} .toc{columns:2;font-size:.9rem} .tier{font-size:.8rem;font-weight:600}
"""


# --------------------------------------------------- tables shared with the app's Overview
def model_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Held-out metrics of ``model/metrics.json``, one row per split."""
    def ci(m: dict[str, Any]) -> str:
        c = m.get("donor_auroc_ci")
        return "–" if not c or c[0] is None else f"{c[0]:.2f}-{c[1]:.2f}"

    return [{"split": s, "donors": metrics[s]["n_donors"], "cell AUROC": metrics[s]["cell_auroc"],
             "donor AUROC": metrics[s]["donor_auroc"],
             "donor AUROC 95% interval": ci(metrics[s]), "accuracy": metrics[s]["accuracy"],
             "ECE": metrics[s]["ece"]} for s in ("val", "test") if s in metrics]


def probe_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The shortcut probe of ``model/metrics.json``, one row per covariate."""
    def score(part: dict[str, Any] | None) -> float | None:  # batch: balanced accuracy; else R²
        part = part or {}
        return part.get("balanced_accuracy", part.get("r2"))

    return [{"covariate": k, "kind": v.get("kind"), "case": score(v.get("case")),
             "control": score(v.get("control"))}
            for k, v in metrics.get("shortcut_probe", {}).items() if isinstance(v, dict)]


def sae_rows(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """SAE quality of ``features/quality.json``, one row per seed."""
    return [{"seed": s, "explained variance": q["explained_variance"], "L0": q["l0"],
             "dead": q["dead_fraction"], "agreement (spliced)": q["agreement"],
             "donor AUROC (spliced)": q["donor_auroc_spliced"]}
            for s, q in quality["per_seed"].items()]


def graph_rows(index: dict[str, Any]) -> list[dict[str, Any]]:
    """``graphs/index.json``, one row per cohort graph."""
    return [{"population": e["name"], "cells": e["n_cells"], "donors": e["n_donors"],
             "nodes": e["n_nodes"], "edges": e["n_edges"], "replacement": e["replacement_score"],
             "completeness": e["completeness_score"],
             "ablation Spearman (model)": e["validation"]["spearman_model"],
             "features for faithfulness 0.8": e["validation"]["features_for_faithfulness_0.8"]}
            for e in index.get("graphs", [])]


# ------------------------------------------------------------------ the findings summary
#: candidate hypotheses named in the summary beside every supported one
SUMMARY_CANDIDATES = 3
#: plans named in the summary (the best one of each hypothesis, recommended ones first)
SUMMARY_PLANS = 4
#: test donors per class below which held-out claims are called underpowered
MIN_TEST_DONORS_PER_CLASS = 3


def _hyp_sentence(h: dict[str, Any], case: str) -> str:
    ev = h["evidence"]
    dl, rep = ev["donor_level"], ev["replication"]
    genes = ", ".join(g["symbol"] for g in h["genes"][:5])
    parts = [f"donor-level effect {_fmt(dl.get('effect'), 2)} (q {_fmt(dl.get('q'), 3)}, "
             f"{dl.get('n_donors', '?')} discovery donors)"]
    if rep.get("replicated"):
        parts.append(f"replicated on {rep.get('n_donors')} test donors "
                     f"(p {_fmt(rep.get('p_one_sided'), 3)})")
    else:
        parts.append(f"not replicated on the {rep.get('n_donors', 0)} test donors")
    auroc = rep.get("biomarker_auroc_test")
    if auroc is not None and not (isinstance(auroc, float) and math.isnan(auroc)):
        parts.append(f"biomarker AUROC {_fmt(auroc, 2)} on test donors")
    what = "a program the model does not use" if h["kind"] == "de_only" else f"a {h['kind']}"
    return (f"{h['id']} ({h['status']}, {what}): {genes} {h['direction']} in {h['cell_type']} "
            f"of {case} donors; " + "; ".join(parts) + ".")


def findings_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a reader needs first, from the run's files: ``hypotheses`` (a sentence each for
    every supported one and the :data:`SUMMARY_CANDIDATES` strongest unflagged candidates),
    ``plans`` (the recommended ones, else the exploratory), ``warnings`` (the model reads a
    shortcut, too few test donors, artifacts found) and ``counts`` (hypotheses by status, plans
    by tier)."""
    rd = Path(run_dir)
    metrics = _read(rd / layout.METRICS) or {}
    quality = _read(rd / layout.SAE_QUALITY) or {}
    summary = _read(rd / layout.INPUT_SUMMARY) or {}
    hyps = (_read(rd / layout.HYPOTHESES) or {}).get("hypotheses", [])
    plans = (_read(rd / layout.PLANS) or {}).get("plans", [])
    case = str(summary.get("keys", {}).get("case", "case"))
    supported = [h for h in hyps if h["status"] == "supported"]
    cands = sorted((h for h in hyps if h["status"] == "candidate"),
                   key=lambda h: -float(h.get("score") or 0))[:SUMMARY_CANDIDATES]
    counts_h = {s: sum(h["status"] == s for h in hyps)
                for s in ("supported", "candidate", "flagged")}
    tiers = ("recommended", "exploratory", "needs more data")
    counts_p = {t: sum(p.get("tier") == t for p in plans) for t in tiers}
    shown: list[dict[str, Any]] = []
    for tier in ("recommended", "exploratory"):  # the best plan of each hypothesis
        for p in plans:
            if (p.get("tier") == tier and len(shown) < SUMMARY_PLANS
                    and p["hypothesis"] not in {q["hypothesis"] for q in shown}):
                shown.append(p)
        if shown:
            break
    warnings = list(shortcut_findings(metrics, brief=True)) if metrics else []
    test = metrics.get("test", {})
    per_class = [test.get("n_case_donors"), test.get("n_control_donors")]
    ci = test.get("donor_auroc_ci") or [None, None]
    if None not in per_class and min(per_class) < MIN_TEST_DONORS_PER_CLASS:
        warnings.append(f"only {per_class[0]} case and {per_class[1]} control test donors: "
                        "held-out replication and the model's donor AUROC rest on very few "
                        "donors; add donors before trusting them")
    elif ci[0] is not None and ci[0] <= 0.5:
        warnings.append(f"the model's test-donor AUROC interval ({ci[0]:.2f}-{ci[1]:.2f}) "
                        "includes chance: its attributions explain a model that may not "
                        "separate the groups on new donors")
    if counts_h["flagged"]:
        n = counts_h["flagged"]
        warnings.append(f"{n} {'hypothesis is' if n == 1 else 'hypotheses are'} flagged as "
                        "technical artifacts (batch / QC explains them) and not promoted")
    if quality.get("n_confounded"):
        warnings.append(f"{quality['n_confounded']} of {quality.get('n_features')} SAE features "
                        "are explained by batch or QC")
    if not supported:
        warnings.append("no hypothesis is supported: every plan below is exploratory or needs "
                        "more data")
    return {"hypotheses": [_hyp_sentence(h, case) for h in [*supported, *cands]],
            "plans": [{"id": p["id"], "tier": p.get("tier"), "title": p["title"],
                       "hypothesis": p["hypothesis"]} for p in shown],
            "warnings": warnings, "counts": {"hypotheses": counts_h, "plans": counts_p}}


def _summary_section(doc: Any, s: dict[str, Any]) -> None:
    ch, cp = s["counts"]["hypotheses"], s["counts"]["plans"]
    items_h = "".join(f"<li>{html.escape(x)}</li>" for x in s["hypotheses"]) or \
        "<li>No supported or candidate hypothesis.</li>"
    items_p = "".join(f"<li><a href='#{html.escape(p['id'])}'>{html.escape(p['id'])}</a> "
                      f"<span class='tier'>[{html.escape(str(p['tier']))}]</span> "
                      f"{html.escape(p['title'])} (for {html.escape(p['hypothesis'])})</li>"
                      for p in s["plans"]) or "<li>No recommended or exploratory plan.</li>"
    items_w = "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in s["warnings"]) or \
        "<li>None.</li>"
    counts = (f"{ch['supported']} supported, {ch['candidate']} candidate and {ch['flagged']} "
              f"flagged hypotheses; plans: {cp['recommended']} recommended, "
              f"{cp['exploratory']} exploratory, {cp['needs more data']} need more data.")
    doc.raw(f"<div class='summary' id='summary'><h2>Summary</h2><p>{html.escape(counts)}</p>"
            f"<b>Findings</b><ul>{items_h}</ul><b>Plans to run first</b><ul>{items_p}</ul>"
            f"<b>Warnings</b><ul>{items_w}</ul></div>",
            "## Summary\n\n" + counts + "\n\n**Findings**\n\n"
            + ("\n".join(f"- {x}" for x in s["hypotheses"]) or "- none") + "\n\n"
            + "**Plans to run first**\n\n"
            + ("\n".join(f"- {p['id']} [{p['tier']}] {p['title']} (for {p['hypothesis']})"
                         for p in s["plans"]) or "- none") + "\n\n**Warnings**\n\n"
            + ("\n".join(f"- {w}" for w in s["warnings"]) or "- none"))


def _read(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2g}"
        return f"{v:.{digits}f}"
    return str(v)


def _png(fig: Any, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


#: hypotheses drawn one by one in the report (graph path, volcano of their cell type)
N_DETAILED = 10


def _figures(rd: Path, hyps: list[dict], validations: dict[str, dict],
             keys: dict[str, Any]) -> dict[str, str]:
    """Inline PNGs: the cells' UMAP by cell type and label, donor-level plots of the top
    hypotheses, faithfulness curves, a donor-level volcano per cell type of the top hypotheses
    (``volcano:<cell type>``) and each top hypothesis's graph path (``path:<id>``)."""
    import matplotlib.pyplot as plt

    from discovery.pl.figures import (
        donor_activation,
        faithfulness,
        graph_path,
        umap_panels,
        volcano,
    )

    figs: list[tuple[str, Any]] = [("donors", donor_activation(hyps)),
                                   ("faithfulness", faithfulness(validations))]
    adata_path = rd / layout.ADATA
    cols = [c for c in (keys.get("cell_type_key"), keys.get("label_key")) if c]
    if adata_path.is_file() and cols:
        import anndata as ad

        backed = ad.read_h5ad(adata_path, backed="r")
        try:
            if "X_umap" in backed.obsm and all(c in backed.obs for c in cols):
                figs.append(("umap", umap_panels(np.asarray(backed.obsm["X_umap"]),
                                                 backed.obs[cols].copy(), cols)))
        finally:
            backed.file.close()
    tests_path = rd / layout.DONOR_TESTS
    tests = (pd.read_csv(tests_path, dtype={"cell_type": str, "gene": str},
                         keep_default_na=False, na_values={c: [""] for c in ("effect", "p", "q")})
             if tests_path.is_file() else pd.DataFrame())
    top = hyps[:N_DETAILED]
    for ct in dict.fromkeys(h["cell_type"] for h in top):
        if tests.empty:
            break
        genes = [g["symbol"] for h in top if h["cell_type"] == ct for g in h["genes"][:10]]
        figs.append((f"volcano:{ct}", volcano(tests[tests["cell_type"] == str(ct)],
                                              highlight=genes,
                                              title=f"{ct}: donor-level pseudobulk tests")))
    graphs: dict[str, Any] = {}
    for h in top:
        slug = h.get("population_graph")
        if not h.get("features") or not slug:
            continue
        if slug not in graphs:
            path = rd / layout.graph_file(layout.safe_name(slug, what="graph slug"))
            graphs[slug] = load_graph(path) if path.is_file() else None
        if graphs[slug] is not None:
            figs.append((f"path:{h['id']}", graph_path(
                graphs[slug], h["features"], title=f"{h['id']}: its features' strongest gene "
                                                   f"inputs -> features -> case logit")))
    out: dict[str, str] = {}
    for name, fig in figs:
        if fig is not None:  # the many small ones at a lower resolution: a lighter file
            out[name] = _png(fig, dpi=80 if name.startswith(("path:", "volcano:")) else 110)
            plt.close(fig)
    return out


class _Doc:
    """Writes the same content as HTML and Markdown."""

    def __init__(self) -> None:
        self.h: list[str] = []
        self.m: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        anchor = anchor or "s-" + "".join(c if c.isalnum() else "-" for c in text.lower())
        self.h.append(f"<h{level} id='{html.escape(anchor)}'>{html.escape(text)}</h{level}>")
        self.m += ["", "#" * level + " " + text, ""]
        if level == 2:
            self.toc.append((anchor, text))

    def contents(self) -> tuple[str, str]:
        """The table of contents of the level-2 headings, as HTML and Markdown."""
        return ("<nav><b>Contents</b><ul class='toc'>" + "".join(
            f"<li><a href='#{html.escape(a)}'>{html.escape(t)}</a></li>" for a, t in self.toc)
            + "</ul></nav>", "**Contents**: " + " · ".join(t for _, t in self.toc))

    def para(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.h.append(f"<p{c}>{html.escape(text)}</p>")
        self.m += [text, ""]

    def table(self, rows: list[dict[str, Any]], cols: list[str] | None = None,
              raw_html: set[str] | None = None) -> None:
        if not rows:
            self.para("(none)")
            return
        cols = cols or list(rows[0])
        raw_html = raw_html or set()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(
                f"<td>{r.get(c, '') if c in raw_html else html.escape(_fmt(r.get(c)))}</td>"
                for c in cols) + "</tr>" for r in rows)
        self.h.append(f"<table><tr>{head}</tr>{body}</table>")
        self.m.append("| " + " | ".join(cols) + " |")
        self.m.append("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            vals = []
            for c in cols:
                v = r.get(c, "")
                if c in raw_html:
                    v = r.get(f"{c}_text", "")
                vals.append(_fmt(v).replace("|", "/"))
            self.m.append("| " + " | ".join(vals) + " |")
        self.m.append("")

    def image(self, b64: str, alt: str) -> None:
        self.h.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>')
        self.m += [f"*(figure in report.html: {alt})*", ""]

    def raw(self, html_text: str, md_text: str) -> None:
        self.h.append(html_text)
        self.m += [md_text, ""]


def _needs_more_row(p: dict[str, Any]) -> dict[str, Any]:
    basis = p.get("tier_basis", {})
    need = basis.get("donors_needed", {}) or {}
    n = need.get("per_group")
    donors = (f"{n} (observed d = {need.get('cohens_d')})" if n is not None
              else need.get("why", "–"))
    if need.get("balanced_across"):
        donors += (", with cases and controls balanced across "
                   + ", ".join(need["balanced_across"]))
    return {"plan": p["id"], "for": p["hypothesis"], "assay": p["assay"],
            "what is missing": "; ".join(basis.get("missing", [])) or "–",
            "donors per group": donors}


def refine_effect_rows(refine: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per piece of feedback a child run acted on: what it said and what changed."""
    rows = []
    if refine.get("suppressed"):
        expert_ids = {e["feedback"] for e in refine.get("expert_feedback", [])}
        rows.append({"feedback": ", ".join(f"#{i}" for i in refine.get("feedback_ids", [])
                                           if i not in expert_ids),
                     "reason": f"artifact ({refine.get('covariate')})",
                     "target": ", ".join(refine["suppressed"]),
                     "what changed": f"model: {refine['mode']} without these features"})
    for e in refine.get("expert_feedback", []):
        moved = "; ".join(
            f"{c['id']}: rank {c['rank_before_feedback']} -> {c['rank']}, "
            f"{c['status_before_feedback']} -> {c['status']}" for c in e["child_hypotheses"])
        extra = []
        if e.get("excluded_donors"):
            extra.append("excluded donor(s) " + ", ".join(e["excluded_donors"]))
        chk = e.get("check")
        if chk:
            extra.append(f"check added: {chk['rule']}; flagged {', '.join(chk['flagged']) or 'none'}"
                         if chk.get("rule") else f"no check: {chk['why']}")
        rows.append({"feedback": f"#{e['feedback']} by {e['author']}",
                     "reason": e["reason"].replace("_", " ") + (f" ({e['note']})" if e["note"]
                                                                else ""),
                     "target": e["target"],
                     "what changed": "; ".join([e["effect"], *extra, moved] if moved
                                               else [e["effect"], *extra])})
    return rows


def _refine_section(doc: Any, refine: dict[str, Any]) -> None:
    """A child run opens with what its parent's feedback changed."""
    from pipelines.child_run import comparison_rows

    doc.heading("What the feedback changed")
    doc.para(f"Child of run {refine['parent_run']} (mode {refine['mode']}). Each row is one "
             "piece of expert feedback and what it changed in this run.")
    doc.table(refine_effect_rows(refine))
    doc.table([{k: _fmt(v) for k, v in r.items()} for r in comparison_rows(refine)])
    for line in refine.get("also_acted_on", []):
        doc.para("Also corrected in the retraining (not named by the feedback): " + line)
    for w in refine.get("warnings", []):
        doc.para("⚠ " + w)


def write_report(run_dir: str | Path) -> list[str]:
    """Write ``report.html`` and ``report.md`` into ``run_dir``; returns their relative paths."""
    rd = Path(run_dir)
    manifest = _read(rd / layout.MANIFEST)
    if manifest is None:
        msg = f"{rd} is not a run directory (no manifest.json); run `discovery run` first"
        raise InputError(msg)
    summary = _read(rd / layout.INPUT_SUMMARY) or {}
    metrics = _read(rd / layout.METRICS)
    quality = _read(rd / layout.SAE_QUALITY)
    index = _read(rd / layout.GRAPH_INDEX)
    hyps_doc = _read(rd / layout.HYPOTHESES)
    plans_doc = _read(rd / layout.PLANS)
    hyps = hyps_doc["hypotheses"] if hyps_doc else []
    plans = plans_doc["plans"] if plans_doc else []
    validations = {}
    for e in (index or {}).get("graphs", []):
        v = _read(layout.inside_run(rd, layout.validation_file(
            layout.safe_name(e["slug"], what="graph slug"))))
        if v:
            validations[e["cell_type"]] = v
    figs = _figures(rd, hyps, validations, summary.get("keys", {}))

    head = _Doc()
    head.heading(f"discovery report · run {manifest['run_id']}", 1)
    head.para(f"Created {manifest.get('created')}; config hash {manifest.get('config_hash')}; "
              f"seed {manifest.get('seed')}. Everything below is read from this run directory.",
              "small")
    _summary_section(head, findings_summary(rd))
    doc = _Doc()
    refine = _read(rd / layout.REFINE)
    if refine:
        _refine_section(doc, refine)
    doc.heading("Cohort and model")
    keys = summary.get("keys", {})
    doc.table([{"cells": summary.get("n_cells"), "genes": summary.get("n_genes"),
                "donors": summary.get("n_donors"), "label": keys.get("label_key"),
                "case": keys.get("case"), "batch key": keys.get("batch_key")}])
    if "umap" in figs:
        doc.image(figs["umap"], "UMAP of the cells by cell type and label")
    if metrics:
        doc.table(model_rows(metrics))
        doc.para("Donor AUROC is the share of (case, control) test-donor pairs the model orders "
                 "correctly; its 95% interval comes from resampling the test donors of each "
                 "class. An interval that includes 0.5 means the test donors cannot tell the "
                 "model from chance.", "small")
        for line in shortcut_findings(metrics):
            doc.para("⚠ " + line)
        rows = probe_rows(metrics)
        if rows:
            doc.para("Shortcut probe: how well a linear probe reads each covariate off the "
                     "model's pooled representation within each label (balanced accuracy for "
                     "batch, chance 0.5).")
            doc.table(rows)
    if quality:
        doc.heading("Features (sparse autoencoders)")
        doc.table(sae_rows(quality))
        doc.para(f"Hook {quality['hook']}; median stability across seeds "
                 f"{_fmt(quality.get('median_stability'))}; {quality['n_donor_q05']} features "
                 f"differ between donors at q < 0.05; {quality['n_confounded']} are flagged as "
                 "confounded.")
    yard = rd / layout.YARDSTICK
    if yard.is_file():
        doc.heading("Baselines against the planted truth")
        y = pd.read_csv(yard)
        doc.table(y[["method", "program", "precision_at_k", "auprc", "artifact_fd"]]
                  .to_dict("records"))
    if index:
        doc.heading("Attribution graphs")
        doc.para("One cohort graph per cell type over its case cells: genes -> SAE features -> "
                 "case logit, exact per cell, mean over donors; checked by ablations.")
        doc.table(graph_rows(index))
        if "faithfulness" in figs:
            doc.image(figs["faithfulness"], "faithfulness of pruned circuits")
    doc.heading("Hypotheses")
    if hyps_doc:
        doc.para(f"Score: {hyps_doc['score_formula']}.", "small")
        for status, rule in hyps_doc["status_rules"].items():
            doc.para(f"{status}: {rule}.", "small")
    rows = []
    for h in hyps:
        ev = h["evidence"]
        badge = f'<span class="badge {h["status"]}">{h["status"]}</span>'
        rows.append({
            "rank": h["rank"], "id": h["id"], "status": badge, "status_text": h["status"],
            "kind": h["kind"], "cell type": h["cell_type"], "direction": h["direction"],
            "top genes": ", ".join(g["symbol"] for g in h["genes"][:6]),
            "score": h["score"], "attribution": ev["attribution"],
            "artifact share": ev.get("artifact_share"),
            "ablation Δlogit": ev.get("ablation_delta"), "donor q": ev["donor_level"]["q"],
            "replicated": ev["replication"]["replicated"],
            "biomarker AUROC (test)": ev["replication"]["biomarker_auroc_test"],
            "flags": "; ".join(f"{f['kind']}: {f['by']}" for f in h["flags"]) or "–",
            "caveats": "; ".join(c["kind"] for c in h.get("caveats", [])) or "–",
        })
    doc.table(rows, raw_html={"status"})
    shown: set[str] = set()
    for h in hyps[:N_DETAILED]:
        doc.heading(f"{h['id']} · {h['cell_type']} · {h['status']}", 3)
        doc.para(h["statement"])
        if h["features"]:
            feats = ", ".join(f"{f} ({h['feature_labels'].get(f, f)})" for f in h["features"])
            doc.para(f"Features: {feats}. Distilled biomarker: "
                     f"{h['biomarker']['definition']}.", "small")
        else:
            doc.para("Features: none (the model does not use this program; donor-level "
                     "evidence only).", "small")
        for c in h.get("caveats", []):
            doc.para(f"Caveat ({c['kind']}): {c['detail']}.", "small")
        if f"path:{h['id']}" in figs:
            doc.image(figs[f"path:{h['id']}"], f"graph path of {h['id']}")
        if f"volcano:{h['cell_type']}" in figs and h["cell_type"] not in shown:
            shown.add(h["cell_type"])
            doc.image(figs[f"volcano:{h['cell_type']}"],
                      f"donor-level volcano of {h['cell_type']} (every tested gene; the top "
                      "hypotheses' genes of this cell type marked)")
    if "donors" in figs:
        doc.image(figs["donors"], "donor-level activation of the top hypotheses")
    doc.heading("Experimental plans")
    if plans_doc:
        doc.para(f"Priority: {plans_doc['priority_formula']}.", "small")
        for tier, rule in plans_doc.get("tier_rules", {}).items():
            doc.para(f"{tier}: {rule}.", "small")
    full = [p for p in plans if p.get("tier", "recommended") != "needs more data"]
    more = [p for p in plans if p.get("tier") == "needs more data"]
    if not full:
        doc.para("No plan is recommended or exploratory: no hypothesis has evidence beyond the "
                 "model's attribution. The plans below say what each one lacks.")
    for p in full:
        chain_h = "".join(
            f"<li><b>{html.escape(st['step'])}</b>: {html.escape(st['claim'])}"
            f"<br/><span class='small'>refs: {html.escape(', '.join(st['refs']['nodes']) or '–')}"
            f"</span></li>" for st in p["rationale"])
        chain_m = "\n".join(f"{i}. **{st['step']}**: {st['claim']} (refs: "
                            f"{', '.join(st['refs']['nodes']) or '–'})"
                            for i, st in enumerate(p["rationale"], 1))
        ctrl = "; ".join(p["controls"])
        prereq = "; ".join(p.get("prerequisites", [])) or "–"
        also = p.get("also_tests", [])
        for_h = p["hypothesis"] + (f" (also tests {', '.join(also)})" if also else "")
        doc.raw(
            f"<div class='plan' id='{html.escape(p['id'])}'><h3>{html.escape(p['id'])} · "
            f"{html.escape(p['title'])}</h3><p class='small'><span class='tier'>"
            f"{html.escape(p.get('tier', ''))}</span> · for {html.escape(for_h)} · priority "
            f"{p['priority']:.3f} · {html.escape(p['modality'])}</p>"
            f"<p><b>Design.</b> {html.escape(p['design'])}</p>"
            f"<p><b>Readout.</b> {html.escape(p.get('readout', ''))}</p>"
            f"<p><b>Prerequisites.</b> {html.escape(prereq)}</p>"
            f"<p><b>Expected.</b> {html.escape(p['expected_outcome'])}</p>"
            f"<p><b>Falsified if.</b> {html.escape(p['falsified_if'])}</p>"
            f"<p><b>Controls.</b> {html.escape(ctrl)}</p>"
            f"<p><b>Why it was proposed.</b></p><ol class='chain'>{chain_h}</ol>"
            f"<p class='small'>Method source: {html.escape(p['source'])}</p></div>",
            f"### {p['id']} · {p['title']}\n\n{p.get('tier', '')} · for {for_h} · priority "
            f"{p['priority']:.3f} · {p['modality']}\n\n**Design.** {p['design']}\n\n"
            f"**Readout.** {p.get('readout', '')}\n\n**Prerequisites.** {prereq}\n\n"
            f"**Expected.** {p['expected_outcome']}\n\n**Falsified if.** {p['falsified_if']}\n\n"
            f"**Controls.** {ctrl}\n\n**Why it was proposed.**\n\n{chain_m}\n\n"
            f"Method source: {p['source']}")
    if more:
        doc.heading("Plans that need more data", 3, anchor="needs-more-data")
        doc.para("Not lab protocols: each line says what evidence the hypothesis lacks and how "
                 "many donors per group would detect its observed donor-level effect.", "small")
        doc.table([_needs_more_row(p) for p in more],
                  ["plan", "for", "assay", "what is missing", "donors per group"])
    toc_h, toc_m = doc.contents()
    html_text = ("<!doctype html><html lang='en'><head><meta charset='utf-8'/>"
                 f"<title>discovery report {html.escape(manifest['run_id'])}</title>"
                 f"<style>{_CSS}</style></head><body>" + "\n".join(head.h) + toc_h
                 + "\n".join(doc.h) + "</body></html>")
    write_text(rd / layout.REPORT_HTML, html_text)
    write_text(rd / layout.REPORT_MD,
               "\n".join([*head.m, "", toc_m, "", *doc.m]).strip() + "\n")
    return [layout.REPORT_HTML, layout.REPORT_MD]
