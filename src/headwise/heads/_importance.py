"""Head importance on texts: gate gradients (Michel et al. 2019), Fisher, and leave-one-head-out ablation.

Every score is a list with one (H_l,) tensor per attention layer (layers may have
different head counts), higher = more important.  The model is a
:class:`~headwise.heads.HeadModel`; scores compare its ``outputs``: sentence embeddings
(``"vectors"``, by ½ squared distance per text) or next-token distributions
(``"log_probs"``, by KL divergence per token).  Scores never change the model: its
training mode, gates and ``requires_grad`` flags are restored, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from headwise.heads._scoring import check_texts, divergence, scoring_mode, text_batches

__all__ = ["ablation_importance", "fisher_importance", "gradient_importance", "normalize_per_layer"]


def gradient_importance(
    model: nn.Module,
    texts: Sequence[str],
    labels: Tensor | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batch_size: int = 32,
) -> list[Tensor]:
    """Michel et al. (2019): the expected |dL/dg_h| of each head's gate, L a task loss.

    With ``labels``, ``loss_fn(outputs, labels)`` gives the mean loss of a batch, e.g. the
    cross-entropy of a classifier on the sentence embeddings.  Without them the model's own
    ``loss(features)`` is used (a language model's next-token loss).  The absolute gradient
    is taken per batch (per text with ``batch_size=1``, as in the paper) and averaged over
    texts.  Without any loss use :func:`fisher_importance`: on a self-distillation loss the
    gradient is zero.

    Shape:
        texts N, labels (N, ...) -> one (H_l,) tensor per layer.
    """
    texts = check_texts(model, texts)
    if labels is not None:
        if loss_fn is None:
            raise ValueError("labels were given without loss_fn; pass loss_fn(outputs, labels) -> scalar loss.")
        if not isinstance(labels, Tensor) or labels.shape[0] != len(texts):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor with one row per text ({len(texts)}), got {got}.")
    elif loss_fn is not None or not callable(getattr(model, "loss", None)):
        raise ValueError(
            "gradient_importance needs labels with loss_fn(outputs, labels), or, without both, a model "
            f"with its own loss(features) such as a causal LM's next-token loss ({type(model).__name__} "
            f"{'has one; drop loss_fn' if callable(getattr(model, 'loss', None)) else 'has none'})."
        )
    with scoring_mode(model, gates_require_grad=True) as layers:
        gates = [layer.head_gate for layer in layers]
        totals = [torch.zeros_like(g) for g in gates]
        for start, features in text_batches(model, texts, batch_size):
            size = features["attention_mask"].shape[0]
            if labels is None:
                loss = model.loss(features)
            else:
                loss = loss_fn(model.outputs(features), labels[start : start + size].to(gates[0].device))
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"the loss must be a scalar tensor, got {getattr(loss, 'shape', loss)!r}.")
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

    Let D(g) be the divergence of the outputs with head gates g from the unpruned outputs
    (½||e(g) - e(1)||² for vectors, KL for distributions).  At g = 1, D and its gradient
    are zero, so the first-order (Michel) score measures nothing.  The second-order term of
    removing head h (g_h: 1 -> 0) is ½ F_hh, F the Fisher information of the outputs (the
    Gauss-Newton Hessian of D), estimated with ``probes`` random draws per batch, each one
    backward pass: for vectors a Gaussian v per text (E[(vᵀ J)_h²] = ||J_h||²); for
    distributions a token y sampled from the model per position (E[(d log p_y / dg_h)²] =
    F_hh).  The result is on the scale of :func:`ablation_importance`, which it approximates.

    Shape:
        texts N -> one (H_l,) tensor per layer.
    """
    texts = check_texts(model, texts)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes <= 0:
        raise ValueError(f"probes must be a positive int, got {probes!r}.")
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with scoring_mode(model, gates_require_grad=True) as layers:
        gates = [layer.head_gate for layer in layers]
        totals = [torch.zeros_like(g) for g in gates]
        for _, features in text_batches(model, texts, batch_size):
            outputs = model.outputs(features)  # (b, P) or (n, V)
            count += outputs.shape[0]
            for probe in range(probes):
                if model.output_kind == "vectors":
                    direction = torch.randn(outputs.shape, generator=generator).to(outputs)  # (b, P)
                else:  # d/dg of sum over tokens of log p(y), y drawn from the model
                    probs = outputs.detach().float().exp().cpu()  # (n, V)
                    drawn = torch.multinomial(probs, 1, generator=generator).to(outputs.device)  # (n, 1)
                    direction = torch.zeros_like(outputs).scatter_(1, drawn, 1.0)  # (n, V) one-hot
                grads = torch.autograd.grad(outputs, gates, grad_outputs=direction, retain_graph=probe < probes - 1)
                for total, grad in zip(totals, grads, strict=True):
                    total += grad.square()
    return [t / (2 * probes * count) for t in totals]


@torch.no_grad()
def ablation_importance(model: nn.Module, texts: Sequence[str], *, batch_size: int = 32) -> list[Tensor]:
    """Leave-one-head-out: the divergence of the outputs with one head silenced (gate 0) at a time.

    ½ E_x ||e_without h - e||² per text for vectors, the mean KL per token for distributions;
    the direct measure that :func:`fisher_importance` approximates.  Costs one pass over
    ``texts`` per head.

    Shape:
        texts N -> one (H_l,) tensor per layer.
    """
    texts = check_texts(model, texts)
    with scoring_mode(model) as layers:
        batches = [features for _, features in text_batches(model, texts, batch_size)]
        reference = [model.outputs(features) for features in batches]  # each (b, P) or (n, V)
        count = sum(r.shape[0] for r in reference)
        scores = []
        for layer in layers:
            layer_scores = torch.zeros_like(layer.head_gate)
            for head in range(layer.num_heads):
                kept = layer.head_gate[head].clone()
                layer.head_gate[head] = 0.0
                for features, ref in zip(batches, reference, strict=True):
                    layer_scores[head] += divergence(model, model.outputs(features), ref)
                layer.head_gate[head] = kept
            scores.append(layer_scores / count)
    return scores


def normalize_per_layer(scores: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's scores divided by their L2 norm, as Michel et al. (2019) do.

    This makes layers comparable when their scales differ, but it also forces every layer
    to look as if it had unimportant heads; measure before adopting it.

    Shape:
        one (H_l,) tensor per layer -> the same shapes.
    """
    return [s / s.norm().clamp_min(torch.finfo(s.dtype).tiny) for s in scores]
