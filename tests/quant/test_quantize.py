"""headwise.quant: int8 projections (packed in_proj included), pruning, saving, MiniLM quality and size."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headwise import Attention, MultiheadAttention
from headwise.heads import prune_heads_
from headwise.modules import Linear
from headwise.modules.blocks import Encoder, encoder_block
from headwise.quant import QuantConfig, QuantizedMultiheadAttention, load_quantized, quantize_, save_quantized
from headwise.texts import doc_sentences
from tests.helpers import assert_close_to_oracle

WEIGHT_ONLY = QuantConfig(mode="int8_weight_only")
DYNAMIC = QuantConfig(mode="int8_dynamic")


def _dequantized(weight) -> torch.Tensor:
    """The float weight an int8 weight stands for (torchao tensor, or a torch.ao quantized tensor)."""
    return weight.dequantize()


def _dequantized_attention(quantized: Attention, like: Attention) -> Attention:
    """``like`` (float) holding ``quantized``'s dequantized projection weights."""
    ref = copy.deepcopy(like)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(ref, name).weight.copy_(_dequantized(getattr(quantized, name).weight))
    return ref


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()


# --- config ---------------------------------------------------------------------------


def test_config_round_trips_and_validates():
    import headwise

    assert headwise.quantize_ is quantize_ and headwise.QuantConfig is QuantConfig
    config = QuantConfig(mode="int8_dynamic", embeddings=False)
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert QuantConfig().mode == "int8_weight_only"
    with pytest.raises(ValueError, match=r"mode must be one of .*'int8_weight_only'.*got 'int4'"):
        QuantConfig(mode="int4")
    with pytest.raises(TypeError, match="embeddings must be a bool, got 1"):
        QuantConfig(embeddings=1)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        QuantConfig(version=2)
    with pytest.raises(ValueError, match=r"unknown QuantConfig keys \['bits'\]"):
        QuantConfig.from_dict({"bits": 8})


# --- headwise.Attention ---------------------------------------------------------------


@pytest.mark.parametrize("config", [WEIGHT_ONLY, DYNAMIC], ids=lambda c: c.mode)
def test_attention_projections_are_int8_and_outputs_stay_close(config):
    attn = Attention(64, 8, num_kv_heads=2).eval()
    original = copy.deepcopy(attn)
    x = torch.randn(3, 11, 64)
    with torch.no_grad():
        expected, _ = attn(x, is_causal=True)
    counts = quantize_(attn, config)
    assert counts == {"linear": 4, "multihead": 0, "embedding": 0}
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        weight = proj.weight() if callable(proj.weight) else proj.weight
        assert weight.dtype == torch.qint8 or type(weight).__name__ == "Int8Tensor"
    assert attn.num_heads == 8 and attn.num_kv_heads == 2  # derived from the (quantized) shapes
    with torch.no_grad():
        got, _ = attn(x, is_causal=True)
        # decoding with a cache still works on the quantized layer and equals its full pass
        cache = attn.new_cache(3, 11)
        steps = torch.cat([attn(x[:, t : t + 1], cache=cache)[0] for t in range(11)], 1)
    assert _cosine(got, expected) > (0.999 if config is WEIGHT_ONLY else 0.99)
    if config is WEIGHT_ONLY:  # cached steps stand as close to the dequantized float64 layer as the full pass
        oracle = _dequantized_attention(attn, original).double()
        with torch.no_grad():
            assert_close_to_oracle(steps, oracle(x.double(), is_causal=True)[0], got)
    else:  # activation scales are per call, so one-token steps round differently from the full pass
        assert _cosine(steps, expected) > 0.99


def test_weight_only_attention_equals_float_with_dequantized_weights():
    attn = Attention(32, 4, num_kv_heads=2).eval()
    quantized = copy.deepcopy(attn)
    quantize_(quantized, WEIGHT_ONLY)
    reference = _dequantized_attention(quantized, attn)
    oracle = copy.deepcopy(reference).double()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert_close_to_oracle(quantized(x)[0], oracle(x.double())[0], reference(x)[0])


# --- the drop-in MultiheadAttention (packed in_proj) --------------------------------


def _reference_mha(
    quantized: QuantizedMultiheadAttention, like: nn.MultiheadAttention
) -> nn.MultiheadAttention:
    """torch's layer holding the int8 layer's dequantized weights, packed back into in_proj."""
    ref = copy.deepcopy(like)
    with torch.no_grad():
        q, k, v = (_dequantized(getattr(quantized, n).weight) for n in ("q_proj", "k_proj", "v_proj"))
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([q, k, v]))
        else:
            ref.q_proj_weight.copy_(q), ref.k_proj_weight.copy_(k), ref.v_proj_weight.copy_(v)
        ref.out_proj.weight.copy_(_dequantized(quantized.out_proj.weight))
    return ref


@pytest.mark.parametrize("kind", ["headwise", "torch", "torch_kdim"])
def test_multihead_in_proj_is_quantized_and_matches_torch_with_dequantized_weights(kind):
    kwargs = {"kdim": 24, "vdim": 40} if kind == "torch_kdim" else {}
    cls = MultiheadAttention if kind == "headwise" else nn.MultiheadAttention
    layer = cls(64, 4, add_bias_kv=True, **kwargs).eval()
    original = copy.deepcopy(layer)
    counts = quantize_(layer, WEIGHT_ONLY)
    assert counts == {"linear": 4, "multihead": 1, "embedding": 0}
    assert type(layer) is QuantizedMultiheadAttention
    keys = set(layer.state_dict())
    assert not keys & {"in_proj_weight", "in_proj_bias", "q_proj_weight"}
    assert {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "bias_k"} <= keys
    assert type(layer.q_proj.weight).__name__ == "Int8Tensor"
    ref = _reference_mha(layer, original)
    query = torch.randn(7, 2, 64)
    key = torch.randn(9, 2, kwargs.get("kdim", 64))
    value = torch.randn(9, 2, kwargs.get("vdim", 64))
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    oracle = copy.deepcopy(ref).double()
    with torch.no_grad():
        got, got_w = layer(query, key, value, key_padding_mask=padding)
        want, want_w = ref(query, key, value, key_padding_mask=padding)
        best, best_w = oracle(query.double(), key.double(), value.double(), key_padding_mask=padding)
    assert_close_to_oracle(got, best, want)
    assert_close_to_oracle(got_w, best_w, want_w)
    if kind != "torch_kdim":  # self-attention through the split projections
        with torch.no_grad():
            assert_close_to_oracle(
                layer(query, query, query)[0], oracle(*(query.double(),) * 3)[0], ref(query, query, query)[0]
            )


def test_dynamic_int8_multihead_stays_close_to_float():
    layer = MultiheadAttention(64, 8, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        expected, _ = layer(x, x, x, need_weights=False)
        quantize_(layer, DYNAMIC)
        got, _ = layer(x, x, x, need_weights=False)
    assert layer.q_proj.weight().dtype == torch.qint8
    assert _cosine(got, expected) > 0.99


# --- errors: nothing changes ----------------------------------------------------------


def test_errors_leave_the_model_unchanged():
    model = nn.Sequential(Attention(16, 2), nn.Linear(16, 4)).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"'int8_dynamic' runs PyTorch's CPU float32 kernels, but parameter "
        r"'0.head_gate' is torch.float64 on cpu; call model.float\(\).cpu\(\)",
    ):
        quantize_(model, DYNAMIC)
    assert type(model[0].q_proj) is Linear and type(model[1]) is nn.Linear  # classes unchanged too
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"model is a bare Linear; .*wrap it \(nn.Sequential\(layer\)\)"):
        quantize_(nn.Linear(4, 4))
    tables = nn.Sequential(nn.Embedding(10, 4).double(), nn.Linear(4, 4))
    with pytest.raises(
        ValueError,
        match=r"embeddings=True stores tables with PyTorch's CPU float32 kernel, "
        r"but '0' is torch.float64 on cpu; pass QuantConfig\(embeddings=False\)",
    ):
        quantize_(tables)
    assert type(tables[0]) is nn.Embedding and type(tables[1]) is nn.Linear
    counts = quantize_(tables, QuantConfig(embeddings=False))
    assert counts == {"linear": 1, "multihead": 0, "embedding": 0} and type(tables[0]) is nn.Embedding
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        quantize_("model")
    with pytest.raises(TypeError, match="config must be a headwise.quant.QuantConfig, got dict"):
        quantize_(model, {"mode": "int8_dynamic"})


def test_quantizing_twice_and_unknown_linear_subclasses_are_refused():
    attn = Attention(16, 2)
    quantize_(attn, WEIGHT_ONLY)
    with pytest.raises(
        ValueError,
        match=r"parameter 'q_proj.weight' is a Int8Tensor, not a plain nn.Parameter.*already quantized",
    ):
        quantize_(attn, WEIGHT_ONLY)
    dynamic = nn.Sequential(nn.Linear(4, 4))
    quantize_(dynamic, DYNAMIC)
    with pytest.raises(ValueError, match=r"module '0' \(Linear\) is already quantized"):
        quantize_(dynamic, DYNAMIC)

    class LoRALinear(nn.Linear):
        pass

    with pytest.raises(ValueError, match=r"module '1' is a LoRALinear, a subclass of nn.Linear"):
        quantize_(nn.Sequential(nn.Linear(4, 4), LoRALinear(4, 4)))


# --- pruning, then quantization; saving -----------------------------------------------


@pytest.mark.parametrize("config", [WEIGHT_ONLY, DYNAMIC], ids=lambda c: c.mode)
def test_prune_then_quantize(config):
    model = Encoder([encoder_block(64, 8, 128, norm_first=False) for _ in range(2)]).eval()
    prune_heads_(model, {0: [1, 5], 1: [0, 2, 3]})
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        expected, _ = model(x)
    quantize_(model, config)
    assert [b.attention.num_heads for b in model.blocks] == [6, 5]
    with torch.no_grad():
        got, _ = model(x)
    assert _cosine(got, expected) > 0.99

    mha = MultiheadAttention(64, 8).eval()
    prune_heads_(mha, {0: [0, 7]})
    with torch.no_grad():
        expected, _ = mha(x, x, x)
        quantize_(mha, config)
        got, _ = mha(x, x, x)
    assert mha.q_proj.in_features == 64 and mha.q_proj.out_features == 6 * 8
    assert _cosine(got, expected) > 0.99


#: what each mode leaves where prune_heads_ would slice a float weight
_QUANTIZED_PROJ = {
    "int8_weight_only": r"q_proj.weight is a Int8Tensor",
    "int8_dynamic": r"q_proj is a DynamicQuantizedLinear",
}


@pytest.mark.parametrize("config", [WEIGHT_ONLY, DYNAMIC], ids=lambda c: c.mode)
def test_pruning_a_quantized_minilm_is_refused_and_changes_nothing(config):
    import headwise.models

    texts = doc_sentences()[:8]
    model = headwise.models.load().eval()
    quantize_(model, config)
    expected = model.encode(texts)
    modules = dict(model.named_modules())
    with pytest.raises(
        ValueError,
        match=rf"layer 2 \('network.encoder.blocks.2.attention'\) cannot be pruned: {_QUANTIZED_PROJ[config.mode]}, "
        r"not a float nn.Linear .* Prune before quantizing: prune_heads_ on the float model, then "
        r"headwise.quant.quantize_",
    ):
        prune_heads_(model, {0: [], 2: [1, 5]})  # layer 0: nothing to remove, so nothing to refuse
    assert model.num_heads == (12,) * 6 and model.config.num_heads == (12,) * 6
    assert all(m is modules[name] for name, m in model.named_modules())  # no module replaced
    assert torch.equal(model.encode(texts), expected)

    layer = MultiheadAttention(64, 8).eval()  # the drop-in: quantize_ split its packed in_proj
    quantize_(layer, config)
    with pytest.raises(
        ValueError,
        match=rf"layer 0 \('QuantizedMultiheadAttention'\) cannot be pruned: {_QUANTIZED_PROJ[config.mode]}",
    ):
        prune_heads_(layer, {0: [3]})
    assert layer.num_heads == 8 and layer.q_proj.out_features == 64


@pytest.mark.parametrize("config", [WEIGHT_ONLY, DYNAMIC], ids=lambda c: c.mode)
def test_prune_then_quantize_minilm_then_save_and_load(tmp_path, config):
    import headwise.models

    heads = {0: [1, 5], 3: [0, 2, 3, 11]}
    texts = doc_sentences()[:16]
    model = headwise.models.load().eval()
    prune_heads_(model, heads)
    pruned_float = model.encode(texts)
    counts = quantize_(model, config)
    # 6 Linear per layer (q, k, v, out, 2 feed-forward) and the pooler's; word, position, type tables
    assert counts["linear"] == 6 * 6 + 1 and counts["embedding"] == 3
    assert model.num_heads == (10, 12, 12, 8, 12, 12)
    got = model.encode(texts)
    cosine = F.cosine_similarity(got, pruned_float)
    assert cosine.min().item() >= (0.998 if config is WEIGHT_ONLY else 0.95), cosine.min().item()

    path = save_quantized(model, tmp_path / "pruned-int8.pt", config)
    fresh = headwise.models.load().eval()
    prune_heads_(fresh, heads)  # the saved architecture: the same heads pruned, still float
    loaded = load_quantized(fresh, path)
    assert loaded.num_heads == (10, 12, 12, 8, 12, 12)
    torch.testing.assert_close(loaded.encode(texts), got, atol=0, rtol=0)


@pytest.mark.parametrize("config", [WEIGHT_ONLY, DYNAMIC], ids=lambda c: c.mode)
def test_save_and_load_quantized(tmp_path, config):
    def build():
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Embedding(50, 32), MultiheadAttention(32, 4, batch_first=True), nn.Linear(32, 8)
        )

    model = build().eval()
    quantize_(model, config)
    path = save_quantized(model, tmp_path / "model.pt", config)
    data = torch.load(path, weights_only=True)  # no code runs on load
    assert data["config"] == config.to_dict()

    loaded = load_quantized(build().eval(), path)
    ids = torch.randint(0, 50, (2, 6))

    def run(m):
        with torch.no_grad():
            x = m[0](ids)
            return m[2](m[1](x, x, x, need_weights=False)[0])

    torch.testing.assert_close(run(loaded), run(model), atol=0, rtol=0)
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a file written by headwise.quant.save_quantized"):
        load_quantized(build(), tmp_path / "other.pt")


# --- all-MiniLM-L6-v2: the targets --------------------------------------------


@pytest.mark.slow
def test_minilm_default_quantization_keeps_cosine_and_is_3x_smaller(tmp_path):
    import headwise.models

    texts = doc_sentences()[:48]
    model = headwise.models.load().eval()
    expected = model.encode(texts)
    torch.save(model.state_dict(), tmp_path / "fp32.pt")
    counts = quantize_(model)
    assert counts["linear"] >= 36 and counts["embedding"] == 3
    got = model.encode(texts)
    cosine = F.cosine_similarity(got, expected)
    assert cosine.min().item() >= 0.99, f"min cosine {cosine.min().item():.4f}"
    path = save_quantized(model, tmp_path / "int8.pt", QuantConfig())
    ratio = os.path.getsize(tmp_path / "fp32.pt") / os.path.getsize(path)
    assert ratio >= 3.0, f"only {ratio:.2f}x smaller"


def test_quantizing_prints_nothing_and_warns_nothing(tmp_path):
    """In a fresh process (torchao not yet imported): importing headwise.quant and quantizing with torchao prints
    no load noise ("Failed to load ... .so", torch's pytree Enum notice) and raises no warning; headwise keeps the
    demoted records at debug level."""
    import subprocess
    import sys

    script = (
        "import logging, warnings\n"
        "warnings.simplefilter('error')\n"
        "records = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): records.append(record.getMessage())\n"
        "logging.getLogger('headwise.quant').addHandler(Keep())\n"
        "logging.getLogger('headwise.quant').setLevel(logging.DEBUG)\n"
        "import torch\n"
        "import headwise.quant as quant\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8))\n"
        "assert quant.quantize_(model, quant.QuantConfig())['linear'] == 1\n"
        "print(len([r for r in records if r.startswith('while importing torchao')]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip().isdigit()  # how many records were demoted depends on the torch/torchao build
