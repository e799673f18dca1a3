"""Cell-level attribution: the model linearised around each cell, decomposed exactly.

Method (circuit-tracer's, adapted to an expression classifier with residual-stream SAEs):

1. **Linearise.** One forward pass over a block of cells in which every multiplicative
   nonlinearity is replaced by a detached copy of itself at its hook point — LayerNorm scales
   (``*.scale``), attention patterns (``*.pattern``), GELU gates (``*.gate``). With those factors
   frozen, the model is an *affine* function of its input, and of the activation at any hook that
   fully mediates the computation (``pooled``, or ``layer{i}.resid`` of the MLP), with the same
   value at this cell as the real model.
2. **Cut at every SAE hook.** The activation at SAE hook ``h_l`` is replaced by a fresh leaf
   tensor, so the affine map from ``h_l`` to the next SAE hook (or to the logit) is measured on
   its own: its Jacobian ``J_l`` by batched backward passes (one per output dimension, all cells
   of the block at once), its offset ``c_l`` by a second forward pass with the source set to
   zero under the same frozen factors.
3. **Decompose.** At SAE hook ``h_l`` the activation is split exactly into feature parts, an
   error node and a constant: ``a_l = sum_i f_i d_i + (b_dec * scale + mean) + e_l`` with
   ``d_i`` the feature's decoder direction in the activation space and ``e_l = a_l - SAE(a_l)``.
   A downstream target ``t`` (an SAE feature's *pre-activation*, or the case logit) is then

   ``t = sum_i f_i (P_t J_l d_i)  +  P_t J_l e_l  +  bias_t``

   with ``P_t`` the target's read-out row (SAE encoder row over the SAE's normalisation, or 1 for
   the logit) and ``bias_t = P_t J_l const_l + P_t c_l + b_t`` computed on its own, so the
   equality is a check, not a definition. Input genes play the role of features at the first
   stage: for the MLP a gene's part is ``(x_g - mean_g) dT/dx_g`` (zero at the training mean);
   for the transformer it is the gene token's embedding (identity + value) times ``dT/dtoken``,
   and the [CLS] embedding goes to the bias.

Targets are every SAE feature at each SAE hook and the case logit; edges into a feature that is
inactive in a cell are kept in :class:`BlockAttribution` (a cohort graph masks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from discovery.io.contract import InputError
from models.sae import SparseAutoencoder

__all__ = [
    "BlockAttribution",
    "FROZEN_SUFFIXES",
    "SAEHook",
    "attribute_block",
    "check_sae_hooks",
    "gene_attribution",
    "integrated_gradients",
]

#: hook points whose activations are multiplicative factors, frozen by the linearisation
FROZEN_SUFFIXES = (".scale", ".pattern", ".gate")


@dataclass
class SAEHook:
    """An SAE read at one hook point; feature ids are ``f"{hook}:F{i}"``."""

    hook: str
    sae: SparseAutoencoder

    @property
    def d_sae(self) -> int:
        return self.sae.config.d_sae

    def readout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, b)`` with ``pre_acts(a) = a @ P.T + b``: P ``(d_sae, d_in)``."""
        s = self.sae
        p = (s.W_enc / s.act_scale[:, None]).T
        b = s.b_enc - (s.act_mean / s.act_scale + s.b_dec) @ s.W_enc
        return p, b

    def constant(self) -> torch.Tensor:
        """The part of the reconstruction that does not depend on any feature, ``(d_in,)``."""
        return self.sae.b_dec * self.sae.act_scale + self.sae.act_mean


def _is_token_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "tokenize")


def _hook_order(model: torch.nn.Module) -> dict[str, int]:
    return {n: i for i, n in enumerate(model.hook_names)}


def check_sae_hooks(model: torch.nn.Module, saes: list[SAEHook]) -> list[SAEHook]:
    """Validate and order SAE hooks for attribution; returns them in forward order.

    A hook qualifies when its activation is one vector per cell that carries everything
    downstream (``pooled``; for the MLP also ``layer{i}.resid`` and ``layer{i}.mlp_out`` is *not*
    enough, since the residual skips it).
    """
    if not saes:
        msg = "attribution needs at least one SAE hook (e.g. the 'pooled' SAE of a run)"
        raise InputError(msg)
    order = _hook_order(model)
    allowed = {"pooled"} | (set() if _is_token_model(model) else
                            {n for n in model.hook_names if n.endswith(".resid")})
    for s in saes:
        if s.hook not in order:
            msg = f"SAE hook {s.hook!r} is not a hook point of this model ({model.hook_names})"
            raise InputError(msg)
        if s.hook not in allowed:
            msg = (f"attribution graphs need SAE hooks that fully mediate the model, one vector per "
                   f"cell; {s.hook!r} is not one. Use one of: {sorted(allowed)}")
            raise InputError(msg)
    names = [s.hook for s in saes]
    if len(set(names)) != len(names):
        msg = f"SAE hooks must be distinct, got {names}"
        raise InputError(msg)
    return sorted(saes, key=lambda s: order[s.hook])


class _Linearised:
    """Hook functions for the frozen-factor forward passes over one block of cells."""

    def __init__(self, model: torch.nn.Module, saes: list[SAEHook]) -> None:
        self.model = model
        self.saes = saes
        self.frozen_names = [n for n in model.hook_names if n.endswith(FROZEN_SUFFIXES)]
        self.factors: dict[str, torch.Tensor] = {}
        self.leaves: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.zero_source = False

    def _freeze(self, act: torch.Tensor, name: str) -> torch.Tensor:
        if self.zero_source:
            return self.factors[name]
        self.factors[name] = act.detach()
        return self.factors[name]

    def _cut(self, act: torch.Tensor, name: str) -> torch.Tensor:
        self.values[name] = act
        if self.zero_source:
            return torch.zeros_like(act)
        leaf = act.detach().clone().requires_grad_(True)
        self.leaves[name] = leaf
        return leaf

    def _embed(self, act: torch.Tensor, name: str) -> torch.Tensor:
        if self.zero_source:  # gene tokens removed, [CLS] kept (it goes to the bias)
            out = torch.zeros_like(act)
            out[:, 0] = act[:, 0].detach()
            return out
        leaf = act.detach().clone().requires_grad_(True)
        self.leaves["input"] = leaf
        return leaf

    def _logits(self, act: torch.Tensor, name: str) -> None:
        self.values["logits"] = act

    def fns(self) -> dict[str, Any]:
        fns: dict[str, Any] = {n: self._freeze for n in self.frozen_names}
        for s in self.saes:
            fns[s.hook] = self._cut
        if _is_token_model(self.model):
            fns["embed"] = self._embed
        fns["logits"] = self._logits
        return fns


@dataclass
class BlockAttribution:
    """Exact decomposition of every target for a block of ``B`` cells.

    Stage ``s`` feeds target layer ``s``: stage 0 reads the genes, stage ``l`` > 0 reads SAE
    ``l - 1``; targets of stage ``s`` < L are the pre-activations of SAE ``s``, of stage L the
    case logit (one target). For each stage:

    - ``source_edges[s]``: ``(B, n_targets, n_sources)`` direct contributions of genes
      (stage 0, over the model's gene vocabulary) or features (stages > 0);
    - ``error_edges[s]``: ``(B, n_targets)`` contribution of the upstream SAE's error node
      (``None`` at stage 0);
    - ``bias[s]``: ``(B, n_targets)``; ``targets[s]``: ``(B, n_targets)`` the value decomposed;
    - ``unit[s]``: ``(B, n_targets, n_sources)`` effect per unit of feature activation (stages
      > 0), and ``error_dir[s]``: ``(B, n_targets, d)`` the target's read-out of the upstream
      activation (stages > 0), used by the validation to predict ablations; ``jac[s]``:
      ``(B, d_next, d)`` the frozen model's Jacobian from the upstream SAE hook to the next one
      (or to the logit), stages > 0.

    ``features[l]``, ``errors[l]``: ``(B, d_sae)`` activations and ``(B, d)`` error vectors at
    SAE ``l``; ``logits``: ``(B,)``; ``genes_in``: ``(B, n_genes)`` the gene input values used
    (expression minus training mean for the MLP, expression for the transformer).
    """

    source_edges: list[torch.Tensor]
    error_edges: list[torch.Tensor | None]
    bias: list[torch.Tensor]
    targets: list[torch.Tensor]
    unit: list[torch.Tensor | None]
    error_dir: list[torch.Tensor | None]
    jac: list[torch.Tensor | None]
    features: list[torch.Tensor]
    errors: list[torch.Tensor]
    logits: torch.Tensor
    genes_in: torch.Tensor

    def completeness_error(self) -> float:
        """max |sources + error + bias - target| / max |target|, the worst stage of the block."""
        worst = 0.0
        for s, tgt in enumerate(self.targets):
            total = self.source_edges[s].sum(-1) + self.bias[s]
            if self.error_edges[s] is not None:
                total = total + self.error_edges[s]
            # relative to the largest target of the stage: pre-activations near zero would
            # otherwise turn rounding error into huge relative errors
            scale = float(tgt.abs().max())
            if scale > 0:
                worst = max(worst, float((total - tgt).abs().max()) / scale)
        return worst


def _jacobian(out: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """``(B, d_out, *leaf.shape[1:])``: d out[b, j] / d leaf[b], cells independent in the block."""
    d_out = out.shape[1]
    eye = torch.eye(d_out, dtype=out.dtype).unsqueeze(1).expand(d_out, *out.shape).contiguous()
    if leaf.ndim == 2:  # vectorised backward passes (measured faster for the MLP)
        try:
            (g,) = torch.autograd.grad(out, leaf, grad_outputs=eye, is_grads_batched=True,
                                       retain_graph=True)
            return g.transpose(0, 1)
        except RuntimeError:  # an op without a batching rule
            pass
    # one backward pass per output row, all cells of the block at once (3x faster than the
    # vectorised form for the transformer's token sequences)
    g = torch.stack([torch.autograd.grad(out, leaf, grad_outputs=eye[j],
                                         retain_graph=True)[0] for j in range(d_out)])
    return g.transpose(0, 1)


def attribute_block(model: torch.nn.Module, x: torch.Tensor,
                    saes: list[SAEHook]) -> BlockAttribution:
    """Exact attribution of every SAE feature's pre-activation and of the logit, for ``x``.

    ``x: (B, n_genes)`` log-normalised expression over the model's genes, in the model's dtype.
    ``saes`` must be in forward order (:func:`check_sae_hooks`). The model is put in eval mode.
    """
    model.eval()
    lin = _Linearised(model, saes)
    token = _is_token_model(model)
    src = x.detach().clone().requires_grad_(not token)
    with model.hooks(lin.fns()):
        model(src)
    if not token:
        lin.leaves["input"] = src
    acts = {s.hook: lin.values[s.hook].detach() for s in saes}
    logits = lin.values["logits"].detach()
    target_vals = [lin.values[s.hook] for s in saes] + [lin.values["logits"].unsqueeze(-1)]
    leaves = [lin.leaves["input"]] + [lin.leaves[s.hook] for s in saes]
    jacs = [_jacobian(t, leaf) for t, leaf in zip(target_vals, leaves)]
    # offsets: the same frozen model with every source at zero
    lin.zero_source = True
    with torch.no_grad(), model.hooks(lin.fns()):
        model(model.gene_mean.expand_as(x) if not token else x)
    offsets = [lin.values[s.hook] for s in saes] + [lin.values["logits"].unsqueeze(-1)]

    readouts = [s.readout() for s in saes]
    one = torch.ones(1, 1, dtype=x.dtype)
    readouts.append((one, torch.zeros(1, dtype=x.dtype)))

    with torch.no_grad():
        features, errors = [], []
        for s in saes:
            a = acts[s.hook]
            f = s.sae.encode(a)
            features.append(f)
            errors.append(a - s.sae.decode(f))
        source_edges, error_edges, bias, targets, unit, error_dir = [], [], [], [], [], []
        jac_out: list[torch.Tensor | None] = [None]
        for stage, (jac, off) in enumerate(zip(jacs, offsets)):
            p, b = readouts[stage]
            const_part = p @ off.detach().T  # (n_targets, B)
            if stage == 0:
                if token:
                    emb = leaves[0].detach()[:, 1:]  # (B, T, d) gene tokens
                    per_dim = (jac[:, :, 1:] * emb[:, None]).sum(-1)  # (B, d_out, T)
                    per_token = torch.einsum("td,bdk->btk", p, per_dim)  # (B, n_t, T)
                    ids, values, real = model.tokenize(x)
                    edges = torch.zeros(*per_token.shape[:2], x.shape[1], dtype=x.dtype)
                    idx = ids.unsqueeze(1).expand_as(per_token)
                    edges.scatter_add_(2, idx, per_token * real.unsqueeze(1))
                    genes_in = x.detach()
                else:
                    genes_in = (x - model.gene_mean).detach()
                    edges = torch.einsum("td,bdg->btg", p, jac) * genes_in[:, None, :]
                source_edges.append(edges)
                error_edges.append(None)
                unit.append(None)
                error_dir.append(None)
                bias.append(const_part.T + b)
            else:
                readout_j = torch.einsum("td,bde->bte", p, jac)  # (B, n_targets, d)
                up = saes[stage - 1]
                dirs = up.sae.decoder_directions  # (d_sae, d)
                u = readout_j @ dirs.T  # (B, n_targets, d_sae_up)
                source_edges.append(u * features[stage - 1][:, None, :])
                error_edges.append((readout_j @ errors[stage - 1][:, :, None]).squeeze(-1))
                unit.append(u)
                error_dir.append(readout_j)
                jac_out.append(jac)
                bias.append(readout_j @ up.constant() + const_part.T + b)
            tv = target_vals[stage].detach()
            targets.append(tv @ p.T + b)
    return BlockAttribution(source_edges, error_edges, bias, targets, unit, error_dir, jac_out,
                            features, errors, logits, genes_in)


def gene_attribution(
    model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gene-level attribution of the case logit: one linearised backward pass per cell block.

    Returns ``(contributions (cells, n_genes), bias (cells,), logits (cells,))`` with
    ``contributions.sum(1) + bias == logits`` exactly (up to floating point): the frozen-factor
    linearisation of :func:`attribute_block` with no SAE, genes as the only sources.
    """
    contrib, biases, logits = [], [], []
    for i in range(0, len(x), batch_size):
        block = attribute_block(model, x[i:i + batch_size], [])
        contrib.append(block.source_edges[0][:, 0].numpy())
        biases.append(block.bias[0][:, 0].numpy())
        logits.append(block.logits.numpy())
    return np.concatenate(contrib), np.concatenate(biases), np.concatenate(logits)


def integrated_gradients(
    model: torch.nn.Module, x: torch.Tensor, *, baseline: torch.Tensor | None = None,
    steps: int = 50, batch_size: int = 256,
) -> np.ndarray:
    """Integrated Gradients of the case logit w.r.t. the expression input, ``(cells, n_genes)``.

    Trapezoid rule over ``steps`` points on the straight path from ``baseline`` (default: the
    MLP's training mean expression, or zero expression for the transformer, whose unexpressed
    genes are absent tokens) to ``x``. For the transformer the path moves token values only
    (which genes are tokens is decided by ``x``), as a gradient through the input can.
    """
    model.eval()
    if baseline is None:
        baseline = (model.gene_mean.expand_as(x) if hasattr(model, "gene_mean")
                    else torch.zeros_like(x))
    alphas = torch.linspace(0, 1, steps + 1, dtype=x.dtype)
    w = torch.full((steps + 1,), 1.0 / steps, dtype=x.dtype)
    w[0] = w[-1] = 0.5 / steps
    out = []
    for i in range(0, len(x), batch_size):
        xb, bb = x[i:i + batch_size], baseline[i:i + batch_size]
        total = torch.zeros_like(xb)
        for a, wa in zip(alphas, w):
            point = (bb + a * (xb - bb)).detach().requires_grad_(True)
            if hasattr(model, "tokenize"):  # keep x's token set along the path
                point = _keep_tokens(point, xb)
            (g,) = torch.autograd.grad(model(point).logits.sum(), point)
            total += wa * g
        out.append((total * (xb - bb)).detach().numpy())
    return np.concatenate(out)


def _keep_tokens(point: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Along an IG path for the transformer, genes expressed in ``x`` stay (barely) expressed,
    so the token set does not change with the path position."""
    return torch.where(x > 0, point.clamp(min=1e-6), point)
