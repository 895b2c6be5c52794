"""Decode + training-transform throughput per loader worker: segtrain's pipeline vs a PIL reference.

At crop 513 a GPU trains DeepLabV3-R50 at a few hundred images/s (docs/performance.md's
estimate: ~200 on an A100, ~390 on an H100), and every one of those images is decoded,
rescaled, padded, cropped and flipped by a CPU core in a DataLoader worker first. This
measures images/s per core (one process, one thread) for

- segtrain: `VOCSegmentation` (JPEG via torchvision.io/libjpeg, PNG palette indices
  via PIL) + `train_transform` (transforms.v2 on uint8 tensors, uint8 out: the
  conversion to float and the normalisation run on the device, transforms.to_device);
- reference: the style of torchvision's references/segmentation (PIL decode, PIL
  resize, pad, crop, flip, then to tensor and normalise in the worker), doing the same
  augmentations with the same random draws, so both resize, pad and crop alike;
- segtrain as it was: the same, with float32 + normalisation in the worker,

on 500x375 JPEG + paletted PNG pairs (VOC's typical size), and says how many loader
workers a GPU needs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TF
from common import (
    ForkedWorker,
    interleaved,
    machine,
    median,
    parse_args,
    print_table,
    result,
    spread,
    timed,
    write_voc_pairs,
)
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from segtrain.data.labels import IGNORE_INDEX
from segtrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MEAN_PIXEL, train_transform
from segtrain.data.voc import VOCSegmentation, read_image, read_mask

GPU_IMAGES_PER_SECOND = 390  # DeepLabV3-R50, crop 513, AMP: docs/performance.md's H100 estimate
OURS = "segtrain (torchvision.io + v2 on uint8, uint8 out)"
REFERENCE = "reference style (PIL + v1 functional, float out)"
JPEG = "decode JPEG (torchvision.io)"
PNG = "decode PNG mask (PIL, values checked)"
FLOAT_OUT = "segtrain as it was: float32 + normalise in the worker"


def float_out_train_transform(crop: int, min_scale: float = 0.5, max_scale: float = 2.0) -> v2.Compose:
    """segtrain's pipeline before the device took over the conversion: the same augmentation, then
    float32 images normalised (in place) and int64 masks, in the worker."""
    return v2.Compose([*train_transform(crop, min_scale, max_scale).transforms[:-1],
                       v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True), v2.ToPureTensor()])


class _Stage:
    """One stage of a sample as a pipeline: `stage[index, seed]` runs it on pair `index`."""

    def __init__(self, run: Callable[[int], object]):
        self.run = run

    def __getitem__(self, item: tuple[int, int]) -> object:
        return self.run(item[0])


class ReferencePipeline:
    """PIL all the way to the crop, as torchvision's segmentation reference does, then tensors.

    Random draws come from torch under the sample's seed in segtrain's order (scale,
    crop offset, flip), so for the same (index, seed) both pipelines resize to the
    same size and crop the same amount: the comparison is of implementations, not luck.
    Flip after the crop (the reference flips the whole resized image, which costs more).
    """

    def __init__(self, dataset: VOCSegmentation, crop: int, min_scale: float = 0.5, max_scale: float = 2.0):
        self.dataset, self.crop = dataset, crop
        self.min_scale, self.max_scale = min_scale, max_scale

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        image_id = self.dataset.ids[index]
        image = PIL.Image.open(self.dataset.voc_dir / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        mask = PIL.Image.open(self.dataset.voc_dir / "SegmentationClass" / f"{image_id}.png")
        mask.load()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scale = self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(()))
            size = [max(1, round(image.height * scale)), max(1, round(image.width * scale))]
            image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR)
            mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)
            pad = [0, 0, max(0, self.crop - image.width), max(0, self.crop - image.height)]
            if any(pad):
                image = TF.pad(image, pad, fill=MEAN_PIXEL)
                mask = TF.pad(mask, pad, fill=IGNORE_INDEX)
            top = int(torch.randint(0, image.height - self.crop + 1, ()))
            left = int(torch.randint(0, image.width - self.crop + 1, ()))
            image = TF.crop(image, top, left, self.crop, self.crop)
            mask = TF.crop(mask, top, left, self.crop, self.crop)
            if float(torch.rand(())) < 0.5:
                image, mask = TF.hflip(image), TF.hflip(mask)
        tensor = TF.normalize(TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float32),
                              IMAGENET_MEAN, IMAGENET_STD)
        return tensor, torch.as_tensor(np.array(mask), dtype=torch.int64)


def main() -> None:
    args = parse_args(__doc__)
    images, per_round, crop, repeats = (2, 2, 129, 1) if args.quick else (24, 8, 513, 61)
    torch.set_num_threads(1)  # one DataLoader worker = one process, one thread
    with tempfile.TemporaryDirectory() as tmp:
        voc_dir = write_voc_pairs(Path(tmp), images, width=500, height=375)
        ours = VOCSegmentation(voc_dir, "train", train_transform(crop, 0.5, 2.0))
        reference = ReferencePipeline(ours, crop)
        print(f"{machine()}\n{images} pairs of 500x375 JPEG (q90) + paletted PNG, crop {crop}, "
              f"scale 0.5-2.0, {repeats} rounds of {per_round} images")

        float_out = VOCSegmentation(voc_dir, "train", float_out_train_transform(crop))
        for item in ((0, 1), (images - 1, 2)):  # same shapes out of all three, same dtypes where both are float
            for a, b, c in zip(ours[item], reference[item], float_out[item]):
                assert a.shape == b.shape == c.shape and b.dtype == c.dtype, (a.shape, b.shape, b.dtype, c.dtype)

        def alternative(pipeline) -> ForkedWorker:
            """Images/s over one round of draws, in a process of its own; call k uses round k."""
            return ForkedWorker(lambda round_: len(draws(round_)) / timed(
                lambda: [pipeline[item] for item in draws(round_)]))

        def draws(round_: int) -> list[tuple[int, int]]:
            """Short rounds (a few images each, cycling through them): the two timings of a
            round lie close in time, so their ratio is little disturbed by the machine's load."""
            return [(index % images, 1000 * round_ + index)
                    for index in range(per_round * round_, per_round * (round_ + 1))]

        jpeg, png = voc_dir / "JPEGImages", voc_dir / "SegmentationClass"
        alternatives = {
            OURS: alternative(ours), REFERENCE: alternative(reference),
            FLOAT_OUT: alternative(float_out),
            # stages of segtrain's sample, timed in the same rounds: where its time goes
            JPEG: alternative(_Stage(lambda index: read_image(jpeg / f"{ours.ids[index]}.jpg"))),
            PNG: alternative(_Stage(lambda index: read_mask(png / f"{ours.ids[index]}.png"))),
        }
        try:
            interleaved(alternatives, 1)  # warm-up round, discarded
            rates = interleaved(alternatives, repeats)
        finally:
            for worker in alternatives.values():
                worker.close()

    ours_rate, reference_rate = median(rates[OURS]), median(rates[REFERENCE])
    # ratios paired within a round, so a slow spell of the shared machine cancels out
    ratio = median([a / b for a, b in zip(rates[OURS], rates[REFERENCE])])
    print_table(["pipeline", "images/s per core (median)", "range", "/ reference (median of rounds)"],
                [(OURS, ours_rate, spread(rates[OURS]), ratio),
                 (REFERENCE, reference_rate, spread(rates[REFERENCE]), 1.0),
                 (FLOAT_OUT, median(rates[FLOAT_OUT]), spread(rates[FLOAT_OUT]),
                  median([a / b for a, b in zip(rates[FLOAT_OUT], rates[REFERENCE])]))],
                title="decode + training transform, one process, torch.set_num_threads(1)")
    whole = 1000 / ours_rate
    stage_ms = {name: 1000 / median(rates[name]) for name in (JPEG, PNG)}
    stage_ms["scale, pad, crop, flip (uint8)"] = whole - sum(stage_ms.values())
    print_table(["segtrain stage", "ms per image", "share"],
                [*((name, ms, f"{ms / whole:.0%}") for name, ms in stage_ms.items()),
                 ("whole sample", whole, "100%")],
                title="where segtrain's time goes (medians of the same rounds)")
    needed = GPU_IMAGES_PER_SECOND / ours_rate
    print(f"\nA GPU training at {GPU_IMAGES_PER_SECOND} images/s needs {needed:.2f} cores of loading at this "
          f"rate: {math.ceil(1.25 * needed)} DataLoader worker(s) with 25% headroom for collation and "
          f"transfer (reference style: {math.ceil(1.25 * GPU_IMAGES_PER_SECOND / reference_rate)}; "
          f"float out: {math.ceil(1.25 * GPU_IMAGES_PER_SECOND / median(rates[FLOAT_OUT]))}).")
    result("data_pipeline", ratio, ">=", 2.0)


if __name__ == "__main__":
    main()
