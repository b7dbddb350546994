"""Backend registry, selection and :func:`explain`.

A backend is an object with a ``name``, a ``check(request)`` that returns ``None``
or a short reason it cannot serve the request, and a ``run(request)`` that returns
``(output (B, H, L, D), weights (B, H, L, S) or None)``.  Backends are imported
lazily, on the first call that needs them.

``backend="auto"`` walks :data:`PRIORITY` and takes the first backend whose check
passes; each fallback is logged once at debug level, and :func:`explain` shows every
backend's reason.  A backend named explicitly that cannot serve the call raises
:class:`~headwise.errors.BackendError` with its reason.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from headwise.errors import BackendError, ShapeError, fmt_shape
from headwise.functional import _masks

__all__ = ["PRIORITY", "AttentionRequest", "Backend", "Explanation", "explain", "get_backend", "select"]

_log = logging.getLogger("headwise.functional")

#: Backends tried by ``backend="auto"``, in order.
PRIORITY: tuple[str, ...] = ("sdpa", "math")

_MODULES = {
    "sdpa": "headwise.functional._backends.sdpa",
    "math": "headwise.functional._backends.math",
}
_LOADED: dict[str, Backend] = {}
_LOGGED_FALLBACKS: set[tuple[str, str]] = set()


@dataclass(slots=True)
class PreparedMask:
    """A request's masks folded into one, ready for a kernel.

    ``mask`` is None, or bool (True = may attend) or additive float, broadcastable to
    (B, H, L, S).  ``is_causal`` is True only when the kernel itself should apply the
    (square) causal mask.  ``alive`` is None, or (..., L, 1) bool: rows that keep at
    least one key; rows outside it were opened in ``mask`` and must be zeroed.
    """

    mask: Tensor | None
    is_causal: bool
    alive: Tensor | None


@dataclass(slots=True)
class AttentionRequest:
    """One validated call of :func:`headwise.functional.attention`.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv), attn_mask
        broadcastable to (B, H, L, S).
    """

    query: Tensor
    key: Tensor
    value: Tensor
    attn_mask: Tensor | None = None
    is_causal: bool = False
    scale: float = 1.0
    dropout_p: float = 0.0
    need_weights: bool = False

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[1]

    def prepared_mask(self, *, fused_causal: bool) -> PreparedMask:
        """Fold ``attn_mask`` and ``is_causal`` into one mask for a kernel.

        With ``fused_causal=True`` a plain square causal call is left to the kernel.
        """
        return _prepare_mask(self, fused_causal=fused_causal)


_NO_MASK = PreparedMask(None, False, None)


def _prepare_mask(request: AttentionRequest, *, fused_causal: bool) -> PreparedMask:
    q, k = request.query, request.key
    query_len = q.shape[-2]
    mask = request.attn_mask
    # a single query at the bottom-right corner sees every key: causal adds nothing
    is_causal = request.is_causal and query_len != 1
    if mask is None and not is_causal:
        return _NO_MASK
    key_len = k.shape[-2]
    if is_causal:
        if mask is None and fused_causal and query_len == key_len:
            return PreparedMask(None, True, None)
        causal = _masks.causal_mask(query_len, key_len, device=q.device)  # (L, S)
        if mask is None and query_len <= key_len:
            return PreparedMask(causal, False, None)  # every row keeps a key
        mask = _masks.merge_masks(mask, causal, dtype=q.dtype)
    alive = _masks.row_alive(mask)  # (..., L, 1)
    if _known_all_alive(alive):
        return PreparedMask(mask, False, None)  # e.g. padding: no row to open, no output to zero
    return PreparedMask(_masks.open_dead_rows(mask, alive), False, alive)


def _known_all_alive(alive: Tensor) -> bool:
    """Whether every row keeps a key, where asking costs nothing: CPU tensors, eager mode.

    Reading the answer is a host sync on an accelerator and a data-dependent branch in a
    traced or compiled graph; there the dead rows are opened and zeroed unconditionally
    (the same result).  On CPU it saves a pass over the output per call (e.g. 1% of a
    padded MiniLM batch).
    """
    return (
        alive.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch._C._get_tracing_state()
        and bool(alive.all())
    )


class Backend(Protocol):
    """What an attention backend provides."""

    name: str

    def check(self, request: AttentionRequest) -> str | None: ...

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]: ...


@dataclass(frozen=True)
class Explanation:
    """Which backend a call uses, and why each other backend cannot serve it."""

    backend: str
    reasons: dict[str, str | None]

    def __str__(self) -> str:
        lines = [f"backend: {self.backend}"]
        for name, reason in self.reasons.items():
            lines.append(f"  {name}: {'can run' if reason is None else reason}")
        return "\n".join(lines)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (imported on first use)."""
    if name not in _MODULES:
        raise ValueError(
            f"unknown attention backend {name!r}; expected 'auto' or one of {sorted(_MODULES)}."
        )
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(_MODULES[name]).BACKEND
    return _LOADED[name]


def select(request: AttentionRequest, backend: str) -> Backend:
    """Pick the backend for ``request``: the named one, or the first in PRIORITY that can run."""
    if backend != "auto":
        chosen = get_backend(backend)
        reason = chosen.check(request)
        if reason is not None:
            raise BackendError(
                f"attention backend {backend!r} cannot run this call: {reason}. "
                "Use backend='auto' or headwise.explain(...) to see which backend can."
            )
        return chosen
    for name in PRIORITY:
        candidate = _LOADED.get(name) or get_backend(name)
        reason = candidate.check(request)
        if reason is None:
            return candidate
        if (name, reason) not in _LOGGED_FALLBACKS:
            _LOGGED_FALLBACKS.add((name, reason))
            _log.debug("attention backend %r skipped: %s", name, reason)
    raise BackendError("no attention backend can run this call")  # math always can


def run_plain(query: Tensor, key: Tensor, value: Tensor, is_causal: bool) -> Tensor | None:
    """``backend="auto"`` for the common call (no mask, no dropout, default scale, no weights).

    A backend may offer ``run_plain(query, key, value, is_causal)``: a promise that its
    ``check`` passes every such call, which it then serves without a request object,
    selection or mask preparation (``"sdpa"`` does: its check refuses only
    ``need_weights``).  When the first backend of :data:`PRIORITY` offers it, auto's choice
    is known in advance and taken here; the inputs are validated as in every call.
    Returns ``None`` where the general path must run.
    """
    if not isinstance(is_causal, bool):
        return None
    first = PRIORITY[0]
    plain = getattr(_LOADED.get(first) or get_backend(first), "run_plain", None)
    if plain is None:
        return None
    _check_qkv(query, key, value)
    return plain(query, key, value, is_causal)


def build_request(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    need_weights: bool,
) -> AttentionRequest:
    """Validate the arguments of ``attention`` and bundle them."""
    _check_qkv(query, key, value)
    if attn_mask is not None:
        _check_mask(attn_mask, query, key)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    elif not scale > 0:
        raise ValueError(
            f"scale must be positive, got {scale}; leave it None for 1/sqrt(head_dim)="
            f"{1.0 / math.sqrt(query.shape[-1]):.6g}."
        )
    return AttentionRequest(
        query, key, value, attn_mask, is_causal, float(scale), float(dropout_p), bool(need_weights)
    )


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    # One cheap test for the common, valid call; the detailed checks below only run when it fails.
    try:
        batch, heads, _, head_dim = query.shape
        k_batch, kv_heads, key_len, k_dim = key.shape
        v_batch, v_heads, v_len, _ = value.shape
        dtype = query.dtype
        if (
            batch == k_batch == v_batch
            and kv_heads == v_heads
            and key_len == v_len
            and k_dim == head_dim
            and kv_heads > 0
            and heads % kv_heads == 0
            and dtype.is_floating_point
            and key.dtype == dtype
            and value.dtype == dtype
            and query.device == key.device == value.device
        ):
            return
    except (AttributeError, ValueError, TypeError):
        pass
    _explain_bad_qkv(query, key, value)


def _explain_bad_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            layout = "(B, H, L, D)" if name == "query" else "(B, K, S, D)"
            raise ShapeError(
                f"{name} has shape {fmt_shape(t.shape)} but attention expects 4-D {layout}. "
                "Split heads first, e.g. x.view(B, L, H, D).transpose(1, 2), or use "
                "headwise.MultiheadAttention / headwise.Attention for (B, L, E) inputs."
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}.")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}."
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}."
        )
    batch, heads, _, head_dim = query.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ShapeError(
            f"batch sizes differ: query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)}, "
            f"value {fmt_shape(value.shape)}; all three are (B, heads, length, head_dim)."
        )
    if key.shape[:3] != value.shape[:3]:
        raise ShapeError(
            f"key {fmt_shape(key.shape)} and value {fmt_shape(value.shape)} must agree on "
            "(B, K, S): one value per key."
        )
    if key.shape[-1] != head_dim:
        raise ShapeError(
            f"query head_dim {head_dim} != key head_dim {key.shape[-1]} (query "
            f"{fmt_shape(query.shape)}, key {fmt_shape(key.shape)}); layout is (B, H, L, D)."
        )
    kv_heads = key.shape[1]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ShapeError(
            f"query has H={heads} heads but key/value have K={kv_heads}; K must divide H "
            "(grouped-query attention shares each kv head among H/K query heads)."
        )


def _check_mask(mask: Tensor, query: Tensor, key: Tensor) -> None:
    batch, heads, query_len, _ = query.shape
    key_len = key.shape[-2]
    full = (batch, heads, query_len, key_len)
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(mask).__name__}.")
    if mask.dtype != torch.bool and mask.dtype != query.dtype:
        raise TypeError(
            f"attn_mask has dtype {mask.dtype}; expected torch.bool (True = may attend) or "
            f"an additive mask of the query's dtype {query.dtype}."
        )
    if mask.device != query.device:
        raise ValueError(f"attn_mask is on {mask.device} but query is on {query.device}.")
    ok = mask.dim() <= 4 and all(
        m in (1, f) for m, f in zip(reversed(mask.shape), reversed(full), strict=False)
    )
    if not ok:
        raise ShapeError(
            f"attn_mask has shape {fmt_shape(mask.shape)}, which does not broadcast to "
            f"(B, H, L, S) = {fmt_shape(full)}. Expected e.g. (L, S) = {fmt_shape(full[2:])}, "
            f"(B, 1, 1, S) = {fmt_shape((batch, 1, 1, key_len))} for padding, or "
            f"(B, H, L, S) = {fmt_shape(full)}."
        )


def explain(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    backend: str = "auto",
) -> Explanation:
    """Say which backend ``attention(...)`` with these arguments would use, and why.

    Takes the same arguments as :func:`headwise.functional.attention`.  Returns an
    :class:`Explanation` whose ``reasons`` maps every backend to ``None`` (it can
    run) or the reason it cannot; ``backend`` is the one the call would use.
    """
    request = build_request(
        query,
        key,
        value,
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        dropout_p=dropout_p,
        need_weights=need_weights,
    )
    reasons = {name: get_backend(name).check(request) for name in PRIORITY}
    chosen = select(request, backend).name
    return Explanation(backend=chosen, reasons=reasons)
