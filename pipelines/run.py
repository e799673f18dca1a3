"""``discovery run``: the whole pipeline, stage by stage, into a run directory.

Stages (each recorded in the manifest with params, outputs and seconds; a stage whose params and
outputs are unchanged is skipped on a rerun):

1. ``input``: load the user's file (or simulate the bundled cohort) and validate it.
2. ``preprocess``: QC, normalisation, gene selection, donor-held-out split -> ``adata.h5ad``.
3. ``baselines``: Wilcoxon, pseudobulk and L1-logistic gene rankings -> ``baselines/``.
4. ``yardstick`` (simulated cohorts only): baselines scored against the planted truth.
5. ``model``: the classifier (transformer or MLP) trained on train donors, early-stopped on val
   donors, evaluated on test donors -> ``model/`` (safetensors + config.json),
   ``model/metrics.json`` (metrics, training speed, shortcut probe), ``obs['case_prob']``.
6. ``features``: activations at the SAE hook streamed to disk, one SAE per seed fitted on the
   training donors' cells, quality metrics (test donors, reconstruction spliced into the model),
   cross-seed stability, and annotation of the first seed's features -> ``features/``,
   ``obsm['X_sae_<hook>']``.
7. ``graphs``: one cohort attribution graph per cell type over its case cells (the first seed's
   SAE), each validated by ablations (predicted vs measured effects, circuit faithfulness),
   plus example cell graphs -> ``graphs/<population>.json`` (node-link) and ``.graphml``,
   ``graphs/<population>.validation.json``, ``graphs/cells/``, ``graphs/index.json``.
8. ``hypotheses``: ranked hypotheses with donor-level evidence, flags and distilled biomarkers,
   and experimental plans with their rationale chains -> ``hypotheses.json``, ``plans.json``.
9. ``report``: ``report.html`` (self-contained) and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from discovery.get.results import attach_results
from discovery.get.run import graph_index
from discovery.io import layout
from discovery.io.contract import InputError, check_donor_coverage, get_keys, read, validate
from discovery.io.datasets import DATASETS, load_dataset
from discovery.io.files import atomic_write, read_json, write_json
from discovery.io.graph_files import export_graph, load_graph
from discovery.io.layout import sae_key
from discovery.io.simulate import simulate, truth
from discovery.io.sketch import h5ad_n_obs, read_sketched, sketch_anndata
from discovery.pp.preprocess import preprocess
from discovery.tl import annotate, classifier, features
from discovery.tl.attribution import SAEHook, check_sae_hooks
from discovery.tl.baselines import rank_genes
from discovery.tl.classifier import shortcut_findings
from discovery.tl.donor_tests import AllCells, donor_gene_tests
from discovery.tl.embedding import umap
from discovery.tl.expert import ExpertNote, apply_expert
from discovery.tl.graphs import GraphSpec, case_populations, cohort_graph, example_cells, slugify
from discovery.tl.hypotheses import SCORE_FORMULA, propose_hypotheses, status_rules
from discovery.tl.interventions import validate_graph, validation_summary
from discovery.tl.plans import PRIORITY_FORMULA, TIER_RULES, make_plans
from discovery.tl.records import Flag
from discovery.tl.yardstick import score_ranking
from models.configs import check_known
from models.sae import load_sae
from pipelines.config import PipelineConfig
from pipelines.report import write_report
from pipelines.rundir import RunDir, adata_checksum, file_checksum

log = logging.getLogger(__name__)

__all__ = ["RunResult", "analyse", "run_pipeline"]


@dataclass
class RunResult:
    run_dir: RunDir
    adata: ad.AnnData
    rankings: pd.DataFrame
    yardstick: pd.DataFrame | None
    model: Any = None
    metrics: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    graphs: dict[str, Any] | None = None
    hypotheses: dict[str, Any] | None = None


def _preflight_model(config: PipelineConfig, n_genes: int) -> None:
    """Before any work: the checkpoint is readable (no pickle, safetensors present) and the
    classifier and its SAE fit in memory (counted on the meta device, nothing allocated)."""
    mc = config.model
    if mc.kind == "pretrained":
        from models.pretrained import checkpoint_sha256

        checkpoint_sha256(mc.arch["checkpoint"])  # refuses pickles, missing weights
        return
    n_panel = min(n_genes, config.preprocess.n_top_genes or n_genes)
    cfg = classifier.checked_config(mc.kind, [f"g{i}" for i in range(n_panel)], mc.arch)
    spec = config.sae_spec()
    width = max(int(getattr(cfg, "d_model", 1)), int(getattr(cfg, "d_ff", 1)))  # widest hook
    spec.sae_config(width, spec.seeds[0])


def _load_input(data: Path | None, metadata: Path | None, config: PipelineConfig,
                genes_in_rows: bool, stream: dict[str, Any] | None = None
                ) -> tuple[ad.AnnData, dict[str, Any]]:
    max_cells = config.preprocess.max_cells
    strata = config.keys.donor_key or config.keys.label_key
    if data is None and config.cohort.scenario in DATASETS:
        adata = load_dataset(config.cohort.scenario)
        desc: dict[str, Any] = {"kind": "dataset", "name": config.cohort.scenario}
    elif data is None:
        c = config.cohort
        adata = simulate(c.scenario, seed=c.seed, n_donors=c.n_donors,
                                      cells_per_donor=c.cells_per_donor, n_genes=c.n_genes)
        desc = {"kind": "simulated", **c.to_dict()}
    else:
        n_obs = (h5ad_n_obs(data) if data.suffix.lower() == ".h5ad" and metadata is None
                 else None)
        sketch = None
        if max_cells is not None and n_obs is not None and n_obs > max_cells:
            # larger than the sketch: never loaded whole (backed mode, chunks)
            how = _stream_settings(stream)
            adata, sketch = read_sketched(
                data, max_cells=max_cells, strata=strata, seed=config.seed,
                require_counts=config.preprocess.input == "counts", chunk=how["chunk"],
                engine=how["engine"], scheduler=how["scheduler"], workers=how["workers"])
        else:
            adata = read(data, metadata=metadata, genes_in_rows=genes_in_rows)
        # checksums once the files are known to be readable (missing files: read's error)
        desc = {"kind": "file", "path": str(Path(data).resolve()), "checksum": file_checksum(data)}
        if metadata is not None:
            desc["metadata"] = str(Path(metadata).resolve())
            desc["metadata_checksum"] = file_checksum(metadata)
        if sketch is not None:
            desc["sketch"] = sketch
            return adata, desc
    if max_cells is not None and adata.n_obs > max_cells:
        adata, desc["sketch"] = sketch_anndata(adata, max_cells, strata=strata, seed=config.seed)
    return adata, desc


#: how a pass over every cell of a sketched input runs (:mod:`discovery.io.stream`): execution,
#: not science (serial and Dask give the same numbers), so it is not part of the config hash
DEFAULT_STREAM: dict[str, Any] = {"engine": "dask", "workers": 2, "scheduler": None,
                                  "chunk": 50_000}


def all_cells_of(input_desc: dict[str, Any], stream: dict[str, Any] | None = None
                 ) -> AllCells | None:
    """The input file behind a sketched run (every cell, for the donor-level statistics), or
    None when the run saw every cell already (or its file is gone: then the sketch it is)."""
    if "sketch" not in input_desc or input_desc.get("kind") != "file":
        return None
    path = Path(input_desc["path"])
    if not path.is_file():
        log.warning("%s is gone: the donor-level statistics count the sketch's cells only", path)
        return None
    return AllCells.from_file(path, **_stream_settings(stream))


def _stream_settings(stream: dict[str, Any] | None) -> dict[str, Any]:
    settings = {**DEFAULT_STREAM, **(stream or {})}
    check_known(settings, DEFAULT_STREAM, "stream settings", error=InputError)
    return settings


def _cells_seen(rd: RunDir, stage: str, n: int, **parts: int) -> None:
    """Record in the manifest how many cells a stage saw (``stages.<name>.cells_seen``)."""
    rec = rd.manifest.get("stages", {}).get(stage)
    if rec is not None:
        rec["cells_seen"] = int(n)
        if parts:
            rec["cells_seen_by"] = {k: int(v) for k, v in parts.items()}
        rd.save()


def run_pipeline(
    out: str | Path,
    *,
    data: str | Path | None = None,
    metadata: str | Path | None = None,
    config: PipelineConfig | None = None,
    genes_in_rows: bool = False,
    quiet: bool = False,
    stop_after: str | None = None,
    stream: dict[str, Any] | None = None,
) -> RunResult:
    """Run every stage into ``out`` (or up to and including ``stop_after``); see the module
    docstring. ``stream``: how the donor-level statistics pass over every cell of an input
    larger than the sketch (:data:`DEFAULT_STREAM` keys: engine ``dask`` or ``serial``,
    workers of a local cluster, scheduler address of a running Dask cluster, chunk rows)."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    config = config or PipelineConfig()
    rd = RunDir(out)
    stages = tqdm(total=9, desc="discovery run", disable=quiet, unit="stage")

    # 1. input -------------------------------------------------------------------------------
    stages.set_postfix_str("input")
    adata, input_desc = _load_input(Path(data) if data else None,
                                    Path(metadata) if metadata else None, config, genes_in_rows,
                                    stream)
    # before any work: errors surface here
    keys = validate(adata, config.keys, require_counts=config.preprocess.input == "counts")
    check_donor_coverage(adata, keys)
    _preflight_model(config, adata.n_vars)
    rd.init(config=config.to_dict(), seed=config.seed, input_desc=input_desc)
    with rd.stage("input", {"input": input_desc}) as outputs:
        summary = {
            "n_cells": adata.n_obs, "n_genes": adata.n_vars,
            "n_donors": int(adata.obs[keys.donor_key].nunique()),
            "keys": keys.to_dict(),
        }
        if "sketch" in input_desc:
            summary["sketch"] = input_desc["sketch"]
        write_json(rd.path / layout.INPUT_SUMMARY, summary)
        outputs.append(layout.INPUT_SUMMARY)
    _cells_seen(rd, "input", input_desc.get("sketch", {}).get("cells_in_file", adata.n_obs))
    stages.update()

    # 2. preprocess --------------------------------------------------------------------------
    stages.set_postfix_str("preprocess")
    params = {"preprocess": config.preprocess.to_dict(), "keys": config.keys.to_dict()}
    adata_path = rd.path / layout.ADATA
    if rd.is_done("preprocess", params):
        log.info("preprocess: reusing %s", adata_path)
        adata = ad.read_h5ad(adata_path)
    else:
        with rd.stage("preprocess", params) as outputs:
            preprocess(adata, keys, config=config.preprocess)
            atomic_write(adata_path, lambda p: adata.write_h5ad(p, compression="gzip"))
            outputs.append(layout.ADATA)
    _cells_seen(rd, "preprocess", adata.n_obs)
    stages.update()

    # 3. baselines ---------------------------------------------------------------------------
    stages.set_postfix_str("baselines")
    params = {"baselines": list(config.baselines), "seed": config.seed}
    rank_path = rd.path / layout.RANKINGS
    if not config.baselines:
        rankings = pd.DataFrame()
    elif rd.is_done("baselines", params):
        rankings = pd.read_csv(rank_path)
    else:
        with rd.stage("baselines", params) as outputs:
            rankings = pd.concat(
                [rank_genes(adata, m, seed=config.seed) for m in
                 tqdm(config.baselines, desc="baselines", disable=quiet, leave=False)],
                ignore_index=True,
            )
            atomic_write(rank_path, lambda p: rankings.to_csv(p, index=False, compression="gzip"))
            top = (rankings[rankings["rank"] <= 20]
                   .groupby(["method", "cell_type", "direction"])["gene"].apply(list))
            write_json(rd.path / layout.TOP_GENES,
                       {f"{m}|{ct}|{d}": g for (m, ct, d), g in top.items()})
            outputs += [layout.RANKINGS, layout.TOP_GENES]
    _cells_seen(rd, "baselines", adata.n_obs)
    stages.update()

    # 4. yardstick (simulated cohorts) --------------------------------------------------------
    stages.set_postfix_str("yardstick")
    yard = None
    if "simulation" in adata.uns and config.baselines:
        planted = truth(adata)
        with rd.stage("yardstick", {"methods": list(config.baselines)}) as outputs:
            yard = pd.concat(
                [score_ranking(rankings[rankings["method"] == m], planted,
                               list(adata.var_names)).assign(method=m)
                 for m in config.baselines],
                ignore_index=True,
            )
            atomic_write(rd.path / layout.YARDSTICK,
                         lambda p: yard.to_csv(p, index=False))
            outputs.append(layout.YARDSTICK)
    stages.update()

    # 5. model ---------------------------------------------------------------------------------
    stages.set_postfix_str("model")
    model, metrics = train_stage(rd, adata, config)
    _cells_seen(rd, "model", adata.n_obs)
    stages.update()
    if stop_after == "model":
        stages.close()
        return RunResult(rd, adata, rankings, yard, model, metrics)

    # 6. features ------------------------------------------------------------------------------
    stages.set_postfix_str("features")
    feats = features_stage(rd, adata, model, config)
    _cells_seen(rd, "features", adata.n_obs)
    stages.update()
    if stop_after == "features":
        stages.close()
        return RunResult(rd, adata, rankings, yard, model, metrics, feats)

    # 7. graphs --------------------------------------------------------------------------------
    stages.set_postfix_str("graphs")
    graphs = graphs_stage(rd, adata, model, feats, config, quiet=quiet)
    _cells_seen(rd, "graphs", adata.n_obs)
    stages.update()

    # 8. hypotheses and plans -------------------------------------------------------------------
    stages.set_postfix_str("hypotheses")
    hyps = hypotheses_stage(rd, adata, model, feats, rankings, metrics, config,
                            all_cells=all_cells_of(input_desc, stream))
    stages.update()

    # 9. report --------------------------------------------------------------------------------
    stages.set_postfix_str("report")
    with rd.stage("report", {"hypotheses": rd.manifest["stages"]["hypotheses"]["params_hash"]}) \
            as outputs:
        outputs += results_into_adata(rd.path, adata)
        outputs += write_report(rd.path)
    stages.update()
    stages.close()
    return RunResult(rd, adata, rankings, yard, model, metrics, feats, graphs, hyps)


def analyse(adata: ad.AnnData, out: str | Path, *, config: PipelineConfig | None = None,
            rankings: pd.DataFrame | None = None, quiet: bool = True) -> dict[str, Any]:
    """Stages model -> features -> graphs -> hypotheses on an already preprocessed AnnData.

    For benchmarks and scripted studies that prepare the data themselves; ``out`` becomes a run
    directory (manifest, model, features, graphs, hypotheses.json, plans.json). Returns
    ``{"hypotheses": [...], "plans": [...]}``.
    """
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    config = config or PipelineConfig()
    rd = RunDir(out)
    rd.init(config=config.to_dict(), seed=config.seed,
            input_desc={"kind": "in-memory AnnData", "checksum": adata_checksum(adata)})
    if rankings is None and config.baselines:
        rankings = pd.concat([rank_genes(adata, m, seed=config.seed) for m in config.baselines],
                             ignore_index=True)
    model, metrics = train_stage(rd, adata, config)
    feats = features_stage(rd, adata, model, config)
    graphs_stage(rd, adata, model, feats, config, quiet=quiet)
    return hypotheses_stage(rd, adata, model, feats, rankings, metrics, config)


def hypotheses_stage(rd: RunDir, adata: ad.AnnData, model: Any, feats: dict[str, Any],
                     rankings: pd.DataFrame, metrics: dict[str, Any],
                     config: PipelineConfig, *,
                     expert: tuple[list[ExpertNote], list[dict]] | None = None,
                     all_cells: AllCells | None = None) -> dict[str, Any]:
    """Hypotheses from the run's graphs and features, and plans for them.

    ``expert``: a child run's non-artifact feedback and the donors it excluded
    (:mod:`discovery.tl.expert`), applied before the plans are made. ``all_cells``: the input
    file of a sketched run; the donor-level tests then count every cell of it."""
    spec = config.hypothesis_spec()
    params = {"hypotheses": spec.to_dict(), "seed": config.seed,
              "donor_tests": "moderated mean + tail tests (shares in [0, 1])",
              "graphs_stage": rd.manifest["stages"]["graphs"].get("params_hash"),
              "graphs_sha256": _recorded(rd, layout.GRAPH_INDEX)}
    if expert and expert[0]:
        params["expert_feedback"] = [(n.feedback_id, n.reason) for n in expert[0]]
    if all_cells is not None:
        params["donor_tests_cells"] = {"file": all_cells.path, "cells": len(all_cells.obs)}
    hpath, ppath = rd.path / layout.HYPOTHESES, rd.path / layout.PLANS
    tpath = rd.path / layout.DONOR_TESTS
    if rd.is_done("hypotheses", params):  # (is_done: every output there, sha256 unchanged)
        doc = read_json(hpath)
        return {"hypotheses": doc["hypotheses"], "expert_feedback": doc.get("expert_feedback", []),
                "plans": read_json(ppath)["plans"],
                "donor_tests": pd.read_csv(tpath)}
    with rd.stage("hypotheses", params) as outputs:
        index = graph_index(rd.path)
        graphs = {e["slug"]: load_graph(layout.inside_run(rd.path, layout.graph_file(e["slug"])))
                  for e in index["graphs"]}
        keys = get_keys(adata)
        hook = config.sae_spec().hook
        t0 = time.perf_counter()
        donor_tests = donor_gene_tests(adata, all_cells=all_cells)
        donor_seconds = time.perf_counter() - t0
        atomic_write(tpath, lambda p: donor_tests.to_csv(p, index=False))
        hyps = propose_hypotheses(
            adata, model, SAEHook(hook, feats["sae"].eval()), graphs=graphs,
            annotations=feats["annotations"], donor_tests=donor_tests,
            rankings=rankings, model_test_auroc=metrics.get("test", {}).get("donor_auroc"),
            spec=spec, seed=config.seed)
        findings = shortcut_findings(metrics)
        for h in hyps:
            if h.kind != "de_only":
                h.caveats += [Flag("model_shortcut", None, 0.0, f) for f in findings]
        effects = apply_expert(adata, hyps, expert[0], excluded=expert[1]) if expert and expert[0] else []
        covariates = [c for c in ("sex", "age", *keys.covariate_keys) if c in adata.obs]
        plans = make_plans(hyps, graphs, case=str(keys.case), covariates=covariates,
                           min_gene_auroc=spec.min_gene_auroc)
        run_id = rd.manifest["run_id"]
        hyps = [h.to_dict() for h in hyps]
        plans = [p.to_dict() for p in plans]
        write_json(hpath, {"schema_version": 1, "run_id": run_id,
                           "score_formula": SCORE_FORMULA, "status_rules": status_rules(spec),
                           "model_findings": findings, "hypotheses": hyps,
                           **({"expert_feedback": effects} if effects else {})})
        write_json(ppath, {"schema_version": 1, "run_id": run_id,
                           "priority_formula": PRIORITY_FORMULA,
                           "tier_rules": TIER_RULES, "plans": plans})
        outputs += [layout.DONOR_TESTS, layout.HYPOTHESES, layout.PLANS]
    n_all = len(all_cells.obs) if all_cells is not None else adata.n_obs
    _cells_seen(rd, "hypotheses", n_all, donor_tests=n_all, model=adata.n_obs)
    if all_cells is not None:  # what a pass over every cell cost, for sizing a cluster
        rd.manifest["stages"]["hypotheses"]["donor_tests_stream"] = {
            "seconds": round(donor_seconds, 3), "passes": 2,
            "chunks": -(-len(all_cells.obs) // all_cells.chunk), "chunk_rows": all_cells.chunk,
            "engine": "dask" if all_cells.scheduler else all_cells.engine,
            "workers": None if all_cells.scheduler else all_cells.workers}
        rd.save()
    return {"hypotheses": hyps, "plans": plans, "donor_tests": donor_tests,
            "expert_feedback": effects}


def graphs_stage(rd: RunDir, adata: ad.AnnData, model: Any, feats: dict[str, Any],
                 config: PipelineConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Cohort graphs (case cells of each cell type), their validation, example cell graphs."""
    spec, extra = config.graph_settings()
    hook = config.sae_spec().hook
    params = {"graphs": config.graphs, "hook": hook,
              "features_stage": rd.manifest["stages"]["features"].get("params_hash"),
              "sae_sha256": _recorded(rd, f"{layout.sae_dir(config.sae_spec().seeds[0])}"
                                          "/sae.safetensors"),
              # features are labelled where they act (annotations.json rewritten here)
              "labels": "where-it-acts"}
    index_path = rd.path / layout.GRAPH_INDEX
    if rd.is_done("graphs", params) and "acts_in" in feats["annotations"]:
        return read_json(index_path)
    with rd.stage("graphs", params) as outputs:
        saes = [SAEHook(hook, feats["sae"].eval())]
        try:
            check_sae_hooks(model, saes)
        except InputError as err:
            index = {"hook": hook, "graphs": [], "skipped": str(err)}
            write_json(index_path, index)
            outputs.append(layout.GRAPH_INDEX)
            return index
        populations = case_populations(adata, min_cells=extra["min_cells"])
        built = []
        for pop in tqdm(populations, desc="graphs", disable=quiet, leave=False):
            g = cohort_graph(adata, model, saes, mask=pop.mask, name=pop.name, spec=spec)
            val = validate_graph(adata, model, saes, graph=g, mask=pop.mask,
                                 n_top=extra["n_top"])
            g.graph.update({"cell_type": pop.cell_type, "label": "case",
                            "validation": validation_summary(val)})
            cells = example_cells(adata, pop.mask, n=extra["cell_graphs"])
            cell_graphs = []
            for cell in cells:
                cg = cohort_graph(adata, model, saes, mask=adata.obs_names == cell,
                                  name=f"cell {cell}",
                                  spec=GraphSpec(spec.node_threshold, spec.edge_threshold, 0,
                                                 spec.batch_size, spec.seed))
                cg.graph.update({"cell": cell, "cell_type": pop.cell_type})
                cell_graphs.append((cell, cg))
            built.append((pop, g, val, cell_graphs))
        # features are described where they act: the cell type whose graph they carry the most
        # attribution in (annotations.json is rewritten with those labels)
        ann = annotate.relabel_by_roles(
            adata, model, feats["sae"], table=feats["annotations"],
            roles=annotate.feature_roles(g for _, g, _, _ in built),
            acts=np.asarray(adata.obsm[sae_key(hook)]), hook=hook,
            gene_sets=config.user_gene_sets(), signature_key=f"{sae_key(hook)}_signature")
        ann = feats["annotations"] = _write_annotations(rd, ann)
        # the moved features' signatures (varm) are rewritten with their labels
        atomic_write(rd.path / layout.ADATA, lambda p: adata.write_h5ad(p, compression="gzip"))
        outputs += [layout.ANNOTATIONS, layout.ADATA]
        labels = dict(zip(ann["feature"], ann["label"]))
        entries = []
        for pop, g, val, cell_graphs in built:
            summary = g.graph["validation"]
            files = [layout.graph_file(pop.slug), layout.graph_file(pop.slug, ".graphml"),
                     layout.validation_file(pop.slug)]
            for graph in (g, *(cg for _, cg in cell_graphs)):
                for n, d in graph.nodes(data=True):
                    if d.get("kind") == "feature" and n in labels:
                        d["label"] = labels[n]
            export_graph(g, rd.path / files[0])
            export_graph(g, rd.path / files[1])
            write_json(rd.path / files[2], val)
            for cell, cg in cell_graphs:
                name = layout.cell_graph_file(slugify(cell))
                export_graph(cg, rd.path / name)
                files.append(name)
            outputs += files
            entries.append({
                "name": pop.name, "slug": pop.slug, "cell_type": pop.cell_type, "label": "case",
                "n_cells": int(pop.mask.sum()), "n_donors": g.graph["n_donors"],
                "n_nodes": g.number_of_nodes(), "n_edges": g.number_of_edges(),
                "replacement_score": g.graph["replacement_score"],
                "completeness_score": g.graph["completeness_score"],
                "max_completeness_error": g.graph["max_completeness_error"],
                "mean_logit": g.graph["mean_logit"],
                "validation": {k: v for k, v in summary.items() if k != "circuit_curve"},
                "cell_graphs": [c for c, _ in cell_graphs], "files": files,
            })
        index = {"hook": hook, "graphs": entries}
        write_json(index_path, index)
        outputs.append(layout.GRAPH_INDEX)
    return index


def features_stage(rd: RunDir, adata: ad.AnnData, model: Any,
                   config: PipelineConfig) -> dict[str, Any]:
    """Fit SAEs at the configured hook, measure them, annotate the features."""
    spec = config.sae_spec()
    params = {"features": spec.to_dict(), "model_stage": rd.manifest["stages"]["model"].get(
        "params_hash"), "model_sha256": _recorded(rd, f"{layout.MODEL_DIR}/model.safetensors"),
        **_gene_set_params(config)}
    fdir = rd.path / layout.FEATURES_DIR
    key = sae_key(spec.hook)
    if rd.is_done("features", params) and key in adata.obsm:
        log.info("features: reusing %s", fdir)
        if "X_umap" not in adata.obsm:  # runs made before the app needed it
            umap(adata, seed=config.seed)
            atomic_write(rd.path / layout.ADATA,
                         lambda p: adata.write_h5ad(p, compression="gzip"))
            rd.record(layout.ADATA)
        return {"quality": read_json(rd.path / layout.SAE_QUALITY),
                "sae": load_sae(rd.path / layout.sae_dir(spec.seeds[0])),
                "annotations": _read_annotations(rd)}
    with rd.stage("features", params) as outputs:
        store_dir = rd.path / layout.ACTIVATIONS
        fitted = features.fit_saes(adata, model, spec=spec, workdir=store_dir)
        shutil.rmtree(store_dir, ignore_errors=True)
        quality = {}
        for seed, sae, hist in zip(spec.seeds, fitted.saes, fitted.histories):
            q = features.sae_quality(adata, model, sae, hook=spec.hook)
            q["train_samples_per_second"] = round(hist.samples_per_second, 1)
            quality[f"seed{seed}"] = q
            sae.save(rd.path / layout.sae_dir(seed))
            outputs += [f"{layout.sae_dir(seed)}/sae.safetensors",
                        f"{layout.sae_dir(seed)}/config.json"]
        stability, primary = fitted.stability, fitted.primary
        acts = np.asarray(adata.obsm[key])
        umap(adata, seed=config.seed)
        table = annotate.annotate_features(adata, model, primary, acts=acts, hook=spec.hook,
                                           stability=stability,
                                           gene_sets=config.user_gene_sets(),
                                           signature_key=f"{key}_signature")
        summary = {
            "hook": spec.hook, "spec": spec.to_dict(), "per_seed": quality,
            "median_stability": (float(np.nanmedian(stability)) if len(fitted.saes) > 1
                                 else None),
            "n_features": int(len(table)), "n_dead": int((table["frac_active"] == 0).sum()),
            "n_donor_q05": int((table["donor_q"] < 0.05).sum()),
            "n_confounded": int(table["confounded_by"].notna().sum()),
        }
        write_json(rd.path / layout.SAE_QUALITY, summary)
        table = _write_annotations(rd, table)
        atomic_write(rd.path / layout.ADATA, lambda p: adata.write_h5ad(p, compression="gzip"))
        outputs += [layout.SAE_QUALITY, layout.ANNOTATIONS, layout.ADATA]
    return {"quality": summary, "sae": primary, "annotations": table}


def results_into_adata(run_dir: Path, adata: ad.AnnData) -> list[str]:
    """Put the run's features, hypotheses, rankings and hypothesis scores into its AnnData
    (:func:`discovery.get.attach_results`) and rewrite ``adata.h5ad``; returns the file written.
    Nothing is rewritten when the AnnData already holds these very results (a resumed run
    leaves ``adata.h5ad`` untouched): ``uns['discovery']['results_from']`` records the sha256 of
    the files they came from."""
    stamp = {name: file_checksum(run_dir / name) for name in
             (layout.ANNOTATIONS, layout.HYPOTHESES, layout.RANKINGS)
             if (run_dir / name).is_file()}
    disc = adata.uns.get("discovery", {})
    if disc.get("results_from") == json.dumps(stamp, sort_keys=True):
        return []
    attach_results(adata, run_dir)
    adata.uns["discovery"]["results_from"] = json.dumps(stamp, sort_keys=True)
    atomic_write(run_dir / layout.ADATA, lambda p: adata.write_h5ad(p, compression="gzip"))
    return [layout.ADATA]


def _gene_set_params(config: PipelineConfig) -> dict[str, Any]:
    """The user's gene-set files by content (sha256): an edited file re-annotates the features.
    Empty when there are none (the stage keys of runs without them stay as they were)."""
    import hashlib

    if not config.gene_sets:
        return {}
    return {"gene_sets": {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
                          for p in config.gene_sets}}


def _recorded(rd: RunDir, output: str) -> str | None:
    """The sha256 the manifest holds for ``output``: a later stage keys on the bytes an earlier
    one wrote, not only on its settings, so a retrained model that came out different (another
    device, another thread count) makes the stages built on it run again."""
    return rd.manifest.get("files", {}).get(output)


def _write_annotations(rd: RunDir, table: pd.DataFrame) -> pd.DataFrame:
    """Write ``annotations.json`` and return the table as read back from it: a resumed run reads
    the same file, so both paths continue with the same (JSON-rounded) numbers."""
    path = rd.path / layout.ANNOTATIONS
    atomic_write(path, lambda p: table.to_json(p, orient="records", indent=1))
    return _read_annotations(rd)


def _read_annotations(rd: RunDir) -> pd.DataFrame:
    """``annotations.json`` as a table: JSON null stays None in text columns (NaN in numeric
    ones), and nothing is parsed as a date (``pd.read_json`` would do both differently)."""
    return pd.DataFrame.from_records(read_json(rd.path / layout.ANNOTATIONS))


def train_stage(rd: RunDir, adata: ad.AnnData,
                config: PipelineConfig) -> tuple[Any, dict[str, Any]]:
    """Train (or reuse) the classifier of a run; writes ``model/`` and updates ``adata.h5ad``."""
    mc = config.model
    params = {"model": mc.to_dict(), "seed": config.seed,
              "resolved": {"arch": mc.resolved_arch(), "train": mc.train_config().to_dict()}}
    if mc.kind == "pretrained":  # the weights, not only their path, decide whether to retrain
        from models.pretrained import checkpoint_sha256

        params["checkpoint_sha256"] = checkpoint_sha256(mc.arch["checkpoint"])
    model_dir = rd.path / layout.MODEL_DIR
    if rd.is_done("model", params) and "case_prob" in adata.obs:
        log.info("model: reusing %s", model_dir)
        return classifier.load(model_dir), read_json(rd.path / layout.METRICS)
    with rd.stage("model", params) as outputs:
        tc = mc.train_config()
        tc.seed = config.seed
        trained = classifier.train(adata, kind=mc.kind, arch=mc.arch, train_config=tc)
        metrics = dict(trained.metrics)
        metrics["shortcut_probe"] = classifier.shortcut_probe(adata, trained.model,
                                                              seed=config.seed)
        metrics["kind"] = mc.kind
        tmp_dir = model_dir.with_name(".model.tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        trained.save(tmp_dir)
        write_json(tmp_dir / Path(layout.METRICS).name, metrics)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp_dir.rename(model_dir)
        adata_path = rd.path / layout.ADATA
        atomic_write(adata_path, lambda p: adata.write_h5ad(p, compression="gzip"))
        outputs += [f"{layout.MODEL_DIR}/config.json", f"{layout.MODEL_DIR}/model.safetensors",
                    layout.METRICS, layout.ADATA]
    return trained.model, metrics


def keys_from_args(**kw: Any) -> dict[str, Any]:
    """Key overrides from CLI-style arguments: only those given (None = not given); the words
    ``none`` for ``donor_key`` / ``cell_type_key`` mean "no such column" (cells as units / one
    population) and for ``batch_key`` "no batch"."""
    out: dict[str, Any] = {}
    for name in ("label_key", "case", "donor_key", "cell_type_key", "batch_key"):
        v = kw.get(name)
        if v is None:
            continue
        switch_off = name in ("donor_key", "cell_type_key", "batch_key")
        out[name] = None if switch_off and str(v).lower() == "none" else v
    cov = kw.get("covariate_keys")
    if cov is not None:
        out["covariate_keys"] = ([c.strip() for c in cov.split(",") if c.strip()]
                                 if isinstance(cov, str) else list(cov))
    return out
