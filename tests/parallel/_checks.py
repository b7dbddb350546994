"""What each rank runs (in a spawned process): sharded models against the single-process model.

Each function builds the model from a fixed seed on every rank, keeps an unsharded copy as the
reference, and returns the worst differences (float64, so any real mismatch is visible).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from headwise import Attention, MultiheadAttention, RotaryEmbedding
from headwise.modules.blocks import Encoder, encoder_block
from headwise.parallel import shard_heads_


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _grad_diff(
    sharded: nn.Module | list[tuple[str, nn.Parameter]], reference: nn.Module, tp_rank: int = 0, tp_size: int = 1
) -> float:
    """Worst gradient difference; a plain local shard (DDP's view of a DTensor) is compared to its slice."""
    ref = dict(reference.named_parameters())
    worst, seen = 0.0, 0
    named = sharded.named_parameters() if isinstance(sharded, nn.Module) else sharded
    for name, param in named:
        if not param.requires_grad:
            continue
        want, got = ref[name].grad, _full(param.grad)
        if got.shape != want.shape:  # a local shard: slice the reference the same way
            dim = next(d for d in range(want.dim()) if got.shape[d] != want.shape[d])
            want = want.chunk(tp_size, dim=dim)[tp_rank]
        worst = max(worst, _diff(got, want))
        seen += 1
    if seen != sum(p.requires_grad for p in reference.parameters()):
        raise AssertionError(f"compared {seen} gradients, the reference has more")
    return worst


def _error(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def tensor_parallel(rank: int, world_size: int) -> dict:
    """Two ranks: Attention (GQA + rotary), decoding with a cache, the BERT encoder, and the errors."""
    from headwise.models import BertConfig, BertModel

    mesh = init_device_mesh("cpu", (world_size,))
    results: dict = {}

    torch.manual_seed(0)
    attn = Attention(32, 4, num_kv_heads=2, rotary=RotaryEmbedding(8)).double()
    ref = copy.deepcopy(attn)
    results["attention_counts"] = shard_heads_(attn, mesh)
    results["local_heads"] = [attn.num_heads, attn.num_kv_heads, attn.head_gate.numel()]
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, _ = attn(xs, is_causal=True)
    want, _ = ref(xr, is_causal=True)
    out.pow(2).sum().backward()
    want.pow(2).sum().backward()
    results["attention_out"] = _diff(out, want)
    results["attention_grads"] = _grad_diff(attn, ref)
    results["attention_input_grad"] = _diff(xs.grad, xr.grad)
    with torch.no_grad():
        cache = attn.new_cache(2, 7)
        steps = torch.cat([attn(x[:, t : t + 1], cache=cache)[0] for t in range(7)], 1)
    results["decode"] = _diff(steps, want)

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    bert = BertModel(config).double()
    ref_bert = copy.deepcopy(bert)
    results["bert_counts"] = shard_heads_(bert, mesh)
    ids = torch.randint(1, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    real = mask.bool()
    out, _ = bert(ids, mask)
    want, _ = ref_bert(ids, mask)
    out[real].pow(2).sum().backward()
    want[real].pow(2).sum().backward()
    results["bert_out"] = _diff(out[real], want[real])
    results["bert_grads"] = _grad_diff(bert, ref_bert)

    odd = Attention(48, 6, num_kv_heads=3)
    results["odd_kv_error"] = _error(lambda: shard_heads_(nn.Sequential(odd), mesh))
    results["odd_kv_unchanged"] = type(odd.q_proj.weight) is nn.Parameter and odd.num_heads == 6
    results["odd_heads_error"] = _error(lambda: shard_heads_(Attention(48, 3), mesh))
    results["mha_error"] = _error(lambda: shard_heads_(nn.Sequential(Attention(8, 2), MultiheadAttention(8, 2)), mesh))
    results["twice_error"] = _error(lambda: shard_heads_(attn, mesh))
    results["mesh_error"] = _error(lambda: shard_heads_(Attention(8, 2), init_device_mesh("cpu", (1, world_size))))
    results["type_error"] = _error(lambda: shard_heads_(Attention(8, 2), "tp"))
    results.update(_decoder(mesh))
    return results


def _tiny_causal_lm(num_kv_heads: int, num_heads: int | None = None):
    """A random Llama (float64) with a byte-level tokenizer: generate() runs end to end.

    ``num_heads`` query heads (default two per kv head)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from headwise.models import CausalLM, LlamaConfig, LlamaModel

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    config = LlamaConfig(
        vocab_size=256, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=num_heads or num_kv_heads * 2, num_key_value_heads=num_kv_heads, head_dim=8,
        max_position_embeddings=64, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    network = LlamaModel(config, dtype=torch.float64)
    with torch.no_grad():  # transformers' initialization (std 0.02): logits of a sensible size
        for p in network.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return CausalLM(network, tokenizer=tokenizer).eval()


def _decoder(mesh) -> dict:
    """A Llama decoder: 2 kv groups over 2 ranks generate the one-process tokens; 3 groups are refused."""
    results: dict = {}
    model = _tiny_causal_lm(2)
    prompts = ["The cat", "A longer prompt than the first"]
    expected = model.generate(prompts, max_new_tokens=12, stop_at_eos=False)
    results["decoder_counts"] = shard_heads_(model, mesh)
    results["decoder_heads"] = [list(model.num_heads), list(model.num_kv_heads)]
    results["decoder_same_text"] = model.generate(prompts, max_new_tokens=12, stop_at_eos=False) == expected
    odd = _tiny_causal_lm(3)
    results["decoder_odd_error"] = _error(lambda: shard_heads_(odd, mesh))
    results["decoder_odd_unchanged"] = all(type(p) is nn.Parameter for p in odd.parameters())
    return results


def data_and_tensor_parallel(rank: int, world_size: int) -> dict:
    """Four ranks, a 2 x 2 ("dp", "tp") mesh: FSDP2 x TP and DDP x TP on an encoder."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp_rank, tp_rank = mesh["dp"].get_local_rank(), mesh["tp"].get_local_rank()
    torch.manual_seed(0)
    ref = Encoder([encoder_block(32, 4, 64, num_kv_heads=2) for _ in range(2)]).double()
    x = torch.randn(4, 6, 32, dtype=torch.float64)  # the global batch; each dp rank takes half
    local = x[2 * dp_rank : 2 * dp_rank + 2]
    want, _ = ref(x)
    want.pow(2).mean().backward()  # = the mean of the two halves' means, as data parallelism averages
    stepped = copy.deepcopy(ref)  # the reference after one SGD step
    for p, q in zip(stepped.parameters(), ref.parameters(), strict=True):
        p.grad = None if q.grad is None else q.grad.clone()  # deepcopy leaves gradients behind
    torch.optim.SGD(stepped.parameters(), lr=0.1).step()
    with torch.no_grad():
        want_next = stepped(x)[0][2 * dp_rank : 2 * dp_rank + 2]
    results: dict = {}

    fsdp = copy.deepcopy(ref)
    fsdp.zero_grad(set_to_none=True)
    shard_heads_(fsdp, mesh["tp"])
    for block in fsdp.blocks:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(fsdp, mesh=mesh["dp"])
    out, _ = fsdp(local)
    out.pow(2).mean().backward()
    results["fsdp_out"] = _diff(out, want[2 * dp_rank : 2 * dp_rank + 2])
    results["fsdp_grads"] = _grad_diff(fsdp, ref)
    torch.optim.SGD(fsdp.parameters(), lr=0.1).step()
    with torch.no_grad():
        results["fsdp_next_step"] = _diff(fsdp(local)[0], want_next)

    plain = copy.deepcopy(ref)
    plain.zero_grad(set_to_none=True)
    shard_heads_(plain, mesh["tp"])
    ddp = DistributedDataParallel(plain, device_mesh=mesh["dp"])
    # DDP trains local shards of the DTensor weights (torch's _pre_dp_module_transform) and rebuilds
    # DTensors from them around each forward; the shards are the parameters that get gradients
    local_params = list(plain.named_parameters())
    out, _ = ddp(local)
    out.pow(2).mean().backward()
    results["ddp_out"] = _diff(out, want[2 * dp_rank : 2 * dp_rank + 2])
    results["ddp_grads"] = _grad_diff(local_params, ref, tp_rank, mesh["tp"].size())
    torch.optim.SGD([p for _, p in local_params], lr=0.1).step()
    with torch.no_grad():
        results["ddp_next_step"] = _diff(ddp(local)[0], want_next)
    return results


def hang(rank: int, world_size: int) -> dict:
    """Rank 1 never returns: the launcher must kill both ranks at its deadline."""
    import time

    if rank == 1:
        time.sleep(3600)
    return {}
