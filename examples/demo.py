"""`make demo`, part 1: build a headwise layer, show it matches torch, and say which kernel runs.

Run: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import torch
from torch import nn

import headwise


def main() -> None:
    torch.manual_seed(0)
    embed_dim, num_heads, batch, length = 512, 8, 4, 256
    ref = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
    layer = headwise.MultiheadAttention(embed_dim, num_heads, batch_first=True)
    layer.load_state_dict(ref.state_dict())  # same keys, same shapes

    x = torch.randn(batch, length, embed_dim, requires_grad=True)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[1, -64:] = True  # torch polarity: True = padding

    print(f"headwise {headwise.__version__}, torch {torch.__version__}")
    print(f"layer: embed_dim={embed_dim}, num_heads={num_heads}, input {tuple(x.shape)} (batch_first)")
    rows = []
    for need_weights in (True, False):
        out_ref, w_ref = ref(x, x, x, key_padding_mask=pad, need_weights=need_weights)
        out, w = layer(x, x, x, key_padding_mask=pad, need_weights=need_weights)
        (g_ref,) = torch.autograd.grad(out_ref.square().sum(), x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        w_diff = f"{(w - w_ref).abs().max().item():10.2e}" if need_weights else f"{'-':>10}"
        rows.append((need_weights, (out - out_ref).abs().max().item(), w_diff, (g - g_ref).abs().max().item()))
    print("\nmax |headwise - torch| with the same weights:")
    print(f"{'need_weights':>12}  {'output':>10}  {'weights':>10}  {'grad x':>10}")
    for need, o, w, g in rows:
        print(f"{need!s:>12}  {o:10.2e}  {w}  {g:10.2e}")

    q = torch.randn(batch, num_heads, length, embed_dim // num_heads)
    print("\nheadwise.explain for a (B, H, L, D) call without weights:")
    print(headwise.explain(q, q, q))
    print("and with need_weights=True:")
    print(headwise.explain(q, q, q, need_weights=True))


if __name__ == "__main__":
    main()
