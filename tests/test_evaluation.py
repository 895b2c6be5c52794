"""Evaluation: a prediction independent of batch mates and eval_batch_size, output stride 8 at eval,
multi-scale + flip, the void band, the protocol's name and file, and segtrain.evaluate's one-line errors.

Batch independence is exact in arithmetic, not in floating point: oneDNN convolves a batch
of one image with other kernels than a batch of several (and a plain tensor than a
channels-last one), so the logits differ in float32 rounding. Measured on the random
ResNet-50 below: at most 1.2e-5 for logits up to 3.9 (a relative 3e-6), where padding an
image beside a larger one, as evaluation once did, moves logits by tenths. So logits are
compared to within 1e-4 (absolute and relative) and the predictions must be identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

import segtrain.evaluation as evaluation
from hpo.report.stats import miou_from_counts
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data.labels import IGNORE_INDEX
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.transforms import to_device
from segtrain.data.voc import VOCSegmentation
from segtrain.engine import CHECKPOINT, train
from segtrain.errors import ConfigError
from segtrain.evaluate import main
from segtrain.evaluation import (
    PER_IMAGE_COUNTS,
    PRESETS,
    Protocol,
    evaluate_model,
    evaluate_run,
    load_run_model,
    predictions,
    same_size_batches,
)
from segtrain.metrics import ConfusionMatrix, read_per_image_counts
from tests.conftest import random_deeplab

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second thread gains nothing and spin-waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mixed_val(module_tmp) -> VOCSegmentation:
    """8 val images of up to 64 px: several sizes, both orientations, some sizes shared, as in VOC."""
    voc_dir = write_synthetic_voc(module_tmp("mixed"), train=2, val=8, size=64, seed=1)
    dataset = VOCSegmentation(voc_dir, "val")
    sizes = dataset.image_sizes
    assert 1 < len(set(sizes)) < len(sizes)  # images of different sizes, and batch mates of the same size
    return dataset


@pytest.fixture(scope="module")
def tiny_run(synthetic_voc, module_tmp) -> Path:
    """A run dir of one training step (OS 16, 4 val images), with its checkpoint."""
    run_dir = module_tmp("run")
    train(TrainConfig(data_root=str(synthetic_voc), train_split="train", val_split="val", pretrained=None,
                      crop_size=33, batch_size=2, epochs=0.25, eval_points=1, workers=0, device="cpu",
                      eval_batch_size=4), run_dir=run_dir)
    return run_dir


def scores_by_image(model: nn.Module, dataset: VOCSegmentation, **options) -> dict[int, torch.Tensor]:
    return {index: scores for indices, batch, _ in predictions(model, dataset, CPU, **options)
            for index, scores in zip(indices, batch)}


def assert_same_predictions(scores: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> None:
    assert scores.keys() == expected.keys()
    for index in expected:
        torch.testing.assert_close(scores[index], expected[index], rtol=1e-4, atol=1e-4)
        assert torch.equal(scores[index].argmax(0), expected[index].argmax(0)), index


def test_same_size_batches_group_equal_sizes_and_share_images_out_by_rank():
    sizes = [(3, 4), (4, 3), (3, 4), (3, 4), (4, 3), (2, 2), (3, 4)]
    assert same_size_batches(sizes, 2) == [[0, 2], [3, 6], [1, 4], [5]]
    assert same_size_batches(sizes, 8) == [[0, 2, 3, 6], [1, 4], [5]]
    assert same_size_batches(sizes, 2, rank=0, world_size=2) == [[0, 2], [6], [4]]
    assert same_size_batches(sizes, 2, rank=1, world_size=2) == [[1], [3], [5]]
    shares = [same_size_batches(sizes, 2, rank, 2) for rank in (0, 1)]
    assert sorted(index for share in shares for batch in share for index in batch) == list(range(len(sizes)))
    for share in shares:
        assert all(len({sizes[index] for index in batch}) == 1 and len(batch) <= 2 for batch in share)


def model_input(dataset: VOCSegmentation, index: int) -> torch.Tensor:
    """Image `index` of `dataset` as a batch of one, as evaluation hands it to the model."""
    image, mask = dataset[index]
    return to_device(image[None], mask[None], CPU)[0]


def test_an_images_prediction_does_not_depend_on_its_batch_mates(mixed_val):
    model = random_deeplab()
    with torch.inference_mode():  # each image alone, as a batch of one
        alone = {index: model(model_input(mixed_val, index))["out"][0] for index in range(len(mixed_val))}
    assert len(torch.cat([scores.argmax(0).flatten() for scores in alone.values()]).unique()) > 3
    for batch_size in (1, 8):
        assert_same_predictions(scores_by_image(model, mixed_val, batch_size=batch_size), alone)
    one, eight = (evaluate_model(model, mixed_val, CPU, batch_size=size) for size in (1, 8))
    assert one == eight

    # what evaluate did before: pad a batch to its largest image. The image-pooling branch then
    # averages over the padding, and the prediction changes: the check above would see it
    small, large = sorted(range(len(mixed_val)), key=lambda index: mixed_val.image_sizes[index])[::len(mixed_val) - 1]
    (height, width), (large_height, large_width) = mixed_val.image_sizes[small], mixed_val.image_sizes[large]
    padded = F.pad(model_input(mixed_val, small), (0, large_width - width, 0, large_height - height))
    with torch.inference_mode():
        beside_large = model(torch.cat([padded, model_input(mixed_val, large)]))["out"][0, :, :height, :width]
    assert not torch.equal(beside_large.argmax(0), alone[small].argmax(0))


class HalfResolution(nn.Module):
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": F.avg_pool2d(images, 2)}


class ConvolutionAndPooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 21, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.conv(features)
        return features + features.mean(dim=(2, 3), keepdim=True)


def TinySegmenter() -> DeepLabV3:
    """A DeepLabV3 (torchvision's class: backbone, head, upsampling) whose backbone halves the resolution and
    whose head is a convolution plus an image-pooling term: its output depends on the input's scale and on
    left-right flips, which is all the multi-scale test needs."""
    return DeepLabV3(HalfResolution(), ConvolutionAndPooling())


def test_multi_scale_and_flip_average_the_probabilities_at_the_input_size(mixed_val):
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    expected = {}
    with torch.inference_mode():
        for index in range(len(mixed_val)):
            image = model_input(mixed_val, index)
            height, width = image.shape[-2:]  # every synthetic side is even: 0.5 and 1.5 give whole pixels
            passes = []
            for size in ((height // 2, width // 2), (height, width), (height * 3 // 2, width * 3 // 2)):
                scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
                for logits in (model(scaled)["out"], torch.flip(model(torch.flip(scaled, [3]))["out"], [3])):
                    back = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                    passes.append(torch.softmax(back, dim=1)[0])
            expected[index] = torch.stack(passes).mean(dim=0)
    got = scores_by_image(model, mixed_val, scales=(1.5, 0.5, 1.0), flip=True, batch_size=8)
    assert_same_predictions(got, expected)
    single = scores_by_image(model, mixed_val, batch_size=8)
    assert any(not torch.equal(got[index].argmax(0), single[index].argmax(0)) for index in got)  # it matters


def test_under_autocast_the_logits_are_upsampled_and_compared_in_float32(mixed_val, monkeypatch):
    """CUDA autocast, played by the CPU's bfloat16 autocast: the network computes in bfloat16, but
    the scores evaluation takes the argmax of are float32 logits upsampled in float32. Upsampled in
    bfloat16 (the model's own forward under autocast) they come out coarser, and ties differ."""
    monkeypatch.setattr(evaluation, "autocast",
                        lambda dtype: torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext())
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    images = model_input(mixed_val, 0)
    scores = evaluation.predict(model, images, amp_dtype=torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_resolution = model.classifier(model.backbone(images)["out"])
        in_bfloat16 = model(images)["out"]
    assert low_resolution.dtype == torch.bfloat16 and in_bfloat16.dtype == torch.bfloat16  # autocast is on
    assert scores.dtype == torch.float32 and scores.shape == in_bfloat16.shape
    assert torch.equal(scores, F.interpolate(low_resolution.float(), size=images.shape[-2:], mode="bilinear",
                                             align_corners=False))
    assert len(scores.unique()) > 2 * len(in_bfloat16.unique())
    assert torch.equal(evaluation.predict(model, images), model(images)["out"])  # without autocast: the forward


def test_the_void_band_is_ignored_by_the_metric(synthetic_voc):
    matrix = ConfusionMatrix(21)
    void = 0
    for _, mask in VOCSegmentation(synthetic_voc, "val"):
        band = mask == IGNORE_INDEX
        void += int(band.sum())
        matrix.update(torch.where(band, 7, mask), mask)  # right everywhere but on the band: class 7, never shown
    scores = matrix.compute()
    assert void > 0
    assert scores.miou == 1.0 and scores.pixel_accuracy == 1.0 and scores.per_class_iou[7] is None


def test_protocol_names_presets_and_bad_scales():
    assert Protocol().for_run(16).name == "os16"
    assert PRESETS["os8"].for_run(16).name == "os8"
    assert PRESETS["ms_flip"].for_run(16).name == "os16-ms0.5-0.75-1-1.25-1.5-1.75-flip"
    assert PRESETS["os8_ms_flip"].for_run(16).name == "os8-ms0.5-0.75-1-1.25-1.5-1.75-flip"
    assert evaluation.scaled_size((27, 36), 0.5) == (14, 18)  # rounded half up
    assert Protocol(scales=(1, 0.5, 1.0), flip=True).for_run(8).to_dict() == {
        "name": "os8-ms0.5-1-flip", "output_stride": 8, "scales": [0.5, 1.0], "flip": True}
    for scales in ((1.0, 0.0), (-0.5,), ()):
        with pytest.raises(ConfigError) as error:
            Protocol(scales=scales)
        assert error.value.key == "scales"


def test_output_stride_8_at_eval_on_an_os16_checkpoint(tiny_run):
    trained = torch.load(tiny_run / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    for stride, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        model, cfg, step = load_run_model(tiny_run, output_stride=stride if stride == 8 else None)
        assert (cfg.output_stride, step) == (16, 1)
        features = model.eval().backbone(torch.zeros(1, 3, 64, 48))["out"]
        assert features.shape[-2:] == (64 // stride, 48 // stride)
        aspp = model.classifier[0]
        assert tuple(aspp.convs[branch][0].dilation[0] for branch in (1, 2, 3)) == rates
        assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())


def test_cli_evaluates_a_run_like_training_did_and_records_the_protocol(tiny_run, synthetic_voc, capsys):
    assert run(main, ["--run", str(tiny_run), "--eval-batch-size", "3"]) == 0
    line = capsys.readouterr().out
    result = json.loads((tiny_run / "eval-os16.json").read_text())
    trained = json.loads((tiny_run / "result.json").read_text())
    assert result["miou"] == trained["final_miou"] and trained["eval_protocol"] == "os16"  # the same evaluator
    assert result["per_class_iou"] == trained["per_class_iou"] and len(result["per_class_iou"]) == 21
    assert None in result["per_class_iou"]  # classes absent from ground truth and prediction
    assert result["protocol"] == {"name": "os16", "output_stride": 16, "scales": [1.0], "flip": False}
    assert (result["split"], result["images"], result["checkpoint_step"]) == ("val", 4, 1)
    assert result["seconds"] > 0 and 0 <= result["pixel_accuracy"] <= 1
    assert line.count("\n") == 1 and f"val mIoU {result['miou']:.4f}" in line and "eval-os16.json" in line
    # per image and class TP, FP, FN beside it, the same as training's own final evaluation kept
    assert result["per_image_counts"] == str(tiny_run / "eval-os16.npz")
    ids, counts = read_per_image_counts(tiny_run / "eval-os16.npz")
    own_ids, own_counts = read_per_image_counts(tiny_run / PER_IMAGE_COUNTS)
    assert ids == own_ids == VOCSegmentation(synthetic_voc, "val").ids
    assert np.array_equal(counts, own_counts) and counts.shape == (4, 21, 3)
    assert float(miou_from_counts(counts.sum(axis=0))) == pytest.approx(result["miou"], abs=1e-12)

    assert run(main, ["--run", str(tiny_run), "--output-stride", "8", "--flip"]) == 0
    flipped = json.loads((tiny_run / "eval-os8-flip.json").read_text())
    assert flipped["protocol"] == {"name": "os8-flip", "output_stride": 8, "scales": [1.0], "flip": True}


def test_evaluate_run_reuses_a_result_of_the_same_checkpoint_and_protocol(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    first = evaluate_run(tiny_run, PRESETS["ss"], out=out)

    class Evaluated(Exception):
        pass

    def evaluate_model(*args, **kwargs):
        raise Evaluated

    monkeypatch.setattr(evaluation, "evaluate_model", evaluate_model)
    assert evaluate_run(tiny_run, PRESETS["ss"], out=out, reuse=True) == first
    with pytest.raises(Evaluated):  # another protocol is evaluated anew
        evaluate_run(tiny_run, PRESETS["os8"], out=out, reuse=True)
    out.with_suffix(".npz").unlink()
    with pytest.raises(Evaluated):  # and so is a result whose per-image counts are gone
        evaluate_run(tiny_run, PRESETS["ss"], out=out, reuse=True)


def copy_run(tiny_run: Path, target: Path, checkpoint: bool = True, **config_changes) -> Path:
    target.mkdir()
    config = {**json.loads((tiny_run / "config.json").read_text()), **config_changes}
    (target / "config.json").write_text(json.dumps(config))
    if checkpoint:
        os.symlink(tiny_run / CHECKPOINT, target / CHECKPOINT)
    return target


def test_bad_input_is_one_line_naming_the_problem(tiny_run, tmp_path, capsys):
    def fails(argv: list[str], words: str) -> None:
        assert run(main, argv, prog="segtrain.evaluate") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, err

    fails(["--run", str(tmp_path / "nothing")], f"{tmp_path / 'nothing'}: no such run dir")
    fails(["--run", str(copy_run(tiny_run, tmp_path / "bare", checkpoint=False))], "checkpoint.pt not found")
    fails(["--run", str(tiny_run), "--scales", "1", "0"], "--scales: must be > 0, got 0")
    fails(["--run", str(copy_run(tiny_run, tmp_path / "other", backbone="resnet101"))],
          "made by another run than")
    fails(["--run", str(copy_run(tiny_run, tmp_path / "plus", model="deeplabv3plus"))],
          "(model 'deeplabv3' vs 'deeplabv3plus', checkpoint vs config)")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial, ignore=shutil.ignore_patterns(CHECKPOINT, "eval-*"))
    state = torch.load(tiny_run / CHECKPOINT, map_location="cpu", weights_only=True)
    torch.save({**state, "model": dict(list(state["model"].items())[:5]), "optimizer": {}}, partial / CHECKPOINT)
    fails(["--run", str(partial)], "does not fit the resnet50 model")
