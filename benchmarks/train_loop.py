"""Training-loop efficiency: segtrain's whole loop vs a bare forward+backward+step.

`engine.train` reads a synthetic VOC tree from disk through a DataLoader, decodes,
augments, converts the uint8 batches to normalised float32 channels_last on the device,
computes the loss, steps optimizer and schedule, checks losses and logs. Its `TrainResult.images_per_second` counts
training time only (evaluation excluded). The bare loop runs the same model,
optimizer and loss (built by the engine's own `_Run`, so every setting matches) on
the very batches the loop would load, pre-built in memory and already converted. The ratio is what the
loop's machinery costs; it should be >= 0.95.

Made equal: same config, model init and data; the same number of steps, each run
timed from its first step on a freshly built model (so both pay a fresh model's
first step; the kernels are warmed up once, before anything is timed); same torch
threads. DataLoader workers (0, 1, 2) are compared too: on a 2-core machine a
worker process competes with the training threads for the same cores.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from common import interleaved, machine, median, parse_args, print_table, result, spread, timed

from segtrain.config import TrainConfig
from segtrain.data.transforms import to_device
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.distributed import ProcessGroup
from segtrain.engine import _Run, train

CPU = torch.device("cpu")
TRAIN_IMAGES = 64  # a power of two: epochs = steps * batch / 64 is exact, so the run is `steps` steps


def loop_config(voc_dir: Path, crop: int, batch: int, steps: int, workers: int) -> TrainConfig:
    """ResNet-50, output stride 16, from scratch, CPU; one evaluation (on one image) at the end."""
    return TrainConfig(data_root=str(voc_dir), train_split="train", val_split="val", backbone="resnet50",
                       output_stride=16, pretrained=None, crop_size=crop, batch_size=batch,
                       epochs=steps * batch / TRAIN_IMAGES, eval_points=1, eval_batch_size=1,
                       workers=workers, device="cpu", lr=0.01)


def full_loop(cfg: TrainConfig) -> float:
    """images/s of engine.train, evaluation excluded (TrainResult.images_per_second)."""
    return train(cfg, save_checkpoints=False).images_per_second


def prebuilt_batches(cfg: TrainConfig, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches the loop will see (same seeded stream), in memory, as the model gets them."""
    loader = iter(_Run(cfg.replace(workers=0), CPU, ProcessGroup(), None, False).train_loader())
    return [to_device(images, masks, CPU) for images, masks in (next(loader) for _ in range(steps))]


def bare_loop(cfg: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    """images/s of forward + loss + backward + optimizer step, nothing else, on a fresh model."""
    run = _Run(cfg, CPU, ProcessGroup(), None, False)  # the engine's model, optimizer and loss
    model, optimizer, criterion = run.model, run.optimizer, run.criterion
    model.train()

    def run_steps() -> None:
        for step in range(steps):
            images, masks = batches[step % len(batches)]
            loss = criterion(model(images)["out"], masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return steps * cfg.batch_size / timed(run_steps)


def main() -> None:
    args = parse_args(__doc__)
    crop, batch, steps, repeats, image_size, worker_counts = \
        (65, 2, 2, 1, 64, (0,)) if args.quick else (129, 4, 16, 3, 128, (0, 1, 2))
    with tempfile.TemporaryDirectory() as tmp:
        voc_dir = write_synthetic_voc(tmp, train=TRAIN_IMAGES, val=1, size=image_size, classes=5, seed=0)
        cfg = loop_config(voc_dir, crop, batch, steps, workers=0)
        print(f"{machine()}\nResNet-50, OS 16, crop {crop}, batch {batch}, {steps} steps a run, "
              f"synthetic {image_size}x{image_size} JPEG/PNG, {repeats} rounds")
        batches = prebuilt_batches(cfg, steps)
        bare_loop(cfg, batches, 2)  # warm-up: first-use costs of these shapes, paid by nobody below
        alternatives = {"bare forward+backward+step": lambda: bare_loop(cfg, batches, steps)}
        for workers in worker_counts:
            alternatives[f"segtrain loop, workers={workers}"] = \
                lambda workers=workers: full_loop(cfg.replace(workers=workers))
        rates = interleaved(alternatives, repeats)

    bare = rates["bare forward+backward+step"]
    # ratios paired within a round, so a slow spell of the shared machine cancels out
    ratios = {name: [value / base for value, base in zip(values, bare)] for name, values in rates.items()}
    print_table(["training", "images/s (median)", "range", "/ bare (median of rounds)"],
                [(name, median(values), spread(values), median(ratios[name])) for name, values in rates.items()],
                title=f"training throughput, evaluation excluded, {torch.get_num_threads()} torch threads")
    best = max((name for name in rates if name.startswith("segtrain")), key=lambda name: median(ratios[name]))
    print(f"\nbest loop setting: {best}; per-round ratios "
          + ", ".join(f"{value:.3f}" for value in ratios[best])
          + (f" (stdev {statistics.stdev(ratios[best]):.3f})" if len(ratios[best]) > 1 else ""))
    result("train_loop", median(ratios[best]), ">=", 0.95)


if __name__ == "__main__":
    main()
