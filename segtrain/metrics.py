"""Segmentation scores from one confusion matrix over all evaluated pixels, and per-image counts beside it."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from segtrain.errors import DataError
from segtrain.fileio import write_atomic


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


class PerImageCounts:
    """Per image and class: the pixels that are true positives, false positives and false negatives.

    The same predictions and targets as the ConfusionMatrix beside it, kept apart by image, so that a val
    set can be resampled by image and the mIoU recomputed from the summed counts (the paired bootstrap of
    hpo.report.stats). int32 on the device, images x classes x 3 (VOC val: 1,449 x 21 x 3, 365 KB). Each
    image's row is written by the process that scored it; `all_reduce` sums the processes' tensors (zero
    elsewhere), so that every process then holds every row.
    """

    def __init__(self, images: int, num_classes: int, device: torch.device | str | None = None,
                 ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(images, num_classes, 3, dtype=torch.int32, device=device)

    def update(self, indices: Sequence[int], prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Set the rows of the images `indices` from their predicted and true class ids (batch x H x W)."""
        if prediction.shape != target.shape or prediction.shape[0] != len(indices):
            raise ValueError(f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and "
                             f"{len(indices)} indices do not describe one batch")
        n, batch, device = self.num_classes, len(indices), self.counts.device
        target = target.to(device).reshape(batch, -1).long()
        prediction = prediction.to(device).reshape(batch, -1).long()
        # image b's (t, p) pair counts in bin 1 + (b n + t) n + p, ignored pixels in bin 0, dropped after
        first_bin = torch.arange(batch, device=device).unsqueeze(1) * (n * n) + 1
        pairs = (target * n + prediction).add_(first_bin)
        pairs.masked_fill_(target == self.ignore_index, 0)
        pairs = pairs.reshape(-1).clamp_(max=batch * n * n)  # an id past the classes: ConfusionMatrix refuses it
        # index_add_ into fixed bins, as ConfusionMatrix does: bincount would read the largest back to the host
        bins = torch.zeros(batch * n * n + 1, dtype=torch.int64, device=device)
        bins.index_add_(0, pairs, torch.ones((), dtype=torch.int64, device=device).expand(pairs.numel()))
        matrices = bins[1:].view(batch, n, n)
        true_positive = matrices.diagonal(dim1=1, dim2=2)
        rows = torch.as_tensor(list(indices), device=device)
        self.counts[rows] = torch.stack((true_positive, matrices.sum(dim=1) - true_positive,
                                         matrices.sum(dim=2) - true_positive), dim=-1).to(torch.int32)

    def all_reduce(self) -> None:
        """Sum the rows of all processes (a no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def save(self, path: str | Path, image_ids: Sequence[str]) -> Path:
        """counts (int32 images x classes x 3) and image_ids, in a compressed .npz written atomically."""
        counts = self.counts.cpu().numpy()
        if len(image_ids) != counts.shape[0]:
            raise ValueError(f"{len(image_ids)} image ids for {counts.shape[0]} rows of counts")
        return write_atomic(path, lambda file: np.savez_compressed(file, counts=counts, image_ids=np.array(image_ids)),
                            size_hint=counts.nbytes)


def read_per_image_counts(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(image ids, int32 images x classes x 3 counts of TP, FP, FN) from a file PerImageCounts.save wrote."""
    try:
        with np.load(path) as data:
            ids, counts = [str(image_id) for image_id in data["image_ids"]], data["counts"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: unreadable per-image counts ({error.__class__.__name__}); delete it and "
                        f"evaluate the run again (python -m segtrain.evaluate)") from None
    if counts.ndim != 3 or counts.shape[0] != len(ids) or counts.shape[2] != 3:
        raise DataError(f"{path}: per-image counts of shape {counts.shape} for {len(ids)} images; delete it and "
                        f"evaluate the run again (python -m segtrain.evaluate)")
    return ids, counts
