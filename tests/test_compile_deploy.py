"""torch.compile of the drop-in layer, an encoder stack and an int8 (weight-only) layer, against eager."""

from __future__ import annotations

import torch

from headwise import Attention, MultiheadAttention
from headwise.modules.blocks import Encoder, encoder_block
from headwise.quant import QuantConfig, quantize_


def test_compiled_drop_in_and_encoder_match_eager():
    torch._dynamo.reset()
    mha = MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    encoder = Encoder([encoder_block(32, 4, 64, num_kv_heads=2) for _ in range(2)]).eval()
    with torch.no_grad():
        want, _ = mha(x, x, x, key_padding_mask=padding, need_weights=False)
        got, _ = torch.compile(mha)(x, x, x, key_padding_mask=padding, need_weights=False)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        want, _ = encoder(x)
        got, _ = torch.compile(encoder)(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_compiled_int8_weight_only_attention_matches_its_eager_run():
    torch._dynamo.reset()
    attn = Attention(64, 8, num_kv_heads=2).eval()
    quantize_(attn, QuantConfig(mode="int8_weight_only"))
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        want, _ = attn(x, is_causal=True)
        got, _ = torch.compile(attn)(x, is_causal=True)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
