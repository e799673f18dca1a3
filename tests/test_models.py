"""Classifiers: hook points, save/load, vocabulary checks, honest training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from discovery.io.contract import InputError
from discovery.tl import classifier
from models import CLASSIFIERS, load_classifier
from models.training import TrainConfig, class_balance_weights, group_balance_weights

#: held-out donor AUROC bound on >= 6 + 6 test donors. A random ranking reaches 0.75 about 7%
#: of the time (Mann-Whitney normal approximation: z = 0.25 / 0.174 = 1.44); the alzheimers
#: scenario leaves ~15% of case donors without any program, which caps what a model can reach
#: on 6 case donors, so the bound is paired with a control trained on permuted donor labels
MIN_DONOR_AUROC = 0.75
#: the real labels must beat the permuted-label control by this much on the same test donors
MIN_GAP_OVER_PERMUTED = 0.25


@pytest.fixture(scope="module")
def pp_wide():
    """48 donors x 80 cells: 12 test donors (6 + 6), enough to tell learning from luck."""
    from discovery.io.simulate import simulate
    from discovery.pp.preprocess import preprocess

    a = simulate("alzheimers", seed=3, n_donors=48, cells_per_donor=80, n_genes=600)
    preprocess(a)
    return a


def _permuted_labels(adata):
    """A copy whose discovery (train + val) donors carry shuffled diagnoses; test donors keep
    theirs, so a model trained on it can only reach the held-out donors by chance."""
    from discovery.io.contract import get_keys

    b = adata.copy()
    k = get_keys(b)
    disc = b.obs["split"].isin(["train", "val"]).to_numpy()
    donor = b.obs[k.donor_key].astype(str).to_numpy()
    labels = b.obs[k.label_key].astype(str).to_numpy().copy()
    first = pd.Series(labels[disc], index=donor[disc]).groupby(level=0).first()
    shuffled = dict(zip(first.index, np.random.default_rng(0).permutation(first.to_numpy())))
    labels[disc] = [shuffled[d] for d in donor[disc]]
    b.obs[k.label_key] = labels
    return b


def _check_held_out(test: dict, control: dict | None = None) -> None:
    assert min(test["n_case_donors"], test["n_control_donors"]) >= 6, test
    assert test["donor_auroc"] >= MIN_DONOR_AUROC, test
    if control is not None:
        assert test["donor_auroc"] - control["donor_auroc"] >= MIN_GAP_OVER_PERMUTED, (
            test["donor_auroc"], control["donor_auroc"])


GENES = [f"G{i}" for i in range(40)]


def _tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg_cls, model_cls = CLASSIFIERS[kind]
    arch = {"transformer": dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, max_tokens=12),
            "mlp": dict(d_model=16, n_layers=2, d_ff=32),
            # a user's BERT (sizes from its checkpoint; see tests/test_pretrained.py)
            "pretrained": dict(token_ids=list(range(5, 45)), hidden_size=16, n_layers=2,
                               n_heads=2, d_ff=32, max_tokens=12, hidden_act="relu")}[kind]
    model = model_cls(cfg_cls(gene_names=GENES, **arch)).eval()
    with torch.no_grad():  # non-trivial buffers, so save/load must carry them
        if hasattr(model, "value_emb"):
            model.value_emb.weight.normal_()
        if hasattr(model, "gene_scale"):
            model.gene_scale.uniform_(0.5, 2.0)
        if hasattr(model, "gene_mean"):
            model.gene_mean.uniform_(0, 1)
            model.gene_std.uniform_(0.5, 2)
    return model


def _expr(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, len(GENES), generator=g) * 3
    return x * (torch.rand(n, len(GENES), generator=g) > 0.4)


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
class TestHooks:
    def test_hook_names_shared_in_spirit(self, kind):
        names = _tiny(kind).hook_names
        for n in ("embed", "layer0.mlp_out", "layer0.resid", "layer1.resid", "pooled", "logits"):
            assert n in names
        if kind == "transformer":
            assert "layer0.attn_out" in names and "layer0.pattern" in names

    def test_identity_hook_is_bit_identical(self, kind):
        model, x = _tiny(kind), _expr()
        ref = model(x).logits
        out = model.run_with_hooks(x, {n: (lambda a, name: a) for n in model.hook_names}).logits
        assert torch.equal(ref, out)

    def test_replacing_with_cached_activation_is_exact(self, kind):
        model, x = _tiny(kind), _expr()
        ref, cache = model.run_with_cache(x)
        for name in model.hook_names:
            out = model.run_with_hooks(x, {name: lambda a, n: cache[n].clone()}).logits
            assert torch.equal(ref.logits, out), name

    def test_zeroing_changes_logits(self, kind):
        model, x = _tiny(kind), _expr()
        ref = model(x).logits
        for name in ("embed", "layer0.mlp_out", "pooled"):
            out = model.run_with_hooks(x, {name: lambda a, n: torch.zeros_like(a)}).logits
            assert not torch.allclose(ref, out), name

    def test_unknown_hook_name(self, kind):
        model = _tiny(kind)
        with pytest.raises(KeyError, match="unknown hook point\\(s\\) \\['nope'\\]"):
            model.run_with_cache(_expr(), ["nope"])

    def test_save_load_identical_logits_safetensors_only(self, kind, tmp_path):
        model, x = _tiny(kind), _expr()
        model.save_pretrained(tmp_path, safe_serialization=True)
        files = {p.name for p in tmp_path.iterdir()}
        assert files == {"config.json", "model.safetensors"}  # nothing pickled
        loaded = load_classifier(tmp_path)
        assert torch.equal(model(x).logits, loaded(x).logits)
        assert json.loads((tmp_path / "config.json").read_text())["gene_names"] == GENES


def test_load_rejects_non_checkpoint(tmp_path):
    with pytest.raises(InputError, match="needs config.json and model.safetensors"):
        load_classifier(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InputError, match="refusing to load .*pytorch_model.bin: pickle"):
        load_classifier(tmp_path)


def test_class_balance_weights():
    w = class_balance_weights(np.array([1, 0, 0, 0]))
    assert w[0] * 1 == pytest.approx(w[1:].sum())  # each class carries the same total weight
    with pytest.raises(ValueError, match="one class only"):
        class_balance_weights(np.zeros(5))


def test_group_balance_weights_make_batch_uninformative():
    """Each (class, batch) cell carries the same total weight, so the weighted share of cases
    is 1/2 in every batch, however aligned batch and diagnosis are."""
    y = np.array([1] * 7 + [0] * 3 + [1] * 2 + [0] * 8)
    batch = np.array(["B2"] * 10 + ["B1"] * 10)
    w = group_balance_weights(y, batch)
    assert w.mean() == pytest.approx(1.0)
    for b in ("B1", "B2"):
        m = batch == b
        assert w[m & (y == 1)].sum() == pytest.approx(w[m & (y == 0)].sum())
    with pytest.raises(ValueError, match="one class only"):
        group_balance_weights(np.ones(4), np.array(["a", "a", "b", "b"]))


def test_batch_balance_falls_back_when_a_class_batch_cell_is_too_thin(pp_small):
    """``balance='class_batch'`` is used when every class x batch cell of the training donors
    has >= 2 donors, and falls back to class weights, saying why, when one has fewer."""
    from discovery.io.contract import get_keys

    keys = get_keys(pp_small)
    tr = (pp_small.obs["split"] == "train").to_numpy()
    got = classifier._balance(pp_small, keys, tr, "class_batch")
    cells = got["donors_per_class_batch"]
    assert got["used"] == ("class_batch" if min(cells.values()) >= 2 else "class")
    assert classifier._balance(pp_small, keys, tr, "class") == {"asked": "class",
                                                                 "used": "class"}
    # put every training case donor into one batch and every control into the other
    a = pp_small.copy()
    a.obs["batch"] = np.where(a.obs["diagnosis"] == "AD", "B2", "B1")
    thin = classifier._balance(a, keys, tr, "class_batch")
    assert thin["used"] == "class" and "0 donor(s)" in thin["why"]
    tc = TrainConfig(epochs=1, batch_size=64, balance="class_batch")
    res = classifier.train(a, kind="mlp", arch=dict(d_model=16, d_ff=32), train_config=tc)
    assert res.metrics["training"]["balance"]["used"] == "class"
    with pytest.raises(ValueError, match="balance must be one of"):
        TrainConfig(balance="donor")


def test_train_config_round_trip_and_validation():
    cfg = TrainConfig(epochs=3, lr=1e-2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training settings \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0)


def test_weight_average_is_what_training_returns(pp_wide):
    """With ``ema``, validation and the returned model use the averaged weights: they differ
    from the last step's weights and still learn the held-out donors."""
    pp_wide = pp_wide.copy()
    tc = TrainConfig(epochs=4, lr=2e-3, patience=4, batch_size=64, seed=0, ema=0.9)
    res = classifier.train(pp_wide, kind="mlp", arch=dict(d_model=32, d_ff=64),
                           train_config=tc)
    _check_held_out(res.metrics["test"])
    plain = classifier.train(pp_wide, kind="mlp", arch=dict(d_model=32, d_ff=64),
                             train_config=TrainConfig(**{**tc.to_dict(), "ema": 0.0}))
    w_ema = res.model.head.weight.detach()
    assert not torch.equal(w_ema, plain.model.head.weight.detach())


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_training_learns_from_held_out_donors(pp_wide, kind, tmp_path):
    """Both classifiers order 6 + 6 held-out donors above MIN_DONOR_AUROC and beat the same
    model trained on permuted donor labels by MIN_GAP_OVER_PERMUTED; a saved model predicts the
    same probabilities."""
    pp_small = pp_wide.copy()
    tc = TrainConfig(epochs=6, lr=2e-3, patience=6, batch_size=64, seed=0)
    arch = {"transformer": dict(d_model=32, d_ff=64, max_tokens=32),
            "mlp": dict(d_model=32, d_ff=64)}[kind]
    res = classifier.train(pp_small, kind=kind, arch=arch, train_config=tc)
    test = res.metrics["test"]
    control = classifier.train(_permuted_labels(pp_wide), kind=kind, arch=arch,
                               train_config=tc).metrics["test"]
    _check_held_out(test, control)  # learned disease signal, not noise
    assert test["cell_auroc"] > 0.6, test
    assert "case_prob" in pp_small.obs and pp_small.uns["model"]["params"]["kind"] == kind
    res.save(tmp_path / "m")
    again = classifier.predict(pp_small, classifier.load(tmp_path / "m"))
    np.testing.assert_allclose(again, pp_small.obs["case_prob"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_missing_vocabulary_genes_named(pp_small, tmp_path):
    model = _tiny("mlp")
    with pytest.raises(InputError, match="40 of the model's 40 genes are missing .*'G0'"):
        classifier.predict(pp_small, model)


def test_training_refuses_leaked_donor(pp_small):
    donor = pp_small.obs["donor"].iloc[0]
    idx = np.flatnonzero((pp_small.obs["donor"] == donor).to_numpy())
    split = pp_small.obs["split"].astype(str).to_numpy()
    split[idx[0]] = "test" if split[idx[0]] != "test" else "train"
    pp_small.obs["split"] = split
    with pytest.raises(InputError, match="have cells in more than one split"):
        classifier.train(pp_small, kind="mlp", train_config=TrainConfig(epochs=1))


def test_shortcut_probe_reports_batch_and_qc(pp_small):
    res = classifier.train(pp_small, kind="mlp", arch=dict(d_model=16, d_ff=32),
                           train_config=TrainConfig(epochs=2))
    probe = classifier.shortcut_probe(pp_small, res.model, n_splits=3)
    assert probe["batch"]["kind"] == "batch"
    for group in ("case", "control"):
        entry = probe["batch"][group]
        if entry is not None:
            assert 0 <= entry["balanced_accuracy"] <= 1 and entry["chance"] == 0.5
    assert "r2" in probe["pct_counts_mt"]["case"]
