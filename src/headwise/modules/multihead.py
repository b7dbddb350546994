"""A drop-in ``torch.nn.MultiheadAttention`` that runs on the fused kernel.

Same constructor, defaults, forward arguments, return values, parameters and
``state_dict`` keys as ``torch.nn.MultiheadAttention`` (it subclasses it), so
switching is an import change.  What differs:

* One :func:`headwise.functional.attention` call: without weights the output comes from
  the fused kernel (``F.scaled_dot_product_attention``); with weights from the ``"weights"``
  backend, whose averaged weights never hold every head's L x S map (the default call of a
  training step at L=8192 peaks about 9x below torch's, docs/benchmarks.md).
* A query row whose keys are all masked gives zeros, never NaN.
* Mistakes raise errors that name the layout and suggest the fix (they subclass both
  ``ValueError`` and ``AssertionError``, so code catching torch's errors still works).
* ``is_causal=True`` without an ``attn_mask`` applies the causal mask, in training and in
  evaluation (torch's layer raises in training and ignores the flag on its inference fast path).
* Nested-tensor inputs are accepted where torch's layer accepts them (its inference fast path:
  eval mode, no autograd, ``batch_first``, self-attention, no masks): they are padded, attended
  with a key padding mask and returned nested.  Elsewhere they raise torch's error.
* ``torch.jit.trace`` works; ``torch.jit.script`` (deprecated in torch 2.13) raises a
  ``TypeError`` that points to ``torch.compile`` and ``torch.export``, which both work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise.errors import TorchCompatError, TorchCompatShapeError, fmt_shape, heads_do_not_divide
from headwise.functional import attention, causal_mask, from_torch_bool_mask, merge_masks

__all__ = ["MultiheadAttention", "replace_mha_"]


def _check_constructor(embed_dim: int, num_heads: int, dropout: float) -> None:
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
        if value <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} "
                f"and num_heads={num_heads}."
            )
    if embed_dim % num_heads != 0:
        raise ValueError(heads_do_not_divide(embed_dim, num_heads))
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}.")


class MultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention, a drop-in for ``torch.nn.MultiheadAttention``.

    Args:
        embed_dim: E, total dimension of the model.
        num_heads: H, parallel attention heads; must divide ``embed_dim`` (D = E / H).
        dropout: dropout on the attention probabilities (training only).
        bias: add bias to the input and output projections.
        add_bias_kv: append a learned key and value to the sequence.
        add_zero_attn: append a zero key and value to the sequence.
        kdim, vdim: feature sizes of key and value (default ``embed_dim``).
        batch_first: inputs and outputs are (B, L, E) instead of (L, B, E).

    Parameters and ``state_dict`` keys are exactly torch's (``in_proj_weight`` or
    ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``/``out_proj.bias``, ``bias_k``/``bias_v``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_constructor(embed_dim, num_heads, dropout)
        super().__init__(
            embed_dim,
            num_heads,
            dropout=dropout,
            bias=bias,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            kdim=kdim,
            vdim=vdim,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiheadAttention:
        """A headwise layer with ``module``'s configuration and a copy of its weights."""
        weight = module.out_proj.weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query, key, value: batched or unbatched inputs, see Shape.
            key_padding_mask: (B, S) or (S,) unbatched; bool ``True`` = padding (ignored
                key), as in torch, or a float mask added to the scores.
            need_weights: also return attention weights (computed beside the fused
                output; a caller that drops them frees their memory).
            attn_mask: (L, S) or (B * H, L, S); bool ``True`` = *not* allowed to attend
                (torch's polarity), or a float mask added to the scores.
            average_attn_weights: average the returned weights over heads.
            is_causal: with ``attn_mask``, a hint that it is the causal mask (as in torch).
                Without one, the layer applies the causal mask itself (query ``i`` attends keys
                ``j <= i + S - L``), in training and in evaluation alike.  torch's layer differs
                here: it raises ``Need attn_mask if specifying the is_causal hint`` in training
                and ignores the flag on its inference fast path (a non-causal result); headwise
                computes what the flag asks for everywhere.

        Returns:
            ``(attn_output, attn_weights)``; weights are ``None`` unless ``need_weights``.

        Nested tensors: ``query is key is value`` a nested tensor (torch's strided layout,
        (B, *, E)) is accepted exactly where torch's layer accepts one: eval mode, no autograd
        (``torch.no_grad()`` or parameters that do not require grad), ``batch_first=True``, no
        masks, an even ``num_heads`` and the rest of torch's fast-path conditions.  It is padded,
        attended with a key padding mask, and the output comes back nested; the weights come
        back padded, zero in padded rows and columns, as torch returns them.  Anywhere else a
        nested input raises :class:`~headwise.errors.TorchCompatError` with torch's message.

        Shape:
            query (L, B, E), or (B, L, E) with ``batch_first``, or (L, E) unbatched;
            key (S, B, kdim) / (B, S, kdim) / (S, kdim); value likewise with vdim.
            attn_output like query; attn_weights (B, L, S) averaged or (B, H, L, S),
            without B when unbatched.  S counts the bias_kv and zero_attn keys.
        """
        if _any_nested(query, key, value):
            return self._forward_nested(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        batched = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        key_padding_mask = _own_polarity(key_padding_mask, "key_padding_mask", query.dtype)
        attn_mask = _own_polarity(attn_mask, "attn_mask", query.dtype)
        same_kv = key is value
        same_qkv = same_kv and query is key
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)  # (1, L|S, E)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (1, S)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (B, L|S, E)
        batch, query_len, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim

        q, k, v = self.project(query, key, value, same_qkv=same_qkv, same_kv=same_kv)  # (B, L|S, E)
        key_len = k.shape[1]
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                attn_mask = attn_mask[None, None]  # (1, 1, L, S)
            else:
                attn_mask = attn_mask.view(batch, heads, query_len, key_len)  # (B, H, L, S)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if is_causal:
            # With a square mask and no appended keys the fused kernel applies the causal
            # mask itself; otherwise the given mask is used, or a causal one is built.
            fused = self.bias_k is None and not self.add_zero_attn and query_len == key_len
            if fused:
                attn_mask = None
            else:
                is_causal = False
                if attn_mask is None:
                    attn_mask = causal_mask(query_len, key_len, device=q.device)[None, None]  # (1, 1, L, S)

        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)  # (B, S+1, E)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)  # (B, S+1, E)
            attn_mask = _append_open_key(attn_mask)
            key_padding_mask = _append_open_key(key_padding_mask)
        q = q.view(batch, query_len, heads, head_dim).transpose(1, 2)  # (B, H, L, D)
        k = k.view(batch, k.shape[1], heads, head_dim).transpose(1, 2)  # (B, H, S, D)
        v = v.view(batch, v.shape[1], heads, head_dim).transpose(1, 2)  # (B, H, S, D)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, head_dim)], dim=2)  # (B, H, S+1, D)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, head_dim)], dim=2)  # (B, H, S+1, D)
            attn_mask = _append_open_key(attn_mask)
            key_padding_mask = _append_open_key(key_padding_mask)
        mask = merge_masks(attn_mask, key_padding_mask, dtype=q.dtype)

        dropout_p = self.dropout if self.training else 0.0
        out, weights = attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, need_weights=need_weights,
            average_weights=need_weights and average_attn_weights,
        )  # (B, H, L, D), and (B, L, S) averaged or (B, H, L, S)
        out = out.transpose(1, 2).reshape(batch, query_len, heads * head_dim)  # (B, L, H*D), H*D = E unless pruned
        out = self.out_proj(out)  # (B, L, E)
        if not batched:
            out = out.squeeze(0)  # (L, E)
            if weights is not None:
                weights = weights.squeeze(0)  # (L, S) or (H, L, S)
        elif not self.batch_first:
            out = out.transpose(0, 1)  # (L, B, E)
        return out, weights

    def _forward_nested(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Nested inputs where torch's layer takes them: padded, attended, returned nested.

        Shape:
            query = key = value nested (B, *, E) -> attn_output nested (B, *, E);
            attn_weights (B, L_max, L_max) averaged or (B, H, L_max, L_max).
        """
        reason = self._nested_refusal(query, key, value, key_padding_mask, attn_mask)
        if reason is not None:
            raise TorchCompatError(
                "MultiheadAttention does not support NestedTensor outside of its fast path. The fast path "
                f"was not hit because {reason.rstrip('.')}. Nested inputs need eval mode, no autograd "
                "(torch.no_grad()), batch_first=True, query is key is value and no masks; otherwise pad "
                "them (torch.nested.to_padded_tensor) and pass key_padding_mask."
            )
        lengths = [part.shape[0] for part in query.unbind()]
        padded = torch.nested.to_padded_tensor(query, 0.0)  # (B, L_max, E)
        positions = torch.arange(padded.shape[1], device=padded.device)  # (L_max,)
        padding = positions >= torch.tensor(lengths, device=padded.device)[:, None]  # (B, L_max), True = padding
        out, weights = self.forward(
            padded, padded, padded, key_padding_mask=padding, need_weights=need_weights,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # (B, L_max, E), weights (B, L_max, L_max) or (B, H, L_max, L_max)
        out = torch.nested.as_nested_tensor(
            [rows[:length] for rows, length in zip(out.unbind(), lengths, strict=True)], layout=torch.strided
        )  # nested (B, *, E)
        if weights is not None:
            kept = ~padding[:, :, None] if weights.dim() == 3 else ~padding[:, None, :, None]  # (B, [1,] L_max, 1)
            weights = weights * kept  # padded query rows are zero, as torch returns them
        return out, weights

    def _nested_refusal(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
    ) -> str | None:
        """Why torch's layer would refuse these nested inputs (its fast-path conditions, in its words), or None."""
        reason = None
        if any(m is not None and m.is_floating_point() for m in (attn_mask, key_padding_mask)):
            reason = "floating-point masks are not supported for fast path."
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if not torch.backends.mha.get_fastpath_enabled():
            reason = "torch.backends.mha.get_fastpath_enabled() was not True"
        elif query.dim() != 3:
            reason = f"input not batched; expected query.dim() of 3 but got {query.dim()}"
        elif query is not key or key is not value:
            reason = "non-self attention was used (query, key, and value are not the same Tensor)"
        elif bias is not None and query.dtype != bias.dtype:
            reason = f"dtypes of query ({query.dtype}) and self.in_proj_bias ({bias.dtype}) don't match"
        elif weight is None:
            reason = "in_proj_weight was None"
        elif query.dtype != weight.dtype:
            reason = f"dtypes of query ({query.dtype}) and self.in_proj_weight ({weight.dtype}) don't match"
        elif self.training:
            reason = "training is enabled"
        elif self.num_heads % 2 != 0:
            reason = "self.num_heads is not even"
        elif not self.batch_first:
            reason = "batch_first was not True"
        elif self.bias_k is not None:
            reason = "self.bias_k was not None"
        elif self.bias_v is not None:
            reason = "self.bias_v was not None"
        elif self.add_zero_attn:
            reason = "add_zero_attn was enabled"
        elif not self._qkv_same_embed_dim:
            reason = "_qkv_same_embed_dim was not True"
        elif key_padding_mask is not None or attn_mask is not None:
            reason = "supplying both src_key_padding_mask and src_mask at the same time is not supported with NestedTensor input"
        elif torch.is_autocast_enabled():
            reason = "autocast is enabled"
        if reason is not None:
            return reason
        tensors = (query, key, value, weight, bias, self.out_proj.weight, self.out_proj.bias)
        if torch.overrides.has_torch_function(tensors):
            return "some Tensor argument has_torch_function"  # torch's jagged layout is a tensor subclass
        if not all(t is None or t.device.type in ("cpu", "cuda") for t in tensors):
            return "some Tensor argument's device is neither one of cpu or cuda"
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return "grad is enabled and at least one of query or the input/output projection weights or biases requires_grad"
        if bias is None:
            return "in_proj_bias was None (the layer was built with bias=False)"
        return None

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this on every module before compiling: refuse, naming the supported paths."""
        raise TypeError(
            f"{type(self).__name__} (headwise) cannot be compiled by torch.jit.script: TorchScript is deprecated "
            "in torch 2.13, and headwise's layers are written for torch.compile and torch.export. Use "
            "torch.compile(model) to run faster, or torch.export.export(model, args) for a graph to save and "
            "deploy (torch.jit.trace also works)."
        )

    def project(
        self, query: Tensor, key: Tensor, value: Tensor, *, same_qkv: bool, same_kv: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections, packed into one matmul where the inputs are one tensor.

        ``same_qkv`` / ``same_kv``: the inputs are one tensor (self-attention) or key and
        value are (cross-attention); the packed product then serves them, with the same
        result.  Subclasses that hold the projections otherwise override this method
        (:class:`headwise.quant.QuantizedMultiheadAttention` holds three quantized modules).

        Shape:
            query (B, L, E), key (B, S, kdim), value (B, S, vdim) -> (B, L, H*D), (B, S, H*D), (B, S, H*D).
        """
        e = self.num_heads * self.head_dim  # H*D: embed_dim, or less after headwise.heads.prune_heads_
        bias = self.in_proj_bias
        if bias is not None and bias.dtype != query.dtype:
            bias = bias.to(query.dtype)  # torch's layer accepts a bias of another dtype too
        if self._qkv_same_embed_dim and same_qkv:
            # split_with_sizes: Tensor.split's Python wrapper costs more than the split at short lengths
            return F.linear(query, self.in_proj_weight, bias).split_with_sizes([e, e, e], dim=-1)  # 3 x (B, L, E)
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.split(e)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            w_q, w_kv = w.split([e, 2 * e])
            q = F.linear(query, w_q, b_q)  # (B, L, E)
            if same_kv:
                b_kv = None if bias is None else bias[e:]
                k, v = F.linear(key, w_kv, b_kv).split(e, dim=-1)  # 2 x (B, S, E)
                return q, k, v
            w_k, w_v = w_kv.split(e)
            return q, F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        return (
            F.linear(query, self.q_proj_weight, b_q),
            F.linear(key, self.k_proj_weight, b_k),
            F.linear(value, self.v_proj_weight, b_v),
        )

    def _check_inputs(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
    ) -> bool:
        """Validate shapes, dtypes and devices; return whether the input is batched."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        _check_dims(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        batched = query.dim() == 3
        self._check_batched_shapes(query, key, value, key_padding_mask, attn_mask, batched)
        self._check_dtype_device(query, key, value)
        return batched

    def _check_batched_shapes(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        batched: bool,
    ) -> None:
        e, kdim, vdim = self.embed_dim, self.kdim, self.vdim
        if batched and self.batch_first:
            layout, flag = "(batch, seq, {})", "batch_first=True"
            (b_q, l_q), (b_k, s_k), (b_v, s_v) = query.shape[:2], key.shape[:2], value.shape[:2]
        elif batched:
            layout, flag = "(seq, batch, {})", "batch_first=False"
            (l_q, b_q), (s_k, b_k), (s_v, b_v) = query.shape[:2], key.shape[:2], value.shape[:2]
        else:
            layout, flag = "(seq, {})", "unbatched input"
            b_q = b_k = b_v = 1
            l_q, s_k, s_v = query.shape[0], key.shape[0], value.shape[0]
        for name, t, dim in (("query", query, e), ("key", key, kdim), ("value", value, vdim)):
            if t.shape[-1] != dim:
                which = "embed_dim" if name == "query" else ("kdim" if name == "key" else "vdim")
                raise TorchCompatShapeError(
                    f"{name} has shape {fmt_shape(t.shape)} but the layer has {which}={dim}: "
                    f"{flag} expects {layout.format(dim)}."
                )
        if not b_q == b_k == b_v:
            hint = ""
            if batched:
                other = "batch_first=False" if self.batch_first else "batch_first=True"
                swapped = "(seq, batch, embed)" if self.batch_first else "(batch, seq, embed)"
                alt = 1 if self.batch_first else 0  # where the batch would sit in the other layout
                if query.shape[alt] == key.shape[alt] == value.shape[alt]:
                    hint = f" The inputs look like {swapped}: did you mean {other}?"
            raise TorchCompatShapeError(
                f"query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)} and value "
                f"{fmt_shape(value.shape)} disagree on the batch size ({b_q}, {b_k}, {b_v}); "
                f"{flag} expects {layout.format('E')} for each.{hint}"
            )
        if s_k != s_v:
            raise TorchCompatShapeError(
                f"key {fmt_shape(key.shape)} and value {fmt_shape(value.shape)} have different "
                f"sequence lengths ({s_k} and {s_v}); {flag} expects {layout.format('E')}, one "
                "value per key."
            )
        extra = int(self.bias_k is not None)
        if key_padding_mask is not None:
            expected = (b_q, s_k) if batched else (s_k,)
            if tuple(key_padding_mask.shape) != expected:
                hint = ""
                if batched and tuple(key_padding_mask.shape) == expected[::-1]:
                    hint = " It looks transposed: key_padding_mask is (batch, seq) whatever batch_first is."
                raise TorchCompatShapeError(
                    f"key_padding_mask has shape {fmt_shape(key_padding_mask.shape)}, expected "
                    f"{fmt_shape(expected)} ({'batch, ' if batched else ''}source length).{hint}"
                )
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                expected = (l_q, s_k)
            else:
                expected = (b_q * self.num_heads, l_q, s_k)
            if tuple(attn_mask.shape) != expected:
                raise TorchCompatShapeError(
                    f"attn_mask has shape {fmt_shape(attn_mask.shape)}; expected (L, S) = "
                    f"{fmt_shape((l_q, s_k))} or (batch * num_heads, L, S) = "
                    f"{fmt_shape((b_q * self.num_heads, l_q, s_k))}."
                    + (" (S excludes the bias_kv key, which is added by the layer.)" if extra else "")
                )

    def compute_tensor(self) -> Tensor:
        """A tensor with the dtype and device the layer computes in (inputs are checked against it).

        Subclasses whose projection weights are not float tensors override it.
        """
        return self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight

    def _check_dtype_device(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        weight = self.compute_tensor()
        for name, t in (("key", key), ("value", value)):
            if t.dtype != query.dtype:
                raise TypeError(
                    f"{name} has dtype {t.dtype} but query has {query.dtype}; pass inputs of one dtype."
                )
        if query.dtype != weight.dtype and not torch.is_autocast_enabled(query.device.type):
            raise TypeError(
                f"query has dtype {query.dtype} but the layer's weights are {weight.dtype}; "
                f"convert the input (x.to({weight.dtype})) or the layer (layer.to({query.dtype}))."
            )
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.device != weight.device:
                raise ValueError(
                    f"{name} is on {t.device} but the layer's weights are on {weight.device}; "
                    f"move one of them (x.to('{weight.device}') or layer.to('{t.device}'))."
                )


def _check_dims(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    num_heads: int,
) -> None:
    """Rank checks, with torch's messages (plus hints) so that both libraries read alike."""
    if query.dim() == 3:
        if key.dim() != 3 or value.dim() != 3:
            raise TorchCompatShapeError(
                "For batched (3-D) `query`, expected `key` and `value` to be 3-D but found "
                f"{key.dim()}-D and {value.dim()}-D tensors respectively"
            )
        if key_padding_mask is not None and key_padding_mask.dim() != 2:
            raise TorchCompatShapeError(
                "For batched (3-D) `query`, expected `key_padding_mask` to be `None` or 2-D but "
                f"found {key_padding_mask.dim()}-D tensor instead; it is (batch, source length)"
            )
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise TorchCompatShapeError(
                "For batched (3-D) `query`, expected `attn_mask` to be `None`, 2-D or 3-D but "
                f"found {attn_mask.dim()}-D tensor instead; it is (L, S) or (batch * num_heads, L, S)"
            )
    elif query.dim() == 2:
        if key.dim() != 2 or value.dim() != 2:
            raise TorchCompatShapeError(
                "For unbatched (2-D) `query`, expected `key` and `value` to be 2-D but found "
                f"{key.dim()}-D and {value.dim()}-D tensors respectively"
            )
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise TorchCompatShapeError(
                "For unbatched (2-D) `query`, expected `key_padding_mask` to be `None` or 1-D but "
                f"found {key_padding_mask.dim()}-D tensor instead"
            )
        if attn_mask is not None:
            if attn_mask.dim() not in (2, 3):
                raise TorchCompatShapeError(
                    "For unbatched (2-D) `query`, expected `attn_mask` to be `None`, 2-D or 3-D "
                    f"but found {attn_mask.dim()}-D tensor instead"
                )
            if attn_mask.dim() == 3:
                expected = (num_heads, query.shape[0], key.shape[0])
                if tuple(attn_mask.shape) != expected:
                    raise TorchCompatShapeError(
                        f"Expected `attn_mask` shape to be {expected} but got "
                        f"{tuple(attn_mask.shape)} (num_heads, L, S) for unbatched input"
                    )
    else:
        raise TorchCompatShapeError(
            f"query should be unbatched 2D or batched 3D tensor but received {query.dim()}-D "
            f"query tensor of shape {fmt_shape(query.shape)}"
        )


def _any_nested(*tensors: object) -> bool:
    return any(isinstance(t, Tensor) and t.is_nested for t in tensors)


def _own_polarity(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """A torch-polarity mask (bool True = masked out, or additive float) in headwise's polarity."""
    if mask is None:
        return None
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} has dtype {mask.dtype}; expected torch.bool (True = masked out, as in "
            "torch.nn.MultiheadAttention) or a floating mask that is added to the scores."
        )
    mask = from_torch_bool_mask(mask)
    return mask if mask.dtype == torch.bool else mask.to(dtype)


def _append_open_key(mask: Tensor | None) -> Tensor | None:
    """Extend a headwise mask by one key that every query may attend (bias_kv, zero_attn)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return F.pad(mask, (0, 1), value=True)
    return F.pad(mask, (0, 1), value=0.0)


def replace_mha_(model: nn.Module) -> int:
    """Turn every ``torch.nn.MultiheadAttention`` inside ``model`` into headwise's, in place.

    The modules keep their identity, parameters (so optimizers still hold them),
    buffers, hooks and training mode: only their class changes, and with it the
    forward pass, whose outputs are unchanged.  Only modules whose type is exactly
    ``torch.nn.MultiheadAttention`` are converted; subclasses are left alone.

    Note: ``nn.TransformerEncoderLayer`` in eval mode under ``torch.no_grad`` may run
    its own fused whole-layer kernel without calling its attention module (see
    ``torch.backends.mha.set_fastpath_enabled``); outputs are the same either way.

    Returns:
        the number of modules converted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    count = 0
    for module in model.modules():
        if type(module) is nn.MultiheadAttention:
            _check_constructor(module.embed_dim, module.num_heads, module.dropout)
            module.__class__ = MultiheadAttention
            count += 1
    return count
