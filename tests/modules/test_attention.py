"""headwise.Attention: parity with torch, grouped-query heads, rotary, QK-norm, gates, DropHead, KV cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from headwise import Attention, KVCache, RotaryEmbedding, ShapeError

E, H, B, L = 16, 4, 2, 6


def copy_from_torch(ours: Attention, ref: nn.MultiheadAttention) -> None:
    """Load torch's packed weights into Attention's separate projections."""
    with torch.no_grad():
        w = ref.in_proj_weight.chunk(3)
        b = ref.in_proj_bias.chunk(3)
        for proj, wi, bi in zip((ours.q_proj, ours.k_proj, ours.v_proj), w, b, strict=True):
            proj.weight.copy_(wi)
            proj.bias.copy_(bi)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())


def test_matches_torch_multihead_attention():
    ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    ours = Attention(E, H, dtype=torch.float64)
    copy_from_torch(ours, ref)
    x = torch.randn(B, L, E, dtype=torch.float64)
    mem = torch.randn(B, 9, E, dtype=torch.float64)
    pad = torch.zeros(B, 9, dtype=torch.bool)
    pad[1, -3:] = True  # torch polarity: True = padding
    expected, expected_w = ref(x, mem, mem, key_padding_mask=pad, average_attn_weights=False)
    got, weights = ours(x, mem, attn_mask=~pad[:, None, None, :], need_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(weights, expected_w, atol=1e-12, rtol=0)
    fast, none = ours(x, mem, attn_mask=~pad[:, None, None, :])
    assert none is None
    torch.testing.assert_close(fast, expected, atol=1e-12, rtol=0)


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_projections_honour_hooks_subclasses_and_functional_call():
    """The projections are called as modules: hooks, subclasses and functional_call all take effect."""
    torch.manual_seed(0)
    attn = Attention(E, H, dtype=torch.float64).eval()
    x = torch.randn(B, L, E, dtype=torch.float64)
    plain, _ = attn(x)
    calls = []
    handle = attn.q_proj.register_forward_hook(lambda module, args, out: calls.append("q") or out * 0.0)
    zeroed_q, _ = attn(x)
    handle.remove()
    assert calls == ["q"]
    assert not torch.allclose(zeroed_q, plain)  # the hook's returned output was used
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: calls.append(type(module).__name__)
    )
    try:
        attn(x)
    finally:
        handle.remove()
    assert calls.count("Linear") == 4  # q, k, v and out projections all went through the hook
    handle = attn.out_proj.register_forward_pre_hook(lambda module, args: (args[0] * 0.0,))
    zeroed_out, _ = attn(x)
    handle.remove()
    torch.testing.assert_close(zeroed_out, attn.out_proj.bias.expand_as(zeroed_out))
    scaled = Attention(E, H, dtype=torch.float64).eval()
    scaled.load_state_dict(attn.state_dict())
    scaled.v_proj = _ScaledLinear(E, E, dtype=torch.float64)
    scaled.v_proj.load_state_dict(attn.v_proj.state_dict())
    doubled, _ = scaled(x)
    torch.testing.assert_close(doubled - attn.out_proj.bias, 2.0 * (plain - attn.out_proj.bias), atol=1e-12, rtol=0)
    params = {name: torch.zeros_like(p) if name == "k_proj.weight" else p for name, p in attn.named_parameters()}
    swapped, _ = torch.func.functional_call(attn, params, (x,))
    assert not torch.allclose(swapped, plain)  # the swapped-in key weights were used
    again, _ = attn(x)
    torch.testing.assert_close(again, plain, atol=0, rtol=0)


def test_causal_self_attention_matches_torch():
    ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    ours = Attention(E, H, dtype=torch.float64)
    copy_from_torch(ours, ref)
    x = torch.randn(B, L, E, dtype=torch.float64)
    mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    torch.testing.assert_close(ours(x, is_causal=True)[0], ref(x, x, x, attn_mask=mask)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_equals_repeated_kv_heads(kv_heads):
    grouped = Attention(E, H, num_kv_heads=kv_heads, dtype=torch.float64)
    plain = Attention(E, H, dtype=torch.float64)
    rep = H // kv_heads
    d = E // H
    with torch.no_grad():
        plain.q_proj.load_state_dict(grouped.q_proj.state_dict())
        plain.out_proj.load_state_dict(grouped.out_proj.state_dict())
        for src, dst in ((grouped.k_proj, plain.k_proj), (grouped.v_proj, plain.v_proj)):
            dst.weight.copy_(src.weight.view(kv_heads, d, E).repeat_interleave(rep, 0).reshape(E, E))
            dst.bias.copy_(src.bias.view(kv_heads, d).repeat_interleave(rep, 0).reshape(E))
    assert grouped.num_kv_heads == kv_heads and grouped.k_proj.weight.shape == (kv_heads * d, E)
    x = torch.randn(B, L, E, dtype=torch.float64)
    torch.testing.assert_close(grouped(x, is_causal=True)[0], plain(x, is_causal=True)[0], atol=1e-12, rtol=0)


def test_explicit_head_dim_when_heads_do_not_divide():
    m = Attention(10, 3, head_dim=4)
    out, w = m(torch.randn(2, 5, 10), need_weights=True)
    assert out.shape == (2, 5, 10) and w.shape == (2, 3, 5, 5)
    assert (m.num_heads, m.num_kv_heads, m.head_dim) == (3, 3, 4)


def test_rotary_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(8)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    scores = []
    for offset in (0, 5, 100):
        qr, kr = rope(q, k, torch.tensor([offset + 3]), torch.tensor([offset]))
        scores.append((qr * kr).sum())
    # the angles are float32 (as in transformers), so a position p rotates by p * w rounded in float32:
    # at most p * 2**-24 * (1 + w) radians of error per angle, times |q||k| in the score
    bound = 2 * 103 * 2**-24 * 2 * (q.norm() * k.norm()).item()
    torch.testing.assert_close(scores[0], scores[1], atol=bound, rtol=0)
    torch.testing.assert_close(scores[0], scores[2], atol=bound, rtol=0)
    qr, _ = rope(q, k, torch.tensor([0]), torch.tensor([0]))
    torch.testing.assert_close(qr, q)  # position 0 is the identity


def test_qk_norm_is_applied_per_head():
    norm_q, norm_k = nn.RMSNorm(E // H), nn.RMSNorm(E // H)
    with torch.no_grad():
        norm_q.weight.mul_(2.0)
    m = Attention(E, H, q_norm=norm_q, k_norm=norm_k)
    plain = Attention(E, H)
    plain.load_state_dict(m.state_dict(), strict=False)
    x = torch.randn(B, L, E)
    assert not torch.allclose(m(x)[0], plain(x)[0])
    _, w = m(x, need_weights=True)
    q = norm_q(m.q_proj(x).view(B, L, H, -1).transpose(1, 2))
    k = norm_k(m.k_proj(x).view(B, L, H, -1).transpose(1, 2))
    expected = torch.softmax(q @ k.transpose(-1, -2) / (E // H) ** 0.5, -1)
    torch.testing.assert_close(w, expected)


def test_head_gate_zero_equals_removing_the_head():
    m = Attention(E, H)
    x = torch.randn(B, L, E)
    with torch.no_grad():
        m.head_gate[1] = 0.0
    gated, _ = m(x)
    d = E // H
    # reference: zero head 1's slice of out_proj's input weights
    ref = Attention(E, H)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        ref.head_gate.fill_(1.0)
        ref.out_proj.weight[:, d : 2 * d] = 0
    torch.testing.assert_close(gated, ref(x)[0])
    assert "head_gate" in m.state_dict() and not m.head_gate.requires_grad


def test_head_gate_gradient_scores_heads():
    m = Attention(E, H)
    m.head_gate.requires_grad_(True)
    out, _ = m(torch.randn(B, L, E))
    out.square().sum().backward()
    assert m.head_gate.grad.shape == (H,) and (m.head_gate.grad != 0).all()


def test_head_dropout_drops_whole_heads_and_rescales():
    d = E // H
    m = Attention(E, H, head_dropout=0.5)
    with torch.no_grad():
        m.out_proj.weight.copy_(torch.eye(E))
        m.out_proj.bias.zero_()
    x = torch.randn(8, L, E)
    m.eval()
    base = m(x)[0].view(8, L, H, d)
    m.train()
    torch.manual_seed(1)
    dropped = m(x)[0].view(8, L, H, d)
    zero = (dropped == 0).all(dim=(1, 3))  # (B, H) whole head dropped for that sample
    assert zero.any() and (~zero).any()
    kept = ~zero
    torch.testing.assert_close(dropped.permute(0, 2, 1, 3)[kept], 2 * base.permute(0, 2, 1, 3)[kept])


@st.composite
def _decode_case(draw):
    kv = draw(st.sampled_from([1, 2, 4]))
    return dict(
        kv=kv,
        rotary=draw(st.booleans()),
        length=draw(st.integers(1, 9)),
        chunk=draw(st.integers(1, 4)),
        batch=draw(st.integers(1, 2)),
    )


@settings(max_examples=20, deadline=None)
@given(case=_decode_case(), seed=st.integers(0, 1000))
def test_property_cached_decoding_equals_full_pass(case, seed):
    torch.manual_seed(seed)
    m = Attention(
        E, H, num_kv_heads=case["kv"], rotary=RotaryEmbedding(E // H) if case["rotary"] else None, dtype=torch.float64
    ).eval()
    x = torch.randn(case["batch"], case["length"], E, dtype=torch.float64)
    full, _ = m(x, is_causal=True)
    cache = m.new_cache(case["batch"], 16)
    pieces = []
    for start in range(0, case["length"], case["chunk"]):
        out, _ = m(x[:, start : start + case["chunk"]], is_causal=True, cache=cache)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-10, rtol=0)
    assert cache.length == case["length"]


def test_errors():
    with pytest.raises(ValueError, match=r"num_kv_heads=3 does not divide num_heads=4; .* Divisors of 4: 1, 2, 4."):
        Attention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"embed_dim=10 is not divisible by num_heads=4 .* or pass head_dim explicitly."):
        Attention(10, 4)
    with pytest.raises(ValueError, match=r"head_dim must be a positive int, got 0"):
        Attention(16, 4, head_dim=0)
    with pytest.raises(ValueError, match=r"head_dropout must be in \[0, 1\), got 1.0"):
        Attention(16, 4, head_dropout=1.0)
    m = Attention(16, 4)
    with pytest.raises(ShapeError, match=r"x has shape \(6, 2\) but Attention expects \(batch, seq, 16\)"):
        m(torch.randn(6, 2))
    with pytest.raises(ShapeError, match=r"context has shape \(3, 5, 16\) but x is \(2, 6, 16\)"):
        m(torch.randn(2, 6, 16), torch.randn(3, 5, 16))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's weights are torch.float32"):
        m(torch.randn(2, 6, 16, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: another input dtype is the point
        out, _ = m(torch.randn(2, 6, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="RotaryEmbedding needs a positive even head_dim, got 3"):
        RotaryEmbedding(3)


def test_cache_errors():
    m = Attention(16, 4, num_kv_heads=2)
    cache = m.new_cache(1, 4)
    m(torch.randn(1, 3, 16), is_causal=True, cache=cache)
    with pytest.raises(ValueError, match=r"KVCache is full: it holds 4 positions, 3 are used and 2 more were given; create it with max_len >= 5"):
        m(torch.randn(1, 2, 16), is_causal=True, cache=cache)
    other = KVCache(1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"KVCache holds \(B, K, D\) = \(1, 4, 4\) but got key \(1, 2, 1, 4\)"):
        m(torch.randn(1, 1, 16), cache=other)
    with pytest.raises(ValueError, match="KVCache max_len must be a positive int, got 0"):
        KVCache(1, 0, 2, 4)
    cache.reset()
    assert cache.length == 0
