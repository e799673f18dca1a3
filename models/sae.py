"""Sparse autoencoders (dictionary learning) on a model's activations.

Architectures, each with one config dataclass (``to_dict``/``from_dict``, validated in
``__post_init__``) in the registry :data:`SAE_REGISTRY`:

- ``topk`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k largest
  pre-activations per input; unit-norm decoder rows; AuxK loss: the ``aux_k`` largest *dead*
  latents reconstruct the residual error, which keeps latents alive.
- ``batchtopk`` (Bussmann et al. 2024): keep the k x batch largest pre-activations over the whole
  batch (a per-input L0 that varies); at inference a threshold learned as a running estimate
  of the smallest kept activation replaces the batch rule.
- ``relu``: ReLU encoder with an L1 penalty weighted by decoder norms (the classic baseline).

Every SAE normalises its input first: ``x_n = (x - mean) / scale`` with ``mean`` and a
per-dimension ``scale`` (standard deviation) fitted on the training activations and saved as
buffers — outlier dimensions would otherwise dominate the reconstruction loss and starve most
latents (in the bundled transformer, one residual dimension carries 99.9% of the variance). Decoding returns to the original space. Decoding a TopK code uses only its k active
latents (an embedding-bag gather), not a dense (batch x d_sae) @ (d_sae x d_in) product.

On disk: ``config.json`` (with ``architecture``) + ``sae.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from models.budget import check_memory, parameter_count
from models.configs import check_known
from models.errors import InputError
from models.fileperms import make_readable

__all__ = [
    "SAE_REGISTRY",
    "BatchTopKSAE",
    "BatchTopKSAEConfig",
    "ReLUSAE",
    "ReLUSAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "TopKSAE",
    "TopKSAEConfig",
    "load_sae",
]


@dataclass
class _BaseConfig:
    d_in: int
    d_sae: int
    seed: int = 0

    architecture: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            msg = f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}"
            raise InputError(msg)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _BaseConfig:
        d = {k: v for k, v in d.items() if k != "architecture"}
        check_known(d, (f.name for f in fields(cls)), f"{cls.__name__} settings")
        return cls(**d)


@dataclass
class TopKSAEConfig(_BaseConfig):
    k: int = 16
    aux_k: int = 64
    aux_coeff: float = 1 / 32
    #: a latent is dead when it has not fired for this many training inputs
    dead_after: int = 20_000

    architecture: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            msg = f"k must be in [1, d_sae={self.d_sae}], got {self.k}"
            raise InputError(msg)


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    #: momentum of the running inference threshold
    threshold_momentum: float = 0.99

    architecture: ClassVar[str] = "batchtopk"


@dataclass
class ReLUSAEConfig(_BaseConfig):
    l1_coeff: float = 3e-3

    architecture: ClassVar[str] = "relu"


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (n, d_in), original space
    acts: torch.Tensor  # (n, d_sae)
    loss: torch.Tensor
    mse: torch.Tensor  # normalised-space MSE per element
    aux: torch.Tensor


class SparseAutoencoder(nn.Module):
    """Shared parts: normalisation, encoder/decoder weights, unit-norm decoder, dead tracking."""

    config_class: ClassVar[type[_BaseConfig]] = _BaseConfig

    def __init__(self, config: _BaseConfig) -> None:
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(config.seed)
        w = torch.randn(config.d_sae, config.d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (d_sae, d_in): rows are feature directions
        self.W_enc = nn.Parameter(w.T.clone())  # (d_in, d_sae), tied at init
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))
        self.register_buffer("act_mean", torch.zeros(config.d_in))
        self.register_buffer("act_scale", torch.ones(config.d_in))
        self.register_buffer("steps_since_fired", torch.zeros(config.d_sae, dtype=torch.long))

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalisation(self, sample: torch.Tensor) -> None:
        """Fit per-dimension mean and scale on a sample of activations ``(n, d_in)``."""
        self.act_mean.copy_(sample.mean(0))
        sd = sample.std(0)
        # dimensions that never vary keep unit scale (nothing to reconstruct there)
        self.act_scale.copy_(torch.where(sd > 1e-6 * sd.max().clamp(min=1e-12), sd,
                                         torch.ones_like(sd)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.act_mean) / self.act_scale

    def denormalise(self, x_n: torch.Tensor) -> torch.Tensor:
        return x_n * self.act_scale + self.act_mean

    # --------------------------------------------------------------------------- API
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(n, d_sae)`` of raw activations ``x: (n, d_in)``."""
        return self._pre_n(self.normalise(x))

    def _pre_n(self, x_n: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of already normalised activations."""
        return (x_n - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(n, d_sae)`` (dense tensor, mostly zeros)."""
        raise NotImplementedError

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the original space from dense ``acts: (n, d_sae)``."""
        return self.denormalise(acts @ self.W_dec + self.b_dec)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        raise NotImplementedError

    @property
    def decoder_directions(self) -> torch.Tensor:
        """Feature directions in the original activation space, ``(d_sae, d_in)``."""
        return self.W_dec * self.act_scale

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Project decoder rows back to unit norm (after each optimiser step)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp(min=1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        if self.W_dec.grad is not None:
            w = self.W_dec.data
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def _track_firing(self, acts: torch.Tensor) -> None:
        fired = (acts > 0).any(0)
        self.steps_since_fired += acts.shape[0]
        self.steps_since_fired[fired] = 0

    @property
    def dead_mask(self) -> torch.Tensor:
        dead_after = getattr(self.config, "dead_after", 20_000)
        return self.steps_since_fired >= dead_after

    # ------------------------------------------------------------------------- disk
    def save(self, path: str | Path) -> None:
        import os

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # each file to a temporary name first, then renamed: a killed save leaves no half file
        tmp = path / ".config.json.tmp"
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2))
        os.replace(tmp, path / "config.json")
        tmp = path / ".sae.safetensors.tmp"
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        make_readable(tmp)  # safetensors writes 0600
        os.replace(tmp, path / "sae.safetensors")


def _recon_mse(x_n_hat: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
    return (x_n_hat - x_n).pow(2).mean()


class _SelectedPre(torch.autograd.Function):
    """The entries ``idx`` of the encoder pre-activations ``pre = x_c @ W_enc + b_enc`` (already
    computed, outside the graph), with a backward that touches only those entries.

    A TopK code uses k of d_sae pre-activations per row, so the gradient of ``pre`` is zero
    elsewhere: autograd's dense backward would still multiply ``x_c.T @ grad_pre``
    (batch x d_in x d_sae). Here ``W_enc``'s gradient is a sparse-dense product (batch x k x
    d_in), ``x_c``'s an embedding bag over the selected encoder columns, ``b_enc``'s an index
    add. The same numbers as the dense backward, up to the order of float additions.
    """

    @staticmethod
    def forward(ctx, x_c: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,  # noqa: ANN001
                idx: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_c, W_enc, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        x_c, W_enc, idx = ctx.saved_tensors
        n, k = idx.shape
        flat, g = idx.reshape(-1), g.contiguous()
        gx = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            gW = torch.sparse.mm(_selection(idx, g, W_enc.shape[1]), x_c).t()
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(W_enc.shape[1], dtype=g.dtype,
                             device=g.device).index_add_(0, flat, g.reshape(-1))
        return gx, gW, gb, None, None


def _selection(idx: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(n_cols, n) sparse matrix holding ``values[r, s]`` at (``idx[r, s]``, r)."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    return torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), values.reshape(-1),
                                   (n_cols, n), check_invariants=False)


class _DecoderGrad(torch.autograd.Function):
    """Zero in the forward pass; in the backward, ``W_dec``'s gradient of the sparse decode
    ``sum_s vals[r, s] * W_dec[idx[r, s]]`` as one sparse-dense product (n x k x d_in), in place
    of the embedding bag's dense weight backward. Added to a decode made with a detached
    ``W_dec`` (which still gives ``vals`` their gradient)."""

    @staticmethod
    def forward(ctx, W_dec: torch.Tensor, vals: torch.Tensor,  # noqa: ANN001
                idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vals, idx)
        ctx.d_sae = W_dec.shape[0]
        return W_dec.new_zeros(idx.shape[0], W_dec.shape[1])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        vals, idx = ctx.saved_tensors
        return torch.sparse.mm(_selection(idx, vals, ctx.d_sae), g.contiguous()), None, None


class TopKSAE(SparseAutoencoder):
    config_class = TopKSAEConfig
    #: training steps back-propagate through the k selected pre-activations only
    #: (:meth:`_forward_sparse`): True always, False never (autograd's dense path, the reference
    #: in tests), None where the code is sparse enough to pay (d_sae >= 16 k, measured: at
    #: d_sae 2048, k 32 it is ~1.9x the dense path's speed; at the pipeline's d_sae 256, k 48,
    #: batch 128 the dense path is faster, and keeps the pipeline's numbers as they were)
    sparse_backward: bool | None = None

    def _topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vals, idx = torch.topk(pre, self.config.k, dim=1)
        return F.relu(vals), idx

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = self._topk(self.pre_acts(x))
        return torch.zeros(x.shape[0], self.config.d_sae, dtype=x.dtype,
                           device=x.device).scatter_(1, idx, vals)

    def _decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # sum_i vals_i * W_dec[idx_i]: only the k active rows are touched
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec

    def _aux_loss(self, pre: torch.Tensor, err_n: torch.Tensor) -> torch.Tensor:
        dead = self.dead_mask
        n_dead = int(dead.sum())
        if n_dead == 0 or not self.training:
            return pre.new_zeros(())
        k_aux = min(self.config.aux_k, n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        # raw pre-activations, not ReLU'd (as SAELens does): a dead latent whose pre-activation
        # is negative still gets a gradient that moves it towards the residual error
        vals, idx = torch.topk(masked, k_aux, dim=1)
        return self._aux_from(vals, idx, err_n)

    def _aux_from(self, vals: torch.Tensor, idx: torch.Tensor,
                  err_n: torch.Tensor) -> torch.Tensor:
        """AuxK loss of the dead latents ``idx`` with pre-activations ``vals``: how well they
        reconstruct the residual error ``err_n``."""
        err_hat = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum")
        # normalised by the error's own variance so the scale does not depend on progress
        denom = (err_n - err_n.mean(0)).pow(2).mean().clamp(min=1e-8)
        return (err_hat - err_n.detach()).pow(2).mean() / denom

    def _code(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations -> (dense activations, normalised-space reconstruction)."""
        vals, idx = self._topk(pre)
        return torch.zeros_like(pre).scatter_(1, idx, vals), self._decode_sparse(vals, idx)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        sparse = (self.config.d_sae >= 16 * self.config.k if self.sparse_backward is None
                  else self.sparse_backward)
        if (self.training and torch.is_grad_enabled() and sparse
                and type(self)._code is TopKSAE._code):
            return self._forward_sparse(x)
        x_n = self.normalise(x)
        pre = self._pre_n(x_n)
        acts, x_n_hat = self._code(pre)
        mse = _recon_mse(x_n_hat, x_n)
        if self.training:
            self._track_firing(acts)
        aux = self._aux_loss(pre, x_n - x_n_hat)
        loss = mse + self.config.aux_coeff * aux
        return SAEOutput(self.denormalise(x_n_hat), acts, loss, mse.detach(), aux.detach())

    def _forward_sparse(self, x: torch.Tensor) -> SAEOutput:
        """Training step of a per-row TopK code: the dense pre-activations are computed without
        a graph and only the selected ones (the k of the code, the AuxK dead latents) carry
        gradients (:class:`_SelectedPre`): the same loss and gradients as :meth:`forward`'s
        dense path, without its dense encoder backward. ``acts`` is a sparse COO tensor here
        (the trainer reads only the losses; :meth:`decode` accepts it)."""
        x_n = self.normalise(x)
        x_c = x_n - self.b_dec
        with torch.no_grad():
            # the bias as one more input row: addmm would first copy it into every row of the
            # (n, d_sae) output, as costly as a fifth of the product
            pre = (torch.cat([x_c, x_c.new_ones(x_c.shape[0], 1)], 1)
                   @ torch.cat([self.W_enc, self.b_enc[None]], 0))
            idx = torch.topk(pre, self.config.k, dim=1).indices
        vals = F.relu(_SelectedPre.apply(x_c, self.W_enc, self.b_enc, idx, pre))
        x_n_hat = (F.embedding_bag(idx, self.W_dec.detach(), per_sample_weights=vals,
                                   mode="sum") + self.b_dec
                   + _DecoderGrad.apply(self.W_dec, vals.detach(), idx))
        mse = _recon_mse(x_n_hat, x_n)
        with torch.no_grad():
            fired = idx[vals > 0]
            self.steps_since_fired += x.shape[0]
            self.steps_since_fired[fired] = 0
        # the k active values per row, as a sparse tensor (a dense one costs a (n, d_sae) fill)
        n, k = idx.shape
        acts = torch.sparse_coo_tensor(
            torch.stack([torch.arange(n, device=idx.device).repeat_interleave(k),
                         idx.reshape(-1)]), vals.detach().reshape(-1), pre.shape,
            check_invariants=False)
        aux = pre.new_zeros(())
        dead = self.dead_mask
        n_dead = int(dead.sum())
        if n_dead:
            with torch.no_grad():
                aux_idx = torch.topk(pre.masked_fill(~dead, float("-inf")),
                                     min(self.config.aux_k, n_dead), dim=1).indices
            aux = self._aux_from(_SelectedPre.apply(x_c, self.W_enc, self.b_enc, aux_idx, pre),
                                 aux_idx, x_n - x_n_hat)
        loss = mse + self.config.aux_coeff * aux
        return SAEOutput(self.denormalise(x_n_hat), acts, loss, mse.detach(), aux.detach())


class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKSAEConfig

    def __init__(self, config: BatchTopKSAEConfig) -> None:
        super().__init__(config)
        self.register_buffer("threshold", torch.zeros(()))

    def _batch_topk(self, pre: torch.Tensor) -> torch.Tensor:
        n = pre.shape[0]
        flat = F.relu(pre).flatten()
        vals, idx = torch.topk(flat, min(self.config.k * n, flat.numel()))
        acts = torch.zeros_like(flat).scatter_(0, idx, vals).view_as(pre)
        with torch.no_grad():
            kept = vals[vals > 0]
            if kept.numel():
                m = self.config.threshold_momentum
                lo = kept.min()
                self.threshold.copy_(lo if self.threshold == 0 else m * self.threshold + (1 - m) * lo)
        return acts

    def _jump(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)  # JumpReLU at the learned threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._jump(self.pre_acts(x))

    def _code(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the batch rule while training, the learned threshold at inference
        acts = self._batch_topk(pre) if self.training else self._jump(pre)
        return acts, acts @ self.W_dec + self.b_dec


class ReLUSAE(SparseAutoencoder):
    config_class = ReLUSAEConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_acts(x))

    def forward(self, x: torch.Tensor) -> SAEOutput:
        x_n = self.normalise(x)
        acts = F.relu(self._pre_n(x_n))
        x_n_hat = acts @ self.W_dec + self.b_dec
        mse = _recon_mse(x_n_hat, x_n)
        if self.training:
            self._track_firing(acts)
        l1 = (acts * self.W_dec.norm(dim=1)).sum(1).mean()
        loss = mse + self.config.l1_coeff * l1
        return SAEOutput(self.denormalise(x_n_hat), acts, loss, mse.detach(), l1.detach())

    def normalise_decoder(self) -> None:  # the L1 penalty is weighted by decoder norms instead
        return None

    def remove_parallel_grad(self) -> None:
        return None


#: architecture name -> (SAE class, config class)
SAE_REGISTRY: dict[str, tuple[type[SparseAutoencoder], type[_BaseConfig]]] = {
    "topk": (TopKSAE, TopKSAEConfig),
    "batchtopk": (BatchTopKSAE, BatchTopKSAEConfig),
    "relu": (ReLUSAE, ReLUSAEConfig),
}


def build_sae(architecture: str, **config: Any) -> SparseAutoencoder:
    if architecture not in SAE_REGISTRY:
        msg = f"unknown SAE architecture {architecture!r}; choose one of {', '.join(SAE_REGISTRY)}"
        raise InputError(msg)
    cls, cfg_cls = SAE_REGISTRY[architecture]
    cfg = cfg_cls(**config)
    check_memory(parameter_count(cls, cfg), f"a {architecture} SAE (d_in {cfg.d_in}, d_sae "
                 f"{cfg.d_sae})", purpose="train", fix="Lower features.d_sae.")
    return cls(cfg)


def load_sae(path: str | Path) -> SparseAutoencoder:
    """Load an SAE saved by :meth:`SparseAutoencoder.save` (safetensors; nothing unpickled)."""
    from models import require_safetensors

    path = Path(path)
    require_safetensors(path, "sae.safetensors", "a sparse autoencoder",
                        "fit one with `discovery run`")
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{path / 'config.json'} is not valid JSON ({err}): truncated or edited"
        raise InputError(msg) from err
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if arch not in SAE_REGISTRY:
        msg = f"{path}/config.json: unknown SAE architecture {arch!r}"
        raise InputError(msg)
    cls, cfg_cls = SAE_REGISTRY[arch]
    try:
        config = cfg_cls.from_dict(cfg)
    except (TypeError, ValueError) as err:
        msg = f"{path}/config.json: not a valid {arch} SAE config ({err})"
        raise InputError(msg) from err
    check_memory(parameter_count(cls, config), f"the SAE {path}", purpose="load",
                 fix="Check its config.json (d_in, d_sae): was it edited?")
    sae = cls(config)
    try:
        sae.load_state_dict(load_file(str(path / "sae.safetensors")))
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (f"{path / 'sae.safetensors'} could not be loaded into the SAE its config.json "
               f"describes ({first}); the file is truncated or from another SAE. Rerun "
               "`discovery run` on the run directory to refit it")
        raise InputError(msg) from err
    sae.eval()
    return sae
