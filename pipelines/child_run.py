"""``discovery refine``: feedback -> a child run whose model no longer relies on what the expert
rejected, with graphs and hypotheses recomputed and a before/after comparison.

Reads the parent's feedback store (``disagree`` with reason ``technical_artifact`` or
``confounder``; a hypothesis stands for its features), suppresses those features' directions
(:mod:`discovery.tl.refine`: ``ablate``, ``finetune`` or ``retrain``), applies the other
reasons (:mod:`discovery.tl.expert`: known biology re-ranked, a contamination check, a
single-donor verdict's donor excluded, rejections; with only those the model is kept: mode
``rerank``), writes the child run (its manifest records the parent and the feedback ids), and
``refine.json``: batch-balanced held-out metrics, the share of attribution through features
explained by the named covariate, the hypothesis ranking before and after, what each feedback
changed, and warnings where the child may be worse (:func:`refine_warnings`). Every step is
logged in the store's action table (the audit trail).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from discovery.get.run import graph_index, open_run
from discovery.io import layout
from discovery.io.contract import InputError, case_mask, get_keys
from discovery.io.feedback import FeedbackStore, default_url
from discovery.io.files import atomic_write, read_json, write_json
from discovery.io.layout import feature_id, parse_feature_id
from discovery.tl import classifier
from discovery.tl.expert import EXPERT_REASONS, donors_to_exclude, expert_notes, same_hypothesis
from discovery.tl.refine import (
    ACTIONABLE,
    DEPTH_COVARIATE,
    QC_GENE_GROUPS,
    aligned_technical,
    artifact_genes,
    balanced_eval,
    finetune_without,
    fit_check,
    fold_projection,
    match_depth,
    propose_similar,
    renormalise_without,
    reselect_panel,
    suppression_basis,
)
from models.fileperms import make_readable
from pipelines.config import PipelineConfig
from pipelines.report import write_report
from pipelines.run import features_stage, graphs_stage, hypotheses_stage, results_into_adata
from pipelines.rundir import RunDir, config_hash

__all__ = ["COMPARISON_MEASURES", "REFINE_MODES", "comparison_rows", "covariate_and_term",
           "covariate_share", "covariate_shares", "program_ranks", "refine_run",
           "refine_warnings", "shares_before_after"]

#: most times the artifact's genes are tested again after the data were corrected for them
MAX_RETEST_PASSES = 3

#: depth aligned with the label is matched across donors to this quantile of their medians
DONOR_DEPTH_QUANTILE = 0.25

#: the ``var`` column marking the genes a retraining leaves out of each cell's library size
SIZE_WITHOUT = "refine_size_without"

#: ablate: fold the mean-ablation into the head; finetune: fine-tune with the directions projected
#: out and the covariate penalised; retrain: retrain from scratch without the artifact's genes
REFINE_MODES = ("ablate", "finetune", "retrain")


def _feature_targets(items: pd.DataFrame, hyps: list[dict], hook: str) -> tuple[list[int], list[int]]:
    """Feature indices named by actionable feedback, and the feedback ids behind them."""
    by_h = {h["id"]: h for h in hyps}
    feats: list[int] = []
    ids: list[int] = []
    for row in items.itertuples():
        if row.verdict != "disagree" or row.reason not in ACTIONABLE:
            continue
        names = [row.target_id] if row.target_kind == "feature" else (
            by_h[row.target_id]["features"] if row.target_id in by_h else [])
        for n in names:
            h, f = parse_feature_id(n)
            if h == hook:
                feats.append(f)
                ids.append(int(row.id))
    return sorted(set(feats)), sorted(set(ids))


def covariate_and_term(covariate: str | None, named: Counter,
                       batch_key: str | None) -> tuple[str | None, str | None]:
    """The obs column a refinement acts on, and the term the annotations call it.

    Annotations name the batch term ``batch`` whatever the data calls its batch column (a user's
    ``seq_run``), and QC covariates by their column. ``covariate``: the column the expert named
    (or None); ``named``: the ``confounded_by`` terms of the marked features. Without a named
    column the most common term is used, else the batch column.
    """
    if covariate is None and named:
        top = named.most_common(1)[0][0]
        covariate = batch_key if top == "batch" else top
    covariate = covariate or batch_key
    term = "batch" if covariate is not None and covariate == batch_key else covariate
    return covariate, term


def covariate_shares(run_dir: Path, terms: Iterable[str]) -> dict[str, float]:
    """For each of ``terms``: the share of |attribution into the case logit| through features
    explained by it (annotation ``confounded_by``), over the run's cohort graphs weighted by
    cells. The graphs are read once for all terms."""
    from discovery.io.graph_files import load_graph

    index = graph_index(run_dir)
    ann = pd.read_json(run_dir / layout.ANNOTATIONS).set_index("feature")
    conf = {t: set(ann.index[ann["confounded_by"] == t]) for t in terms}
    num = dict.fromkeys(conf, 0.0)
    den = 0.0
    for e in index["graphs"]:
        g = load_graph(layout.inside_run(run_dir, layout.graph_file(e["slug"])))
        inc = [(u, abs(d["weight"])) for u, _, d in g.in_edges("output", data=True)]
        tot = sum(w for _, w in inc)
        if tot > 0:
            for t, feats in conf.items():
                num[t] += e["n_cells"] * sum(w for u, w in inc if u in feats) / tot
            den += e["n_cells"]
    return {t: v / den if den else float("nan") for t, v in num.items()}


def covariate_share(run_dir: Path, covariate: str) -> float:
    """:func:`covariate_shares` of one term."""
    return covariate_shares(run_dir, [covariate])[covariate]


def shares_before_after(parent_dir: Path, child_dir: Path,
                        extra: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """:func:`covariate_shares` in parent and child of every term a feature of either run is
    annotated as explained by, and of ``extra``: ``{term: {"before", "after"}}``."""
    terms = set(extra)
    for run in (parent_dir, child_dir):
        terms |= set(pd.read_json(run / layout.ANNOTATIONS)["confounded_by"].dropna().astype(str))
    terms = sorted(terms)
    before, after = covariate_shares(parent_dir, terms), covariate_shares(child_dir, terms)
    return {t: {"before": before[t], "after": after[t]} for t in terms}


def program_ranks(hyps: list[dict], truth: dict | None, *,
                   include_flagged: bool = False) -> dict[str, int | None]:
    """Best rank of each planted program's hypothesis (right cell type and direction, >= 3
    program genes in its top 10), among unflagged hypotheses unless ``include_flagged`` (an
    expert-rejected hypothesis never counts)."""
    if not truth:
        return {}
    out = {}
    for name, p in truth["programs"].items():
        if not p.get("effect_size"):
            continue
        ranks = [h["rank"] for h in hyps if h["cell_type"] == p["cell_type"]
                 and h["direction"] == p["direction"]
                 and h["status"] != "rejected"
                 and (include_flagged or h["status"] != "flagged")
                 and len({g["symbol"] for g in h["genes"][:10]} & set(p["genes"])) >= 3]
        out[name] = min(ranks) if ranks else None
    return out


def refine_run(parent_dir: str | Path, out: str | Path, *, mode: str = "ablate",
               covariate: str | None = None, also_aligned: bool = True,
               quiet: bool = False) -> dict[str, Any]:
    """Build the child run of ``parent_dir`` in ``out`` from the parent's feedback.

    ``covariate``: the obs column that explains the artifact, as the expert names it (e.g.
    ``pct_counts_mt``); by default the covariate most of the marked features are annotated as
    confounded by, else the batch key. ``also_aligned`` (retrain): also act on every other
    technical covariate that carries label information at donor level (see
    :func:`_retrain_without_genes`); ``False`` acts on the named covariate only."""
    if mode not in REFINE_MODES:
        msg = f"mode must be one of {', '.join(REFINE_MODES)}, got {mode!r}"
        raise InputError(msg)
    parent_dir, out = Path(parent_dir), Path(out)
    if out.resolve() == parent_dir.resolve():
        msg = "the child run needs its own directory (--out must differ from the parent)"
        raise InputError(msg)
    parent = open_run(parent_dir)
    manifest = read_json(parent_dir / layout.MANIFEST)
    run_id = manifest["run_id"]
    hyps_path = parent_dir / layout.HYPOTHESES
    if not hyps_path.is_file():
        msg = f"{parent_dir} has no hypotheses.json; finish `discovery run` first"
        raise InputError(msg)
    parent_hyps = read_json(hyps_path)["hypotheses"]
    store = FeedbackStore(default_url(parent_dir))
    items = store.items(run_id)
    sae_hook = parent.saes[0]
    feats, fb_ids = _feature_targets(items, parent_hyps, sae_hook.hook)
    plans_path = parent_dir / layout.PLANS
    notes = expert_notes(items, parent_hyps, read_json(plans_path)["plans"]
                         if plans_path.is_file() else [])
    if not feats and not notes:
        msg = (f"no actionable feedback for run {run_id}: refine needs 'disagree' with reason "
               f"{' or '.join(ACTIONABLE)} on a feature ({sae_hook.hook}:F<i>) or a hypothesis "
               f"(the model is changed), or with reason {', '.join(EXPERT_REASONS)} (the "
               "ranking, the checks or the donors are changed) (`discovery feedback RUN_DIR "
               "--target ...`)")
        raise InputError(msg)
    if not feats:
        mode = "rerank"  # nothing names an artifact: the model stays, the other reasons act
    fb_ids = sorted({*fb_ids, *(n.feedback_id for n in notes)})
    excluded = donors_to_exclude(notes)
    ann = pd.read_json(parent_dir / layout.ANNOTATIONS)
    named = Counter(ann.set_index("index").loc[feats, "confounded_by"].dropna())
    keys = get_keys(parent.adata)
    if covariate is not None and covariate not in parent.adata.obs:
        msg = (f"covariate {covariate!r} is not an obs column of the run; choose one of "
               f"{', '.join(map(str, parent.adata.obs.columns))}")
        raise InputError(msg)
    covariate, term = covariate_and_term(covariate, named, keys.batch_key)
    store.log_action(run_id, "refine:start", detail=json.dumps(
        {"mode": mode, "features": [feature_id(sae_hook.hook, i) for i in feats],
         "feedback": fb_ids, "covariate": covariate,
         "expert": [{"feedback": n.feedback_id, "reason": n.reason, "target": n.target}
                    for n in notes],
         "excluded_donors": [d["donor"] for d in excluded]}))
    proposals, check = [], {"rule": None, "why": "no feature was marked as an artifact"}
    if feats:
        proposals = propose_similar(sae_hook.sae, ann, feats)
        store.log_action(run_id, "propagate:proposed", detail=json.dumps(
            [p["feature"] for p in proposals]))
        check = fit_check(ann, feats, covariate=term or "batch")
        store.log_action(run_id, "generalise:check", detail=json.dumps(
            {k: check.get(k) for k in ("rule", "flags")}))

    config = PipelineConfig.from_dict(manifest["config"])
    suppressed = [feature_id(sae_hook.hook, i) for i in feats]
    rd = RunDir(out)
    rd.init(config=config.to_dict(), seed=config.seed,
            input_desc={"kind": "child run", "parent": str(parent_dir.resolve()),
                        "parent_run": run_id, "mode": mode, "feedback_ids": list(fb_ids),
                        "suppressed": suppressed},
            parent_run=run_id)
    rd.manifest["feedback"] = {"ids": fb_ids, "mode": mode, "suppressed": suppressed,
                               "covariate": covariate}
    for name in (layout.INPUT_SUMMARY, "baselines"):
        src = parent_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)
    adata = parent.adata
    if excluded:
        donor = adata.obs[keys.donor_key].astype(str)
        for d in excluded:
            d["cells"] = int((donor == d["donor"]).sum())
        keep = ~donor.isin([d["donor"] for d in excluded]).to_numpy()
        case = case_mask(adata, keys)
        for split in ("train", "val", "test"):
            in_split = (adata.obs["split"] == split).to_numpy()
            for is_case, name in ((True, "case"), (False, "control")):
                if (in_split & (case == is_case)).any() and not (
                        in_split & keep & (case == is_case)).any():
                    gone = sorted(set(donor[in_split & ~keep & (case == is_case)]))
                    msg = (f"excluding donor(s) {', '.join(gone)} (single-donor feedback) "
                           f"would leave the {split} split without a {name} donor; the "
                           "model could not be evaluated there. Withdraw that feedback or "
                           "rerun the parent with more donors")
                    raise InputError(msg)
        adata = adata[keep].copy()
        rd.manifest["feedback"]["excluded_donors"] = excluded
    basis = suppression_basis(sae_hook.sae, feats) if feats else None
    history: dict[str, Any] = {}
    parent_probs = adata.obs["case_prob"].to_numpy().copy()
    with rd.stage("model", {"mode": mode, "features": feats, "parent": run_id,
                            "excluded_donors": [d["donor"] for d in excluded]}) as outputs:
        if mode == "rerank":
            child = parent.model
        elif mode == "ablate":
            from discovery.tl.refine import _pooled_mean

            child = fold_projection(parent.model, basis, _pooled_mean(adata, parent.model))
        elif mode == "finetune":
            child, history = finetune_without(adata, parent.model, basis, covariate=covariate,
                                             seed=config.seed)
        else:
            child, history = _retrain_without_genes(adata, parent.model, ann, feats, covariate,
                                                    config, also_aligned=also_aligned)
            table = history["withheld"]["table"]
            store.log_action(run_id, "retrain:withheld", detail=json.dumps(
                {"genes": history["withheld"]["genes"], "rule": history["withheld"]["rule"],
                 "from_marked_features": [r["gene"] for r in table if r["withheld"]
                                          and r["source"] == "marked feature"],
                 "from_the_check": [r["gene"] for r in table if r["withheld"]
                                    and r["source"] == "check"],
                 "renormalised": history.get("renormalised"),
                 "aligned_technical": history.get("aligned_technical"),
                 "depth_matched": history.get("depth_matched")}))
        probs = classifier.predict(adata, child)
        adata.obs["case_prob"] = probs
        metrics = {s: classifier.evaluate(adata, probs, split=s, keys=keys)
                   for s in ("val", "test")}
        metrics["kind"] = read_json(parent_dir / layout.METRICS).get(
            "kind")
        metrics["refine"] = {"mode": mode, "history": history}
        tmp = out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        child.save_pretrained(tmp, safe_serialization=True)
        make_readable(tmp)  # safetensors writes 0600
        write_json(tmp / Path(layout.METRICS).name, metrics)
        # later stages are cached by this stage's params: key them on the weights themselves,
        # so a child rebuilt with other code or other withheld genes never reuses stale features
        rec = rd.manifest["stages"]["model"]
        rec["params"]["weights_sha256"] = hashlib.sha256(
            (tmp / "model.safetensors").read_bytes()).hexdigest()
        rec["params_hash"] = config_hash(rec["params"])
        shutil.rmtree(out / layout.MODEL_DIR, ignore_errors=True)
        tmp.rename(out / layout.MODEL_DIR)
        atomic_write(out / layout.ADATA, lambda p: adata.write_h5ad(p, compression="gzip"))
        outputs += [f"{layout.MODEL_DIR}/model.safetensors", layout.METRICS, layout.ADATA]
    store.log_action(run_id, f"model:{mode}", child_run=str(out))
    feats_res = features_stage(rd, adata, child, config)
    graphs_stage(rd, adata, child, feats_res, config, quiet=quiet)
    rankings = pd.read_csv(out / layout.RANKINGS) if (
        out / layout.RANKINGS).is_file() else None
    hyp = hypotheses_stage(rd, adata, child, feats_res, rankings, metrics, config,
                           expert=(notes, excluded))

    parent_metrics = read_json(parent_dir / layout.METRICS)
    truth = None
    if "simulation" in adata.uns:
        from discovery.io.simulate import truth as sim_truth

        truth = sim_truth(adata)
    cov = term or "batch"  # the annotation term (confounded_by), not the column name
    shares = shares_before_after(parent_dir, out, [cov])
    comparison = {
        "schema_version": 1, "parent": str(parent_dir), "parent_run": run_id,
        "child_run": rd.manifest["run_id"], "mode": mode, "feedback_ids": fb_ids,
        "suppressed": [feature_id(sae_hook.hook, i) for i in feats],
        "covariate": covariate or cov, "annotation_term": cov,
        "proposed_similar": proposals, "check": check,
        "before": {
            "test_donor_auroc": parent_metrics["test"]["donor_auroc"],
            "test_cell_auroc": parent_metrics["test"]["cell_auroc"],
            **balanced_eval(adata, parent_probs),
            "covariate_attribution_share": shares[cov]["before"],
            "program_ranks": program_ranks(parent_hyps, truth),
            "n_flagged": sum(h["status"] == "flagged" for h in parent_hyps),
        },
        "after": {
            "test_donor_auroc": metrics["test"]["donor_auroc"],
            "test_cell_auroc": metrics["test"]["cell_auroc"],
            **balanced_eval(adata, probs),
            "covariate_attribution_share": shares[cov]["after"],
            "program_ranks": program_ranks(hyp["hypotheses"], truth),
            "n_flagged": sum(h["status"] == "flagged" for h in hyp["hypotheses"]),
        },
        "ranking": _ranking_diff(parent_hyps, hyp["hypotheses"]),
        "expert_feedback": hyp.get("expert_feedback", []),
        "excluded_donors": excluded,
        "also_acted_on": _also_acted_on(history, covariate),
    }
    b, a = comparison["before"], comparison["after"]
    comparison["covariate_share_drop"] = (
        1 - a["covariate_attribution_share"] / b["covariate_attribution_share"]
        if b["covariate_attribution_share"] > 0 else float("nan"))
    comparison["other_covariates"], comparison["warnings"] = refine_warnings(
        shares, cov, parent_hyps, hyp["hypotheses"])
    write_json(out / layout.REFINE, comparison)
    with rd.stage("report", {"refine": comparison["child_run"]}) as outputs:
        outputs += results_into_adata(out, adata)
        outputs += write_report(out)
    store.log_action(run_id, "child:done", child_run=str(out), detail=json.dumps(
        {"covariate_share": [b["covariate_attribution_share"], a["covariate_attribution_share"]],
         "balanced_donor_auroc": [b.get("balanced_donor_auroc"), a.get("balanced_donor_auroc")]},
        default=float))
    return comparison


def _also_acted_on(history: dict[str, Any], covariate: str | None) -> list[str]:
    """Sentences for what a retraining corrected beyond the named covariate (refine.json)."""
    out = []
    depth = history.get("depth_matched")
    depth = depth if isinstance(depth, list) else [depth] if depth else []
    by_donor = [d for d in depth if d.get("by") != covariate and d.get("thinned")]
    skipped = history.get("skipped_groups", [])
    for r in history.get("aligned_technical", {}).get("aligned", []):
        if r["covariate"] == covariate:
            continue
        side = "higher" if r["donor_auroc"] > 0.5 else "lower"
        if r["covariate"] in QC_GENE_GROUPS:
            what = ("its gene group could not be found, so nothing was done"
                    if any(x.startswith(f"{r['covariate']}:") for x in skipped) else
                    "its gene group was left out of the library size and the inputs")
        elif history.get("depth_after_corrections"):
            what = ("after the corrections above the library size the model sees still "
                    "differed, so donors were thinned to a common depth"
                    if by_donor else "after the corrections above the library size the model "
                    "sees still differed, but no cell type's donors differed enough "
                    "(>= 10%) to thin")
        else:
            what = ("after the corrections above the library size the model sees no longer "
                    "differs, so it was left as it is")
        out.append(f"{r['covariate']} is {side} in cases at donor level (AUROC "
                   f"{r['donor_auroc']:.2f}, q = {r.get('q', r['p']):.2g}, {r['n_case']} + "
                   f"{r['n_control']} discovery donors): {what}")
    for d in by_donor:
        out.append(f"counts thinned to a common depth across the levels of {d['by']!r} "
                   f"({len(d['thinned'])} cell type x level groups)")
    if history.get("named_withheld_nothing"):
        out.append(history["named_withheld_nothing"])
    return out


def refine_warnings(shares: dict[str, dict[str, float]], term: str, parent_hyps: list[dict],
                    child_hyps: list[dict]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """What a refinement may have made worse, said out loud.

    - **The next shortcut**: every technical term other than ``term`` in ``shares``
      (:func:`shares_before_after`), with its attribution share before and after. A share that
      at least doubles and rises by >= 0.1 means the child leans on that covariate instead (a
      model denied one shortcut takes the next aligned one): the warning names the refinement
      that would act on it.
    - **Lost claims**: the parent's supported hypotheses that no child hypothesis matches
      (:func:`discovery.tl.expert.same_hypothesis`), or that the child no longer supports —
      unless an expert's feedback rejected or flagged the match (that change is the point).
    """
    shares = {t: v for t, v in shares.items() if t != term}
    warnings = []
    for t, v in shares.items():
        if v["after"] >= max(2 * v["before"], v["before"] + 0.1):
            how = (f"--mode retrain --covariate {t}" if t in QC_GENE_GROUPS
                   else "--mode retrain" if t == "batch" else f"--covariate {t}")
            warnings.append(
                f"the child leans on {t} instead: attribution through {t}-explained features "
                f"rose from {v['before']:.2f} to {v['after']:.2f}; mark those features and "
                f"refine the child again ({how})")
    supported = [h for h in parent_hyps if h["status"] == "supported"]
    by_expert = {"expert", "contamination"}

    def kept_or_judged(h: dict) -> bool:
        return any(same_hypothesis(h, c) and (c["status"] == "supported" or by_expert & {
            f["kind"] for f in c["flags"]}) for c in child_hyps)

    lost = [h["id"] for h in supported if not kept_or_judged(h)]
    if lost:
        warnings.append(f"{len(lost)} of the parent's {len(supported)} supported hypotheses "
                        f"are not supported in the child ({', '.join(lost)}): check them before "
                        "you trust the child's ranking")
    return shares, warnings


def _retrain_without_genes(adata: Any, model: Any, ann: pd.DataFrame, feats: list[int],
                           covariate: str | None, config: PipelineConfig, *,
                           also_aligned: bool = True) -> tuple[Any, dict[str, Any]]:
    """Retrain from scratch (the parent's model settings) without the artifact's input genes.

    A QC covariate computed from a gene group (:data:`QC_GENE_GROUPS`) renormalises ``X``
    without the group first (in place: the child run's data), and withholds the group.

    ``also_aligned`` (default): every other technical covariate that carries label information
    at donor level (:func:`aligned_technical`) is acted on in the same retraining — a gene-group
    QC metric (mitochondrial fraction) as if it had been named, and sequencing depth by thinning
    the deeper label's cells to the shallower's — so that the retrained model does not take the
    next shortcut the data offers. Every withheld gene is also left out of each cell's library
    size: a technical program that raises some genes takes its share of the library from all
    others, and normalising by a size that includes it leaves every other gene lower in the
    affected cells (a global shift the model would read instead)."""
    if not covariate:
        msg = ("retrain needs the covariate that explains the artifact (a batch column, or "
               "features annotated as confounded); use --mode ablate")
        raise InputError(msg)
    history: dict[str, Any] = {}
    panel = set(model.config.gene_names)
    has_counts = "counts" in adata.layers
    groups = [covariate] if covariate in QC_GENE_GROUPS else []
    aligned = aligned_technical(adata) if also_aligned and has_counts else []
    if also_aligned:
        history["aligned_technical"] = {
            "tested": [c for c in (*QC_GENE_GROUPS, DEPTH_COVARIATE) if c in adata.obs],
            "aligned": aligned, "rule": "donor-level Mann-Whitney U on the discovery donors, "
                                        "BH q < 0.05 over the covariates tested and donor "
                                        "AUROC >= 0.2 from 0.5",
            **({} if has_counts else {"skipped": "no raw counts in the run"})}
        groups += [r["covariate"] for r in aligned
                   if r["covariate"] in QC_GENE_GROUPS and r["covariate"] not in groups]
    table: list[dict[str, Any]] = []
    rules: list[str] = []
    withheld: list[str] = []
    for cov in groups:
        group = QC_GENE_GROUPS[cov]
        if group not in adata.var:
            history.setdefault("skipped_groups", []).append(
                f"{cov}: var has no {group!r} column marking its genes")
            continue
        members = list(adata.var_names[adata.var[group].to_numpy(bool)])
        # the whole group is withheld (and so left out of the size): after renormalising,
        # members outside the parent's panel could otherwise enter the new one
        withheld += [g for g in members if g not in withheld]
        table += [{"gene": g, "withheld": True, "source": "gene group",
                   "covariate": cov} for g in members]
        rules.append(f"{cov} is computed from the {group!r} genes: they are left out of each "
                     "cell's library size and of the inputs"
                     + ("" if cov == covariate else " (aligned with the label at donor level)"))
    art: dict[str, Any] = {"covariate": covariate, "candidates": 0, "genes": [], "table": []}
    if covariate not in QC_GENE_GROUPS:
        art = artifact_genes(adata, ann, feats, covariate=covariate,
                             genes=list(model.config.gene_names))
        rules.insert(0, art["rule"])
        if not art["genes"]:
            history["named_withheld_nothing"] = (
                f"none of the {art['candidates']} candidate genes is explained by {covariate!r} "
                "better than by the label: only the depth and QC corrections were applied")
        withheld = [*art["genes"], *[g for g in withheld if g not in art["genes"]]]
        table = [*art["table"], *table]
    # genes an earlier refinement withheld stay out: the parent's panel is the starting point
    hvg = adata.var_names[adata.var["highly_variable"].to_numpy(bool)]
    before = [g for g in hvg if g not in panel]
    if before:
        history["withheld_before"] = before
    if has_counts:
        out_of_size = {*withheld, *before}
        adata.var[SIZE_WITHOUT] = adata.var_names.isin(sorted(out_of_size))
        renorm = renormalise_without(adata, SIZE_WITHOUT)
        history["renormalised"] = {"group": SIZE_WITHOUT, "genes_left_out": len(out_of_size),
                                   "median_size_ratio": renorm["median_size_ratio"]}
    elif groups:
        renormalise_without(adata, QC_GENE_GROUPS[groups[0]])  # raises the clear error
    depth: list[dict[str, Any]] = []
    if not pd.api.types.is_numeric_dtype(adata.obs[covariate]):
        # a batch reaches every gene through sequencing depth as well: thin it away (needs
        # raw counts; a run from log-normalised input says so in its history)
        depth.append(match_depth(adata, covariate, seed=config.seed) if has_counts else
                     {"by": covariate, "thinned": [], "skipped": "no raw counts in the run"})
    if also_aligned and has_counts:
        # depth itself carrying the label after the corrections above (depth as the model sees
        # it: the counts outside the genes left out of the size): every donor deeper than the
        # lower quartile of its cell type's donors is thinned to it. Labels are not used, so
        # held-out donors are treated exactly as new data would be
        keep = ~adata.var[SIZE_WITHOUT].to_numpy(bool)
        size = np.asarray(adata.layers["counts"][:, np.flatnonzero(keep)].sum(axis=1)).ravel()
        still = aligned_technical(adata, covariates=("library size",),
                                  values={"library size": size})
        history["depth_after_corrections"] = still
        if still:
            keys = get_keys(adata)
            depth.append({**match_depth(adata, keys.donor_key, seed=config.seed + 1,
                                        target_quantile=DONOR_DEPTH_QUANTILE),
                          "why": still[0]})
    depth = [d for d in depth if d["thinned"] or "skipped" in d]
    if depth:
        history["depth_matched"] = depth[0] if len(depth) == 1 else depth
    if not withheld and not any(d["thinned"] for d in depth):
        msg = (f"none of the {art['candidates']} genes that drive the marked features is "
               f"explained by {covariate!r} better than by the label, and no depth or QC "
               "difference is left to correct, so there is nothing to retrain without; use "
               "--mode finetune or --mode ablate")
        raise InputError(msg)
    # the panel is chosen again on the corrected data, the withheld genes left out
    n_top, pins = config.preprocess.n_top_genes, config.preprocess.pin_genes
    history["panel"] = reselect_panel(adata, {*before, *withheld}, n_top_genes=n_top,
                                      pin_genes=pins, previous=panel)
    if has_counts and covariate not in QC_GENE_GROUPS and art["genes"]:
        # test again on the corrected data and the new panel: the withheld genes took their
        # share of the library from every other gene, which hid part of the artifact's weaker
        # genes, and genes outside the parent's panel can enter the new one; repeat until no
        # gene is added
        passes = []
        for _ in range(MAX_RETEST_PASSES):
            hv = adata.var["highly_variable"].to_numpy(bool)
            out_now = {*before, *withheld}
            # the floor of the first test: a floor recomputed on what is left would always let
            # the top ~1.4% of the remaining genes' effects through
            more = artifact_genes(adata, ann, feats, covariate=covariate,
                                  genes=[g for g in adata.var_names[hv] if g not in out_now],
                                  min_effect=art["min_effect"])
            if not more["genes"]:
                break
            passes.append(more["genes"])
            withheld += more["genes"]
            table += [{**r, "source": "retest"} for r in more["table"] if r["withheld"]]
            adata.var[SIZE_WITHOUT] = (adata.var[SIZE_WITHOUT].to_numpy(bool)
                                       | adata.var_names.isin(more["genes"]))
            renormalise_without(adata, SIZE_WITHOUT)
            history["panel"] = reselect_panel(adata, {*before, *withheld}, n_top_genes=n_top,
                                              pin_genes=pins, previous=panel)
        if passes:
            history["retested"] = passes
            history["renormalised"]["genes_left_out"] = int(adata.var[SIZE_WITHOUT].sum())
    art = {**art, "genes": withheld, "table": table, "rule": "; ".join(rules)}
    mc = config.model
    tc = mc.train_config()
    tc.seed = config.seed
    trained = classifier.train(adata, kind=mc.kind, arch=mc.arch, train_config=tc,
                               exclude_genes=[*before, *art["genes"]])
    return trained.model, {**history, "withheld": art, "best_epoch": trained.history.best_epoch}


#: the measures a before/after comparison shows, in order, with their labels
COMPARISON_MEASURES = (("test_donor_auroc", "test donor AUROC"),
                       ("balanced_donor_auroc", "batch-balanced donor AUROC"),
                       ("within_batch_cell_auroc", "within-batch cell AUROC"),
                       ("covariate_attribution_share", "attribution via {covariate} features"),
                       ("n_flagged", "flagged hypotheses"))


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The before/after table of a :func:`refine_run` result, one row per measure (the CLI and
    the app show the same rows)."""
    b, a = result["before"], result["after"]
    return [{"measure": label.format(covariate=result["covariate"]), "before": b.get(k),
             "after": a.get(k)} for k, label in COMPARISON_MEASURES]


def _ranking_diff(before: list[dict], after: list[dict]) -> list[dict[str, Any]]:
    """Each child hypothesis matched to the parent's (:func:`same_hypothesis`): rank and status
    before and after."""
    rows = []
    for h in after:
        match = next((p for p in before if same_hypothesis(p, h)), None)
        rows.append({"hypothesis": h["id"], "cell_type": h["cell_type"],
                     "direction": h["direction"],
                     "genes": ", ".join(g["symbol"] for g in h["genes"][:5]),
                     "rank_after": h["rank"], "status_after": h["status"],
                     "parent": None if match is None else match["id"],
                     "rank_before": None if match is None else match["rank"],
                     "status_before": None if match is None else match["status"]})
    return rows
