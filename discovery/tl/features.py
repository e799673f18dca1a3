"""Feature extraction: sparse autoencoders on a classifier's activations, and their quality.

Steps (:func:`fit_saes` runs 1, 2, 4 and 5; the pipeline's features stage adds 3):

1. :func:`collect_activations`: run the classifier over every cell and stream the activations at
   one hook point (``pooled``, or one position of a ``layer{i}.resid``) into an on-disk
   :class:`models.activation_store.ActivationStore`.
2. Fit an SAE (``models.sae``; BatchTopK by default) on the training donors' activations, one
   per seed.
3. :func:`sae_quality`: explained variance, L0, dead and dense fractions; and with the SAE's
   reconstruction spliced into the model at the hook (``run_with_hooks``): prediction agreement,
   change in loss, and test-donor AUROC next to the model's own.
4. :func:`encode_cells`: feature activations of every cell -> ``obsm['X_sae_<hook>']``.
5. :func:`match_features`: stability across seeds — decoder directions matched by Hungarian
   assignment on cosine similarity; a feature's stability is its best-match cosine, averaged over
   the other seeds.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from discovery.io.contract import InputError, case_mask, get_keys
from discovery.io.layout import sae_key
from discovery.tl.classifier import encode
from models.activation_store import ActivationStore
from models.budget import check_memory, parameter_count
from models.configs import check_known
from models.sae import SAE_REGISTRY, SparseAutoencoder
from models.sae_training import SAETrainConfig, train_sae

log = logging.getLogger(__name__)

__all__ = [
    "FittedSAEs",
    "SAESpec",
    "collect_activations",
    "encode_cells",
    "fit_saes",
    "match_features",
    "sae_quality",
    "splice_hook",
    "train_saes",
]


@dataclass
class SAESpec:
    """Which SAEs to fit where: hook point, architecture and sizes, training, seeds.

    The one shape of the SAE settings from preset to trainer: ``PipelineConfig.features`` is an
    ``SAESpec``; :meth:`sae_config` builds the architecture's config (``models.sae``) and
    :attr:`train` is the trainer's :class:`models.sae_training.SAETrainConfig`. Defaults live
    here and in those two classes, nowhere else.
    """

    hook: str = "pooled"
    #: BatchTopK: on the bundled cohort it reached EV 0.93 at k = 48 where TopK reached 0.91,
    #: and separated the microglia program in 2 of 3 seeds where TopK did in 1 of 3
    architecture: str = "batchtopk"
    d_sae: int = 256
    k: int = 48
    seeds: tuple[int, ...] = (0, 1, 2)
    #: (TopK / BatchTopK) samples without firing before a latent counts as dead for the AuxK
    #: loss. A cohort's SAE sees ~10^5 samples per epoch, far fewer than a language-model SAE,
    #: so the pipeline uses 2,000 where ``TopKSAEConfig`` keeps the SAELens-scale 20,000
    dead_after: int = 2_000
    #: further architecture settings of ``models.sae`` (e.g. aux_coeff, aux_k, l1_coeff)
    sae: dict[str, Any] = field(default_factory=dict)
    train: SAETrainConfig = field(default_factory=SAETrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = SAETrainConfig.from_dict(self.train)
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.architecture not in SAE_REGISTRY:
            msg = (f"unknown SAE architecture {self.architecture!r}; choose one of "
                   f"{', '.join(SAE_REGISTRY)}")
            raise InputError(msg)
        if not self.seeds:
            msg = "features.seeds is empty: give at least one SAE seed"
            raise InputError(msg)
        try:
            self.sae_config(1, self.seeds[0])  # unknown or invalid settings fail here, early
        except (TypeError, ValueError) as err:
            raise InputError(f"features settings: {err}") from err

    def sae_config(self, d_in: int, seed: int) -> Any:
        """The architecture's config dataclass (``models.sae``) for inputs of width ``d_in``,
        once the SAE is known to fit in memory for training (InputError otherwise)."""
        _, cfg_cls = SAE_REGISTRY[self.architecture]
        kw: dict[str, Any] = {"d_in": d_in, "d_sae": self.d_sae, "seed": seed}
        if "k" in cfg_cls.__dataclass_fields__:
            kw["k"] = self.k
            kw["dead_after"] = self.dead_after
        cfg = cfg_cls.from_dict({**kw, **self.sae})
        check_memory(parameter_count(SAE_REGISTRY[self.architecture][0], cfg),
                     f"the SAE (d_in {d_in}, d_sae {self.d_sae})", purpose="train",
                     fix="Lower features.d_sae.")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "architecture": self.architecture, "d_sae": self.d_sae,
                "k": self.k, "seeds": list(self.seeds), "dead_after": self.dead_after,
                "sae": dict(self.sae),
                "train": {k: v for k, v in self.train.to_dict().items() if k != "seed"}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAESpec:
        check_known(d, cls.__dataclass_fields__, "features settings", error=InputError)
        kw = dict(d)
        if "train" in kw:
            if "seed" in kw["train"]:
                msg = ("features.train.seed is not a setting: each SAE is trained with one of "
                       "features.seeds")
                raise InputError(msg)
            try:
                kw["train"] = SAETrainConfig.from_dict(kw["train"])
            except ValueError as err:
                raise InputError(str(err)) from err
        return cls(**kw)


def _select(act: torch.Tensor, hook: str) -> torch.Tensor:
    """(cells, d) from a hook activation: per-token activations use the [CLS] position."""
    if act.ndim == 3:
        return act[:, 0]
    if act.ndim != 2:
        msg = f"hook {hook!r} has activations of shape {tuple(act.shape)}; need (cells, d)"
        raise InputError(msg)
    return act


@torch.no_grad()
def collect_activations(
    adata: ad.AnnData,
    model: torch.nn.Module,
    store_dir: str | Path,
    *,
    hook: str = "pooled",
    position: str = "cls",
    batch_size: int = 1024,
) -> ActivationStore:
    """Stream the activations of every cell at ``hook`` into an on-disk store.

    ``position``: for per-token hooks of the transformer, ``"cls"`` stores the [CLS] row of each
    cell (rows in ``adata`` order); ``"tokens"`` stores one row per real gene token, and the
    store's ``tokens.npy`` holds (cell index, gene index) for each row. Hooks without a token
    axis always give one row per cell. Reads log-normalised ``X`` over the model's genes. Writes
    nothing to ``adata``; the store goes to ``store_dir`` (``acts.f32`` + ``meta.json``).
    """
    if position not in ("cls", "tokens"):
        msg = f"position must be 'cls' or 'tokens', got {position!r}"
        raise InputError(msg)
    if hook not in model.hook_names:
        msg = f"hook {hook!r} is not a hook point of this model; choose from {model.hook_names}"
        raise InputError(msg)
    x = encode(adata, list(model.config.gene_names))
    model.eval()
    writer = None
    token_index = []
    for i, (xb, _, cache) in enumerate(model.iter_cache(x, [hook], batch_size=batch_size)):
        act = cache[hook]
        if position == "tokens" and act.ndim == 3:
            ids, _, real = model.tokenize(xb)
            first = i * batch_size
            cell = torch.arange(first, first + len(xb))[:, None].expand_as(ids)
            act = act[:, 1:][real]
            token_index.append(torch.stack([cell[real], ids[real]], dim=1))
        else:
            act = _select(act, hook)
        if writer is None:
            writer = ActivationStore.create(store_dir, act.shape[1], hook=hook,
                                            position=position)
        writer.append(act)
    store = writer.close()
    if token_index:
        np.save(Path(store_dir) / "tokens.npy", torch.cat(token_index).numpy())
    return store


def splice_hook(sae: SparseAutoencoder, hook: str):  # noqa: ANN201 - a hook function
    """A hook function replacing the activation at ``hook`` by the SAE's reconstruction."""

    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        if act.ndim == 3:
            out = act.clone()
            out[:, 0] = sae.decode(sae.encode(act[:, 0]))
            return out
        return sae.decode(sae.encode(act))

    return fn


def train_saes(
    store: ActivationStore,
    spec: SAESpec,
    *,
    train_rows: np.ndarray | None = None,
) -> list[tuple[SparseAutoencoder, Any]]:
    """Fit one SAE per seed on ``store`` (rows ``train_rows`` only, when given)."""
    acts = store.read() if train_rows is None else store.read()[torch.from_numpy(train_rows)]
    sae_cls, _ = SAE_REGISTRY[spec.architecture]
    out = []
    for seed in spec.seeds:
        sae = sae_cls(spec.sae_config(store.d, seed))
        sae.fit_normalisation(acts)
        cfg = dataclasses.replace(spec.train, seed=seed)
        gen = torch.Generator().manual_seed(seed)

        def data(epoch: int, acts=acts, gen=gen, bs=cfg.batch_size):
            perm = torch.randperm(len(acts), generator=gen)
            for i in range(0, len(acts), bs):
                yield acts[perm[i:i + bs]]

        n_batches = -(-len(acts) // cfg.batch_size)
        hist = train_sae(sae, data, cfg, n_batches_per_epoch=n_batches)
        out.append((sae, hist))
    return out


@dataclass
class FittedSAEs:
    """SAEs fitted at one hook, one per seed (the first is the primary one the run reads)."""

    hook: str
    saes: list[SparseAutoencoder]
    histories: list[Any]
    #: (d_sae,) best-match cosine of each primary feature in the other seeds (NaN with one seed)
    stability: np.ndarray

    @property
    def primary(self) -> SparseAutoencoder:
        return self.saes[0]


def fit_saes(
    adata: ad.AnnData,
    model: torch.nn.Module,
    *,
    spec: SAESpec | None = None,
    workdir: str | Path | None = None,
    key_added: str | None = None,
) -> FittedSAEs:
    """Steps 1, 2, 4 and 5 of the module docstring in one call: activations at ``spec.hook`` of
    every cell streamed to ``workdir`` (a temporary folder when None, removed afterwards), one
    SAE per seed fitted on the ``train`` donors' cells, stability across seeds, and the primary
    SAE's activations of every cell.

    Reads log-normalised ``X`` and ``obs['split']``. Writes ``obsm[key_added]`` (default
    ``X_sae_<hook>``) and ``uns[key_added]['params']``.
    """
    import shutil
    import tempfile

    spec = spec or SAESpec()
    if "split" not in adata.obs:
        msg = ("obs['split'] is missing: run discovery.pp.preprocess(adata) (donor-held-out "
               "split) first")
        raise InputError(msg)
    tmp = None
    if workdir is None:
        tmp = workdir = tempfile.mkdtemp(prefix="discovery-activations-")
    try:
        shutil.rmtree(workdir, ignore_errors=True)
        store = collect_activations(adata, model, workdir, hook=spec.hook)
        train_rows = np.flatnonzero((adata.obs["split"] == "train").to_numpy())
        fitted = train_saes(store, spec, train_rows=train_rows)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    stability = match_features([s.decoder_directions.detach().numpy() for s, _ in fitted])
    encode_cells(adata, model, fitted[0][0], hook=spec.hook, key_added=key_added)
    return FittedSAEs(spec.hook, [s for s, _ in fitted], [h for _, h in fitted], stability)


@torch.no_grad()
def encode_cells(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SparseAutoencoder,
    *,
    hook: str = "pooled",
    key_added: str | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Feature activations of every cell, ``(cells, d_sae)``.

    Reads log-normalised ``X``. Writes ``obsm[key_added]`` (default ``X_sae_<hook>``) and
    ``uns[key_added]['params']`` (hook, architecture, sizes).
    """
    x = encode(adata, list(model.config.gene_names))
    chunks = []
    for _, _, cache in model.iter_cache(x, [hook], batch_size=batch_size):
        chunks.append(sae.encode(_select(cache[hook], hook)))
    acts = torch.cat(chunks).numpy().astype(np.float32)
    key = key_added or sae_key(hook)
    adata.obsm[key] = acts
    adata.uns[key] = {"params": {"hook": hook, **sae.config.to_dict()}}
    return acts


@torch.no_grad()
def sae_quality(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SparseAutoencoder,
    *,
    hook: str = "pooled",
    split: str = "test",
    batch_size: int = 1024,
) -> dict[str, float]:
    """Reconstruction and spliced-in metrics of an SAE on one split's cells.

    Explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, computed in the SAE's
    normalised space (each dimension standardised; in raw space one outlier dimension would
    decide it) and reported in raw space too (``explained_variance_raw``); L0 = mean number of
    active latents; dead = share of latents never active on these cells; dense = share active on
    more than half of them. Spliced: the model run with the reconstruction in place of the
    activation: agreement of predicted classes, change in BCE loss, and donor-level AUROC.

    Reads ``obs['split']``, the label and donor columns, log-normalised ``X``. Writes nothing.
    """
    from discovery.tl.classifier import evaluate

    keys = get_keys(adata)
    m = (adata.obs["split"] == split).to_numpy()
    sub = adata[m]
    x = encode(sub, list(model.config.gene_names))
    y = torch.from_numpy(case_mask(sub, keys).astype(np.float32))
    se = se_raw = 0.0
    fired = torch.zeros(sae.config.d_sae)
    l0 = 0.0
    logits, logits_sp = [], []
    acts_all = []
    for xb, out, cache in model.iter_cache(x, [hook], batch_size=batch_size):
        a = _select(cache[hook], hook)
        acts_all.append(a)
        f = sae.encode(a)
        recon = sae.decode(f)
        se += float((sae.normalise(recon) - sae.normalise(a)).pow(2).sum())
        se_raw += float((recon - a).pow(2).sum())
        fired += (f > 0).float().sum(0)
        l0 += float((f > 0).float().sum())
        logits.append(out.logits)
        logits_sp.append(model.run_with_hooks(xb, {hook: splice_hook(sae, hook)}).logits)
    acts_all = torch.cat(acts_all)
    tot_raw = float((acts_all - acts_all.mean(0)).pow(2).sum())
    an = sae.normalise(acts_all)
    tot = float((an - an.mean(0)).pow(2).sum())
    lg, lgs = torch.cat(logits), torch.cat(logits_sp)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    n = len(x)
    p_sp = torch.sigmoid(lgs).numpy().astype(np.float64)
    full = np.zeros(adata.n_obs)
    full[m] = p_sp
    spliced_eval = evaluate(adata, full, split=split, keys=keys)
    model_p = np.zeros(adata.n_obs)
    model_p[m] = torch.sigmoid(lg).numpy()
    model_eval = evaluate(adata, model_p, split=split, keys=keys)
    return {
        "split": split,
        "n_cells": n,
        "explained_variance": 1.0 - se / tot,
        "explained_variance_raw": 1.0 - se_raw / tot_raw,
        "l0": l0 / n,
        "dead_fraction": float((fired == 0).float().mean()),
        "dense_fraction": float((fired > 0.5 * n).float().mean()),
        "agreement": float(((lg > 0) == (lgs > 0)).float().mean()),
        "loss": float(bce(lg, y)),
        "loss_spliced": float(bce(lgs, y)),
        "delta_loss": float(bce(lgs, y) - bce(lg, y)),
        "donor_auroc": model_eval["donor_auroc"],
        "donor_auroc_spliced": spliced_eval["donor_auroc"],
        "cell_auroc": float(roc_auc_score(y.numpy(), lg.numpy())),
        "cell_auroc_spliced": float(roc_auc_score(y.numpy(), lgs.numpy())),
    }


def match_features(decoders: list[np.ndarray]) -> np.ndarray:
    """Stability of each feature of the first SAE across the others.

    ``decoders``: one ``(d_sae, d_in)`` decoder matrix per seed. For each other seed, features are
    matched one-to-one (Hungarian assignment maximising total cosine similarity); a feature's
    stability is its matched cosine averaged over the other seeds. Returns ``(d_sae,)``.
    """
    if len(decoders) < 2:
        return np.full(decoders[0].shape[0], np.nan)
    ref = decoders[0] / np.linalg.norm(decoders[0], axis=1, keepdims=True)
    scores = []
    for other in decoders[1:]:
        o = other / np.linalg.norm(other, axis=1, keepdims=True)
        cos = ref @ o.T
        rows, cols = linear_sum_assignment(-cos)
        s = np.zeros(ref.shape[0])
        s[rows] = cos[rows, cols]
        scores.append(s)
    return np.mean(scores, axis=0)
