"""The estimated GPU bill of studies/voc_r50.toml in docs/performance.md, reproducible.

No GPU has run the planner's probe yet, so this writes a probe from stated assumptions
(not measurements) and prices the study with hpo.plan's own cost model and bill:

    python docs/gpu_estimate.py [--images-per-second 20]

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
# per-image cost relative to ResNet-50 at output stride 16: training FLOPs, benchmarks/scaling.py
STRIDE = {16: 1.0, 8: 3.3}
BACKBONE = {("resnet50", 16): 1.0, ("resnet50", 8): 1.0, ("resnet101", 16): 1.41, ("resnet101", 8): 1.48}
EVAL_SPEEDUP = 4  # evaluation is a forward pass only: ~4x the training throughput


def assumed_probe(spec, images_per_second: float) -> probe.Probe:
    """Every corner the real probe would measure, at the throughput the assumptions give it."""

    def seconds_per_image(corner) -> float:
        cost = STRIDE[corner.output_stride] * BACKBONE[corner.backbone, corner.output_stride]
        cost *= (corner.crop_size / 513) ** 2
        return cost / images_per_second / (EVAL_SPEEDUP if corner.kind == "eval" else 1)

    corners = tuple(dataclasses.replace(corner, images_per_second=1 / seconds_per_image(corner),
                                        peak_memory_bytes=0, parameters=1)
                    for corner in probe.corner_configs(spec))
    return probe.Probe(spec.study.name, "assumed", "3090/A10-class GPU (assumed, not measured)", "cuda", "-",
                       80 * 2**30, "assumed: no corner runs out of memory", {"key": probe.settings_key(spec)},
                       corners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-second", type=float, default=20.0,
                        help="ResNet-50 training images/s at crop 513, OS 16, AMP (default 20: a 3090/A10-class card)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        spec = load_spec(STUDY).with_output_dir(scratch)
        plan = Estimator(spec, CostModel(assumed_probe(spec, args.images_per_second))).plan()
        print(describe(plan, "GPU-hours"))


if __name__ == "__main__":
    main()
