"""VOC on disk: root forms, splits, the real sample's counts and sizes, bad files, seeded loading, check."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from segtrain.cli import run
from segtrain.data.__main__ import main as data_main
from segtrain.data.check import check_voc
from segtrain.data.labels import VOC_PALETTE
from segtrain.data.transforms import train_transform
from segtrain.data.voc import VOCSegmentation, find_voc_dir, read_image_size, read_mask, read_split_ids
from segtrain.errors import DataError
from tests.conftest import VOC_SAMPLE

SAMPLE_VOC_DIR = VOC_SAMPLE / "VOCdevkit" / "VOC2012"
# From tests/data/voc_sample/README.md: (height, width) and pixels per mask value.
SAMPLE = {
    "2007_000032": ((281, 500), {0: 129545, 1: 4734, 15: 866, 255: 5355}),
    "2007_000033": ((366, 500), {0: 143868, 1: 30937, 255: 8195}),
}


def value_counts(mask: torch.Tensor) -> dict[int, int]:
    values, counts = mask.unique(return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_sample_pairs_load_with_readme_counts():
    dataset = VOCSegmentation(SAMPLE_VOC_DIR, "trainval")
    assert dataset.ids == list(SAMPLE)
    for index, (size, counts) in enumerate(SAMPLE.values()):
        image, mask = dataset[index]  # as decoded: the device converts and normalises (transforms.to_device)
        assert image.dtype == torch.uint8 and image.shape == (3, *size)
        assert mask.dtype == torch.uint8 and mask.shape == size
        assert value_counts(mask) == counts


def test_check_reports_sample_counts_per_split():
    result = check_voc(SAMPLE_VOC_DIR, progress=False)
    assert result.problems == [] and result.absent == ["train_aug", "train_aug_search", "holdout"]
    expected = {"train": ["2007_000032"], "val": ["2007_000033"], "trainval": list(SAMPLE)}
    assert set(result.splits) == set(expected)
    for split, ids in expected.items():
        summary = result.splits[split]
        assert summary.images == len(ids)
        total: dict[int, int] = {}
        for image_id in ids:
            for value, count in SAMPLE[image_id][1].items():
                total[value] = total.get(value, 0) + count
        assert {value: int(count) for value, count in enumerate(summary.pixels) if count} == total


def test_check_cli_prints_table_and_exits_0_on_sample(capsys: pytest.CaptureFixture[str]):
    assert run(data_main, ["check", "--root", str(VOC_SAMPLE)]) == 0
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert lines[2].split() == ["pixels", "train", "val", "trainval"]
    assert lines[3].split() == ["images", "1", "1", "2"]
    assert "background   129,545  143,868   273,413" in output
    assert any(line.split() == ["person", "866", "0", "866"] for line in lines)
    assert any(line.split() == ["void", "(255)", "5,355", "8,195", "13,550"] for line in lines)
    assert "no problems found" in output


@pytest.mark.parametrize("form", ["parent of VOCdevkit", "VOCdevkit", "VOC2012", "env VOC_ROOT"])
def test_find_voc_dir_accepts_each_root_form(form: str, monkeypatch: pytest.MonkeyPatch):
    roots = {"parent of VOCdevkit": VOC_SAMPLE, "VOCdevkit": VOC_SAMPLE / "VOCdevkit", "VOC2012": SAMPLE_VOC_DIR}
    if form == "env VOC_ROOT":
        monkeypatch.setenv("VOC_ROOT", str(VOC_SAMPLE))
        assert find_voc_dir(None) == SAMPLE_VOC_DIR
    else:
        monkeypatch.delenv("VOC_ROOT", raising=False)
        assert find_voc_dir(roots[form]) == SAMPLE_VOC_DIR


def test_find_voc_dir_lists_paths_tried(tmp_path: Path):
    with pytest.raises(DataError) as error:
        find_voc_dir(tmp_path)
    for tried in (tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "VOC2012", tmp_path):
        assert str(tried) in str(error.value)


def test_find_voc_dir_without_root_or_env_says_how(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VOC_ROOT", raising=False)
    with pytest.raises(DataError, match="pass --data-root or set VOC_ROOT"):
        find_voc_dir(None)


def test_train_aug_reads_deeplab_list_format_and_aug_masks(voc_sample_copy: Path):
    aug = voc_sample_copy / "SegmentationClassAug"
    aug.mkdir()
    mask = np.zeros((281, 500), np.uint8)
    mask[:10] = 7
    png = PIL.Image.fromarray(mask)
    png.putpalette(VOC_PALETTE)
    png.save(aug / "2007_000032.png")
    (voc_sample_copy / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    assert read_split_ids(voc_sample_copy, "train_aug") == ["2007_000032"]
    assert value_counts(VOCSegmentation(voc_sample_copy, "train_aug")[0][1]) == {0: 281 * 500 - 5000, 7: 5000}


def test_grayscale_mask_is_read_as_class_ids(tmp_path: Path):
    path = tmp_path / "mask.png"
    PIL.Image.fromarray(np.array([[0, 3], [20, 255]], np.uint8)).save(path)  # mode L, no palette
    assert read_mask(path).tolist() == [[0, 3], [20, 255]]


def _truncate_jpeg(voc: Path) -> Path:
    path = voc / "JPEGImages/2007_000032.jpg"
    path.write_bytes(path.read_bytes()[:5000])
    return path


def _remove_mask(voc: Path) -> Path:
    path = voc / "SegmentationClass/2007_000032.png"
    path.unlink()
    return path


def _remove_image(voc: Path) -> Path:
    path = voc / "JPEGImages/2007_000032.jpg"
    path.unlink()
    return path


def _edit_mask(voc: Path, edit: Callable[[PIL.Image.Image], PIL.Image.Image]) -> Path:
    path = voc / "SegmentationClass/2007_000032.png"
    with PIL.Image.open(path) as png:
        edited = edit(png.copy())
    edited.save(path)
    return path


def _out_of_range(png: PIL.Image.Image) -> PIL.Image.Image:
    ids = np.asarray(png).copy()
    ids[0, :3] = [21, 30, 254]
    edited = PIL.Image.fromarray(ids)
    edited.putpalette(VOC_PALETTE)
    return edited


def _empty_split(voc: Path) -> Path:
    path = voc / "ImageSets/Segmentation/train.txt"
    path.write_text("\n")
    return path


BAD_FILES = {
    "corrupt jpeg": (_truncate_jpeg, "not a readable JPEG"),
    "missing mask": (_remove_mask, "not found"),
    "missing image": (_remove_image, "not found"),
    "wrong-size mask": (lambda voc: _edit_mask(voc, lambda png: png.resize((100, 80))), "100x80 but its image is 500x281"),
    "out-of-range values": (lambda voc: _edit_mask(voc, _out_of_range), "values 21, 30, 254"),
    "rgb mask": (lambda voc: _edit_mask(voc, lambda png: png.convert("RGB")), "must be a paletted"),
    "empty split file": (_empty_split, "lists no image ids"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_raises_data_error_naming_it(case: str, voc_sample_copy: Path):
    damage, problem = BAD_FILES[case]
    path = damage(voc_sample_copy)
    with pytest.raises(DataError) as error:
        VOCSegmentation(voc_sample_copy, "train")[0]
    message = str(error.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_check_lists_every_problem_in_process(voc_sample_copy: Path):
    bad_image = _truncate_jpeg(voc_sample_copy)
    bad_mask = voc_sample_copy / "SegmentationClass/2007_000033.png"
    bad_mask.write_bytes(b"not a png")
    (voc_sample_copy / "ImageSets/Segmentation/trainval.txt").write_text("2007_000032\n2007_000033\n2007_009999\n")
    problems = check_voc(voc_sample_copy, progress=False).problems
    assert len(problems) == 4, problems  # each file reported once, although trainval lists them again
    for file in (bad_image, bad_mask, voc_sample_copy / "JPEGImages/2007_009999.jpg",
                 voc_sample_copy / "SegmentationClass/2007_009999.png"):
        assert sum(str(file) in problem for problem in problems) == 1


def test_check_cli_process_exits_2_listing_problems(voc_sample_copy: Path):
    bad_image = _truncate_jpeg(voc_sample_copy)
    empty_split = _empty_split(voc_sample_copy)
    done = subprocess.run([sys.executable, "-m", "segtrain.data", "check", "--root", str(voc_sample_copy)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "2 problem(s):" in done.stdout
    assert str(bad_image) in done.stdout and str(empty_split) in done.stdout


def test_check_cli_bad_root_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run(data_main, ["check", "--root", str(tmp_path)], prog="segtrain.data") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "tried" in error and "--root" in error


def test_missing_files_fail_at_construction_with_count(voc_sample_copy: Path):
    (voc_sample_copy / "ImageSets/Segmentation/train.txt").write_text("2007_000032\nnope_1\nnope_2\n")
    with pytest.raises(DataError, match=r"nope_1\.jpg not found \(and 3 more missing files\)"):
        VOCSegmentation(voc_sample_copy, "train")


def test_missing_train_aug_says_what_to_do():
    with pytest.raises(DataError, match="train_aug.txt not found: train_aug needs SBD"):
        read_split_ids(SAMPLE_VOC_DIR, "train_aug")


def test_seeded_item_is_a_function_of_index_and_seed():
    dataset = VOCSegmentation(SAMPLE_VOC_DIR, "trainval", train_transform(64))
    torch.manual_seed(1)
    first = dataset[1, 42]
    state = torch.get_rng_state()
    torch.manual_seed(2)  # another worker, another global RNG state
    again = dataset[1, 42]
    other = dataset[1, 43]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    torch.manual_seed(1)
    dataset[1, 42]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left untouched


def test_per_sample_seeding_touches_only_the_cpu_generator(monkeypatch: pytest.MonkeyPatch):
    """With workers = 0 the samples load in the training process: seeding each one with torch.manual_seed
    would reset every CUDA generator too (dropout masks, the checkpointed CUDA RNG). The crops and flips
    stay those that torch.manual_seed gave."""
    dataset = VOCSegmentation(SAMPLE_VOC_DIR, "trainval", train_transform(64))
    expected = []
    for seed in (42, 43):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # how samples were seeded before
            expected.append(dataset.transform(*dataset.load(1)))

    def forbidden(*args, **kwargs):
        raise AssertionError("a sample's seeding reached beyond the CPU generator")

    monkeypatch.setattr(torch, "manual_seed", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    for seed, (image, mask) in zip((42, 43), expected):
        got_image, got_mask = dataset[1, seed]
        assert torch.equal(got_image, image) and torch.equal(got_mask, mask)
    assert not torch.equal(expected[0][0], expected[1][0])


def test_image_sizes_come_from_the_jpeg_headers(tmp_path: Path):
    dataset = VOCSegmentation(SAMPLE_VOC_DIR, "trainval")
    assert dataset.image_sizes == [size for size, _ in SAMPLE.values()]  # (height, width), as decoded
    not_a_jpeg = tmp_path / "broken.jpg"
    not_a_jpeg.write_bytes(b"not a JPEG at all")
    with pytest.raises(DataError, match=f"image {not_a_jpeg} is not a readable JPEG"):
        read_image_size(not_a_jpeg)
