"""Dense CRF cost: seconds per VOC-size image in one process, and what segtrain.crf.Refiner's pool gains.

The CRF (segtrain.crf, DeepLab v2's settings: 10 mean-field iterations, 21 classes) is
CPU work done after the network, so a protocol with it costs its seconds per image on
top of the forward passes; `SECONDS_PER_VOC_IMAGE` in segtrain/crf.py, which hpo.plan's
bill uses, is the CPU-seconds figure printed here (process time: on a shared machine the
wall clock says more about the neighbours than about the CRF). The image is VOC 2012 val's 2007_000033
(tests/data/voc_sample) resized to 500 x 375, VOC's most common size; its probabilities
are the true mask blurred and mixed with noise, as a network's softmax looks (the
inference's cost depends on the image and the class count, hardly on the values). The
pool's images/s against one process's, divided by the processes, is its efficiency.
"""

from __future__ import annotations

from pathlib import Path

import time

import numpy as np
import PIL.Image
from common import machine, median, parse_args, print_table, result, spread, timed
from scipy.ndimage import gaussian_filter

from segtrain import crf

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "voc_sample" / "VOCdevkit" / "VOC2012"
CLASSES = 21


def voc_image(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image, classes x H x W float32 probabilities) of the sample photo at this size."""
    image = np.asarray(PIL.Image.open(SAMPLE / "JPEGImages" / "2007_000033.jpg").convert("RGB")
                       .resize((width, height), PIL.Image.BILINEAR))
    mask = np.asarray(PIL.Image.open(SAMPLE / "SegmentationClass" / "2007_000033.png")
                      .resize((width, height), PIL.Image.NEAREST)).astype(np.int64)
    mask[mask == 255] = 0
    one_hot = np.stack([gaussian_filter((mask == c).astype(np.float32), sigma=8) for c in range(CLASSES)])
    noise = np.random.default_rng(seed).dirichlet(np.ones(CLASSES), size=(height, width)).transpose(2, 0, 1)
    probabilities = 0.7 * one_hot + 0.3 * noise
    return image, (probabilities / probabilities.sum(axis=0)).astype(np.float32)


def main() -> None:
    args = parse_args(__doc__)
    width, height = (100, 75) if args.quick else (500, 375)
    repeats, pooled_images = (2, 4) if args.quick else (5, 4 * crf.default_processes())
    image, probabilities = voc_image(width, height)
    print(machine())
    crf.refine(image, probabilities)  # warm-up: the extension's first load
    serial, cpu = [], []
    for _ in range(repeats):
        started = time.process_time()
        serial.append(timed(lambda: crf.refine(image, probabilities)))
        cpu.append(time.process_time() - started)
    with crf.Refiner() as refiner:
        list(refiner.labels((0, image, probabilities) for _ in range(refiner.processes)))  # the workers start
        pooled = [timed(lambda: list(refiner.labels((k, image, probabilities) for k in range(pooled_images))))
                  / pooled_images for _ in range(repeats)]
        processes = refiner.processes
    labels = crf.refine(image, probabilities)
    changed = float((labels != probabilities.argmax(axis=0)).mean())
    print_table(["", "seconds per image (median)", "spread", "images"],
                [["one process", median(serial), spread(serial), 1],
                 [f"Refiner, {processes} processes", median(pooled), spread(pooled), pooled_images]],
                title=f"dense CRF on a {width} x {height} image, {CLASSES} classes, DeepLab v2's settings "
                      f"({crf.DEEPLAB_V2.iterations} iterations)")
    print(f"pixels whose label the CRF changed: {changed:.1%}")
    print(f"CPU-seconds per image in one process: {median(cpu):.3g} (spread {spread(cpu)})")
    efficiency = median(serial) / median(pooled) / processes
    print(f"pool speed-up {median(serial) / median(pooled):.2f}x over {processes} processes")
    result("crf_pool_efficiency", efficiency, ">=", 0.8)


if __name__ == "__main__":
    main()
