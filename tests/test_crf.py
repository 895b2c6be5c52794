"""The dense CRF (segtrain.crf): it moves labels to colour edges, the pool returns what one process does in
the order given, and the crf protocols score a run with it (or say in one line which extra is missing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segtrain.crf as crf
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.transforms import eval_transform, to_device
from segtrain.data.voc import VOCSegmentation
from segtrain.engine import CHECKPOINT
from segtrain.evaluate import main
from segtrain.evaluation import PRESETS, evaluate_run, load_run_model, predict
from segtrain.metrics import ConfusionMatrix
from tests.conftest import random_deeplab


def two_regions(width: int = 40, height: int = 24, edge: int = 24, believed: int = 16, seed: int = 0):
    """A photo whose left `edge` columns are red and the rest blue (mild noise), and a network's belief
    (probability 0.65) that class 1 stops at column `believed` instead."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :edge] = (200, 30, 30)
    image[:, edge:] = (30, 30, 200)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    probabilities = np.full((3, height, width), 0.05, np.float32)
    probabilities[1, :, :believed], probabilities[2, :, :believed] = 0.65, 0.30
    probabilities[2, :, believed:], probabilities[1, :, believed:] = 0.65, 0.30
    truth = np.where(np.arange(width) < edge, 1, 2)[None].repeat(height, 0)
    return image, probabilities, truth


def test_the_crf_moves_labels_to_the_colour_edge():
    image, probabilities, truth = two_regions()
    before = (probabilities.argmax(0) != truth).mean()
    labels = crf.refine(image, probabilities)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert before == pytest.approx(8 / 40)  # columns 16-23 wrong
    assert (labels != truth).mean() < before / 4, (labels != truth).mean()


def test_deeplab_v2_settings():
    assert crf.DEEPLAB_V2 == crf.CRFSettings(iterations=10, bilateral_weight=4, bilateral_xy_std=67,
                                             bilateral_rgb_std=3, gaussian_weight=3, gaussian_xy_std=1)


def test_the_pool_gives_one_process_labels_in_the_order_given():
    items = [(k, *two_regions(width=40 + 4 * k, edge=20 + k, believed=14 + 2 * k, seed=k)[:2]) for k in range(5)]
    expected = [(k, crf.refine(image, probabilities)) for k, image, probabilities in items]
    with crf.Refiner(processes=2) as refiner:
        got = list(refiner.labels(iter(items)))  # a window of 4: the fifth waits for the first
    assert [k for k, _ in got] == [0, 1, 2, 3, 4]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected))


@pytest.fixture(scope="module")
def crf_run(synthetic_voc, module_tmp):
    """A run dir holding conftest's random DeepLabV3 (its predictions vary from pixel to pixel, as an untrained
    model's would not) as its checkpoint."""
    run_dir = module_tmp("crf-run")
    cfg = TrainConfig(data_root=str(synthetic_voc), train_split="train", val_split="val", pretrained=None,
                      workers=0, device="cpu", eval_batch_size=4)
    (run_dir / "config.json").write_text(cfg.to_json())
    torch.save({"config": cfg.to_dict(), "model": random_deeplab().state_dict(), "step": 1}, run_dir / CHECKPOINT)
    return run_dir


def test_the_crf_protocol_scores_the_refined_average(crf_run, synthetic_voc):
    result = evaluate_run(crf_run, PRESETS["crf"])
    assert result["protocol"] == {"name": "os16-crf", "output_stride": 16, "scales": [1.0], "flip": False,
                                  "crf": True}
    assert (crf_run / "eval-os16-crf.json").exists() and result["crf_settings"]["iterations"] == 10
    model, _, _ = load_run_model(crf_run)
    matrix = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    dataset = VOCSegmentation(synthetic_voc, "val", eval_transform())
    for index in range(len(dataset)):  # by hand: softmax at the image's size, refined, scored
        photo, mask = dataset[index]  # uint8, as the loader hands them over
        inputs, mask = to_device(photo[None], mask[None], torch.device("cpu"))
        probabilities = predict(model.eval(), inputs, probabilities=True)[0].numpy()
        matrix.update(torch.from_numpy(crf.refine(photo.permute(1, 2, 0).numpy(), probabilities))[None], mask)
    assert result["miou"] == matrix.compute().miou
    assert result["miou"] != evaluate_run(crf_run, PRESETS["ss"])["miou"]  # the CRF changed labels


def test_without_the_extra_the_protocol_says_which_to_install(crf_run, monkeypatch, capsys):
    monkeypatch.setattr(crf, "available", lambda: False)
    assert run(main, ["--run", str(crf_run), "--crf"], prog="segtrain.evaluate") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[crf]'" in err and "Traceback" not in err
