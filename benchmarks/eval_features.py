"""Feature-extraction acceptance on a finished run: planted programs and artifacts recovered?

Run: ``python benchmarks/eval_features.py RUN_DIR [--out benchmarks/results/features.md]``

For every SAE seed saved in ``RUN_DIR/features/`` the features are annotated. For each planted
program of the simulated cohort, the headline is **the method's own choice**: among the features
the method labels with the program's cell type, the one it ranks first (lowest donor-level q
for diagnosis). Nothing of the planted gene list is used to choose it. The program counts as
recovered in a seed when that feature's top-10 signature holds >= 5 of the program's genes.
Beside it, for reference only, the **oracle**: the feature of that cell type whose top-10
signature overlaps the planted genes most (an upper bound no user can reach). Artifacts: does a
feature flagged ``confounded_by`` batch / pct_counts_mt exist, and is one labelled as an
artifact gene set (dissociation / heat shock / mitochondrial)?
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import anndata as ad  # noqa: E402

from discovery.io.files import write_text  # noqa: E402
from discovery.io.simulate import truth  # noqa: E402
from discovery.tl import (
    annotate,
    classifier,
    features,  # noqa: E402
)
from models.sae import load_sae  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/features.md"))
    args = ap.parse_args(argv)
    adata = ad.read_h5ad(args.run_dir / "adata.h5ad")
    model = classifier.load(args.run_dir / "model")
    quality = json.loads((args.run_dir / "features" / "quality.json").read_text())
    hook = quality["hook"]
    tr = truth(adata)
    lines = [f"# Feature extraction on `{args.run_dir}` (hook `{hook}`)", "",
             f"Command: `python benchmarks/eval_features.py {args.run_dir}`", "",
             "## SAE quality (test donors)", "",
             "| seed | EV (normalised) | EV (raw) | L0 | dead | dense | agreement | Δloss | "
             "donor AUROC model / spliced | cell AUROC model / spliced |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, q in quality["per_seed"].items():
        lines.append(f"| {seed} | {q['explained_variance']:.3f} | {q['explained_variance_raw']:.3f}"
                     f" | {q['l0']:.1f} | {q['dead_fraction']:.3f} | {q['dense_fraction']:.3f} | "
                     f"{q['agreement']:.3f} | {q['delta_loss']:+.4f} | {q['donor_auroc']:.3f} / "
                     f"{q['donor_auroc_spliced']:.3f} | {q['cell_auroc']:.3f} / "
                     f"{q['cell_auroc_spliced']:.3f} |")
    lines += ["", "## Planted programs: the method's feature per SAE seed (oracle beside it)", "",
              "The method's choice: of the features labelled with the program's cell type, the "
              "one with the lowest donor-level q. Oracle: the one whose top-10 signature "
              "overlaps the planted genes most (reference only).", "",
              "| seed | program | cell type | method: genes in top-10 | method: recovered (>= 5) "
              "| method's feature | donor q | oracle: genes in top-10 | oracle: recovered |",
              "|---|---|---|---|---|---|---|---|---|"]
    recovered: dict[str, list[int]] = {}
    artifacts = []
    seeds = sorted(p.name for p in (args.run_dir / "features").glob("sae_seed*"))
    for name in seeds:
        sae = load_sae(args.run_dir / "features" / name)
        acts = features.encode_cells(adata, model, sae, hook=hook, key_added="_tmp")
        table = annotate.annotate_features(adata, model, sae, acts=acts, hook=hook)
        for prog_name, prog in sorted(tr["programs"].items()):
            cand = table[table["label"].str.startswith(prog["cell_type"])]
            hits = cand["signature"].map(lambda sig, g=set(prog["genes"]): len(set(sig[:10]) & g))
            if len(cand):
                chosen = cand.sort_values(["donor_q", "feature"]).iloc[0]
                chosen_hits = int(hits[chosen.name])
                oracle_hits = int(hits.max())
            else:
                chosen, chosen_hits, oracle_hits = None, 0, 0
            rec = recovered.setdefault(prog_name, [0, 0])
            rec[0] += int(chosen_hits >= 5)
            rec[1] += int(oracle_hits >= 5)
            lines.append(
                f"| {name} | {prog_name} | {prog['cell_type']} | {chosen_hits} | "
                f"{'yes' if chosen_hits >= 5 else 'no'} | "
                f"{'' if chosen is None else chosen['label']} | "
                f"{'' if chosen is None else f'{chosen.donor_q:.2g}'} | {oracle_hits} | "
                f"{'yes' if oracle_hits >= 5 else 'no'} |")
        conf = table["confounded_by"].value_counts().to_dict()
        art = table[table["top_set_category"] == "artifact"]["top_set"].value_counts().to_dict()
        artifacts.append((name, conf, art))
    lines += ["", "## Summary", "",
              "| program | seeds recovered by the method's choice | by the oracle (reference) |",
              "|---|---|---|"]
    lines += [f"| {p} | {m} / {len(seeds)} | {o} / {len(seeds)} |"
              for p, (m, o) in recovered.items()]
    lines += ["", "## Artifact features per seed", "",
              "| seed | features flagged confounded_by (count) | features enriched for an artifact "
              "gene set |", "|---|---|---|"]
    lines += [f"| {n} | {c} | {a} |" for n, c, a in artifacts]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
