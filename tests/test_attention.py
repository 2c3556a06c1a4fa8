"""Scaled dot-product and multi-head attention: hand-computed values, fused vs explicit, masks, KV cache."""

import math

import pytest
import torch

from models.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention
from models.layers import TextDecoder, set_fused


def identity_mha(fused: bool) -> MultiHeadAttention:
    """d_model 4, 2 heads; Q = K = V = x (identity projections), output projection swaps the two heads."""
    mha = MultiHeadAttention(4, 2, fused=fused)
    with torch.no_grad():
        for proj in (mha.q_proj, mha.k_proj, mha.v_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
        mha.out_proj.weight.copy_(torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float))
        mha.out_proj.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
    return mha


@pytest.mark.parametrize("fused", [False, True])
def test_two_head_three_token_example_computed_by_hand(fused):
    # Head 0 sees dims 0-1, head 1 dims 2-3.  Tokens: head 0 -> [1,0], [0,1], [1,1]; head 1 -> [2,0], [0,0], [0,0].
    x = torch.tensor([[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    out, _, weights = identity_mha(fused)(x, need_weights=not fused)

    # Head 0, query 0 = [1,0]: scores q.k / sqrt(2) = [1, 0, 1] / 1.41421 = [0.70711, 0, 0.70711]
    #   exp -> [2.02811, 1, 2.02811], sum 5.05622 -> weights [0.40111, 0.19778, 0.40111]
    #   output = 0.40111*[1,0] + 0.19778*[0,1] + 0.40111*[1,1] = [0.80222, 0.59889]
    # Head 1, query 0 = [2,0]: scores [4, 0, 0] / 1.41421 = [2.82843, 0, 0]
    #   exp -> [16.91883, 1, 1], sum 18.91883 -> weights [0.89429, 0.05286, 0.05286]
    #   output = 0.89429*[2,0] = [1.78857, 0]
    # Head 1, queries 1 and 2 = [0,0]: all scores 0 -> uniform 1/3 -> output mean of V = [0.66667, 0]
    # Head 0, query 1 = [0,1]: scores [0, 1, 1]/1.41421 -> exp [1, 2.02811, 2.02811] / 5.05622
    #   -> [0.19778, 0.40111, 0.40111]; output = [0.19778 + 0.40111, 0.40111 + 0.40111] = [0.59889, 0.80222]
    # Head 0, query 2 = [1,1]: scores [1, 1, 2]/1.41421 = [0.70711, 0.70711, 1.41421]
    #   exp [2.02811, 2.02811, 4.11325], sum 8.16947 -> [0.24825, 0.24825, 0.50349]
    #   output = [0.24825 + 0.50349, 0.24825 + 0.50349] = [0.75175, 0.75175]
    # Concatenation [head0 | head1] then the output projection swaps the halves and adds 10 to the last dim.
    expected = torch.tensor(
        [
            [1.78857, 0.0, 0.80222, 0.59889 + 10],
            [0.66667, 0.0, 0.59889, 0.80222 + 10],
            [0.66667, 0.0, 0.75175, 0.75175 + 10],
        ]
    )
    torch.testing.assert_close(out[0], expected, atol=1e-4, rtol=0)
    if weights is not None:
        torch.testing.assert_close(weights[0, 0, 0], torch.tensor([0.40111, 0.19778, 0.40111]), atol=1e-4, rtol=0)
        torch.testing.assert_close(weights[0, 1, 0], torch.tensor([0.89429, 0.05286, 0.05286]), atol=1e-4, rtol=0)


def test_scaled_dot_product_matches_formula_elementwise():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 2, 3), torch.randn(1, 1, 4, 3), torch.randn(1, 1, 4, 3)
    out, weights = scaled_dot_product_attention(q, k, v)
    for i in range(2):
        scores = [sum(q[0, 0, i, d].item() * k[0, 0, j, d].item() for d in range(3)) / math.sqrt(3) for j in range(4)]
        exps = [math.exp(s) for s in scores]
        w = [e / sum(exps) for e in exps]
        assert weights[0, 0, i].tolist() == pytest.approx(w, abs=1e-6)
        for d in range(3):
            assert out[0, 0, i, d].item() == pytest.approx(sum(w[j] * v[0, 0, j, d].item() for j in range(4)), abs=1e-6)


@pytest.mark.parametrize("kind", ["self_padding", "self_causal", "cross"])
def test_fused_and_explicit_paths_agree(kind):
    torch.manual_seed(1)
    explicit = MultiHeadAttention(32, 4, fused=False)
    fused = MultiHeadAttention(32, 4, fused=True)
    fused.load_state_dict(explicit.state_dict())
    x, src = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    if kind == "self_padding":
        keep = torch.ones(3, 7, dtype=torch.bool)
        keep[1, 4:] = False
        args, mask = {}, padding_mask(keep)
    elif kind == "self_causal":
        args, mask = {}, causal_mask(7)
    else:
        keep = torch.ones(3, 5, dtype=torch.bool)
        keep[2, 3:] = False
        args, mask = {"source": src}, padding_mask(keep)
    a = explicit(x, mask=mask, **args)[0]
    b = fused(x, mask=mask, **args)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_mask_ignores_padded_keys():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 2, fused=False)
    x = torch.randn(1, 5, 16)
    keep = torch.tensor([[True, True, True, False, False]])
    out, _, w = mha(x, mask=padding_mask(keep), need_weights=True)
    assert torch.all(w[..., 3:] == 0)
    changed = x.clone()
    changed[0, 3:] += 100.0  # padding content must not matter to real positions
    out2 = mha(changed, mask=padding_mask(keep))[0]
    torch.testing.assert_close(out[0, :3], out2[0, :3])


@pytest.mark.parametrize("fused", [False, True])
def test_causal_mask_hides_the_future(fused):
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 4, fused=fused)
    x = torch.randn(2, 6, 16)
    base = mha(x, mask=causal_mask(6))[0]
    for t in range(6):
        perturbed = x.clone()
        perturbed[:, t] += torch.randn(2, 16)
        out = mha(perturbed, mask=causal_mask(6))[0]
        torch.testing.assert_close(out[:, :t], base[:, :t])  # earlier positions unchanged
        assert (out[:, t:] - base[:, t:]).abs().amax() > 1e-3  # the perturbed one and later ones see it


def test_causal_mask_with_cache_offset():
    m = causal_mask(2, 5)[0, 0]
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("fused", [False, True])
def test_fully_masked_rows_give_finite_output(fused):
    mha = MultiHeadAttention(8, 2, fused=fused)
    mask = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    mask[..., 1:, :2] = True
    out = mha(torch.randn(1, 3, 8), torch.randn(1, 4, 8), mask=mask)[0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fused", [False, True])
def test_kv_cached_steps_equal_full_pass(fused):
    torch.manual_seed(4)
    mha = MultiHeadAttention(16, 4, fused=fused)
    x = torch.randn(2, 6, 16)
    full = mha(x, mask=causal_mask(6))[0]
    past, steps = None, []
    for t in range(6):
        out, past, _ = mha(x[:, t : t + 1], past_kv=past)
        steps.append(out)
    assert past[0].shape == (2, 4, 6, 4)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_decoder_cached_decoding_equals_full_forward(fused):
    torch.manual_seed(5)
    dec = TextDecoder(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_len=20, fused=fused).eval()
    memory = torch.randn(2, 7, 32)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5:] = False
    cross, mask = dec.cross_kv(memory), padding_mask(keep)
    tokens = torch.randint(4, 50, (2, 9))
    full = dec(tokens, cross, mask)[0]
    past, steps = None, []
    for t in range(9):
        logits, past, _ = dec(tokens[:, t : t + 1], cross, mask, past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_set_fused_flips_every_attention_and_keeps_outputs():
    torch.manual_seed(6)
    dec = TextDecoder(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, max_len=10, fused=True).eval()
    memory, tokens = torch.randn(1, 4, 16), torch.randint(4, 30, (1, 5))
    a = dec(tokens, dec.cross_kv(memory))[0]
    set_fused(dec, False)
    assert not any(m.fused for m in dec.modules() if isinstance(m, MultiHeadAttention))
    b, _, weights = dec(tokens, dec.cross_kv(memory), need_weights=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert weights[0].shape == (1, 2, 5, 4)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(1, 2, 5))


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
