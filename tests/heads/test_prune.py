"""prune_heads_: pruning equals masking (random layers and the real MiniLM), bad input, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import headwise
from headwise.heads import attention_layers, head_counts, prune_heads_
from headwise.texts import doc_sentences


def _masked_attention(layer: headwise.Attention, drop: list[int]) -> headwise.Attention:
    masked = copy.deepcopy(layer)
    with torch.no_grad():
        masked.head_gate[drop] = 0.0
    return masked


@st.composite
def _gqa_layer_and_drop(draw):
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    heads = kv_heads * group
    head_dim = draw(st.integers(1, 5))
    embed_dim = draw(st.integers(1, 9))
    # keep `kept` query heads in each of a non-empty set of kv groups (groups stay equal)
    kept_groups = draw(st.sets(st.integers(0, kv_heads - 1), min_size=1))
    kept = draw(st.integers(1, group))
    keep = []
    for j in sorted(kept_groups):
        keep += [j * group + i for i in sorted(draw(st.permutations(range(group)))[:kept])]
    drop = [h for h in range(heads) if h not in keep]
    order = draw(st.permutations(drop))
    return embed_dim, heads, kv_heads, head_dim, list(order)


@settings(max_examples=40, deadline=None)
@given(case=_gqa_layer_and_drop(), batch=st.integers(1, 2), length=st.integers(1, 6), bias=st.booleans())
def test_pruning_equals_masking_attention(case, batch, length, bias):
    embed_dim, heads, kv_heads, head_dim, drop = case
    layer = headwise.Attention(embed_dim, heads, num_kv_heads=kv_heads, head_dim=head_dim, bias=bias).double().eval()
    x = torch.randn(batch, length, embed_dim, dtype=torch.float64)
    pad = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    pad[0, ..., length - 1 :] = length == 1  # padding on the last key of the first row (when L > 1)
    expected, _ = _masked_attention(layer, drop)(x, attn_mask=pad)
    prune_heads_(layer, {0: drop})
    out, _ = layer(x, attn_mask=pad)
    assert layer.num_heads == heads - len(drop)
    assert layer.head_gate.shape == (heads - len(drop),)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_gqa_kv_head_goes_only_with_all_its_query_heads():
    layer = headwise.Attention(16, 6, num_kv_heads=3, head_dim=4)
    prune_heads_(layer, {0: [2, 3]})  # the whole group of kv head 1
    assert (layer.num_heads, layer.num_kv_heads) == (4, 2)
    prune_heads_(layer, {0: [0, 2]})  # one query head of each remaining group: kv heads stay
    assert (layer.num_heads, layer.num_kv_heads) == (2, 2)
    assert layer.k_proj.weight.shape == (8, 16) and layer.out_proj.weight.shape == (16, 8)


@settings(max_examples=30, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    data=st.data(),
    packed=st.booleans(),
    bias_kv=st.booleans(),
    zero_attn=st.booleans(),
    batch_first=st.booleans(),
)
def test_pruning_equals_masking_multihead(heads, head_dim, data, packed, bias_kv, zero_attn, batch_first):
    embed_dim = heads * head_dim
    kdim = None if packed else embed_dim + 1
    layer = headwise.MultiheadAttention(
        embed_dim, heads, add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=kdim, vdim=kdim,
        batch_first=batch_first, dtype=torch.float64,
    ).eval()
    drop = data.draw(st.lists(st.integers(0, heads - 1), unique=True, max_size=heads - 1))
    length = data.draw(st.integers(1, 5))
    x = torch.randn(length, 2, embed_dim, dtype=torch.float64)
    kv = x if packed else torch.randn(length, 2, embed_dim + 1, dtype=torch.float64)
    if batch_first:
        x, kv = x.transpose(0, 1), kv.transpose(0, 1)
    masked = copy.deepcopy(layer)
    with torch.no_grad():  # a head's output is silenced by zeroing its columns of out_proj
        for h in drop:
            masked.out_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0.0
    expected, _ = masked(x, kv, kv, need_weights=False)
    prune_heads_(layer, {0: drop})
    out, weights = layer(x, kv, kv, average_attn_weights=False)
    assert layer.num_heads == heads - len(drop) and layer.embed_dim == embed_dim
    assert weights.shape[1] == heads - len(drop)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_multihead_by_module_name_inside_a_model():
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 4, batch_first=True), num_layers=2, enable_nested_tensor=False
    )
    headwise.replace_mha_(encoder)
    names = [name for name, _ in attention_layers(encoder)]
    assert names == ["layers.0.self_attn", "layers.1.self_attn"]
    prune_heads_(encoder, {"layers.1.self_attn": [0, 3], 0: [2]})
    assert head_counts(encoder) == [3, 2]
    encoder.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        assert encoder(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


@pytest.fixture(scope="module")
def minilm():
    import headwise.models as hm

    return hm.load()


# layer -> heads removed in the MiniLM tests: varied counts, and one layer left whole
MINILM_DROP = {0: [0, 5, 11], 1: [3], 2: list(range(1, 12)), 4: [2, 7, 8, 9], 5: [6]}


def test_pruning_equals_masking_on_minilm():
    """An identity on the real weights, so in float64 (float32 rounding differs between processors)."""
    import headwise.models as hm

    minilm = hm.load(dtype=torch.float64)
    batch = minilm.tokenize(doc_sentences()[:6])
    masked = copy.deepcopy(minilm)
    with torch.no_grad():
        for layer, drop in MINILM_DROP.items():
            masked.attention_layers[layer].head_gate[drop] = 0.0
    pruned = copy.deepcopy(minilm)
    prune_heads_(pruned, MINILM_DROP)
    assert pruned.num_heads == (9, 11, 1, 12, 8, 11)
    assert pruned.config.num_heads == pruned.num_heads
    with torch.no_grad():
        expected, _ = masked(**batch)
        out, maps = pruned(**batch, output_attentions=True)
    assert [m.shape[1] for m in maps] == list(pruned.num_heads)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_pruned_minilm_saves_and_loads(minilm, tmp_path):
    import json

    import headwise.models as hm

    pruned = copy.deepcopy(minilm)
    prune_heads_(pruned, MINILM_DROP)
    pruned.save(tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["headwise_num_heads"] == [9, 11, 1, 12, 8, 11]
    loaded = hm.load(tmp_path / "pruned")
    assert loaded.num_heads == pruned.num_heads
    texts = doc_sentences()[:4]
    assert torch.equal(loaded.encode(texts), pruned.encode(texts))  # the same weights, the same kernels
    for (name, a), b in zip(pruned.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, head_counts(model)


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        ({6: [0]}, ValueError, r"layer index 6 is out of range: the model has 6 attention layers \(indices 0..5; no negative"),
        ({-1: [0]}, ValueError, r"layer index -1 is out of range: the model has 6 attention layers \(indices 0..5; no negative"),
        ({0: [1], 1: [12]}, ValueError, r"heads\[1\] has head index 12 but the layer has 12 heads \(indices 0..11; no negative"),
        ({0: [-1]}, ValueError, r"head index -1 but the layer has 12 heads"),
        ({0: [1], 3: [4, 2, 4]}, ValueError, r"heads\[3\] lists head 4 more than once"),
        ({0: [1], 2: list(range(12))}, ValueError, r"removes all 12 heads of the layer; a layer keeps at least one"),
        (
            {"network.encoder.blocks.9.attention": [0]},
            ValueError,
            r"no submodule named 'network.encoder.blocks.9.attention'.*Did you mean",
        ),
        ({"network.encoder.blocks.0.feed_forward": [0]}, TypeError, r"is a FeedForward, not an attention layer"),
        ({0: [1], "network.encoder.blocks.0.attention": [2]}, ValueError, r"are the same attention layer"),
        ({0: [1.0]}, TypeError, r"must hold ints, got 1.0"),
        ({0: "12"}, TypeError, r"must be a sequence of head indices"),
        ({1.5: [0]}, TypeError, r"layer keys must be int indices or module names"),
    ],
)
def test_bad_requests_leave_the_model_unchanged(minilm, request_, error, match):
    before, counts = _snapshot(minilm)
    with pytest.raises(error, match=match):
        prune_heads_(minilm, request_)
    after, counts_after = _snapshot(minilm)
    assert counts_after == counts
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_containers_and_models():
    with pytest.raises(TypeError, match=r"heads must be a mapping"):
        prune_heads_(headwise.Attention(8, 2), [0])
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        prune_heads_("model", {0: [0]})
    with pytest.raises(ValueError, match=r"has no headwise attention layer.*replace_mha_"):
        prune_heads_(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2)), {0: [0]})
    with pytest.raises(TypeError, match=r"torch's nn.MultiheadAttention assumes"):
        prune_heads_(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2)), {"0": [0]})


@pytest.mark.parametrize(
    ("heads", "groups", "drop", "kv_index", "kv_heads"),
    [
        (4, 2, [0], (0, 1, 1), 2),  # groups of 1 and 2 query heads: mapped explicitly
        (4, 2, [0, 1], None, 1),  # a whole kv group: the kv head goes, the groups stay equal
        (4, 2, [1, 3], None, 2),  # one query head from each group: equal groups again
        (6, 3, [0, 4, 5], (0, 1, 1), 2),  # the last group goes, the first keeps one head
        (6, 3, [0], (0, 1, 1, 2, 2), 3),  # every kv head kept, groups of 1, 2 and 2
    ],
)
def test_grouped_query_pruning_equals_masking_with_caches(heads, groups, drop, kv_index, kv_heads):
    """Every granularity, including groups left with different numbers of query heads (float64)."""
    layer = headwise.Attention(
        24, heads, num_kv_heads=groups, head_dim=4, rotary=headwise.RotaryEmbedding(4), dtype=torch.float64
    ).eval()
    masked = copy.deepcopy(layer)
    with torch.no_grad():
        masked.head_gate[drop] = 0.0
    pruned = copy.deepcopy(layer)
    prune_heads_(pruned, {0: drop})
    assert pruned.num_heads == heads - len(drop) and pruned.num_kv_heads == kv_heads
    assert pruned.kv_index == kv_index
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    pad = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    pad[1, ..., :2] = False
    for kwargs in (dict(is_causal=True), dict(attn_mask=pad)):
        torch.testing.assert_close(pruned(x, **kwargs)[0], masked(x, **kwargs)[0], atol=1e-12, rtol=0)
    _, weights = pruned(x, need_weights=True)
    _, reference = masked(x, need_weights=True)
    kept = [h for h in range(heads) if h not in drop]
    torch.testing.assert_close(weights, reference[:, kept], atol=1e-12, rtol=0)
    cache = pruned.new_cache(2, 7)
    assert cache.keys.shape[1] == kv_heads  # the cache holds only the kept kv heads
    steps = torch.cat([pruned(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(7)], 1)
    torch.testing.assert_close(steps, masked(x, is_causal=True)[0], atol=1e-12, rtol=0)


def test_empty_lists_change_nothing_and_requires_grad_is_kept():
    layer = headwise.Attention(8, 2)
    layer.head_gate.requires_grad_(True)
    prune_heads_(layer, {0: []})
    assert layer.num_heads == 2
    prune_heads_(layer, {0: torch.tensor([1])})
    assert layer.num_heads == 1 and layer.head_gate.requires_grad and layer.q_proj.weight.requires_grad
