"""What scoring and statistics share: text batches, output divergences, and a guard that restores the model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from headwise.heads._protocol import check_model
from headwise.heads._prune import attention_layers
from headwise.modules import Attention

__all__ = ["divergence", "gated_layers", "progress_bar", "scoring_mode", "text_batches"]

logger = logging.getLogger("headwise.heads")


def gated_layers(model: nn.Module) -> list[Attention]:
    """The model's attention layers; each must be a :class:`headwise.Attention` (it has ``head_gate``)."""
    layers = attention_layers(model)
    bad = [name for name, layer in layers if not isinstance(layer, Attention)]
    if bad or not layers:
        raise TypeError(
            f"scoring needs headwise.Attention layers (they have head_gate); {type(model).__name__} has "
            + (f"{bad[0]!r}, a {type(dict(layers)[bad[0]]).__name__}." if bad else "none.")
        )
    return [layer for _, layer in layers]


def check_texts(model: nn.Module, texts: Sequence[str]) -> list[str]:
    """A non-empty list of str; logs (warning) how many texts ``model.tokenize`` truncates."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}.")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; scoring heads needs at least one text (a few hundred is typical).")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str.")
    truncated = getattr(model, "truncated", None)
    if truncated is not None:
        cut = truncated(texts)
        if cut:
            logger.warning(
                "%d of %d texts are longer than the model's %s tokens and were truncated to it.",
                cut, len(texts), getattr(model, "max_length", "limit of"),
            )
    return texts


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """``update(done, note)`` shows ``done`` of ``total`` (``note``: a short status); ``update(None, None)`` closes.

    A tqdm bar when tqdm is installed (it writes plain lines when stderr is not a terminal),
    else a log line (logger ``headwise.heads``, level INFO) every tenth of the way.
    """
    if not enabled:
        return lambda done, note: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        every = max(1, total // 10)
        last = [0]

        def log(done, note):
            if done is not None and (done - last[0] >= every or done == total):
                last[0] = done
                logger.info("%s: %s %d/%d%s", desc, unit, done, total, f", {note}" if note else "")

        return log
    bar = tqdm(total=total, desc=desc, unit=unit)

    def update(done, note):
        if done is None:
            bar.close()
            return
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    return update


def text_batches(model: nn.Module, texts: list[str], batch_size: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """``(start, features)`` for consecutive batches of ``texts``.

    Shape:
        features: input_ids, attention_mask, token_type_ids, each (b, L).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    for start in range(0, len(texts), batch_size):
        yield start, model.tokenize(texts[start : start + batch_size])


def divergence(model: nn.Module, candidate: Tensor, reference: Tensor) -> Tensor:
    """How far ``candidate`` outputs are from ``reference`` ones, summed over the batch's items.

    ``"vectors"``: ½ ||c - r||² per text; ``"log_probs"``: KL(reference || candidate) per token.

    Shape:
        (B, P) or (N, V) each -> a scalar.
    """
    if model.output_kind == "vectors":
        return 0.5 * (candidate - reference).square().sum()
    return (reference.exp() * (reference - candidate)).sum()


@contextlib.contextmanager
def scoring_mode(model: nn.Module, *, gates_require_grad: bool = False) -> Iterator[list[Attention]]:
    """Eval mode, no parameter gradients (gates' on request); everything restored on exit.

    Yields the attention layers.  Gate values are restored too, so a scorer may set them.
    """
    check_model(model)
    layers = gated_layers(model)
    training = model.training
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    gates = [layer.head_gate.detach().clone() for layer in layers]
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for layer in layers:
            layer.head_gate.requires_grad_(gates_require_grad)
        yield layers
    finally:
        with torch.no_grad():
            for layer, gate in zip(layers, gates, strict=True):
                layer.head_gate.copy_(gate)
                layer.head_gate.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)
        for m, mode in modes.items():
            m.training = mode
