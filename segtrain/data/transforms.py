"""Joint image + mask pipelines on torchvision.transforms.v2 and tv_tensors.

Inputs are a `tv_tensors.Image` (uint8, 3xHxW) and a `tv_tensors.Mask` (uint8, HxW).
All geometry runs on uint8 (fast, and masks stay exact class ids); conversion to
float and normalisation come last. Outputs are plain tensors: image float32
3xHxW normalised, mask int64 HxW.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from segtrain.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = tuple(round(255 * channel) for channel in IMAGENET_MEAN)  # uint8 fill: 0 after normalisation


class RandomScale(v2.Transform):
    """Resize the whole sample by one factor drawn uniformly from [min_scale, max_scale].

    Images resize bilinearly (antialiased), masks with nearest neighbour so they keep
    valid class ids. Masks use NEAREST_EXACT: torch's plain NEAREST samples up to half
    a pixel off the bilinear image's pixel centres at scales like 0.73 or 1.7.
    """

    def __init__(self, min_scale: float, max_scale: float):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(()))
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        nearest = isinstance(inpt, tv_tensors.Mask)
        interpolation = v2.InterpolationMode.NEAREST_EXACT if nearest else v2.InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=interpolation, antialias=True)


def _to_tensors() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True),  # on ToDtype's fresh copy: one float buffer, not two
        v2.ToPureTensor(),
    ]


def train_transform(crop_size: int, min_scale: float = 0.5, max_scale: float = 2.0) -> v2.Compose:
    """DeepLab's training augmentation: random scale, pad to the crop, random crop, flip.

    Padding fills the image with the mean pixel and the mask with the void label,
    so padded pixels are neutral input and ignored by the loss. When the scaled
    image is smaller than the crop it lies wholly inside the crop at a random offset.
    """
    return v2.Compose([
        RandomScale(min_scale, max_scale),
        v2.RandomCrop(crop_size, pad_if_needed=True,
                      fill={tv_tensors.Image: MEAN_PIXEL, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        *_to_tensors(),
    ])


def eval_transform() -> v2.Compose:
    """Full images, only converted and normalised (segtrain.evaluation batches them by size)."""
    return v2.Compose(_to_tensors())
