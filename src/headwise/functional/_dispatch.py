"""Backend registry, selection and :func:`explain`.

A backend is an object with a ``name``, a ``check(request)`` that returns ``None``
or a short reason it cannot serve the request, and a ``run(request)`` that returns
``(output (B, H, L, Dv), weights or None)``.  ``check`` reads only the request's
static :attr:`~headwise.functional._request.AttentionRequest.signature` (weights
wanted or averaged, dropout on, mask kind, causal, dtype, device type), so the
choice of ``backend="auto"`` is made once per signature and remembered.  Backends
are imported lazily, on the first call that needs them.

``backend="auto"`` walks :data:`PRIORITY` and takes the first backend whose check
passes; each fallback is logged once at debug level, and :func:`explain` shows every
backend's reason.  A backend named explicitly that cannot serve the call raises
:class:`~headwise.errors.BackendError` with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from headwise.errors import BackendError
from headwise.functional._request import AttentionRequest, Signature

__all__ = ["PRIORITY", "Backend", "Explanation", "get_backend", "select"]

_log = logging.getLogger("headwise.functional")

#: Backends tried by ``backend="auto"``, in order: the fused kernel when no weights are
#: returned, the memory-lean weights path when they are, the explicit math path otherwise
#: (dropout with weights, a trainable float mask).
PRIORITY: tuple[str, ...] = ("sdpa", "weights", "math")


# Each loader imports its backend's module with an import statement, which torch.compile
# traces even when the first call of a backend happens inside a compiled region
# (importlib.import_module is a function dynamo refuses to trace).
def _load_sdpa() -> Backend:
    from headwise.functional._backends.sdpa import BACKEND

    return BACKEND


def _load_weights() -> Backend:
    from headwise.functional._backends.weights import BACKEND

    return BACKEND


def _load_math() -> Backend:
    from headwise.functional._backends.math import BACKEND

    return BACKEND


_MODULES: dict[str, Callable[[], Backend]] = {"sdpa": _load_sdpa, "weights": _load_weights, "math": _load_math}
_LOADED: dict[str, Backend] = {}
#: backend="auto"'s choice for each signature seen
_CHOSEN: dict[Signature, Backend] = {}


class Backend(Protocol):
    """What an attention backend provides.  ``check`` may read only ``request.signature``."""

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
    backend = _LOADED.get(name)
    if backend is not None:
        return backend
    if name not in _MODULES:
        raise ValueError(
            f"unknown attention backend {name!r}; expected 'auto' or one of {sorted(_MODULES)}."
        )
    backend = _LOADED[name] = _MODULES[name]()
    return backend


def select(request: AttentionRequest, backend: str = "auto") -> Backend:
    """Pick the backend for ``request``: the named one, or the first in :data:`PRIORITY` that can run."""
    if backend != "auto":
        chosen = get_backend(backend)
        reason = chosen.check(request)
        if reason is not None:
            raise BackendError(
                f"attention backend {backend!r} cannot run this call: {reason}. "
                "Use backend='auto' or headwise.explain(...) to see which backend can."
            )
        return chosen
    signature = request.signature
    chosen = _CHOSEN.get(signature)
    if chosen is None:
        chosen = _CHOSEN[signature] = _first_able(request)
    return chosen


def _first_able(request: AttentionRequest) -> Backend:
    for name in PRIORITY:
        candidate = get_backend(name)
        reason = candidate.check(request)
        if reason is None:
            return candidate
        if not torch.compiler.is_compiling():  # a compiled region holds no logging call (a graph break)
            _log.debug("attention backend %r skipped: %s", name, reason)
    raise BackendError("no attention backend can run this call")  # math always can


def explain(request: AttentionRequest, backend: str = "auto") -> Explanation:
    """Every backend's reason for ``request``, and the one the call would use."""
    reasons = {name: get_backend(name).check(request) for name in PRIORITY}
    return Explanation(backend=select(request, backend).name, reasons=reasons)
