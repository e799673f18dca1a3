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

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from discovery.io.simulate import simulate, truth
from discovery.pp.preprocess import PreprocessConfig, preprocess
from discovery.tl.baselines import BASELINES, rank_genes
from discovery.tl.yardstick import score_ranking

log = logging.getLogger(__name__)

__all__ = ["METHODS", "BenchmarkResult", "run_benchmark", "to_markdown"]

RankingMethod = Callable[..., pd.DataFrame]

def discovery_method(adata, *, seed: int) -> pd.DataFrame:  # noqa: ANN001
    """The interpretability method: model -> SAE features -> graphs -> hypotheses -> ranking.

    Genes of unflagged hypotheses in rank order per (cell type, direction)
    (:func:`discovery.tl.hypotheses.hypotheses_to_ranking`); the hypotheses ride along in
    ``ranking.attrs['hypotheses']`` for the status counts.
    """
    import tempfile

    from discovery.tl.hypotheses import hypotheses_to_ranking
    from pipelines.config import PipelineConfig
    from pipelines.run import analyse

    with tempfile.TemporaryDirectory() as tmp:
        res = analyse(adata, tmp, config=PipelineConfig(seed=seed), quiet=True)
    ranking = hypotheses_to_ranking(res["hypotheses"])
    ranking.attrs["hypotheses"] = res["hypotheses"]
    return ranking


#: name -> ranking method
METHODS: dict[str, RankingMethod] = {name: partial(rank_genes, method=name) for name in BASELINES}
METHODS["discovery"] = discovery_method


def _hypothesis_counts(hyps: list[dict], tr: dict) -> dict[str, float]:
    """Status counts, and how hypotheses that carry planted artifact genes were treated."""
    art = {g for a in tr["artifacts"].values() for g in a["genes"]}
    carrying = [h for h in hyps
                if len({g["symbol"] for g in h["genes"][:10]} & art) >= 3]
    return {
        "n_supported": sum(h["status"] == "supported" for h in hyps),
        "n_flagged": sum(h["status"] == "flagged" for h in hyps),
        "artifact_hyps": len(carrying),
        "artifact_hyps_flagged": sum(h["status"] == "flagged" for h in carrying),
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
        agg = {"artifact_fd": ("artifact_fd", "mean"), "n_q05": ("n_q05", "mean"),
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
        raise ValueError(msg)
    prog_rows, run_rows = [], []
    combos = [(s, seed) for s in scenarios for seed in seeds]
    for scenario, seed in tqdm(combos, desc="benchmark", disable=quiet):
        adata = simulate(scenario, seed=seed, n_donors=n_donors,
                         cells_per_donor=cells_per_donor, n_genes=n_genes)
        preprocess(adata, config=PreprocessConfig(split_seed=seed))
        tr = truth(adata)
        universe = list(adata.var_names)
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
                "n_q05": (int((q < 0.05).sum()) if q.notna().any() and hyps is None
                          else np.nan),
                **(_hypothesis_counts(hyps, tr) if hyps is not None else {}),
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
        "with >= 3 planted artifact genes in their top 10 (and how many of them were flagged).",
        "",
        "## Summary (mean over seeds)",
        "",
        _md_table(result.summary()),
        "",
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
