"""Sparse autoencoders: every registered architecture, the activation store and the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.activation_store import ActivationStore
from models.sae import SAE_REGISTRY, build_sae, load_sae
from models.sae_training import SAETrainConfig, train_sae

ARCHS = sorted(SAE_REGISTRY)


def _kw(arch: str, **over):
    kw = {"d_in": 12, "d_sae": 48, "seed": 0}
    if arch in ("topk", "batchtopk"):
        kw["k"] = 3
    return {**kw, **over}


def _toy(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative combinations of 24 planted directions, with an offset and scale."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(24, 12, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, 24)
    idx = torch.randint(0, 24, (n, 2), generator=g)
    codes.scatter_(1, idx, torch.rand(n, 2, generator=g) + 0.5)
    return codes @ dirs * 4 + torch.randn(12, generator=g) * 3, dirs


def _fit(sae, x, epochs=25):
    sae.fit_normalisation(x)

    def data(epoch):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), 128):
            yield x[perm[i:i + 128]]

    return train_sae(sae, data, SAETrainConfig(epochs=epochs, lr=3e-3, batch_size=256),
                     n_batches_per_epoch=-(-len(x) // 128))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trip(arch):
    cls, cfg_cls = SAE_REGISTRY[arch]
    cfg = cfg_cls(**_kw(arch))
    d = cfg.to_dict()
    assert d["architecture"] == arch
    assert cfg_cls.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        cfg_cls.from_dict({**d, "bogus": 1})


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_decoder_norm(arch):
    sae = build_sae(arch, **_kw(arch))
    x = torch.randn(7, 12)
    sae.fit_normalisation(x)
    f = sae.encode(x)
    assert f.shape == (7, 48) and (f >= 0).all()
    assert sae.decode(f).shape == (7, 12)
    out = sae(x)
    assert out.x_hat.shape == (7, 12) and out.acts.shape == (7, 48)
    if arch == "topk":
        assert ((f > 0).sum(1) <= 3).all()
        # the sparse (embedding-bag) decode equals the dense one
        torch.testing.assert_close(out.x_hat, sae.decode(out.acts))
    if arch != "relu":
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))


def test_sparse_backward_only_where_the_code_is_sparse():
    """The pipeline's SAE (features.SAESpec: d_sae 256, k 48) keeps autograd's dense path (its
    numbers stay as they were); a wide dictionary with a small k takes the sparse one."""
    from discovery.tl.features import SAESpec

    spec = SAESpec()
    x = torch.randn(32, 16)
    for d_sae, k, sparse in ((spec.d_sae, spec.k, False), (2048, 32, True)):
        sae = build_sae("topk", d_in=16, d_sae=d_sae, k=k, seed=0)
        sae.fit_normalisation(x)
        sae.train()
        assert sae(x).acts.is_sparse is sparse, (d_sae, k)


@pytest.mark.parametrize("dead", [0, 20])
def test_sparse_backward_gives_the_dense_gradients(dead):
    """The TopK training step back-propagates through the k selected pre-activations only
    (and the AuxK dead latents): loss and every parameter's gradient equal autograd's dense
    path."""
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1)) * 3 + 1

    def grads(sparse: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sae = build_sae("topk", d_in=12, d_sae=48, k=3, seed=0, dead_after=10)
        sae.fit_normalisation(x)
        sae.steps_since_fired[:dead] = 100  # these latents are dead: AuxK acts on them
        sae.sparse_backward = sparse
        sae.train()
        out = sae(x)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}

    loss_s, g_s = grads(True)
    loss_d, g_d = grads(False)
    torch.testing.assert_close(loss_s, loss_d)
    assert set(g_s) == {"W_dec", "W_enc", "b_enc", "b_dec"}
    for name in g_s:
        torch.testing.assert_close(g_s[name], g_d[name], rtol=1e-4, atol=1e-6, msg=name)
    assert g_s["W_enc"].abs().sum() > 0 and g_s["b_dec"].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_learns_planted_dictionary(arch, tmp_path):
    x, dirs = _toy()
    sae = build_sae(arch, **_kw(arch, **({"l1_coeff": 3e-3} if arch == "relu" else {})))
    _fit(sae, x)
    with torch.no_grad():
        xh = sae.decode(sae.encode(x))
    ev = 1 - ((xh - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev > 0.85, float(ev)
    # planted directions are recovered by some decoder row (cosine, in normalised space)
    w = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    best = (dirs @ w.T).max(1).values
    assert (best > 0.8).float().mean() > 0.6, best
    sae.save(tmp_path / arch)
    again = load_sae(tmp_path / arch)
    torch.testing.assert_close(again.encode(x[:50]), sae.encode(x[:50]))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_keeps_latents_alive(arch):
    x, _ = _toy(n=4000, seed=1)
    dead = {}
    for coeff in (0.0, 1 / 32):
        sae = build_sae(arch, **_kw(arch, d_sae=32, k=2, dead_after=512, aux_k=8,
                                    aux_coeff=coeff))
        # a bad start: 12 latents can never win the top-k without help
        with torch.no_grad():
            sae.b_enc[:12] = -5.0
        _fit(sae, x, epochs=15)
        with torch.no_grad():
            dead[coeff] = float(((sae.encode(x)[:, :12] > 0).sum(0) == 0).float().mean())
    assert dead[0.0] > 0.9  # without AuxK they stay dead
    assert dead[1 / 32] < 0.75 * dead[0.0], dead


def test_activation_store_round_trip_and_batches(tmp_path):
    arr = np.random.default_rng(0).normal(size=(1000, 5)).astype(np.float32)
    w = ActivationStore.create(tmp_path / "s", 5, hook="pooled")
    for i in range(0, 1000, 300):
        w.append(arr[i:i + 300])
    store = w.close()
    assert len(store) == 1000 and store.meta["hook"] == "pooled"
    np.testing.assert_array_equal(store.read().numpy(), arr)
    seen = torch.cat(list(store.batches(64, block=256, seed=1)))
    assert seen.shape == (1000, 5)
    np.testing.assert_allclose(np.sort(seen.numpy(), axis=0), np.sort(arr, axis=0))
    with pytest.raises(ValueError, match="NaN/Inf"):
        ActivationStore.create(tmp_path / "bad", 5).append(np.full((2, 5), np.nan))
