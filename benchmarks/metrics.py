"""Confusion-matrix update throughput: segtrain.metrics vs numpy vs torchmetrics, same values.

Evaluation adds one batch of predicted and true class ids to a 21x21 confusion
matrix per step; at full VOC resolution that is millions of pixels a batch, so the
update must not be slower than the obvious alternatives: the numpy `bincount`
everyone writes (FCN's `fast_hist`) and torchmetrics' MulticlassJaccardIndex.
All must agree exactly on the matrix and to float tolerance on mIoU. Every
alternative runs on one thread (numpy's bincount has no other), so the ratios compare
implementations, not thread counts.

Also timed, labelled "earlier": segtrain's first update, which removed ignored pixels
with a mask (two compaction passes, and on CUDA a host sync) where it now sends them to
an extra bin that is dropped afterwards; and its previous one, the same bins counted by
`torch.bincount`, which on CUDA reads the largest id back to the host at every batch
(a sync) where `index_add_` into fixed bins does not. The new update must be as fast
on the CPU as the previous one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from common import interleaved, machine, median, parse_args, print_table, result, spread, timed
from torchmetrics.classification import MulticlassJaccardIndex

from segtrain.metrics import ConfusionMatrix

CLASSES = 21
IGNORE = 255


def make_batch(batch: int, size: int, void: float = 0.05, correct: float = 0.7,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) int64 as evaluation makes them (argmax; masks via ToDtype int64)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, size, size)
    target = torch.randint(0, CLASSES, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < void] = IGNORE
    guess = torch.randint(0, CLASSES, shape, generator=generator)
    prediction = torch.where(torch.rand(shape, generator=generator) < correct, target.clamp(max=CLASSES - 1), guess)
    return prediction, target


def numpy_matrix(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The textbook version (FCN's fast_hist): drop void pixels, bincount the pairs."""
    keep = target != IGNORE
    return np.bincount(CLASSES * target[keep] + prediction[keep], minlength=CLASSES ** 2).reshape(CLASSES, CLASSES)


def boolean_indexing_matrix(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """segtrain's earlier update: drop ignored pixels by indexing, then bincount."""
    target, prediction = target.reshape(-1), prediction.reshape(-1)
    keep = target != IGNORE
    pairs = target[keep].long() * CLASSES + prediction[keep].long()
    return torch.bincount(pairs, minlength=CLASSES ** 2).view(CLASSES, CLASSES)


def bincount_matrix(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """segtrain's previous update: the same bins, counted by bincount (a host sync on CUDA)."""
    target, prediction = target.reshape(-1), prediction.reshape(-1)
    pairs = torch.add(prediction.long(), target.long(), alpha=CLASSES).add_(1)
    pairs.masked_fill_(target == IGNORE, 0)
    return torch.bincount(pairs, minlength=CLASSES ** 2 + 1)[1:].view(CLASSES, CLASSES)


def numpy_miou(matrix: np.ndarray) -> float:
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    present = union > 0
    return float((true_positive[present] / union[present]).mean())


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)  # numpy's bincount runs on one thread: torch gets one too, so like is timed with like
    batch, size, updates, repeats = (2, 129, 2, 1) if args.quick else (8, 513, 5, 7)
    prediction, target = make_batch(batch, size)
    prediction_np, target_np = prediction.numpy(), target.numpy()  # views: no copy to time
    print(f"{machine()}\nbatch {batch} x {size}x{size}, {CLASSES} classes, "
          f"{float((target == IGNORE).float().mean()):.1%} void, {updates} updates a timing, {repeats} rounds")

    # --- identical values, on the very tensors being timed
    ours = ConfusionMatrix(CLASSES, ignore_index=IGNORE)
    ours.update(prediction, target)
    reference = numpy_matrix(prediction_np, target_np)
    jaccard = MulticlassJaccardIndex(CLASSES, ignore_index=IGNORE, average="macro")
    jaccard.update(prediction, target)
    torchmetrics_matrix = jaccard.confmat.long()  # rows: target, as ours
    same_matrix = (torch.equal(ours.matrix, torch.from_numpy(reference))
                   and torch.equal(ours.matrix, torchmetrics_matrix)
                   and torch.equal(ours.matrix, boolean_indexing_matrix(prediction, target))
                   and torch.equal(ours.matrix, bincount_matrix(prediction, target)))
    miou = {"segtrain": ours.compute().miou, "numpy": numpy_miou(reference),
            "torchmetrics": float(jaccard.compute())}
    same_miou = all(math.isclose(value, miou["segtrain"], rel_tol=1e-6) for value in miou.values())
    print(f"confusion matrices identical: {same_matrix}; mIoU "
          + ", ".join(f"{name} {value:.7f}" for name, value in miou.items())
          + f" (equal to 1e-6: {same_miou})")
    if not (same_matrix and same_miou):
        raise SystemExit("the implementations disagree: no point timing them")

    # --- throughput, interleaved; a fresh accumulator per timing, as each evaluation starts one
    def rate(update) -> float:
        return updates * prediction.numel() / timed(lambda: [update() for _ in range(updates)]) / 1e6

    def segtrain_update() -> float:
        matrix = ConfusionMatrix(CLASSES, ignore_index=IGNORE)
        return rate(lambda: matrix.update(prediction, target))

    def numpy_update() -> float:
        matrix = np.zeros((CLASSES, CLASSES), dtype=np.int64)
        return rate(lambda: np.add(matrix, numpy_matrix(prediction_np, target_np), out=matrix))

    def torchmetrics_update(validate_args: bool):
        def run() -> float:
            metric = MulticlassJaccardIndex(CLASSES, ignore_index=IGNORE, validate_args=validate_args)
            return rate(lambda: metric.update(prediction, target))
        return run

    def earlier_update(count):
        def run() -> float:
            matrix = torch.zeros(CLASSES, CLASSES, dtype=torch.int64)
            return rate(lambda: matrix.add_(count(prediction, target)))
        return run

    alternatives = {"segtrain ConfusionMatrix": segtrain_update, "numpy bincount": numpy_update,
                    "torchmetrics Jaccard (validate_args=False)": torchmetrics_update(False),
                    "torchmetrics Jaccard (default, validates)": torchmetrics_update(True),
                    "earlier: boolean indexing + bincount": earlier_update(boolean_indexing_matrix),
                    "previous: spare bin + bincount (syncs on CUDA)": earlier_update(bincount_matrix)}
    interleaved(alternatives, 1)  # warm-up round, discarded
    rates = interleaved(alternatives, repeats)
    ours_rate = median(rates["segtrain ConfusionMatrix"])
    print_table(["update", "Mpixel/s (median)", "range", "segtrain / this"],
                [(name, median(values), spread(values), ours_rate / median(values))
                 for name, values in rates.items()],
                title=f"confusion-matrix updates, {torch.get_num_threads()} torch thread, as numpy's one")
    # the stricter of the two goals: against numpy and against torchmetrics at its fastest
    previous = median([a / b for a, b in zip(rates["segtrain ConfusionMatrix"],
                                             rates["previous: spare bin + bincount (syncs on CUDA)"])])
    print(f"\nsegtrain / its previous update, paired within rounds: {previous:.3g}")
    worst = min(ours_rate / median(rates["numpy bincount"]),
                ours_rate / median(rates["torchmetrics Jaccard (validate_args=False)"]))
    result("metrics", worst, ">=", 1.0)


if __name__ == "__main__":
    main()
