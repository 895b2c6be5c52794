"""Joint transforms: image and mask stay aligned, crops are crop x crop, padding is mean / 255."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from segtrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomScale, eval_transform, train_transform

BLOCK = 8  # pixels per block of the test pattern


def patterned_sample(height: int, width: int, seed: int = 0) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Random 8x8 blocks of classes 0-20; the image's red channel is 10 x class, so the mask follows from it."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 21, (height // BLOCK + 1, width // BLOCK + 1), generator=generator)
    classes = blocks.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:height, :width].to(torch.uint8)
    image = torch.stack([classes * 10, torch.full_like(classes, 50), torch.full_like(classes, 200)])
    return tv_tensors.Image(image), tv_tensors.Mask(classes)


def classes_seen_in(image: torch.Tensor) -> torch.Tensor:
    """Invert normalisation and the 10 x class encoding of the red channel."""
    red = (image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    return torch.round(red / 10).long()


@pytest.mark.parametrize("seed", range(6))
def test_without_scaling_every_pixel_stays_aligned(seed: int):
    image, mask = patterned_sample(90, 130, seed)
    torch.manual_seed(seed)
    out_image, out_mask = train_transform(64, min_scale=1.0, max_scale=1.0)(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    assert torch.equal(classes_seen_in(out_image), out_mask)


def test_flip_happens_and_keeps_alignment():
    image, mask = patterned_sample(64, 64)
    transform = train_transform(64, min_scale=1.0, max_scale=1.0)
    flipped = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert torch.equal(classes_seen_in(out_image), out_mask)
        flipped += torch.equal(out_mask, mask.flip(-1).long())
    assert 0 < flipped < 10


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one class: there bilinear blending cannot change the class.

    Border pixels never count: their image value also blends pixels that the crop cut off.
    """
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), value=-1)
    largest = torch.nn.functional.max_pool2d(padded, 3, stride=1)[0, 0]
    smallest = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0]
    return largest == smallest


@pytest.mark.parametrize("seed", range(8))
def test_with_scaling_image_and_mask_agree_pixel_for_pixel(seed: int):
    image, mask = patterned_sample(100, 140, seed)
    torch.manual_seed(seed)
    out_image, out_mask = train_transform(96)(image, mask)
    assert out_image.shape == (3, 96, 96) and out_mask.shape == (96, 96)
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
    inside = interior(out_mask) & (out_mask != 255)
    assert inside.sum() > 500
    assert torch.equal(classes_seen_in(out_image)[inside], out_mask[inside])


def test_small_image_is_padded_with_mean_and_void():
    image, mask = patterned_sample(20, 30)
    torch.manual_seed(0)
    out_image, out_mask = train_transform(64, min_scale=1.0, max_scale=1.0)(image, mask)
    padded = out_mask == 255
    assert int(padded.sum()) == 64 * 64 - 20 * 30
    assert out_image[:, padded].abs().max() < 0.01  # the mean pixel normalises to ~0
    assert sorted(out_mask[~padded].unique().tolist()) == sorted(mask.unique().tolist())


def test_random_scale_resizes_within_range_and_keeps_class_ids():
    image, mask = patterned_sample(40, 60)
    scale = RandomScale(0.5, 2.0)
    sizes = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = scale(image, mask)
        height, width = out_mask.shape
        assert out_image.shape[-2:] == out_mask.shape and isinstance(out_mask, tv_tensors.Mask)
        assert 20 <= height <= 80 and abs(width / height - 1.5) < 0.1
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())  # nearest: no blended ids
        sizes.add(height)
    assert len(sizes) > 10


def test_eval_transform_only_converts_and_normalises():
    image, mask = patterned_sample(37, 51)
    out_image, out_mask = eval_transform()(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert out_image.shape == (3, 37, 51) and out_image.dtype == torch.float32
    assert torch.equal(out_mask, mask.long())
    expected_blue = (200 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(out_image[2], torch.full((37, 51), expected_blue))
