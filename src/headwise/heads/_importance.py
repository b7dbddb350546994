"""Head importance on texts: gate gradients (Michel et al. 2019), Fisher, and leave-one-head-out ablation.

Every score is a list with one (H_l,) tensor per attention layer (layers may have
different head counts), higher = more important; with ``granularity="groups"`` one (K_l,)
tensor per layer, a score per kv group (a kv head and the query heads that read it), which
measures removing the whole group at once.  The model is a
:class:`~headwise.heads.HeadModel`; scores compare its ``outputs``: sentence embeddings
(``"vectors"``, by ½ squared distance per text) or next-token distributions
(``"log_probs"``, by KL divergence per token).  Scores never change the model: its
training mode, gates and ``requires_grad`` flags are restored, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from headwise.heads._prune import kv_heads_of
from headwise.heads._scoring import check_texts, divergence, scoring_mode, text_batches
from headwise.modules import Attention

__all__ = ["GRANULARITIES", "ablation_importance", "fisher_importance", "gradient_importance", "normalize_per_layer"]

#: What a score is of: ``"heads"``, one per query head; ``"groups"``, one per kv group.
GRANULARITIES = ("heads", "groups")


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {GRANULARITIES} (a score per query head, or per kv group), got {granularity!r}."
        )


def _per_unit(layers: Sequence[Attention], grads: Sequence[Tensor], granularity: str) -> list[Tensor]:
    """Gate gradients per query head, or summed per kv group (a group's gate scales all its heads).

    Shape:
        one (H_l,) tensor per layer -> the same, or one (K_l,) tensor per layer.
    """
    if granularity == "heads":
        return list(grads)
    return [
        g.new_zeros(layer.num_kv_heads).index_add_(0, torch.tensor(kv_heads_of(layer), device=g.device), g)
        for layer, g in zip(layers, grads, strict=True)
    ]


def gradient_importance(
    model: nn.Module,
    texts: Sequence[str],
    labels: Tensor | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batch_size: int = 32,
    granularity: str = "heads",
) -> list[Tensor]:
    """Michel et al. (2019): the expected |dL/dg_h| of each head's gate, L a task loss.

    With ``labels``, ``loss_fn(outputs, labels)`` gives the mean loss of a batch, e.g. the
    cross-entropy of a classifier on the sentence embeddings.  Without them the model's own
    ``loss(features)`` is used (a language model's next-token loss).  The absolute gradient
    is taken per batch (per text with ``batch_size=1``, as in the paper) and averaged over
    texts.  Without any loss use :func:`fisher_importance`: on a self-distillation loss the
    gradient is zero.  ``granularity="groups"``: |dL/dg| of each kv group's gate (the sum of
    its heads' gate gradients, per batch).

    Shape:
        texts N, labels (N, ...) -> one (H_l,) tensor per layer, or (K_l,) for groups.
    """
    texts = check_texts(model, texts)
    _check_granularity(granularity)
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
        totals = _per_unit(layers, [torch.zeros_like(g) for g in gates], granularity)
        for start, features in text_batches(model, texts, batch_size):
            size = features["attention_mask"].shape[0]
            if labels is None:
                loss = model.loss(features)
            else:
                loss = loss_fn(model.outputs(features), labels[start : start + size].to(gates[0].device))
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"the loss must be a scalar tensor, got {getattr(loss, 'shape', loss)!r}.")
            grads = _per_unit(layers, torch.autograd.grad(loss, gates), granularity)
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
    granularity: str = "heads",
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
    ``granularity="groups"``: the same for each kv group's gate (removing the group), whose
    gradient is the sum of its heads' gate gradients.

    Shape:
        texts N -> one (H_l,) tensor per layer, or (K_l,) for groups.
    """
    texts = check_texts(model, texts)
    _check_granularity(granularity)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes <= 0:
        raise ValueError(f"probes must be a positive int, got {probes!r}.")
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with scoring_mode(model, gates_require_grad=True) as layers:
        gates = [layer.head_gate for layer in layers]
        totals = _per_unit(layers, [torch.zeros_like(g) for g in gates], granularity)
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
                for total, grad in zip(totals, _per_unit(layers, grads, granularity), strict=True):
                    total += grad.square()
    return [t / (2 * probes * count) for t in totals]


@torch.no_grad()
def ablation_importance(
    model: nn.Module, texts: Sequence[str], *, batch_size: int = 32, granularity: str = "heads"
) -> list[Tensor]:
    """Leave-one-head-out: the divergence of the outputs with one head silenced (gate 0) at a time.

    ½ E_x ||e_without h - e||² per text for vectors, the mean KL per token for distributions;
    the direct measure that :func:`fisher_importance` approximates.  Costs one pass over
    ``texts`` per head.  ``granularity="groups"``: a kv group's heads silenced together.

    Shape:
        texts N -> one (H_l,) tensor per layer, or (K_l,) for groups.
    """
    texts = check_texts(model, texts)
    _check_granularity(granularity)
    with scoring_mode(model) as layers:
        batches = [features for _, features in text_batches(model, texts, batch_size)]
        reference = [model.outputs(features) for features in batches]  # each (b, P) or (n, V)
        count = sum(r.shape[0] for r in reference)
        scores = []
        for layer in layers:
            kv_of = kv_heads_of(layer)
            units = (
                [[h] for h in range(layer.num_heads)]
                if granularity == "heads"
                else [[h for h in range(layer.num_heads) if kv_of[h] == g] for g in range(layer.num_kv_heads)]
            )
            layer_scores = layer.head_gate.new_zeros(len(units))
            for unit, heads in enumerate(units):
                kept = layer.head_gate[heads].clone()
                layer.head_gate[heads] = 0.0
                for features, ref in zip(batches, reference, strict=True):
                    layer_scores[unit] += divergence(model, model.outputs(features), ref)
                layer.head_gate[heads] = kept
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
