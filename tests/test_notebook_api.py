"""A notebook session through ``import discovery as dc`` only: simulate -> pp -> tl (model,
features, graphs, hypotheses, plans) -> pl, checking the science at each step."""

from __future__ import annotations

import numpy as np

import discovery as dc


def test_notebook_flow_from_simulation_to_a_figure():
    adata = dc.io.simulate("alzheimers", seed=0, n_donors=12, cells_per_donor=60, n_genes=500)
    assert dc.__version__
    dc.pp.preprocess(adata)
    assert set(adata.obs["split"]) == {"train", "val", "test"}

    trained = dc.tl.train(adata, kind="mlp", train_config=dc.tl.TrainConfig(epochs=6))
    model = trained.model
    assert "case_prob" in adata.obs
    # the model learned the label on held-out donors, better than chance
    assert trained.metrics["test"]["cell_auroc"] > 0.6

    spec = dc.tl.SAESpec(seeds=(0,), d_sae=64, k=12, train={"epochs": 5})
    fitted = dc.tl.fit_saes(adata, model, spec=spec)
    key = dc.get.sae_key(spec.hook)
    acts = adata.obsm[key]
    assert acts.shape == (adata.n_obs, 64)
    # BatchTopK: k active features per cell on average (a learned threshold at inference)
    l0 = np.count_nonzero(acts, axis=1).mean()
    assert spec.k / 2 <= l0 <= 2 * spec.k, l0

    ann = dc.tl.annotate_features(adata, model, fitted.primary, acts=acts, hook=spec.hook,
                                  stability=fitted.stability)
    assert ann["feature"].iloc[3] == dc.get.feature_id(spec.hook, 3)

    labels = dict(zip(ann["feature"], ann["label"]))
    saes = [dc.tl.SAEHook(spec.hook, fitted.primary.eval())]
    graphs = {}
    for pop in dc.tl.case_populations(adata, min_cells=10):
        g = dc.tl.cohort_graph(adata, model, saes, mask=pop.mask, name=pop.name, labels=labels,
                               spec=dc.tl.GraphSpec(n_boot=0, edge_threshold=0.9))
        g.graph.update({"cell_type": pop.cell_type, "label": "case"})
        # edges into the logit plus error plus bias add up to the logit
        assert g.graph["max_completeness_error"] < 1e-3
        assert isinstance(g, dc.tl.AttributionGraph)
        assert g.nodes_of_kind("output") == ["output"]
        assert all(g.nodes[f]["hook"] == spec.hook for f in g.nodes_of_kind("feature"))
        graphs[pop.slug] = g
    assert graphs

    hyps = dc.tl.propose_hypotheses(adata, model, saes[0], graphs=graphs, annotations=ann,
                                    spec=dc.tl.HypothesisSpec(n_null=5, ig_cells=40), seed=0)
    assert hyps and all(isinstance(h, dc.tl.Hypothesis) for h in hyps)
    assert [h.rank for h in hyps] == list(range(1, len(hyps) + 1))
    assert all(h.score == dc.tl.score_hypothesis(h.evidence, max_share=max(
        x.evidence.attribution for x in hyps), flagged=h.status == "flagged").score
        for h in hyps)
    plans = dc.tl.make_plans(hyps, graphs, case="AD")
    assert all(p.rationale for p in plans)  # every plan says why
    assert {p.hypothesis for p in plans} <= {h.id for h in hyps}

    records = [h.to_dict() for h in hyps]
    fig = dc.pl.donor_activation(records)
    assert fig is not None and len(fig.axes) == min(6, len(records))
