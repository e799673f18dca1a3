"""Building blocks shared by the classifiers, written out so that every nonlinearity has a hook.

Each nonlinearity is split into a *linear part* and a *multiplicative factor* that passes a hook
point: LayerNorm's 1/std (``ln*_scale``), attention's softmax pattern (``pattern``) and the GELU
gate Φ(x) (``gate``). Freezing those factors (replacing them with detached copies through the
hooks) makes the model linear in its input — the linearisation attribution graphs rely on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.errors import InputError
from models.hooks import HookPoint

__all__ = ["Attention", "Block", "GatedMLP", "HookedLayerNorm", "PostLNBlock"]


class HookedLayerNorm(nn.Module):
    """LayerNorm whose 1/sqrt(var + eps) factor passes the hook point ``scale``."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.hook_scale = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale(torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps))
        return centred * scale * self.weight + self.bias


class GatedMLP(nn.Module):
    """d -> d_ff -> d with the activation written as x * gate(x); the gate passes hook ``gate``.

    ``act="gelu"``: exact GELU, gate Φ(x); ``act="relu"``: gate 1[x > 0] (as in Geneformer).
    """

    def __init__(self, d: int, d_ff: int, dropout: float, act: str = "gelu") -> None:
        super().__init__()
        if act not in ("gelu", "relu"):
            msg = f"activation must be 'gelu' or 'relu', got {act!r}"
            raise InputError(msg)
        self.act = act
        self.fc_in = nn.Linear(d, d_ff)
        self.fc_out = nn.Linear(d_ff, d)
        self.drop = nn.Dropout(dropout)
        self.hook_gate = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.fc_in(x)
        if self.act == "relu":
            gate = (pre > 0).to(pre.dtype)
        else:
            gate = 0.5 * (1.0 + torch.erf(pre / math.sqrt(2.0)))
        return self.fc_out(self.drop(pre * self.hook_gate(gate)))


class Attention(nn.Module):
    """Multi-head self-attention; the softmax pattern passes the hook ``pattern``."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d % n_heads:
            msg = f"d_model ({d}) must be divisible by n_heads ({n_heads})"
            raise InputError(msg)
        self.n_heads = n_heads
        self.d_head = d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.hook_pattern = HookPoint()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # x: (cells, seq, d); key_mask: (cells, seq) True where the token is real
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (cells, heads, seq, seq)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = (self.drop(pattern) @ v).transpose(1, 2).reshape(b, s, d)
        return self.out(z)


class Block(nn.Module):
    """Pre-LN residual block: h += attn(LN(h)) (transformer only); h += mlp(LN(h))."""

    def __init__(self, d: int, d_ff: int, n_heads: int | None, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = Attention(d, n_heads, dropout) if n_heads else None
        self.ln1 = HookedLayerNorm(d, eps) if n_heads else None
        self.ln2 = HookedLayerNorm(d, eps)
        self.mlp = GatedMLP(d, d_ff, dropout)
        self.drop = nn.Dropout(dropout)
        self.hook_attn_out = HookPoint() if n_heads else None
        self.hook_mlp_out = HookPoint()
        self.hook_resid = HookPoint()

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.attn is not None:
            h = h + self.drop(self.hook_attn_out(self.attn(self.ln1(h), key_mask)))
        h = h + self.drop(self.hook_mlp_out(self.mlp(self.ln2(h))))
        return self.hook_resid(h)


class PostLNBlock(nn.Module):
    """Post-LN residual block as in BERT: h = LN1(h + attn(h)); h = LN2(h + mlp(h)).

    Same hook names as :class:`Block` (``ln1.scale``, ``pattern``, ``attn_out``, ``ln2.scale``,
    ``gate``, ``mlp_out``, ``resid``), so attribution and interventions treat both alike.
    """

    def __init__(self, d: int, d_ff: int, n_heads: int, dropout: float, eps: float = 1e-12,
                 act: str = "gelu") -> None:
        super().__init__()
        self.attn = Attention(d, n_heads, dropout)
        self.ln1 = HookedLayerNorm(d, eps)
        self.mlp = GatedMLP(d, d_ff, 0.0, act)
        self.ln2 = HookedLayerNorm(d, eps)
        self.drop = nn.Dropout(dropout)
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid = HookPoint()

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(h + self.drop(self.hook_attn_out(self.attn(h, key_mask))))
        h = self.ln2(h + self.drop(self.hook_mlp_out(self.mlp(h))))
        return self.hook_resid(h)
