"""A trained model on image files: one VOC-format mask per image, and on request an overlay with a legend.

A mask is a paletted PNG as in VOC's SegmentationClass/: the size of its image, each pixel's
palette index its class id, VOC's colour map. An overlay is a JPEG of the image with each
object class blended in its colour (background left as it is) above a legend of the classes
present. Each image is predicted alone, at its own size, under an evaluation Protocol, by
segtrain.evaluation's `predict`, as the val images are scored. Imports segtrain.evaluation,
data and fileio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from torch import nn

from segtrain.data.labels import CLASS_NAMES, VOC_PALETTE
from segtrain.data.transforms import images_to_device
from segtrain.data.voc import mask_png
from segtrain.device import amp_dtype_for
from segtrain.errors import DataError, UserError
from segtrain.evaluation import Protocol, predict
from segtrain.fileio import write_atomic
from segtrain.progress import progress

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.5  # the class colour's share of an overlay pixel
JPEG_QUALITY = 90


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files given, and the images (by suffix, sorted) directly inside the folders given. A path that
    does not exist stays in the list, to be reported with the unreadable ones; two images of one name are
    a UserError, as their masks would overwrite each other."""
    files: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{given}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(given)
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise UserError(f"{stems[path.stem]} and {path} would both write {path.stem}.png: "
                            f"predict them into different --out dirs")
        stems[path.stem] = path
    return files


def read_rgb(path: Path) -> PIL.Image.Image:
    """The image as RGB; a DataError naming the file when it is missing or not a readable image."""
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of saying "not a readable image"
        reason = "not an image file" if isinstance(error, PIL.UnidentifiedImageError) else " ".join(str(error).split())
        raise DataError(f"{path}: not a readable image ({reason})") from None


def predict_classes(model: nn.Module, image: PIL.Image.Image, protocol: Protocol, device: torch.device) -> np.ndarray:
    """Class ids (uint8, H x W) of one image; `model` in eval mode on `device`, at the protocol's output stride."""
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # uint8 3 x H x W, as a loader's
    batch = images_to_device(pixels[None], device)
    scores = predict(model, batch, protocol.scales, protocol.flip, amp_dtype_for(device))
    return scores.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def overlay_image(image: PIL.Image.Image, classes: np.ndarray) -> PIL.Image.Image:
    """The image with each object class blended in its VOC colour, above a legend of the classes present."""
    colours = np.array(VOC_PALETTE, dtype=np.float32).reshape(-1, 3)[classes]
    pixels = np.asarray(image, dtype=np.float32)
    objects = (classes != 0)[..., None]
    blended = np.where(objects, (1 - OVERLAY_ALPHA) * pixels + OVERLAY_ALPHA * colours, pixels)
    return with_legend(PIL.Image.fromarray(blended.round().astype(np.uint8)), sorted(set(np.unique(classes)) - {0}))


def with_legend(image: PIL.Image.Image, class_ids: Sequence[int]) -> PIL.Image.Image:
    """`image` above a white strip of colour swatches and class names, wrapped to its width."""
    font = PIL.ImageFont.load_default()
    probe = PIL.ImageDraw.Draw(image)
    line_height = max(12, int(probe.textbbox((0, 0), "Ag", font=font)[3])) + 6
    swatch, gap = line_height - 6, 12
    entries = [(CLASS_NAMES[c], tuple(VOC_PALETTE[3 * c:3 * c + 3])) for c in class_ids] or [("background only", None)]
    placed, x, row = [], 4, 0
    for name, colour in entries:
        width = (swatch + 4 if colour else 0) + int(probe.textlength(name, font=font))
        if x > 4 and x + width > image.width - 4:
            x, row = 4, row + 1
        placed.append((x, row, name, colour))
        x += width + gap
    legend_height = (row + 1) * line_height + 4
    canvas = PIL.Image.new("RGB", (image.width, image.height + legend_height), "white")
    canvas.paste(image, (0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    for x, row, name, colour in placed:
        top = image.height + 4 + row * line_height
        if colour:
            draw.rectangle([x, top, x + swatch, top + swatch], fill=colour, outline="black")
            x += swatch + 4
        draw.text((x, top), name, fill="black", font=font)
    return canvas


@dataclass(frozen=True)
class Predictions:
    written: list[Path]  # masks (and overlays) written
    failed: list[str]  # one line per image that could not be read


def predict_files(model: nn.Module, paths: Sequence[Path], out_dir: Path, protocol: Protocol, device: torch.device,
                  overlay: bool = False) -> Predictions:
    """<out_dir>/<stem>.png for each image (and <stem>_overlay.jpg with `overlay`), with a progress bar; an
    image that cannot be read is logged in one line naming it, and the others are still written."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    written, failed = [], []
    for path in progress(paths, desc="predict", unit="images"):
        try:
            image = read_rgb(path)
        except DataError as error:
            log.error("%s", error)
            failed.append(str(error))
            continue
        classes = predict_classes(model, image, protocol, device)
        written.append(_save(out_dir / f"{path.stem}.png", mask_png(classes), format="PNG"))
        if overlay:
            written.append(_save(out_dir / f"{path.stem}_overlay.jpg", overlay_image(image, classes), format="JPEG",
                                 quality=JPEG_QUALITY))
    return Predictions(written, failed)


def _save(path: Path, image: PIL.Image.Image, **options: object) -> Path:
    return write_atomic(path, lambda file: image.save(file, **options))
