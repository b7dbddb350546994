import pytest
import torch

from headwise.functional import attention
from headwise.variants import (
    LinearAttention,
    SlidingWindow,
    linear_attention_reference,
    streaming_head_statistics,
    window_mask,
)
from tests.helpers import qkv


def dense_stats(weights, value, query_mask=None):
    """Statistics from the full (B, H, L, S) map: the reference."""
    L, S = weights.shape[-2:]
    pos_q = torch.arange(L) + S - L
    gap = (pos_q[:, None] - torch.arange(S)[None, :]).abs().double()
    entropy = -torch.special.xlogy(weights, weights).sum(-1)  # (B, H, L)
    distance = (weights * gap).sum(-1)
    norm = (weights @ value).norm(dim=-1)
    rows = torch.ones(weights.shape[0], L, dtype=torch.float64) if query_mask is None else query_mask.double()
    mean = lambda t: (t * rows[:, None]).sum(-1) / rows.sum(-1)[:, None]  # noqa: E731
    return mean(entropy), mean(distance), mean(norm)


def check(stats, want):
    for got, ref in zip((stats.entropy, stats.distance, stats.output_norm), want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("is_causal", [False, True])
def test_full_attention_stats_equal_dense_map(is_causal):
    q, k, v = qkv(b=2, h=3, lq=23, s=23, d=4, dtype=torch.float64)
    keep = torch.ones(2, 23, dtype=torch.bool)
    keep[1, 15:] = False
    mask = keep[:, None, None, :]
    _, weights = attention(q, k, v, attn_mask=mask, is_causal=is_causal, need_weights=True, backend="math")
    stats = streaming_head_statistics(q, k, v, attn_mask=mask, is_causal=is_causal, query_mask=keep, chunk_size=5)
    check(stats, dense_stats(weights, v, keep))
    assert stats.num_queries.tolist() == [23, 15]


def test_window_stats_equal_dense_window_map():
    q, k, v = qkv(b=1, h=2, lq=30, s=30, d=4, dtype=torch.float64)
    mask = window_mask(30, 30, left=3, right=2, global_tokens=(7,))
    _, weights = attention(q, k, v, attn_mask=mask, need_weights=True, backend="math")
    stats = streaming_head_statistics(q, k, v, variant=SlidingWindow(3, 2, global_tokens=(7,)), chunk_size=7)
    check(stats, dense_stats(weights, v))
    local = streaming_head_statistics(q, k, v, variant=SlidingWindow(3, 2), chunk_size=7)
    assert (local.distance <= 3).all() and (stats.distance > local.distance).any()  # the global row reaches far


def test_linear_stats_equal_quadratic_weights():
    q, k, v = qkv(b=1, h=2, lq=16, s=16, d=4, dtype=torch.float64)
    weights = linear_attention_reference(q, k, v, is_causal=True, return_weights=True)
    stats = streaming_head_statistics(q, k, v, variant=LinearAttention(), is_causal=True, chunk_size=3)
    check(stats, dense_stats(weights, v))


def test_chunks_never_hold_more_than_chunk_rows(monkeypatch):
    import headwise.variants.stats as stats_module

    shapes = []
    real = stats_module.attention

    def spy(query, key, value, **kwargs):
        out, weights = real(query, key, value, **kwargs)
        shapes.append(tuple(weights.shape))
        return out, weights

    monkeypatch.setattr(stats_module, "attention", spy)
    q, k, v = qkv(b=1, h=2, lq=1000, s=1000, d=4)
    streaming_head_statistics(q, k, v, chunk_size=64)
    assert max(s[2] for s in shapes) == 64 and len(shapes) == 16


def test_bad_stats_arguments():
    q, k, v = qkv(b=1, h=2, lq=4, s=4, d=4)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int, got 0"):
        streaming_head_statistics(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match=r"query_mask has shape \(4,\)"):
        streaming_head_statistics(q, k, v, query_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"has neither chunk_mask nor chunk_weights"):
        streaming_head_statistics(q, k, v, variant=torch.nn.Identity())
