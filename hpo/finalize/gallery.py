"""The gallery's predictions: which val images to show, and what the final runs predict on them.

For the report's pictures (hpo.report.gallery draws them): the first finished seed of the
baseline, the best configuration and the two ResNet-101 arms, each under the report's
primary protocol (the first of [finalize] eval). The images: the `disagreeing` val images
on which the best configuration and the baseline disagree on the most labelled pixels (where
a mIoU gap comes from), then `drawn` more at random with a fixed seed (what is typical). The
best configuration's pass over all of val also gives its confusion matrix. Everything is
kept in <final>/predictions/ (each mask a VOC-palette PNG, gallery.json) and reused while the
runs, their checkpoints and the protocol stay the same.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hpo.report.gallery import Gallery, Panel
from hpo.report.results import FinalRun, Summary
from segtrain.config import MODELS
from segtrain.data import voc_dir_for
from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.voc import VOCSegmentation, mask_path, mask_png, read_mask
from segtrain.device import amp_dtype_for, resolve_device
from segtrain.evaluation import PRESETS, load_run_model, predicted_labels
from segtrain.fileio import write_atomic, write_json_atomic
from segtrain.metrics import ConfusionMatrix

GALLERY_FILE = "gallery.json"
DISAGREEING, DRAWN, DRAW_SEED = 4, 4, 0
# the configurations shown, in panel order, by role (the family's members after the best)
PANELS = (("baseline", "baseline"), ("top", "best"), ("variant", "variant"), ("r101-imagenet", "ResNet-101 pretrained"),
          ("r101-scratch", "ResNet-101 scratch"))


def shown_runs(summaries: Sequence[Summary], protocol: str, crf_protocol: str | None = None
               ) -> list[tuple[Panel, FinalRun]]:
    """The first finished seed of each configuration the gallery shows, under `protocol` (a configuration
    with two roles once), and the best again under `crf_protocol` when there is one."""
    shown: list[tuple[Panel, FinalRun]] = []
    for role, label in PANELS:
        # the first of a role (top-1, the baseline, each ResNet-101 arm), and every variant
        members = [s for s in summaries if s.role(role)][:None if role == "variant" else 1]
        for summary in (s for s in members if s.ok):
            same = next((i for i, (p, _) in enumerate(shown) if p.configuration == summary.name), None)
            if same is not None:  # e.g. the baseline is the best: one panel, both names
                panel, run = shown[same]
                shown[same] = (dataclasses.replace(panel, label=f"{panel.label} = {label}"), run)
            else:
                run = min(summary.ok, key=lambda r: r.seed)
                name = MODELS[summary.configuration.config.model] if role == "variant" else label
                shown.append((Panel(summary.name, name, run.seed, str(run.run_dir), protocol), run))
    best = next(((p, run) for p, run in shown if _is_best(p)), None)
    if best is not None and crf_protocol is not None:
        panel, run = best
        position = shown.index(best) + 1
        shown.insert(position, (dataclasses.replace(panel, label="best + dense CRF", protocol=crf_protocol), run))
    return shown


def _is_best(panel: Panel) -> bool:
    return "best" in panel.label.split(" = ")


def gallery(summaries: Sequence[Summary], protocol: str, directory: Path,
            crf_protocol: str | None = None) -> Gallery | None:
    """The gallery of these runs (None without a best configuration): reused from `directory` when it was
    made from the same checkpoints under the same protocols, else predicted now."""
    shown = shown_runs(summaries, protocol, crf_protocol)
    if not any(_is_best(panel) for panel, _ in shown):
        return None
    key = {"protocol": protocol, "runs": {p.key: [p.run_dir, run.result.steps] for p, run in shown}}
    previous = _read(directory / GALLERY_FILE)
    if previous.get("key") == key:
        return _from_record(previous["gallery"])
    made = _predict(shown, protocol, directory)
    write_json_atomic(directory / GALLERY_FILE, {"key": key, "gallery": asdict(made)})
    return made


def _predict(shown: Sequence[tuple[Panel, FinalRun]], protocol: str, directory: Path) -> Gallery:
    best = next(item for item in shown if _is_best(item[0]))
    baseline = next((item for item in shown if item[0].label == "baseline"), None)  # None when it is the best
    cfg = best[1].configuration.config
    voc_dir = voc_dir_for(cfg)
    val = VOCSegmentation(voc_dir, cfg.val_split)
    confusion = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    disagreement: dict[str, int] = {}
    batch_size = cfg.eval_batch_size  # shared by every configuration: the passes batch val alike
    passes = [_masks(run, protocol, val, batch_size) for run in (best[1], *(baseline[1:] if baseline else ()))]
    # (the choice and the confusion matrix are of the gallery's protocol; a crf panel only shows the chosen images)
    for index, predicted in _together(passes):
        target = torch.from_numpy(read_mask(mask_path(voc_dir, cfg.val_split, val.ids[index])).numpy())
        confusion.update(torch.from_numpy(predicted[0]), target)
        if len(predicted) == 2:
            labelled = target.numpy() != IGNORE_INDEX
            disagreement[val.ids[index]] = int((predicted[0] != predicted[1])[labelled].sum())
    ids, reasons = choose(val.ids, disagreement)
    chosen = VOCSegmentation(voc_dir, cfg.val_split, ids=ids)
    image_miou: dict[str, dict[str, float]] = {}
    for panel, run in shown:
        image_miou[panel.key] = {}
        for index, predicted in _together([_masks(run, panel.protocol, chosen, batch_size)]):
            image_id = ids[index]
            write_mask(directory / panel.key / f"{image_id}.png", predicted[0])
            target = read_mask(mask_path(voc_dir, cfg.val_split, image_id)).numpy()
            image_miou[panel.key][image_id] = image_miou_of(predicted[0], target)
    return Gallery(protocol, cfg.val_split, str(voc_dir), ids, reasons, [panel for panel, _ in shown], image_miou,
                   confusion.matrix.tolist(), str(directory))


def choose(ids: Sequence[str], disagreement: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    """The DISAGREEING ids of most disagreement (ties in split order), then of the rest at random (fixed
    seed) as many as make DISAGREEING + DRAWN: all drawn when there is no baseline to disagree with."""
    ranked = sorted((i for i in ids if disagreement.get(i, 0) > 0), key=lambda i: -disagreement[i])[:DISAGREEING]
    reasons = {i: f"the best and the baseline disagree on {disagreement[i]} pixels" for i in ranked}
    rest = [i for i in ids if i not in reasons]
    count = min(len(rest), DISAGREEING + DRAWN - len(ranked))  # as many images in all, whatever disagrees
    drawn = np.random.default_rng(DRAW_SEED).choice(len(rest), size=count, replace=False)
    reasons |= {rest[k]: f"drawn at random (seed {DRAW_SEED})" for k in sorted(drawn.tolist())}
    return list(reasons), reasons


def image_miou_of(predicted: np.ndarray, target: np.ndarray) -> float:
    """One image's mIoU: over the classes in its ground truth or prediction, void pixels ignored."""
    labelled = target != IGNORE_INDEX
    predicted, target = predicted[labelled], target[labelled]
    classes = np.union1d(np.unique(predicted), np.unique(target))
    if classes.size == 0:
        return float("nan")
    return float(np.mean([np.sum((predicted == c) & (target == c)) / np.sum((predicted == c) | (target == c))
                          for c in classes]))


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """A class-id mask as VOC's SegmentationClass PNGs are: paletted, index = class id, 255 = void."""
    return write_atomic(path, lambda file: mask_png(mask.astype(np.uint8)).save(file, format="PNG"))


def _masks(run: FinalRun, protocol_name: str, dataset: VOCSegmentation,
           batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, predicted class ids as uint8 HxW) of every image of `dataset`, as scoring under the protocol
    predicts them (its CRF included), batch by same-size batch."""
    cfg = run.configuration.config
    protocol = PRESETS[protocol_name].for_run(cfg.output_stride)
    model, _, _ = load_run_model(run.run_dir, protocol.output_stride)
    device = resolve_device(cfg.device)
    model = model.to(device, memory_format=torch.channels_last)
    for indices, labels, _ in predicted_labels(model, dataset, device, protocol, batch_size=batch_size,
                                                workers=cfg.workers, amp_dtype=amp_dtype_for(device)):
        yield from zip(indices, labels.to(torch.uint8).cpu().numpy())


def _together(passes: Sequence[Iterator[tuple[int, np.ndarray]]]) -> Iterator[tuple[int, list[np.ndarray]]]:
    """The passes' predictions of each image side by side (they batch the same dataset the same way)."""
    for items in zip(*passes, strict=True):
        if len({index for index, _ in items}) != 1:
            raise RuntimeError(f"the passes over val batch it differently: images {[i for i, _ in items]}")
        yield items[0][0], [mask for _, mask in items]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _from_record(values: dict) -> Gallery:
    return Gallery(**{**values, "panels": [Panel(**panel) for panel in values["panels"]]})
