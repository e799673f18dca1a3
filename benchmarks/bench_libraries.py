"""Our statistics beside the library calls that could replace them, on a finished run's data.

Run (after ``discovery run --out runs/demo``):

    python benchmarks/bench_libraries.py runs/demo [--repeats 7] [--out benchmarks/results/libraries.md]

For each pair: the largest absolute difference of the results and the median time of
``--repeats`` runs of each, measured alternately in this process; the ratio is library time /
our time (> 1: ours is faster). The project calls the library where it measured equal or better
(BH: ``scipy.stats.false_discovery_control``, Welch: ``scipy.stats.ttest_ind``), and keeps its own
code where the library is slower for the same numbers:

1. pseudobulk sums, raw counts per donor x cell type: ``discovery.tl.stats.aggregate_by``
   (one sparse indicator product) vs ``sc.get.aggregate``;
2. Benjamini-Hochberg over the pseudobulk baseline's p-values of one cell type;
3. Welch t-test of log-CPM pseudobulk, case vs control donors, every gene.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import stats

from discovery.io.contract import case_mask, get_keys
from discovery.io.files import write_text
from discovery.tl.stats import aggregate_by, bh_fdr, welch_t


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/libraries.md"))
    args = p.parse_args()
    adata = ad.read_h5ad(args.run / "adata.h5ad")
    keys = get_keys(adata)
    counts = adata.layers["counts"]
    groups = (adata.obs[keys.donor_key].astype(str) + "|"
              + adata.obs[keys.cell_type_key].astype(str)).to_numpy()

    def ours_agg():
        return aggregate_by(counts, groups)

    def lib_agg():
        tmp = ad.AnnData(X=counts, obs=pd.DataFrame({"g": pd.Categorical(groups)},
                                                    index=adata.obs_names))
        return sc.get.aggregate(tmp, by="g", func="sum")

    names, summed, _ = ours_agg()
    agg = lib_agg()
    diff_agg = float(np.abs(np.asarray(agg.layers["sum"])[agg.obs_names.get_indexer(names)]
                            - summed).max())

    donors = adata.obs[keys.donor_key].astype(str).to_numpy()
    is_case = pd.Series(case_mask(adata, keys)).groupby(donors).first()
    dn, dsum, _ = aggregate_by(counts, donors)
    logcpm = np.log2(dsum / dsum.sum(1, keepdims=True) * 1e6 + 1)
    y = is_case.loc[dn].to_numpy()
    a, b = logcpm[y], logcpm[~y]
    pvals = welch_t(a, b).p

    rows = []
    for name, ours, lib, diff in [
        ("pseudobulk sums (aggregate_by vs sc.get.aggregate)", ours_agg, lib_agg, diff_agg),
        ("BH q-values (bh_fdr vs scipy false_discovery_control)", lambda: bh_fdr(pvals),
         lambda: stats.false_discovery_control(pvals),
         float(np.nanmax(np.abs(bh_fdr(pvals) - stats.false_discovery_control(pvals))))),
        ("Welch t (welch_t vs scipy ttest_ind)", lambda: welch_t(a, b),
         lambda: stats.ttest_ind(a, b, equal_var=False),
         float(np.nanmax(np.abs(welch_t(a, b).t - stats.ttest_ind(a, b, equal_var=False)
                                .statistic)))),
    ]:
        t_ours, t_lib = [], []
        for _ in range(args.repeats):  # alternately, so load changes hit both
            t_ours.append(_median_time(ours, 1))
            t_lib.append(_median_time(lib, 1))
        to, tl = statistics.median(t_ours), statistics.median(t_lib)
        rows.append(f"| {name} | {diff:.2g} | {to * 1e3:.1f} | {tl * 1e3:.1f} | {tl / to:.2f} |")
    text = "\n".join([
        "# Our statistics beside the libraries",
        "",
        f"Command: `python benchmarks/bench_libraries.py {args.run} --repeats {args.repeats} "
        f"--out {args.out}` (this file is written by that command)",
        f"({adata.n_obs} cells x {adata.n_vars} genes, {len(names)} donor x cell-type groups)",
        "",
        "| computation | max abs difference | ours ms | library ms | library / ours |",
        "|---|---|---|---|---|",
        *rows, ""])
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
