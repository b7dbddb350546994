"""Backend selection, explain(), and the functional's error messages."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import headwise
from headwise.errors import BackendError, ShapeError
from headwise.functional import _dispatch, attention, explain
from tests.helpers import qkv


def test_auto_picks_sdpa_without_weights_weights_with_them_and_math_for_the_rest():
    q, k, v = qkv()
    assert explain(q, k, v).backend == "sdpa"
    assert "no weights are asked for" in explain(q, k, v).reasons["weights"]
    why = explain(q, k, v, need_weights=True)
    assert why.backend == "weights"
    assert "no attention weights" in why.reasons["sdpa"]
    assert why.reasons["weights"] is None and why.reasons["math"] is None
    assert "sdpa:" in str(why) and "math: can run" in str(why)
    dropout = explain(q, k, v, need_weights=True, dropout_p=0.1)
    assert dropout.backend == "math" and "the ones the output used" in dropout.reasons["weights"]
    trainable = torch.zeros(5, 7, requires_grad=True)
    masked = explain(q, k, v, attn_mask=trainable, need_weights=True)
    assert masked.backend == "math" and "requires grad" in masked.reasons["weights"]


def test_named_backend_that_cannot_run_raises_with_reason():
    q, k, v = qkv()
    with pytest.raises(BackendError, match=r"backend 'sdpa' cannot run this call: .*need_weights=True"):
        attention(q, k, v, need_weights=True, backend="sdpa")


def test_unknown_backend():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash3'; expected 'auto' or one of"):
        attention(q, k, v, backend="flash3")


def test_auto_walks_priority_and_logs_fallback_once(monkeypatch, caplog):
    calls = []

    class Refuses:
        name = "sdpa"

        def check(self, request):
            calls.append("check")
            return "mocked: cannot run"

        def run(self, request):  # pragma: no cover - never chosen
            raise AssertionError("must not run")

    monkeypatch.setitem(_dispatch._LOADED, "sdpa", Refuses())
    monkeypatch.setattr(_dispatch, "_CHOSEN", {})
    q, k, v = qkv()
    with caplog.at_level(logging.DEBUG, logger="headwise.functional"):
        attention(q, k, v)
        attention(q, k, v)  # the same signature: the choice is remembered, not checked again
    assert calls == ["check"]
    logged = [r for r in caplog.records if "mocked: cannot run" in r.getMessage()]
    assert len(logged) == 1
    assert explain(q, k, v).backend == "math"  # "weights" refuses calls without weights


def test_import_does_not_initialise_cuda():
    code = (
        "import torch, headwise, headwise.functional as F\n"
        "q = torch.randn(1, 2, 3, 4)\n"
        "F.attention(q, q, q)\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_public_api_listed():
    for name in headwise.__all__:
        assert hasattr(headwise, name)


# --- errors ---------------------------------------------------------------------------------


def test_error_three_dim_query():
    x = torch.randn(2, 5, 16)
    with pytest.raises(ShapeError, match=r"query has shape \(2, 5, 16\) but attention expects 4-D \(B, H, L, D\)"):
        attention(x, x, x)


def test_error_non_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="key must be a torch.Tensor, got list"):
        attention(q, [1], v)


def test_error_integer_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="value must be a floating tensor, got dtype torch.int64"):
        attention(q, k, v.long())


def test_error_dtype_mismatch():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="must share a dtype, got torch.float32, torch.float64"):
        attention(q, k.double(), v)


def test_error_device_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="must be on one device, got cpu, meta"):
        attention(q, k.to("meta"), v)


def test_error_batch_mismatch():
    q, k, v = qkv()
    with pytest.raises(ShapeError, match=r"batch sizes differ: query \(2, 4, 5, 8\), key \(3, 4, 7, 8\)"):
        attention(q, torch.randn(3, 4, 7, 8), torch.randn(3, 4, 7, 8))


def test_error_key_value_length_mismatch():
    q, k, _ = qkv()
    with pytest.raises(ShapeError, match=r"key \(2, 4, 7, 8\) and value \(2, 4, 6, 8\) must agree on \(B, K, S\)"):
        attention(q, k, torch.randn(2, 4, 6, 8))


def test_error_head_dim_mismatch():
    q, _, _ = qkv()
    k = torch.randn(2, 4, 7, 6)
    with pytest.raises(ShapeError, match="query head_dim 8 != key head_dim 6"):
        attention(q, k, k)


def test_error_kv_heads_do_not_divide():
    q, _, _ = qkv(h=4)
    k = torch.randn(2, 3, 7, 8)
    with pytest.raises(ShapeError, match="query has H=4 heads but key/value have K=3; K must divide H"):
        attention(q, k, k)


def test_error_mask_shape():
    q, k, v = qkv()
    with pytest.raises(ShapeError, match=r"attn_mask has shape \(7, 5\), which does not broadcast to \(B, H, L, S\) = \(2, 4, 5, 7\)"):
        attention(q, k, v, attn_mask=torch.ones(7, 5, dtype=torch.bool))


def test_error_mask_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"attn_mask has dtype torch.int64; expected torch.bool \(True = may attend\)"):
        attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.long))


def test_error_mask_not_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="attn_mask must be a torch.Tensor or None, got list"):
        attention(q, k, v, attn_mask=[[True]])


def test_error_mask_device():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="attn_mask is on meta but query is on cpu"):
        attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool, device="meta"))


def test_error_dropout_range():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.5"):
        attention(q, k, v, dropout_p=1.5)


def test_error_scale():
    q, k, v = qkv()
    with pytest.raises(
        ValueError, match=r"scale must be a positive finite number, got -1.0; leave it None for 1/sqrt\(head_dim\)=0.353553"
    ):
        attention(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="scale must be a positive finite number, got nan"):
        attention(q, k, v, scale=float("nan"))


def test_error_average_without_weights():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="average_weights=True averages the returned weights; it needs need_weights=True"):
        attention(q, k, v, average_weights=True)


def test_error_is_causal_type():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="is_causal must be a bool, got Tensor"):
        attention(q, k, v, is_causal=torch.tensor(True))


@pytest.mark.parametrize(
    ("shape", "is_causal"),
    [
        (dict(lq=7, s=7), False),
        (dict(lq=7, s=7), True),
        (dict(lq=1, s=9), True),  # a decoding step: one query sees every key
        (dict(h=4, k=2, lq=6, s=6), True),  # grouped-query heads
        (dict(lq=3, s=9), True),  # bottom-right causal with 1 < L < S needs the mask
    ],
)
def test_auto_choice_depends_on_the_signature_only(shape, is_causal, monkeypatch):
    """Each static signature is checked once; every call of it runs the backend chosen then."""
    checks = []
    for name in _dispatch.PRIORITY:
        backend = _dispatch.get_backend(name)
        monkeypatch.setattr(backend, "check", lambda r, _c=backend.check, _n=name: checks.append(_n) or _c(r), raising=False)
    monkeypatch.setattr(_dispatch, "_CHOSEN", {})
    q, k, v = qkv(dtype=torch.float64, **shape)
    for _ in range(3):
        out, weights = attention(q, k, v, is_causal=is_causal)
    assert weights is None and checks == ["sdpa"]
    expected, _ = attention(q, k, v, is_causal=is_causal, backend="math")
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    checks.clear()
    attention(q.float(), k.float(), v.float(), is_causal=is_causal)  # another dtype: another signature
    attention(q.float(), k.float(), v.float(), is_causal=is_causal)
    assert checks == ["sdpa"]


def test_calls_validate_their_inputs():
    q, k, v = qkv()
    with pytest.raises(ShapeError):
        attention(q, k[:, :, :3], v)  # S of key and value differ
    with pytest.raises(TypeError, match="is_causal"):
        attention(q, k, v, is_causal=1)
