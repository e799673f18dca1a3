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
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from discovery import annotate, classifier, features
from discovery import simulate as simulate_mod
from discovery.baselines import rank_genes
from discovery.contract import Keys, read, validate
from discovery.preprocess import preprocess
from discovery.yardstick import score_ranking
from models.sae import load_sae
from pipelines.config import PipelineConfig
from pipelines.rundir import RunDir, atomic_write, file_checksum, write_json

log = logging.getLogger(__name__)

__all__ = ["RunResult", "run_pipeline"]


@dataclass
class RunResult:
    run_dir: RunDir
    adata: ad.AnnData
    rankings: pd.DataFrame
    yardstick: pd.DataFrame | None
    model: Any = None
    metrics: dict[str, Any] | None = None
    features: dict[str, Any] | None = None


def _load_input(data: Path | None, metadata: Path | None, config: PipelineConfig,
                genes_in_rows: bool) -> tuple[ad.AnnData, dict[str, Any]]:
    if data is None:
        c = config.cohort
        adata = simulate_mod.simulate(c.scenario, seed=c.seed, n_donors=c.n_donors,
                                      cells_per_donor=c.cells_per_donor, n_genes=c.n_genes)
        return adata, {"kind": "simulated", **c.to_dict()}
    adata = read(data, metadata=metadata, genes_in_rows=genes_in_rows)
    desc = {"kind": "file", "path": str(Path(data).resolve()), "checksum": file_checksum(data)}
    if metadata is not None:
        desc["metadata"] = str(Path(metadata).resolve())
        desc["metadata_checksum"] = file_checksum(metadata)
    return adata, desc


def run_pipeline(
    out: str | Path,
    *,
    data: str | Path | None = None,
    metadata: str | Path | None = None,
    config: PipelineConfig | None = None,
    genes_in_rows: bool = False,
    quiet: bool = False,
    stop_after: str | None = None,
) -> RunResult:
    """Run every stage into ``out`` (or up to and including ``stop_after``); see the module
    docstring."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    config = config or PipelineConfig()
    rd = RunDir(out)
    stages = tqdm(total=6, desc="discovery run", disable=quiet, unit="stage")

    # 1. input -------------------------------------------------------------------------------
    stages.set_postfix_str("input")
    adata, input_desc = _load_input(Path(data) if data else None,
                                    Path(metadata) if metadata else None, config, genes_in_rows)
    keys = validate(adata, config.keys)  # before any work: errors surface here
    rd.init(config=config.to_dict(), seed=config.seed, input_desc=input_desc)
    with rd.stage("input", {"input": input_desc}) as outputs:
        summary = {
            "n_cells": adata.n_obs, "n_genes": adata.n_vars,
            "n_donors": int(adata.obs[keys.donor_key].nunique()),
            "keys": keys.to_dict(),
        }
        write_json(rd.file("input_summary.json"), summary)
        outputs.append("input_summary.json")
    stages.update()

    # 2. preprocess --------------------------------------------------------------------------
    stages.set_postfix_str("preprocess")
    params = {"preprocess": config.preprocess.to_dict(), "keys": config.keys.to_dict()}
    adata_path = rd.path / "adata.h5ad"
    if rd.is_done("preprocess", params):
        log.info("preprocess: reusing %s", adata_path)
        adata = ad.read_h5ad(adata_path)
    else:
        with rd.stage("preprocess", params) as outputs:
            preprocess(adata, keys, config=config.preprocess)
            atomic_write(adata_path, lambda p: adata.write_h5ad(p, compression="gzip"))
            outputs.append("adata.h5ad")
    stages.update()

    # 3. baselines ---------------------------------------------------------------------------
    stages.set_postfix_str("baselines")
    params = {"baselines": list(config.baselines), "seed": config.seed}
    rank_path = rd.path / "baselines" / "rankings.csv.gz"
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
            write_json(rd.file("baselines", "top_genes.json"),
                       {f"{m}|{ct}|{d}": g for (m, ct, d), g in top.items()})
            outputs += ["baselines/rankings.csv.gz", "baselines/top_genes.json"]
    stages.update()

    # 4. yardstick (simulated cohorts) --------------------------------------------------------
    stages.set_postfix_str("yardstick")
    yard = None
    if "simulation" in adata.uns and config.baselines:
        truth = simulate_mod.truth(adata)
        with rd.stage("yardstick", {"methods": list(config.baselines)}) as outputs:
            yard = pd.concat(
                [score_ranking(rankings[rankings["method"] == m], truth,
                               list(adata.var_names)).assign(method=m)
                 for m in config.baselines],
                ignore_index=True,
            )
            atomic_write(rd.path / "baselines" / "yardstick.csv",
                         lambda p: yard.to_csv(p, index=False))
            outputs.append("baselines/yardstick.csv")
    stages.update()

    # 5. model ---------------------------------------------------------------------------------
    stages.set_postfix_str("model")
    model, metrics = train_stage(rd, adata, config, quiet=quiet)
    stages.update()
    if stop_after == "model":
        stages.close()
        return RunResult(rd, adata, rankings, yard, model, metrics)

    # 6. features ------------------------------------------------------------------------------
    stages.set_postfix_str("features")
    feats = features_stage(rd, adata, model, config, quiet=quiet)
    stages.update()
    stages.close()
    return RunResult(rd, adata, rankings, yard, model, metrics, feats)


def features_stage(rd: RunDir, adata: ad.AnnData, model: Any, config: PipelineConfig, *,
                   quiet: bool = False) -> dict[str, Any]:
    """Fit SAEs at the configured hook, measure them, annotate the features."""
    spec = config.sae_spec()
    params = {"features": spec.to_dict(), "model_stage": rd.manifest["stages"]["model"].get(
        "params_hash")}
    fdir = rd.path / "features"
    key = f"X_sae_{spec.hook.replace('.', '_')}"
    if rd.is_done("features", params) and key in adata.obsm:
        log.info("features: reusing %s", fdir)
        return {"quality": json.loads((fdir / "quality.json").read_text()),
                "sae": load_sae(fdir / f"sae_seed{spec.seeds[0]}"),
                "annotations": pd.read_json(fdir / "annotations.json")}
    with rd.stage("features", params) as outputs:
        store_dir = rd.path / ".activations"
        shutil.rmtree(store_dir, ignore_errors=True)
        store = features.collect_activations(adata, model, store_dir, hook=spec.hook)
        train_rows = np.flatnonzero((adata.obs["split"] == "train").to_numpy())
        fitted = features.train_saes(store, spec, train_rows=train_rows, quiet=quiet)
        quality = {}
        for seed, (sae, hist) in zip(spec.seeds, fitted):
            q = features.sae_quality(adata, model, sae, hook=spec.hook)
            q["train_samples_per_second"] = round(hist.samples_per_second, 1)
            quality[f"seed{seed}"] = q
            sae.save(fdir / f"sae_seed{seed}")
            outputs.append(f"features/sae_seed{seed}/sae.safetensors")
        stability = features.match_features(
            [s.decoder_directions.detach().numpy() for s, _ in fitted])
        primary = fitted[0][0]
        acts = features.encode_cells(adata, model, primary, hook=spec.hook)
        table = annotate.annotate_features(adata, model, primary, acts=acts, hook=spec.hook,
                                           feature_prefix=f"{spec.hook}:F", stability=stability)
        summary = {
            "hook": spec.hook, "spec": spec.to_dict(), "per_seed": quality,
            "median_stability": float(np.nanmedian(stability)) if len(fitted) > 1 else None,
            "n_features": int(len(table)), "n_dead": int((table["frac_active"] == 0).sum()),
            "n_donor_q05": int((table["donor_q"] < 0.05).sum()),
            "n_confounded": int(table["confounded_by"].notna().sum()),
        }
        write_json(fdir / "quality.json", summary)
        atomic_write(fdir / "annotations.json",
                     lambda p: table.to_json(p, orient="records", indent=1))
        atomic_write(rd.path / "adata.h5ad", lambda p: adata.write_h5ad(p, compression="gzip"))
        shutil.rmtree(store_dir, ignore_errors=True)
        outputs += ["features/quality.json", "features/annotations.json", "adata.h5ad"]
    return {"quality": summary, "sae": primary, "annotations": table}


def train_stage(rd: RunDir, adata: ad.AnnData, config: PipelineConfig, *,
                quiet: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train (or reuse) the classifier of a run; writes ``model/`` and updates ``adata.h5ad``."""
    mc = config.model
    params = {"model": mc.to_dict(), "seed": config.seed,
              "resolved": {"arch": mc.resolved_arch(), "train": mc.train_config().to_dict()}}
    model_dir = rd.path / "model"
    if rd.is_done("model", params) and "case_prob" in adata.obs:
        log.info("model: reusing %s", model_dir)
        return classifier.load(model_dir), json.loads((model_dir / "metrics.json").read_text())
    with rd.stage("model", params) as outputs:
        tc = mc.train_config()
        tc.seed = config.seed
        trained = classifier.train(adata, kind=mc.kind, arch=mc.arch, train_config=tc,
                                   quiet=quiet)
        metrics = dict(trained.metrics)
        metrics["shortcut_probe"] = classifier.shortcut_probe(adata, trained.model,
                                                              seed=config.seed)
        metrics["kind"] = mc.kind
        tmp_dir = model_dir.with_name(".model.tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        trained.save(tmp_dir)
        write_json(tmp_dir / "metrics.json", metrics)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp_dir.rename(model_dir)
        adata_path = rd.path / "adata.h5ad"
        atomic_write(adata_path, lambda p: adata.write_h5ad(p, compression="gzip"))
        outputs += ["model/config.json", "model/model.safetensors", "model/metrics.json",
                    "adata.h5ad"]
    return trained.model, metrics


def keys_from_args(**kw: Any) -> Keys:
    """Keys from CLI-style arguments (None means the contract's default)."""
    defaults = Keys()
    cov = kw.get("covariate_keys")
    if isinstance(cov, str):
        cov = tuple(c.strip() for c in cov.split(",") if c.strip())
    return Keys(
        label_key=kw.get("label_key") or defaults.label_key,
        case=kw.get("case"),
        donor_key=kw.get("donor_key") or defaults.donor_key,
        cell_type_key=kw.get("cell_type_key") or defaults.cell_type_key,
        batch_key=kw.get("batch_key") if kw.get("batch_key") is not None else defaults.batch_key,
        covariate_keys=tuple(cov or ()),
    )
