"""One training run: a :class:`ByteLM` trained with AdamW and a warmup + cosine schedule, measured as it learns."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor

from headwise.experiments._data import corpus, random_windows, windows
from headwise.experiments._model import ByteLM, ModelConfig

__all__ = ["DIVERGENCE_RISE", "RunConfig", "RunRecord", "train"]

#: Bump when training or measuring changes, so that cached results of the old code are not reused.
RUN_VERSION = 1

#: A run has diverged when its loss becomes non-finite, or when its training loss (mean over an
#: evaluation interval) ends more than this many nats per byte above its lowest interval mean.
DIVERGENCE_RISE = 0.5

#: Validation windows whose attention maps give the entropy recorded at each evaluation.
ENTROPY_WINDOWS = 8


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers; its :meth:`key` names the run in the results cache.

    Args:
        model: the network's shape (:class:`ModelConfig`); its ``max_length`` is the window length.
        steps: optimizer steps.
        batch_size: windows of ``max_length + 1`` bytes per step, at random places of the training text.
        lr: AdamW's peak learning rate.
        warmup: steps of linear warmup (from lr / warmup); a cosine decay to lr / 10 follows.
        weight_decay: AdamW's decoupled weight decay on matrices (norm gains are not decayed).
        clip: gradient-norm clipping; ``None`` measures the norm without clipping.
        eval_every: steps between evaluations (the last step is always evaluated).
        eval_windows: fixed windows of validation (and of training) text per evaluation.
        train_bytes: use only the first this many bytes of the training text (``None``: all).
        seed: initialization, batch order, dropout.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1
    clip: float | None = 1.0
    eval_every: int = 50
    eval_windows: int = 32
    train_bytes: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"RunConfig.model must be a ModelConfig, got {type(self.model).__name__}.")
        for name in ("steps", "batch_size", "eval_every", "eval_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RunConfig.{name} must be a positive int, got {value!r}.")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ValueError(f"RunConfig.warmup must be an int in [0, steps={self.steps}), got {self.warmup!r}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"RunConfig.lr must be a positive number, got {self.lr!r}.")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ValueError(f"RunConfig.clip must be a positive number or None (no clipping), got {self.clip!r}.")
        if self.train_bytes is not None and (
            isinstance(self.train_bytes, bool) or not isinstance(self.train_bytes, int)
            or self.train_bytes <= self.model.max_length + 1
        ):
            raise ValueError(
                f"RunConfig.train_bytes must be None (all the training text) or an int above one window "
                f"({self.model.max_length + 1} bytes), got {self.train_bytes!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RunConfig.seed must be a non-negative int, got {self.seed!r}.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RunConfig:
        values = dict(data)
        values["model"] = ModelConfig(**values["model"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def key(self) -> str:
        """A name for this run's results: a hash of the config, the seed and :data:`RUN_VERSION`."""
        text = json.dumps({"version": RUN_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """What a run measured, at each evaluation step.

    Attributes:
        config: the run's :class:`RunConfig` (as a dict), seed included.
        key: :meth:`RunConfig.key`.
        steps: the steps evaluated.
        val_loss: mean next-byte loss on the fixed validation windows (nats per byte).
        train_eval_loss: the same on fixed windows of the training text, in eval mode (no dropout).
        train_loss: mean training-batch loss since the previous evaluation (train mode).
        grad_norm: mean total gradient norm (before clipping) since the previous evaluation.
        grad_norm_max: the largest of them.
        entropy: mean attention entropy (nats) of every head and query on validation windows.
        diverged: see :data:`DIVERGENCE_RISE`.
        parameters: trainable parameters.
        seconds: wall-clock time of the run.
        threads: torch's intra-op threads during the run.
    """

    config: dict[str, object]
    key: str
    steps: list[int]
    val_loss: list[float]
    train_eval_loss: list[float]
    train_loss: list[float]
    grad_norm: list[float]
    grad_norm_max: list[float]
    entropy: list[float]
    diverged: bool
    parameters: int
    seconds: float
    threads: int

    @property
    def seed(self) -> int:
        return int(self.config["seed"])  # type: ignore[arg-type]

    @property
    def best_val(self) -> float:
        """The lowest finite validation loss (log 256, a uniform guess, if there is none)."""
        finite = [v for v in self.val_loss if math.isfinite(v)]
        return min(finite) if finite else math.log(256)

    @property
    def final_gap(self) -> float:
        """Validation minus training loss (eval mode) at the last evaluation: how much the run overfits."""
        return self.val_loss[-1] - self.train_eval_loss[-1]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})  # type: ignore[arg-type]


def train(
    config: RunConfig, *, on_step: Callable[[int, int, float], None] | None = None
) -> tuple[RunRecord, ByteLM]:
    """Train a :class:`ByteLM` as ``config`` says; returns the measurements and the trained model (eval mode).

    Deterministic for a given config on a given machine and thread count: the seed fixes the
    initialization, the batches and the dropout masks (torch's global RNG is restored afterwards).
    ``on_step(step, steps, loss)`` is called after every step (for a progress bar).
    """
    data = corpus()
    train_text = data.train if config.train_bytes is None else data.train[: config.train_bytes]
    length = config.model.max_length
    val_windows = windows(data.validation, config.eval_windows, length)  # (n, L + 1)
    train_windows = windows(train_text, config.eval_windows, length)  # (n, L + 1)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ByteLM(config.model)
        generator = torch.Generator().manual_seed(config.seed)
        matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        gains = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": matrices, "weight_decay": config.weight_decay}, {"params": gains, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )
        scheduler = _schedule(optimizer, config)
        record = _Recorder()
        max_norm = float("inf") if config.clip is None else config.clip
        for step in range(1, config.steps + 1):
            model.train()
            batch = random_windows(train_text, config.batch_size, length, generator)  # (B, L + 1)
            loss = model.next_byte_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            value = float(loss.detach())
            finite = math.isfinite(value) and math.isfinite(float(norm))
            if finite:
                optimizer.step()
            scheduler.step()
            record.batch(value, float(norm))
            if on_step is not None:
                on_step(step, config.steps, value)
            if not finite or step % config.eval_every == 0 or step == config.steps:
                record.evaluate(step, model, val_windows, train_windows)
            if not finite:
                break
    model.eval()
    result = RunRecord(
        config=config.to_dict(), key=config.key(), **record.curves(), diverged=record.diverged(),
        parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        seconds=time.perf_counter() - start, threads=torch.get_num_threads(),
    )
    return result, model


def _schedule(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from lr / warmup, then cosine decay to lr / 10 (torch's schedulers)."""
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.steps - config.warmup, eta_min=config.lr / 10
    )
    if config.warmup == 0:
        return decay
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / config.warmup, total_iters=config.warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[config.warmup])


class _Recorder:
    """Accumulates batch losses and gradient norms between evaluations, and the evaluations."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.values: dict[str, list] = {
            k: [] for k in ("steps", "val_loss", "train_eval_loss", "train_loss", "grad_norm", "grad_norm_max", "entropy")
        }

    def batch(self, loss: float, norm: float) -> None:
        self.losses.append(loss)
        self.norms.append(norm)

    @torch.no_grad()
    def evaluate(self, step: int, model: ByteLM, val_windows: Tensor, train_windows: Tensor) -> None:
        model.eval()
        v = self.values
        v["steps"].append(step)
        v["val_loss"].append(_finite_or_nan(model.next_byte_loss(val_windows)))
        v["train_eval_loss"].append(_finite_or_nan(model.next_byte_loss(train_windows)))
        v["train_loss"].append(sum(self.losses) / len(self.losses))
        v["grad_norm"].append(sum(self.norms) / len(self.norms))
        v["grad_norm_max"].append(max(self.norms))
        v["entropy"].append(attention_entropy(model, val_windows[:ENTROPY_WINDOWS, :-1]))
        self.losses, self.norms = [], []

    def curves(self) -> dict[str, list]:
        return self.values

    def diverged(self) -> bool:
        losses = self.values["train_loss"]
        if not all(math.isfinite(x) for x in losses):
            return True
        return losses[-1] > min(losses) + DIVERGENCE_RISE


@torch.no_grad()
def attention_entropy(model: ByteLM, inputs: Tensor) -> float:
    """Mean entropy (nats) of the attention rows of every head of every layer over ``inputs``.

    Shape:
        inputs (B, L).
    """
    _, maps = model(inputs, output_attentions=True)  # each (B, H, L, L)
    total = sum(float(-torch.special.xlogy(m, m).sum(-1).mean()) for m in maps)
    return _finite_or_nan(torch.tensor(total / len(maps)))


def _finite_or_nan(value: Tensor) -> float:
    number = float(value)
    return number if math.isfinite(number) else float("nan")
