"""Head importance on texts: gate gradients (Michel et al. 2019), Fisher, and leave-one-head-out ablation.

Every score is a list with one (H_l,) tensor per attention layer (layers may have
different head counts), higher = more important.  Scores never change the model: its
training mode, gates and ``requires_grad`` flags are restored, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from headwise.heads._scoring import check_encoder, check_texts, embed, scoring_mode, text_batches

__all__ = ["ablation_importance", "fisher_importance", "gradient_importance", "normalize_per_layer"]


def gradient_importance(
    model: nn.Module,
    texts: Sequence[str],
    labels: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int = 32,
) -> list[Tensor]:
    """Michel et al. (2019): the expected |dL/dg_h| of each head's gate, L a task loss.

    ``loss_fn(embeddings, labels)`` gives the mean loss of a batch, e.g. the cross-entropy
    of a classifier on the sentence embeddings.  The absolute gradient is taken per batch
    (per text with ``batch_size=1``, as in the paper) and averaged over texts.  Without
    labels use :func:`fisher_importance`: on a self-distillation loss the gradient is zero.

    Shape:
        texts N, labels (N, ...) -> one (H_l,) tensor per layer.
    """
    check_encoder(model)
    texts = check_texts(model, texts)
    if not isinstance(labels, Tensor) or labels.shape[0] != len(texts):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor with one row per text ({len(texts)}), got {got}.")
    with scoring_mode(model, gates_require_grad=True) as layers:
        gates = [layer.head_gate for layer in layers]
        totals = [torch.zeros_like(g) for g in gates]
        for start, features in text_batches(model, texts, batch_size):
            size = features["input_ids"].shape[0]
            loss = loss_fn(embed(model, features), labels[start : start + size].to(gates[0].device))
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', loss)!r}.")
            grads = torch.autograd.grad(loss, gates)
            for total, grad in zip(totals, grads, strict=True):
                total += grad.abs() * size
    return [t / len(texts) for t in totals]


def fisher_importance(
    model: nn.Module,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    probes: int = 8,
    seed: int = 0,
) -> list[Tensor]:
    """Label-free importance: the Fisher / second-order Taylor score of self-distillation.

    Let e(g) be a text's embedding with head gates g, and L = ½||e(g) - e(1)||² the
    distance to the unpruned model.  At g = 1, L and its gradient are zero, so the
    first-order (Michel) score measures nothing.  The second-order term of removing head
    h (g_h: 1 -> 0) is ½ Jₕᵀ Jₕ with J = de/dg (the Gauss-Newton Hessian, which is the
    Fisher of a Gaussian output), so the score is ½ E_x ||de/dg_h||², estimated without
    the full Jacobian: with a random Gaussian v per text, E[(vᵀ J)_h²] = ||J_h||².  Each of
    ``probes`` draws costs one backward pass; the result is on the scale of
    :func:`ablation_importance` (½ E||Δe||²), which it approximates.

    Shape:
        texts N -> one (H_l,) tensor per layer.
    """
    check_encoder(model)
    texts = check_texts(model, texts)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes <= 0:
        raise ValueError(f"probes must be a positive int, got {probes!r}.")
    generator = torch.Generator().manual_seed(seed)
    with scoring_mode(model, gates_require_grad=True) as layers:
        gates = [layer.head_gate for layer in layers]
        totals = [torch.zeros_like(g) for g in gates]
        for _, features in text_batches(model, texts, batch_size):
            vectors = embed(model, features)  # (b, P)
            for probe in range(probes):
                v = torch.randn(vectors.shape, generator=generator).to(vectors)  # (b, P)
                grads = torch.autograd.grad(vectors, gates, grad_outputs=v, retain_graph=probe < probes - 1)
                for total, grad in zip(totals, grads, strict=True):
                    total += grad.square()
    return [t / (2 * probes * len(texts)) for t in totals]


@torch.no_grad()
def ablation_importance(model: nn.Module, texts: Sequence[str], *, batch_size: int = 32) -> list[Tensor]:
    """Leave-one-head-out: ½ E_x ||e_without h - e||², one head silenced (gate 0) at a time.

    The direct measure that :func:`fisher_importance` approximates; costs one pass over
    ``texts`` per head.

    Shape:
        texts N -> one (H_l,) tensor per layer.
    """
    check_encoder(model)
    texts = check_texts(model, texts)
    with scoring_mode(model) as layers:
        batches = list(text_batches(model, texts, batch_size))
        reference = [embed(model, features) for _, features in batches]  # each (b, P)
        scores = []
        for layer in layers:
            layer_scores = torch.zeros_like(layer.head_gate)
            for head in range(layer.num_heads):
                kept = layer.head_gate[head].clone()
                layer.head_gate[head] = 0.0
                for (_, features), ref in zip(batches, reference, strict=True):
                    layer_scores[head] += 0.5 * (embed(model, features) - ref).square().sum()
                layer.head_gate[head] = kept
            scores.append(layer_scores / len(texts))
    return scores


def normalize_per_layer(scores: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's scores divided by their L2 norm, as Michel et al. (2019) do.

    This makes layers comparable when their scales differ, but it also forces every layer
    to look as if it had unimportant heads; measure before adopting it.

    Shape:
        one (H_l,) tensor per layer -> the same shapes.
    """
    return [s / s.norm().clamp_min(torch.finfo(s.dtype).tiny) for s in scores]
