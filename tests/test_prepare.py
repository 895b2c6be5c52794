"""`segtrain.data prepare` on a synthetic VOC tree plus a fake SBD tree with real .mat files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import PIL.Image
import pytest
import scipy.io
import scipy.sparse
import torchvision.datasets.utils
from torchvision.datasets import SBDataset

from segtrain.cli import run
from segtrain.data import prepare as prepare_module
from segtrain.data.__main__ import PROG, main
from segtrain.data.check import check_voc
from segtrain.data.labels import VOC_PALETTE
from segtrain.data.prepare import prepare, read_sbd_mask
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import VOCSegmentation, image_path, read_image_size, read_split_ids, split_holdout
from segtrain.errors import DataError, UserError

SIZE = 32  # the longest side of the synthetic images; their shapes vary (see image_area)


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """One `cls/<id>.mat` as SBD ships it: a 1x1 struct GTcls with Boundaries (20x1 cell of sparse
    matrices), Segmentation (HxW uint8 class ids) and CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for index in range(20):
        boundaries[index, 0] = scipy.sparse.csc_matrix((segmentation == index + 1).astype(np.float64))
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)]).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": segmentation,
                                      "CategoriesPresent": present}})


@dataclass
class Trees:
    root: Path
    voc_dir: Path
    sbd_dir: Path
    sbd_masks: dict[str, np.ndarray]
    voc_train: list[str]
    voc_val: list[str]
    train_aug: list[str]  # what prepare must write
    overlap_id: str  # in VOC train and in SBD, with a different mask


def write_voc(out_dir: Path) -> Path:
    """A synthetic VOC tree as the VOC archive ships it: no SegmentationClassAug/, no train_aug.txt."""
    voc_dir = write_synthetic_voc(out_dir, train=3, val=2, size=SIZE, classes=3)
    shutil.rmtree(voc_dir / "SegmentationClassAug")
    (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    return voc_dir


def write_sbd(sbd_dir: Path, voc_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """SBD-only ids (with a JPEG each), one VOC train id, one VOC val id, one id with no JPEG in VOC."""
    voc_train = read_split_ids(voc_dir, "train")
    voc_val = read_split_ids(voc_dir, "val")
    splits = {"train": ["2008_000002", "2008_000001", voc_train[0], voc_val[0]],
              "val": ["2009_000003", "2010_999999"]}
    (sbd_dir / "cls").mkdir(parents=True)
    (sbd_dir / "img").mkdir()
    rng = np.random.default_rng(0)
    masks = {}
    for image_id in splits["train"] + splits["val"]:
        # each mask the size of the JPEG it goes with: its own, or the copy of voc_train[1] made below
        source = image_id if image_id in voc_train + voc_val else voc_train[1]
        masks[image_id] = rng.integers(0, 21, read_image_size(image_path(voc_dir, source)), dtype=np.uint8)
        write_sbd_mat(sbd_dir / "cls" / f"{image_id}.mat", masks[image_id])
        jpeg = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        if image_id.startswith("20") and image_id != "2010_999999":
            shutil.copy(voc_dir / "JPEGImages" / f"{voc_train[1]}.jpg", jpeg)
        if jpeg.exists():
            shutil.copy(jpeg, sbd_dir / "img" / jpeg.name)
    for split, ids in splits.items():
        (sbd_dir / f"{split}.txt").write_text("".join(f"{image_id}\n" for image_id in ids))
    return masks, splits


@pytest.fixture
def trees(tmp_path) -> Trees:
    voc_dir = write_voc(tmp_path)
    sbd_dir = tmp_path / "benchmark_RELEASE" / "dataset"
    masks, _ = write_sbd(sbd_dir, voc_dir)
    voc_train, voc_val = read_split_ids(voc_dir, "train"), read_split_ids(voc_dir, "val")
    expected = sorted({"2008_000001", "2008_000002", "2009_000003", *voc_train})
    return Trees(tmp_path, voc_dir, sbd_dir, masks, voc_train, voc_val, expected, voc_train[0])


def image_area(trees: Trees, image_id: str) -> int:
    height, width = read_image_size(image_path(trees.voc_dir, image_id))
    return height * width


def aug_mask(trees: Trees, image_id: str) -> PIL.Image.Image:
    return PIL.Image.open(trees.voc_dir / "SegmentationClassAug" / f"{image_id}.png")


def test_fake_sbd_files_read_like_the_real_ones_in_torchvision(trees):
    """torchvision's SBDataset (the reference reader of SBD) gets back what the test wrote."""
    dataset = SBDataset(trees.sbd_dir, image_set="train", mode="segmentation")
    _, target = dataset[0]
    first = (trees.sbd_dir / "train.txt").read_text().split()[0]
    np.testing.assert_array_equal(np.asarray(target), trees.sbd_masks[first])
    np.testing.assert_array_equal(read_sbd_mask(trees.sbd_dir / "cls" / f"{first}.mat"), trees.sbd_masks[first])
    boundaries = SBDataset(trees.sbd_dir, image_set="train", mode="boundaries")[0][1]
    np.testing.assert_array_equal(boundaries[4], trees.sbd_masks[first] == 5)


def test_prepare_builds_train_aug(trees):
    report = prepare(trees.root, progress=False)

    assert read_split_ids(trees.voc_dir, "train_aug") == trees.train_aug
    assert (trees.voc_dir / "ImageSets/Segmentation/train_aug.txt").read_text() == \
        "".join(f"{image_id}\n" for image_id in trees.train_aug)
    assert not set(trees.train_aug) & set(trees.voc_val)
    written = sorted(path.stem for path in (trees.voc_dir / "SegmentationClassAug").iterdir())
    assert written == trees.train_aug  # nothing for val ids or the id without a JPEG
    for image_id in trees.train_aug:
        with aug_mask(trees, image_id) as png:
            assert png.mode == "P" and png.getpalette() == VOC_PALETTE
            if image_id in trees.voc_train:  # VOC's own mask, also over SBD's for the overlapping id
                voc_mask = trees.voc_dir / "SegmentationClass" / f"{image_id}.png"
                assert (trees.voc_dir / "SegmentationClassAug" / f"{image_id}.png").read_bytes() == \
                    voc_mask.read_bytes()
            else:
                np.testing.assert_array_equal(np.asarray(png), trees.sbd_masks[image_id])
    with aug_mask(trees, trees.overlap_id) as png:
        assert (np.asarray(png) != trees.sbd_masks[trees.overlap_id]).any()
        assert (np.asarray(png) == 255).any()  # VOC's void outlines survive

    assert (report.converted, report.copied, report.skipped) == (3, 3, 0)
    assert (report.train_aug, report.val, report.excluded_val, report.excluded_no_image) == (6, 2, 1, 1)
    assert report.voc_dir == trees.voc_dir and report.downloaded == ()
    dataset = VOCSegmentation(trees.voc_dir, "train_aug")
    assert len(dataset) == 6
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape[1:] == mask.shape and max(mask.shape) <= SIZE


def test_prepare_cuts_train_aug_into_search_and_holdout(trees):
    report = prepare(trees.root, progress=False, holdout=2)
    search, holdout = (read_split_ids(trees.voc_dir, split) for split in ("train_aug_search", "holdout"))
    assert report.holdout == len(holdout) == 2 and len(search) == 4
    assert not set(search) & set(holdout) and sorted(search + holdout) == trees.train_aug
    assert search == [i for i in trees.train_aug if i in search]  # train_aug's order
    again = split_holdout(trees.train_aug, 2)  # a fixed seed: every lab holds out the same ids
    assert again == (search, holdout)
    check = check_voc(trees.voc_dir, progress=False)
    assert check.problems == [] and check.splits["holdout"].images == 2
    assert "holdout 2 to select on" in report.summary()


def test_default_holdout_is_a_tenth_of_a_small_train_aug_and_a_too_large_one_converts_nothing(trees):
    assert prepare(trees.root, progress=False).holdout == 1  # 6 ids: min(1,000, 6 // 10) -> at least 1
    shutil.rmtree(trees.voc_dir / "SegmentationClassAug")
    with pytest.raises(DataError, match="a holdout of 6 images leaves none of train_aug's 6"):
        prepare(trees.root, progress=False, holdout=6)
    assert not (trees.voc_dir / "SegmentationClassAug").exists()


def test_check_reports_a_holdout_that_shares_ids_with_the_search_split(trees):
    prepare(trees.root, progress=False, holdout=2)
    search_file = trees.voc_dir / "ImageSets/Segmentation/train_aug_search.txt"
    holdout = read_split_ids(trees.voc_dir, "holdout")
    search_file.write_text(search_file.read_text() + f"{holdout[0]}\n")
    problems = check_voc(trees.voc_dir, progress=False).problems
    assert len(problems) == 1
    assert f"lists 1 id ({holdout[0]}) that train_aug_search.txt lists too" in problems[0]


def test_second_run_changes_nothing(trees):
    prepare(trees.root, progress=False)
    before = {path: path.stat().st_mtime_ns for path in (trees.voc_dir / "SegmentationClassAug").iterdir()}
    report = prepare(trees.root, progress=False)
    assert (report.converted, report.copied, report.skipped, report.train_aug) == (0, 0, 6, 6)
    assert {path: path.stat().st_mtime_ns for path in (trees.voc_dir / "SegmentationClassAug").iterdir()} == before


def test_interrupted_run_leaves_whole_files_and_resumes(trees, monkeypatch):
    calls = []

    def interrupted_on_second_mask(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return read_sbd_mask(path)

    monkeypatch.setattr(prepare_module, "read_sbd_mask", interrupted_on_second_mask)
    with pytest.raises(KeyboardInterrupt):
        prepare(trees.root, progress=False)
    monkeypatch.undo()
    aug_dir = trees.voc_dir / "SegmentationClassAug"
    assert not (trees.voc_dir / "ImageSets/Segmentation/train_aug.txt").exists()
    assert [path.name for path in aug_dir.iterdir()] == ["2008_000001.png"]  # whole files only
    stray = aug_dir / ".2008_000002.png.x1y2z3.tmp"  # as a SIGKILL during a write would leave it
    stray.write_bytes(b"half a png")
    (aug_dir / f"{trees.overlap_id}.png").write_bytes((aug_dir / "2008_000001.png").read_bytes())  # a foreign mask

    report = prepare(trees.root, progress=False)
    assert (report.converted, report.copied, report.skipped) == (2, 3, 1)
    assert not stray.exists()
    assert read_split_ids(trees.voc_dir, "train_aug") == trees.train_aug
    assert (aug_dir / f"{trees.overlap_id}.png").read_bytes() == \
        (trees.voc_dir / "SegmentationClass" / f"{trees.overlap_id}.png").read_bytes()


@pytest.mark.parametrize("remove, named", [
    ("VOCdevkit", "VOCdevkit/VOC2012 not found: unpack VOCtrainval_11-May-2012.tar into"),
    ("benchmark_RELEASE", "benchmark_RELEASE/dataset not found: unpack benchmark.tgz into"),
])
def test_missing_tree_is_one_line_naming_it_and_download(trees, remove, named):
    shutil.rmtree(trees.root / remove)
    with pytest.raises(DataError) as error:
        prepare(trees.root, progress=False)
    message = str(error.value)
    assert named in message and "--download" in message and "\n" not in message


def test_bad_sbd_files_name_the_file(trees):
    (trees.sbd_dir / "cls" / "2008_000001.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"cls/2008_000001\.mat is not an SBD class file"):
        prepare(trees.root, progress=False)
    bad_values = np.full(trees.sbd_masks["2008_000001"].shape, 40, np.uint8)
    write_sbd_mat(trees.sbd_dir / "cls" / "2008_000001.mat", bad_values)
    with pytest.raises(DataError, match=r"2008_000001\.mat: GTcls\.Segmentation holds \[40\]"):
        prepare(trees.root, progress=False)
    (trees.sbd_dir / "val.txt").unlink()
    with pytest.raises(DataError, match=r"dataset/val\.txt not found"):
        prepare(trees.root, progress=False)
    assert not (trees.voc_dir / "ImageSets/Segmentation/train_aug.txt").exists()


VOC_URL = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"


def test_download_fetches_torchvisions_archives_and_unpacks_them_whole(tmp_path, monkeypatch):
    calls = []

    def fake_download_and_extract_archive(url, download_root, extract_root=None, filename=None, md5=None,
                                          remove_finished=False):
        """Unpacks what the real archive holds, as torchvision would, into extract_root."""
        calls.append((url, Path(download_root), filename, md5))
        extract_root = Path(extract_root)
        if filename == "VOCtrainval_11-May-2012.tar":
            write_voc(extract_root)
        else:
            write_sbd(extract_root / "benchmark_RELEASE" / "dataset", tmp_path / "VOCdevkit" / "VOC2012")
            (extract_root / "benchmark_RELEASE" / "benchmark_code_RELEASE").mkdir()

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download_and_extract_archive)
    report = prepare(tmp_path, download=True, progress=False)
    assert calls == [(VOC_URL, tmp_path, "VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd"),
                     (SBD_URL, tmp_path, "benchmark.tgz", "82b4d87ceb2ed10f6038a1cba92111cb")]
    assert report.downloaded == ("VOC 2012 trainval", "SBD") and report.train_aug == 6
    assert f"downloaded and unpacked VOC 2012 trainval and SBD (the archives stay in {tmp_path}" in report.summary()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["VOCdevkit", "benchmark_RELEASE"]  # no staging left

    calls.clear()
    assert prepare(tmp_path, download=True, progress=False).downloaded == ()
    assert calls == []  # both trees are in place: nothing fetched again


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as error:
        prepare(tmp_path, download=True, progress=False)
    message = str(error.value)
    assert message.startswith(f"cannot download {VOC_URL} ([Errno -3] Temporary failure in name resolution)")
    assert f"put VOCtrainval_11-May-2012.tar in {tmp_path}" in message and "\n" not in message


def test_archive_without_the_expected_tree_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def unpacks_elsewhere(url, download_root, extract_root=None, **kwargs):
        (Path(extract_root) / "something_else").mkdir(parents=True)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", unpacks_elsewhere)
    with pytest.raises(DataError, match=r"VOCtrainval_11-May-2012\.tar does not hold VOCdevkit/VOC2012/: delete it"):
        prepare(tmp_path, download=True, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_counts(trees):
    done = subprocess.run([sys.executable, "-m", "segtrain.data", "prepare", "--root", str(trees.root)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "converted 3 SBD masks, copied 3 VOC train masks, skipped 0 already in place" in done.stdout
    assert "train_aug 6 images, val 2 images" in done.stdout
    assert "train_aug_search 5 images to train on, holdout 1 to select on" in done.stdout


def test_cli_missing_input_exits_2_with_one_line(tmp_path, capsys):
    assert run(main, ["prepare", "--root", str(tmp_path)], prog=PROG) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'VOCdevkit' / 'VOC2012'} not found" in err
    assert run(main, ["prepare", "--root", str(tmp_path), "--holdout", "0"], prog=PROG) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--holdout: must be a whole number >= 1, got '0'" in err


def test_check_after_prepare_finds_no_problems(trees):
    prepare(trees.root, progress=False)
    result = check_voc(trees.voc_dir, progress=False)
    assert result.problems == [] and result.absent == []
    assert result.splits["train_aug"].images == 6
    assert result.splits["train_aug"].pixels.sum() == sum(image_area(trees, i) for i in trees.train_aug)


def test_check_reports_train_aug_gaps_and_val_overlap_one_line_each(trees):
    prepare(trees.root, progress=False)
    aug_dir = trees.voc_dir / "SegmentationClassAug"
    for image_id in ("2008_000001", "2008_000002"):
        (aug_dir / f"{image_id}.png").unlink()
    (trees.voc_dir / "JPEGImages" / "2009_000003.jpg").unlink()  # an SBD-only id: no other split lists it
    for image_id in trees.voc_val:  # as in the 12,031-mask SegmentationClassAug archives, which include val
        shutil.copy(trees.voc_dir / "SegmentationClass" / f"{image_id}.png", aug_dir)
    list_file = trees.voc_dir / "ImageSets/Segmentation/train_aug.txt"
    list_file.write_text(list_file.read_text() + "".join(f"{image_id}\n" for image_id in trees.voc_val))

    result = check_voc(trees.voc_dir, progress=False)
    val = ", ".join(sorted(trees.voc_val))
    fix = f": rebuild it with `python -m segtrain.data prepare --root {trees.root}`"
    assert result.problems == [
        f"{list_file} lists 2 ids (2008_000001, 2008_000002) with no file in {aug_dir}/{fix}",
        f"{list_file} lists 1 id (2009_000003) with no file in {trees.voc_dir / 'JPEGImages'}/{fix}",
        f"{list_file} lists 2 ids ({val}) that val.txt lists too (training on val images inflates val mIoU; "
        f"train_aug must leave out every val id){fix}",
        f"train_aug_search.txt and holdout.txt together leave out 2 ids ({val}) of {list_file}: rebuild them "
        f"with `python -m segtrain.data prepare --root {trees.root}`",
    ]
    summary = result.splits["train_aug"]
    assert summary.images == 8  # and the 5 ids with both files are read:
    assert summary.pixels.sum() == sum(image_area(trees, i) for i in trees.voc_train + trees.voc_val)


def test_check_cli_without_aug_masks_exits_2_with_a_count(trees, capsys):
    prepare(trees.root, progress=False)
    shutil.rmtree(trees.voc_dir / "SegmentationClassAug")
    assert run(main, ["check", "--root", str(trees.root)], prog=PROG) == 2
    output = capsys.readouterr().out
    shown = ", ".join(trees.train_aug[:5])
    assert "1 problem(s):" in output
    assert f"lists 6 ids ({shown}, ...) with no file in {trees.voc_dir / 'SegmentationClassAug'}/" in output
