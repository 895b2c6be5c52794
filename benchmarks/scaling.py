"""Training cost vs crop size, output stride and backbone: the cost model behind GPU-hour estimates.

A search trial costs images x seconds per image, and seconds per image grows with
the crop's pixels (time ~ crop^a, a ~ 2 once fixed per-layer costs are amortised),
with output stride 8 (layer3 and layer4 at twice the resolution) and with
ResNet-101 (17 more blocks in layer3). For each configuration this

- times the engine's training steps with segtrain.profile, as hpo.plan's probe
  does (forward, loss, backward, SGD step: `train_loop.py` shows that the loop
  around them adds nothing measurable), in a forked process of its own, so that its
  peak resident memory is its own too;
- counts the training FLOPs per image (forward + backward, on the meta device:
  no compute), which do not depend on the machine;

then fits a (on the two largest crops: smaller ones leave the CPU underused), and
prints the stride and backbone factors and what they make of studies/voc_r50.toml's
estimate. On a GPU at crops of 321-513 time follows the
FLOPs more closely than on this CPU, so the FLOP factors are the ones to use there.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path

from common import in_fork, machine, median, parse_args, print_table, result

BATCH = 2  # the smallest batch BatchNorm allows: crop 321 at stride 8 with ResNet-101 fits a small CPU box
BASELINE = ("resnet50", 16, 513)


@dataclass(frozen=True)
class Measurement:
    seconds_per_image: float  # mean over the timed steps
    peak_rss_bytes: int  # peak resident set of the process that trained it
    added_rss_bytes: int  # that peak minus the resident set before the model was built


def train_config(backbone: str, output_stride: int, crop: int):
    from segtrain.config import TrainConfig

    return TrainConfig(backbone=backbone, output_stride=output_stride, crop_size=crop, batch_size=BATCH,
                       pretrained=None, device="cpu")


def measure(backbone: str, output_stride: int, crop: int, steps: int) -> Measurement:
    """The engine's training step, timed by segtrain.profile (the probe's own measurement: one
    warm-up step, then `steps` timed ones). Run it in a fresh child process."""
    import tempfile

    import torch

    from segtrain import profile

    rss_before = _current_rss_bytes()
    with tempfile.TemporaryDirectory() as cache:  # the two-image set profile builds the run on
        found = profile.measure_training(train_config(backbone, output_stride, crop), steps, torch.device("cpu"), cache)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Measurement(1 / found.images_per_second, peak, peak - rss_before)


def training_flops(backbone: str, output_stride: int, crop: int) -> float:
    """FLOPs of one training image (forward + backward), counted on the meta device."""
    from segtrain import profile

    return profile.training_flops(train_config(backbone, output_stride, crop))


def voc_r50_crops() -> tuple[int, ...]:
    """studies/voc_r50.toml's crop choices (its baseline is 513 at OS 16)."""
    from hpo.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "voc_r50.toml")
    return tuple(sorted(choice for param in spec.space if param.field == "crop_size" for choice in param.choices))


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def exponent(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(cost) on log(crop)."""
    xs = [math.log(crop) for crop, _ in points]
    ys = [math.log(cost) for _, cost in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def main() -> None:
    args = parse_args(__doc__)
    if args.quick:
        backbones, strides, crops, steps = ("resnet50",), (16, 8), (65, 97), 1
    else:
        backbones, strides, crops, steps = ("resnet50", "resnet101"), (16, 8), (65, 129, 257, 321), 2
    configs = [(b, s, c) for b in backbones for s in strides for c in crops]
    import torch  # noqa: F401 - once, in the parent (which computes nothing with it), so children fork warm

    print(f"{machine()}\nbatch {BATCH}, {steps} timed steps after 1 warm-up, a forked process per row")
    flops = {config: training_flops(*config) for config in configs}
    found: dict[tuple[str, int, int], Measurement] = {}
    for config in configs:
        found[config] = in_fork(lambda: measure(*config, steps))
        print(f"  {config}: {1 / found[config].seconds_per_image:.3g} images/s", flush=True)
    print_table(["backbone", "OS", "crop", "images/s", "ms/image", "GFLOP/image", "GFLOP/s", "peak RSS MiB",
                 "added MiB"],
                [(*config, 1 / m.seconds_per_image, 1000 * m.seconds_per_image, flops[config] / 1e9,
                  flops[config] / 1e9 / m.seconds_per_image, m.peak_rss_bytes / 2 ** 20, m.added_rss_bytes / 2 ** 20)
                 for config, m in found.items()],
                title="training cost per image (the engine's step, CPU; FLOPs forward + backward)")

    # Small crops leave the CPU's cores underused (see GFLOP/s), which flattens the curve; the
    # two largest crops are where throughput has levelled off, as on a GPU at crops of 321-513.
    large = crops[-2:]
    fits = [(f"{b} OS{s}",
             exponent([(c, found[b, s, c].seconds_per_image) for c in crops]),
             exponent([(c, found[b, s, c].seconds_per_image) for c in large]),
             exponent([(c, flops[b, s, c]) for c in large]))
            for b in backbones for s in strides]
    print_table(["series", f"a, time, crops {min(crops)}-{max(crops)}", f"a, time, {large[0]}-{large[1]}",
                 f"a, FLOPs, {large[0]}-{large[1]}"], fits, title="cost per image ~ crop^a (least squares on logs)")
    a = median([fit[2] for fit in fits])

    # factors at the largest crop measured, CPU time and FLOPs; and the FLOPs at the GPU recipe's crop 513
    top = max(crops)
    gpu_flops = {config: training_flops(*config) for config in
                 [(b, s, 513) for b in backbones for s in strides]}
    factors = [(f"OS 8 / OS 16, {b}", found[b, 8, top].seconds_per_image / found[b, 16, top].seconds_per_image,
                flops[b, 8, top] / flops[b, 16, top], gpu_flops[b, 8, 513] / gpu_flops[b, 16, 513])
               for b in backbones]
    if "resnet101" in backbones:
        factors += [(f"ResNet-101 / ResNet-50, OS {s}",
                     found["resnet101", s, top].seconds_per_image / found["resnet50", s, top].seconds_per_image,
                     flops["resnet101", s, top] / flops["resnet50", s, top],
                     gpu_flops["resnet101", s, 513] / gpu_flops["resnet50", s, 513]) for s in strides]
    print_table(["cost factor", f"CPU time, crop {top}", f"FLOPs, crop {top}", "FLOPs, crop 513"], factors,
                title="cost factors")

    # studies/voc_r50.toml: its crops and strides (8, 16), each drawn evenly (random sampling; TPE
    # drifts to whatever wins), relative to its baseline trial (crop 513, OS 16)
    voc_crops = voc_r50_crops()
    os8_time = found["resnet50", 8, top].seconds_per_image / found["resnet50", 16, top].seconds_per_image
    crop_factor = sum((c / 513) ** a for c in voc_crops) / len(voc_crops)
    by_time = crop_factor * (1 + os8_time) / 2
    space = [("resnet50", s, c) for s in (8, 16) for c in voc_crops]
    for config in space:
        gpu_flops.setdefault(config, training_flops(*config))
    by_flops = sum(gpu_flops[config] for config in space) / len(space) / gpu_flops[BASELINE]
    print(f"\nstudies/voc_r50.toml, crops {voc_crops} x strides (8, 16) drawn evenly, the average trial "
          f"costs, relative to the baseline trial (crop 513, OS 16):\n"
          f"  by CPU time: {crop_factor:.2f} (crops, a = {a:.2f}) x {(1 + os8_time) / 2:.2f} "
          f"(strides, OS 8 = {os8_time:.2f}x) = {by_time:.2f}\n"
          f"  by FLOPs:    {by_flops:.2f}   (what a GPU at these crops follows more closely)")
    result("scaling", a, "~", 2)


if __name__ == "__main__":
    main()
