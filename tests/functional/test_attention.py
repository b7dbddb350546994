"""headwise.functional.attention against SDPA, the float64 oracle, and its own invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from headwise.errors import ShapeError
from headwise.functional import attention, causal_mask
from headwise.functional._backends.weights import WeightsBackend
from headwise.functional._request import build_request
from tests.helpers import assert_close_to_oracle, oracle_error_factor, qkv

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
    assert weights is None
    oracle_error_factor(out, q, k, v, attn_mask=mask, is_causal=is_causal)
    # torch's kernel on the same inputs stands as close to the float64 oracle
    oracle_error_factor(_torch_sdpa(q, k, v, mask, is_causal), q, k, v, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_value_head_dim(backend):
    q, k, _ = qkv(lq=3, s=5, d=8, dtype=torch.float64)
    v = torch.randn(2, 4, 5, 3, dtype=torch.float64)  # Dv differs from D
    out, _ = attention(q, k, v, scale=0.5, backend=backend)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.5), atol=1e-12, rtol=0)
    assert out.shape == (2, 4, 3, 3)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = qkv(d=16, dtype=torch.float64)
    a, _ = attention(q, k, v)
    b, _ = attention(q, k, v, scale=1 / math.sqrt(16))
    torch.testing.assert_close(a, b, atol=1e-14, rtol=0)


@pytest.mark.parametrize("backend", ["weights", "math"])
def test_weights_produce_the_output(backend):
    q, k, v = qkv(k=2, dtype=torch.float64)
    out, weights = attention(q, k, v, need_weights=True, backend=backend)
    assert weights.shape == (2, 4, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, weights @ v.repeat_interleave(2, dim=1), atol=1e-12, rtol=0)
    _, mean = attention(q, k, v, need_weights=True, average_weights=True, backend=backend)
    torch.testing.assert_close(mean, weights.mean(1), atol=1e-12, rtol=0)


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
    _, avg = attention(q, k, v, attn_mask=mask, need_weights=True, average_weights=True)
    assert (avg[:, 2] == 0).all() and not avg.isnan().any()


def test_causal_is_bottom_right_aligned_for_decoding():
    q, k, v = qkv(lq=6, s=6, dtype=torch.float64)
    full, _ = attention(q, k, v, is_causal=True)
    last, _ = attention(q[:, :, -2:], k, v, is_causal=True)  # two new queries, whole cache
    torch.testing.assert_close(last, full[:, :, -2:], atol=1e-12, rtol=0)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_combines_with_a_mask(backend):
    q, k, v = qkv(lq=5, s=5, dtype=torch.float64)
    pad = torch.tensor([True, True, True, True, False])
    out, _ = attention(q, k, v, attn_mask=pad, is_causal=True, backend=backend)
    ref = _torch_sdpa(q, k, v, mask=causal_mask(5, 5) & pad)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


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


def _weights_backend(**budgets) -> WeightsBackend:
    return WeightsBackend(**budgets)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_gradcheck_averaged_weights(kv_heads):
    # several blocks of rows in backward (2 rows of all heads), two rows a block in forward
    backend = _weights_backend(small_maps=0, block_elements=2 * 2 * 5 * 2, head_block_elements=2 * 5 * 2)
    q, k, v = qkv(b=2, h=2, k=kv_heads, lq=4, s=5, d=3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 4, 5) > 0.3
    mask[0, 0, 1] = False  # an empty row

    def fn(q, k):
        request = build_request(
            q, k, v.detach(), attn_mask=mask, is_causal=False, scale=None, dropout_p=0.0, need_weights=True,
            average_weights=True,
        )
        return backend.run(request)[1]

    assert torch.autograd.gradcheck(fn, (q, k))
    _, full = attention(q, k, v, attn_mask=mask, need_weights=True, backend="math")
    torch.testing.assert_close(fn(q, k), full.mean(1), atol=1e-12, rtol=0)


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
@pytest.mark.parametrize("average", [True, False])
def test_weights_backend_paths_equal_math(grad, small_maps, kv_heads, average):
    # training on large maps: fused output + block-wise recomputed weights; small: one math pass;
    # inference: the block-wise one-pass output and averaged weights
    backend = _weights_backend(
        small_maps=2**21 if small_maps else 0, block_elements=2 * 4 * 7 * 2, head_block_elements=2 * 7 * 2
    )
    q, k, v = qkv(h=4, k=kv_heads, lq=5, s=7, dtype=torch.float64, requires_grad=grad)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[1, 0, 2] = False  # an empty row
    request = build_request(
        q, k, v, attn_mask=mask, is_causal=False, scale=None, dropout_p=0.0, need_weights=True,
        average_weights=average,
    )
    out, w = backend.run(request)
    ref_out, ref_w = attention(q, k, v, attn_mask=mask, need_weights=True, backend="math")
    ref_w = ref_w.mean(1) if average else ref_w
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=0)
    assert (w[1, ..., 2, :] == 0).all() and (out[1, :, 2] == 0).all()
    assert w.requires_grad == grad
    if grad:
        probe_out, probe_w = torch.randn_like(out), torch.randn_like(w)
        got = torch.autograd.grad((out * probe_out).sum() + (w * probe_w).sum(), (q, k, v))
        ref = torch.autograd.grad((ref_out * probe_out).sum() + (ref_w * probe_w).sum(), (q, k, v))
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("average", [True, False])
def test_weights_backend_float32_against_the_oracle(average):
    """The lean paths in float32 stand as close to the float64 oracle as the math path in float32."""
    backend = _weights_backend(small_maps=0, block_elements=4 * 4 * 33 * 3, head_block_elements=4 * 33 * 5)
    q, k, v = qkv(b=4, h=4, k=2, lq=31, s=33, d=16, requires_grad=True)
    mask = torch.rand(4, 1, 31, 33) > 0.3
    kwargs = dict(attn_mask=mask, is_causal=False, scale=None, dropout_p=0.0, need_weights=True, average_weights=average)
    out, w = backend.run(build_request(q, k, v, **kwargs))
    math32 = attention(q, k, v, **kwargs, backend="math")
    math64 = attention(q.double(), k.double(), v.double(), **kwargs, backend="math")
    for got, low, ref in ((out, math32[0], math64[0]), (w, math32[1], math64[1])):
        assert_close_to_oracle(got, ref, low)


@pytest.mark.parametrize("backend", ["sdpa", "weights", "math"])
def test_kv_index_maps_query_heads_to_kv_heads_on_every_backend(backend):
    """Groups of unequal size: query heads 0 | 1, 2, 3 | 4 read kv heads 0, 1, 2 (K does not divide H)."""
    kv_index = (0, 1, 1, 1, 2)
    q, k, v = qkv(b=2, h=5, k=3, lq=6, s=6, d=4, dtype=torch.float64, requires_grad=True)
    need_weights = backend != "sdpa"
    out, weights = attention(q, k, v, is_causal=True, kv_index=kv_index, need_weights=need_weights, backend=backend)
    index = torch.tensor(kv_index)
    ref, ref_weights = attention(
        q, k.index_select(1, index), v.index_select(1, index), is_causal=True, need_weights=True, backend="math"
    )
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert grads[1][:, 1].abs().sum() > 0  # kv head 1 gathers the gradients of its three query heads


def test_kv_index_errors():
    q, k, v = qkv(h=4, k=2)
    with pytest.raises(ShapeError, match=r"kv_index must give, for each of the H=4 query heads, a kv head in 0..1"):
        attention(q, k, v, kv_index=(0, 1, 2, 1))
    with pytest.raises(ShapeError, match=r"kv_index must give, for each of the H=4 query heads"):
        attention(q, k, v, kv_index=(0, 1))
    with pytest.raises(TypeError, match="kv_index must be a sequence of kv head indices"):
        attention(q, k, v, kv_index=3)


def _nan_case_mask(kind: str, lq: int, s: int) -> tuple[torch.Tensor | None, bool, list[int]]:
    """(attn_mask, is_causal, fully masked query rows) for the NaN tests; rows 1 and 3 hold the NaN / stay clean."""
    if kind == "none":
        return None, False, []
    if kind == "causal":
        return None, True, []
    if kind == "causal_short_keys":  # bottom-right causal with more queries than keys: row 0 sees nothing
        return None, True, list(range(lq - s))
    if kind == "padding":
        mask = torch.ones(2, 1, 1, s, dtype=torch.bool)
        mask[1, ..., -2:] = False
        return mask, False, []
    mask = torch.rand(lq, s) > 0.3
    mask[:, 0] = True
    mask[4] = False  # row 4 attends nothing
    if kind == "float":
        return torch.zeros(lq, s, dtype=torch.float64).masked_fill(~mask, float("-inf")), False, [4]
    return mask, False, [4]


@pytest.mark.parametrize("backend", ["sdpa", "weights", "weights_large_maps", "math"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "causal_short_keys", "padding", "bool", "float"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_nan_in_a_query_row_gives_nan_in_that_row_only(backend, mask_kind, kv_heads):
    """A NaN query row gives a NaN output row on every backend (the fused CPU kernel alone would give zeros);
    the other rows equal the clean computation, and rows with no key stay zero."""
    lq = 8 if mask_kind == "causal_short_keys" else 6
    s = 6
    q, k, v = qkv(b=2, h=4, k=kv_heads, lq=lq, s=s, d=8, dtype=torch.float64)
    mask, is_causal, dead = _nan_case_mask(mask_kind, lq, s)
    poisoned = q.clone().requires_grad_(backend == "weights_large_maps")
    row = dead[-1] + 1 if mask_kind == "causal_short_keys" else 1
    poisoned.data[0, 1, row, 2] = float("nan")  # one element of one query row of one head
    need_weights = backend != "sdpa"
    kwargs = dict(attn_mask=mask, is_causal=is_causal, need_weights=need_weights)
    if backend == "weights_large_maps":  # with autograd on large maps: the fused output, weights beside it
        request = build_request(poisoned, k, v, scale=None, dropout_p=0.0, average_weights=False, **kwargs)
        out, weights = _weights_backend(small_maps=0).run(request)
    else:
        out, weights = attention(poisoned, k, v, backend=backend, **kwargs)
    ref, ref_weights = attention(q, k, v, backend="math", attn_mask=mask, is_causal=is_causal, need_weights=True)
    assert out[0, 1, row].isnan().all()
    clean = torch.ones(out.shape[:3], dtype=torch.bool)
    clean[0, 1, row] = False
    assert out[clean].isfinite().all()
    torch.testing.assert_close(out[clean], ref[clean], atol=1e-12, rtol=0)
    if weights is not None:
        assert weights[0, 1, row].isnan().all()
        torch.testing.assert_close(weights[clean], ref_weights[clean], atol=1e-12, rtol=0)
    for r in dead:
        assert (out[:, :, r] == 0).all() and (ref[:, :, r] == 0).all()
