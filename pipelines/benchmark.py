"""``discovery benchmark``: every ranking method against planted truth, scenarios x seeds.

A method is any callable ``method(adata, *, seed) -> ranking table`` (columns of
:data:`discovery.tl.baselines.RANKING_COLUMNS`) on a preprocessed AnnData; register it in
:data:`METHODS`. For each scenario and seed the cohort is simulated, preprocessed once, and every
method ranks it; the yardstick (:mod:`discovery.tl.yardstick`) scores the rankings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from discovery.io.contract import Keys
from discovery.io.simulate import simulate, truth
from discovery.pp.preprocess import PreprocessConfig, preprocess
from discovery.tl.baselines import BASELINES, rank_genes
from discovery.tl.yardstick import artifact_false_discoveries, score_programs, score_ranking
from models.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["METHODS", "BenchmarkResult", "SuiteResult", "bootstrap_mean", "run_benchmark",
           "run_suite", "suite_markdown", "suite_tables", "to_markdown"]

RankingMethod = Callable[..., pd.DataFrame]

def discovery_method(adata, *, seed: int, preset: str = "standard",  # noqa: ANN001
                     overrides: dict | None = None) -> pd.DataFrame:
    """The interpretability method: model -> SAE features -> graphs -> hypotheses -> ranking.

    Adjusted donor-level evidence per gene, promoted by the model's hypotheses and demoted by
    technical evidence (:func:`discovery.tl.hypotheses.evidence_ranking`); the hypotheses ride
    along in ``ranking.attrs['hypotheses']`` for the status counts.
    """
    import tempfile

    from discovery.tl.hypotheses import evidence_ranking
    from pipelines.config import load_config
    from pipelines.run import analyse

    config = load_config(preset=preset, overrides={**(overrides or {}), "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        res = analyse(adata, tmp, config=config, quiet=True)
        mismatches = label_mismatches(Path(tmp))
    ranking = evidence_ranking(res["hypotheses"], res["donor_tests"])
    ranking.attrs["hypotheses"] = res["hypotheses"]
    ranking.attrs["label_mismatches"] = mismatches
    return ranking


def label_mismatches(run_dir: Path) -> int:
    """Features whose annotation describes another cell type than the one whose cohort graph
    they carry the most attribution in (0 in an honest run)."""
    from discovery.get.run import graph_index
    from discovery.io import layout
    from discovery.io.graph_files import load_graph
    from discovery.tl.annotate import acting_cell_type, feature_roles

    index = graph_index(run_dir)
    roles = feature_roles(load_graph(layout.inside_run(run_dir, layout.graph_file(e["slug"])))
                          for e in index["graphs"])
    ann = pd.read_json(run_dir / layout.ANNOTATIONS).set_index("feature")
    return sum(ann.loc[f, "cell_type"] != acting_cell_type(by)
               or ann.loc[f, "cell_type"] not in ann.loc[f, "label"]
               for f, by in roles.items() if f in ann.index)


#: name -> ranking method
METHODS: dict[str, RankingMethod] = {name: partial(rank_genes, method=name) for name in BASELINES}
METHODS["discovery"] = discovery_method


def listed_genes() -> set[str]:
    """Every gene of a bundled artifact gene set (the names the method's gene-set checks know)."""
    from discovery.io import bundled

    return {g for gs in bundled.gene_sets(category="artifact") for g in gs.genes}


def _flagged(carrying: list[dict]) -> str:
    return f"{sum(h['status'] == 'flagged' for h in carrying)}/{len(carrying)}"


def _hypothesis_counts(hyps: list[dict], tr: dict) -> dict[str, float]:
    """Status counts, how hypotheses that carry planted artifact genes were treated, and the
    honesty of the "why": duplicate pairs (same cell type and direction, >= 30% of top-20
    genes shared) in the top 20, planted programs that appear exactly once in the top 10, and
    supported hypotheses that carry a flag or lead with an artifact-explained feature.

    Hypotheses carrying artifact genes are split by where those genes' names sit: ``listed``
    when most of them are in a bundled artifact gene set, ``unlisted`` otherwise; and the
    flagged ones by whether a gene-set flag (``artifact_program``) is among their flags —
    ``flagged_without_set`` counts rejections that rest on donor-level evidence alone.
    """
    from discovery.tl.hypotheses import gene_overlap

    art = {g for a in tr["artifacts"].values() for g in a["genes"]}
    listed = listed_genes()
    carrying = [h for h in hyps
                if len({g["symbol"] for g in h["genes"][:10]} & art) >= 3]

    def is_listed(h: dict) -> bool:
        hits = {g["symbol"] for g in h["genes"][:10]} & art
        return len(hits & listed) * 2 > len(hits)

    top20 = sorted(hyps, key=lambda h: h["rank"])[:20]
    dup = sum((a["cell_type"], a["direction"]) == (b["cell_type"], b["direction"])
              and gene_overlap(a["genes"], b["genes"], 20) >= 0.3
              for i, a in enumerate(top20) for b in top20[i + 1:])
    planted = [p for p in tr["programs"].values() if p["effect_size"]]
    once = sum(sum(h["cell_type"] == p["cell_type"] and h["direction"] == p["direction"]
                   and len({g["symbol"] for g in h["genes"][:10]} & set(p["genes"])) >= 3
                   for h in top20[:10]) == 1 for p in planted)
    on_artifact = sum(h["status"] == "supported" and bool(
        h["flags"] or max(h["evidence"].get("feature_roles") or [{"artifact": False, "share": 0}],
                key=lambda r: r["share"])["artifact"]) for h in hyps)
    return {
        "dup_pairs_top20": dup,
        "programs_once_top10": f"{once}/{len(planted)}" if planted else "–",
        "supported_on_artifact": on_artifact,
        "n_supported": sum(h["status"] == "supported" for h in hyps),
        "n_flagged": sum(h["status"] == "flagged" for h in hyps),
        "artifact_hyps": len(carrying),
        "artifact_hyps_flagged": sum(h["status"] == "flagged" for h in carrying),
        "listed_hyps_flagged": _flagged([h for h in carrying if is_listed(h)]),
        "unlisted_hyps_flagged": _flagged([h for h in carrying if not is_listed(h)]),
        "flagged_without_set": sum(h["status"] == "flagged" and not any(
            f["kind"] == "artifact_program" for f in h["flags"]) for h in carrying),
        "batch_flagged": int(any(h["status"] == "flagged" and any(
            f["by"] == "batch" and f["kind"] == "confounded" for f in h["flags"]) for h in hyps)),
    }


class BenchmarkResult:
    """Per-program scores (``programs``) and per-run facts (``runs``) of a benchmark."""

    def __init__(self, programs: pd.DataFrame, runs: pd.DataFrame) -> None:
        self.programs = programs
        self.runs = runs

    def summary(self) -> pd.DataFrame:
        """Mean over seeds and programs, per method x scenario."""
        prog = (self.programs.groupby(["scenario", "method"])
                .agg(precision_at_10=("precision_at_k", "mean"), auprc=("auprc", "mean")))
        agg = {"artifact_fd": ("artifact_fd", "mean"),
               "fd_listed": ("artifact_fd_listed", "mean"),
               "fd_unlisted": ("artifact_fd_unlisted", "mean"),
               "n_q05": ("n_q05", "mean"),
               "seeds_with_q05": ("n_q05", lambda s: int((s > 0).sum())),
               "seconds": ("seconds", "mean")}
        if "n_supported" in self.runs:
            agg.update(n_supported=("n_supported", "mean"),
                       seeds_with_supported=("n_supported", lambda s: int((s > 0).sum())),
                       seeds_batch_flagged=("batch_flagged", "sum"))
        runs = self.runs.groupby(["scenario", "method"]).agg(**agg)
        return prog.join(runs, how="outer").reset_index()


def run_benchmark(
    scenarios: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str],
    *,
    n_donors: int = 48,
    cells_per_donor: int = 200,
    n_genes: int = 2000,
    quiet: bool = False,
) -> BenchmarkResult:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        msg = f"unknown methods {unknown}; registered: {', '.join(METHODS)}"
        raise InputError(msg)
    prog_rows, run_rows = [], []
    listed = listed_genes()
    combos = [(s, seed) for s in scenarios for seed in seeds]
    for scenario, seed in tqdm(combos, desc="benchmark", disable=quiet):
        adata = simulate(scenario, seed=seed, n_donors=n_donors,
                         cells_per_donor=cells_per_donor, n_genes=n_genes)
        preprocess(adata, config=PreprocessConfig(split_seed=seed))
        tr = truth(adata)
        universe = list(adata.var_names)
        art = {g for a in tr["artifacts"].values() for g in a["genes"]}
        batch = {g for a in tr["artifacts"].values() if a["driven_by"] == "batch"
                 for g in a["genes"]}
        for name in methods:
            t0 = time.perf_counter()
            ranking = METHODS[name](adata, seed=seed)
            seconds = time.perf_counter() - t0
            scores = score_ranking(ranking, tr, universe)
            scores.insert(0, "method", name)
            scores.insert(0, "seed", seed)
            scores.insert(0, "scenario", scenario)
            prog_rows.append(scores)
            q = ranking.loc[ranking["direction"] == "up", "qval"]
            hyps = ranking.attrs.get("hypotheses")
            run_rows.append({
                "scenario": scenario, "seed": seed, "method": name,
                "artifact_fd": int(scores["artifact_fd"].iloc[0]),
                "artifact_fd_listed": artifact_false_discoveries(ranking, art & listed),
                "artifact_fd_unlisted": artifact_false_discoveries(ranking, art - listed),
                "batch_fd": artifact_false_discoveries(ranking, batch),
                "n_q05": (int((q < 0.05).sum()) if q.notna().any() and hyps is None
                          else np.nan),
                **(_hypothesis_counts(hyps, tr) if hyps is not None else {}),
                **({"label_mismatches": ranking.attrs["label_mismatches"]}
                   if "label_mismatches" in ranking.attrs else {}),
                "seconds": seconds,
            })
    return BenchmarkResult(pd.concat(prog_rows, ignore_index=True), pd.DataFrame(run_rows))


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if np.isnan(x):
            return "–"
        return f"{x:.0f}" if x.is_integer() and abs(x) >= 1 else f"{x:.3f}"
    return str(x)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _sum_ratio(values: pd.Series) -> str:
    """``"a/b"`` strings summed: ``["1/2", "3/3"]`` -> ``"4/5"``."""
    pairs = [tuple(int(x) for x in v.split("/")) for v in values if isinstance(v, str)]
    return f"{sum(p[0] for p in pairs)}/{sum(p[1] for p in pairs)}" if pairs else "–"


def twin_table(result: BenchmarkResult) -> pd.DataFrame:
    """Each scenario beside its ``_unlisted`` twin (the same counts; the technical batch program
    on genes outside every bundled gene set): the batch program's genes in the top 20 of every
    list (mean over seeds) in each, their difference, and for methods with hypotheses the
    artifact-carrying hypotheses flagged (summed over seeds, flagged/total) and how many of the
    flags rest on donor-level evidence alone (no gene-set flag)."""
    runs = result.runs
    rows = []
    for base in sorted(set(runs["scenario"])):
        twin = f"{base}_unlisted"
        if twin not in set(runs["scenario"]):
            continue
        for method in sorted(set(runs["method"])):
            a = runs[(runs["scenario"] == base) & (runs["method"] == method)]
            b = runs[(runs["scenario"] == twin) & (runs["method"] == method)]
            row: dict[str, Any] = {"scenario": base, "method": method,
                                   "batch_fd listed": a["batch_fd"].mean(),
                                   "batch_fd unlisted": b["batch_fd"].mean(),
                                   "difference": b["batch_fd"].mean() - a["batch_fd"].mean()}
            if "listed_hyps_flagged" in runs and a["listed_hyps_flagged"].notna().any():
                row.update({
                    "artifact hyps flagged, listed": _sum_ratio(a["listed_hyps_flagged"]),
                    "artifact hyps flagged, unlisted": _sum_ratio(b["unlisted_hyps_flagged"]),
                    "flagged without gene-set flag, listed / unlisted":
                        f"{int(a['flagged_without_set'].sum())} / "
                        f"{int(b['flagged_without_set'].sum())}"})
            rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(result: BenchmarkResult, *, command: str = "") -> str:
    """The benchmark as Markdown: summary, per-run facts, per-program scores."""
    parts = [
        "# Discovery benchmark: gene rankings against planted truth",
        "",
        f"Command: `{command}`" if command else "",
        "",
        "Metrics (see `discovery/tl/yardstick.py`): precision@10 and AUPRC of each planted "
        "program's genes in its cell type and direction (mean over programs and seeds); "
        "artifact_fd = planted artifact genes (technical batch program, mitochondrial genes) in "
        "the top 20 of every (cell type, direction) list, summed; n_q05 = up-ranked genes with "
        "q < 0.05 summed over cell types (methods that give q-values; Wilcoxon's are cell-level); "
        "seeds_with_q05 = seeds with any such gene. For `discovery` (model -> SAE features -> "
        "attribution graphs -> hypotheses; genes of unflagged hypotheses in rank order): "
        "n_supported = hypotheses with status supported, seeds_batch_flagged = seeds in which "
        "a hypothesis was flagged as confounded by batch, artifact_hyps(_flagged) = hypotheses "
        "with >= 3 planted artifact genes in their top 10 (and how many of them were flagged). "
        "Honesty of the why (per run): dup_pairs_top20 = pairs of hypotheses in the top 20 of "
        "one cell type and direction sharing >= 30% of their top-20 genes; programs_once_top10 "
        "= planted programs that exactly one top-10 hypothesis carries (>= 3 of its genes in "
        "the hypothesis's top 10); supported_on_artifact = supported hypotheses with a flag or "
        "a leading artifact-explained feature; label_mismatches = features whose label names "
        "another cell type than the one whose graph they carry the most attribution in.",
        "",
        "Gene-set membership vs donor-level evidence: fd_listed / fd_unlisted = artifact_fd "
        "split by whether the gene is in a bundled artifact gene set (`data/gene_sets.yaml`, "
        "category artifact) or not; batch_fd = the technical batch program's genes alone. "
        "listed_hyps_flagged / unlisted_hyps_flagged = flagged/total hypotheses carrying "
        "artifact genes, split by whether most of those genes are listed; flagged_without_set = "
        "such hypotheses flagged with no gene-set (`artifact_program`) flag, i.e. on donor-level "
        "evidence alone.",
        "",
        "## Summary (mean over seeds)",
        "",
        _md_table(result.summary()),
        "",
        *_twin_section(result),
        "## Per run",
        "",
        _md_table(result.runs),
        "",
        "## Per program",
        "",
        _md_table(result.programs.drop(columns=["artifact_fd"])),
        "",
    ]
    return "\n".join(parts)


def _twin_section(result: BenchmarkResult) -> list[str]:
    twins = twin_table(result)
    if twins.empty:
        return []
    return ["## Artifacts in a bundled gene set vs in none (twin scenarios)", "",
            "Each `X_unlisted` scenario is `X` count for count, with the technical batch "
            "program's genes renamed to symbols in no bundled gene set (and the dissociation / "
            "heat shock symbols moved to unaffected genes). A method whose artifact rejection "
            "rests on donor-level evidence scores the same on both; what it loses on the twin "
            "is what it owed to gene-set names.", "", _md_table(twins), ""]


# ------------------------------------------------------------------------- randomised suite
#: difficulty strata of the generalisation report: (name, column, bins, labels)
STRATA: tuple[tuple[str, str, list[float], list[str]], ...] = (
    ("effect (log units)", "effect", [0, 0.8, 1.5, np.inf], ["< 0.8", "0.8-1.5", ">= 1.5"]),
    ("donors", "n_donors", [0, 24, 48, np.inf], ["< 24", "24-48", "> 48"]),
    ("artifact alignment", "max_alignment", [-1, 0.5, 2], ["< 0.5", ">= 0.5"]),
)


class SuiteResult:
    """Per-program scores (``programs``) and per-scenario facts (``runs``) of a random suite."""

    def __init__(self, programs: pd.DataFrame, runs: pd.DataFrame) -> None:
        self.programs = programs
        self.runs = runs


def _keys_of(tr: dict) -> Keys:
    k = tr["keys"]
    return Keys(label_key=k["label_key"], case=tr["case"], donor_key=k["donor_key"],
                cell_type_key=k["cell_type_key"], batch_key=k["batch_key"])


def run_suite(n: int, seed: int, methods: Sequence[str], *, preset: str = "quick",
              config: dict | None = None, draw: dict | None = None,
              quiet: bool = False) -> SuiteResult:
    """Every method on ``n`` randomised scenarios (:mod:`discovery.io.scenarios`).

    ``discovery`` runs with the pipeline ``preset`` (plus ``config`` overrides); ``draw``
    bounds the scenario design (:func:`discovery.io.scenarios.draw_scenario`). A method that fails on a scenario scores
    zero there, with the error kept in ``runs['error']``: a failure is a miss, not a gap.
    """
    from discovery.io.scenarios import random_suite, simulate_scenario

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        msg = f"unknown methods {unknown}; registered: {', '.join(METHODS)}"
        raise InputError(msg)
    prog_rows, run_rows = [], []
    listed = listed_genes()
    for sc_ in tqdm(random_suite(n, seed, **(draw or {})), desc="suite", disable=quiet):
        adata = simulate_scenario(sc_)
        tr = truth(adata)
        preprocess(adata, _keys_of(tr), config=PreprocessConfig(split_seed=sc_.seed))
        diff = tr["difficulty"]
        # artifact genes that are no program's genes, split by bundled gene-set membership
        programs_ = {g for pr in tr["programs"].values() for g in pr["genes"]}
        art = {g for a in tr["artifacts"].values() for g in a.get("genes", [])} - programs_
        batch_listed = [bool(set(a["genes"]) & listed) for a in tr["artifacts"].values()
                        if a["kind"] == "batch_program"]
        facts = {"scenario": sc_.name, "n_donors": diff["n_donors"],
                 "n_cells": adata.n_obs, "max_alignment": diff["max_alignment"],
                 "n_programs": diff["n_programs"], "artifacts": ",".join(diff["artifacts"]),
                 "batch_genes": ("–" if not batch_listed else
                                 "listed" if all(batch_listed) else "unlisted")}
        for name in methods:
            method = (partial(METHODS[name], preset=preset, overrides=config)
                      if name == "discovery" else METHODS[name])
            t0 = time.perf_counter()
            error = None
            try:
                ranking = method(adata, seed=0)
            except Exception as err:  # noqa: BLE001 - a failing method scores zero, visibly
                log.warning("%s failed on %s: %s", name, sc_.name, err)
                error = f"{type(err).__name__}: {err}"
                ranking = pd.DataFrame(columns=["cell_type", "direction", "rank", "gene"])
            seconds = time.perf_counter() - t0
            progs, fd = score_programs(ranking, tr)
            fd_listed = artifact_false_discoveries(ranking, art & listed, top=10)
            fd_unlisted = artifact_false_discoveries(ranking, art - listed, top=10)
            if len(progs):
                progs.insert(0, "method", name)
                for k, v in facts.items():
                    progs[k] = v
                prog_rows.append(progs)
            hyps = ranking.attrs.get("hypotheses")
            run_rows.append({**facts, "method": name, "artifact_fd_10": fd,
                             "artifact_fd_10_listed": fd_listed,
                             "artifact_fd_10_unlisted": fd_unlisted,
                             "n_supported": (sum(h["status"] == "supported" for h in hyps)
                                             if hyps is not None else np.nan),
                             "n_hypotheses": len(hyps) if hyps is not None else np.nan,
                             "seconds": seconds, "error": error})
    programs = (pd.concat(prog_rows, ignore_index=True) if prog_rows else pd.DataFrame())
    return SuiteResult(programs, pd.DataFrame(run_rows))


def bootstrap_mean(df: pd.DataFrame, value: str, *, n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``value`` over the rows of ``df`` with a 95% percentile interval from resampling
    *scenarios* (rows of one scenario move together: its programs are not independent)."""
    if df.empty:
        return (np.nan, np.nan, np.nan)
    per = df.groupby("scenario")[value].agg(["sum", "count"])
    s, c = per["sum"].to_numpy(float), per["count"].to_numpy(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per), size=(n_boot, len(per)))
    boots = s[idx].sum(1) / c[idx].sum(1)
    return (float(s.sum() / c.sum()), float(np.quantile(boots, 0.025)),
            float(np.quantile(boots, 0.975)))


def _ci(m: tuple[float, float, float]) -> str:
    return "–" if np.isnan(m[0]) else f"{m[0]:.2f} [{m[1]:.2f}, {m[2]:.2f}]"


def suite_tables(result: SuiteResult) -> dict[str, pd.DataFrame]:
    """The generalisation report's tables: overall, by stratum, by program kind, per scenario."""
    progs, runs = result.programs, result.runs
    methods = list(dict.fromkeys(runs["method"]))
    rows = []
    null = runs[runs["n_programs"] == 0]
    for m in methods:
        p = progs[progs["method"] == m] if len(progs) else progs
        rows.append({"method": m,
                     "recall@10": _ci(bootstrap_mean(p, "recall_at_10")),
                     "recall@20": _ci(bootstrap_mean(p, "recall_at_20")),
                     "precision@10": _ci(bootstrap_mean(p, "precision_at_10")),
                     "artifact FD in top 10": _ci(bootstrap_mean(runs[runs["method"] == m],
                                                                 "artifact_fd_10")),
                     "scenarios with supported (no programs)": (
                         f"{int((null.loc[null['method'] == m, 'n_supported'] > 0).sum())}"
                         f" / {int((null['method'] == m).sum())}"
                         if m == "discovery" else "–"),
                     "failures": int(runs.loc[runs["method"] == m, "error"].notna().sum()),
                     "median seconds": float(runs.loc[runs["method"] == m, "seconds"].median())})
    out = {"overall": pd.DataFrame(rows)}
    # artifact rejection by gene names vs by donor-level evidence: the same FD, split
    by_set = []
    for m in methods:
        r = runs[runs["method"] == m]
        row = {"method": m}
        for col, title in (("artifact_fd_10_listed", "FD10: genes in a bundled artifact set"),
                           ("artifact_fd_10_unlisted", "FD10: genes outside every artifact set")):
            row[title] = _ci(bootstrap_mean(r, col)) if col in r else "–"
        for kind in ("listed", "unlisted"):
            sub = r[r["batch_genes"] == kind] if "batch_genes" in r else r.iloc[:0]
            row[f"FD10, scenarios whose batch program is {kind}"] = (
                f"{_ci(bootstrap_mean(sub, 'artifact_fd_10'))} (n={len(sub)})")
        by_set.append(row)
    out["by_gene_set"] = pd.DataFrame(by_set)

    def stratum(name: str, sub: pd.DataFrame) -> dict[str, Any]:
        row: dict[str, Any] = {"stratum": name,
                               "programs": int(len(sub) / max(len(methods), 1)),
                               "scenarios": int(sub["scenario"].nunique())}
        for m in methods:
            row[m] = _ci(bootstrap_mean(sub[sub["method"] == m], "recall_at_10"))
        return row

    strata_rows = []
    if len(progs):
        for title, col, bins, labels in STRATA:
            binned = pd.cut(progs[col], bins=bins, labels=labels, right=False)
            strata_rows += [stratum(f"{title} {lab}", progs[binned == lab]) for lab in labels]
        strata_rows += [stratum(f"kind {kind}", sub) for kind, sub in progs.groupby("kind")]
    out["strata"] = pd.DataFrame(strata_rows)
    per = runs.pivot_table(index=["scenario", "n_donors", "n_cells", "max_alignment",
                                  "n_programs", "artifacts"], columns="method",
                           values="artifact_fd_10").add_prefix("FD10 ")
    if len(progs):
        rec = progs.pivot_table(index="scenario", columns="method",
                                values="recall_at_10").add_prefix("recall@10 ")
        per = per.join(rec, on="scenario")
    if "batch_genes" in runs:
        per = per.join(runs.drop_duplicates("scenario").set_index("scenario")["batch_genes"],
                       on="scenario")
    out["per_scenario"] = per.reset_index()
    return out


def suite_markdown(result: SuiteResult, *, command: str = "") -> str:
    """The generalisation report (benchmarks/results/generalization.md)."""
    t = suite_tables(result)
    n = result.runs["scenario"].nunique()
    return "\n".join([
        "# Generalisation: every method on randomised cohorts",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"{n} scenarios drawn from the priors of `discovery/io/scenarios.py` (donors, cells, "
        "programs, effects, artifacts, gene symbols and column names all random). Metrics "
        "(`discovery/tl/yardstick.py::score_programs`): recall@k = share of a planted program's "
        "genes (at most k) in the top k of its cell type and direction; precision@10 = share of "
        "that top 10 that are program genes; artifact FD = planted artifact genes in the top 10 "
        "of every list, per scenario. Means over programs (FD: over scenarios) with 95% "
        "bootstrap intervals from resampling scenarios. A method that fails on a scenario "
        "scores zero there.",
        "",
        "## Overall",
        "",
        _md_table(t["overall"]),
        "",
        "## Artifact false discoveries by gene-set membership",
        "",
        "How much of a method's artifact rejection could come from knowing the bundled "
        "artifact gene sets (`data/gene_sets.yaml`): the top-10 artifact false discoveries "
        "split by whether the gene sits in a bundled artifact set (ambient RNA and outlier "
        "donor genes may sit in marker or disease sets: they count as outside), and the total "
        "in scenarios whose batch program is made of listed (immediate-early / heat-shock) "
        "genes vs of genes outside every bundled set (`discovery/io/scenarios.py`, about half "
        "of the batch programs). A method that rejects artifacts by donor-level evidence does "
        "as well on both.",
        "",
        _md_table(t["by_gene_set"]),
        "",
        "## recall@10 by difficulty stratum and program kind",
        "",
        _md_table(t["strata"]),
        "",
        "## Per scenario",
        "",
        _md_table(t["per_scenario"]),
        "",
    ])
