"""The report's pictures and the search-saturation curve, without training: which val images the gallery
shows, each image's mIoU, the panels of a picture, and the expected best of n trials by brute force."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFont
import pytest

from hpo.finalize.gallery import DISAGREEING, DRAWN, choose, image_miou_of, shown_runs, write_mask
from hpo.report import gallery, trial_budget
from hpo.report.gallery import Gallery, Panel
from hpo.report.results import Configuration, FinalRun, summarize
from segtrain.config import TrainConfig
from segtrain.data.labels import IGNORE_INDEX, VOC_PALETTE
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import image_path, mask_path, read_mask, read_split_ids
from segtrain.records import TrainResult


def test_the_expected_best_of_n_trials_is_the_mean_best_over_every_draw():
    values = [0.31, 0.52, 0.52, 0.60, 0.74]
    for n in range(1, 4):
        draws = list(itertools.product(values, repeat=n))  # every draw of n with replacement, equally likely
        assert trial_budget.expected_best(values, n) == pytest.approx(sum(map(max, draws)) / len(draws))
    curve = trial_budget.curve(values)
    assert [n for n, _ in curve] == [1, 2, 3, 4, 5] and curve[0][1] == pytest.approx(np.mean(values))
    assert all(a[1] <= b[1] for a, b in zip(curve, curve[1:])) and curve[-1][1] < max(values)


def test_the_gallery_shows_the_most_disagreeing_images_then_random_ones_the_same_every_time():
    ids = [f"img{i:02d}" for i in range(20)]
    disagreement = {image_id: (i * 7) % 11 for i, image_id in enumerate(ids)}  # ties among them
    chosen, reasons = choose(ids, disagreement)
    top = sorted(ids, key=lambda i: -disagreement[i])[:DISAGREEING]  # stable: ties keep split order
    assert chosen[:DISAGREEING] == top and len(chosen) == DISAGREEING + DRAWN == len(set(chosen))
    assert all("disagree on" in reasons[i] for i in top) and all("random" in reasons[i] for i in chosen[DISAGREEING:])
    assert choose(ids, disagreement) == (chosen, reasons)
    alone, _ = choose(ids, {})  # no baseline: all drawn at random
    assert len(alone) == DISAGREEING + DRAWN and alone == choose(ids, {})[0]


def test_an_images_miou_is_over_the_classes_it_shows_void_left_out():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE_INDEX]], dtype=np.uint8)
    predicted = np.array([[0, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
    # class 0: 3 / 4; class 1: 2 / 4; class 2: 0 / 1 (predicted once on a labelled pixel); void ignored
    assert image_miou_of(predicted, target) == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)


def test_a_title_wider_than_its_panel_breaks_at_spaces_then_after_a_words_separators_then_inside_it():
    font = PIL.ImageFont.load_default(size=gallery.FONT_PIXELS)
    width = font.getlength("synthetic_") + 1  # a 72-pixel portrait panel, less its margins
    assert gallery.wrapped("image synthetic_val_000003", width, font) == ["image", "synthetic_", "val_", "000003"]
    assert gallery.wrapped("ResNet-101 scratch", width, font) == ["ResNet-", "101", "scratch"]
    long = gallery.wrapped("deeplabv3plus):", width, font)  # no separator: cut at the widest prefix that fits
    assert "".join(long) == "deeplabv3plus):" and len(long) == 2 and font.getlength(long[0]) <= width
    assert font.getlength(long[0] + long[1][0]) > width


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    return write_synthetic_voc(root, train=2, val=2, size=48, classes=2, seed=0)


def test_a_picture_holds_the_image_its_truth_and_each_prediction_in_the_voc_palette(voc, tmp_path):
    image_id = read_split_ids(voc, "val")[0]
    truth = read_mask(mask_path(voc, "val", image_id)).numpy()
    predictions = {"top-1": np.where(truth == IGNORE_INDEX, 0, truth), "baseline": np.zeros_like(truth)}
    for name, mask in predictions.items():
        write_mask(tmp_path / "masks" / f"{name} ss" / f"{image_id}.png", mask)
    shown = Gallery("ss", "val", str(voc), [image_id], {image_id: "drawn at random (seed 0)"},
                    [Panel("baseline", "baseline", 1, "-", "ss"), Panel("top-1", "best", 1, "-", "ss")],
                    {f"{name} ss": {image_id: 0.5} for name in predictions}, None, str(tmp_path / "masks"))
    [path] = gallery.draw(shown, tmp_path / "pictures")
    with PIL.Image.open(path) as sheet, PIL.Image.open(image_path(voc, image_id)) as image:
        sheet, image = np.array(sheet.convert("RGB")), np.array(image.convert("RGB"))
    height, width = truth.shape
    # a 48-pixel image sits in a cell wide enough for its titles, at its own size; the titles wrap to
    # the cell, and the band above each row holds the longest one
    cell = gallery.MIN_CELL_PIXELS
    assert width < cell
    font = PIL.ImageFont.load_default(size=gallery.FONT_PIXELS)
    titles = [gallery.wrapped(title, cell - 2 * gallery.MARGIN_PIXELS, font)
              for title in (f"image {image_id}", "ground truth", "baseline (baseline): mIoU 0.500")]
    assert all(font.getlength(line) <= cell - 2 * gallery.MARGIN_PIXELS for lines in titles for line in lines)
    assert ["".join(lines).replace(" ", "") for lines in titles] == [f"image{image_id}", "groundtruth",
                                                                     "baseline(baseline):mIoU0.500"]
    strip = gallery.title_strip(titles)
    assert sheet.shape == (2 * (height + strip), 3 * cell, 3)  # 4 panels, 3 a row
    palette = np.array(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)

    def panel(index: int) -> np.ndarray:
        top = (index // 3) * (height + strip) + strip
        return sheet[top:top + height, (index % 3) * cell:(index % 3) * cell + width]

    assert (sheet[strip:strip + height, width:cell] == 255).all()  # the cell's rest is white
    assert np.array_equal(panel(0), image)
    assert np.array_equal(panel(1), palette[truth])  # void in VOC's own colour (224, 224, 192)
    assert tuple(palette[IGNORE_INDEX]) == (224, 224, 192)
    assert np.array_equal(panel(2), palette[predictions["baseline"]])
    assert np.array_equal(panel(3), palette[predictions["top-1"]])
    # figures.html inlines the same PNG, a 480-pixel sheet shown at 720 pixels, with why the image was chosen
    section = gallery.html_section([path], shown)
    assert base64.b64encode(path.read_bytes()).decode() in section
    assert 'style="width:720px;max-width:100%"' in section and "drawn at random (seed 0)" in section


def test_a_configuration_with_two_roles_is_one_panel_with_both_names():
    def runs(name: str, roles: tuple[str, ...], **fields) -> list[FinalRun]:
        c = Configuration(name, "", roles, None, {}, TrainConfig(**fields), None)
        return [FinalRun(c, seed, Path(f"/runs/{name}/seed-{seed}"),
                         TrainResult(c.config, 0.5, 0.5, [None] * 21, 0.9, 0.8, [], 1, 1.0, 1.0, 1, 1), "ok", "trained")
                for seed in (2, 1)]

    summaries = summarize([*runs("top-1", ("top", "baseline")), *runs("top-2", ("top",)),
                           *runs("variant deeplabv3plus", ("variant",), model="deeplabv3plus"),
                           *runs("r101-scratch", ("r101-scratch",))])
    panels = [panel for panel, _ in shown_runs(summaries, "ss", "crf")]
    assert [(p.configuration, p.label, p.seed, p.protocol) for p in panels] == [  # each its first seed
        ("top-1", "baseline = best", 1, "ss"), ("top-1", "best + dense CRF", 1, "crf"),
        ("variant deeplabv3plus", "DeepLabV3+", 1, "ss"), ("r101-scratch", "ResNet-101 scratch", 1, "ss")]
    assert len({p.key for p in panels}) == 4  # the best's two panels keep their masks apart
