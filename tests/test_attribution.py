"""Attribution graphs: exact completeness, influence, cohort graphs, interventions, exports."""

from __future__ import annotations

import json

import igraph
import jsonschema
import networkx as nx
import numpy as np
import pytest
import torch

from discovery.io.contract import InputError
from discovery.io.graph_files import CYJS_SCHEMA, export_graph, load_graph
from discovery.tl import classifier, features
from discovery.tl.attribution import SAEHook, attribute_block, check_sae_hooks, gene_attribution
from discovery.tl.graphs import GraphSpec, cohort_graph, influence, population_mask
from discovery.tl.interventions import FeatureEdit, intervene, perturb_genes, validate_graph
from models.mlp import ExpressionMLPConfig, ExpressionMLPForCellClassification
from models.sae import build_sae
from models.training import TrainConfig
from models.transformer import GeneTransformerConfig, GeneTransformerForCellClassification

GENES = [f"G{i}" for i in range(30)]


def _random_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        m = ExpressionMLPForCellClassification(ExpressionMLPConfig(
            gene_names=GENES, d_model=16, n_layers=2, d_ff=32))
    else:
        m = GeneTransformerForCellClassification(GeneTransformerConfig(
            gene_names=GENES, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_tokens=12))
    for p in m.parameters():  # large random weights: strongly nonlinear
        torch.nn.init.normal_(p, std=0.3)
    m = m.double().eval()
    if kind == "mlp":
        m.gene_mean.copy_(torch.rand(len(GENES), dtype=torch.float64))
        m.gene_std.copy_(torch.rand(len(GENES), dtype=torch.float64) + 0.5)
    return m


def _random_saes(model: torch.nn.Module, x: torch.Tensor, hooks: list[str]) -> list[SAEHook]:
    out = []
    for i, h in enumerate(hooks):
        sae = build_sae("batchtopk", d_in=16, d_sae=24, k=4, seed=i).double()
        _, cache = model.run_with_cache(x, [h])
        sae.fit_normalisation(cache[h])
        torch.nn.init.normal_(sae.b_enc, std=0.1)
        torch.nn.init.normal_(sae.b_dec, std=0.1)
        sae.threshold.fill_(0.05)
        out.append(SAEHook(h, sae.eval()))
    return out


def _x(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.relu(torch.randn(n, len(GENES), generator=g, dtype=torch.float64)) * 2


@pytest.mark.parametrize(("kind", "hooks"), [("mlp", ["layer0.resid", "pooled"]),
                                             ("mlp", ["layer1.resid"]),
                                             ("transformer", ["pooled"])])
def test_completeness_is_exact_on_random_models(kind, hooks):
    model, x = _random_model(kind), _x()
    saes = check_sae_hooks(model, _random_saes(model, x, hooks))
    b = attribute_block(model, x, saes)
    assert b.completeness_error() <= 1e-5
    assert b.completeness_error() < 1e-10  # float64: exact up to rounding
    # the decomposed values are the real model's, not the linearisation's own
    _, cache = model.run_with_cache(x, [s.hook for s in saes])
    for layer, s in enumerate(saes):
        torch.testing.assert_close(b.targets[layer], s.sae.pre_acts(cache[s.hook]))
    torch.testing.assert_close(b.targets[-1][:, 0], model(x).logits.detach())
    # every stage has sources, and the first stage reads genes
    assert b.source_edges[0].shape == (len(x), saes[0].d_sae, len(GENES))
    assert b.error_edges[0] is None and all(e is not None for e in b.error_edges[1:])


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_gene_attribution_sums_to_logit(kind):
    model, x = _random_model(kind), _x()
    contrib, bias, logits = gene_attribution(model, x, batch_size=7)
    np.testing.assert_allclose(contrib.sum(1) + bias, logits, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(logits, model(x).logits.detach().numpy(), rtol=1e-12)
    if kind == "transformer":  # unexpressed genes are never tokens: no contribution
        assert np.all(contrib[x.numpy() == 0] == 0)


def test_sae_hooks_are_checked():
    model = _random_model("transformer")
    with pytest.raises(InputError, match="fully mediate"):
        check_sae_hooks(model, [SAEHook("layer0.resid", build_sae("topk", d_in=16, d_sae=8,
                                                                    k=2))])
    with pytest.raises(InputError, match="at least one SAE"):
        check_sae_hooks(model, [])
    with pytest.raises(InputError, match="not a hook point"):
        check_sae_hooks(model, [SAEHook("nope", build_sae("topk", d_in=16, d_sae=8, k=2))])


def test_influence_sums_paths():
    # genes a, b -> feature f -> output; a also directly -> output
    adj = np.zeros((4, 4))
    a, b, f, out = range(4)
    adj[f, a], adj[f, b] = 3.0, -1.0
    adj[out, f], adj[out, a] = 2.0, 2.0
    a_n, infl = influence(adj, out)
    np.testing.assert_allclose(a_n[f], [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(a_n[out], [0.5, 0, 0.5, 0])
    # influence(a) = direct 0.5 + via f 0.5 * 0.75
    np.testing.assert_allclose(infl, [0.5 + 0.375, 0.125, 0.5, 0.0])


# ----------------------------------------------------------------------------- trained cohort
@pytest.fixture(scope="module")
def trained():
    from discovery.io.simulate import simulate
    from discovery.pp.preprocess import preprocess

    torch.manual_seed(0)
    a = simulate("alzheimers", seed=3, n_donors=20, cells_per_donor=100, n_genes=600)
    preprocess(a)
    res = classifier.train(a, kind="mlp", arch={"d_model": 32, "d_ff": 64},
                           train_config=TrainConfig(epochs=12, patience=12))
    model = res.model.eval()
    saes = []
    for hook in ("layer0.resid", "pooled"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            store = features.collect_activations(a, model, tmp, hook=hook)
            rows = np.flatnonzero((a.obs["split"] == "train").to_numpy())
            spec = features.SAESpec(hook=hook, d_sae=64, k=12, seeds=(0,),
                                    train={"epochs": 30, "batch_size": 64})
            ((sae, _),) = features.train_saes(store, spec, train_rows=rows)
        saes.append(SAEHook(hook, sae.eval()))
    return a, model, saes


def test_cohort_graph_structure_and_uncertainty(trained):
    a, model, saes = trained
    mask = population_mask(a, cell_type="Microglia", label="case")
    g = cohort_graph(a, model, saes[1:], mask=mask, name="mg",
                     spec=GraphSpec(n_boot=50))
    assert g.graph["n_cells"] == mask.sum() and g.graph["schema_version"] == 1
    assert g.graph["max_completeness_error"] < 1e-4
    kinds = nx.get_node_attributes(g, "kind")
    assert set(kinds.values()) == {"gene", "feature", "error", "output"}
    assert "output" in g and "pooled:error" in g
    for _, d in g.nodes(data=True):
        assert {"kind", "label", "layer", "activation", "influence"} <= set(d)
    for u, v, d in g.edges(data=True):
        assert d["ci_low"] <= d["weight"] + 1e-9 and d["weight"] <= d["ci_high"] + 1e-9
        assert d["weight_se"] >= 0 and 0 <= d["donor_sign_agreement"] <= 1
        assert g.nodes[u]["layer"] < g.nodes[v]["layer"]  # edges go downstream only
    assert 0.5 < g.graph["replacement_score"] <= 1 and 0.5 < g.graph["completeness_score"] <= 1
    # the output's incoming direct effects (features + error) plus bias equal the mean logit:
    # with one SAE at 'pooled' nothing else feeds the logit; pruning keeps the big ones only,
    # so compare on an unpruned graph
    full = cohort_graph(a, model, saes[1:], mask=mask,
                        spec=GraphSpec(node_threshold=1.0, edge_threshold=1.0, n_boot=0))
    total = sum(d["weight"] for _, _, d in full.in_edges("output", data=True))
    assert total + full.nodes["output"]["bias"] == pytest.approx(full.graph["mean_logit"],
                                                                 rel=1e-4)


def test_ablations_move_the_logit_the_way_the_graph_says(trained):
    a, model, saes = trained
    mask = population_mask(a, cell_type="Microglia", label="case")
    # one SAE at 'pooled': the head is linear, so predictions are exact
    g1 = cohort_graph(a, model, saes[1:], mask=mask, spec=GraphSpec(n_boot=0))
    v1 = validate_graph(a, model, saes[1:], graph=g1, mask=mask, n_top=20)
    np.testing.assert_allclose(v1["ablation"]["graph"]["predicted"],
                               v1["ablation"]["graph"]["measured"], rtol=1e-3, atol=1e-4)
    # two SAE layers: layer-0 features act through the nonlinear layer 1 -> a real check
    g2 = cohort_graph(a, model, saes, mask=mask, spec=GraphSpec(n_boot=0))
    v2 = validate_graph(a, model, saes, graph=g2, mask=mask, n_top=30)
    assert v2["ablation"]["model"]["spearman"] > 0.8
    assert v2["ablation"]["graph"]["spearman"] > 0.7
    assert v2["ablation"]["model"]["sign_agreement"] >= 0.8
    # the biggest predicted effect is measured with the same sign and a similar size
    top_pred = v2["ablation"]["model"]["predicted"][0]
    top_meas = v2["ablation"]["model"]["measured"][0]
    assert np.sign(top_pred) == np.sign(top_meas) and abs(top_meas) > 0.3 * abs(top_pred)
    curve = v1["circuit_curve"]
    assert curve[-1]["faithfulness"] == pytest.approx(1.0, abs=0.05)
    assert curve[-1]["completeness"] == pytest.approx(0.0, abs=0.05)
    assert curve[0]["faithfulness"] < curve[-1]["faithfulness"]


def test_interventions(trained):
    a, model, saes = trained
    mask = population_mask(a, cell_type="Microglia")
    none = intervene(a, model, saes, edits=[], mask=mask)
    assert np.abs(none["delta"]).max() == 0
    same = intervene(a, model, saes, edits=[FeatureEdit("pooled", 3, "scale", 1.0)], mask=mask)
    assert np.abs(same["delta"]).max() < 1e-4  # decode(encode) + error is the activation
    # zeroing the error node and every feature at pooled gives the SAE's constant everywhere
    edits = [FeatureEdit("pooled", i, "zero") for i in range(64)] + [
        FeatureEdit("pooled", None, "zero")]
    flat = intervene(a, model, saes, edits=edits, mask=mask)
    assert flat["logit_edited"].std() < 1e-5
    # steering: scaling a feature by 2 changes the logit by exactly its direct effect once more
    # (one SAE at pooled, linear head); graph weights are means over donors of donor means
    g = cohort_graph(a, model, saes[1:], mask=mask, spec=GraphSpec(n_boot=0))
    feats = [n for n, d in g.nodes(data=True) if d["kind"] == "feature"]
    top = max(feats, key=lambda n: abs(g.edges[n, "output"]["weight"])
              if g.has_edge(n, "output") else 0)
    steer = intervene(a, model, saes[1:], edits=[FeatureEdit.parse(top, "scale", 2.0)],
                      mask=mask)
    per_donor = steer["delta"].groupby(a.obs.loc[steer.index, "donor"].to_numpy()).mean()
    assert per_donor.mean() == pytest.approx(g.edges[top, "output"]["weight"], rel=1e-3)
    with pytest.raises(InputError, match="not a feature"):
        FeatureEdit.parse("pooled-F3")
    with pytest.raises(InputError, match="no SAE at hook"):
        intervene(a, model, saes, edits=[FeatureEdit("layer1.resid", 0)], mask=mask)
    with pytest.raises(InputError, match="edit mode"):
        FeatureEdit("pooled", 0, "delete")


def test_gene_perturbation_against_nulls(trained):
    from discovery.io.simulate import truth

    a, model, _ = trained
    mask = population_mask(a, cell_type="Microglia", label="case")
    dam = truth(a)["programs"]["Disease-associated microglia"]["genes"]
    genes = [g for g in dam if g in model.config.gene_names]
    assert len(genes) >= 8
    unchanged = perturb_genes(a, model, genes[:3], mode="down", factor=1.0, mask=mask, n_null=5)
    assert np.allclose(unchanged["effect"], 0)
    res = perturb_genes(a, model, genes, mode="delete", mask=mask, n_null=30)
    assert (res["q"] >= res["p"] - 1e-12).all() and (res["n_null"] == 30).all()
    assert (res["n_donors"] == 10).all()  # effects are donor means (10 AD donors)
    # deleting planted disease-program genes lowers the case logit more than deleting random
    # expression-matched genes does (a small model: the program as a whole, not each gene)
    assert res["effect"].mean() < res["null_mean"].mean()
    assert res["z"].mean() < -0.5
    with pytest.raises(InputError, match="not in the model's vocabulary"):
        perturb_genes(a, model, ["NOT_A_GENE"], mask=mask)


def test_exports_load_in_networkx_igraph_and_schema(trained, tmp_path):
    a, model, saes = trained
    mask = population_mask(a, cell_type="Microglia", label="case")
    g = cohort_graph(a, model, saes[1:], mask=mask, name="AD microglia",
                     spec=GraphSpec(n_boot=20))
    paths = {fmt: export_graph(g, tmp_path / f"g.{fmt}", fmt)
             for fmt in ("json", "graphml", "gexf", "cyjs")}
    for fmt, p in paths.items():
        h = load_graph(p)
        assert set(h.nodes) == set(g.nodes), fmt
        assert h.number_of_edges() == g.number_of_edges(), fmt
        u, v = next(iter(g.edges))
        assert float(h.edges[u, v]["weight"]) == pytest.approx(g.edges[u, v]["weight"]), fmt
        assert h.nodes["output"]["kind"] == "output", fmt
    # independent readers
    ig = igraph.Graph.Read_GraphML(str(paths["graphml"]))
    assert ig.vcount() == g.number_of_nodes() and ig.ecount() == g.number_of_edges()
    assert ig.is_directed() and "weight" in ig.es.attributes()
    assert int(float(ig["schema_version"])) == 1
    cy = json.loads(paths["cyjs"].read_text())
    jsonschema.validate(cy, CYJS_SCHEMA)
    data = json.loads(paths["json"].read_text())
    assert data["schema_version"] == 1 and "edges" in data
    bad = dict(cy)
    bad["elements"] = {"nodes": [{"data": {"label": "x"}}], "edges": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CYJS_SCHEMA)
    with pytest.raises(InputError, match="unknown graph format"):
        export_graph(g, tmp_path / "g.dot")


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_integrated_gradients_match_captum(kind):
    """Our Integrated Gradients against Captum's (the reference implementation) on the same
    path and points. Captum's ``riemann_trapezoid`` weights n points by 1/n (ends halved), so
    they sum to (n - 1)/n; ours by 1/(n - 1), the trapezoid rule proper (weights sum to 1). So
    ours is Captum's times n/(n - 1) exactly on the MLP, and closer to completeness (the
    attributions sum to f(x) - f(baseline)). On the transformer, whose path keeps x's token set
    (expressed genes never reach exactly 0), the two differ also at the baseline end, within a
    stated tolerance."""
    from captum.attr import IntegratedGradients

    from discovery.tl.attribution import _keep_tokens, integrated_gradients

    model, x = _random_model(kind), _x(16)
    steps = 64
    n = steps + 1
    ours = integrated_gradients(model, x, steps=steps)
    baseline = (model.gene_mean.expand_as(x) if kind == "mlp" else torch.zeros_like(x))

    def forward(p):  # Captum stacks the path points of every cell into one batch
        if kind == "transformer":
            p = _keep_tokens(p, x.repeat(len(p) // len(x), 1))
        return model(p).logits.squeeze(-1)

    ref = IntegratedGradients(forward).attribute(
        x, baselines=baseline, n_steps=n, method="riemann_trapezoid").detach().numpy()
    rescaled = ref * n / (n - 1)
    scale = np.abs(ref).max()
    if kind == "mlp":
        np.testing.assert_allclose(ours, rescaled, rtol=1e-8, atol=1e-10 * scale)
        with torch.no_grad():
            delta = (forward(x) - forward(baseline)).numpy()
        assert (np.abs(ours.sum(1) - delta).mean()
                < np.abs(ref.sum(1) - delta).mean())
    else:
        assert np.abs(ours - rescaled).max() <= 0.02 * scale
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999
