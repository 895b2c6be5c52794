"""Joint transforms: image and mask stay aligned, crops are crop x crop, padding is mean / 255; uint8 out,
converted on the device to exactly what the workers used to hand over."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segtrain.data.labels import IGNORE_INDEX
from segtrain.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_PIXEL,
    RandomScale,
    eval_transform,
    to_device,
    train_transform,
)
from segtrain.data.voc import VOCSegmentation
from tests.conftest import VOC_SAMPLE

BLOCK = 8  # pixels per block of the test pattern


def patterned_sample(height: int, width: int, seed: int = 0) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Random 8x8 blocks of classes 0-20; the image's red channel is 10 x class, so the mask follows from it."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 21, (height // BLOCK + 1, width // BLOCK + 1), generator=generator)
    classes = blocks.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:height, :width].to(torch.uint8)
    image = torch.stack([classes * 10, torch.full_like(classes, 50), torch.full_like(classes, 200)])
    return tv_tensors.Image(image), tv_tensors.Mask(classes)


def classes_seen_in(image: torch.Tensor) -> torch.Tensor:
    """Invert the 10 x class encoding of the (uint8) red channel."""
    return torch.round(image[0].float() / 10).to(torch.uint8)


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
        flipped += torch.equal(out_mask, mask.flip(-1))
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
    assert out_image.dtype == torch.uint8 and out_mask.dtype == torch.uint8
    inside = interior(out_mask) & (out_mask != 255)
    assert inside.sum() > 500
    assert torch.equal(classes_seen_in(out_image)[inside], out_mask[inside])


def test_small_image_is_padded_with_mean_and_void():
    image, mask = patterned_sample(20, 30)
    torch.manual_seed(0)
    out_image, out_mask = train_transform(64, min_scale=1.0, max_scale=1.0)(image, mask)
    padded = out_mask == 255
    assert int(padded.sum()) == 64 * 64 - 20 * 30
    assert torch.equal(out_image[:, padded], torch.tensor(MEAN_PIXEL, dtype=torch.uint8)[:, None].expand(3, int(padded.sum())))
    assert to_device(out_image[None], out_mask[None], torch.device("cpu"))[0][0][:, padded].abs().max() < 0.01  # ~0
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


def test_eval_transform_hands_over_the_decoded_pair_and_the_device_normalises_it():
    image, mask = patterned_sample(37, 51)
    out_image, out_mask = eval_transform()(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    images, masks = to_device(out_image[None], out_mask[None], torch.device("cpu"))
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
    assert masks.dtype == torch.int64 and torch.equal(masks[0], mask.long())
    expected_blue = (200 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(images[0, 2], torch.full((37, 51), expected_blue))


def workers_float_pipeline(crop_size: int) -> v2.Compose:
    """The training transform as it was before the workers handed over uint8: the same augmentation,
    then float32 and normalisation (ToDtype, Normalize) on the CPU, int64 masks."""
    return v2.Compose([
        RandomScale(0.5, 2.0),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: MEAN_PIXEL, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True),
        v2.ToPureTensor(),
    ])


def test_uint8_batches_converted_on_the_device_are_what_the_workers_used_to_compute():
    """Same seeded crops and flips on the two real VOC pairs, and the same values to float rounding
    (void 255 kept in the int64 masks the loss takes)."""
    voc_dir = VOC_SAMPLE / "VOCdevkit" / "VOC2012"
    new = VOCSegmentation(voc_dir, "trainval", train_transform(129))
    old = VOCSegmentation(voc_dir, "trainval", workers_float_pipeline(129))
    items = [(index, seed) for index in range(2) for seed in (3, 11, 2024)]
    images, masks = to_device(torch.stack([new[item][0] for item in items]),
                              torch.stack([new[item][1] for item in items]), torch.device("cpu"))
    expected_images = torch.stack([old[item][0] for item in items])
    expected_masks = torch.stack([old[item][1] for item in items])
    assert torch.equal(masks, expected_masks) and (masks == IGNORE_INDEX).any()
    torch.testing.assert_close(images, expected_images, rtol=0, atol=1e-6)
    assert images.is_contiguous(memory_format=torch.channels_last)
