"""Dense CRF post-processing: class probabilities refined by a fully connected CRF, as DeepLab v1/v2 do.

Krähenbühl & Koltun 2011 ("Efficient Inference in Fully Connected CRFs with Gaussian
Edge Potentials"): mean-field inference over every pixel pair, with a unary term
-log p from the network's softmax and two Potts-weighted Gaussian kernels, an
appearance (bilateral) kernel on position and RGB and a smoothness kernel on position
alone. Their C++ code comes from pydensecrf2 (the `crf` extra, built from source).

It is CPU work, about 1.5 CPU-seconds for a 500x375 VOC image (`SECONDS_PER_VOC_IMAGE`), so
`Refiner` runs it in a pool of processes, a bounded window of images in flight while the
device computes the next ones; the labels come back in the order the images went in, so
a result does not depend on the number of processes.

Imports numpy and segtrain.errors only (pydensecrf when a Refiner starts).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtrain.errors import UserError

MISSING = "the dense CRF needs pydensecrf2: pip install -e '.[crf]' (it builds Krähenbühl's C++ code from source)"
# CPU-seconds (process time) of one refine() of a 500 x 375 VOC val photo, 21 classes, DEEPLAB_V2: benchmarks/crf.py
# on the shared 2-core development machine, medians 1.05 and 1.47 in two runs (1.0-1.6): the upper end, as
# the bill should not promise less; hpo.plan scales it by the images' pixels and divides it by the pool's processes
SECONDS_PER_VOC_IMAGE = 1.5
VOC_IMAGE_PIXELS = 500 * 375


@dataclass(frozen=True)
class CRFSettings:
    """The kernels' weights and widths (pixels; RGB levels 0-255) and the mean-field iterations."""

    iterations: int = 10
    bilateral_weight: float = 4.0  # w1
    bilateral_xy_std: float = 67.0  # sigma_alpha, px
    bilateral_rgb_std: float = 3.0  # sigma_beta, RGB levels
    gaussian_weight: float = 3.0  # w2
    gaussian_xy_std: float = 1.0  # sigma_gamma, px


# DeepLab v2's settings for its ResNet-101 on VOC, as kazuto1011/deeplab-pytorch's configs/voc12.yaml gives them
# (CRF: ITER_MAX 10, POS_W 3, POS_XY_STD 1, BI_W 4, BI_XY_STD 67, BI_RGB_STD 3), the reimplementation whose README
# sets the official model's 76.35 -> 77.69 val mIoU with the CRF beside its own 76.65 -> 77.93. The DeepLab
# v2 paper found w1, sigma_alpha and sigma_beta by cross-validation on 100 val images and kept w2 = 3,
# sigma_gamma = 3 (docs/results.md, "Dense CRF": not verified against the paper here).
DEEPLAB_V2 = CRFSettings()


def available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    """A UserError naming the extra to install when pydensecrf2 is missing."""
    if not available():
        raise UserError(MISSING)


def refine(image: np.ndarray, probabilities: np.ndarray, settings: CRFSettings = DEEPLAB_V2) -> np.ndarray:
    """Labels (H x W, int64) after mean-field inference; `image` H x W x 3 uint8 RGB, `probabilities`
    classes x H x W (float32, summing to 1 over the classes, as the network's averaged softmax)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    classes, height, width = probabilities.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image {image.shape} {image.dtype} does not fit probabilities {probabilities.shape}")
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities.astype(np.float32, copy=False))))
    crf.addPairwiseGaussian(sxy=settings.gaussian_xy_std, compat=settings.gaussian_weight)
    crf.addPairwiseBilateral(sxy=settings.bilateral_xy_std, srgb=settings.bilateral_rgb_std,
                             rgbim=np.require(image, requirements=("C", "W")), compat=settings.bilateral_weight)
    marginals = np.asarray(crf.inference(settings.iterations), dtype=np.float32)
    return marginals.reshape(classes, height, width).argmax(axis=0)


def default_processes() -> int:
    """The CPUs this process may run on, shared among the processes of a torchrun on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class Refiner:
    """A pool of processes refining images in order: `with Refiner() as refiner: refiner.labels(items)`."""

    def __init__(self, settings: CRFSettings = DEEPLAB_V2, processes: int | None = None):
        require()
        self.settings = settings
        self.processes = processes or default_processes()
        self._pool: Any = None

    def __enter__(self) -> Refiner:
        # fork, as torch's DataLoader workers are: the workers run numpy and the CRF's C++ alone (no CUDA, no
        # torch threads), and need nothing the parent has not imported; spawn would import the parent's
        # __main__ (torch, and all of hpo under hpo.finalize) in every worker again; it is the fallback where
        # there is no fork (Windows)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._pool = multiprocessing.get_context(method).Pool(self.processes)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.terminate()
        self._pool.join()

    def labels(self, items: Iterable[tuple[Any, np.ndarray, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, labels) for each (key, image, probabilities), in order; at most twice the processes' count
        of images in flight, so memory stays bounded and `items` (the model's next batches) is drawn on
        while the pool works."""
        window: deque[tuple[Any, Any]] = deque()
        for key, image, probabilities in items:
            window.append((key, self._pool.apply_async(refine, (image, probabilities, self.settings))))
            if len(window) >= 2 * self.processes:
                key, job = window.popleft()
                yield key, job.get()
        while window:
            key, job = window.popleft()
            yield key, job.get()
