"""Every error of the drop-in layer: clear, with values and a hint; torch's AssertionError still catches it."""

from __future__ import annotations

import warnings

import pytest
import torch

from headwise import MultiheadAttention, ShapeError, TorchCompatError, TorchCompatShapeError, replace_mha_


def test_embed_dim_not_divisible_lists_divisors():
    msg = (
        r"embed_dim=500 is not divisible by num_heads=8 \(head_dim would be 62.5\); use a num_heads "
        r"that divides 500: 1, 2, 4, 5, 10, 20, 25, 50, 100, 125, 250, 500."
    )
    with pytest.raises(ValueError, match=msg):
        MultiheadAttention(500, 8)


def test_non_positive_sizes():
    with pytest.raises(ValueError, match="must be greater than 0, got embed_dim=0 and num_heads=2"):
        MultiheadAttention(0, 2)


def test_non_integer_sizes():
    with pytest.raises(TypeError, match=r"num_heads must be an int, got float 2.0"):
        MultiheadAttention(8, 2.0)


def test_dropout_out_of_range():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got 1.5"):
        MultiheadAttention(8, 2, dropout=1.5)


def test_batch_first_confusion_is_named():
    m = MultiheadAttention(512, 8, batch_first=True)
    q = torch.randn(10, 32, 512)  # (seq, batch, embed)
    kv = torch.randn(12, 32, 512)
    with pytest.raises(
        ShapeError,
        match=r"disagree on the batch size \(10, 12, 12\); batch_first=True expects \(batch, seq, E\) "
        r"for each. The inputs look like \(seq, batch, embed\): did you mean batch_first=False\?",
    ):
        m(q, kv, kv)


def test_batch_first_false_confusion_is_named():
    m = MultiheadAttention(16, 2)
    q = torch.randn(4, 10, 16)  # (batch, seq, embed)
    kv = torch.randn(4, 12, 16)
    with pytest.raises(ShapeError, match=r"did you mean batch_first=True\?"):
        m(q, kv, kv)


def test_wrong_embed_dim():
    m = MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, 12)
    with pytest.raises(
        ShapeError, match=r"query has shape \(2, 5, 12\) but the layer has embed_dim=16: batch_first=True expects \(batch, seq, 16\)"
    ):
        m(x, x, x)


def test_wrong_kdim():
    m = MultiheadAttention(16, 2, kdim=6, vdim=6)
    q = torch.randn(5, 2, 16)
    k = torch.randn(7, 2, 16)
    with pytest.raises(ShapeError, match=r"key has shape \(7, 2, 16\) but the layer has kdim=6"):
        m(q, k, k)


def test_key_value_length_mismatch():
    m = MultiheadAttention(16, 2)
    q = torch.randn(5, 2, 16)
    with pytest.raises(ShapeError, match=r"different sequence lengths \(7 and 6\)"):
        m(q, torch.randn(7, 2, 16), torch.randn(6, 2, 16))


def test_key_padding_mask_transposed():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16)
    with pytest.raises(
        ShapeError,
        match=r"key_padding_mask has shape \(5, 3\), expected \(3, 5\) \(batch, source length\). It looks transposed",
    ):
        m(x, x, x, key_padding_mask=torch.zeros(5, 3, dtype=torch.bool))


def test_attn_mask_wrong_shape_lists_expected():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16)
    with pytest.raises(
        ShapeError,
        match=r"attn_mask has shape \(4, 5\); expected \(L, S\) = \(5, 5\) or \(batch \* num_heads, L, S\) = \(6, 5, 5\)",
    ):
        m(x, x, x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))


def test_mask_dtype():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16)
    with pytest.raises(TypeError, match=r"key_padding_mask has dtype torch.int64; expected torch.bool \(True = masked out"):
        m(x, x, x, key_padding_mask=torch.zeros(3, 5, dtype=torch.long))


def test_input_dtype_mismatch_with_weights():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"query has dtype torch.float64 but the layer's weights are torch.float32; convert the input"
    ):
        m(x, x, x)


def test_key_dtype_differs_from_query():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16)
    with pytest.raises(TypeError, match="key has dtype torch.float64 but query has torch.float32"):
        m(x, x.double(), x)


def test_device_mismatch():
    m = MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16, device="meta")
    with pytest.raises(ValueError, match="query is on meta but the layer's weights are on cpu"):
        m(x, x, x)


def _nested(dim=8, layout=torch.strided):
    return torch.nested.nested_tensor([torch.randn(3, dim), torch.randn(5, dim)], layout=layout)


#: nested inputs outside torch's fast path: (layer arguments, how to call, what torch says)
NESTED_REFUSALS = {
    "training": (dict(), dict(train=True), "training is enabled"),
    "autograd": (dict(), dict(grad=True), "grad is enabled and at least one of query"),
    "cross-attention": (dict(), dict(cross=True), "non-self attention was used"),
    "odd heads": (dict(num_heads=1), dict(), "self.num_heads is not even"),
    "sequence first": (dict(batch_first=False), dict(), "batch_first was not True"),
    "bias_kv": (dict(add_bias_kv=True), dict(), "self.bias_k was not None"),
    "zero_attn": (dict(add_zero_attn=True), dict(), "add_zero_attn was enabled"),
    "kdim": (dict(kdim=6, vdim=6), dict(), "in_proj_weight was None"),
    "padding mask": (dict(), dict(kpm=True), "supplying both src_key_padding_mask and src_mask"),
    "float mask": (dict(), dict(attn=True), "supplying both src_key_padding_mask and src_mask"),
    "jagged layout": (dict(), dict(layout=torch.jagged), "some Tensor argument has_torch_function"),
    "fast path off": (dict(), dict(fastpath=False), "torch.backends.mha.get_fastpath_enabled() was not True"),
}


@pytest.mark.parametrize("case", list(NESTED_REFUSALS))
def test_nested_input_outside_torchs_fast_path_raises_torchs_error(case):
    """Where torch's layer refuses a nested tensor, headwise's refuses it with torch's message (and a hint)."""
    config, call, reason = NESTED_REFUSALS[case]
    config = {"num_heads": 2, "batch_first": True, **config}
    ref = torch.nn.MultiheadAttention(8, **config)
    ours = MultiheadAttention(8, **config)
    ours.load_state_dict(ref.state_dict())
    x = _nested(layout=call.get("layout", torch.strided))
    args = (x, _nested(), _nested()) if call.get("cross") else (x, x, x)
    kwargs = {}
    if call.get("kpm"):
        kwargs["key_padding_mask"] = torch.zeros(2, 5, dtype=torch.bool)
    if call.get("attn"):
        kwargs["attn_mask"] = torch.zeros(5, 5)
    messages = []
    for layer in (ref, ours):
        layer.train(call.get("train", False))
        grad, fastpath = call.get("grad", False), call.get("fastpath", True)
        with torch.set_grad_enabled(grad), _fastpath(fastpath), pytest.raises(AssertionError) as caught:
            layer(*args, **kwargs)
        messages.append(" ".join(str(caught.value).split()))  # torch's own message wraps one reason oddly
    theirs, got = messages
    assert reason in theirs
    assert got.startswith(theirs.rstrip(".")), (got, theirs)
    assert "pad them (torch.nested.to_padded_tensor) and pass key_padding_mask" in got
    assert isinstance(caught.value, TorchCompatError) and isinstance(caught.value, ValueError)


class _fastpath:
    """torch.backends.mha's fast-path switch, restored on exit."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(self.enabled)

    def __exit__(self, *exc) -> None:
        torch.backends.mha.set_fastpath_enabled(self.before)


def test_nested_input_without_bias_names_the_reason():
    """torch's layer refuses it too, but its message gives no reason; headwise names bias=False."""
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True, bias=False).eval()
    ours = MultiheadAttention.from_torch(ref)
    x = _nested()
    with torch.no_grad():
        with pytest.raises(AssertionError, match="The fast path was not hit because $"):
            ref(x, x, x)
        with pytest.raises(TorchCompatError, match=r"not hit because in_proj_bias was None \(the layer was built with bias=False\)"):
            ours(x, x, x)


def test_torchscript_is_refused_with_the_supported_paths():
    """torch.jit.script (deprecated) of the layer, or of a model holding it: one TypeError naming torch.compile and
    torch.export."""
    msg = r"MultiheadAttention \(headwise\) cannot be compiled by torch.jit.script: TorchScript is deprecated.*torch.compile\(model\).*torch.export.export\(model, args\)"
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    assert replace_mha_(model) == 2
    for target in (MultiheadAttention(8, 2), model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's own notice that TorchScript is deprecated
            with pytest.raises(TypeError, match=msg):
                torch.jit.script(target)


# torch's own messages (and exception type) for rank mistakes still hold
@pytest.mark.parametrize(
    ("query", "key", "value", "kwargs", "msg"),
    [
        ((4, 4, 4), (4, 4), (4, 4, 4), {}, "expected `key` and `value` to be 3-D but found 2-D and 3-D tensors respectively"),
        ((4, 4, 4), (4, 4, 4), (4, 4), {}, "expected `key` and `value` to be 3-D but found 3-D and 2-D tensors respectively"),
        ((4, 4, 4), (4, 4, 4), (4, 4, 4), {"key_padding_mask": (4,)}, "expected `key_padding_mask` to be `None` or 2-D but found 1-D tensor instead"),
        ((4, 4, 4), (4, 4, 4), (4, 4, 4), {"attn_mask": (4,)}, "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D tensor instead"),
        ((4, 4), (4, 4, 4), (4, 4), {}, "expected `key` and `value` to be 2-D but found 3-D and 2-D tensors respectively"),
        ((4, 4), (4, 4), (4, 4), {"key_padding_mask": (1, 8)}, "expected `key_padding_mask` to be `None` or 1-D but found 2-D tensor instead"),
        ((4, 4), (4, 4), (4, 4), {"attn_mask": (4,)}, "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D tensor instead"),
        ((4, 4), (4, 4), (4, 4), {"attn_mask": (5, 4, 4)}, r"Expected `attn_mask` shape to be \(4, 4, 4\)"),
        ((4,), (4,), (4,), {}, "query should be unbatched 2D or batched 3D tensor but received 1-D query tensor"),
    ],
)
def test_rank_errors_keep_torch_messages(query, key, value, kwargs, msg):
    m = MultiheadAttention(4, 4)
    masks = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in kwargs.items()}
    with pytest.raises(AssertionError, match=msg) as info:
        m(torch.randn(query), torch.randn(key), torch.randn(value), **masks)
    assert isinstance(info.value, TorchCompatShapeError) and isinstance(info.value, ValueError)


def test_failed_call_changes_nothing():
    m = MultiheadAttention(16, 2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ShapeError):
        m(torch.randn(5, 3, 12), torch.randn(5, 3, 12), torch.randn(5, 3, 12))
    torch.testing.assert_close(m.state_dict(), before)
