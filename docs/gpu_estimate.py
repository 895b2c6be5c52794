"""The estimated GPU bill of studies/voc_r50.toml in docs/performance.md, reproducible.

No GPU has run the planner's probe yet, so this writes a probe from stated assumptions (not
measurements) and prices the study with hpo.plan's own cost model and bill:

    python docs/gpu_estimate.py [--card rtx3090|a100|h100] [--images-per-second T]

A corner trains at utilisation x the card's dense bf16 peak / its training FLOPs per image
(segtrain.profile's count: forward + backward of the convolutions and matrix products), and
evaluates at EVAL_SPEEDUP times that. `--images-per-second` replaces the baseline's derived
throughput (ResNet-50, OS 16, crop 513) with one you measured, the others scaled by FLOPs alike.
Replace its table with `python -m hpo.plan --study studies/voc_r50.toml` on a real card.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from hpo.plan import probe
from hpo.plan.cost import CostModel
from hpo.plan.estimate import Estimator, describe
from hpo.spec import load_spec

STUDY = Path(__file__).resolve().parents[1] / "studies" / "voc_r50.toml"
# Training GFLOP per image of the baseline (ResNet-50, output stride 16, crop 513, no aux head):
# segtrain.profile.training_flops, counted on the meta device (tests/test_plan.py checks it)
BASELINE_GFLOP = 305.2
# the other corners relative to it, from the same counts at crop 513 (docs/performance.md)
STRIDE = {16: 1.0, 8: 3.31}
BACKBONE = {("resnet50", 16): 1.0, ("resnet50", 8): 1.0, ("resnet101", 16): 1.41, ("resnet101", 8): 1.48}
AUX = 1.05  # the FCN head on layer3
# evaluation: a forward pass, ~1/3 of a training step's FLOPs, on VOC's images (mostly 500 x 375:
# 0.71x the pixels of a 513 crop): 3 / 0.71 = ~4x the training throughput
EVAL_SPEEDUP = 4


@dataclasses.dataclass(frozen=True)
class Card:
    name: str
    dense_bf16_tflops: float  # the data sheet's dense (non-sparse) peak
    utilisation: float  # assumed: the fraction of that peak the training step reaches

    @property
    def baseline_images_per_second(self) -> float:
        return self.utilisation * self.dense_bf16_tflops * 1e12 / (BASELINE_GFLOP * 1e9)


# Utilisation 0.20: what a well-fed convolutional network trains at with AMP and channels_last in
# eager PyTorch on an A100 (ResNet-50 on ImageNet at ~2,600 images/s x 24.6 GFLOP = 64 TFLOP/s = 0.21 of
# 312). H100 0.12: its peak is 3.2x the A100's but its memory bandwidth only 1.6x, and BatchNorm, ReLU,
# the upsampling and the loss move memory rather than multiply. GeForce cards at their fp32-accumulation
# peak (the one autocast's matmuls run at), the same 0.20.
CARDS = {
    "rtx3090": Card("RTX 3090-class GPU (71 TFLOP/s dense bf16, fp32 accumulation)", 71, 0.20),
    "a100": Card("A100 (312 TFLOP/s dense bf16)", 312, 0.20),
    "h100": Card("H100 SXM (989 TFLOP/s dense bf16)", 989, 0.12),
}


def relative_cost(corner: probe.Corner) -> float:
    """A corner's training FLOPs per image relative to the baseline's."""
    cost = STRIDE[corner.output_stride] * BACKBONE[corner.backbone, corner.output_stride]
    return cost * (corner.crop_size / 513) ** 2 * (AUX if corner.aux_loss else 1.0)


def assumed_probe(spec, images_per_second: float, card_name: str) -> probe.Probe:
    """Every corner the real probe would measure, at the throughput the assumptions give it."""

    def seconds_per_image(corner) -> float:
        return relative_cost(corner) / images_per_second / (EVAL_SPEEDUP if corner.kind == "eval" else 1)

    corners = tuple(dataclasses.replace(corner, images_per_second=1 / seconds_per_image(corner),
                                        peak_memory_bytes=0, parameters=1)
                    for corner in probe.corner_configs(spec))
    return probe.Probe(spec.study.name, "assumed", f"{card_name} (assumed, not measured)", "cuda", "-",
                       80 * 2**30, "assumed: no corner runs out of memory", {"key": probe.settings_key(spec)},
                       corners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", choices=CARDS, default="rtx3090", help="the card class (default: rtx3090)")
    parser.add_argument("--images-per-second", type=float,
                        help="the baseline's training images/s, measured, instead of the card's derived figure")
    args = parser.parse_args()
    card = CARDS[args.card]
    throughput = args.images_per_second or card.baseline_images_per_second
    print(f"{card.name}: baseline {throughput:.3g} training images/s "
          + ("(given)" if args.images_per_second else
             f"= {card.utilisation:g} x {card.dense_bf16_tflops:g} TFLOP/s / {BASELINE_GFLOP:g} GFLOP an image"))
    with tempfile.TemporaryDirectory() as scratch:
        spec = load_spec(STUDY).with_output_dir(scratch)
        plan = Estimator(spec, CostModel(assumed_probe(spec, throughput, card.name))).plan()
        print(describe(plan, "GPU-hours"))


if __name__ == "__main__":
    main()
