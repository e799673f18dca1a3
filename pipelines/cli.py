"""The ``discovery`` command line (DESIGN.md contract). The CLI owns the console."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from discovery.contract import InputError

console = Console(stderr=True)
log = logging.getLogger("discovery.cli")


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", force=True,
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    for noisy in ("anndata", "scanpy", "numba", "h5py", "matplotlib", "fontTools", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        warnings.filterwarnings("ignore")


def _add_keys(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input contract (obs column names)")
    g.add_argument("--label-key", default=None, help="label column [diagnosis]")
    g.add_argument("--case", default=None,
                   help="case value of the label (required with more than two values)")
    g.add_argument("--donor-key", default=None, help="donor column [donor]")
    g.add_argument("--cell-type-key", default=None, help="cell-type column [cell_type]")
    g.add_argument("--batch-key", default=None, help="batch column [batch, optional]")
    g.add_argument("--covariate-keys", default=None, help="comma-separated covariate columns")
    g.add_argument("--metadata", default=None, type=Path,
                   help="cell metadata CSV/TSV when DATA is a counts table")
    g.add_argument("--genes-in-rows", action="store_true",
                   help="the counts table has genes in rows and cells in columns")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discovery",
        description="Interpretable models of single-cell cohorts: features, attribution graphs, "
                    "hypotheses and experimental plans that show their reasoning.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline (bundled Alzheimer's cohort without DATA)")
    p.add_argument("data", nargs="?", type=Path, help=".h5ad, or counts .csv/.tsv with --metadata")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--config", type=Path, help="YAML/JSON config file")
    p.add_argument("--preset", choices=["quick", "standard"], default=None)
    p.add_argument("--model", choices=["transformer", "mlp"], default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    _add_keys(p)

    p = sub.add_parser("train", help="train a classifier on held-out donors (no later stages)")
    p.add_argument("data", nargs="?", type=Path,
                   help=".h5ad (raw counts), or a run directory's adata.h5ad; default: bundled")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--model", choices=["transformer", "mlp"], default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--config", type=Path, help="YAML/JSON config file")
    p.add_argument("--preset", choices=["quick", "standard"], default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    _add_keys(p)

    p = sub.add_parser("simulate", help="write a simulated cohort with planted truth")
    p.add_argument("out", type=Path, help="output .h5ad")
    p.add_argument("--scenario", default="alzheimers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--donors", type=int, default=48)
    p.add_argument("--cells-per-donor", type=int, default=200)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("benchmark", help="score ranking methods against planted truth")
    p.add_argument("--scenario", default="alzheimers,null,confounded",
                   help="comma-separated scenarios")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--methods", default=None, help="comma-separated methods [all registered]")
    p.add_argument("--donors", type=int, default=48)
    p.add_argument("--cells-per-donor", type=int, default=200)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--quiet", action="store_true")
    return parser


# ------------------------------------------------------------------------------------ commands
def _config_from_args(args: argparse.Namespace):  # noqa: ANN202
    from pipelines.config import load_config
    from pipelines.run import keys_from_args

    overrides: dict = {"keys": keys_from_args(**vars(args)).to_dict()}
    if args.seed is not None:
        overrides["seed"] = args.seed
    model: dict = {}
    if getattr(args, "model", None):
        model["kind"] = args.model
    train: dict = {}
    if getattr(args, "device", None):
        train["device"] = args.device
    if getattr(args, "epochs", None):
        train["epochs"] = args.epochs
    if train:
        model["train"] = train
    if model:
        overrides["model"] = model
    return load_config(args.config, preset=args.preset, overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    config = _config_from_args(args)
    t0 = time.perf_counter()
    res = run_pipeline(args.out, data=args.data, metadata=args.metadata, config=config,
                       genes_in_rows=args.genes_in_rows, quiet=args.quiet)
    if not args.quiet:
        _print_run_summary(res)
        _print_model_summary(res.metrics)
        console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    config = _config_from_args(args)
    config.baselines = ()
    res = run_pipeline(args.out, data=args.data, metadata=args.metadata, config=config,
                       genes_in_rows=args.genes_in_rows, quiet=args.quiet, stop_after="model")
    if not args.quiet:
        _print_model_summary(res.metrics)
    return 0


def _print_model_summary(metrics: dict | None) -> None:
    if not metrics:
        return
    table = Table(title=f"{metrics.get('kind', 'model')}: held-out donors")
    for col in ("split", "donors", "cell AUROC", "donor AUROC", "accuracy", "ECE"):
        table.add_column(col)
    for split in ("val", "test"):
        m = metrics[split]
        table.add_row(split, str(m["n_donors"]), f"{m['cell_auroc']:.3f}",
                      f"{m['donor_auroc']:.3f}", f"{m['accuracy']:.3f}", f"{m['ece']:.3f}")
    console.print(table)
    probe = metrics.get("shortcut_probe", {})
    for col, entry in probe.items():
        if isinstance(entry, dict) and entry.get("kind") == "batch":
            accs = [f"{g}: {entry[g]['balanced_accuracy']:.2f}" for g in ("case", "control")
                    if entry.get(g)]
            console.print(f"shortcut probe, pooled -> {col} (balanced accuracy within label; "
                          f"chance 0.5): {', '.join(accs)}")


def _print_run_summary(res) -> None:  # noqa: ANN001
    if res.yardstick is None:
        return
    table = Table(title="baselines vs planted truth (this cohort)")
    for col in ("method", "program", "precision@10", "AUPRC", "artifact FD"):
        table.add_column(col)
    for row in res.yardstick.itertuples(index=False):
        table.add_row(row.method, str(row.program), f"{row.precision_at_k:.2f}",
                      f"{row.auprc:.2f}", str(row.artifact_fd))
    console.print(table)


def cmd_simulate(args: argparse.Namespace) -> int:
    from discovery.simulate import simulate
    from pipelines.rundir import atomic_write

    t0 = time.perf_counter()
    adata = simulate(args.scenario, seed=args.seed, n_donors=args.donors,
                     cells_per_donor=args.cells_per_donor, n_genes=args.genes)
    atomic_write(args.out, lambda p: adata.write_h5ad(p, compression="gzip"))
    if not args.quiet:
        console.print(f"simulated [bold]{args.scenario}[/] (seed {args.seed}): "
                      f"{adata.n_obs} cells x {adata.n_vars} genes, "
                      f"{adata.obs['donor'].nunique()} donors in "
                      f"{time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pipelines.benchmark import METHODS, run_benchmark, to_markdown
    from pipelines.rundir import write_text

    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = ([m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS))
    result = run_benchmark(scenarios, seeds, methods, n_donors=args.donors,
                           cells_per_donor=args.cells_per_donor, n_genes=args.genes,
                           quiet=args.quiet)
    summary = result.summary()
    table = Table(title="benchmark summary (mean over seeds)")
    for col in summary.columns:
        table.add_column(str(col))
    for row in summary.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
    if args.out:
        command = "discovery " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_text(args.out, to_markdown(result, command=command))
        console.print(f"written {args.out}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "simulate": cmd_simulate,
            "benchmark": cmd_benchmark}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2
    except (ValueError, FileNotFoundError, KeyError) as err:
        # raised by our own argument checks (unknown scenario, method, ...): no traceback
        console.print(f"[bold red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
