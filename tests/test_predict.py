"""segtrain.predict on the two real VOC images: VOC-format masks, overlays, the protocol flags, bad images, and
a model trained for a few steps on them predicting their majority class."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from conftest import VOC_SAMPLE
from search_helpers import REPO, python_path_env

from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data.labels import NUM_CLASSES, VOC_PALETTE
from segtrain.engine import CHECKPOINT, train
from segtrain.predict import main

VOC_DIR = VOC_SAMPLE / "VOCdevkit" / "VOC2012"
IMAGES = VOC_DIR / "JPEGImages"
IDS = ("2007_000032", "2007_000033")


@pytest.fixture(scope="module")
def trained_run(module_tmp):
    """A ResNet-50 from scratch, 10 steps on the two images (crop 65, batch 2): what it learns first is the
    masks' majority class, background (91% and 79% of their pixels)."""
    run_dir = module_tmp("predict") / "run"
    train(TrainConfig(data_root=str(VOC_SAMPLE), train_split="trainval", val_split="val", pretrained=None,
                      crop_size=65, batch_size=2, epochs=10.0, eval_points=1, workers=0, device="cpu"), run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def predicted(trained_run, module_tmp):
    """`--run RUN JPEGImages/ --overlay`: the output dir."""
    out = module_tmp("predicted")
    assert run(main, ["--run", str(trained_run), str(IMAGES), "--out", str(out), "--overlay"]) == 0
    return out


@pytest.mark.parametrize("image_id", IDS)
def test_masks_are_voc_segmentation_class_pngs_the_size_of_their_image(predicted, image_id):
    with PIL.Image.open(predicted / f"{image_id}.png") as mask, PIL.Image.open(IMAGES / f"{image_id}.jpg") as image:
        assert mask.format == "PNG" and mask.mode == "P"
        assert mask.size == image.size
        assert mask.getpalette()[:3 * 256] == VOC_PALETTE
        assert np.array(mask).max() < NUM_CLASSES
    with PIL.Image.open(VOC_DIR / "SegmentationClass" / f"{image_id}.png") as truth:  # VOC's own: same palette
        assert truth.getpalette()[:3 * 256] == VOC_PALETTE


@pytest.mark.parametrize("image_id", IDS)
def test_a_few_steps_of_training_predict_the_majority_class_far_better_than_chance(predicted, image_id):
    with PIL.Image.open(predicted / f"{image_id}.png") as mask, \
            PIL.Image.open(VOC_DIR / "SegmentationClass" / f"{image_id}.png") as truth:
        guess, labels = np.array(mask), np.array(truth)
    majority = np.bincount(labels[labels != 255]).argmax()
    assert majority == 0
    recall = (guess[labels == majority] == majority).mean()
    assert recall > 0.9  # a guess among 21 classes finds 1/21 of them
    accuracy = (guess == labels)[labels != 255].mean()
    assert accuracy > 0.75  # chance: 1/21


def test_overlay_is_the_image_above_a_legend(predicted):
    with PIL.Image.open(predicted / "2007_000032_overlay.jpg") as overlay, \
            PIL.Image.open(IMAGES / "2007_000032.jpg") as image:
        assert overlay.format == "JPEG" and overlay.width == image.width and overlay.height > image.height
        pixels, original = np.asarray(overlay, dtype=float), np.asarray(image, dtype=float)
    # background is left as it is (JPEG noise aside); the legend strip below is mostly white
    assert np.abs(pixels[:image.height] - original).mean() < 8
    assert (pixels[image.height:] > 200).mean() > 0.8


def test_checkpoint_alone_with_the_protocol_flags_and_a_missing_image(trained_run, tmp_path, capsys, caplog):
    checkpoint = tmp_path / "model.pt"
    shutil.copy(trained_run / CHECKPOINT, checkpoint)
    missing, broken = tmp_path / "gone.jpg", tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = run(main, ["--checkpoint", str(checkpoint), str(missing), str(IMAGES / "2007_000033.jpg"), str(broken),
                      "--out", str(out), "--scales", "0.5", "--flip", "--output-stride", "8"])
    assert code == 2
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]  # stderr, outside pytest
    assert logged == [f"{missing}: no such image file", f"{broken}: not a readable image (not an image file)"]
    (line,) = capsys.readouterr().err.splitlines()
    assert "2 of 3 images could not be read" in line
    assert sorted(p.name for p in out.iterdir()) == ["2007_000033.png"]  # the readable one is still written
    with PIL.Image.open(out / "2007_000033.png") as mask:
        assert mask.size == (500, 366)


def test_bad_flags_and_inputs_are_one_line(trained_run, tmp_path, capsys):
    assert run(main, ["--run", str(tmp_path / "nope"), str(IMAGES), "--out", str(tmp_path)]) == 2
    assert run(main, ["--run", str(trained_run), str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # no images
    assert run(main, ["--run", str(trained_run), "--checkpoint", "x.pt", str(IMAGES), "--out", "o"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "no such run dir" in lines[0] and "no images" in lines[1] and "not allowed" in lines[2]


def test_a_batch_job_log_says_how_far_prediction_got(trained_run, tmp_path):
    """stderr to a file, as under Slurm or nohup: a plain line per image, with elapsed time and time left."""
    log = tmp_path / "log"
    with log.open("w") as stderr:
        done = subprocess.run([sys.executable, "-m", "segtrain.predict", "--run", str(trained_run), str(IMAGES),
                               "--out", str(tmp_path / "out")], stderr=stderr, stdout=subprocess.PIPE, text=True,
                              env=python_path_env(), cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, log.read_text()
    lines = [line for line in log.read_text().splitlines() if line.startswith("predict:")]
    assert [line.split(",")[0] for line in lines] == ["predict: 1/2 images", "predict: 2/2 images"]
    assert "elapsed" in lines[0] and "left" in lines[0] and "elapsed" in lines[1]
    assert "2 masks in" in done.stdout
