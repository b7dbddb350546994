"""headwise.Attention's packed q/k/v projection: one matmul when nothing is recorded, always the parameters' values."""

from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from headwise import Attention
from headwise.heads import prune_heads_
from headwise.modules.attention import PACKED_MIN_ROWS

E, H, B, L = 32, 4, 2, 16  # B * L = 32 rows: packed on CPU (PACKED_MIN_ROWS)


class CountLinear(TorchFunctionMode):
    """Counts ``F.linear`` calls: 2 when q/k/v are projected together (then the output), 4 when apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def linear_calls(attn: nn.Module, *args, **kwargs) -> tuple[int, torch.Tensor]:
    with CountLinear() as counter:
        out, _ = attn(*args, **kwargs)
    return counter.calls, out


def by_hand(attn: Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's output from its current parameters, one projection at a time (no mask, no cache).

    Shape: x (B, L, E), context (B, S, E) -> (B, L, E)
    """
    source = x if context is None else context
    heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, H, L, D)
    k = attn.k_proj(source).unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)  # (B, K, S, D)
    v = attn.v_proj(source).unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)  # (B, K, S, D)
    group = heads // kv_heads
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    out = out * attn.head_gate.view(heads, 1, 1)  # (B, H, L, D)
    return attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, E)


def shares_one_storage(attn: Attention) -> bool:
    pointers = {p.weight.untyped_storage().data_ptr() for p in (attn.q_proj, attn.k_proj, attn.v_proj)}
    return len(pointers) == 1


@pytest.mark.parametrize(
    "kwargs", [{}, {"num_kv_heads": 2}, {"num_kv_heads": 1, "bias": False}, {"head_dim": 6}], ids=str
)
def test_one_matmul_for_q_k_v_when_nothing_is_recorded(kwargs):
    torch.manual_seed(0)
    attn = Attention(E, H, **kwargs).eval()
    with torch.no_grad():
        attn.head_gate.copy_(torch.tensor([1.0, 0.0, 0.5, 2.0]))
    x, context = torch.randn(B, L, E), torch.randn(B, 17, E)
    assert shares_one_storage(attn)
    with torch.no_grad():
        calls, got = linear_calls(attn, x)
        assert calls == 2
        torch.testing.assert_close(got, by_hand(attn, x), atol=1e-5, rtol=1e-5)
        calls, got = linear_calls(attn, x, context)
        assert calls == 3  # q, then k and v together
        torch.testing.assert_close(got, by_hand(attn, x, context), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        sequence = torch.randn(B, L + 3, E)
        cache = attn.new_cache(B, L + 3)
        calls, first = linear_calls(attn, sequence[:, :L], is_causal=True, cache=cache)
        assert calls == 2  # the prompt, B * L rows at once
        steps = [linear_calls(attn, sequence[:, t : t + 1], is_causal=True, cache=cache) for t in range(L, L + 3)]
        assert {calls for calls, _ in steps} == {4}  # B rows per decoding step: apart on CPU
        full, _ = attn(sequence, is_causal=True)
        torch.testing.assert_close(torch.cat([first] + [out for _, out in steps], 1), full, atol=1e-5, rtol=1e-5)


def test_rows_decide_packing_on_cpu():
    attn = Attention(E, H).eval()
    with torch.no_grad():
        for rows in (1, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS):
            x = torch.randn(1, rows, E)
            calls, got = linear_calls(attn, x)
            assert calls == (2 if rows >= PACKED_MIN_ROWS else 4)
            torch.testing.assert_close(got, by_hand(attn, x), atol=1e-5, rtol=1e-5)
        strided = torch.randn(PACKED_MIN_ROWS, 3, E)[:, 1:2]  # (PACKED_MIN_ROWS, 1, E), not contiguous
        calls, got = linear_calls(attn, strided)
        assert calls == 2
        torch.testing.assert_close(got, by_hand(attn, strided), atol=1e-5, rtol=1e-5)


def test_gradients_reach_each_projection():
    """Trainable projections are called one by one; frozen ones are packed and still pass the gradient to x."""
    torch.manual_seed(0)
    attn = Attention(E, H)
    x = torch.randn(B, L, E, requires_grad=True)
    calls, out = linear_calls(attn, x)
    assert calls == 4
    out.square().sum().backward()
    assert all(p.weight.grad is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    expected = x.grad.clone()
    attn.requires_grad_(False)
    x.grad = None
    calls, out = linear_calls(attn, x)
    assert calls == 2
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)


def test_every_way_of_changing_a_weight_is_seen():
    torch.manual_seed(0)
    attn = Attention(E, H).eval()
    x = torch.randn(B, L, E)
    with torch.no_grad():
        attn.k_proj.weight.mul_(2.0)  # in place: the packed rows are the same memory
        assert linear_calls(attn, x)[0] == 2
        torch.testing.assert_close(attn(x)[0], by_hand(attn, x), atol=1e-5, rtol=1e-5)
    attn.v_proj.bias.data.copy_(torch.randn(E))  # through .data, which no version counter sees
    with torch.no_grad():
        assert linear_calls(attn, x)[0] == 2
        torch.testing.assert_close(attn(x)[0], by_hand(attn, x), atol=1e-5, rtol=1e-5)
    attn.q_proj.weight.data = torch.randn(E, E)  # new memory: projected apart until packed again
    with torch.no_grad():
        assert linear_calls(attn, x)[0] == 4
        torch.testing.assert_close(attn(x)[0], by_hand(attn, x), atol=1e-5, rtol=1e-5)
    attn.v_proj.weight = nn.Parameter(torch.randn(E, E))
    with torch.no_grad():
        assert linear_calls(attn, x)[0] == 4
        torch.testing.assert_close(attn(x)[0], by_hand(attn, x), atol=1e-5, rtol=1e-5)
    attn.load_state_dict(attn.state_dict(), assign=True)  # assign=True replaces, then packs again
    assert shares_one_storage(attn)
    with torch.no_grad():
        assert linear_calls(attn, x)[0] == 2
        torch.testing.assert_close(attn(x)[0], by_hand(attn, x), atol=1e-5, rtol=1e-5)


def test_hooks_are_honoured_when_packed():
    attn = Attention(E, H).eval()
    x = torch.randn(B, L, E)
    with torch.no_grad():
        plain, _ = attn(x)
        handle = attn.k_proj.register_forward_hook(lambda module, args, out: out * 0.0)
        calls, zeroed_k = linear_calls(attn, x)
        handle.remove()
        assert calls == 4
        assert not torch.allclose(zeroed_k, plain)
        params = {name: torch.zeros_like(p) if name == "v_proj.weight" else p for name, p in attn.named_parameters()}
        swapped, _ = torch.func.functional_call(attn, params, (x,))
        torch.testing.assert_close(swapped, by_hand(_with(attn, params), x), atol=1e-5, rtol=1e-5)
        calls, again = linear_calls(attn, x)
    assert calls == 2
    torch.testing.assert_close(again, plain, atol=0, rtol=0)


def _with(attn: Attention, params: dict[str, torch.Tensor]) -> Attention:
    other = copy.deepcopy(attn)
    other.load_state_dict(params)
    return other


def test_packed_again_after_copies_conversions_and_pruning():
    torch.manual_seed(0)
    attn = Attention(E, H, num_kv_heads=2).eval()
    x = torch.randn(B, L, E)
    with torch.no_grad():
        expected, _ = attn(x)
    buffer = io.BytesIO()
    torch.save(attn, buffer)
    buffer.seek(0)
    copies = {
        "deepcopy": copy.deepcopy(attn),
        "pickled": torch.load(buffer, weights_only=False),
        "float64": copy.deepcopy(attn).to(torch.float64),
        "shared": copy.deepcopy(attn).share_memory(),
    }
    for name, other in copies.items():
        assert shares_one_storage(other), name
        dtype = next(other.parameters()).dtype
        with torch.no_grad():
            calls, got = linear_calls(other, x.to(dtype))
        assert calls == 2, name
        torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5, msg=name)
    assert copies["shared"].k_proj.weight.is_shared()
    shallow = copy.copy(attn)  # the same parameters: both layers keep the one packed tensor
    with torch.no_grad():
        assert linear_calls(shallow, x)[0] == 2
        assert linear_calls(attn, x)[0] == 2
    pruned = copy.deepcopy(attn)
    prune_heads_(pruned, {0: [1, 3]})
    assert shares_one_storage(pruned)
    with torch.no_grad():
        calls, got = linear_calls(pruned, x)
        assert calls == 2
        torch.testing.assert_close(got, by_hand(pruned, x), atol=1e-5, rtol=1e-5)


def test_state_dict_saves_and_loads_with_safetensors(tmp_path):
    attn = Attention(E, H).eval()
    x = torch.randn(B, L, E)
    save_file(attn.state_dict(), tmp_path / "attn.safetensors")
    other = Attention(E, H).eval()
    other.load_state_dict(load_file(tmp_path / "attn.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(other(x)[0], attn(x)[0], atol=0, rtol=0)


def test_replaced_projections_do_not_keep_the_packed_memory():
    attn = Attention(E, H)
    packed = attn._packed  # a weak reference: the parameters hold the packed rows, the layer does not
    assert packed is not None and packed() is not None
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attn, name, nn.Linear(E, E))
    gc.collect()
    assert packed() is None
    with torch.no_grad():
        assert linear_calls(attn.eval(), torch.randn(B, L, E))[0] == 4
