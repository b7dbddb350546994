"""headwise.MultiheadAttention against torch.nn.MultiheadAttention, option by option."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from torch import Tensor, nn

import headwise
from headwise import MultiheadAttention, replace_mha_
from tests.helpers import assert_close_to_oracle

E, H, B, L, S = 12, 3, 2, 5, 6


def _pair(**kwargs):
    ref = nn.MultiheadAttention(E, H, **kwargs)
    ours = MultiheadAttention(E, H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(batch_first, kdim, vdim, batched=True, grad=True):
    def make(length, dim):
        if not batched:
            shape = (length, dim)
        else:
            shape = (B, length, dim) if batch_first else (length, B, dim)
        return torch.randn(shape, requires_grad=grad)

    return make(L, E), make(S, kdim or E), make(S, vdim or E)


def _masks(kind, batched=True):
    """(key_padding_mask, attn_mask) in torch's polarity; every row keeps a key."""
    kpm = attn = None
    if "kpm_bool" in kind:
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[1, -2:] = True
    if "kpm_float" in kind:
        kpm = torch.zeros(B, S)
        kpm[0, :2] = float("-inf")
        kpm[1, -1] = -2.0
    if "attn_bool" in kind:
        attn = torch.rand(L, S) > 0.6
        attn[:, 2] = False
    if "attn_float" in kind:
        attn = torch.randn(L, S)
    if "attn_3d" in kind:
        attn = torch.rand((B if batched else 1) * H, L, S) > 0.6
        attn[..., 2] = False
    if not batched:
        kpm = None if kpm is None else kpm[0]
    return kpm, attn


MASKS = ["none", "kpm_bool", "kpm_float", "attn_bool", "attn_float", "attn_3d", "kpm_bool+attn_bool", "kpm_float+attn_float"]
CONFIGS = [
    dict(),
    dict(kdim=7, vdim=5),
    dict(add_bias_kv=True),
    dict(add_zero_attn=True),
    dict(bias=False),
    dict(add_bias_kv=True, add_zero_attn=True, kdim=7, vdim=7),
]


def _as_double(values):
    """float64 copies of tensors (one copy per distinct tensor, so `query is key` survives)."""
    copies = {}

    def convert(t):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            return t
        if id(t) not in copies:
            copies[id(t)] = t.detach().double().requires_grad_(t.requires_grad)
        return copies[id(t)]

    if isinstance(values, dict):
        return {k: convert(v) for k, v in values.items()}
    return [convert(v) for v in values]


def _compare(ref, ours, args, kwargs, need_weights):
    """Ours in float32 against torch's layer in float64 (the oracle), as close as torch's in float32.

    Outputs, weights and every gradient (through the output and, where returned, the weights).
    """
    ref64 = copy.deepcopy(ref).double()
    args64, kwargs64 = _as_double(args), _as_double(kwargs)
    out, w = ours(*args, need_weights=need_weights, **kwargs)
    ref_out, ref_w = ref(*args, need_weights=need_weights, **kwargs)
    out64, w64 = ref64(*args64, need_weights=need_weights, **kwargs64)
    assert_close_to_oracle(out, out64, ref_out)
    if need_weights:
        assert_close_to_oracle(w, w64, ref_w)
    else:
        assert w is None and ref_w is None
    probe = torch.randn_like(out)
    wprobe = torch.randn_like(w) if need_weights else None

    def loss(o, ww):
        total = (o * probe.to(o.dtype)).sum()
        return total + (ww * wprobe.to(ww.dtype)).sum() if need_weights else total

    def grads(model, inputs, o, ww):
        leaves = list(dict.fromkeys(t for t in inputs if isinstance(t, Tensor) and t.requires_grad))
        return torch.autograd.grad(loss(o, ww), leaves + list(model.parameters()), allow_unused=True)

    got = grads(ours, args, out, w)
    low = grads(ref, args, ref_out, ref_w)
    high = grads(ref64, args64, out64, w64)
    for g, lo, hi in zip(got, low, high, strict=True):
        if hi is None:
            assert g is None or (g == 0).all()
        else:
            assert_close_to_oracle(g, hi, lo)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("masks", MASKS)
def test_parity_matrix(config, batch_first, masks):
    """Training mode, every option and mask against torch's layer (float64 oracle rule)."""
    ref, ours = _pair(batch_first=batch_first, **config)
    args = _inputs(batch_first, config.get("kdim"), config.get("vdim"))
    kpm, attn = _masks(masks)
    for need_weights, average in itertools.product([True, False], [True, False]):
        if not need_weights and not average:
            continue
        kwargs = dict(key_padding_mask=kpm, attn_mask=attn, average_attn_weights=average)
        _compare(ref, ours, args, kwargs, need_weights)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "eval_inputs_only"])
def test_parity_inference(config, masks, context):
    """Without autograd the weights come from a block-wise math pass; numbers stay torch's."""
    ref, ours = _pair(batch_first=True, **config)
    ref.eval()
    ours.eval()
    q, k, v = _inputs(True, config.get("kdim"), config.get("vdim"), grad=False)
    kpm, attn = _masks(masks)
    manager = torch.inference_mode() if context == "inference_mode" else torch.no_grad()
    if context == "eval_inputs_only":  # grad mode on, but nothing to differentiate through the inputs
        for p in list(ref.parameters()) + list(ours.parameters()):
            p.requires_grad_(False)
        manager = torch.enable_grad()
    with manager:
        for need_weights, average in [(True, True), (True, False), (False, True)]:
            kwargs = dict(key_padding_mask=kpm, attn_mask=attn, need_weights=need_weights, average_attn_weights=average)
            ref_out, ref_w = ref(q, k, v, **kwargs)
            out, w = ours(q, k, v, **kwargs)
            out64, w64 = copy.deepcopy(ref).double()(*_as_double([q, k, v]), **_as_double(kwargs))
            assert_close_to_oracle(out, out64, ref_out)
            if need_weights:
                assert_close_to_oracle(w, w64, ref_w)


@pytest.mark.parametrize("config", [dict(), dict(add_bias_kv=True, add_zero_attn=True, kdim=7, vdim=7)])
@pytest.mark.parametrize("masks", ["none", "kpm_bool+attn_bool", "kpm_float+attn_float"])
def test_parity_large_maps_in_training(config, masks):
    """Maps past the one-pass budget (B*H*L*S > 2**21): fused output + block-wise recomputed weights."""
    length = 600
    ref, ours = _pair(batch_first=True, **config)
    kdim, vdim = config.get("kdim", E), config.get("vdim", E)
    q = torch.randn(B, length, E, requires_grad=True)
    k, v = torch.randn(B, length, kdim, requires_grad=True), torch.randn(B, length, vdim, requires_grad=True)
    kpm = attn = None
    if masks != "none":
        kpm = torch.zeros(B, length, dtype=torch.bool)
        kpm[1, -7:] = True
        attn = torch.rand(length, length) > 0.5
        if "float" in masks:
            kpm = torch.zeros(B, length).masked_fill(kpm, float("-inf"))
            attn = torch.randn(length, length)
    for average in (True, False):
        _compare(ref, ours, (q, k, v), dict(key_padding_mask=kpm, attn_mask=attn, average_attn_weights=average), True)


@pytest.mark.parametrize("masks", ["none", "kpm_bool", "attn_bool", "attn_3d"])
@pytest.mark.parametrize("config", [dict(), dict(kdim=7, vdim=5), dict(add_bias_kv=True, add_zero_attn=True)])
def test_parity_unbatched(masks, config):
    ref, ours = _pair(**config)
    args = _inputs(False, config.get("kdim"), config.get("vdim"), batched=False)
    kpm, attn = _masks(masks, batched=False)
    for average in (True, False):
        kwargs = dict(key_padding_mask=kpm, attn_mask=attn, average_attn_weights=average)
        _compare(ref, ours, args, kwargs, need_weights=True)
    _compare(ref, ours, args, dict(key_padding_mask=kpm, attn_mask=attn), need_weights=False)


@pytest.mark.parametrize("batch_first", [False, True])
def test_parity_self_attention_same_tensor(batch_first):
    """query is key is value takes the packed projection; numbers stay torch's."""
    ref, ours = _pair(batch_first=batch_first)
    x = torch.randn((B, L, E) if batch_first else (L, B, E), requires_grad=True)
    _compare(ref, ours, (x, x, x), {}, need_weights=True)
    _compare(ref, ours, (x, x, x), {}, need_weights=False)
    mem = torch.randn((B, S, E) if batch_first else (S, B, E), requires_grad=True)
    _compare(ref, ours, (x, mem, mem), {}, need_weights=False)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("kpm", [False, True])
def test_is_causal_hint(need_weights, kpm):
    ref, ours = _pair(batch_first=True)
    x = torch.randn(B, L, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, -1] = True
    kwargs = dict(attn_mask=causal, is_causal=True, key_padding_mask=pad if kpm else None)
    _compare(ref, ours, (x, x, x), kwargs, need_weights)


def test_is_causal_without_mask_applies_causal_mask():
    x = torch.randn(B, L, E, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    for config in (dict(), dict(add_bias_kv=True)):
        ours = MultiheadAttention(E, H, batch_first=True, dtype=torch.float64, **config)
        ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64, **config)
        ref.load_state_dict(ours.state_dict())
        got, _ = ours(x, x, x, is_causal=True, need_weights=False)
        expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_fully_masked_rows_give_zeros_not_nan():
    ours = MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, L, E, requires_grad=True)
    attn = torch.zeros(L, L, dtype=torch.bool)
    attn[1] = True  # row 1 may attend nothing (torch polarity)
    out, w = ours(x, x, x, attn_mask=attn)
    assert not out.isnan().any() and not w.isnan().any()
    assert (w[:, 1] == 0).all()
    torch.testing.assert_close(out[:, 1], ours.out_proj.bias.expand(B, E))  # zero attention, then out_proj
    out.sum().backward()
    assert not x.grad.isnan().any()


def test_dropout_weights_are_the_ones_used():
    ours = MultiheadAttention(E, H, dropout=0.5, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, L, E, dtype=torch.float64)
    out, w = ours(x, x, x, average_attn_weights=False)  # training mode: dropout active
    v = torch.nn.functional.linear(x, ours.in_proj_weight[2 * E :], ours.in_proj_bias[2 * E :])
    v = v.view(B, L, H, E // H).transpose(1, 2)  # (B, H, S, D)
    heads = (w @ v).transpose(1, 2).reshape(B, L, E)  # (B, L, E)
    torch.testing.assert_close(out, ours.out_proj(heads), atol=1e-12, rtol=0)
    assert (w == 0).any()  # some probabilities were dropped
    ours.eval()
    a, _ = ours(x, x, x)
    b, _ = ours(x, x, x)
    torch.testing.assert_close(a, b)


def test_state_dict_round_trip_both_ways():
    for config in CONFIGS:
        ref = nn.MultiheadAttention(E, H, **config)
        ours = MultiheadAttention(E, H, **config)
        assert list(ref.state_dict()) == list(ours.state_dict())
        assert all(ref.state_dict()[k].shape == v.shape for k, v in ours.state_dict().items())
        ref.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ref.state_dict(), ours.state_dict())
        ours2 = MultiheadAttention(E, H, **config)
        ours2.load_state_dict(ref.state_dict())
        torch.testing.assert_close(ours2.state_dict(), ref.state_dict())


def test_defaults_match_torch():
    import inspect

    for fn in ("__init__", "forward"):
        ours = inspect.signature(getattr(MultiheadAttention, fn))
        theirs = inspect.signature(getattr(nn.MultiheadAttention, fn))
        assert list(ours.parameters) == list(theirs.parameters)
        for name, p in ours.parameters.items():
            assert p.default == theirs.parameters[name].default, name
    m = MultiheadAttention(E, H)
    assert isinstance(m, nn.MultiheadAttention)
    assert (m.batch_first, m.dropout, m.head_dim, m.kdim, m.vdim) == (False, 0.0, E // H, E, E)


def test_from_torch_copies_config_and_weights():
    ref = nn.MultiheadAttention(E, H, kdim=7, vdim=5, add_bias_kv=True, batch_first=True).eval()
    ours = MultiheadAttention.from_torch(ref)
    assert not ours.training and ours.batch_first and ours.kdim == 7
    q, k, v = (t.double() for t in _inputs(True, 7, 5, grad=False))
    ref, ours = ref.double(), ours.double()
    torch.testing.assert_close(ours(q, k, v)[0], ref(q, k, v)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("training", [True, False])
def test_replace_in_transformer_encoder(training):
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=24, dropout=0.0, batch_first=True, dtype=torch.float64)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    model.train(training)
    x = torch.randn(B, L, E, dtype=torch.float64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True
    with torch.no_grad():
        before = model(x, src_key_padding_mask=pad)
    params = [id(p) for p in model.parameters()]
    assert replace_mha_(model) == 2
    assert all(type(layer.self_attn) is MultiheadAttention for layer in model.layers)
    assert [id(p) for p in model.parameters()] == params
    with torch.no_grad():
        after = model(x, src_key_padding_mask=pad)
    torch.testing.assert_close(after[~pad], before[~pad], atol=1e-12, rtol=0)
    assert replace_mha_(model) == 0


def test_replace_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        replace_mha_(3)


def test_compile_matches_eager():
    ours = MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, L, E, dtype=torch.float64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, -1] = True
    eager = ours(x, x, x, key_padding_mask=pad)
    compiled = torch.compile(ours)(x, x, x, key_padding_mask=pad)
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-10, rtol=0)


def test_float64_and_headwise_namespace():
    ours = headwise.MultiheadAttention(E, H, dtype=torch.float64)
    x = torch.randn(L, B, E, dtype=torch.float64)
    out, w = ours(x, x, x)
    assert out.dtype == torch.float64 and w.dtype == torch.float64


def test_bias_of_another_dtype_is_accepted_like_torch():
    ours = MultiheadAttention(4, 4, batch_first=True, dtype=torch.float64).eval()
    ours.in_proj_bias = nn.Parameter(ours.in_proj_bias.to(torch.float16))
    x = torch.randn(4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        out, _ = ours(x, x, x)
    assert out.dtype == torch.float64


def test_3d_mask_equals_each_sample_with_its_2d_mask():
    ours = MultiheadAttention(8, 4, dtype=torch.float64)
    query, key = torch.rand(8, 2, 8, dtype=torch.float64), torch.rand(8, 3, 8, dtype=torch.float64)  # (N, T, E), (N, S, E)
    allowed = torch.rand(8, 2, 3) > 0.5
    allowed[..., 0] = True
    mask = torch.zeros(8, 2, 3, dtype=torch.float64).masked_fill(~allowed, float("-inf"))  # additive, torch polarity
    batched, _ = ours(query.transpose(0, 1), key.transpose(0, 1), key.transpose(0, 1), attn_mask=mask.repeat_interleave(4, 0))
    for i in range(8):
        single, _ = ours(query[i, :, None], key[i, :, None], key[i, :, None], attn_mask=mask[i])  # (T, 1, E)
        torch.testing.assert_close(batched[:, i : i + 1], single, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- nested tensors, tracing, compiling, is_causal


def _nested_pair(dtype=torch.float32, num_heads=2):
    ref = nn.MultiheadAttention(8, num_heads, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()  # torch initialises biases to zero; make them count
        ref.out_proj.bias.normal_()
    return ref, MultiheadAttention.from_torch(ref)


LENGTHS = (3, 5, 1)


def _nested_input(dtype):
    return torch.nested.nested_tensor([torch.randn(n, 8, dtype=dtype) for n in LENGTHS])


@pytest.mark.parametrize(("need_weights", "average"), [(True, True), (True, False), (False, True)])
def test_nested_input_matches_torchs_fast_path(need_weights, average):
    """A nested tensor where torch takes it (eval, no autograd, self-attention): a nested output as close to torch's
    float64 result as torch's own float32 one, and torch's padded weights (zero in padded rows and columns)."""
    ref, ours = _nested_pair()
    ref64 = copy.deepcopy(ref).double()
    x = _nested_input(torch.float32)
    x64 = torch.nested.nested_tensor([part.double() for part in x.unbind()])
    kwargs = dict(need_weights=need_weights, average_attn_weights=average)
    with torch.no_grad():
        out, w = ours(x, x, x, **kwargs)
        ref_out, ref_w = ref(x, x, x, **kwargs)
        out64, w64 = ref64(x64, x64, x64, **kwargs)
    assert out.is_nested and out.layout == torch.strided
    assert [part.shape for part in out.unbind()] == [(n, 8) for n in LENGTHS]
    for got, low, high in zip(out.unbind(), ref_out.unbind(), out64.unbind(), strict=True):
        assert_close_to_oracle(got, high, low)
    if not need_weights:
        assert w is None and ref_w is None
        return
    assert w.shape == ref_w.shape == ((3, 5, 5) if average else (3, 2, 5, 5))
    assert not w.is_nested
    assert_close_to_oracle(w, w64, ref_w)
    assert (w == 0).equal(ref_w == 0)  # the same padded rows and columns are zero


def test_nested_input_equals_padding_with_a_key_padding_mask():
    """float64 identity: nested in, nested out, equal to the padded batch with its padding mask (and to each
    sequence alone), with the layer's parameters requiring no grad instead of torch.no_grad()."""
    _, ours = _nested_pair(torch.float64)
    ours.requires_grad_(False)
    x = _nested_input(torch.float64)
    out, w = ours(x, x, x, average_attn_weights=False)
    padded = torch.nested.to_padded_tensor(x, 0.0)  # (B, L_max, E)
    pad = torch.arange(5) >= torch.tensor(LENGTHS)[:, None]  # (B, L_max), True = padding
    want, want_w = ours(padded, padded, padded, key_padding_mask=pad, average_attn_weights=False)
    for i, (n, part) in enumerate(zip(LENGTHS, out.unbind(), strict=True)):
        torch.testing.assert_close(part, want[i, :n], atol=1e-12, rtol=0)
        alone, alone_w = ours(x.unbind()[i], x.unbind()[i], x.unbind()[i], average_attn_weights=False)  # (n, E)
        torch.testing.assert_close(part, alone, atol=1e-12, rtol=0)
        torch.testing.assert_close(w[i, :, :n, :n], alone_w, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, want_w * ~pad[:, None, :, None], atol=1e-12, rtol=0)


def test_nested_input_with_is_causal_is_causal_per_sequence():
    """torch's fast path ignores is_causal; headwise applies it, sequence by sequence."""
    _, ours = _nested_pair(torch.float64)
    x = _nested_input(torch.float64)
    with torch.no_grad():
        out, _ = ours(x, x, x, is_causal=True, need_weights=False)
        for part, seq in zip(out.unbind(), x.unbind(), strict=True):
            mask = nn.Transformer.generate_square_subsequent_mask(seq.shape[0], dtype=torch.float64)
            want, _ = ours(seq, seq, seq, attn_mask=mask, need_weights=False)
            torch.testing.assert_close(part, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("self_attention", [True, False])
def test_jit_trace_passes_its_check(training, need_weights, self_attention):
    """torch.jit.trace with check_trace=True (the default): the second trace, run without autograd, records the
    same graph; the traced layer equals the eager one on new inputs."""
    ours = MultiheadAttention(E, H, batch_first=True, dtype=torch.float64).train(training)

    class Call(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = ours

        def forward(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor] | Tensor:
            key = query if self_attention else memory
            out, weights = self.attn(query, key, key, need_weights=need_weights)
            return (out, weights) if need_weights else out

    call = Call()
    x, memory = torch.randn(B, L, E, dtype=torch.float64), torch.randn(B, S, E, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice and its TracerWarnings about shape checks
        traced = torch.jit.trace(call, (x, memory), check_trace=True)
    x2, memory2 = torch.randn_like(x), torch.randn_like(memory)
    got, want = traced(x2, memory2), call(x2, memory2)
    for a, b in zip(got if need_weights else (got,), want if need_weights else (want,), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """No attention backend loaded or chosen yet, as in a new process: the first choice happens while compiling."""
    from headwise.functional import _dispatch

    monkeypatch.setattr(_dispatch, "_LOADED", {})
    monkeypatch.setattr(_dispatch, "_CHOSEN", {})


@pytest.mark.parametrize("mode", ["training", "eval"])
def test_compiled_transformer_encoder_matches_eager(mode, fresh_dispatch):
    """A torch TransformerEncoder holding headwise's layers compiles as one graph (fullgraph) and matches eager:
    in training the encoder layer's fast-path check fails and calls headwise's layer; in eval under no_grad it
    passes and torch's fused layer runs on the same parameters."""
    torch._dynamo.reset()
    layer = nn.TransformerEncoderLayer(E, 4, dim_feedforward=24, dropout=0.0, batch_first=True, dtype=torch.float64)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).train(mode == "training")
    assert replace_mha_(model) == 2
    x = torch.randn(B, L, E, dtype=torch.float64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True
    with torch.set_grad_enabled(mode == "training"):
        compiled = torch.compile(model, fullgraph=True)(x, src_key_padding_mask=pad)
        eager = model(x, src_key_padding_mask=pad)
    torch.testing.assert_close(compiled[~pad], eager[~pad], atol=1e-10, rtol=0)


def test_compiled_layer_with_weights_from_a_fresh_dispatch(fresh_dispatch):
    """The first backend choice (a fallback from 'sdpa' to 'weights') inside a compiled region: no graph break."""
    torch._dynamo.reset()
    ours = MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, L, E, dtype=torch.float64)
    compiled = torch.compile(ours, fullgraph=True)(x, x, x)
    eager = ours(x, x, x)
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["training", "eval", "inference"])
def test_is_causal_without_a_mask_is_causal_in_every_mode(mode):
    """headwise's choice: is_causal=True without attn_mask applies the causal mask.  torch's layer raises in
    training and, on its inference fast path, ignores the flag (a non-causal result)."""
    ref = nn.MultiheadAttention(E, 4, batch_first=True, dtype=torch.float64)
    ours = MultiheadAttention.from_torch(ref)
    for layer in (ref, ours):
        layer.train(mode == "training")
    x = torch.randn(B, L, E, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    with torch.set_grad_enabled(mode != "inference"):
        got, _ = ours(x, x, x, is_causal=True)
        want, _ = ref(x, x, x, attn_mask=causal)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        if mode == "training":
            with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
                ref(x, x, x, is_causal=True)
        elif mode == "inference":
            ignored, _ = ref(x, x, x, is_causal=True)
            plain, _ = ref(x, x, x)
            torch.testing.assert_close(ignored, plain, atol=0, rtol=0)


def test_export_matches_eager():
    """torch.export, one of the two paths the TorchScript refusal names, works on the layer."""
    ours = MultiheadAttention(E, H, batch_first=True, dtype=torch.float64).eval()
    x = torch.randn(B, L, E, dtype=torch.float64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -1] = True
    program = torch.export.export(ours, (x, x, x), kwargs={"key_padding_mask": pad})
    got = program.module()(x, x, x, key_padding_mask=pad)
    want = ours(x, x, x, key_padding_mask=pad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
