"""Synthetic VOC-format data: a valid tree of VOC-like sizes, deterministic, void bands along every boundary,
atomic and race-safe caching, learnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage

import segtrain.data.synthetic as synthetic
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data import voc_dir_for
from segtrain.data.__main__ import main as data_main
from segtrain.data.check import check_voc
from segtrain.data.labels import VOC_PALETTE
from segtrain.data.synthetic import ensure_synthetic, synthetic_set_name, write_synthetic_voc
from segtrain.data.voc import SPLITS, VOCSegmentation, read_split_ids
from segtrain.errors import ConfigError, DataError
from tests.conftest import VOC_SAMPLE


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def masks(voc_dir: Path) -> list[np.ndarray]:
    return [np.asarray(PIL.Image.open(path)) for path in sorted((voc_dir / "SegmentationClass").glob("*.png"))]


def test_tree_is_valid_voc_and_loads(synthetic_voc: Path):
    result = check_voc(synthetic_voc, progress=False)
    assert result.problems == [] and result.absent == []
    assert {split: summary.images for split, summary in result.splits.items()} == {
        "train": 8, "val": 4, "trainval": 12, "train_aug": 8, "train_aug_search": 7, "holdout": 1}
    assert read_split_ids(synthetic_voc, "train_aug") == read_split_ids(synthetic_voc, "train")
    for split in SPLITS:
        image, mask = VOCSegmentation(synthetic_voc, split)[0]
        assert image.shape[1:] == mask.shape and max(mask.shape) <= 64
    with PIL.Image.open(next((synthetic_voc / "SegmentationClass").glob("*.png"))) as png:
        assert png.mode == "P" and png.getpalette() == VOC_PALETTE


def test_scenes_come_in_voc_like_sizes_and_both_orientations(tmp_path: Path):
    voc_dir = write_synthetic_voc(tmp_path, train=24, val=1, size=64, classes=1)
    sizes = VOCSegmentation(voc_dir, "trainval").image_sizes
    assert {max(size) for size in sizes} == {48, 56, 64}  # the long side: the maximum, 7/8 and 3/4 of it
    assert all(round(max(size) * 3 / 4) == min(size) for size in sizes)  # 4:3
    landscape = sum(width > height for height, width in sizes)
    assert len(sizes) / 2 < landscape < len(sizes)  # mostly landscape, like VOC, and some portrait


def test_masks_use_the_chosen_classes_with_a_void_band_along_every_boundary(synthetic_voc: Path):
    pixels = check_voc(synthetic_voc, progress=False).splits["trainval"].pixels
    assert set(np.flatnonzero(pixels)) <= {0, 1, 2, 3, 4, 5, 255}
    assert pixels[255] > 0 and pixels[1:6].sum() > 2 * pixels[255]  # objects are large, bands narrow
    between_objects = []  # distances from each object to the nearest pixel of another object
    for mask in masks(synthetic_voc):
        for label in np.unique(mask[mask != 255]):
            distance = scipy.ndimage.distance_transform_edt(mask != label)  # to the nearest pixel of label
            others = (mask != label) & (mask != 255)
            assert distance[others].min() > 3  # another region is only ever met across 3+ void pixels
            if label > 0 and (others & (mask > 0)).any():
                between_objects.append(distance[others & (mask > 0)].min())
        assert (mask[0] != 255).any() and (mask[:, 0] != 255).any()  # no band along the image border
    assert min(between_objects) < 5  # objects that touch or overlap are also kept apart by the band


def test_twenty_classes_all_appear(tmp_path: Path):
    voc_dir = write_synthetic_voc(tmp_path, train=100, val=1, size=32, classes=20, seed=3)
    pixels = check_voc(voc_dir, progress=False).splits["train"].pixels
    assert set(np.flatnonzero(pixels)) == {*range(21), 255}


def test_same_seed_gives_byte_identical_files(synthetic_voc: Path, tmp_path: Path):
    again = write_synthetic_voc(tmp_path / "again", train=8, val=4, size=64, classes=5, seed=0)
    other = write_synthetic_voc(tmp_path / "other", train=8, val=4, size=64, classes=5, seed=1)
    assert tree_bytes(again) == tree_bytes(synthetic_voc)
    assert tree_bytes(other).keys() == tree_bytes(synthetic_voc).keys()
    assert tree_bytes(other) != tree_bytes(synthetic_voc)


def test_refuses_to_overwrite_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_synthetic_voc(tmp_path, train=2, val=1, size=32)
    assert [path.name for path in tmp_path.iterdir()] == ["VOCdevkit"]  # no temporary dirs left
    with pytest.raises(DataError, match="already exists"):
        write_synthetic_voc(tmp_path, train=2, val=1, size=32)

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "render_scene", crash)
    with pytest.raises(RuntimeError):
        write_synthetic_voc(tmp_path / "crashed", train=2, val=1, size=32)
    assert list((tmp_path / "crashed").iterdir()) == []


@pytest.mark.parametrize(("key", "value"), [("train", 1), ("val", 0), ("size", 31), ("classes", 21), ("seed", -1)])
def test_bad_parameters_name_the_key(key: str, value: int, tmp_path: Path):
    params = {"train": 2, "val": 1, "size": 32, "classes": 5, "seed": 0, key: value}
    with pytest.raises(ConfigError) as error:
        write_synthetic_voc(tmp_path, **params)
    assert error.value.key == key


def test_ensure_synthetic_makes_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    voc_dir = ensure_synthetic(2, 1, 32, classes=3, seed=7, cache_root=tmp_path)
    assert voc_dir == tmp_path / "synthetic-r4-t2-v1-s32-c3-seed7" / "VOCdevkit" / "VOC2012"
    assert synthetic_set_name(2, 1, 32, 3, 7) == "synthetic-r4-t2-v1-s32-c3-seed7"
    monkeypatch.setattr(synthetic, "write_synthetic_voc", None)  # reuse must not write again
    assert ensure_synthetic(2, 1, 32, classes=3, seed=7, cache_root=tmp_path) == voc_dir


def test_ensure_synthetic_loser_of_a_race_reuses_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_tree = synthetic._write_tree
    calls: list[Path] = []

    def another_process_finishes_first(voc_dir: Path, *args):
        calls.append(voc_dir)
        if len(calls) == 1:  # while this process builds its tree, a concurrent one completes the same set
            write_synthetic_voc(voc_dir.parents[1], 2, 1, 32, 5, 0)
        write_tree(voc_dir, *args)

    monkeypatch.setattr(synthetic, "_write_tree", another_process_finishes_first)
    voc_dir = ensure_synthetic(2, 1, 32, cache_root=tmp_path)
    assert len(calls) == 2 and voc_dir == tmp_path / synthetic_set_name(2, 1, 32, 5, 0) / "VOCdevkit" / "VOC2012"
    assert [path.name for path in voc_dir.parents[1].iterdir()] == ["VOCdevkit"]
    assert check_voc(voc_dir, progress=False).problems == []


def test_ensure_synthetic_defaults_to_xdg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    voc_dir = ensure_synthetic(2, 1, 32)
    assert voc_dir.is_relative_to(tmp_path / "deeplab-hpo") and voc_dir.is_dir()


def test_voc_dir_for_config(tmp_path: Path):
    cfg = TrainConfig(synthetic=True, data_root=str(tmp_path), synthetic_train_images=2, synthetic_val_images=1,
                      synthetic_image_size=32, synthetic_classes=2, synthetic_seed=4)
    assert voc_dir_for(cfg) == tmp_path / synthetic_set_name(2, 1, 32, 2, 4) / "VOCdevkit" / "VOC2012"
    assert voc_dir_for(TrainConfig(data_root=str(VOC_SAMPLE))) == VOC_SAMPLE / "VOCdevkit" / "VOC2012"


def test_cli_writes_a_set_and_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = ["synthetic", "--out", str(tmp_path), "--train", "3", "--val", "2", "--size", "40", "--seed", "5"]
    assert run(data_main, argv) == 0
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    assert str(voc_dir) in capsys.readouterr().out
    assert len(read_split_ids(voc_dir, "trainval")) == 5
    assert run(data_main, [*argv[:3], "--classes", "21"], prog="segtrain.data") == 2
    assert capsys.readouterr().err == "segtrain.data: error: --classes: must be in 1-20, got 21\n"


@pytest.fixture(scope="module")
def miou_by_lr(module_tmp) -> dict[float, float]:
    """Final val mIoU of the same short SGD run (24 steps) at three learning rates."""
    from segtrain.engine import train

    voc_dir = write_synthetic_voc(module_tmp("learnable"), train=48, val=12, size=64, classes=5, seed=1)
    base = TrainConfig(data_root=str(voc_dir), pretrained=None, head_lr_multiplier=1.0, crop_size=65,
                       batch_size=4, epochs=2.0, eval_points=1, workers=0, device="cpu", eval_batch_size=12)
    return {lr: train(base.replace(lr=lr)).final_miou for lr in (0.002, 0.02, 0.5)}


def test_learnable_in_seconds_and_rewards_a_good_learning_rate(miou_by_lr):
    low, good, high = miou_by_lr[0.002], miou_by_lr[0.02], miou_by_lr[0.5]
    assert good > 0.4, miou_by_lr  # 24 steps from scratch are enough to learn the scenes
    assert good > low + 0.1 and good > high + 0.1, miou_by_lr  # too slow, and too unstable, to get there
