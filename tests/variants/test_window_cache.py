"""Causal decoding through SlidingWindow's WindowCache equals one windowed pass, in bounded memory."""

from __future__ import annotations

import pytest
import torch

from headwise import Attention, KVCache, RotaryEmbedding
from headwise.errors import ShapeError
from headwise.variants import SlidingWindow, WindowCache

LENGTH = 40


def _layer(left: int, global_tokens: tuple[int, ...]) -> Attention:
    torch.manual_seed(0)
    variant = SlidingWindow(left, 0, global_tokens=global_tokens)
    return Attention(32, 4, num_kv_heads=2, rotary=RotaryEmbedding(8), variant=variant).double().eval()


def _decode(
    layer: Attention, x: torch.Tensor, steps: list[int], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Feed ``x`` in chunks of the given sizes through one cache.  Shape: (B, L, E) -> (B, L, E)."""
    cache = layer.new_cache(x.shape[0], x.shape[1])
    outputs, start = [], 0
    for size in steps:
        end = start + size
        step_mask = None if mask is None else mask[..., :end]  # (B, 1, 1, end): every position seen
        outputs.append(layer(x[:, start:end], is_causal=True, cache=cache, attn_mask=step_mask)[0])
        start = end
    assert start == x.shape[1]
    assert cache.length == x.shape[1]
    return torch.cat(outputs, dim=1)


SCHEDULES = {
    "token by token": [1] * LENGTH,
    "prompt 12 then tokens": [12] + [1] * (LENGTH - 12),
    "chunks of 3": [3] * (LENGTH // 3) + [LENGTH % 3],
    "short prompt then tokens": [3] + [1] * (LENGTH - 3),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize(("left", "global_tokens"), [(5, ()), (5, (0,)), (5, (0, 17)), (1, (2,)), (8, (30,))])
def test_decoding_equals_one_windowed_pass(schedule, left, global_tokens):
    layer = _layer(left, global_tokens)
    x = torch.randn(2, LENGTH, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = layer(x, is_causal=True)  # one blockwise windowed pass
        got = _decode(layer, x, SCHEDULES[schedule])
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_decoding_with_padding_equals_the_masked_pass():
    layer = _layer(4, (0,))
    x = torch.randn(2, LENGTH, 32, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, LENGTH, dtype=torch.bool)
    mask[1, ..., :3] = False  # left padding of the second sequence: its first rows see no key
    with torch.no_grad():
        expected, _ = layer(x, is_causal=True, attn_mask=mask)
        got = _decode(layer, x, [6] + [1] * (LENGTH - 6), mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # rows with every key masked attend to nothing: zero heads, so the layer gives out_proj's bias
    torch.testing.assert_close(got[1, :3], layer.out_proj.bias.detach().expand(3, -1), atol=0, rtol=0)
    assert not got.isnan().any()


def test_memory_stays_bounded_over_a_long_decode():
    left, tokens = 4, 300
    layer = _layer(left, (0,))
    x = torch.randn(1, tokens, 32, dtype=torch.float64)
    cache = layer.new_cache(1, tokens)
    assert isinstance(cache, WindowCache)
    capacity = cache.keys.shape[2]
    kv = KVCache(1, tokens, 2, 8)
    with torch.no_grad():
        for t in range(tokens):
            layer(x[:, t : t + 1], is_causal=True, cache=cache)
            assert cache.held <= 1 + left + 1 + capacity  # the global key, the window and the new token
    assert cache.keys.shape[2] == capacity < tokens  # never grew
    assert cache.keys.numel() * 10 < kv.keys.numel()  # a full cache would hold every position
    with torch.no_grad():
        expected, _ = layer(x, is_causal=True)
        cache.reset()
        got = torch.cat(
            [layer(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(tokens)], dim=1
        )
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_a_global_position_to_come_keeps_every_key_until_it_is_seen():
    layer = _layer(2, (20,))
    x = torch.randn(1, 30, 32, dtype=torch.float64)
    cache = layer.new_cache(1, 30)
    with torch.no_grad():
        for t in range(20):
            layer(x[:, t : t + 1], is_causal=True, cache=cache)
        assert cache.held == 20  # position 20 will attend all of them
        for t in range(20, 30):
            layer(x[:, t : t + 1], is_causal=True, cache=cache)
    assert cache.held <= 1 + 2 + 30 - 20


def test_bad_decoding_calls_are_refused():
    layer = _layer(3, ())
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    cache = layer.new_cache(1, 4)
    with pytest.raises(ValueError, match="is_causal=True"):
        layer(x[:, :1], cache=cache)
    assert cache.length == 0
    with pytest.raises(TypeError, match="WindowCache"):
        layer(x[:, :1], is_causal=True, cache=KVCache(1, 4, 2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_len >= 5"):
        layer(x, is_causal=True, cache=cache)
    assert cache.length == 0
    with pytest.raises(ShapeError, match="key columns"):
        layer(x[:, :2], is_causal=True, cache=cache, attn_mask=torch.ones(1, 1, 1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="left"):
        WindowCache(1, 8, 2, 8, left=-1)
    with pytest.raises(ValueError, match="max_len"):
        WindowCache(1, 0, 2, 8, left=2)
