"""The pruning curve of all-MiniLM-L6-v2 (72 heads): importance order against random orders.

Real text only, shipped in the gensim wheel (read as files; gensim is never imported):
calibration = sentences of the first 150 documents of the Lee news corpus
(lee_background.cor), evaluation = sentences of the other 150 documents (held apart),
labelled task = the 200 Pang & Lee movie-review polarity sentences.

Quality of a pruned model, against the unpruned one on the evaluation sentences:
mean cosine of the embeddings, Spearman correlation of all pairwise similarities, and
the accuracy of a logistic-regression probe on polarity (5-fold cross-validation,
repeated 3 times).  Orders: iterative Fisher importance re-estimated every ``--step``
heads (headwise.heads.prune_by_importance_), the same with per-layer normalization, a
one-shot leave-one-head-out ablation order, and random orders (``--seeds``).
With ``--recover STEPS``, each point of the Fisher curve is also measured after a short
self-distillation (headwise.heads.distill_) of a fresh copy of the pruned model toward
the unpruned one on the calibration sentences.

    pip install --no-deps gensim==4.4.0       # only for its test_data files
    python examples/prune_minilm.py           # about 15 minutes on 2 cores
    python examples/prune_minilm.py --curves fisher   # the main curve only, about 5 minutes
    python examples/prune_minilm.py --curves fisher --recover 100   # and after recovery
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import headwise.models as hm
from headwise.heads import (
    DistillConfig,
    PruneConfig,
    ablation_importance,
    distill_,
    masked_curve,
    prune_by_importance_,
    random_order,
)

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def test_data() -> Path:
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("needs gensim's test data: pip install --no-deps gensim==4.4.0")
    return Path(spec.origin).parent / "test" / "test_data"


def sentences(document: str) -> list[str]:
    parts = re.split(r'(?<=[.!?])\s+(?=[A-Z"\'])', document.strip())
    return [s for s in parts if 30 <= len(s) <= 300]


def load_texts(n_calibration: int, n_evaluation: int) -> tuple[list[str], list[str], list[str], torch.Tensor]:
    folder = test_data()
    docs = (folder / "lee_background.cor").read_text(encoding="utf-8", errors="replace").splitlines()
    calibration = [s for d in docs[:150] for s in sentences(d)][:n_calibration]
    evaluation = [s for d in docs[150:] for s in sentences(d)][:n_evaluation]
    polarity, labels = [], []
    for line in (folder / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():
        label, _, text = line.partition(" ")
        polarity.append(text.strip())
        labels.append(1 if label == "__label__pos" else 0)
    return calibration, evaluation, polarity, torch.tensor(labels)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return torch.corrcoef(ranks)[0, 1].item()


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, *, folds: int = 5, repeats: int = 3) -> float:
    """Cross-validated accuracy of an L2-regularized logistic regression (LBFGS, torch only)."""
    correct = total = 0
    for repeat in range(repeats):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(repeat))
        for fold in range(folds):
            test = order[fold::folds]
            train = order[torch.isin(order, test, invert=True)]
            mean, std = x[train].mean(0), x[train].std(0) + 1e-6
            xtr, xte = (x[train] - mean) / std, (x[test] - mean) / std
            w, b = fit_logistic(xtr.double(), y[train].double())
            with torch.no_grad():
                pred = (xte.double() @ w + b) > 0
            correct += int((pred == y[test].bool()).sum())
            total += len(test)
    return correct / total


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(1, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


class Evaluator:
    def __init__(self, model, evaluation, polarity, labels, batch_size):
        self.evaluation, self.polarity, self.labels, self.batch_size = evaluation, polarity, labels, batch_size
        self.reference = model.encode(evaluation, batch_size=batch_size)
        self.reference_sims = self._pairs(self.reference)

    @staticmethod
    def _pairs(e):
        rows, cols = torch.triu_indices(len(e), len(e), offset=1)
        return (e @ e.T)[rows, cols]

    def __call__(self, model) -> dict[str, float]:
        e = model.encode(self.evaluation, batch_size=self.batch_size)
        return {
            "cosine": F.cosine_similarity(e, self.reference, dim=1).mean().item(),
            "spearman": spearman(self._pairs(e), self.reference_sims),
            "probe": probe_accuracy(model.encode(self.polarity, batch_size=self.batch_size), self.labels),
        }


def iterative_curve(model, calibration, evaluate, counts, config, recover=None):
    """The curve of iterative pruning; with a DistillConfig ``recover``, also the curve after distill_."""
    pruned = copy.deepcopy(model)
    results, recovered, done, seconds = {}, {}, 0, 0.0
    for k in counts:
        start = time.perf_counter()
        prune_by_importance_(pruned, calibration, PruneConfig(**{**config.to_dict(), "remove": k - done}))
        seconds += time.perf_counter() - start
        done = k
        results[k] = evaluate(pruned)
        if recover is not None:
            if k == 0:
                recovered[k] = results[k]  # nothing to recover: the student is the teacher
                continue
            student = copy.deepcopy(pruned)  # a fresh copy per point: recovery never feeds the next pruning step
            result = distill_(student, model, calibration, recover)
            recovered[k] = evaluate(student)
            print(f"recovery at {k} removed: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}, "
                  f"{result.seconds:.0f} s")
    return results, seconds, pruned, recovered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=int, default=256, help="calibration sentences")
    parser.add_argument("--evaluation", type=int, default=400, help="held-apart evaluation sentences")
    parser.add_argument("--seeds", type=int, default=5, help="random orders")
    parser.add_argument("--step", type=int, default=1, help="heads removed between importance estimates")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--save", type=Path, default=None, help="write the 50%%-pruned model here")
    parser.add_argument(
        "--curves", nargs="+", default=["fisher", "fisher-normalized", "ablation-oneshot"],
        choices=["fisher", "fisher-normalized", "ablation-oneshot", "ablation-iterative"],
        help="importance orders to compare with the random orders",
    )
    parser.add_argument("--ablation-texts", type=int, default=128, help="calibration sentences for ablation")
    parser.add_argument(
        "--recover", type=int, default=0, metavar="STEPS",
        help="also measure the fisher curve after STEPS steps of distill_ toward the unpruned model (0: off)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = hm.load()
    total = sum(model.num_heads)
    counts = [round(f * total) for f in FRACTIONS]
    calibration, evaluation, polarity, labels = load_texts(args.calibration, args.evaluation)
    print(f"texts: {len(calibration)} calibration, {len(evaluation)} evaluation, {len(polarity)} polarity")
    evaluate = Evaluator(model, evaluation, polarity, labels, args.batch_size)

    curves: dict[str, dict[int, dict[str, float]]] = {}
    config = PruneConfig(remove=0, step=args.step, probes=args.probes, batch_size=args.batch_size)
    recover = None
    if args.recover:
        recover = DistillConfig(steps=args.recover, batch_size=16)
        if "fisher" not in args.curves:
            parser.error("--recover applies to the fisher curve; add fisher to --curves")
    if "fisher" in args.curves:
        curves["fisher, iterative"], seconds, _, recovered = iterative_curve(
            model, calibration, evaluate, counts, config, recover
        )
        print(f"fisher, iterative: {seconds:.0f} s of scoring and pruning")
        if recover is not None:
            curves[f"fisher + {args.recover} distill_ steps (lr {recover.lr:g})"] = recovered
    if "fisher-normalized" in args.curves:
        normalized = PruneConfig(**{**config.to_dict(), "normalize": True})
        curves["fisher, iterative, per-layer normalized"], _, _, _ = iterative_curve(
            model, calibration, evaluate, counts, normalized
        )
    few = calibration[: args.ablation_texts]
    if "ablation-iterative" in args.curves:
        ablation = PruneConfig(**{**config.to_dict(), "method": "ablation"})
        curves["ablation, iterative"], seconds, _, _ = iterative_curve(model, few, evaluate, counts, ablation)
        print(f"ablation, iterative: {seconds:.0f} s of scoring and pruning")
    if "ablation-oneshot" in args.curves:
        scores = ablation_importance(model, few, batch_size=args.batch_size)
        flat = sorted((float(s), layer, h) for layer, layer_scores in enumerate(scores) for h, s in enumerate(layer_scores))
        left, order = list(model.num_heads), []
        for _, layer, h in flat:
            if left[layer] > 1:
                order.append((layer, h))
                left[layer] -= 1
        curves["ablation, one-shot"] = dict(zip(counts, masked_curve(model, order, evaluate, counts), strict=True))
    randoms = [
        dict(zip(counts, masked_curve(model, random_order(model.num_heads, seed), evaluate, counts), strict=True))
        for seed in range(args.seeds)
    ]

    def mean_random(k, key):
        values = torch.tensor([r[k][key] for r in randoms])
        return values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)

    print()
    print("| removed | " + " | ".join(f"{name}: cos / spearman / probe" for name in curves)
          + f" | random x{args.seeds}: cos / spearman / probe (mean ± sd) | first - random cos |")
    print("|---" * (len(curves) + 3) + "|")
    main_curve = next(iter(curves.values()))
    for k in counts:
        cells = [f"{c[k]['cosine']:.3f} / {c[k]['spearman']:.3f} / {100 * c[k]['probe']:.1f}" for c in curves.values()]
        (rc, rcs), (rs, rss), (rp, rps) = (mean_random(k, key) for key in ("cosine", "spearman", "probe"))
        cells.append(f"{rc:.3f}±{rcs:.3f} / {rs:.3f}±{rss:.3f} / {100 * rp:.1f}±{100 * rps:.1f}")
        cells.append(f"{main_curve[k]['cosine'] - rc:+.3f}")
        print(f"| {k}/{total} ({100 * k / total:.0f}%) | " + " | ".join(cells) + " |")
    if args.save is not None:
        pruned = copy.deepcopy(model)
        prune_by_importance_(pruned, calibration, PruneConfig(**{**config.to_dict(), "remove": total // 2}))
        pruned.save(args.save)
        print(f"saved the 50%-pruned model ({pruned.num_heads}) to {args.save}")


if __name__ == "__main__":
    main()
