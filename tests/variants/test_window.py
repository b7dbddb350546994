import pytest
import torch

from headwise.functional import attention
from headwise.variants import SlidingWindow, sliding_window_attention, window_mask
from tests.helpers import qkv


def dense_reference(q, k, v, *, left, right, global_tokens=(), is_causal=False, attn_mask=None):
    mask = window_mask(q.shape[2], k.shape[2], left=left, right=right, global_tokens=global_tokens, is_causal=is_causal)
    if attn_mask is not None:
        mask = mask & attn_mask
    out, _ = attention(q, k, v, attn_mask=mask, backend="math")
    return out


CASES = [
    # (L, S, left, right, global_tokens, block_size)
    (1, 1, 0, 0, (), None),
    (23, 23, 3, 2, (), 5),
    (23, 23, 4, 4, (0, 11, 22), 6),
    (17, 29, 5, 1, (2, 20), 4),  # queries are the last 17 of 29 positions
    (40, 40, 0, 7, (39,), 9),
]


@pytest.mark.parametrize(("L", "S", "left", "right", "glob", "block"), CASES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_window_equals_dense_mask_math_path_forward_and_backward(L, S, left, right, glob, block, is_causal):
    q, k, v = qkv(b=2, h=4, k=2, lq=L, s=S, d=8, dtype=torch.float64, requires_grad=True)
    out = sliding_window_attention(
        q, k, v, left=left, right=right, global_tokens=glob, is_causal=is_causal, block_size=block
    )
    ref = dense_reference(q, k, v, left=left, right=right, global_tokens=glob, is_causal=is_causal)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_window_with_padding_mask_and_dead_rows_matches_dense():
    q, k, v = qkv(b=2, h=2, lq=19, s=19, d=4, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(2, 1, 1, 19, dtype=torch.bool)
    keep[1, ..., 10:] = False  # second sequence: 10 real tokens; its padding queries near the end see nothing
    out = sliding_window_attention(q, k, v, left=2, right=2, global_tokens=(0,), attn_mask=keep, block_size=4)
    ref = dense_reference(q, k, v, left=2, right=2, global_tokens=(0,), attn_mask=keep)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert torch.isfinite(out).all()
    gq, = torch.autograd.grad(out.sum(), q)
    rq, = torch.autograd.grad(ref.sum(), q)
    torch.testing.assert_close(gq, rq, atol=1e-12, rtol=0)


def test_window_gradcheck_tiny():
    q, k, v = qkv(b=1, h=2, lq=6, s=6, d=3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v: sliding_window_attention(q, k, v, left=1, right=1, global_tokens=(3,), block_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_float32_sdpa_blocks_within_oracle_tolerance():
    q, k, v = qkv(b=1, h=4, lq=300, s=300, d=16)
    out = sliding_window_attention(q, k, v, left=20, right=20, global_tokens=(0, 150))
    ref = dense_reference(q.double(), k.double(), v.double(), left=20, right=20, global_tokens=(0, 150))
    same, _ = attention(q, k, v, attn_mask=window_mask(300, 300, left=20, right=20, global_tokens=(0, 150)), backend="math")
    err = (out.double() - ref).abs().max().item()
    assert err <= 4 * (same.double() - ref).abs().max().item() + 1e-6


def test_no_dense_map_is_built_for_long_inputs():
    # L = 4096 with a 32-wide window: a dense (L, L) float map alone would be 64 MiB per head;
    # the blocks never hold more than (block, block + w) per head.
    q, k, v = qkv(b=1, h=1, lq=4096, s=4096, d=8)
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[0].shape[-2] * args[1].shape[-2])
        return attention(*args, **kwargs)

    import headwise.variants.window as window

    original = window.attention
    window.attention = spy
    try:
        out = sliding_window_attention(q, k, v, left=16, right=16, global_tokens=(0,))
    finally:
        window.attention = original
    assert out.shape == (1, 1, 4096, 8)
    assert max(seen) <= 128 * (128 + 33 + 1) or max(seen) == 4096  # band blocks, and the one global row
    assert sum(seen) < 4096 * 4096 // 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"left": 30, "right": 0}, ValueError, r"window \(left=30, right=0: 31 keys per query\) is larger than the sequence \(S=20"),
        ({"left": 25, "right": 0, "is_causal": True}, ValueError, r"left=25: 26 keys.*larger than the sequence"),
        ({"left": -1, "right": 2}, ValueError, r"left=-1 is negative"),
        ({"left": 2, "right": -3}, ValueError, r"right=-3 is negative"),
        ({"left": 2, "right": 2, "global_tokens": (0, 20)}, ValueError, r"global_tokens has positions \[20\] outside the sequence 0..19"),
        ({"left": 2, "right": 2, "global_tokens": (-1,)}, ValueError, r"global_tokens has negative positions \[-1\]"),
        ({"left": 2.5, "right": 2}, TypeError, r"left must be an int"),
        ({"left": 2, "right": 2, "block_size": 0}, ValueError, r"block_size must be a positive int"),
    ],
)
def test_bad_window_arguments_raise_naming_the_argument(kwargs, error, match):
    q, k, v = qkv(b=1, h=2, lq=20, s=20, d=4)
    with pytest.raises(error, match=match):
        sliding_window_attention(q, k, v, **kwargs)


def test_module_rejects_negative_sizes_and_weights_and_cache():
    with pytest.raises(ValueError, match=r"right=-1 is negative"):
        SlidingWindow(2, -1)
    with pytest.raises(ValueError, match=r"global_tokens has negative positions"):
        SlidingWindow(2, 2, global_tokens=[-4])
    q, k, v = qkv(b=1, h=2, lq=8, s=8, d=4)
    with pytest.raises(ValueError, match=r"SlidingWindow never forms attention weights"):
        SlidingWindow(2, 2)(q, k, v, need_weights=True)
    with pytest.raises(TypeError, match=r"decodes with the WindowCache"):
        SlidingWindow(2, 2)(q, k, v, is_causal=True, cache=object())


@pytest.mark.parametrize("is_causal", [False, True])
def test_inference_path_writes_the_same_output(is_causal):
    # without autograd the blocks go into one preallocated tensor; with it they are concatenated
    q, k, v = qkv(b=1, h=2, lq=33, s=33, d=4, dtype=torch.float64, requires_grad=True)
    kwargs = {"left": 4, "right": 3, "global_tokens": (1, 30), "is_causal": is_causal, "block_size": 8}
    with torch.no_grad():
        inference = sliding_window_attention(q, k, v, **kwargs)
    training = sliding_window_attention(q, k, v, **kwargs)
    assert training.requires_grad and not inference.requires_grad
    torch.testing.assert_close(inference, training, atol=0, rtol=0)
    torch.testing.assert_close(inference, dense_reference(q, k, v, **{k_: kwargs[k_] for k_ in ("left", "right", "global_tokens", "is_causal")}), atol=1e-12, rtol=0)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_interior_blocks_batched_in_one_call_match_dense(is_causal, grad):
    # no global tokens and no mask: the interior band blocks go through attention() together
    q, k, v = qkv(b=2, h=4, k=2, lq=90, s=101, d=8, dtype=torch.float64, requires_grad=grad)
    kwargs = {"left": 6, "right": 3, "is_causal": is_causal, "block_size": 4}
    calls = []

    def spy(*args, **kw):
        calls.append(args[0].shape[0])
        return attention(*args, **kw)

    import headwise.variants.window as window

    original = window.attention
    window.attention = spy
    try:
        out = sliding_window_attention(q, k, v, **kwargs)
    finally:
        window.attention = original
    assert max(calls) == 2 * window._BLOCKS_PER_CALL  # B x blocks per call
    assert len(calls) < -(-90 // 4)  # fewer calls than blocks
    ref = dense_reference(q, k, v, left=6, right=3, is_causal=is_causal)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    if grad:
        g = torch.randn_like(out)
        got, want = torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
