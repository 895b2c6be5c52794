"""Joint image + mask pipelines on torchvision.transforms.v2 and tv_tensors, and the step that
turns a loader's batch into the model's input on the device.

Inputs are a `tv_tensors.Image` (uint8, 3xHxW) and a `tv_tensors.Mask` (uint8, HxW).
All geometry runs on uint8 (fast, and masks stay exact class ids), and the outputs
stay uint8: plain tensors, image 3xHxW and mask HxW. Loader workers hand those over
(a quarter of the bytes of float32 images and int64 masks through collation, shared
memory, pinning and the copy: 17 MB a batch of 16 at crop 513, not 84), and
`to_device` converts, normalises and lays out the batch on the device, inside the
training or evaluation step, with the same arithmetic as torchvision's ToDtype and
Normalize.
"""

from __future__ import annotations

import functools
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
        v2.ToPureTensor(),
    ])


def eval_transform() -> v2.Compose:
    """Full images as they are, uint8 (segtrain.evaluation batches them by size)."""
    return v2.Compose([v2.ToPureTensor()])


def to_device(images: torch.Tensor, masks: torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's uint8 batch (N x 3 x H x W images, N x H x W masks) as model and loss take it, on
    `device`: images as `images_to_device` makes them, masks int64 (class ids, 255 void). No host sync:
    the copies are asynchronous from pinned memory."""
    return images_to_device(images, device), masks.to(device, non_blocking=True).long()


def images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x 3 x H x W images as the model takes them, on `device`: float32, scaled to [0, 1] and
    normalised with ImageNet's mean and std (which live on the device), channels_last."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    mean, std = _mean_std(images.device)
    # ToDtype(scale=True) then Normalize, op for op: the values the CPU workers used to compute
    return images.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as 3x1x1 float32 tensors on `device`, made once (a copy to the device each
    step would wait for the host)."""
    return (torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1),
            torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(-1, 1, 1))
