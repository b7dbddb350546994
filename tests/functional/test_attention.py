"""headwise.functional.attention against SDPA, the float64 oracle, and its own invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from headwise.functional import attention, attention_weights, causal_mask
from tests.helpers import oracle_error_factor, qkv

BACKENDS = ["sdpa", "math"]


def _torch_sdpa(q, k, v, mask=None, is_causal=False, scale=None):
    """Reference call of F.scaled_dot_product_attention with kv heads repeated by hand."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "padding", "causal"])
def test_matches_sdpa(backend, kv_heads, mask_kind):
    q, k, v = qkv(b=2, h=4, k=kv_heads, lq=6, s=6, d=8)
    mask, is_causal = None, False
    if mask_kind == "bool":
        mask = torch.rand(2, 4, 6, 6) > 0.3
        mask[..., 0] = True  # keep every row alive so torch's reference has no empty rows
    elif mask_kind == "float":
        mask = torch.randn(1, 4, 6, 6)
    elif mask_kind == "padding":
        mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]  # (B, 1, 1, S)
    elif mask_kind == "causal":
        is_causal = True
    out, weights = attention(q, k, v, attn_mask=mask, is_causal=is_causal, backend=backend)
    ref = _torch_sdpa(q, k, v, mask, is_causal)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    assert weights is None
    oracle_error_factor(out, q, k, v, attn_mask=mask, is_causal=is_causal)


def test_scale_and_value_head_dim():
    q, k, _ = qkv(lq=3, s=5, d=8)
    v = torch.randn(2, 4, 5, 3)  # Dv differs from D
    out, _ = attention(q, k, v, scale=0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.5))
    assert out.shape == (2, 4, 3, 3)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = qkv(d=16)
    a, _ = attention(q, k, v)
    b, _ = attention(q, k, v, scale=1 / math.sqrt(16))
    torch.testing.assert_close(a, b)


def test_math_returns_weights_that_produce_the_output():
    q, k, v = qkv(k=2)
    out, weights = attention(q, k, v, need_weights=True)
    assert weights.shape == (2, 4, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    torch.testing.assert_close(out, weights @ v.repeat_interleave(2, dim=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["bool", "float", "causal_short_keys"])
def test_fully_masked_rows_are_zero_forward_and_backward(backend, kind):
    q, k, v = qkv(lq=5, s=5, requires_grad=True)
    mask, is_causal, dead = None, False, [1, 3]
    if kind == "bool":
        mask = torch.ones(5, 5, dtype=torch.bool)
        mask[dead] = False
    elif kind == "float":
        mask = torch.zeros(5, 5)
        mask[dead] = float("-inf")
    else:  # more queries than keys, bottom-right causal: the first rows see nothing
        q = torch.randn(2, 4, 7, 8, requires_grad=True)
        is_causal, dead = True, [0, 1]
    out, _ = attention(q, k, v, attn_mask=mask, is_causal=is_causal, backend=backend)
    assert not out.isnan().any()
    assert (out[:, :, dead] == 0).all()
    alive = [i for i in range(q.shape[2]) if i not in dead]
    assert (out[:, :, alive].abs().sum(-1) > 0).all()
    (out.square().sum()).backward()
    for t in (q, k, v):
        assert not t.grad.isnan().any()
    assert (q.grad[:, :, dead] == 0).all()


def test_fully_masked_rows_have_zero_weights():
    q, k, v = qkv(lq=4, s=4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    _, w = attention(q, k, v, attn_mask=mask, need_weights=True)
    assert (w[:, :, 2] == 0).all()
    torch.testing.assert_close(w[:, :, [0, 1, 3]].sum(-1), torch.ones(2, 4, 3))
    avg = attention_weights(q, k, attn_mask=mask, average_heads=True)
    assert (avg[:, 2] == 0).all() and not avg.isnan().any()


def test_causal_is_bottom_right_aligned_for_decoding():
    q, k, v = qkv(lq=6, s=6)
    full, _ = attention(q, k, v, is_causal=True)
    last, _ = attention(q[:, :, -2:], k, v, is_causal=True)  # two new queries, whole cache
    torch.testing.assert_close(last, full[:, :, -2:])
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_combines_with_a_mask(backend):
    q, k, v = qkv(lq=5, s=5)
    pad = torch.tensor([True, True, True, True, False])
    out, _ = attention(q, k, v, attn_mask=pad, is_causal=True, backend=backend)
    ref = _torch_sdpa(q, k, v, mask=causal_mask(5, 5) & pad)
    torch.testing.assert_close(out, ref)


def test_dropout_only_changes_training_output():
    q, k, v = qkv()
    a, _ = attention(q, k, v, dropout_p=0.5, backend="math", need_weights=True)
    b, _ = attention(q, k, v)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "causal"])
def test_gradcheck_math(mask_kind):
    q, k, v = qkv(b=1, h=2, k=1, lq=3, s=4, d=3, dtype=torch.float64, requires_grad=True)
    mask = None
    if mask_kind == "bool":
        mask = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])  # one empty row

    def fn(q, k, v):
        out, w = attention(q, k, v, attn_mask=mask, is_causal=mask_kind == "causal", need_weights=True)
        return out, w

    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_gradcheck_averaged_weights(kv_heads, monkeypatch):
    from headwise.functional import _weights

    monkeypatch.setattr(_weights, "BLOCK_ELEMENTS", 2 * 2 * 5)  # several blocks of rows (backward)
    monkeypatch.setattr(_weights, "HEAD_BLOCK_ELEMENTS", 2 * 5 * 2)  # two rows a block (forward)
    q, k, _ = qkv(b=2, h=2, k=kv_heads, lq=4, s=5, d=3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 4, 5) > 0.3
    mask[0, 0, 1] = False  # an empty row

    def fn(q, k):
        return attention_weights(q, k, attn_mask=mask, average_heads=True)

    assert torch.autograd.gradcheck(fn, (q, k))
    full = attention_weights(q, k, attn_mask=mask).mean(1)
    torch.testing.assert_close(fn(q, k), full)


def test_sdpa_gradients_match_oracle():
    q, k, v = qkv(k=2, requires_grad=True)
    mask = torch.rand(2, 1, 5, 7) > 0.2
    out, _ = attention(q, k, v, attn_mask=mask, backend="sdpa")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = attention(q64, k64, v64, attn_mask=mask, backend="math")
    ref_grads = torch.autograd.grad(ref.square().sum(), (q64, k64, v64))
    q32, k32, v32 = (t.detach().requires_grad_() for t in (q, k, v))
    low, _ = attention(q32, k32, v32, attn_mask=mask, backend="math")
    low_grads = torch.autograd.grad(low.square().sum(), (q32, k32, v32))
    for g, r, lo in zip(grads, ref_grads, low_grads, strict=True):
        err = (g.double() - r).abs().max().item()
        base = (lo.double() - r).abs().max().item()
        assert err <= 4 * base + 1e-6


# --- properties -------------------------------------------------------------------------------


@st.composite
def _shapes(draw):
    kv_heads = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    return dict(
        b=draw(st.integers(1, 2)),
        h=kv_heads * groups,
        k=kv_heads,
        lq=draw(st.integers(1, 7)),
        s=draw(st.integers(1, 7)),
        d=draw(st.sampled_from([1, 3, 4, 8])),
    )


@settings(max_examples=30, deadline=None)
@given(shape=_shapes(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16))
def test_property_rows_sum_to_one_or_zero(shape, backend, seed):
    torch.manual_seed(seed)
    q, k, v = qkv(**shape)
    mask = torch.rand(shape["lq"], shape["s"]) > 0.4
    out, _ = attention(q, k, v, attn_mask=mask, backend=backend)
    _, w = attention(q, k, v, attn_mask=mask, need_weights=True)
    sums = w.sum(-1)  # (B, H, L)
    alive = mask.any(-1)  # (L,)
    torch.testing.assert_close(sums[..., alive], torch.ones_like(sums[..., alive]))
    assert (sums[..., ~alive] == 0).all()
    assert (out[:, :, ~alive] == 0).all() and not out.isnan().any()


@settings(max_examples=30, deadline=None)
@given(shape=_shapes(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16))
def test_property_causal_ignores_future(shape, backend, seed):
    torch.manual_seed(seed)
    shape["s"] = shape["lq"]
    q, k, v = qkv(**shape)
    out, _ = attention(q, k, v, is_causal=True, backend=backend)
    cut = shape["lq"] // 2
    k2, v2 = k.clone(), v.clone()
    k2[:, :, cut + 1 :] = torch.randn_like(k2[:, :, cut + 1 :])
    v2[:, :, cut + 1 :] = torch.randn_like(v2[:, :, cut + 1 :])
    out2, _ = attention(q, k2, v2, is_causal=True, backend=backend)
    torch.testing.assert_close(out[:, :, : cut + 1], out2[:, :, : cut + 1])


@settings(max_examples=30, deadline=None)
@given(shape=_shapes(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16))
def test_property_grouped_query_equals_repeated_heads(shape, backend, seed):
    torch.manual_seed(seed)
    q, k, v = qkv(**shape)
    rep = shape["h"] // shape["k"]
    grouped, _ = attention(q, k, v, backend=backend)
    plain, _ = attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), backend=backend)
    torch.testing.assert_close(grouped, plain)


@settings(max_examples=30, deadline=None)
@given(shape=_shapes(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**16))
def test_property_permuting_keys_with_values(shape, backend, seed):
    torch.manual_seed(seed)
    q, k, v = qkv(**shape)
    mask = torch.rand(shape["lq"], shape["s"]) > 0.3
    perm = torch.randperm(shape["s"])
    a, _ = attention(q, k, v, attn_mask=mask, backend=backend)
    b, _ = attention(q, k[:, :, perm], v[:, :, perm], attn_mask=mask[:, perm], backend=backend)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("grad", "small_maps"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_mean_weights_both_paths(grad, small_maps, kv_heads, monkeypatch):
    import headwise.functional
    from headwise.functional import _weights, attention_mean_weights

    monkeypatch.setattr(_weights, "BLOCK_ELEMENTS", 2 * 4 * 7 * 2)  # several row blocks (backward)
    monkeypatch.setattr(_weights, "HEAD_BLOCK_ELEMENTS", 2 * 7 * 2)  # two rows a block (forward)
    if not small_maps:  # training on large maps: fused output + block-wise recomputed weights
        monkeypatch.setattr(headwise.functional, "SMALL_WEIGHT_MAPS", 0)
    q, k, v = qkv(h=4, k=kv_heads, lq=5, s=7, requires_grad=grad)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[1, 0, 2] = False  # an empty row
    out, w = attention_mean_weights(q, k, v, attn_mask=mask)
    ref_out, ref_w = attention(q, k, v, attn_mask=mask, need_weights=True, backend="math")
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w.mean(1))
    assert (w[1, 2] == 0).all() and (out[1, :, 2] == 0).all()
    assert w.requires_grad == grad
    if grad:
        probe_out, probe_w = torch.randn_like(out), torch.randn_like(w)
        got = torch.autograd.grad((out * probe_out).sum() + (w * probe_w).sum(), (q, k, v))
        ref = torch.autograd.grad((ref_out * probe_out).sum() + (ref_w.mean(1) * probe_w).sum(), (q, k, v))
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b)
