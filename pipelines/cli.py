"""The ``discovery`` command line (DESIGN.md contract). The CLI owns the console."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from discovery.io import layout
from discovery.io.contract import InputError

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
    g.add_argument("--donor-key", default=None,
                   help="donor column [donor]; 'none': no donors, every cell its own unit")
    g.add_argument("--cell-type-key", default=None,
                   help="cell-type column [cell_type]; 'none': one population of all cells")
    g.add_argument("--batch-key", default=None, help="batch column [batch, optional]")
    g.add_argument("--covariate-keys", default=None, help="comma-separated covariate columns")
    g.add_argument("--metadata", default=None, type=Path,
                   help="cell metadata CSV/TSV (first column: cell ids / barcodes) when DATA is "
                        "a counts table or a 10x .h5 file / matrix folder")
    g.add_argument("--genes-in-rows", action="store_true",
                   help="the counts table has genes in rows and cells in columns")


def _add_pretrained(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", type=Path, default=None, metavar="DIR",
                   help="use a pretrained gene-token BERT from this local directory (config.json, "
                        "model.safetensors, token_dictionary.json) as the encoder")
    p.add_argument("--fine-tune", action="store_true",
                   help="with --pretrained: train the encoder too (default: frozen encoder)")


PRESET_HELP = ("settings preset: standard (default), quick (smaller cohort and stages), "
               "pbmc68k (scanpy's PBMC data); `discovery config --example --preset P` lists them")
MODEL_HELP = "classifier architecture [mlp]"
DEVICE_HELP = "device for training [cpu]"
SEED_HELP = "seed of the split, the model and the SAEs [0]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discovery",
        description="Interpretable models of single-cell cohorts: features, attribution graphs, "
                    "hypotheses and experimental plans that show their reasoning.",
    )
    parser.add_argument("--version", action="version", version=f"discovery {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline (bundled Alzheimer's cohort without DATA)")
    p.add_argument("data", nargs="?", type=Path,
                   help=".h5ad (a CELLxGENE download as it is), a 10x Genomics .h5 file or "
                        "matrix folder with --metadata, or counts .csv/.tsv with --metadata")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--config", type=Path, help="YAML/JSON config file")
    p.add_argument("--preset", choices=["quick", "standard", "pbmc68k"], default=None,
                   help=PRESET_HELP)
    p.add_argument("--model", choices=["transformer", "mlp"], default=None, help=MODEL_HELP)
    _add_pretrained(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=None, help=SEED_HELP)
    p.add_argument("--gene-sets", action="append", type=Path, default=None, metavar="FILE.gmt",
                   help="your own gene-set collection (.gmt: MSigDB, GO, ...), tested for "
                        "enrichment beside the bundled sets; repeatable")
    g = p.add_argument_group(
        "every cell of an atlas (an .h5ad larger than the sketch, preprocess max_cells): the "
        "donor-level statistics stream over all of its cells")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (tcp://host:8786) whose workers "
                        "see the input file at the same path [a local cluster]")
    g.add_argument("--stream-engine", choices=["dask", "serial"], default=None,
                   help="dask: a local Dask cluster (or --dask-scheduler); serial: this process "
                        "only, chunk after chunk [dask]")
    g.add_argument("--stream-workers", type=int, default=None, metavar="N",
                   help="worker processes of the local Dask cluster [2]")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    _add_keys(p)

    p = sub.add_parser("train", help="train a classifier on held-out donors (no later stages)")
    p.add_argument("data", nargs="?", type=Path,
                   help=".h5ad (raw counts), or a run directory's adata.h5ad; default: bundled")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--model", choices=["transformer", "mlp"], default=None, help=MODEL_HELP)
    _add_pretrained(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help=DEVICE_HELP)
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs [the model's default: 40 for the MLP]")
    p.add_argument("--config", type=Path, help="YAML/JSON config file")
    p.add_argument("--preset", choices=["quick", "standard", "pbmc68k"], default=None,
                   help=PRESET_HELP)
    p.add_argument("--seed", type=int, default=None, help=SEED_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    _add_keys(p)

    p = sub.add_parser("simulate", help="write a simulated cohort with planted truth")
    p.add_argument("out", type=Path, help="output .h5ad")
    from discovery.io.simulate import SCENARIOS

    p.add_argument("--scenario", default="alzheimers",
                   help=f"{', '.join(SCENARIOS)} [alzheimers]")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw [0]")
    p.add_argument("--donors", type=int, default=48, help="donors, half of them cases [48]")
    p.add_argument("--cells-per-donor", type=int, default=200,
                   help="mean cells per donor (Poisson) [200]")
    p.add_argument("--genes", type=int, default=2000, help="genes [2000]")
    p.add_argument("--chunk-cells", type=int, default=None,
                   help="write the counts this many cells at a time (default: in one piece up "
                        "to 200,000 cells, in chunks of 50,000 above)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("benchmark", help="score ranking methods against planted truth")
    p.add_argument("--scenario", default="alzheimers,null,confounded",
                   help="comma-separated scenarios")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--methods", default=None, help="comma-separated methods [all registered]")
    p.add_argument("--donors", type=int, default=48, help="named scenarios: donors [48]")
    p.add_argument("--cells-per-donor", type=int, default=200,
                   help="named scenarios: mean cells per donor [200]")
    p.add_argument("--genes", type=int, default=2000, help="named scenarios: genes [2000]")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--suite", choices=["random"], default=None,
                   help="'random': scenarios drawn from wide priors (discovery/io/scenarios.py) "
                        "instead of the named ones; --n scenarios from --seed")
    p.add_argument("--n", type=int, default=30, help="scenarios in the random suite")
    p.add_argument("--seed", type=int, default=0, help="seed of the random suite")
    p.add_argument("--preset", default="quick",
                   help="pipeline preset of the discovery method in the random suite")
    p.add_argument("--csv", type=Path, default=None,
                   help="random suite: also write the per-program and per-run tables "
                        "(<csv>.programs.csv, <csv>.runs.csv)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("export", help="write a run's attribution graphs as graph files")
    p.add_argument("run_dir", type=Path, help="run directory (after the graphs stage)")
    p.add_argument("--format", default="graphml",
                   help="comma-separated: graphml, gexf, cyjs (Cytoscape.js), json (node-link)")
    p.add_argument("--graph", default=None,
                   help="comma-separated graph names (index.json 'slug') [all cohort graphs]")
    p.add_argument("--cells", action="store_true", help="export the example cell graphs too")
    p.add_argument("--out", type=Path, default=None, help="output folder [RUN_DIR/exports]")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("graph", help="build (and validate) the attribution graph of a population")
    p.add_argument("run_dir", type=Path, help="run directory (after the features stage)")
    p.add_argument("--cell-type", default=None, help="cell type [all cell types]")
    p.add_argument("--label", choices=["case", "control", "all"], default="case",
                   help="cells of this label [case]")
    p.add_argument("--split", choices=["train", "val", "test"], default=None,
                   help="cells of this donor split [all splits]")
    p.add_argument("--out", type=Path, required=True,
                   help="graph file (.json, .graphml, .gexf, .cyjs)")
    p.add_argument("--node-threshold", type=float, default=0.8,
                   help="keep the features that carry this share of the influence [0.8]")
    p.add_argument("--edge-threshold", type=float, default=0.98,
                   help="keep the edges that carry this share of the attribution [0.98]")
    p.add_argument("--no-validate", action="store_true", help="skip the ablation checks")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("app", help="start the Streamlit app on a run directory")
    p.add_argument("run_dir", nargs="?", type=Path, default=None,
                   help="run directory [the newest under --root]")
    p.add_argument("--root", type=Path, default=None, help="folder of run directories [runs]")
    p.add_argument("--port", type=int, default=8501, help="port to serve on [8501]")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on [127.0.0.1; 0.0.0.0 to share on a network]")

    p = sub.add_parser("feedback", help="record an expert's verdict on a feature or hypothesis")
    p.add_argument("run_dir", type=Path, help="run directory the verdict is about")
    p.add_argument("--target", required=True, help="feature (pooled:F12), hypothesis (H3) or plan")
    p.add_argument("--verdict", choices=["agree", "disagree"], required=True,
                   help="agree: the target is what the run says; disagree: it is not "
                        "(say why with --reason and --note)")
    p.add_argument("--reason", required=True,
                   help="technical_artifact (or: batch, artifact), confounder (the model "
                        "is changed by refine); known_biology, wrong_cell_type (or: "
                        "contamination), single_donor (or: donor), implausible_direction, other "
                        "(refine re-ranks, adds a check or excludes the donor)")
    p.add_argument("--note", default="", help="why, in words")
    p.add_argument("--by", default=None, help="your name [the login name]")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("refine", help="child run that acts on the feedback: no longer relies "
                                      "on rejected features, re-ranked, donors excluded")
    p.add_argument("run_dir", type=Path, help="parent run directory (with feedback)")
    p.add_argument("--out", type=Path, required=True, help="child run directory")
    p.add_argument("--mode", choices=["ablate", "finetune", "retrain"], default="ablate",
                   help="ablate: mean-ablate the features' directions in the head; finetune: "
                        "fine-tune with them projected out; retrain: retrain without the input "
                        "genes that carry the artifact (a QC metric such as pct_counts_mt: "
                        "renormalise without its gene group and withhold the group). Without "
                        "artifact feedback the model is kept and only the other reasons act "
                        "(mode rerank)")
    p.add_argument("--covariate", default=None,
                   help="obs column that explains the artifact (default: what the marked "
                        "features are annotated as confounded by, else the batch key)")
    p.add_argument("--only-named", action="store_true",
                   help="retrain: act on the named covariate only (default: also on every other "
                        "technical covariate — mitochondrial or ribosomal fraction, sequencing "
                        "depth — that differs between cases and controls at donor level)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("--background", action="store_true",
                   help="start the refine as a background job (its own process and log, "
                        "OUT/job.log) and return at once; follow it with `discovery job OUT`")

    p = sub.add_parser("job", help="progress of a background job (refine --background), or "
                                   "cancel it")
    p.add_argument("run_dir", type=Path, help="the job's run directory (refine's --out)")
    p.add_argument("--cancel", action="store_true",
                   help="stop the job and remove its half-written run (job file and log kept "
                        "beside it as RUN_DIR.cancelled.json / .log)")

    p = sub.add_parser("report", help="write report.html (self-contained) and report.md")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("batch", help="run many cohorts / configurations from a batch file")
    p.add_argument("batch_file", type=Path, help="YAML/JSON: out, defaults, runs (name, "
                   "scenario | data, seed, keys, config)")
    p.add_argument("--out", type=Path, default=None, help="root folder [the file's 'out']")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("config", help="print or write the configuration: every key, its value "
                                      "and what it does")
    p.add_argument("--example", action="store_true",
                   help="a commented YAML of every key with its value under --preset")
    p.add_argument("--preset", choices=["quick", "standard", "pbmc68k"], default="standard",
                   help="the preset whose values are written [standard]")
    p.add_argument("--out", type=Path, default=None, help="write the file here [stdout]")

    p = sub.add_parser("perturb", help="in-silico gene perturbation against random-gene nulls")
    p.add_argument("run_dir", type=Path, help="run directory (after the model stage)")
    p.add_argument("--genes", required=True, help="comma-separated gene symbols")
    p.add_argument("--mode", choices=["down", "up", "delete"], default="down",
                   help="lower the genes' counts, raise them, or set them to zero [down]")
    p.add_argument("--factor", type=float, default=None,
                   help="count multiplier [0.25 for down, 4 for up]")
    p.add_argument("--cell-type", default=None, help="population cell type [all]")
    p.add_argument("--label", choices=["case", "control", "all"], default="case",
                   help="population label [case]")
    p.add_argument("--n-null", type=int, default=50,
                   help="random gene sets of the same size and expression for the null [50]")
    p.add_argument("--out", type=Path, default=None, help="write the table as CSV here")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser


def _version() -> str:
    from discovery import __version__

    return __version__


# ------------------------------------------------------------------------------------ commands
def cmd_config(args: argparse.Namespace) -> int:
    from pipelines.config import example_config

    if not args.example:
        msg = "say what to write: `discovery config --example [--preset P] [--out FILE]`"
        raise InputError(msg)
    text = example_config(args.preset)
    if args.out is None:
        sys.stdout.write(text)
    else:
        from discovery.io.files import write_text

        write_text(args.out, text)
        console.print(f"written {args.out}")
    return 0


def _config_from_args(args: argparse.Namespace):  # noqa: ANN202
    from pipelines.config import load_config
    from pipelines.run import keys_from_args

    keys = keys_from_args(**vars(args))
    overrides: dict = {"keys": keys} if keys else {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if getattr(args, "gene_sets", None):
        overrides["gene_sets"] = [str(p) for p in args.gene_sets]
    model: dict = {}
    if getattr(args, "model", None):
        model["kind"] = args.model
    if getattr(args, "pretrained", None):
        model["kind"] = "pretrained"
        model["arch"] = {"checkpoint": str(args.pretrained), "freeze": not args.fine_tune}
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


def _follower_rank(args: argparse.Namespace, config) -> bool:  # noqa: ANN001
    """Under torchrun, ranks > 0 only help train the model (into a scratch folder) and stop;
    rank 0 writes the run directory. Returns whether this process was such a follower."""
    from models.training import distributed_context
    from pipelines.run import run_pipeline

    _, rank = distributed_context()
    if rank == 0:
        return False
    with tempfile.TemporaryDirectory(prefix=f"discovery-rank{rank}-") as tmp:
        run_pipeline(Path(tmp) / "run", data=args.data, metadata=args.metadata, config=config,
                     genes_in_rows=args.genes_in_rows, quiet=True, stop_after="model")
    return True


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    config = _config_from_args(args)
    if _follower_rank(args, config):
        return 0
    t0 = time.perf_counter()
    stream = {k: v for k, v in (("scheduler", args.dask_scheduler),
                                ("engine", args.stream_engine),
                                ("workers", args.stream_workers)) if v is not None}
    if stream.get("workers", 1) < 1:
        raise InputError(f"--stream-workers must be at least 1, got {stream['workers']}")
    res = run_pipeline(args.out, data=args.data, metadata=args.metadata, config=config,
                       genes_in_rows=args.genes_in_rows, quiet=args.quiet, stream=stream)
    if not args.quiet:
        _print_run_summary(res)
        _print_model_summary(res.metrics)
        console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    config = _config_from_args(args)
    config.baselines = ()
    if _follower_rank(args, config):
        return 0
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
    from discovery.io.files import atomic_write
    from discovery.io.simulate import chunk_size, simulate, write_simulated

    t0 = time.perf_counter()
    kw = {"seed": args.seed, "n_donors": args.donors, "cells_per_donor": args.cells_per_donor,
          "n_genes": args.genes}
    chunk = chunk_size(args.donors * args.cells_per_donor, args.chunk_cells)
    if chunk:
        shape: list[tuple[int, int]] = []
        atomic_write(args.out, lambda p: shape.append(
            write_simulated(p, args.scenario, chunk_cells=chunk, **kw)))
        (n_cells, n_genes), = shape
    else:
        adata = simulate(args.scenario, **kw)
        atomic_write(args.out, lambda p: adata.write_h5ad(p, compression="gzip"))
        n_cells, n_genes = adata.shape
    if not args.quiet:
        console.print(f"simulated [bold]{args.scenario}[/] (seed {args.seed}): "
                      f"{n_cells} cells x {n_genes} genes, {args.donors} donors in "
                      f"{time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from discovery.io.files import write_text
    from pipelines.benchmark import METHODS, run_benchmark, to_markdown

    methods = ([m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS))
    if args.suite == "random":
        return _random_suite(args, methods)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = run_benchmark(scenarios, seeds, methods, n_donors=args.donors,
                           cells_per_donor=args.cells_per_donor, n_genes=args.genes,
                           quiet=args.quiet)
    _print_frame(result.summary(), "benchmark summary (mean over seeds)")
    if args.out:
        write_text(args.out, to_markdown(result, command=_command_line()))
        console.print(f"written {args.out}")
    return 0


def _print_frame(df, title: str) -> None:  # noqa: ANN001 - a pandas DataFrame
    """A table as a rich table, floats to 3 decimals."""
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col))
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)


def _command_line() -> str:
    """The command as typed, for the reports a benchmark writes."""
    return "discovery " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _random_suite(args: argparse.Namespace, methods: list[str]) -> int:
    from discovery.io.files import atomic_write, write_text
    from pipelines.benchmark import run_suite, suite_markdown, suite_tables

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    result = run_suite(args.n, args.seed, methods, preset=args.preset, quiet=args.quiet)
    _print_frame(suite_tables(result)["overall"],
                 f"random suite: {args.n} scenarios (seed {args.seed})")
    if args.csv:
        atomic_write(f"{args.csv}.programs.csv",
                     lambda p: result.programs.to_csv(p, index=False))
        atomic_write(f"{args.csv}.runs.csv", lambda p: result.runs.to_csv(p, index=False))
    if args.out:
        write_text(args.out, suite_markdown(result, command=_command_line()))
        console.print(f"written {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from discovery.get.run import annotate_plans, graph_files, graph_index, plans_by_graph
    from discovery.io.graph_files import FORMATS, export_graph, load_graph

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    slugs = [g.strip() for g in args.graph.split(",")] if args.graph else None
    # the default folder is the run's own: a symlink there that leads out is refused
    out = args.out or layout.inside_run(args.run_dir, "exports")
    written = []
    cohort = set(slugs) if slugs else {e["slug"] for e in graph_index(args.run_dir)["graphs"]}
    plans = plans_by_graph(args.run_dir)
    for name, src in graph_files(args.run_dir, slugs, cells=args.cells):
        g = load_graph(src)
        if name in cohort and plans:  # where plans rest: graph-level list, node attributes
            annotate_plans(g, plans.get(name, []))
        for fmt in formats:
            written.append(export_graph(g, out / f"{name}{FORMATS[fmt]}", fmt))
    if not args.quiet:
        console.print(f"wrote {len(written)} file(s) to {out}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from discovery.get.run import open_run
    from discovery.io.graph_files import export_graph
    from discovery.tl.graphs import GraphSpec, cohort_graph, population_mask
    from discovery.tl.interventions import validate_graph

    run = open_run(args.run_dir)
    mask = population_mask(run.adata, cell_type=args.cell_type, label=args.label,
                           split=getattr(args, "split", None))
    name = f"{args.cell_type or 'all cell types'}, {args.label} cells"
    spec = GraphSpec(node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    g = cohort_graph(run.adata, run.model, run.saes, mask=mask, name=name, labels=run.labels,
                     spec=spec)
    if not args.no_validate:
        val = validate_graph(run.adata, run.model, run.saes, graph=g, mask=mask)
        g.graph["validation"] = {k: v for k, v in val.items() if k != "ablation"}
        g.graph["validation"]["spearman_model"] = val["ablation"]["model"]["spearman"]
    export_graph(g, args.out)
    if not args.quiet:
        console.print(f"{name}: {g.graph['n_cells']} cells, {g.graph['n_donors']} donors, "
                      f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges; replacement "
                      f"{g.graph['replacement_score']:.3f}, completeness "
                      f"{g.graph['completeness_score']:.3f} -> {args.out}")
    return 0


def cmd_perturb(args: argparse.Namespace) -> int:
    from discovery.get.run import open_run
    from discovery.io.files import atomic_write
    from discovery.tl.graphs import population_mask
    from discovery.tl.interventions import perturb_genes

    run = open_run(args.run_dir, need_features=False)
    mask = population_mask(run.adata, cell_type=args.cell_type, label=args.label,
                           split=getattr(args, "split", None))
    genes = [g.strip() for g in args.genes.split(",") if g.strip()]
    table = perturb_genes(run.adata, run.model, genes, mode=args.mode, factor=args.factor,
                          mask=mask, n_null=args.n_null)
    if args.out:
        atomic_write(args.out, lambda p: table.to_csv(p, index=False))
    out = Table(title=f"in-silico {args.mode}: change of the case logit "
                      f"({args.cell_type or 'all cell types'}, {args.label} cells)")
    for col in ("gene", "effect", "n_cells", "n_donors", "null_mean", "z", "p", "q"):
        out.add_column(col)
    for row in table.itertuples(index=False):
        out.add_row(row.gene, f"{row.effect:+.3f}", str(row.n_cells), str(row.n_donors),
                    f"{row.null_mean:+.3f}", f"{row.z:.2f}", f"{row.p:.3g}", f"{row.q:.3g}")
    Console().print(out)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    from pipelines.config import max_upload_mb

    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise InputError(f"app.py not found next to the package ({app}); run from a checkout")
    env = dict(os.environ)
    if args.run_dir is not None:
        if not (args.run_dir / layout.MANIFEST).is_file():
            raise InputError(f"{args.run_dir} is not a run directory (no manifest.json); create "
                             "one with `discovery run --out RUN_DIR`")
        env["DISCOVERY_RUN"] = str(args.run_dir.resolve())
    if args.root is not None:
        env["DISCOVERY_RUNS_ROOT"] = str(args.root.resolve())
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.address, "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
           # no file watcher: it would watch runs/ and the virtualenv (inotify overflow) for
           # edits a user of the app never makes
           "--server.fileWatcherType", "none",
           # the browser refuses bigger files before they travel; the page checks again
           "--server.maxUploadSize", str(max(1, int(max_upload_mb())))]
    console.print(f"discovery app on http://{args.address}:{args.port}  (Ctrl+C to stop)")
    return subprocess.call(cmd, env=env)


def cmd_feedback(args: argparse.Namespace) -> int:
    from discovery.get.run import read_json
    from discovery.io.feedback import (
        FeedbackItem,
        FeedbackStore,
        check_target,
        default_url,
        resolve_reason,
    )

    if not (args.run_dir / layout.MANIFEST).is_file():
        raise InputError(f"{args.run_dir} is not a run directory (no {layout.MANIFEST})")
    run_id = read_json(args.run_dir, layout.MANIFEST, what="the manifest", stage="input")["run_id"]
    target = args.target.strip()
    kind = check_target(args.run_dir, target)
    reason = resolve_reason(args.reason)
    note = args.note or (f"reason given as {args.reason!r}" if reason != args.reason else "")
    store = FeedbackStore(default_url(args.run_dir))
    fid = store.add(FeedbackItem(run_id, kind, target, args.verdict, reason, args.by or "",
                                 note=note, client="cli"))
    if not args.quiet:
        console.print(f"feedback #{fid}: {args.verdict} on {kind} {target} ({reason})")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from pipelines.jobs import cancel, job_state, progress

    if job_state(args.run_dir) is None:
        raise InputError(f"{args.run_dir} holds no background job (no job.json); jobs are "
                         "started with `discovery refine PARENT --out CHILD --background`")
    if args.cancel:
        stopped = cancel(args.run_dir)
        console.print(f"job in {args.run_dir}: " + ("cancelled; its half-written run removed"
                                                     if stopped else "not running"))
        return 0
    pr = progress(args.run_dir)
    console.print(f"job in {args.run_dir}: [bold]{pr['state']}[/] · "
                  f"{pr['fraction']:.0%} of stages done · {pr['elapsed']:.0f} s elapsed"
                  + (f" · about {pr['seconds_left']:.0f} s left" if pr["state"] == "running"
                     else ""))
    for r in pr["stages"]:
        console.print(f"  {r['stage']:<11} {r['status']:<8} "
                      + ("" if r["seconds"] is None else f"{r['seconds']:.1f} s"))
    if pr["state"] == "failed":
        console.print("last lines of its log:\n" + "\n".join(pr["log_tail"]))
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from pipelines.child_run import comparison_rows, refine_run

    if args.background:
        from pipelines.jobs import start_refine

        job = start_refine(args.run_dir, args.out, mode=args.mode, covariate=args.covariate,
                           only_named=args.only_named)
        console.print(f"refine started in the background (process {job['pid']}); log "
                      f"{args.out / 'job.log'}; follow it with `discovery job {args.out}`, "
                      f"stop it with `discovery job {args.out} --cancel`")
        return 0

    res = refine_run(args.run_dir, args.out, mode=args.mode, covariate=args.covariate,
                     also_aligned=not args.only_named, quiet=args.quiet)
    table = Table(title=f"refine ({res['mode']}): {', '.join(res['suppressed'])} suppressed")
    for col in ("", "before", "after"):
        table.add_column(col)
    for row in comparison_rows(res):
        table.add_row(row["measure"], *[f"{v:.3f}" if isinstance(v, float) else str(v)
                                        for v in (row["before"], row["after"])])
    Console().print(table)
    if res["proposed_similar"]:
        console.print("similar features to review: " + ", ".join(
            p["feature"] for p in res["proposed_similar"][:10]))
    for line in res.get("also_acted_on", []):
        console.print(f"also corrected: {line}")
    for e in res.get("expert_feedback", []):
        console.print(f"feedback #{e['feedback']} ({e['reason']}): {e['effect']}")
    for w in res.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import write_report

    paths = write_report(args.run_dir)
    if not args.quiet:
        console.print("wrote " + ", ".join(str(args.run_dir / p) for p in paths))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from pipelines.batch import run_batch

    records = run_batch(args.batch_file, out=args.out, quiet=args.quiet)
    table = Table(title=f"batch {args.batch_file}")
    for col in ("run", "status", "seconds", "result"):
        table.add_column(col)
    for r in records:
        result = (f"{r['n_hypotheses']} hypotheses, {r['n_supported']} supported"
                  if r["status"] == "done" else r["error"])
        table.add_row(r["name"], r["status"], str(r["seconds"]), result)
    Console().print(table)
    return 0 if all(r["status"] == "done" for r in records) else 1


COMMANDS = {"run": cmd_run, "train": cmd_train, "simulate": cmd_simulate,
            "benchmark": cmd_benchmark, "export": cmd_export, "graph": cmd_graph,
            "perturb": cmd_perturb, "report": cmd_report, "batch": cmd_batch,
            "app": cmd_app, "feedback": cmd_feedback, "refine": cmd_refine, "job": cmd_job,
            "config": cmd_config}


def _init_distributed(args: argparse.Namespace) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL for
    ``--device cuda``, Gloo on CPU. Only ``run`` and ``train`` train under it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if args.command not in ("run", "train"):
        msg = (f"`discovery {args.command}` does not run distributed; launch it without "
               "torchrun (only `run` and `train` train the model across processes)")
        raise InputError(msg)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if getattr(args, "device", None) == "cuda" else "gloo")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    distributed = False
    try:
        distributed = _init_distributed(args)
        return COMMANDS[args.command](args)
    except InputError as err:  # the input breaks the contract: one line that names the fix
        console.print(f"[bold red]error:[/] {err}")
        return 2
    except FileNotFoundError as err:
        console.print(f"[bold red]error:[/] {err.filename or err}: no such file or folder")
        return 2
    except OSError as err:  # permissions, a full disk: the machine, not discovery
        console.print(f"[bold red]error:[/] {err.strerror or err}"
                      + (f": {err.filename}" if err.filename else "")
                      + " (a problem with the file system; finished stages are kept)")
        return 2
    except Exception:  # noqa: BLE001 - a bug: the traceback and where to report it
        console.print_exception(max_frames=20)
        console.print(
            f"[bold red]internal error[/] in `discovery {args.command}`: this is a bug in "
            "discovery, not a problem with your input. Please report it with the command line "
            "and the traceback above (README, 'Reporting problems'); the run directory keeps "
            "every finished stage, so rerunning after a fix resumes where it stopped.")
        return 1
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
