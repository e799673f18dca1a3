"""Bring your own model: a locally saved, randomly initialised Geneformer-like BertForMaskedLM
checkpoint is loaded (never unpickled, never fetched), mapped to the data's genes and run through
the whole pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

from discovery.io.contract import InputError
from discovery.io.simulate import simulate
from models import load_classifier
from models.pretrained import from_bert_checkpoint, map_genes
from pipelines.cli import main
from tests.conftest import TINY

SPECIAL = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


def _checkpoint(path, genes: list[str], *, act: str = "relu", n_extra: int = 20) -> dict:
    """A Geneformer-like BertForMaskedLM (random weights) saved to ``path`` with a JSON token
    dictionary holding ``genes`` plus ``n_extra`` genes the data does not have."""
    vocab = dict(SPECIAL)
    for g in [*genes, *(f"NOTINDATA{i}" for i in range(n_extra))]:
        vocab[g] = len(vocab)
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                     hidden_act=act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForMaskedLM(cfg).save_pretrained(path, safe_serialization=True)
    (path / "token_dictionary.json").write_text(json.dumps(vocab))
    return vocab


@pytest.fixture(scope="module")
def tiny_genes() -> list[str]:
    c = TINY["cohort"]
    adata = simulate("alzheimers", n_donors=c["n_donors"], cells_per_donor=c["cells_per_donor"],
                     n_genes=c["n_genes"], seed=0)
    return adata.var_names.tolist()


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_encoder_computes_exactly_the_pretrained_bert(tmp_path, act):
    genes = [f"G{i}" for i in range(40)]
    ids = [f"ENSG{i:05d}" for i in range(40)]
    _checkpoint(tmp_path, ids, act=act)
    bert = BertForMaskedLM.from_pretrained(tmp_path).eval()
    model = from_bert_checkpoint(tmp_path, genes, identifiers=ids, max_tokens=16,
                                 dropout=0.0).eval()
    x = torch.rand(6, 40) + 0.1  # every gene expressed: all 16 token slots are real
    tok, _, real = model.tokenize(x)
    assert real.all()
    _, cache = model.run_with_cache(x, ["layer1.resid"])
    input_ids = torch.cat([torch.full((6, 1), SPECIAL["<cls>"]),
                           torch.tensor(model.config.token_ids)[tok]], dim=1)
    with torch.no_grad():
        ref = bert.bert(input_ids=input_ids).last_hidden_state
    # the untrained value path is zero, so the classifier's encoder *is* the checkpoint's
    assert torch.allclose(cache["layer1.resid"], ref, atol=1e-5)
    # tokens come in rank order of expression relative to the gene's typical level
    rel = torch.gather(x / model.gene_scale, 1, tok)
    assert (rel[:, :-1] >= rel[:, 1:]).all()


def test_gene_mapping_reports_coverage_and_refuses_too_little():
    vocab = {**SPECIAL, "A": 4, "B": 5, "C": 6}
    mapped, ids, report = map_genes(["A", "B", "X", "C"], vocab, min_coverage=0.5)
    assert mapped == ["A", "B", "C"] and ids == [4, 5, 6]
    assert report["coverage"] == 0.75 and report["missing_examples"] == ["X"]
    with pytest.raises(InputError, match=r"only 1 of the 4 panel genes \(25%\).*'X', 'Y', 'Z'"):
        map_genes(["A", "X", "Y", "Z"], vocab, min_coverage=0.5)
    with pytest.raises(InputError, match="gene_id_column"):
        map_genes(["ENSG1", "ENSG2"], vocab)


@pytest.mark.slow
def test_whole_pipeline_runs_on_a_local_checkpoint(tmp_path, tiny_genes):
    ckpt = tmp_path / "geneformer-like"
    kept = tiny_genes[::10] + [g for i, g in enumerate(tiny_genes) if i % 10]  # all data genes
    vocab = _checkpoint(ckpt, kept[: int(0.9 * len(kept))])  # 10% of them missing
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--pretrained", str(ckpt), "--out", str(out),
                 "--quiet"]) == 0
    for f in ("hypotheses.json", "plans.json", "report.html", "graphs/index.json",
              "model/model.safetensors", "features/sae_seed0/sae.safetensors"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    cov = metrics["pretrained"]["coverage"]
    assert 0.8 < cov["coverage"] < 1.0 and cov["n_mapped"] < cov["n_panel"]
    assert metrics["pretrained"]["vocab_size"] == len(vocab)
    assert 0 < metrics["pretrained"]["trainable_share"] < 0.1  # frozen encoder: head + value path
    assert metrics["test"]["cell_auroc"] > 0.5

    # frozen: the saved encoder still holds the checkpoint's weights, for the mapped genes' rows
    saved = load_file(out / "model" / "model.safetensors")
    orig = load_file(ckpt / "model.safetensors")
    q, k, v = (orig[f"bert.encoder.layer.1.attention.self.{m}.weight"]
               for m in ("query", "key", "value"))
    assert torch.equal(saved["blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    model = load_classifier(out / "model")
    rows = torch.tensor(model.config.token_ids)
    assert torch.equal(saved["gene_emb.weight"][:-1],
                       orig["bert.embeddings.word_embeddings.weight"][rows])
    assert model.config.source["sha256"]
    x = torch.rand(4, len(model.config.gene_names))
    first = model(x).logits
    assert torch.equal(load_classifier(out / "model")(x).logits, first)  # save -> load exact

    # the attribution graphs add up for this model too: every cohort graph's per-cell
    # completeness error is tiny, and an unpruned graph's edges into the logit plus its bias
    # give the mean logit of its cells
    index = json.loads((out / "graphs" / "index.json").read_text())
    assert index["graphs"], "no cohort graph was built"
    assert all(e["max_completeness_error"] < 1e-4 for e in index["graphs"]), index["graphs"]
    from discovery.get.run import open_run
    from discovery.tl.graphs import GraphSpec, cohort_graph

    run = open_run(out)
    case = run.adata.obs["diagnosis"].astype(str).to_numpy() == "AD"
    g = cohort_graph(run.adata, run.model, run.saes, mask=case, name="all AD cells",
                     spec=GraphSpec(node_threshold=1.0, edge_threshold=1.0, n_boot=0))
    logit = next(n for n, d in g.nodes(data=True) if d.get("kind") == "output")
    total = sum(d["weight"] for _, _, d in g.in_edges(logit, data=True))
    assert abs(total + g.nodes[logit].get("bias", 0.0) - g.graph["mean_logit"]) < 1e-4


def test_fine_tune_changes_the_encoder(tmp_path, tiny_genes):
    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, tiny_genes, act="gelu")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "ft"
    assert main(["train", "--config", str(cfg), "--pretrained", str(ckpt), "--fine-tune",
                 "--out", str(out), "--quiet"]) == 0
    saved = load_file(out / "model" / "model.safetensors")
    orig = load_file(ckpt / "model.safetensors")
    assert not torch.equal(saved["blocks.0.mlp.fc_in.weight"],
                           orig["bert.encoder.layer.0.intermediate.dense.weight"])
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["pretrained"]["trainable_share"] == 1.0


def test_hub_id_is_not_fetched_and_says_how_to_get_a_local_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--pretrained", "ctheodoris/Geneformer",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hub id" in err and "huggingface-cli download ctheodoris/Geneformer" in err
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert not (out / "model").exists()


def test_pickled_checkpoint_and_dictionary_are_refused(tmp_path, tiny_genes, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert main(["train", "--config", str(cfg), "--pretrained", str(pickled),
                 "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "refusing to load" in capsys.readouterr().err

    pkl_vocab = tmp_path / "pkl_vocab"
    _checkpoint(pkl_vocab, tiny_genes)
    (pkl_vocab / "token_dictionary.json").rename(pkl_vocab / "token_dictionary.pkl")
    assert main(["train", "--config", str(cfg), "--pretrained", str(pkl_vocab),
                 "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "refusing to read" in err and "token_dictionary.json" in err
