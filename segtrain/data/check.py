"""Check a VOC tree end to end: every listed pair decodes and matches, and what the splits hold.

Unlike the loader, which stops at the first bad file, this reads everything and
collects every problem, so one run tells a user all that needs fixing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segtrain.data.labels import CLASS_NAMES, IGNORE_INDEX
from segtrain.data.voc import (
    SPLITS,
    image_path,
    mask_dir,
    mask_path,
    read_image,
    read_mask,
    read_split_ids,
    require_same_size,
    split_file,
)
from segtrain.errors import DataError

OPTIONAL_SPLITS = ("train_aug", "train_aug_search", "holdout")  # need SBD; a VOC tree without them is complete
_AUG = "train_aug"
_PARTS = ("train_aug_search", "holdout")  # train_aug cut in two by prepare
EXAMPLES = 5  # ids shown per train_aug problem


@dataclass
class SplitSummary:
    images: int  # ids listed
    pixels: np.ndarray  # int64[256]: pixels per mask value over the readable pairs (0-20 classes, 255 void)


@dataclass
class CheckResult:
    voc_dir: Path
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # optional splits without a list file
    problems: list[str] = field(default_factory=list)


class _PairReader:
    """Reads each file once although splits overlap (trainval = train + val; train_aug ~ train)."""

    def __init__(self, voc_dir: Path, problems: list[str]):
        self.voc_dir = voc_dir
        self.problems = problems
        self.image_sizes: dict[Path, tuple[int, int] | None] = {}
        self.mask_pixels: dict[Path, np.ndarray | None] = {}

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        path = image_path(self.voc_dir, image_id)
        if path not in self.image_sizes:
            try:
                self.image_sizes[path] = tuple(read_image(path).shape[-2:])
            except DataError as error:
                self.problems.append(str(error))
                self.image_sizes[path] = None
        return self.image_sizes[path]

    def pixels(self, split: str, image_id: str) -> np.ndarray | None:
        """Pixels per mask value of a pair, or None (problems recorded) when it is unusable."""
        path = mask_path(self.voc_dir, split, image_id)
        if path not in self.mask_pixels:
            self.mask_pixels[path] = self._mask_pixels(path, self.image_size(image_id))
        return self.mask_pixels[path]

    def _mask_pixels(self, path: Path, image_size: tuple[int, int] | None) -> np.ndarray | None:
        try:
            mask = read_mask(path)
            if image_size is not None:
                require_same_size(image_size, mask, path)
        except DataError as error:
            self.problems.append(str(error))
            return None
        return None if image_size is None else np.bincount(mask.numpy().ravel(), minlength=256)


def check_voc(voc_dir: Path, progress: bool | None = None) -> CheckResult:
    """Summarise every split present and list every problem. `progress`: None = a bar on terminals only."""
    result = CheckResult(Path(voc_dir))
    reader = _PairReader(result.voc_dir, result.problems)
    for split in SPLITS:
        if split in OPTIONAL_SPLITS and not split_file(result.voc_dir, split).exists():
            result.absent.append(split)
            continue
        try:
            ids = read_split_ids(result.voc_dir, split)
        except DataError as error:
            result.problems.append(str(error))
            continue
        listed = len(ids)
        if split == _AUG:
            ids = _check_train_aug(result, ids)  # reads only the ids whose files exist
        elif split in _PARTS:  # their missing files are train_aug's, reported once there
            ids = [image_id for image_id in ids if _has_files(result.voc_dir, split, image_id)]
        pixels = np.zeros(256, dtype=np.int64)
        for image_id in tqdm(ids, desc=f"checking {split}", unit="image", disable=_disable(progress)):
            counts = reader.pixels(split, image_id)
            if counts is not None:
                pixels += counts
        result.splits[split] = SplitSummary(listed, pixels)
    _check_parts(result)
    return result


def _check_train_aug(result: CheckResult, ids: list[str]) -> list[str]:
    """Record train_aug's own problems, one line each: ids without a mask or an image, ids shared with val.

    A train_aug assembled by hand often misses thousands of masks or still holds val
    images; a count and a few ids say more than a line per file. Returns the ids whose
    files exist, to be read like any other split's.
    """
    voc_dir = result.voc_dir
    list_file = split_file(voc_dir, _AUG)
    fix = f"rebuild it with `python -m segtrain.data prepare --root {_prepare_root(voc_dir)}`"
    no_mask = [image_id for image_id in ids if not mask_path(voc_dir, _AUG, image_id).is_file()]
    no_image = [image_id for image_id in ids if not image_path(voc_dir, image_id).is_file()]
    for without, folder in ((no_mask, mask_dir(voc_dir, _AUG)), (no_image, voc_dir / "JPEGImages")):
        if without:
            result.problems.append(f"{list_file} lists {_some(without)} with no file in {folder}/: {fix}")
    try:
        val = set(read_split_ids(voc_dir, "val"))
    except DataError:
        val = set()  # already reported with the val split
    shared = sorted(set(ids) & val)
    if shared:
        result.problems.append(f"{list_file} lists {_some(shared)} that val.txt lists too (training on val images "
                               f"inflates val mIoU; train_aug must leave out every val id): {fix}")
    missing = set(no_mask) | set(no_image)
    return [image_id for image_id in ids if image_id not in missing]


def _has_files(voc_dir: Path, split: str, image_id: str) -> bool:
    return mask_path(voc_dir, split, image_id).is_file() and image_path(voc_dir, image_id).is_file()


def _check_parts(result: CheckResult) -> None:
    """train_aug_search and holdout must cut train_aug in two: disjoint, and together exactly train_aug.

    A holdout that shares images with what the search trains on would reward memorising them.
    """
    present = [split for split in _PARTS if split_file(result.voc_dir, split).exists()]
    if not present or not split_file(result.voc_dir, _AUG).exists():
        return
    fix = f"rebuild them with `python -m segtrain.data prepare --root {_prepare_root(result.voc_dir)}`"
    if len(present) < len(_PARTS):
        missing = next(split for split in _PARTS if split not in present)
        result.problems.append(f"{split_file(result.voc_dir, present[0])} has no partner "
                               f"{split_file(result.voc_dir, missing).name}: {fix}")
        return
    try:
        aug, search, holdout = (set(read_split_ids(result.voc_dir, split)) for split in (_AUG, *_PARTS))
    except DataError:
        return  # already reported with its split
    for split, ids in zip(_PARTS, (search, holdout)):
        outside = sorted(ids - aug)
        if outside:
            result.problems.append(f"{split_file(result.voc_dir, split)} lists {_some(outside)} that train_aug.txt "
                                   f"does not: {fix}")
    shared = sorted(search & holdout)
    if shared:
        result.problems.append(f"{split_file(result.voc_dir, 'holdout')} lists {_some(shared)} that "
                               f"train_aug_search.txt lists too (the search would select on images it trained "
                               f"on): {fix}")
    left_out = sorted(aug - search - holdout)
    if left_out:
        result.problems.append(f"train_aug_search.txt and holdout.txt together leave out {_some(left_out)} of "
                               f"{split_file(result.voc_dir, _AUG)}: {fix}")


def _some(ids: list[str]) -> str:
    """`1 id (a)` or `1,234 ids (a, b, c, d, e, ...)`."""
    shown = ", ".join(ids[:EXAMPLES]) + (", ..." if len(ids) > EXAMPLES else "")
    return f"{len(ids):,} id{'s' if len(ids) > 1 else ''} ({shown})"


def _prepare_root(voc_dir: Path) -> str:
    """The --root prepare wants (the folder holding VOCdevkit/), when the tree is laid out that way."""
    return str(voc_dir.parent.parent) if voc_dir.parent.name == "VOCdevkit" else "DIR (the folder holding VOCdevkit/)"


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # tqdm: None disables it when not on a terminal


def format_report(result: CheckResult) -> str:
    """A table of pixels per class (rows) and split (columns), then every problem."""
    rows = [("images", *(f"{summary.images:,}" for summary in result.splits.values()))]
    for value, name in [*enumerate(CLASS_NAMES), (IGNORE_INDEX, "void (255)")]:
        rows.append((name, *(f"{int(summary.pixels[value]):,}" for summary in result.splits.values())))
    header = ("pixels", *result.splits)
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = [f"VOC tree {result.voc_dir}", ""]
    lines += ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(row, widths)))
              for row in (header, *rows)]
    if result.absent:
        lines += ["", f"not present (optional): {', '.join(result.absent)}"]
    if result.problems:
        lines += ["", f"{len(result.problems)} problem(s):", *(f"  {problem}" for problem in result.problems)]
    else:
        lines += ["", "no problems found"]
    return "\n".join(lines)
