"""Rein against the official implementation's equations, parameter counts and key names."""
import math

import pytest
import torch
import torch.nn.functional as F

from rein_d2.modeling.rein import LoRAReins, Reins


def tiny(cls=LoRAReins, **kw):
    args = dict(num_layers=3, embed_dims=16, patch_size=16, query_dims=8, token_length=5)
    if cls is LoRAReins:
        args["lora_dim"] = 4
    args.update(kw)
    torch.manual_seed(0)
    return cls(**args)


def of_layer(module, layer):
    """The module a layer uses: the shared one, or its own (Table 6's unshared Rein-core)."""
    return module[layer] if isinstance(module, torch.nn.ModuleList) else module


def reference_refine(rein, feats, layer):
    """The official forward restated: softmax(f T^T / sqrt(c)), first token dropped from the values."""
    tokens = rein.all_tokens()[layer]
    attn = torch.einsum("bnc,mc->bnm", feats, tokens) * rein.embed_dims**-0.5
    attn = attn.softmax(-1)
    delta = torch.einsum("bnm,mc->bnc", attn[:, :, 1:], of_layer(rein.mlp_token2feat, layer)(tokens[1:]))
    delta = of_layer(rein.mlp_delta_f, layer)(delta + feats)
    return feats + rein.scale * delta


def reference_queries(rein):
    """Official pooling: [m, q, layers] -> max, avg, last concatenated on the last dim, flattened."""
    tokens = rein.all_tokens()
    t = torch.stack([of_layer(rein.transform, i)(tokens[i]) for i in range(rein.num_layers)]).permute(1, 2, 0)
    pooled = torch.cat([F.max_pool1d(t, rein.num_layers), F.avg_pool1d(t, rein.num_layers), t[:, :, -1:]], dim=-1)
    return rein.merge(pooled.flatten(-2, -1))


VARIANTS = [(Reins, True), (LoRAReins, True), (Reins, False), (LoRAReins, False)]


@pytest.mark.parametrize("cls, share_layers", VARIANTS)
def test_forward_matches_equations_with_and_without_cache(cls, share_layers):
    rein = tiny(cls, share_layers=share_layers)
    with torch.no_grad():
        rein.scale.fill_(0.37)  # make the update visible
    feats = torch.randn(2, 7, 16)
    for layer in range(3):
        expected = reference_refine(rein, feats, layer)
        assert torch.allclose(rein(feats, layer), expected, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(rein(feats, layer), expected, atol=1e-6)
    assert not torch.allclose(rein(feats, 0), feats, atol=1e-3)


@pytest.mark.parametrize("cls, share_layers", VARIANTS)
def test_queries_pool_max_mean_last_interleaved(cls, share_layers):
    rein = tiny(cls, share_layers=share_layers)
    assert torch.allclose(rein.queries(), reference_queries(rein), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(rein.queries(), reference_queries(rein), atol=1e-6)
    assert rein.queries().shape == (5, 8)
    assert tiny(cls, link_token_to_query=False).queries() is None


def test_first_token_gets_attention_but_contributes_nothing():
    rein = tiny(Reins)
    feats = torch.randn(1, 4, 16)
    with torch.no_grad():
        before = rein(feats, 1)
        rein.learnable_tokens[1, 0].zero_()  # changes the softmax, not the values
        after_zero = rein(feats, 1)
        rein.mlp_token2feat.bias.add_(1.0)  # would move every value, the first token's excepted
        shifted = rein(feats, 1)
    assert not torch.allclose(before, after_zero)
    assert torch.allclose(shifted, reference_refine(rein, feats, 1), atol=1e-6)


PAPER_COUNTS = {4: 2.67e6, 8: 2.77e6, 16: 2.99e6, 32: 3.42e6, 64: 4.28e6}


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("rank", sorted(PAPER_COUNTS))
def test_parameter_counts_of_the_paper(rank):
    rein = LoRAReins(num_layers=24, embed_dims=1024, patch_size=16, token_length=100, lora_dim=rank)
    assert round(trainable(rein) / 1e4) == round(PAPER_COUNTS[rank] / 1e4)
    if rank == 16:
        assert trainable(rein) == 2_990_081


# Table 6 of the paper for DINOv2-L (c=1024, 24 layers, m=100), worked out by hand:
# tokens 24*100*1024 = 2,457,600; one c x c linear 1024*1024 + 1024 = 1,049,600; scale 1;
# transform 1024*256 + 256 = 262,400; merge 768*256 + 256 = 196,864; LoRA tokens (r=16)
# 24*100*16 + 24*16*1024 = 431,616.
TABLE_6 = {
    # Rein-core: two unshared linears per layer, no link: 2,457,600 + 48 * 1,049,600 + 1
    "core": (Reins, dict(share_layers=False, link_token_to_query=False), 52_838_401, "52.84M"),
    # + link: a transform per layer and one merge: + 24 * 262,400 + 196,864
    "core+link": (Reins, dict(share_layers=False), 59_332_865, "59.33M"),
    # + shared MLPs: 2,457,600 + 2 * 1,049,600 + 1 + 262,400 + 196,864
    "core+link+share": (Reins, dict(), 5_016_065, "5.02M"),
    # + low-rank tokens: 431,616 + 2 * 1,049,600 + 1 + 262,400 + 196,864
    "core+link+share+lora": (LoRAReins, dict(lora_dim=16), 2_990_081, "2.99M"),
}


@pytest.mark.parametrize("row", sorted(TABLE_6))
def test_table_6_variants_have_the_papers_trainable_parameters(row):
    cls, kw, exact, paper = TABLE_6[row]
    with torch.device("meta"):
        rein = cls(num_layers=24, embed_dims=1024, patch_size=14, token_length=100, **kw)
    assert trainable(rein) == exact
    assert f"{exact / 1e6:.2f}M" == paper


def test_unshared_layers_have_their_own_linear_maps():
    rein = tiny(Reins, share_layers=False)
    shapes = {k: tuple(v.shape) for k, v in rein.state_dict().items()}
    for layer in range(3):
        assert shapes[f"mlp_token2feat.{layer}.weight"] == (16, 16)
        assert shapes[f"mlp_delta_f.{layer}.bias"] == (16,)
        assert shapes[f"transform.{layer}.weight"] == (8, 16)
    assert shapes["merge.weight"] == (8, 24) and "mlp_token2feat.weight" not in shapes
    feats = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = [rein(feats, layer) for layer in range(3)]
        rein.mlp_delta_f[1].bias.add_(1.0)  # only layer 1's update moves
        after = [rein(feats, layer) for layer in range(3)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_every_parameter_of_the_unshared_variant_gets_a_gradient():
    rein = tiny(Reins, share_layers=False)
    feats = torch.randn(2, 6, 16)
    (sum(rein(feats, layer).sum() for layer in range(3)) + rein.queries().sum()).backward()
    missing = [name for name, p in rein.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_parameter_count_without_query_link():
    rein = LoRAReins(num_layers=24, embed_dims=1024, patch_size=16, lora_dim=16, link_token_to_query=False)
    assert trainable(rein) == 2_530_817


def test_official_state_dict_keys_and_shapes():
    lora = tiny(LoRAReins)
    assert {k: tuple(v.shape) for k, v in lora.state_dict().items()} == {
        "learnable_tokens_a": (3, 5, 4), "learnable_tokens_b": (3, 4, 16), "scale": (),
        "mlp_token2feat.weight": (16, 16), "mlp_token2feat.bias": (16,),
        "mlp_delta_f.weight": (16, 16), "mlp_delta_f.bias": (16,),
        "transform.weight": (8, 16), "transform.bias": (8,),
        "merge.weight": (8, 24), "merge.bias": (8,),
    }
    assert "learnable_tokens" in tiny(Reins).state_dict()


def test_initialisation_follows_the_official_bounds():
    rein = LoRAReins(num_layers=24, embed_dims=1024, patch_size=16, lora_dim=16)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + math.sqrt(1024 * 16)))
    for tokens in (rein.learnable_tokens_a, rein.learnable_tokens_b):
        assert tokens.abs().max() <= bound
        assert tokens.abs().max() > 0.95 * bound  # uniform over the whole interval
    full = Reins(num_layers=2, embed_dims=1024, patch_size=16)
    assert full.learnable_tokens.abs().max() <= math.sqrt(6.0 / (3 * 256 + 1024))
    assert rein.scale.item() == pytest.approx(1e-3)


def test_zero_mlp_delta_f_starts_as_identity_without_scale():
    rein = tiny(Reins, zero_mlp_delta_f=True)
    feats = torch.randn(2, 3, 16)
    assert "scale" not in rein.state_dict()
    assert torch.equal(rein(feats, 0), feats)


def test_cache_is_refreshed_after_an_optimizer_step():
    rein = tiny(LoRAReins)
    feats = torch.randn(2, 6, 16)
    with torch.no_grad():
        first = rein(feats, 2)
        first_q = rein.queries()
    loss = rein(feats, 2).square().mean() + rein.queries().square().mean()
    loss.backward()
    torch.optim.SGD(rein.parameters(), lr=10.0).step()
    with torch.no_grad():
        second = rein(feats, 2)
        second_q = rein.queries()
    assert not torch.allclose(first, second)
    assert not torch.allclose(first_q, second_q)
    assert torch.allclose(second, reference_refine(rein, feats, 2), atol=1e-6)
    assert torch.allclose(second_q, reference_queries(rein), atol=1e-6)


def test_cache_is_refreshed_after_loading_weights():
    rein, other = tiny(LoRAReins), tiny(LoRAReins, scale_init=0.5)
    with torch.no_grad():
        other.learnable_tokens_a.mul_(3.0)
    feats = torch.randn(1, 5, 16)
    with torch.no_grad():
        rein(feats, 0)
        rein.load_state_dict(other.state_dict())
        assert torch.allclose(rein(feats, 0), other(feats, 0))
        assert torch.allclose(rein.queries(), other.queries())


def test_gradients_reach_tokens_and_scale_in_training():
    rein = tiny(LoRAReins)
    feats = torch.randn(2, 6, 16)
    with torch.no_grad():
        rein(feats, 0)  # fills the cache, which training must not use
    (rein(feats, 0).sum() + rein.queries().sum()).backward()
    for name in ("learnable_tokens_a", "learnable_tokens_b", "scale", "transform.weight", "merge.weight"):
        grad = rein.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
