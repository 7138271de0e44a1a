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


def reference_refine(rein, feats, layer):
    """The official forward restated: softmax(f T^T / sqrt(c)), first token dropped from the values."""
    tokens = rein.all_tokens()[layer]
    attn = torch.einsum("bnc,mc->bnm", feats, tokens) * rein.embed_dims**-0.5
    attn = attn.softmax(-1)
    delta = torch.einsum("bnm,mc->bnc", attn[:, :, 1:], rein.mlp_token2feat(tokens[1:]))
    delta = rein.mlp_delta_f(delta + feats)
    return feats + rein.scale * delta


def reference_queries(rein):
    """Official pooling: [m, q, layers] -> max, avg, last concatenated on the last dim, flattened."""
    t = rein.transform(rein.all_tokens()).permute(1, 2, 0)
    pooled = torch.cat([F.max_pool1d(t, rein.num_layers), F.avg_pool1d(t, rein.num_layers), t[:, :, -1:]], dim=-1)
    return rein.merge(pooled.flatten(-2, -1))


@pytest.mark.parametrize("cls", [Reins, LoRAReins])
def test_forward_matches_equations_with_and_without_cache(cls):
    rein = tiny(cls)
    with torch.no_grad():
        rein.scale.fill_(0.37)  # make the update visible
    feats = torch.randn(2, 7, 16)
    for layer in range(3):
        expected = reference_refine(rein, feats, layer)
        assert torch.allclose(rein(feats, layer), expected, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(rein(feats, layer), expected, atol=1e-6)
    assert not torch.allclose(rein(feats, 0), feats, atol=1e-3)


@pytest.mark.parametrize("cls", [Reins, LoRAReins])
def test_queries_pool_max_mean_last_interleaved(cls):
    rein = tiny(cls)
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
