"""Bring your own model: a pretrained gene-token BERT (Geneformer-like) as the cell classifier.

A user's checkpoint is a local Hugging Face directory: ``config.json`` (``model_type: bert``, as
``BertForMaskedLM`` / ``BertModel`` write it), ``model.safetensors`` and a gene vocabulary —
``token_dictionary.json`` (``{gene: token id}``, Geneformer's dictionary converted from its
pickle), ``vocab.json`` (same shape) or ``vocab.txt`` (one token per line; line number = id).
Nothing is fetched from a hub and no pickle is ever read: a hub id gets an error that says how to
download it to a directory on a connected machine; a pickled checkpoint or dictionary is refused.

How a cell becomes input (Geneformer's encoding, plus one new, trainable path):

1. The user's genes are mapped to the vocabulary (by ``var_names`` or by a ``var`` column of
   identifiers such as Ensembl ids); coverage is reported and a run stops below
   ``min_coverage``. Only the vocabulary rows of the mapped genes are kept, so the saved
   classifier is small and carries its gene list and token ids.
2. Token choice and order: the cell's ``max_tokens`` expressed genes ranked by level relative to
   the gene's typical non-zero level (Geneformer's rank-value encoding; ``token_selection``), led
   by the vocabulary's ``<cls>`` / ``[CLS]`` token; the rank is the position id.
3. Embedding: pretrained gene embedding + pretrained position embedding + token-type 0
   embedding, **plus** a new linear embedding of the gene's relative level (``value_emb``,
   initialised to zero so the untrained classifier computes exactly the pretrained encoder). A
   rank-only model has no gradient with respect to expression; the value path gives attribution
   graphs and integrated gradients a continuous input, as in scGPT.
4. The BERT encoder (post-LN blocks, GELU or ReLU) written with the hooked layers of
   :mod:`models.layers`, so hook points and the frozen-factor linearisation are the same as for
   the project's own transformer; mean over the gene tokens (``pooling="mean"``, how Geneformer
   embeds cells) or the ``[CLS]`` state feeds ``ln_f`` -> ``pooled`` -> linear head -> ``logits``.

``freeze=True`` (default) trains only the value embedding, ``ln_f`` and the head on top of the
frozen pretrained encoder; ``freeze=False`` fine-tunes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig

from models.base import CellClassifierBase, CellClassifierOutput
from models.budget import check_memory, parameter_count
from models.errors import InputError
from models.layers import HookedLayerNorm, PostLNBlock
from models.transformer import TOKEN_SELECTIONS, GeneTokenMixin

__all__ = [
    "PretrainedGeneEncoderConfig",
    "PretrainedGeneEncoderForCellClassification",
    "checkpoint_sha256",
    "from_bert_checkpoint",
    "map_genes",
    "read_bert_checkpoint",
]

VOCAB_FILES = ("token_dictionary.json", "vocab.json", "vocab.txt")
CLS_TOKENS = ("<cls>", "[CLS]")
ACTIVATIONS = ("gelu", "relu")
POOLINGS = ("mean", "cls")


def _input_error(msg: str) -> Exception:
    return InputError(msg)


# ------------------------------------------------------------------------------- the model
class PretrainedGeneEncoderConfig(PretrainedConfig):
    model_type = "discovery-pretrained-gene-encoder"

    def __init__(
        self,
        gene_names: list[str] | None = None,
        token_ids: list[int] | None = None,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 128,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        max_tokens: int = 64,
        dropout: float = 0.1,
        token_selection: str = "relative",
        pooling: str = "mean",
        freeze: bool = True,
        source: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.gene_names = list(gene_names or [])
        self.token_ids = [int(t) for t in (token_ids or [])]
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_ff = d_ff
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.max_tokens = max_tokens
        self.dropout = dropout
        self.token_selection = token_selection
        self.pooling = pooling
        self.freeze = bool(freeze)
        #: where the pretrained weights came from: path, sha256, vocabulary file, gene coverage
        self.source = dict(source or {})
        for name, value, allowed in (("hidden_act", hidden_act, ACTIVATIONS),
                                     ("token_selection", token_selection, TOKEN_SELECTIONS),
                                     ("pooling", pooling, POOLINGS)):
            if value not in allowed:
                msg = f"{name} must be one of {allowed}, got {value!r}"
                raise InputError(msg)
        super().__init__(**kwargs)


class PretrainedGeneEncoderForCellClassification(GeneTokenMixin, CellClassifierBase):
    """Case-vs-control classifier on a pretrained gene-token BERT; input ``expr: (cells, genes)``.

    Hook points: ``emb_ln.scale``, ``embed``, ``layer{i}.{pattern,attn_out,ln1.scale,gate,
    mlp_out,ln2.scale,resid}``, ``ln_f.scale``, ``pooled``, ``logits``.
    """

    config_class = PretrainedGeneEncoderConfig
    base_model_prefix = "pretrained_gene_encoder"

    def __init__(self, config: PretrainedGeneEncoderConfig) -> None:
        super().__init__(config)
        n_genes, d = self._n_genes(), config.hidden_size
        self.gene_emb = nn.Embedding(n_genes + 1, d)  # the panel genes' rows; last row [CLS]
        self.pos_emb = nn.Embedding(config.max_tokens + 1, d)
        self.type_emb = nn.Parameter(torch.zeros(d))
        self.value_emb = nn.Linear(1, d)  # new: not in the pretrained checkpoint
        self.emb_ln = HookedLayerNorm(d, config.layer_norm_eps)
        self.emb_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            PostLNBlock(d, config.d_ff, config.n_heads, config.dropout, config.layer_norm_eps,
                        config.hidden_act)
            for _ in range(config.n_layers)
        )
        self._add_head(d, 1e-5)
        self.register_buffer("gene_scale", torch.ones(n_genes))
        self._finish_init()
        nn.init.zeros_(self.value_emb.weight)
        nn.init.zeros_(self.value_emb.bias)
        if config.freeze:
            for module in (self.gene_emb, self.pos_emb, self.emb_ln, self.blocks):
                module.requires_grad_(False)
            self.type_emb.requires_grad_(False)

    def forward(self, expr: torch.Tensor, labels: torch.Tensor | None = None,
                sample_weight: torch.Tensor | None = None) -> CellClassifierOutput:
        ids, values, real = self.tokenize(expr)
        h = self.embed_tokens(ids, values)
        h = h + self.pos_emb.weight[: h.shape[1]] + self.type_emb
        h = self.hook_embed(self.emb_drop(self.emb_ln(h)))  # (cells, 1 + tokens, d)
        mask = self.key_mask(real)
        for block in self.blocks:
            h = block(h, mask)
        if self.config.pooling == "mean":
            w = real.unsqueeze(-1).to(h.dtype)
            h = (h[:, 1:] * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self._classify(h, labels, sample_weight)


# ------------------------------------------------------------------- reading a checkpoint
@dataclass
class BertCheckpoint:
    """A user's pretrained BERT read from a local directory (weights on CPU, float32)."""

    path: Path
    config: dict[str, Any]
    vocab: dict[str, int]
    vocab_file: str
    weights: dict[str, torch.Tensor]
    sha256: str

    @property
    def cls_token(self) -> str | None:
        return next((t for t in CLS_TOKENS if t in self.vocab), None)


def resolve_checkpoint(ref: str | Path) -> Path:
    """A local checkpoint directory, or an :class:`InputError` saying how to get one.

    Never contacts a hub (whatever ``HF_HUB_OFFLINE`` says): a reference that is not a local
    directory but looks like a hub id (``org/name``) gets the commands to download it elsewhere.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    text = str(ref)
    looks_like_hub_id = (text.count("/") == 1 and not text.startswith((".", "/", "~"))
                         and not path.exists())
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if looks_like_hub_id:
        msg = (
            f"{text!r} is not a local directory; it looks like a Hugging Face hub id. discovery "
            f"never downloads models{' (HF_HUB_OFFLINE is set)' if offline else ''}. On a machine "
            f"with internet run `huggingface-cli download {text} --local-dir DIR` (or "
            "`huggingface_hub.snapshot_download(repo_id=..., local_dir=DIR)`), copy DIR here, and "
            "pass DIR as the checkpoint"
        )
        raise _input_error(msg)
    msg = f"checkpoint directory {text!r} does not exist; pass a local Hugging Face directory"
    raise _input_error(msg)


def read_vocabulary(path: Path) -> tuple[dict[str, int], str]:
    """The gene vocabulary of a checkpoint directory: ``{token: id}`` and the file it came from."""
    for name in VOCAB_FILES:
        f = path / name
        if not f.is_file():
            continue
        if name.endswith(".txt"):
            tokens = [t.strip() for t in f.read_text(encoding="utf-8").splitlines()]
            vocab = {t: i for i, t in enumerate(tokens) if t}
        else:
            try:
                raw = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                msg = f"{f}: not valid JSON ({err.msg} at line {err.lineno})"
                raise _input_error(msg) from err
            if not isinstance(raw, dict) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
                msg = f"{f} must map each gene / token to an integer token id"
                raise _input_error(msg)
            vocab = {str(k): int(v) for k, v in raw.items()}
        if not vocab:
            msg = f"{f} is empty; the checkpoint needs a gene vocabulary"
            raise _input_error(msg)
        return vocab, name
    pickles = sorted(p.name for p in path.glob("*.pkl")) + sorted(p.name for p in path.glob(
        "*.pickle"))
    if pickles:
        msg = (
            f"refusing to read {path / pickles[0]}: pickled dictionaries can run code when "
            "loaded. Convert it once, on a machine where you trust it, with "
            "`json.dump(pickle.load(open(P, 'rb')), open(DIR / 'token_dictionary.json', 'w'))`"
        )
        raise _input_error(msg)
    msg = (f"{path} has no gene vocabulary; add one of {', '.join(VOCAB_FILES)} "
           "(token_dictionary.json: {gene id: token id})")
    raise _input_error(msg)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checkpoint_dir(ref: str | Path) -> Path:
    """The local checkpoint directory of ``ref``, holding config.json + model.safetensors."""
    from models import require_safetensors

    path = resolve_checkpoint(ref)
    require_safetensors(path, "model.safetensors", "a pretrained checkpoint",
                        "save it with `model.save_pretrained(DIR, safe_serialization=True)`")
    return path


def checkpoint_sha256(ref: str | Path) -> str:
    """sha256 of a checkpoint directory's ``model.safetensors`` (identifies the weights)."""
    return _sha256(_checkpoint_dir(ref) / "model.safetensors")


def read_bert_checkpoint(ref: str | Path) -> BertCheckpoint:
    """Read a local BERT checkpoint directory (config, safetensors weights, gene vocabulary)."""
    path = _checkpoint_dir(ref)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        msg = f"{path / 'config.json'}: not valid JSON ({err.msg})"
        raise _input_error(msg) from err
    if config.get("model_type") != "bert":
        msg = (f"{path}: model_type {config.get('model_type')!r} is not supported; a pretrained "
               "checkpoint must be a BERT encoder (model_type 'bert', e.g. Geneformer's "
               "BertForMaskedLM)")
        raise _input_error(msg)
    if config.get("position_embedding_type", "absolute") != "absolute":
        msg = f"{path}: only absolute position embeddings are supported"
        raise _input_error(msg)
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        msg = (f"{path}: hidden_act {config.get('hidden_act')!r} is not supported; "
               f"choose one of {ACTIVATIONS}")
        raise _input_error(msg)
    vocab, vocab_file = read_vocabulary(path)
    weights: dict[str, torch.Tensor] = {}
    size = (path / "model.safetensors").stat().st_size
    check_memory(size // 4, f"the checkpoint {path}", purpose="load",
                 fix="Use a smaller checkpoint, or a machine with more memory.")
    try:
        with safe_open(path / "model.safetensors", framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                name = key.removeprefix("bert.")
                if name.startswith(("embeddings.", "encoder.")):
                    weights[name] = f.get_tensor(key).float()
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        msg = f"{path / 'model.safetensors'} could not be read ({err}); is the file complete?"
        raise _input_error(msg) from err
    return BertCheckpoint(path, config, vocab, vocab_file, weights,
                          _sha256(path / "model.safetensors"))


# ------------------------------------------------------------------------- gene mapping
def map_genes(genes: list[str], vocab: dict[str, int], *, identifiers: list[str] | None = None,
              min_coverage: float = 0.5) -> tuple[list[str], list[int], dict[str, Any]]:
    """Map the panel ``genes`` to vocabulary token ids.

    ``identifiers`` (same length as ``genes``, e.g. Ensembl ids from a ``var`` column) are looked
    up instead of the names when given. Returns (mapped genes, their token ids, a coverage
    report); raises :class:`InputError` naming how many and which genes are missing when the
    covered share is below ``min_coverage``.
    """
    keys = identifiers if identifiers is not None else genes
    mapped = [(g, vocab[str(k)]) for g, k in zip(genes, keys) if str(k) in vocab]
    missing = [g for g, k in zip(genes, keys) if str(k) not in vocab]
    coverage = len(mapped) / max(len(genes), 1)
    report = {"n_panel": len(genes), "n_mapped": len(mapped), "coverage": round(coverage, 4),
              "missing_examples": missing[:20], "matched_on": "identifiers"
              if identifiers is not None else "var_names"}
    if coverage < min_coverage or not mapped:
        example = next(iter(vocab))
        msg = (
            f"only {len(mapped)} of the {len(genes)} panel genes ({coverage:.0%}) are in the "
            f"checkpoint's vocabulary of {len(vocab)} tokens (at least {min_coverage:.0%} needed);"
            f" missing e.g. {missing[:10]}. The vocabulary uses identifiers like {example!r}: "
            "set model.arch.gene_id_column to a var column holding such ids, or lower "
            "model.arch.min_coverage"
        )
        raise _input_error(msg)
    return [g for g, _ in mapped], [t for _, t in mapped], report


# ----------------------------------------------------------------------------- building
def _load_encoder(model: PretrainedGeneEncoderForCellClassification, ckpt: BertCheckpoint,
                  token_ids: list[int], cls_id: int | None) -> None:
    w = ckpt.weights

    def get(name: str) -> torch.Tensor:
        if name not in w:
            msg = f"{ckpt.path / 'model.safetensors'} lacks the tensor {name!r} of a BERT encoder"
            raise _input_error(msg)
        return w[name]

    word = get("embeddings.word_embeddings.weight")
    if max(token_ids + [cls_id or 0]) >= word.shape[0]:
        msg = (f"{ckpt.path}: the vocabulary has token ids up to {max(token_ids)} but the "
               f"embedding has {word.shape[0]} rows; vocabulary and weights do not match")
        raise _input_error(msg)
    cls_row = word[cls_id] if cls_id is not None else word.mean(0)
    sd = {"gene_emb.weight": torch.cat([word[token_ids], cls_row[None]]),
          "pos_emb.weight": get("embeddings.position_embeddings.weight")[
              : model.config.max_tokens + 1],
          "type_emb": get("embeddings.token_type_embeddings.weight")[0],
          "emb_ln.weight": get("embeddings.LayerNorm.weight"),
          "emb_ln.bias": get("embeddings.LayerNorm.bias")}
    for i in range(model.config.n_layers):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            sd[b + "attn.qkv." + part] = torch.cat(
                [get(p + f"attention.self.{m}.{part}") for m in ("query", "key", "value")])
            sd[b + "attn.out." + part] = get(p + f"attention.output.dense.{part}")
            sd[b + "ln1." + part] = get(p + f"attention.output.LayerNorm.{part}")
            sd[b + "mlp.fc_in." + part] = get(p + f"intermediate.dense.{part}")
            sd[b + "mlp.fc_out." + part] = get(p + f"output.dense.{part}")
            sd[b + "ln2." + part] = get(p + f"output.LayerNorm.{part}")
    own = model.state_dict()
    bad = [k for k, v in sd.items() if own[k].shape != v.shape]
    if bad:
        msg = (f"{ckpt.path}: tensor shapes do not match its config.json ({bad[0]}: "
               f"{tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
        raise _input_error(msg)
    model.load_state_dict(sd, strict=False)


def from_bert_checkpoint(
    checkpoint: str | Path,
    genes: list[str],
    *,
    identifiers: list[str] | None = None,
    max_tokens: int = 64,
    freeze: bool = True,
    pooling: str = "mean",
    token_selection: str = "relative",
    dropout: float = 0.1,
    min_coverage: float = 0.5,
) -> PretrainedGeneEncoderForCellClassification:
    """A classifier whose encoder is the pretrained BERT at ``checkpoint`` (a local directory).

    ``genes`` is the data's gene panel; the genes found in the vocabulary become the model's
    genes (``config.gene_names``); ``config.source`` records the checkpoint path, its sha256,
    the vocabulary file and the coverage report.
    """
    ckpt = read_bert_checkpoint(checkpoint)
    mapped, token_ids, coverage = map_genes(genes, ckpt.vocab, identifiers=identifiers,
                                            min_coverage=min_coverage)
    c = ckpt.config
    n_pos = int(c.get("max_position_embeddings", 512))
    if max_tokens + 1 > n_pos:
        msg = (f"max_tokens {max_tokens} + [CLS] exceeds the checkpoint's "
               f"{n_pos} position embeddings; lower model.arch.max_tokens")
        raise _input_error(msg)
    cls_token = ckpt.cls_token
    if cls_token is None and pooling == "cls":
        msg = (f"the checkpoint's vocabulary has no [CLS] token ({' / '.join(CLS_TOKENS)}); "
               "use pooling 'mean'")
        raise _input_error(msg)
    config = PretrainedGeneEncoderConfig(
        gene_names=mapped, token_ids=token_ids,
        hidden_size=int(c["hidden_size"]), n_layers=int(c["num_hidden_layers"]),
        n_heads=int(c["num_attention_heads"]), d_ff=int(c["intermediate_size"]),
        hidden_act=c.get("hidden_act", "gelu"), layer_norm_eps=float(c.get("layer_norm_eps",
                                                                           1e-12)),
        max_tokens=max_tokens, dropout=dropout, token_selection=token_selection,
        pooling=pooling, freeze=freeze,
        source={"checkpoint": str(ckpt.path.resolve()), "sha256": ckpt.sha256,
                "vocabulary": ckpt.vocab_file, "vocab_size": len(ckpt.vocab),
                "cls_token": cls_token, "architectures": c.get("architectures"),
                "coverage": coverage},
    )
    check_memory(parameter_count(PretrainedGeneEncoderForCellClassification, config),
                 f"the encoder of {ckpt.path}", purpose="train",
                 fix="Check the checkpoint's config.json (hidden_size, num_hidden_layers, "
                     "intermediate_size), or freeze the encoder (model.arch.freeze).")
    model = PretrainedGeneEncoderForCellClassification(config)
    _load_encoder(model, ckpt, token_ids, ckpt.vocab.get(cls_token) if cls_token else None)
    return model


def trainable_share(model: nn.Module) -> float:
    """Share of the model's parameters that training updates (small when the encoder is frozen)."""
    n = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return float(np.sum([k for k, r in n if r]) / max(np.sum([k for k, _ in n]), 1))
