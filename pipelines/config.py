"""Pipeline configuration: one dataclass per section, presets, and loading from YAML/JSON."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from discovery.io.contract import InputError, Keys
from discovery.pp.preprocess import PreprocessConfig
from discovery.tl.features import SAESpec
from models.configs import check_known
from models.training import TrainConfig

__all__ = ["PRESETS", "CohortConfig", "PipelineConfig", "example_config", "load_config"]


@dataclass
class CohortConfig:
    """The bundled cohort, simulated when no data file is given."""

    scenario: str = "alzheimers"
    seed: int = 0
    n_donors: int = 48
    cells_per_donor: int = 200
    n_genes: int = 2000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelConfig:
    """The classifier: architecture name, its sizes (HF config), and training settings.

    Empty ``arch`` / ``train`` mean the defaults of :data:`discovery.tl.classifier.DEFAULT_ARCH` and
    :data:`discovery.tl.classifier.DEFAULT_TRAIN` for that architecture.
    """

    #: the MLP is the default: on the bundled cohort it trains about 15x faster than the
    #: transformer (13 s vs 202 s, both with their default balance) at a test donor AUROC of
    #: 0.97 (transformer 1.00), and its representation is rich enough for the sparse
    #: autoencoders to separate the planted programs (benchmarks/results/training.md,
    #: features.md)
    kind: str = "mlp"
    arch: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from models import CLASSIFIERS

        if self.kind not in CLASSIFIERS:
            msg = f"unknown model {self.kind!r}; choose one of {', '.join(CLASSIFIERS)}"
            raise InputError(msg)
        try:
            self.train_config()
        except ValueError as err:
            raise InputError(str(err)) from err
        if self.kind == "pretrained" and not self.arch.get("checkpoint"):
            msg = ("model kind 'pretrained' needs model.arch.checkpoint: a local Hugging Face "
                   "directory with config.json, model.safetensors and token_dictionary.json "
                   "(CLI: --pretrained DIR)")
            raise InputError(msg)

    def train_config(self) -> TrainConfig:
        from discovery.tl.classifier import DEFAULT_TRAIN

        return TrainConfig.from_dict({**DEFAULT_TRAIN[self.kind], **self.train})

    def resolved_arch(self) -> dict[str, Any]:
        from discovery.tl.classifier import DEFAULT_ARCH

        return {**DEFAULT_ARCH[self.kind], **self.arch}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": dict(self.arch), "train": dict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_known(d, ("kind", "arch", "train"), "model settings", error=InputError)
        return cls(**d)


@dataclass
class PipelineConfig:
    """Everything ``discovery run`` needs; the manifest records its resolved form."""

    preset: str = "standard"
    seed: int = 0
    keys: Keys = field(default_factory=Keys)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    baselines: tuple[str, ...] = ("wilcoxon", "pseudobulk", "logreg_l1")
    model: ModelConfig = field(default_factory=lambda: ModelConfig())
    features: SAESpec = field(default_factory=SAESpec)
    #: cohort graphs: GraphSpec settings (node_threshold, edge_threshold, n_boot, batch_size,
    #: seed) plus n_top (features checked by ablation), cell_graphs (example cell graphs per
    #: population) and min_cells (smallest population that gets a graph)
    graphs: dict[str, Any] = field(default_factory=dict)
    #: hypothesis generation: discovery.tl.hypotheses.HypothesisSpec settings
    hypotheses: dict[str, Any] = field(default_factory=dict)
    #: your own gene-set collections (.gmt files: MSigDB, GO, ...), tested for enrichment beside
    #: the bundled cited sets; a relative path is read from the working directory
    gene_sets: tuple[str, ...] = ()

    def user_gene_sets(self) -> list[Any]:
        """The sets of :attr:`gene_sets` (``discovery.io.GeneSet``, category ``user``)."""
        from discovery.io.bundled import read_gmt

        return [gs for path in self.gene_sets for gs in read_gmt(path)]

    def hypothesis_spec(self):  # noqa: ANN201 - discovery.tl.hypotheses.HypothesisSpec
        from discovery.tl.hypotheses import HypothesisSpec

        check_known(self.hypotheses, HypothesisSpec.__dataclass_fields__, "hypotheses settings",
                    error=InputError)
        return HypothesisSpec(**self.hypotheses)

    def graph_settings(self) -> tuple[Any, dict[str, int]]:
        """(discovery.tl.graphs.GraphSpec, {"n_top", "cell_graphs", "min_cells"})."""
        from discovery.tl.graphs import GraphSpec

        extra = {"n_top": 50, "cell_graphs": 1, "min_cells": 20}
        check_known(self.graphs, [*GraphSpec.__dataclass_fields__, *extra], "graphs settings",
                    error=InputError)
        kw = {k: v for k, v in self.graphs.items() if k not in extra}
        try:
            spec = GraphSpec(**kw)
        except (TypeError, ValueError) as err:
            raise InputError(f"graphs settings: {err}") from err
        return spec, {k: int(self.graphs.get(k, v)) for k, v in extra.items()}

    def sae_spec(self) -> SAESpec:
        """The SAE settings (typed; see :class:`discovery.tl.features.SAESpec`)."""
        return self.features

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            self.features = SAESpec.from_dict(self.features)
        self.graph_settings()
        self.hypothesis_spec()
        if self.preset not in PRESETS:
            msg = f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
            raise InputError(msg)
        self.baselines = tuple(self.baselines)
        if isinstance(self.gene_sets, str):
            self.gene_sets = (self.gene_sets,)
        self.gene_sets = tuple(str(Path(p).expanduser().resolve()) for p in self.gene_sets)
        self.user_gene_sets()  # a bad file is refused before any stage runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "seed": self.seed,
            "keys": self.keys.to_dict(),
            "cohort": self.cohort.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "baselines": list(self.baselines),
            "model": self.model.to_dict(),
            "features": self.features.to_dict(),
            "graphs": dict(self.graphs),
            "hypotheses": dict(self.hypotheses),
            # only when set: the config hash (and so the run id) of a run without user gene
            # sets stays what it was before the key existed
            **({"gene_sets": list(self.gene_sets)} if self.gene_sets else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        check_known(d, (f.name for f in fields(cls)), "config sections", error=InputError)
        kw: dict[str, Any] = {k: v for k, v in d.items()
                              if k in ("preset", "seed", "baselines", "graphs", "hypotheses",
                                       "gene_sets")}
        if "features" in d:
            kw["features"] = SAESpec.from_dict(d["features"])
        if "keys" in d:
            kw["keys"] = Keys.from_dict(d["keys"])
        if "model" in d:
            kw["model"] = ModelConfig.from_dict(d["model"])
        for name, klass in (("cohort", CohortConfig), ("preprocess", PreprocessConfig)):
            if name in d:
                check_known(d[name], (f.name for f in fields(klass)), f"{name} settings",
                            error=InputError)
                kw[name] = klass(**d[name])
        return cls(**kw)


#: preset name -> overrides applied on top of the defaults
PRESETS: dict[str, dict[str, Any]] = {
    "standard": {},
    # the real PBMC dataset shipped with scanpy (discovery.io.datasets): log-normalised input, no
    # donors (every cell its own unit), one population; pick the class with --case
    "pbmc68k": {
        "cohort": {"scenario": "pbmc68k_reduced"},
        "keys": {"label_key": "bulk_labels", "donor_key": None, "cell_type_key": None,
                 "batch_key": None},
        "preprocess": {"input": "lognorm", "n_top_genes": 765},
        "baselines": ["wilcoxon", "logreg_l1"],
    },
    "quick": {
        "cohort": {"n_donors": 24, "cells_per_donor": 120, "n_genes": 1000},
        "preprocess": {"n_top_genes": 600, "max_cells": 50_000},
        "model": {"kind": "mlp", "train": {"epochs": 15}},
        "features": {"seeds": [0, 1], "train": {"epochs": 15, "lr": 2e-3, "batch_size": 128}},
        "graphs": {"n_boot": 50, "n_top": 30},
    },
}


def merge_overrides(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` applied: nested mappings merged key by key, other values replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (merge_overrides(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else v)
    return out


def load_config(
    path: str | Path | None = None, *, preset: str | None = None, overrides: dict | None = None
) -> PipelineConfig:
    """Defaults, then the preset, then the config file, then explicit overrides (CLI flags)."""
    user: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            msg = f"config file not found: {p}"
            raise InputError(msg)
        text = p.read_text()
        try:
            user = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            msg = f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {err}"
            raise InputError(msg) from err
        user = user or {}
        if not isinstance(user, dict):
            msg = f"config file {p} must hold a mapping of sections, got {type(user).__name__}"
            raise InputError(msg)
    chosen = preset or user.get("preset") or "standard"
    if chosen not in PRESETS:
        msg = f"unknown preset {chosen!r}; choose one of {', '.join(PRESETS)}"
        raise InputError(msg)
    merged = merge_overrides(PipelineConfig().to_dict(), PRESETS[chosen])
    merged = merge_overrides(merged, user)
    merged = merge_overrides(merged, overrides or {})
    merged["preset"] = chosen
    return PipelineConfig.from_dict(merged)


#: the largest cohort file the app accepts, in MB (override with DISCOVERY_MAX_UPLOAD_MB);
#: bigger cohorts run from the command line, which streams nothing through a browser
UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB = "DISCOVERY_MAX_UPLOAD_MB", 1024.0


def max_upload_mb() -> float:
    """The app's upload limit in MB (``DISCOVERY_MAX_UPLOAD_MB``, default 1024)."""
    import os

    return float(os.environ.get(UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB))


# ------------------------------------------------------------------------------ example config
def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comments written above a dataclass's fields (and a trailing ``# ...`` on the
    field's line), read from its source: field name -> comment text."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"^\s{4}(\w+)\s*:\s*[^=]+(?:=.*)?$", line)
        if m and not stripped.startswith(("def ", "return", "@")):
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            text = " ".join([*pending, trailing]).strip()
            if text:
                out[m.group(1)] = text
        pending = []
    return out


def _section_sources() -> dict[str, tuple[type, ...]]:
    from discovery.tl.graphs import GraphSpec
    from discovery.tl.hypotheses import HypothesisSpec
    from models.sae_training import SAETrainConfig

    return {"keys": (Keys,), "cohort": (CohortConfig,), "preprocess": (PreprocessConfig,),
            "model": (ModelConfig,), "features": (SAESpec, SAETrainConfig),
            "graphs": (GraphSpec,), "hypotheses": (HypothesisSpec,)}


def example_config(preset: str = "standard") -> str:
    """Every config key with its value under ``preset`` (the defaults for ``standard``), as a
    commented YAML file that :func:`load_config` reads back to the same settings.

    Sections that default to empty mappings (``graphs``, ``hypotheses``, ``model.arch``,
    ``model.train``) are written out in full, so every key a user can set is on the page.
    """
    from discovery.tl.hypotheses import HypothesisSpec

    cfg = load_config(preset=preset)
    d = cfg.to_dict()
    d.pop("preset")
    d["keys"].pop("controls")  # filled in by validation, not a setting
    spec, extra = cfg.graph_settings()
    d["graphs"] = {**asdict(spec), **extra}
    d["hypotheses"] = asdict(HypothesisSpec(**cfg.hypotheses))
    d["model"]["arch"] = cfg.model.resolved_arch()
    d["model"]["train"] = cfg.model.train_config().to_dict()
    extra_doc = {"graphs": {"n_top": "features checked by ablation in each cohort graph",
                            "cell_graphs": "example cell graphs per population",
                            "min_cells": "smallest population that gets a graph"},
                 "model": {"arch": "architecture sizes (Hugging Face config keys)",
                           "train": "training settings (models.training.TrainConfig)"},
                 "features": {"train": "SAE training (models.sae_training.SAETrainConfig)"}}
    sources = _section_sources()
    lines = [f"# discovery config: every key and its value under preset {preset!r}.",
             "# Use with `discovery run --config FILE`; keys you leave out keep these values.",
             "# Order of precedence: defaults < --preset < this file < command-line flags.",
             f"preset: {preset}", f"seed: {d.pop('seed')}",
             f"baselines: {json.dumps(d.pop('baselines'))}  # gene-ranking baselines run "
             "beside the model",
             *[f"# {c}" for c in _wrap(field_comments(PipelineConfig)["gene_sets"])],
             f"gene_sets: {json.dumps(d.pop('gene_sets', []))}", ""]
    for section, value in d.items():
        classes = sources.get(section, ())
        doc = (inspect.getdoc(classes[0]) or "").split("\n")[0] if classes else ""
        doc = _wrap(doc, 10_000)[0]
        comments: dict[str, str] = {}
        for klass in reversed(classes):
            comments.update(field_comments(klass))
        comments.update(extra_doc.get(section, {}))
        lines.append(f"# {section}: {doc}" if doc else f"# {section}")
        lines.append(f"{section}:")
        for key, v in value.items():
            if key in comments:
                lines += [f"  # {c}" for c in _wrap(comments[key])]
            dumped = yaml.safe_dump({key: _plain(v)}, sort_keys=False,
                                    default_flow_style=False).rstrip("\n")
            lines += [f"  {x}" for x in dumped.splitlines()]
        lines.append("")
    return "\n".join(lines)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _wrap(text: str, width: int = 94) -> list[str]:
    import textwrap

    text = re.sub(r":(?:func|data|mod|class|attr|meth):", "", text.replace("``", "`"))
    return textwrap.wrap(text, width) or [""]
