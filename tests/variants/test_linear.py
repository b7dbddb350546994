import pytest
import torch

from headwise.variants import (
    EluFeatureMap,
    LinearAttention,
    LinearState,
    RandomFeatureMap,
    linear_attention,
    linear_attention_reference,
    recurrent_linear_attention,
)
from tests.helpers import qkv

MAPS = {"elu": lambda d: EluFeatureMap(), "performer": lambda d: RandomFeatureMap(d, 24, seed=1)}


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("L", "S", "chunk"), [(1, 1, 4), (13, 13, 4), (16, 16, 16), (9, 21, 5)])
def test_parallel_equals_quadratic_reference_forward_and_backward(map_name, is_causal, L, S, chunk):
    q, k, v = qkv(b=2, h=4, k=2, lq=L, s=S, d=6, dtype=torch.float64, requires_grad=True)
    fm = MAPS[map_name](6)
    out = linear_attention(q, k, v, feature_map=fm, is_causal=is_causal, chunk_size=chunk)
    ref = linear_attention_reference(q, k, v, feature_map=fm, is_causal=is_causal)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9)


def test_reference_is_weighted_average_of_values():
    # the quadratic form itself: weights phi(q).phi(k) normalized per row, causal rows ignore the future
    q, k, v = qkv(b=1, h=2, lq=7, s=7, d=4, dtype=torch.float64)
    w = linear_attention_reference(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 7, dtype=torch.float64))
    assert (w.triu(1) == 0).all() and (w >= 0).all()
    phi_q = torch.nn.functional.elu(q * 4 ** -0.25) + 1  # scale 1/sqrt(4) = 1/2, sqrt(1/2) on each side
    phi_k = torch.nn.functional.elu(k * 4 ** -0.25) + 1
    raw = (phi_q @ phi_k.transpose(-2, -1)).tril()
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))


def test_padding_mask_equals_dropping_the_keys():
    q, k, v = qkv(b=1, h=2, lq=5, s=9, d=4, dtype=torch.float64)
    keep = torch.tensor([True] * 6 + [False] * 3)[None, None, None, :]
    out = linear_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(out, linear_attention(q, k[:, :, :6], v[:, :, :6]))


def test_gradcheck_causal_chunked_tiny():
    q, k, v = qkv(b=1, h=1, lq=5, s=5, d=3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: linear_attention(q, k, v, is_causal=True, chunk_size=2), (q, k, v))


@pytest.mark.parametrize("map_name", list(MAPS))
def test_recurrent_form_equals_parallel_form(map_name):
    q, k, v = qkv(b=2, h=4, k=2, lq=19, s=19, d=6, dtype=torch.float64)
    fm = MAPS[map_name](6)
    state = LinearState()
    steps = [recurrent_linear_attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, feature_map=fm)
             for t in range(19)]
    parallel = linear_attention(q, k, v, feature_map=fm, is_causal=True, chunk_size=4)
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, atol=1e-12, rtol=1e-10)
    assert state.length == 19


def test_module_decoding_with_state_equals_full_causal_pass():
    from headwise import Attention

    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, variant=LinearAttention(chunk_size=3)).double().eval()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    full, _ = layer(x, is_causal=True)
    state = layer.new_cache(2, 11)
    assert isinstance(state, LinearState)
    first, _ = layer(x[:, :4], is_causal=True, cache=state)  # a prompt: chunked form from an empty state
    rest = [layer(x[:, t : t + 1], is_causal=True, cache=state)[0] for t in range(4, 11)]  # recurrent steps
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-12, rtol=1e-10)


def test_performer_approximates_softmax_attention():
    # E[phi(q).phi(k)] = exp(q.k * scale): with many features the output nears softmax attention
    from headwise.functional import attention

    q, k, v = qkv(b=1, h=2, lq=32, s=32, d=8, dtype=torch.float64)
    q, k = q * 0.5, k * 0.5
    exact, _ = attention(q, k, v, backend="math")
    far = (linear_attention(q, k, v, feature_map=RandomFeatureMap(8, 8, seed=0)) - exact).abs().mean()
    near = (linear_attention(q, k, v, feature_map=RandomFeatureMap(8, 4096, seed=0)) - exact).abs().mean()
    assert near < 0.02 and near < far


def test_random_features_are_fixed_by_the_seed_and_not_in_the_state_dict():
    a, b = RandomFeatureMap(8, 16, seed=3), RandomFeatureMap(8, 16, seed=3)
    torch.testing.assert_close(a.projection, b.projection)
    assert dict(LinearAttention(a).state_dict()) == {}


def test_negative_feature_map_raises_naming_the_argument():
    q, k, v = qkv(b=1, h=2, lq=4, s=4, d=4)
    with pytest.raises(ValueError, match=r"feature_map gave negative values \(min -"):
        linear_attention(q, k, v, feature_map=lambda x, is_query: x)
    with pytest.raises(ValueError, match=r"feature_map gave negative values"):
        LinearAttention(lambda x, is_query: torch.tanh(x))(q, k, v)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attn_mask": torch.ones(4, 4, dtype=torch.bool)}, ValueError, r"takes only per-key masks"),
        ({"attn_mask": torch.zeros(1, 1, 1, 4)}, TypeError, r"bool attn_mask"),
        ({"dropout_p": 0.1}, ValueError, r"dropout_p=0.1: linear attention forms no attention probabilities"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
        ({"feature_map": lambda x, is_query: x[..., :1, :]}, ValueError, r"feature_map turned query"),
    ],
)
def test_bad_linear_arguments(kwargs, error, match):
    q, k, v = qkv(b=1, h=2, lq=4, s=4, d=4)
    with pytest.raises(error, match=match):
        linear_attention(q, k, v, **kwargs)


def test_random_feature_map_checks_sizes():
    with pytest.raises(ValueError, match=r"num_features must be a positive int, got 0"):
        RandomFeatureMap(8, 0)
    with pytest.raises(ValueError, match=r"built for head_dim=8"):
        RandomFeatureMap(8, 4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"LinearAttention never forms attention weights"):
        LinearAttention()(*qkv(b=1, h=1, lq=2, s=2, d=2), need_weights=True)


def test_causal_inference_path_writes_the_same_output():
    q, k, v = qkv(b=1, h=2, lq=21, s=21, d=4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        inference = linear_attention(q, k, v, is_causal=True, chunk_size=4)
    training = linear_attention(q, k, v, is_causal=True, chunk_size=4)
    assert training.requires_grad and not inference.requires_grad
    torch.testing.assert_close(inference, training, atol=0, rtol=0)
