"""Build VOC 2012's train_aug split from SBD: `SegmentationClassAug/` masks and `train_aug.txt`.

Most published DeepLab numbers train on train_aug, VOC train plus the Semantic
Boundaries Dataset (SBD), minus every VOC val image: 10,582 images instead of
VOC's 1,464. SBD stores its labels as MATLAB files with its own split lists, so
this converts them once into VOC's layout. Expected under `root`, as the two
archives unpack:

    VOCdevkit/VOC2012/              VOCtrainval_11-May-2012.tar
    benchmark_RELEASE/dataset/      SBD's benchmark.tgz: cls/<id>.mat, img/, train.txt, val.txt

It also cuts train_aug in two for the search: `holdout.txt` (1,000 ids by default,
drawn with a fixed seed) and `train_aug_search.txt` (the rest). A study trains its
trials on train_aug_search and selects on holdout, so VOC val is used once, for the
final table.

Each mask is written to a temporary name and renamed, and finished masks are
skipped, so an interrupted run just resumes; train_aug.txt is written last.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torchvision.datasets.utils as tv_utils
from torchvision.datasets.sbd import SBDataset
from torchvision.datasets.voc import DATASET_YEAR_DICT
from tqdm import tqdm

from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.voc import (
    image_path,
    mask_dir,
    mask_path,
    mask_png,
    read_split_ids,
    split_file,
    split_holdout,
    write_split_ids,
)
from segtrain.errors import DataError, UserError
from segtrain.fileio import write_atomic

_AUG = "train_aug"
DEFAULT_HOLDOUT = 1000  # ids of train_aug the search selects on, ~9% of the 10,582
_VALID_IDS = np.array([*range(NUM_CLASSES), IGNORE_INDEX])


@dataclass(frozen=True)
class Archive:
    """A download and the folder prepare needs from it (the same path in the archive and under root)."""

    name: str
    url: str
    filename: str
    md5: str
    tree: Path


# The archives, URLs and MD5s torchvision's own VOCSegmentation and SBDataset download.
VOC_ARCHIVE = Archive("VOC 2012 trainval", DATASET_YEAR_DICT["2012"]["url"], DATASET_YEAR_DICT["2012"]["filename"],
                      DATASET_YEAR_DICT["2012"]["md5"], Path("VOCdevkit", "VOC2012"))
SBD_ARCHIVE = Archive("SBD", SBDataset.url, SBDataset.filename, SBDataset.md5, Path("benchmark_RELEASE", "dataset"))
ARCHIVES = (VOC_ARCHIVE, SBD_ARCHIVE)


@dataclass(frozen=True)
class PrepareReport:
    root: Path
    voc_dir: Path
    downloaded: tuple[str, ...]  # names of the archives fetched by this run
    converted: int  # SBD .mat files written as PNG masks
    copied: int  # VOC train masks copied (VOC's labels win over SBD's)
    skipped: int  # masks already in place from an earlier run
    train_aug: int  # ids in train_aug.txt
    val: int  # ids in VOC val, none of them in train_aug
    excluded_val: int  # SBD or VOC train ids left out because VOC val holds them
    excluded_no_image: int  # ids left out because JPEGImages/ has no such image
    holdout: int  # ids in holdout.txt; train_aug_search.txt holds the other train_aug - holdout

    def summary(self) -> str:
        lines = [f"downloaded and unpacked {' and '.join(self.downloaded)} "
                 f"(the archives stay in {self.root}; delete them to free the space)"] if self.downloaded else []
        lines += [
            f"{mask_dir(self.voc_dir, _AUG)}: converted {self.converted:,} SBD masks, "
            f"copied {self.copied:,} VOC train masks, skipped {self.skipped:,} already in place",
            f"wrote {split_file(self.voc_dir, _AUG)}, leaving out {self.excluded_val:,} ids in VOC val "
            f"and {self.excluded_no_image:,} without a JPEG",
            f"train_aug {self.train_aug:,} images, val {self.val:,} images "
            "(the full VOC 2012 + SBD give 10,582 and 1,449)",
            f"for the search: train_aug_search {self.train_aug - self.holdout:,} images to train on, "
            f"holdout {self.holdout:,} to select on (train_aug cut in two with a fixed seed)",
            f"next: python -m segtrain.data check --root {self.voc_dir}",
        ]
        return "\n".join(lines)


def prepare(root: str | Path, download: bool = False, progress: bool | None = None,
            holdout: int | None = None) -> PrepareReport:
    """Make train_aug and its two parts (train_aug_search + `holdout` ids) under `root/VOCdevkit/VOC2012`;
    `download` first fetches whichever archive is missing.

    `holdout`: None means DEFAULT_HOLDOUT, or a tenth of train_aug where that is fewer (a partial
    tree). `progress`: None shows a bar on terminals only.
    """
    root = Path(root).expanduser()
    downloaded = tuple(archive.name for archive in ARCHIVES if download and fetch(root, archive))
    voc_dir, sbd_dir = (_require_tree(root, archive) for archive in ARCHIVES)
    voc_train = set(read_split_ids(voc_dir, "train"))
    voc_val = set(read_split_ids(voc_dir, "val"))
    candidates = set(read_sbd_ids(sbd_dir, "train")) | set(read_sbd_ids(sbd_dir, "val")) | voc_train
    outside_val = candidates - voc_val
    ids = sorted(image_id for image_id in outside_val if image_path(voc_dir, image_id).is_file())
    search, held_out = split_holdout(ids, holdout or min(DEFAULT_HOLDOUT, max(1, len(ids) // 10)))

    _remove_stale_temporaries(mask_dir(voc_dir, _AUG))
    bar = tqdm(ids, desc="train_aug masks", unit="mask", disable=None if progress is None else not progress)
    actions = Counter(_place_mask(voc_dir, sbd_dir, image_id, from_voc=image_id in voc_train) for image_id in bar)
    write_split_ids(voc_dir, "train_aug_search", search)
    write_split_ids(voc_dir, "holdout", held_out)
    write_split_ids(voc_dir, _AUG, ids)
    return PrepareReport(root, voc_dir, downloaded, actions["converted"], actions["copied"], actions["skipped"],
                         train_aug=len(ids), val=len(voc_val), excluded_val=len(candidates) - len(outside_val),
                         excluded_no_image=len(outside_val) - len(ids), holdout=len(held_out))


def fetch(root: Path, archive: Archive) -> bool:
    """Download (MD5-checked) and unpack `archive` unless its tree is under `root`; True if it did.

    It unpacks into a staging folder and renames the tree into place, so a killed
    run leaves no half tree that a later run would take for a complete one.
    """
    target = root / archive.tree
    if target.is_dir():
        return False
    staging = root / f".{archive.filename}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # left behind by a killed run
    try:
        try:
            tv_utils.download_and_extract_archive(archive.url, root, extract_root=staging,
                                                  filename=archive.filename, md5=archive.md5)
        except (OSError, RuntimeError) as error:  # offline: URLError (an OSError); bad MD5: RuntimeError
            raise UserError(f"cannot download {archive.url} ({getattr(error, 'reason', error)}): offline? fetch "
                            f"it elsewhere and put {archive.filename} in {root} (it is MD5-checked, then "
                            f"unpacked), or unpack it there yourself") from None
        if not (staging / archive.tree).is_dir():
            raise DataError(f"{root / archive.filename} does not hold {archive.tree}/: delete it and run again")
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / archive.tree).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _require_tree(root: Path, archive: Archive) -> Path:
    path = root / archive.tree
    if not path.is_dir():
        raise DataError(f"{path} not found: unpack {archive.filename} into {root} "
                        f"(it holds {archive.tree}/), or run with --download to fetch it")
    return path


def read_sbd_ids(sbd_dir: Path, split: str) -> list[str]:
    """Ids in SBD's `train.txt` or `val.txt` (SBD's own splits, not VOC's)."""
    path = sbd_dir / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path} not found: unpack {SBD_ARCHIVE.filename} again (or delete {sbd_dir} "
                        "and run with --download)")
    return path.read_text().split()


def read_sbd_mask(path: Path) -> np.ndarray:
    """Class ids (uint8 HxW) of one SBD `cls/<id>.mat`, read the way torchvision's SBDataset reads it."""
    if not path.is_file():
        raise DataError(f"{path} not found: SBD's train.txt or val.txt lists it; unpack "
                        f"{SBD_ARCHIVE.filename} again")
    try:
        ids = np.asarray(scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError, scipy.io.matlab.MatReadError) as error:
        raise DataError(f"{path} is not an SBD class file with GTcls.Segmentation ({error}): "
                        f"unpack {SBD_ARCHIVE.filename} again") from None
    if ids.ndim != 2 or ids.dtype.kind not in "ui":
        raise DataError(f"{path}: GTcls.Segmentation is {ids.dtype} {ids.shape}, not a 2-D array of class ids: "
                        f"unpack {SBD_ARCHIVE.filename} again")
    bad = np.setdiff1d(ids, _VALID_IDS)
    if bad.size:
        raise DataError(f"{path}: GTcls.Segmentation holds {bad[:8].tolist()}, not only class ids "
                        f"0-{NUM_CLASSES - 1} and {IGNORE_INDEX}: unpack {SBD_ARCHIVE.filename} again")
    return ids.astype(np.uint8)


def _place_mask(voc_dir: Path, sbd_dir: Path, image_id: str, from_voc: bool) -> str:
    """Put one id's mask into SegmentationClassAug/: VOC's own for VOC train ids, else SBD's converted."""
    target = mask_path(voc_dir, _AUG, image_id)
    if from_voc:
        source = mask_path(voc_dir, "train", image_id)
        if not source.is_file():
            raise DataError(f"{source} not found: VOC's train.txt lists it; unpack "
                            f"{VOC_ARCHIVE.filename} again")
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            return "skipped"
        write_atomic(target, lambda file: file.write(source.read_bytes()))
        return "copied"
    if target.is_file():
        return "skipped"
    png = mask_png(read_sbd_mask(sbd_dir / "cls" / f"{image_id}.mat"))
    write_atomic(target, lambda file: png.save(file, format="PNG"))
    return "converted"


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of write_atomic (`.<name>.<random>.tmp`) that a killed run left behind."""
    for path in folder.glob(".*.png.*.tmp"):
        path.unlink(missing_ok=True)


def add_prepare_command(commands: argparse._SubParsersAction) -> None:
    """Register `prepare` on the `python -m segtrain.data` subcommands."""
    parser = commands.add_parser("prepare", help="build the train_aug split (VOC train + SBD, minus VOC val)")
    parser.add_argument("--root", type=Path, required=True,
                        help="folder holding VOCdevkit/ and SBD's benchmark_RELEASE/ (downloads go here too)")
    parser.add_argument("--download", action="store_true",
                        help="first fetch VOC 2012 trainval and SBD if absent (a few GB, MD5-checked)")
    parser.add_argument("--holdout", type=_positive_int, metavar="N",
                        help=f"train_aug ids held out for the search to select on (default: {DEFAULT_HOLDOUT}, "
                             "or a tenth of train_aug if fewer)")
    parser.set_defaults(command=_run_prepare)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _run_prepare(args: argparse.Namespace) -> int:
    print(prepare(args.root, download=args.download, holdout=args.holdout).summary())
    return 0
