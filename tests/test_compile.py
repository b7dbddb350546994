"""torch.compile: compiled modules match eager, and cached decoding does not recompile per token."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from headwise import Attention, RotaryEmbedding


def test_cached_decoding_compiles_at_most_twice():
    """The first step compiles a static graph, the second a dynamic one; later steps reuse it."""
    torch._dynamo.reset()
    attn = Attention(32, 4, num_kv_heads=2, rotary=RotaryEmbedding(8), dtype=torch.float64).eval()
    counter = CompileCounter()
    compiled = torch.compile(attn, backend=counter)
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = attn(x, is_causal=True)
        cache = attn.new_cache(1, 16)
        steps = [compiled(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(12)]
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations for 12 decoding steps"
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_compiled_encoder_matches_eager():
    import headwise.models

    torch._dynamo.reset()
    model = headwise.models.load(dtype=torch.float64)  # compiled == eager is an identity: float64
    batch = model.tokenize(["A short one.", "A longer sentence about cats and dogs sleeping in the sun."])
    with torch.no_grad():
        expected, _ = model(**batch)
        got, _ = torch.compile(model)(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-10, rtol=0)


def test_export_attention_and_encoder():
    import headwise.models

    attn = Attention(32, 4, num_kv_heads=2, dtype=torch.float64).eval()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    program = torch.export.export(attn, (x,), kwargs={"is_causal": True})
    torch.testing.assert_close(program.module()(x, is_causal=True)[0], attn(x, is_causal=True)[0], atol=1e-12, rtol=0)

    model = headwise.models.load(dtype=torch.float64)
    batch = model.tokenize(["A short one.", "A longer sentence about cats and dogs."])
    args = (batch["input_ids"], batch["attention_mask"])
    program = torch.export.export(model, args)
    torch.testing.assert_close(program.module()(*args)[0], model(*args)[0], atol=1e-10, rtol=0)


@pytest.mark.slow
def test_onnx_export_of_encoder_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    import headwise.models
    from tests.helpers import assert_close_to_oracle

    model = headwise.models.load()
    batch = model.tokenize(["A short one.", "A longer sentence about cats and dogs sleeping."])
    path = tmp_path / "minilm.onnx"
    dims = {0: "batch", 1: "seq"}
    torch.onnx.export(
        model,
        (batch["input_ids"], batch["attention_mask"]),
        str(path),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamic_shapes={"input_ids": dims, "attention_mask": dims},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = model.tokenize(["Another text, longer than the two before, to check dynamic shapes.", "Hi.", "A third."])
    (hidden,) = session.run(
        ["hidden"], {"input_ids": other["input_ids"].numpy(), "attention_mask": other["attention_mask"].numpy()}
    )
    # onnxruntime's float32 kernels against the float64 model (the oracle), as close as torch's float32
    with torch.no_grad():
        expected = model(other["input_ids"], other["attention_mask"])[0]
        oracle = headwise.models.load(dtype=torch.float64)(other["input_ids"], other["attention_mask"])[0]
    real = other["attention_mask"].bool()
    assert_close_to_oracle(torch.from_numpy(hidden)[real], oracle[real], expected[real])
