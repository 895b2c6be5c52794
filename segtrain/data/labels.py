"""Pascal VOC 2012 label conventions: class ids, names, the void label and the colour map."""

from __future__ import annotations

NUM_CLASSES = 21
IGNORE_INDEX = 255  # "void" in VOC masks: object outlines and difficult regions, ignored by loss and metric

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _voc_palette() -> list[int]:
    """The devkit's colour map (VOCcode/VOClabelcolormap.m): bits of the index spread over R, G, B."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


VOC_PALETTE: list[int] = _voc_palette()  # flat [r0, g0, b0, r1, ...], 256 entries, for PIL's putpalette
