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
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None,
                 ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class ids of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        target = target.to(self.matrix.device).reshape(-1)
        prediction = prediction.to(self.matrix.device).reshape(-1)
        # pair (t, p) counts in bin 1 + t*n + p and ignored pixels in bin 0, dropped after:
        # cheaper than boolean indexing (two compaction passes, a host sync on CUDA).
        # An id outside 0..n-1 makes bincount longer than n*n + 1 and the view fail.
        pairs = torch.add(prediction.long(), target.long(), alpha=self.num_classes).add_(1)
        pairs.masked_fill_(target == self.ignore_index, 0)
        n = self.num_classes
        self.matrix += torch.bincount(pairs, minlength=n * n + 1)[1:].view(n, n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (a no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> Scores:
        matrix = self.matrix.double().cpu()
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
