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

import pandas as pd

from discovery.get.run import open_run
from discovery.io import layout
from discovery.io.contract import InputError, case_mask, get_keys
from discovery.io.feedback import FeedbackStore, default_url
from discovery.io.files import atomic_write, write_json
from discovery.io.layout import feature_id, parse_feature_id
from discovery.tl import classifier
from discovery.tl.expert import EXPERT_REASONS, donors_to_exclude, expert_notes, same_hypothesis
from discovery.tl.refine import (
    ACTIONABLE,
    QC_GENE_GROUPS,
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
from pipelines.config import PipelineConfig
from pipelines.report import write_report
from pipelines.run import features_stage, graphs_stage, hypotheses_stage
from pipelines.rundir import RunDir, config_hash

__all__ = ["COMPARISON_MEASURES", "REFINE_MODES", "comparison_rows", "covariate_and_term",
           "covariate_share", "covariate_shares", "program_ranks", "refine_run",
           "refine_warnings", "shares_before_after"]

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

    index = json.loads((run_dir / layout.GRAPH_INDEX).read_text())
    ann = pd.read_json(run_dir / layout.ANNOTATIONS).set_index("feature")
    conf = {t: set(ann.index[ann["confounded_by"] == t]) for t in terms}
    num = dict.fromkeys(conf, 0.0)
    den = 0.0
    for e in index["graphs"]:
        g = load_graph(run_dir / layout.graph_file(e["slug"]))
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
               covariate: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Build the child run of ``parent_dir`` in ``out`` from the parent's feedback.

    ``covariate``: the obs column that explains the artifact, as the expert names it (e.g.
    ``pct_counts_mt``); by default the covariate most of the marked features are annotated as
    confounded by, else the batch key."""
    if mode not in REFINE_MODES:
        msg = f"mode must be one of {', '.join(REFINE_MODES)}, got {mode!r}"
        raise InputError(msg)
    parent_dir, out = Path(parent_dir), Path(out)
    if out.resolve() == parent_dir.resolve():
        msg = "the child run needs its own directory (--out must differ from the parent)"
        raise InputError(msg)
    parent = open_run(parent_dir)
    manifest = json.loads((parent_dir / layout.MANIFEST).read_text())
    run_id = manifest["run_id"]
    hyps_path = parent_dir / layout.HYPOTHESES
    if not hyps_path.is_file():
        msg = f"{parent_dir} has no hypotheses.json; finish `discovery run` first"
        raise InputError(msg)
    parent_hyps = json.loads(hyps_path.read_text())["hypotheses"]
    store = FeedbackStore(default_url(parent_dir))
    items = store.items(run_id)
    sae_hook = parent.saes[0]
    feats, fb_ids = _feature_targets(items, parent_hyps, sae_hook.hook)
    plans_path = parent_dir / layout.PLANS
    notes = expert_notes(items, parent_hyps, json.loads(plans_path.read_text())["plans"]
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
                                                    config)
            table = history["withheld"]["table"]
            store.log_action(run_id, "retrain:withheld", detail=json.dumps(
                {"genes": history["withheld"]["genes"], "rule": history["withheld"]["rule"],
                 "from_marked_features": [r["gene"] for r in table if r["withheld"]
                                          and r["source"] == "marked feature"],
                 "from_the_check": [r["gene"] for r in table if r["withheld"]
                                    and r["source"] == "check"],
                 "renormalised": history.get("renormalised"),
                 "depth_matched": history.get("depth_matched")}))
        probs = classifier.predict(adata, child)
        adata.obs["case_prob"] = probs
        metrics = {s: classifier.evaluate(adata, probs, split=s, keys=keys)
                   for s in ("val", "test")}
        metrics["kind"] = json.loads((parent_dir / layout.METRICS).read_text()).get(
            "kind")
        metrics["refine"] = {"mode": mode, "history": history}
        tmp = out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        child.save_pretrained(tmp, safe_serialization=True)
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

    parent_metrics = json.loads((parent_dir / layout.METRICS).read_text())
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
    }
    b, a = comparison["before"], comparison["after"]
    comparison["covariate_share_drop"] = (
        1 - a["covariate_attribution_share"] / b["covariate_attribution_share"]
        if b["covariate_attribution_share"] > 0 else float("nan"))
    comparison["other_covariates"], comparison["warnings"] = refine_warnings(
        shares, cov, parent_hyps, hyp["hypotheses"])
    write_json(out / layout.REFINE, comparison)
    with rd.stage("report", {"refine": comparison["child_run"]}) as outputs:
        outputs += write_report(out)
    store.log_action(run_id, "child:done", child_run=str(out), detail=json.dumps(
        {"covariate_share": [b["covariate_attribution_share"], a["covariate_attribution_share"]],
         "balanced_donor_auroc": [b.get("balanced_donor_auroc"), a.get("balanced_donor_auroc")]},
        default=float))
    return comparison


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
                           covariate: str | None,
                           config: PipelineConfig) -> tuple[Any, dict[str, Any]]:
    """Retrain from scratch (the parent's model settings) without the artifact's input genes.

    A QC covariate computed from a gene group (:data:`QC_GENE_GROUPS`) renormalises ``X``
    without the group first (in place: the child run's data), and withholds the group."""
    if not covariate:
        msg = ("retrain needs the covariate that explains the artifact (a batch column, or "
               "features annotated as confounded); use --mode ablate")
        raise InputError(msg)
    history: dict[str, Any] = {}
    panel = set(model.config.gene_names)
    if covariate in QC_GENE_GROUPS:
        renorm = renormalise_without(adata, QC_GENE_GROUPS[covariate])
        genes = [g for g in renorm["genes"] if g in panel]
        art = {"covariate": covariate, "genes": genes, "candidates": len(renorm["genes"]),
               "table": [{"gene": g, "withheld": True, "source": "gene group"} for g in genes],
               "rule": f"{covariate} is computed from the {QC_GENE_GROUPS[covariate]!r} genes: "
                       "they are left out of each cell's library size and of the inputs"}
        history["renormalised"] = {k: v for k, v in renorm.items() if k != "genes"}
    else:
        art = artifact_genes(adata, ann, feats, covariate=covariate,
                             genes=list(model.config.gene_names))
        if not art["genes"]:
            msg = (f"none of the {art['candidates']} genes that drive the marked features is "
                   f"explained by {covariate!r} better than by the label, so there is nothing "
                   "to withhold; use --mode finetune or --mode ablate")
            raise InputError(msg)
        if not pd.api.types.is_numeric_dtype(adata.obs[covariate]):
            # a batch reaches every gene through sequencing depth as well: thin it away (needs
            # raw counts; a run from log-normalised input says so in its history)
            depth = (match_depth(adata, covariate, seed=config.seed)
                     if "counts" in adata.layers else
                     {"by": covariate, "thinned": [], "skipped": "no raw counts in the run"})
            if depth["thinned"] or "skipped" in depth:
                history["depth_matched"] = depth
    # genes an earlier refinement withheld stay out: the parent's panel is the starting point
    hvg = adata.var_names[adata.var["highly_variable"].to_numpy(bool)]
    before = [g for g in hvg if g not in panel]
    if before:
        history["withheld_before"] = before
    # the panel is chosen again on the corrected data, the withheld genes left out
    history["panel"] = reselect_panel(adata, {*before, *art["genes"]},
                                      n_top_genes=config.preprocess.n_top_genes,
                                      pin_genes=config.preprocess.pin_genes)
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
