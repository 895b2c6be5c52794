"""Pascal VOC 2012 segmentation on disk: find the tree, read splits, decode pairs, the Dataset.

Layout (VOCtrainval_11-May-2012.tar, plus SBD's train_aug as most DeepLab repos use it):

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      paletted, index = class id, 255 = void
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   the 10,582 train_aug masks
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval,train_aug}.txt
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug_search,holdout}.txt   train_aug in two (prepare)

Masks are read as the PNG's palette indices, never by mapping colours back to classes.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from segtrain.config import SPLITS
from segtrain.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, VOC_PALETTE
from segtrain.data.transforms import eval_transform
from segtrain.errors import DataError
from segtrain.fileio import write_text_atomic

__all__ = [
    "CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "SPLITS", "VOC_PALETTE", "VOCSegmentation",
    "find_voc_dir", "image_path", "mask_dir", "mask_path", "mask_png", "read_image", "read_image_size", "read_mask",
    "read_pair", "read_split_ids", "require_same_size", "split_file", "split_holdout", "write_split_ids",
]

_SPLIT_DIR = Path("ImageSets", "Segmentation")
_AUG_SPLIT = "train_aug"
AUG_SPLITS = (_AUG_SPLIT, "train_aug_search", "holdout")  # train_aug and its two parts: SBD-style masks

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


def find_voc_dir(data_root: str | os.PathLike[str] | None = None, flag: str = "--data-root") -> Path:
    """The `VOC2012` dir under `data_root` (or $VOC_ROOT): its parent's parent, `VOCdevkit/`, or itself.

    `flag` is the CLI option that sets `data_root`, for the error messages.
    """
    if data_root is None:
        data_root = os.environ.get("VOC_ROOT")
        if not data_root:
            raise DataError(f"no VOC data root: pass {flag} or set VOC_ROOT "
                            "(the folder holding VOCdevkit/, or VOCdevkit/, or VOC2012/)")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"VOC data root {root} is not a directory: pass {flag} or set VOC_ROOT")
    tried = [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root]
    for candidate in tried:
        if (candidate / _SPLIT_DIR).is_dir():
            return candidate
    raise DataError(f"no VOC 2012 tree under {root}: tried {', '.join(str(path) for path in tried)} "
                    f"(each should contain {_SPLIT_DIR}/); point {flag} at the folder holding VOCdevkit/")


def split_file(voc_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return voc_dir / _SPLIT_DIR / f"{split}.txt"


def mask_dir(voc_dir: Path, split: str) -> Path:
    """train_aug's masks (and so its parts') live in SegmentationClassAug/; every other split uses VOC's own."""
    return voc_dir / ("SegmentationClassAug" if split in AUG_SPLITS else "SegmentationClass")


def image_path(voc_dir: Path, image_id: str) -> Path:
    return voc_dir / "JPEGImages" / f"{image_id}.jpg"


def mask_path(voc_dir: Path, split: str, image_id: str) -> Path:
    return mask_dir(voc_dir, split) / f"{image_id}.png"


def read_split_ids(voc_dir: Path, split: str) -> list[str]:
    """Ids listed in `ImageSets/Segmentation/<split>.txt`, in file order.

    A line may also be DeepLab's list format (`/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`):
    the id is the stem of its first field.
    """
    path = split_file(Path(voc_dir), split)
    if split == _AUG_SPLIT:
        hint = ("train_aug needs SBD's masks in SegmentationClassAug/ and the id list train_aug.txt; "
                "add them, or train on --train-split train")
    elif split in AUG_SPLITS:
        hint = f"{split}.txt is a part of train_aug that `python -m segtrain.data prepare` writes; run it again"
    else:
        hint = "is this a complete VOC 2012 trainval tree (VOCtrainval_11-May-2012.tar)?"
    if not path.is_file():
        raise DataError(f"split file {path} not found: {hint}")
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file {path} lists no image ids: {hint}")
    return ids


def write_split_ids(voc_dir: Path, split: str, ids: Sequence[str]) -> Path:
    """`ImageSets/Segmentation/<split>.txt`, one id a line, written atomically."""
    return write_text_atomic(split_file(Path(voc_dir), split), "".join(f"{image_id}\n" for image_id in ids))


HOLDOUT_SEED = 0  # fixed: every lab that runs prepare on the same train_aug holds out the same ids


def split_holdout(train_aug: Sequence[str], size: int) -> tuple[list[str], list[str]]:
    """(train_aug_search, holdout): `size` ids drawn from train_aug with a fixed seed, and the rest,
    each in train_aug's order. The search trains on the first and selects on the second, so the
    images that score the final table (VOC val) never decide which configuration wins."""
    if not 0 < size < len(train_aug):
        raise DataError(f"a holdout of {size} images leaves none of train_aug's {len(train_aug)} to train on: "
                        f"hold out fewer (--holdout N)")
    drawn = np.random.default_rng(HOLDOUT_SEED).choice(len(train_aug), size=size, replace=False)
    held = set(drawn.tolist())
    return ([image_id for index, image_id in enumerate(train_aug) if index not in held],
            [image_id for index, image_id in enumerate(train_aug) if index in held])


def read_image(path: Path) -> tv_tensors.Image:
    """Decode a JPEG with libjpeg via torchvision (faster than PIL); grayscale/CMYK become RGB."""
    if not path.is_file():
        raise DataError(f"image {path} not found: restore it or remove its id from the split file")
    if path.stat().st_size == 0:
        raise DataError(f"image {path} is empty: replace it with the original JPEG")
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image io for TorchCodec (not a dependency); it still works and is fast.
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        reason = re.search(r"\.cpp:\d+, (.*)", str(error))
        raise DataError(f"image {path} is not a readable JPEG ({reason.group(1) if reason else error}): "
                        "replace it with the original file") from None
    return tv_tensors.Image(image)


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header alone: PIL reads a few hundred bytes, decodes nothing."""
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as error:  # missing, empty, or not an image
        reason = "not an image file" if isinstance(error, PIL.UnidentifiedImageError) else error
        raise DataError(f"image {path} is not a readable JPEG ({reason}): replace it with the original file") from None
    return height, width


def read_mask(path: Path) -> tv_tensors.Mask:
    """Class ids (uint8, HxW) straight from a paletted (or grayscale) PNG; values checked."""
    if not path.is_file():
        raise DataError(f"mask {path} not found: restore it or remove its id from the split file")
    try:
        with PIL.Image.open(path) as png:
            if png.mode not in ("P", "L"):
                raise DataError(f"mask {path} is a {png.mode} image: it must be a paletted (mode P) "
                                "PNG of class ids 0-20 and 255, as in VOC's SegmentationClass/")
            ids = np.array(png)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of saying "not a readable image"
        reason = "not an image file" if isinstance(error, PIL.UnidentifiedImageError) else error
        raise DataError(f"mask {path} is not a readable PNG ({reason}): replace it with the original file") from None
    bad = np.unique(ids[(ids >= NUM_CLASSES) & (ids != IGNORE_INDEX)])
    if bad.size:
        raise DataError(f"mask {path} has values {_list_values(bad)} outside 0-{NUM_CLASSES - 1} and "
                        f"{IGNORE_INDEX}: masks must hold VOC class ids (palette indices), not colours")
    return tv_tensors.Mask(torch.from_numpy(ids))


def mask_png(ids: np.ndarray) -> PIL.Image.Image:
    """Class ids (uint8, HxW) as VOC's SegmentationClass PNGs hold them: mode P, VOC's colour map."""
    png = PIL.Image.fromarray(ids)
    png.putpalette(VOC_PALETTE)  # L -> P, pixel values (the class ids) unchanged
    return png


def _list_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(value)) for value in values[:limit])
    return shown + (f", ... ({values.size} values)" if values.size > limit else "")


def read_pair(voc_dir: Path, split: str, image_id: str) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Image (uint8 3xHxW) and mask (uint8 HxW) of one id, checked to be the same size."""
    image = read_image(image_path(voc_dir, image_id))
    path = mask_path(voc_dir, split, image_id)
    mask = read_mask(path)
    require_same_size(image.shape[-2:], mask, path)
    return image, mask


def require_same_size(image_size: Sequence[int], mask: torch.Tensor, path: Path) -> None:
    if tuple(mask.shape) != tuple(image_size):
        raise DataError(f"mask {path} is {_size(mask.shape)} but its image is {_size(image_size)} "
                        "(width x height): mask and image must match")


def _size(shape: Sequence[int]) -> str:
    return f"{shape[-1]}x{shape[-2]}"


class VOCSegmentation(torch.utils.data.Dataset):
    """One VOC split as (image uint8 3xHxW, mask uint8 HxW) pairs (transforms.to_device makes a batch
    of them the model's input).

    `dataset[index]` or `dataset[index, seed]`: with a seed the transform runs on a
    forked CPU RNG seeded with it, so a sample's augmentation depends only on
    (index, seed), whichever worker loads it and wherever a run resumes. Only the CPU
    generator is seeded: with workers = 0 the loader runs in the training process, whose
    CUDA generators (dropout, the checkpointed CUDA RNG) must not be reset every sample.
    `transform` gets (tv_tensors.Image uint8, tv_tensors.Mask uint8) and defaults to
    `eval_transform()` (the full image, unchanged).
    """

    def __init__(self, voc_dir: str | os.PathLike[str], split: str, transform: Transform | None = None,
                 ids: Sequence[str] | None = None):
        self.voc_dir = Path(voc_dir)
        self.split = split
        self.ids = read_split_ids(self.voc_dir, split) if ids is None else list(ids)  # `ids`: some of the split
        self.transform = transform or eval_transform()
        self._check_files_exist()

    def _check_files_exist(self) -> None:
        """Fail now, not hours into training, when a listed id has no image or mask."""
        missing = [path for image_id in self.ids
                   for path in (image_path(self.voc_dir, image_id), mask_path(self.voc_dir, self.split, image_id))
                   if not path.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]} not found{more}, listed in {split_file(self.voc_dir, self.split)}: "
                            f"run `python -m segtrain.data check --root {self.voc_dir}` for the full list")

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, in index order, read from the JPEG headers (once)."""
        return [read_image_size(image_path(self.voc_dir, image_id)) for image_id in self.ids]

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed uint8 pair."""
        return read_pair(self.voc_dir, self.split, self.ids[index])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.load(index)
        if seed is None:
            return self.transform(image, mask)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds every CUDA device too
            return self.transform(image, mask)
