"""Evaluation throughput: batch-independent same-size batches vs the padded batches they replace,
and what output stride 8 and 6-scale + flip cost.

segtrain used to stack each eval batch by padding it to its largest image
(`pad_collate`, reproduced below as the reference), which made a prediction depend on
its batch mates. It now batches only images of one size (segtrain.evaluation), so a
VOC-like mix of sizes gives smaller, padding-free batches: fewer pixels to compute,
less batching. Timed side by side on the same images (segtrain's synthetic val scenes,
which come in VOC's shapes: 4:3 and 3:4, three long sides), end to end from JPEG to
confusion matrix, images/s:

- padded batches (the old evaluation), eval batch size 8;
- same-size batches, eval batch size 8 (the RESULT: new / old, goal >= 0.8);
- same-size batches of one image: the worst case, where no two images share a size;
- output stride 8 at evaluation, and 6 scales (0.5-1.75) + flip, relative to single scale
  (on fewer images: each costs ~17 single-scale passes).

The model is an untrained ResNet-50 DeepLabV3: speed does not depend on the weights.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from common import interleaved, machine, median, parse_args, print_table, result, spread, timed
from torch.utils.data import DataLoader

from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.transforms import MEAN_PIXEL, to_device
from segtrain.data.voc import VOCSegmentation
from segtrain.evaluation import MULTI_SCALES, evaluate_model
from segtrain.metrics import ConfusionMatrix, Scores
from segtrain.model import build_model

CPU = torch.device("cpu")
BATCH = 8


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The old collate: pad images (with the mean pixel, 0 once normalised) and masks (with 255) bottom/right
    to the largest."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = torch.tensor(MEAN_PIXEL, dtype=torch.uint8)[:, None, None].repeat(len(batch), 1, height, width)
    masks = batch[0][1].new_full((len(batch), height, width), IGNORE_INDEX)
    for slot, (image, mask) in enumerate(batch):
        images[slot, :, :image.shape[-2], :image.shape[-1]] = image
        masks[slot, :mask.shape[-2], :mask.shape[-1]] = mask
    return images, masks


def padded_evaluation(model: torch.nn.Module, dataset: VOCSegmentation, batch_size: int) -> Scores:
    """segtrain's evaluation before same-size batches: dataset order, each batch padded to its largest image."""
    model.eval()
    matrix = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    with torch.inference_mode():
        for images, masks in DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate):
            images, masks = to_device(images, masks, CPU)
            matrix.update(model(images)["out"].argmax(dim=1), masks)
    return matrix.compute()


def images_per_second(images: int, evaluate: Callable[[], object]) -> Callable[[], float]:
    return lambda: images / timed(evaluate)


def main() -> None:
    args = parse_args(__doc__)
    images, multi_scale_images, max_side, repeats = (3, 1, 48, 1) if args.quick else (24, 4, 250, 3)
    with tempfile.TemporaryDirectory() as tmp:
        voc_dir = write_synthetic_voc(Path(tmp), train=2, val=images, size=max_side, classes=20, seed=0)
        dataset = VOCSegmentation(voc_dir, "val")
        # the first images of the same set (a scene depends on its seed and index alone)
        few = VOCSegmentation(write_synthetic_voc(Path(tmp) / "few", train=2, val=multi_scale_images,
                                                  size=max_side, classes=20, seed=0), "val")
        sizes = dataset.image_sizes
        print(f"{machine()}\n{images} synthetic val images of {len(set(sizes))} sizes (height x width: "
              + ", ".join(f"{h}x{w} {sizes.count((h, w))}" for h, w in sorted(set(sizes), key=sizes.index))
              + f"), eval batch size {BATCH}, {repeats} rounds" + ("" if args.quick else " after a warm-up round"))
        torch.manual_seed(0)
        os16 = build_model("resnet50", 16, NUM_CLASSES).eval().to(memory_format=torch.channels_last)
        os8 = build_model("resnet50", 8, NUM_CLASSES).eval().to(memory_format=torch.channels_last)
        os8.load_state_dict(os16.state_dict())  # one set of weights: what evaluating an OS 16 run at 8 does

        same = evaluate_model(os16, dataset, CPU, batch_size=BATCH) == evaluate_model(os16, dataset, CPU, batch_size=1)
        print(f"same-size batches: eval batch size 8 and 1 give the same scores: {same}")
        alternatives = {
            "padded batches (old)": images_per_second(images, lambda: padded_evaluation(os16, dataset, BATCH)),
            "same-size batches": images_per_second(images, lambda: evaluate_model(os16, dataset, CPU,
                                                                                 batch_size=BATCH)),
            "same-size, batch 1": images_per_second(images, lambda: evaluate_model(os16, dataset, CPU, batch_size=1)),
            "output stride 8": images_per_second(images, lambda: evaluate_model(os8, dataset, CPU, batch_size=BATCH)),
            "single scale, few": images_per_second(multi_scale_images, lambda: evaluate_model(
                os16, few, CPU, batch_size=BATCH)),
            "6 scales + flip, few": images_per_second(multi_scale_images, lambda: evaluate_model(
                os16, few, CPU, scales=MULTI_SCALES, flip=True, batch_size=BATCH)),
        }
        if not args.quick:
            interleaved(alternatives, 1)  # warm-up round, discarded
        rates = interleaved(alternatives, repeats)

    def ratios(numerator: str, denominator: str) -> list[float]:  # paired within each round
        return [a / b for a, b in zip(rates[numerator], rates[denominator])]

    relative = {"padded batches (old)": ratios("same-size batches", "padded batches (old)"),
                "same-size batches": [1.0] * repeats,
                "same-size, batch 1": ratios("same-size, batch 1", "same-size batches"),
                "output stride 8": ratios("same-size batches", "output stride 8"),
                "single scale, few": [1.0] * repeats,
                "6 scales + flip, few": ratios("single scale, few", "6 scales + flip, few")}
    meaning = {"padded batches (old)": "new / old images/s", "same-size, batch 1": "batch 1 / batch 8 images/s",
               "output stride 8": "cost: OS 16 / OS 8 images/s", "6 scales + flip, few": "cost: single / MS+flip"}
    print_table(["evaluation", "images/s (median)", "range", "ratio (median of rounds)", "ratio is"],
                [(name, median(values), spread(values), median(relative[name]), meaning.get(name, ""))
                 for name, values in rates.items()],
                title=f"evaluation images/s, CPU, {torch.get_num_threads()} torch threads")
    result("evaluation", median(relative["padded batches (old)"]), ">=", 0.8)


if __name__ == "__main__":
    main()
