"""Recovery: a short self-distillation of a pruned encoder toward the unpruned one."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headwise._workflow import WorkflowConfig
from headwise.heads._protocol import check_model
from headwise.heads._scoring import check_texts, progress_bar

__all__ = ["DistillConfig", "DistillResult", "distill_"]

logger = logging.getLogger("headwise.heads")

LOSSES = ("cosine",)


@dataclass(frozen=True)
class DistillConfig(WorkflowConfig):
    """How :func:`distill_` trains a student toward its teacher.

    Args:
        steps: optimizer steps (one batch each); the texts are reshuffled each time they run out.
        batch_size: texts per step.
        lr: AdamW learning rate.  On all-MiniLM-L6-v2, 50 steps of 16 Lee-corpus sentences
            took 7 pruned heads from 0.992 held-apart cosine to 0.995 at 3e-5 but down to
            0.986 at 1e-4 (Adam's first steps are about lr whatever the gradient, too much for
            a model already close to its teacher); at 36 pruned heads, 0.884 -> 0.937 at 3e-5,
            0.940 at 1e-4, 0.928 at 1e-5.
        weight_decay: AdamW weight decay (0 by default: a few hundred steps should move the
            student toward the teacher, not toward zero).
        loss: ``"cosine"``: mean of 1 - cos(student, teacher) over the batch's sentence
            embeddings (pooled and normalized as ``model.encode`` does).
        seed: seed of the batch order (the only randomness: the loop runs without dropout).
        progress: show a tqdm bar when tqdm is installed, else log a line every tenth of the steps.
    """

    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-5
    weight_decay: float = 0.0
    loss: str = "cosine"
    seed: int = 0
    progress: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DistillConfig.{name} must be an int >= {low}, got {value!r}.")
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (positive and value == 0):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(
                    f"DistillConfig.{name} must be a finite number {bound}, got {value!r}"
                    + ("; 1e-5 to 1e-4 is typical for a sentence encoder." if positive else ".")
                )
        if self.loss not in LOSSES:
            raise ValueError(f"DistillConfig.loss must be one of {LOSSES}, got {self.loss!r}.")
        if not isinstance(self.progress, bool):
            raise TypeError(f"DistillConfig.progress must be a bool, got {self.progress!r}.")
        self._check_version()


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill_` did: the training loss of every step, and the wall time."""

    losses: tuple[float, ...]
    seconds: float


def distill_(student: nn.Module, teacher: nn.Module, texts: Sequence[str], config: DistillConfig) -> DistillResult:
    """Train ``student`` in place so its outputs on ``texts`` approach ``teacher``'s.

    Sentence encoders minimize 1 - cosine of the embeddings; language models the KL
    divergence of the teacher's next-token distributions from the student's.

    Meant for recovery after pruning: ``teacher = copy.deepcopy(model)`` before
    :func:`prune_heads_` or :func:`prune_by_importance_`, then a few hundred steps on the
    calibration text.  AdamW updates the student's parameters that require grad (head
    gates do not, so pruned-by-masking heads stay silent); the teacher runs in eval mode
    under ``torch.no_grad`` and is never changed.  Both models read the student's
    tokenization, so they must share the vocabulary and the hidden size.

    The student runs in eval mode with autograd on: for these encoders eval mode differs
    from train mode only by dropout (attention-probability dropout, DropHead and the
    blocks' ``nn.Dropout``), so this is training without dropout and every step's loss is
    deterministic given ``config.seed``.  Every module's training flag is restored
    afterwards, the teacher's too.  Invalid input raises before anything changes; an
    interrupted run leaves the student partly trained.

    Returns:
        a :class:`DistillResult` with one loss per step.

    Shape:
        texts N; student and teacher outputs (b, P) per batch of b texts, or (n, V) per n tokens.
    """
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}.")
    check_model(student)
    check_model(teacher)
    if student.output_kind != teacher.output_kind:
        raise ValueError(
            f"the student's outputs are {student.output_kind!r} but the teacher's {teacher.output_kind!r}; "
            "distill_ is self-distillation: pass the unpruned copy of the same model as the teacher."
        )
    if isinstance(texts, Sequence) and not isinstance(texts, str) and len(texts) == 0:
        raise ValueError("texts is empty; distill_ needs calibration texts (a few hundred sentences is typical).")
    texts = check_texts(student, texts)
    _check_pair(student, teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no parameters that require grad; unfreeze some (p.requires_grad_(True)).")

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    modes = {m: m.training for m in (*student.modules(), *teacher.modules())}
    bar = progress_bar(config.steps, "distill_", "step", config.progress)
    losses: list[float] = []
    start = time.perf_counter()
    try:
        student.eval()
        teacher.eval()
        for step, batch in enumerate(_batches(len(texts), config.batch_size, config.seed, config.steps)):
            features = student.tokenize([texts[i] for i in batch])
            with torch.no_grad():
                target = teacher.outputs(features)  # (b, P) or (n, V)
            with torch.enable_grad():
                output = student.outputs(features)  # (b, P) or (n, V)
                if output.shape != target.shape:
                    raise ValueError(
                        f"the student's outputs have shape {tuple(output.shape)} but the teacher's "
                        f"{tuple(target.shape)}; their pooling or vocabulary differs."
                    )
                if student.output_kind == "vectors":
                    loss = (1.0 - F.cosine_similarity(output, target, dim=1)).mean()
                else:  # KL(teacher || student) per token
                    loss = F.kl_div(output, target, log_target=True, reduction="batchmean")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar(step + 1, f"loss {losses[-1]:.5f}")
    finally:
        optimizer.zero_grad(set_to_none=True)
        bar(None, None)
        for module, mode in modes.items():
            module.training = mode
    return DistillResult(losses=tuple(losses), seconds=time.perf_counter() - start)


def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
    """Same hidden size and vocabulary, and no shared parameters."""
    hidden = [getattr(getattr(m, "config", None), "hidden_size", None) for m in (student, teacher)]
    if hidden[0] != hidden[1]:
        raise ValueError(
            f"the teacher has hidden_size={hidden[1]} but the student {hidden[0]}; distill_ is "
            "self-distillation: pass the unpruned copy of the same model as the teacher."
        )
    vocab = [m.tokenizer.get_vocab_size() if getattr(m, "tokenizer", None) is not None else None for m in (student, teacher)]
    if vocab[0] != vocab[1]:
        raise ValueError(
            f"the teacher's tokenizer has vocab size {vocab[1]} but the student's {vocab[0]}; both models read "
            "the student's token ids, so they need the same tokenizer."
        )
    student_storage = {p.data_ptr() for p in student.parameters()}
    if any(p.data_ptr() in student_storage for p in teacher.parameters()):
        raise ValueError(
            "the student and the teacher share parameters (the same model?); keep an unpruned copy as the "
            "teacher: teacher = copy.deepcopy(model) before pruning."
        )


def _batches(count: int, batch_size: int, seed: int, steps: int) -> Iterator[list[int]]:
    """``steps`` batches of text indices: a fresh permutation each time the texts run out."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, count):
            order = torch.randperm(count, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch
