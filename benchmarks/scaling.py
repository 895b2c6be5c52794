"""Training cost vs crop size, output stride and backbone: the cost model behind GPU-hour estimates.

A search trial's cost is images x seconds per image, and seconds per image grows
with the crop's pixels (time ~ crop^a, a ~ 2 once fixed per-layer costs are
amortised), with output stride 8 (layer3 and layer4 at twice the resolution) and
with ResNet-101's extra 17 blocks of layer3. This measures bare training steps
(forward, loss, backward, SGD step; `train_loop.py` shows the loop adds little) for
each configuration in a fresh forked process, so its peak resident memory is its own,
then fits a and prints the factors studies/voc_r50.toml's estimate uses.

CPU figures: the ratios carry over to a GPU roughly (both are dominated by the
convolutions' FLOPs at large crops), the absolute numbers do not.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import time
from dataclasses import dataclass

from common import machine, median, parse_args, print_table, result

BATCH = 2  # the smallest batch BatchNorm allows: lets crop 321 at stride 8 with ResNet-101 run on a small CPU box
VOC_R50_CROPS = (321, 417, 513)  # studies/voc_r50.toml's crop choices; baseline 513


@dataclass(frozen=True)
class Measurement:
    backbone: str
    output_stride: int
    crop: int
    seconds_per_image: float  # median over the timed steps
    peak_rss_bytes: int  # peak resident set of the process that trained it
    added_rss_bytes: int  # peak minus the resident set before the model was built


def measure(backbone: str, output_stride: int, crop: int, steps: int) -> Measurement:
    """One configuration: build, one warm-up step, then `steps` timed steps (run in a child process)."""
    import torch
    from torch import nn

    from segtrain.config import TrainConfig
    from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
    from segtrain.model import build_model
    from segtrain.optim import build_optimizer

    rss_before = _current_rss_bytes()
    cfg = TrainConfig(backbone=backbone, output_stride=output_stride, crop_size=crop, batch_size=BATCH,
                      pretrained=None, device="cpu")
    torch.manual_seed(0)
    model = build_model(backbone, output_stride, NUM_CLASSES, None).to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    images = torch.randn(BATCH, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, NUM_CLASSES, (BATCH, crop, crop))
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = criterion(model(images)["out"], masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return Measurement(backbone, output_stride, crop, median(seconds[1:]) / BATCH, peak, peak - rss_before)


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _child(connection, *args) -> None:
    try:
        connection.send(measure(*args))
    except BaseException as error:  # noqa: BLE001 - report whatever it was to the parent
        connection.send(error)
    finally:
        connection.close()


def measure_in_child(*args) -> Measurement:
    """Fork a child per configuration: its peak RSS is that configuration's alone.

    The parent has imported torch but run nothing with it, so forking is safe.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, *args))
    process.start()
    sender.close()
    outcome = receiver.recv()
    process.join()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def exponent(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(seconds per image) on log(crop)."""
    xs = [math.log(crop) for crop, _ in points]
    ys = [math.log(seconds) for _, seconds in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
            / sum((x - mean_x) ** 2 for x in xs))


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    args = parse_args(__doc__)
    if args.quick:
        backbones, strides, crops, steps = ("resnet50",), (16,), (65, 97), 1
    else:
        backbones, strides, crops, steps = ("resnet50", "resnet101"), (16, 8), (65, 129, 257, 321), 2
    import torch  # noqa: F401 - imported once here, before forking, so children start warm

    print(f"{machine()}\nbatch {BATCH}, {steps} timed steps after 1 warm-up, one forked process per row")
    rows, found = [], {}
    for backbone in backbones:
        for stride in strides:
            for crop in crops:
                m = measure_in_child(backbone, stride, crop, steps)
                found[backbone, stride, crop] = m
                rows.append((backbone, stride, crop, 1 / m.seconds_per_image, m.seconds_per_image * 1000,
                             m.peak_rss_bytes / 2 ** 20, m.added_rss_bytes / 2 ** 20))
                print(f"  {backbone} OS{stride} crop {crop}: {1 / m.seconds_per_image:.3g} images/s", flush=True)
    print_table(["backbone", "OS", "crop", "images/s", "ms/image", "peak RSS MiB", "added MiB"], rows,
                title="training cost (bare step, CPU)")

    large = [c for c in crops if c >= 129] if len(crops) > 2 else list(crops)  # past the fixed costs
    fits = []
    for backbone in backbones:
        for stride in strides:
            all_crops = exponent([(c, found[backbone, stride, c].seconds_per_image) for c in crops])
            large_crops = exponent([(c, found[backbone, stride, c].seconds_per_image) for c in large])
            fits.append((f"{backbone} OS{stride}", all_crops, large_crops))
    print_table(["series", f"a, crops {min(crops)}-{max(crops)}", f"a, crops {min(large)}-{max(large)}"], fits,
                title="time per image ~ crop^a (least squares on logs)")
    a = median([large_crops for _, _, large_crops in fits])

    biggest = max(crops)
    factors = []
    if 8 in strides:
        factors += [(f"OS 8 / OS 16, {b}", found[b, 8, c].seconds_per_image / found[b, 16, c].seconds_per_image)
                    for b in backbones for c in (crops[-2], biggest)]
    if "resnet101" in backbones:
        factors += [(f"ResNet-101 / ResNet-50, OS{s}",
                     found["resnet101", s, c].seconds_per_image / found["resnet50", s, c].seconds_per_image)
                    for s in strides for c in (crops[-2], biggest)]
    if factors:
        print_table(["cost factor (crops " + f"{crops[-2]}, {biggest})", "ratio"],
                    [(name, value) for name, value in factors], title="cost factors")
        os8 = geometric_mean([v for n, v in factors if n.startswith("OS 8") and "resnet50" in n])
        pixels = sum((c / 513) ** a for c in VOC_R50_CROPS) / len(VOC_R50_CROPS)
        print(f"\nstudies/voc_r50.toml, crops {VOC_R50_CROPS} and strides (8, 16) drawn evenly: the average "
              f"trial costs {pixels:.2f} (crop, a = {a:.2f}) x {(1 + os8) / 2:.2f} (stride, OS 8 = {os8:.2f}x) "
              f"= {pixels * (1 + os8) / 2:.2f}x the baseline trial (crop 513, OS 16)")
    result("scaling", a, "~", 2)


if __name__ == "__main__":
    main()
