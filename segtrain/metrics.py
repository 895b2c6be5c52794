"""Segmentation scores from one confusion matrix over all evaluated pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Scores:
    miou: float  # mean IoU over the classes present in prediction or target
    per_class_iou: list[float | None]  # None: class absent from both prediction and target
    pixel_accuracy: float
    mean_class_accuracy: float  # mean recall over classes present in the target


class ConfusionMatrix:
    """Counts (target, prediction) pairs on the device; rows are targets.

    One matrix over the whole val set (not a mean of per-image scores) is the
    VOC protocol; pixels labelled `ignore_index` (VOC's void, 255) are ignored.

    The counts live in n*n + 2 bins: pair (t, p) in bin 1 + t*n + p, ignored pixels in
    bin 0, and pairs past the last (a target id >= n that is not ignored) in the last
    bin, which `compute` refuses. `matrix` is the n x n view of the pairs' bins.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None,
                 ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.bins = torch.zeros(num_classes * num_classes + 2, dtype=torch.int64, device=device)
        self.matrix = self.bins[1:-1].view(num_classes, num_classes)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class ids of the same shape. No host sync on CUDA:
        `index_add_` into the fixed bins (torch.bincount reads the largest id back to size its
        output), and no boolean indexing (two compaction passes, and a sync, on CUDA)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        n = self.num_classes
        target = target.to(self.bins.device).reshape(-1)
        prediction = prediction.to(self.bins.device).reshape(-1)
        pairs = torch.add(prediction.long(), target, alpha=n).add_(1)  # int64 even for a uint8 target
        pairs.masked_fill_(target == self.ignore_index, 0).clamp_(max=n * n + 1)
        self.bins.index_add_(0, pairs, torch.ones((), dtype=torch.int64, device=pairs.device).expand(pairs.numel()))

    def merge(self, other: ConfusionMatrix) -> None:
        self.bins += other.bins.to(self.bins.device)

    def all_reduce(self) -> None:
        """Sum the counts of all processes (a no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.bins)

    def reset(self) -> None:
        self.bins.zero_()

    def compute(self) -> Scores:
        bins = self.bins.cpu()
        if bins[-1]:
            raise ValueError(f"{int(bins[-1])} pixels have a target class id outside 0-{self.num_classes - 1} "
                             f"that is not the ignored {self.ignore_index}")
        matrix = bins[1:-1].view(self.num_classes, self.num_classes).double()
        true_positive = matrix.diag()
        target_total = matrix.sum(dim=1)
        predicted_total = matrix.sum(dim=0)
        union = target_total + predicted_total - true_positive
        present = union > 0
        iou = true_positive / union.clamp(min=1)
        in_target = target_total > 0
        recall = true_positive / target_total.clamp(min=1)
        pixels = matrix.sum()
        return Scores(
            miou=float(iou[present].mean()) if present.any() else 0.0,
            per_class_iou=[float(v) if p else None for v, p in zip(iou, present)],
            pixel_accuracy=float(true_positive.sum() / pixels) if pixels > 0 else 0.0,
            mean_class_accuracy=float(recall[in_target].mean()) if in_target.any() else 0.0,
        )
