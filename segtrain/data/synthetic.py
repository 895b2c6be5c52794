"""A synthetic data set in the real VOC 2012 layout, for the CPU demo and the tests.

Scenes hold one to three large ellipses of a few VOC classes on a textured
background, each class with its own hue and stripe texture plus noise. Like VOC's
photos, scenes come in several sizes and both orientations (4:3 landscape, 3:4
portrait; the longest side at most `size`), and like VOC's masks, every boundary
between two regions (object and background, or two overlapping objects) lies in a
void (255) band a few pixels wide. This is small enough to learn in a CPU budget yet
hard enough that the learning rate, batch size and crop visibly change the result
(see DESIGN.md, "Synthetic data that teaches something"). Everything is a function
of the seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import scipy.ndimage

from segtrain.data.labels import IGNORE_INDEX
from segtrain.data.voc import mask_png, split_holdout, write_split_ids
from segtrain.errors import ConfigError, DataError

RECIPE_VERSION = 4  # part of the cache dir name: bump when the scenes change so stale caches are not reused
_SPLIT_SEEDS = {"train": 0, "val": 1}
_GOLDEN_RATIO = (5 ** 0.5 - 1) / 2  # hue step that keeps any prefix of the 20 classes well spread
# VOC's photos are mostly landscape, mostly 500 pixels on the long side: here 3 in 4 scenes are
# landscape, and the long side is the maximum size for half of them, 7/8 or 3/4 of it for the rest
_LANDSCAPE_SHARE = 0.75
_LONG_SIDE_FRACTIONS, _LONG_SIDE_ODDS = (1.0, 0.875, 0.75), (0.5, 0.25, 0.25)
VOID_BAND_RADIUS = 2  # pixels on each side of a boundary: void bands 4 pixels wide


def write_synthetic_voc(out_dir: str | os.PathLike[str], train: int, val: int, size: int,
                        classes: int = 5, seed: int = 0) -> Path:
    """Write `out_dir/VOCdevkit/VOC2012/` and return it.

    `size` is the longest side of the largest images (see `scene_shape`); `classes`
    object classes (VOC ids 1..classes) appear; train_aug (SegmentationClassAug/)
    repeats train and is cut into train_aug_search and a holdout of `holdout_size(train)`
    images as `segtrain.data prepare` cuts VOC's, so that every split name works. The tree
    is built in a temporary sibling and renamed into place, so it is either complete or absent.
    """
    _require("train", train, train >= 2, ">= 2 (the holdout takes one)")
    _require("val", val, val >= 1, ">= 1")
    _require("size", size, size >= 32, ">= 32 pixels")
    _require("classes", classes, 1 <= classes <= 20, "in 1-20")
    _require("seed", seed, seed >= 0, ">= 0")
    out_dir = Path(out_dir)
    devkit = out_dir / "VOCdevkit"
    if devkit.exists():
        raise DataError(f"{devkit} already exists: remove it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    build = out_dir / f".VOCdevkit-{os.getpid()}-{secrets.token_hex(4)}"  # unique per writer; mkdir honours umask
    build.mkdir()
    try:
        _write_tree(build / "VOC2012", {"train": train, "val": val}, size, list(range(1, classes + 1)), seed)
        try:
            build.rename(devkit)
        except OSError:
            if devkit.exists():  # another process finished the same set first
                raise DataError(f"{devkit} already exists: remove it or choose another --out") from None
            raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return devkit / "VOC2012"


def _require(name: str, value: int, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(name, f"must be {rule}, got {value}")


def _write_tree(voc_dir: Path, counts: dict[str, int], size: int, class_ids: list[int], seed: int) -> None:
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True)
    split_ids = {}
    for split, count in counts.items():
        split_ids[split] = [f"synthetic_{split}_{index:06d}" for index in range(count)]
        for index, image_id in enumerate(split_ids[split]):
            rng = np.random.default_rng([seed, _SPLIT_SEEDS[split], index])
            image, mask = render_scene(rng, scene_shape(rng, size), class_ids)
            PIL.Image.fromarray(image).save(voc_dir / "JPEGImages" / f"{image_id}.jpg", quality=90)
            png = mask_png(mask)
            png.save(voc_dir / "SegmentationClass" / f"{image_id}.png")
            if split == "train":
                png.save(voc_dir / "SegmentationClassAug" / f"{image_id}.png")
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    split_ids["train_aug"] = split_ids["train"]
    split_ids["train_aug_search"], split_ids["holdout"] = split_holdout(split_ids["train"],
                                                                        holdout_size(len(split_ids["train"])))
    for split, ids in split_ids.items():
        write_split_ids(voc_dir, split, ids)


def holdout_size(train: int) -> int:
    """A sixth of the train images (at least one): the demo's 96 give 80 to search on and 16 to select on."""
    return max(1, train // 6)


def scene_shape(rng: np.random.Generator, max_side: int) -> tuple[int, int]:
    """(height, width) of a scene: 4:3 landscape or 3:4 portrait, the long side max_side or 7/8 or 3/4 of it."""
    long_side = round(max_side * rng.choice(_LONG_SIDE_FRACTIONS, p=_LONG_SIDE_ODDS))
    short_side = round(long_side * 3 / 4)
    return (short_side, long_side) if rng.random() < _LANDSCAPE_SHARE else (long_side, short_side)


def render_scene(rng: np.random.Generator, shape: tuple[int, int],
                 class_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) of this (height, width) and its mask (uint8 HxW of class ids, 255 on boundaries)."""
    height, width = shape
    image = _background(rng, height, width)
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        class_id = int(rng.choice(class_ids))
        region = PIL.Image.new("L", (width, height), 0)
        PIL.ImageDraw.Draw(region).polygon(_ellipse(rng, height, width), fill=1)
        inside = np.asarray(region, dtype=bool)
        image[inside] = _appearance(rng, height, width, class_id)[inside]
        labels[inside] = class_id  # a later object hides what it covers, boundary included
    mask = np.where(_near_another_region(labels, VOID_BAND_RADIUS), IGNORE_INDEX, labels).astype(np.uint8)
    noisy = image + rng.normal(0, 8, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), mask


def _near_another_region(labels: np.ndarray, radius: int) -> np.ndarray:
    """True where a pixel of another label lies within `radius` (Euclidean): a band 2 * radius
    wide along every boundary between regions, and none along the image border."""
    offsets = np.arange(-radius, radius + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
    highest = scipy.ndimage.maximum_filter(labels, footprint=disk, mode="nearest")
    lowest = scipy.ndimage.minimum_filter(labels, footprint=disk, mode="nearest")
    return highest != lowest


def _ellipse(rng: np.random.Generator, height: int, width: int, vertices: int = 48) -> list[tuple[float, float]]:
    """A rotated ellipse centred in the middle 60% of the image, radii in [s/5, s/2] for s = sqrt(height * width)."""
    centre = rng.uniform(0.2, 0.8, 2) * (width, height)
    side = (height * width) ** 0.5
    radii = rng.uniform(side / 5, side / 2, 2)
    angle = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    x, y = radii[0] * np.cos(t), radii[1] * np.sin(t)
    rotated_x = centre[0] + x * np.cos(angle) - y * np.sin(angle)
    rotated_y = centre[1] + x * np.sin(angle) + y * np.cos(angle)
    return [(float(a), float(b)) for a, b in zip(rotated_x, rotated_y)]


def _class_colour(class_id: int) -> np.ndarray:
    hue = (class_id * _GOLDEN_RATIO) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.85)) * 255


def _appearance(rng: np.random.Generator, height: int, width: int, class_id: int) -> np.ndarray:
    """Class hue with per-object jitter, modulated by stripes whose angle and period belong to the class."""
    colour = _class_colour(class_id) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)
    angle = class_id * 2.4  # radians; distinct stripe directions for neighbouring ids
    period = 4 + (class_id * 7) % 9
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    return colour * (1 + 0.2 * stripes[..., None])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth, low-saturation colour field with fine grain: texture that is no class."""
    coarse = rng.uniform(60, 200, (4, 4, 1)) + rng.normal(0, 15, (4, 4, 3))
    field = PIL.Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((width, height), PIL.Image.BICUBIC)
    grain = rng.normal(0, 8, (height, width, 1))
    return np.asarray(field, dtype=np.float64) + grain


def synthetic_set_name(train: int, val: int, size: int, classes: int, seed: int) -> str:
    return f"synthetic-r{RECIPE_VERSION}-t{train}-v{val}-s{size}-c{classes}-seed{seed}"


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/deeplab-hpo, or ~/.cache/deeplab-hpo."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deeplab-hpo"


def ensure_synthetic(train: int, val: int, size: int, classes: int = 5, seed: int = 0,
                     cache_root: str | os.PathLike[str] | None = None) -> Path:
    """The VOC2012 dir of the set with these parameters under `cache_root`, written if missing.

    Safe when several processes ask at once: each builds its own temporary tree,
    one rename wins, the others reuse the winner's set.
    """
    out_dir = Path(cache_root or default_cache_root()) / synthetic_set_name(train, val, size, classes, seed)
    voc_dir = out_dir / "VOCdevkit" / "VOC2012"
    if not voc_dir.is_dir():
        try:
            write_synthetic_voc(out_dir, train, val, size, classes, seed)
        except DataError:
            if not voc_dir.is_dir():
                raise
    return voc_dir
