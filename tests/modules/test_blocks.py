"""Blocks and stacks against torch.nn.TransformerEncoderLayer / TransformerEncoder, and cached decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headwise.modules import CausalDecoder, Encoder, PostNormBlock, PreNormBlock, decoder_block, encoder_block
from tests.modules.test_attention import copy_from_torch

E, H, F, B, L = 16, 4, 32, 2, 7


def _copy_layer(ours, ref: nn.TransformerEncoderLayer) -> None:
    copy_from_torch(ours.attention, ref.self_attn)
    ours.feed_forward.up.load_state_dict(ref.linear1.state_dict())
    ours.feed_forward.down.load_state_dict(ref.linear2.state_dict())
    ours.attention_norm.load_state_dict(ref.norm1.state_dict())
    ours.feed_forward_norm.load_state_dict(ref.norm2.state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_matches_torch_encoder_layer(norm_first):
    ref = nn.TransformerEncoderLayer(
        E, H, F, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first, dtype=torch.float64
    )
    ours = encoder_block(E, H, F, norm_first=norm_first).double()
    assert isinstance(ours, PreNormBlock if norm_first else PostNormBlock)
    _copy_layer(ours, ref)
    x = torch.randn(B, L, E, dtype=torch.float64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True
    expected = ref(x, src_key_padding_mask=pad)
    got, _ = ours(x, attn_mask=~pad[:, None, None, :])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_encoder_matches_torch_encoder_and_returns_maps():
    layer = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation="gelu", batch_first=True, dtype=torch.float64)
    ref = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    ours = Encoder([encoder_block(E, H, F, norm_first=False) for _ in range(3)]).double()
    for a, b in zip(ours.blocks, ref.layers, strict=True):
        _copy_layer(a, b)
    x = torch.randn(B, L, E, dtype=torch.float64)
    out, maps = ours(x, need_weights=True)
    torch.testing.assert_close(out, ref(x), atol=1e-12, rtol=0)
    assert len(maps) == 3 and all(m.shape == (B, H, L, L) for m in maps)
    assert ours(x)[1] is None


def test_decoder_cached_equals_full_and_trains():
    dec = CausalDecoder([decoder_block(E, H, F, num_kv_heads=2) for _ in range(2)], norm=nn.RMSNorm(E)).double()
    x = torch.randn(B, L, E, dtype=torch.float64)
    dec.eval()
    full, _ = dec(x)
    caches = dec.new_caches(B, L)
    steps = [dec(x[:, i : i + 1], caches=caches)[0] for i in range(L)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=0)
    dec.train()
    out, _ = dec(x)
    out.sum().backward()
    assert all(p.grad is not None for p in dec.parameters() if p.requires_grad)


def test_stack_errors():
    with pytest.raises(ValueError, match="Encoder needs at least one block, got none."):
        Encoder([])
    dec = CausalDecoder([decoder_block(E, H, F)])
    with pytest.raises(ValueError, match=r"got 2 caches for 1 layers; use decoder.new_caches\(...\)."):
        dec(torch.randn(1, 1, E), caches=dec.new_caches(1, 4) * 2)
