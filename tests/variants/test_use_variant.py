import pytest
import torch

import headwise.models
from headwise import Attention
from headwise.functional import attention
from headwise.modules import encoder_block
from headwise.variants import (
    LinearAttention,
    SlidingWindow,
    linear_attention,
    sliding_window_attention,
    use_variant_,
    window_mask,
)


def projected(layer, x):
    b, n, _ = x.shape
    q = layer.q_proj(x).view(b, n, layer.num_heads, layer.head_dim).transpose(1, 2)  # (B, H, L, D)
    k = layer.k_proj(x).view(b, n, layer.num_kv_heads, layer.head_dim).transpose(1, 2)  # (B, K, L, D)
    v = layer.v_proj(x).view(b, n, layer.num_kv_heads, layer.head_dim).transpose(1, 2)  # (B, K, L, D)
    return q, k, v


def test_attention_with_window_variant_equals_dense_mask_through_the_same_weights():
    layer = Attention(32, 4, num_kv_heads=2).double().eval()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    mask = window_mask(21, 21, left=3, right=3, global_tokens=(0,))
    dense, _ = layer(x, attn_mask=mask)
    layer.variant = SlidingWindow(3, 3, global_tokens=(0,), block_size=5)
    windowed, _ = layer(x)
    torch.testing.assert_close(windowed, dense, atol=1e-12, rtol=0)
    assert set(layer.state_dict()) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                                       "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias", "head_gate"}


def test_attention_with_linear_variant_uses_its_own_projections():
    layer = Attention(32, 4, variant=LinearAttention()).double().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    out, _ = layer(x, is_causal=True)
    q, k, v = projected(layer, x)
    heads = linear_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(out, layer.out_proj(heads))


def test_use_variant_switches_a_stack_in_place_and_back():
    torch.manual_seed(0)
    model = torch.nn.Sequential(encoder_block(32, 4, 64), encoder_block(32, 4, 64)).double().eval()
    x = torch.randn(1, 30, 32, dtype=torch.float64)

    def run():
        h = x
        for block in model:
            h, _ = block(h)
        return h

    full = run()
    assert use_variant_(model, SlidingWindow(29, 0)) == 2  # left=29 covers every earlier key ...
    causal_like = run()
    assert not torch.allclose(causal_like, full)  # ... but no later one
    assert use_variant_(model, SlidingWindow(14, 15)) == 2  # 30 keys: the whole sequence for the middle query only
    assert use_variant_(model, None) == 2
    torch.testing.assert_close(run(), full)


def test_use_variant_errors():
    with pytest.raises(ValueError, match=r"contains no headwise.Attention layer"):
        use_variant_(torch.nn.Linear(2, 2), LinearAttention())
    with pytest.raises(TypeError, match=r"variant must be an attention variant"):
        use_variant_(Attention(8, 2), "window")


def test_minilm_windowed_with_global_cls_matches_the_dense_window_mask():
    model = headwise.models.load().double().eval()
    features = model.tokenize(["A long sentence about attention that goes on for a while, " * 3, "A short one."])
    use_variant_(model, SlidingWindow(4, 4, global_tokens=[0]))
    with torch.no_grad():
        windowed, _ = model(**features)
    use_variant_(model, None)
    length = features["input_ids"].shape[1]
    window = window_mask(length, length, left=4, right=4, global_tokens=[0])  # (L, L)
    padding = features["attention_mask"].bool()[:, None, None, :]  # (B, 1, 1, L)
    captured = []
    for layer in model.attention_layers:  # the same layers, fed the dense mask through the functional core
        layer.variant = _DenseMask(window & padding, captured)
    with torch.no_grad():
        dense, _ = model(**features)
    use_variant_(model, None)
    assert len(captured) == 6
    real = features["attention_mask"].bool()
    torch.testing.assert_close(windowed[real], dense[real], atol=1e-10, rtol=0)


class _DenseMask(torch.nn.Module):
    """A test variant: full attention under a fixed dense mask, via the functional core (math path)."""

    def __init__(self, mask, captured):
        super().__init__()
        self.mask, self.captured = mask, captured

    def new_cache(self, *args, **kwargs):
        raise ValueError("no cache")

    def forward(self, q, k, v, *, attn_mask, is_causal, scale, dropout_p, need_weights, cache):
        self.captured.append(q.shape)
        out, _ = attention(q, k, v, attn_mask=self.mask, scale=scale, backend="math")
        return out, None


def test_window_output_of_module_equals_functional_on_projections():
    layer = Attention(16, 2).double()
    layer.variant = SlidingWindow(2, 1, global_tokens=(5,))
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    out, weights = layer(x)
    assert weights is None
    q, k, v = projected(layer, x)
    heads = sliding_window_attention(q, k, v, left=2, right=1, global_tokens=(5,))
    torch.testing.assert_close(out, layer.out_proj(heads.transpose(1, 2).reshape(1, 12, 16)))
