"""mIoU of a model under an evaluation protocol, and of a run dir's checkpoint; batch-independent.

Every val image is scored at its own size, uncropped and unpadded (mmsegmentation's
"whole" mode). Images share a batch only with images of the same height and width
(`same_size_batches`), so no batch ever holds padding, and with BatchNorm in eval mode
an image's prediction is the one it gets alone: it does not depend on its batch mates,
on `eval_batch_size` or on the number of processes. (Padding a batch to its largest
image does make it depend on them: DeepLabV3's image-pooling branch averages over the
padding.) Under torchrun each process scores images rank, rank + N, ... and the
confusion matrices are summed.

A `Protocol` says how: the output stride at evaluation (a model trained at 16 can be
evaluated at 8: layer3 dilated as well, ASPP rates doubled), the input scales and
left-right flips whose softmax probabilities are averaged, and whether a dense CRF
(segtrain.crf, on the CPU) refines that average at the image's size. Its `name` ("os16",
"os8-ms0.5-0.75-1-1.25-1.5-1.75-flip", "os16-crf") is recorded with every figure and
names the file `evaluate_run` writes. See docs/results.md for the presets and the
published protocols they match.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from segtrain import crf as dense_crf
from segtrain.config import OUTPUT_STRIDES, TrainConfig, read_config_file
from segtrain.data import voc_dir_for
from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.transforms import eval_transform, to_device
from segtrain.data.voc import VOCSegmentation
from segtrain.device import amp_dtype_for, autocast, cudnn_benchmark, default_workers, resolve_device
from segtrain.distributed import join_process_group, leave_process_group
from segtrain.errors import ConfigError, UserError, unwrap_worker_errors
from segtrain.fileio import write_json_atomic
from segtrain.metrics import ConfusionMatrix, PerImageCounts, Scores
from segtrain.model import build_model, head_logits, state_dict_problems
from segtrain.progress import LINE_EVERY_SECONDS
from segtrain.progress import progress as show_progress  # `progress` names a flag here

CHECKPOINT = "checkpoint.pt"  # what segtrain.engine writes in a run dir
PER_IMAGE_COUNTS = "per_image_counts.npz"  # and its final evaluation per image (segtrain.metrics.PerImageCounts)
MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # TF DeepLab's model zoo's and mmsegmentation's img_ratios
MODEL_FIELDS = ("model", "backbone", "output_stride", "aux_loss")  # config fields a checkpoint's weights depend on


@dataclass(frozen=True)
class Protocol:
    """How a model is evaluated. `output_stride` None means the run's own; scales are
    factors of each image's size, kept sorted and distinct; `crf`: the averaged softmax refined
    by a dense CRF (segtrain.crf, DeepLab v2's settings) before the argmax."""

    output_stride: int | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: bool = False

    def __post_init__(self) -> None:
        if self.output_stride is not None and self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError("output_stride", f"must be 8 or 16, got {self.output_stride!r}")
        scales = tuple(float(scale) for scale in self.scales)
        if not scales:
            raise ConfigError("scales", "give at least one scale, e.g. 1.0")
        bad = [scale for scale in scales if not (math.isfinite(scale) and scale > 0)]
        if bad:
            raise ConfigError("scales", f"must be > 0, got {', '.join(f'{scale:g}' for scale in bad)}")
        object.__setattr__(self, "scales", tuple(sorted(set(scales))))

    def for_run(self, output_stride: int) -> Protocol:
        """This protocol with the run's output stride filled in where it had none."""
        return dataclasses.replace(self, output_stride=self.output_stride or output_stride)

    @property
    def name(self) -> str:
        """File-name-safe and stable: "os16", "os8-flip", "os16-ms0.5-0.75-1-1.25-1.5-1.75-flip", "os16-crf"."""
        if self.output_stride is None:
            raise ValueError("the run's output stride is not known yet: name Protocol.for_run(...)")
        parts = [f"os{self.output_stride}"]
        if self.scales != (1.0,):
            parts.append("ms" + "-".join(f"{scale:g}" for scale in self.scales))
        if self.flip:
            parts.append("flip")
        if self.crf:
            parts.append("crf")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """`crf` only where it is on, so the result files written before it existed still match their protocol."""
        return {"name": self.name, "output_stride": self.output_stride, "scales": list(self.scales),
                "flip": self.flip, **({"crf": True} if self.crf else {})}


# named protocols, for study specs and docs/results.md
OWN_PROTOCOL = "ss"  # what a run's own evaluations are, during and at the end of training
PRESETS = {
    OWN_PROTOCOL: Protocol(),  # the run's output stride, single scale, no flip: what training evaluates
    "os8": Protocol(output_stride=8),
    "ms_flip": Protocol(scales=MULTI_SCALES, flip=True),
    "os8_ms_flip": Protocol(output_stride=8, scales=MULTI_SCALES, flip=True),  # the paper's strongest on val
    # DeepLab v1/v2's post-processing, on top of the protocols above (CPU work: segtrain.crf)
    "crf": Protocol(crf=True),
    "os8_crf": Protocol(output_stride=8, crf=True),
    "ms_flip_crf": Protocol(scales=MULTI_SCALES, flip=True, crf=True),
}


# --- a model on a data set


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int, rank: int = 0,
                      world_size: int = 1) -> list[list[int]]:
    """Indices rank, rank + world_size, ... of images with these (height, width) sizes, grouped
    by size (groups in order of first appearance) and cut into batches of at most batch_size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(rank, len(sizes), world_size):
        groups.setdefault(tuple(sizes[index]), []).append(index)
    return [group[start:start + batch_size] for group in groups.values()
            for start in range(0, len(group), batch_size)]


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(height, width) times scale, rounded half up as mmcv's rescale does, at least 1 pixel."""
    return tuple(max(1, int(side * scale + 0.5)) for side in size)


def predict(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
            amp_dtype: torch.dtype | None = None, probabilities: bool = False) -> torch.Tensor:
    """Class scores (N x classes x H x W) whose argmax is the prediction: the logits for one
    pass at scale 1 (unless `probabilities`), else the mean of the softmax probabilities
    (float32) over scales and flips.

    Each scale resizes the batch bilinearly without antialiasing (align_corners=False, as
    mmsegmentation's test-time resize and torchvision's DeepLabV3 upsampling), the logits
    are resized back to the input size the same way, then softmax; a flipped pass sees the
    mirrored input and its output is mirrored back. The model must be in eval mode.

    The network runs under autocast to `amp_dtype`; the upsampling of its logits and all
    that follows run in float32, as on the CPU (bfloat16 logits upsampled in bfloat16 tie
    at the argmax where float32 ones do not, so CUDA and CPU scores would differ). cuDNN's
    autotuner is off: every new image size would be tuned again.
    """
    with torch.inference_mode(), cudnn_benchmark(False):
        if tuple(scales) == (1.0,) and not flip and not probabilities:
            return _logits(model, images, amp_dtype)
        size = images.shape[-2:]
        total = None
        for scale in scales:
            scaled = images if scale == 1.0 else F.interpolate(
                images, size=scaled_size(size, scale), mode="bilinear", align_corners=False)
            for mirrored in (False, True) if flip else (False,):
                logits = _logits(model, scaled.flip(-1) if mirrored else scaled, amp_dtype)
                if mirrored:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                softmax = logits.softmax(dim=1)
                total = softmax if total is None else total.add_(softmax)
        return total.div_(len(scales) * (2 if flip else 1))


def _logits(model: nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """float32 logits at the images' size: the network under autocast, the upsampling in float32
    (on the CPU, without autocast, exactly the model's own forward)."""
    with autocast(amp_dtype):
        logits = head_logits(model, images)
    return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)


def eval_loader(dataset: VOCSegmentation, device: torch.device, batch_size: int = 8, workers: int | None = 0,
                persistent: bool = False) -> DataLoader:
    """This process's share of `dataset` (all of it outside torch.distributed) in same-size batches,
    uint8 as the workers decode them (pinned on CUDA); `loader.batch_sampler` lists each batch's
    indices. `workers` None: segtrain.device.default_workers. `persistent`: the workers live as long
    as the loader, for a run that evaluates several times (forking them anew costs seconds each time)."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    workers = default_workers(device) if workers is None else workers
    return DataLoader(dataset, batch_sampler=same_size_batches(dataset.image_sizes, batch_size, rank, world_size),
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                      generator=torch.Generator())  # its seed draw must not move the global RNG


def predictions(model: nn.Module, dataset: VOCSegmentation, device: torch.device, *,
                scales: Sequence[float] = (1.0,), flip: bool = False, batch_size: int = 8, workers: int | None = 0,
                amp_dtype: torch.dtype | None = None, progress: bool = False
                ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(dataset indices, scores as `predict` gives them, masks) for each same-size batch of this
    process's share of `dataset` (all of it outside torch.distributed), on `device`."""
    model.eval()
    for indices, images, masks in _batches(eval_loader(dataset, device, batch_size, workers), progress):
        images, masks = to_device(images, masks, device)
        yield indices, predict(model, images, scales, flip, amp_dtype), masks


def evaluate_model(model: nn.Module, dataset: VOCSegmentation, device: torch.device, *,
                   scales: Sequence[float] = (1.0,), flip: bool = False, batch_size: int = 8, workers: int | None = 0,
                   amp_dtype: torch.dtype | None = None, progress: bool = False, crf: bool = False,
                   per_image: PerImageCounts | None = None, loader: DataLoader | None = None) -> Scores:
    """mIoU etc. of `model` (built at the protocol's output stride) over `dataset`, each image at
    its own size; under torch.distributed every process calls it and gets the same Scores.
    `per_image` (rows: the dataset's indices) gets each image's counts as well. `loader`: an
    `eval_loader` of `dataset` made earlier (a run's, kept between its evaluations), in place of one
    made here from batch_size and workers."""
    if loader is None:
        loader = eval_loader(dataset, device, batch_size, workers)
    return score_batches(model, _batches(loader, progress), device, scales=scales, flip=flip, amp_dtype=amp_dtype,
                         crf=crf, per_image=per_image)


def score_batches(model: nn.Module, batches: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor]],
                  device: torch.device, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                  amp_dtype: torch.dtype | None = None, crf: bool = False,
                  per_image: PerImageCounts | None = None) -> Scores:
    """mIoU etc. of `model` over uint8 (dataset indices, images, masks) batches as eval_loader gives them,
    each of images of one size, predicted as `labelled_batches` does (summed over processes under
    torch.distributed, as `per_image` is)."""
    model.eval()
    matrix = ConfusionMatrix(NUM_CLASSES, device=device, ignore_index=IGNORE_INDEX)
    for indices, labels, masks in labelled_batches(model, batches, device, scales=scales, flip=flip,
                                                   amp_dtype=amp_dtype, crf=crf):
        matrix.update(labels, masks)
        if per_image is not None:
            per_image.update(indices, labels, masks)
    matrix.all_reduce()
    if per_image is not None:
        per_image.all_reduce()
    return matrix.compute()


def labelled_batches(model: nn.Module, batches: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor]],
                     device: torch.device, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                     amp_dtype: torch.dtype | None = None, crf: bool = False
                     ) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor]]:
    """(dataset indices, predicted class ids, masks) of uint8 batches converted on `device`; with `crf`, each
    image's averaged softmax is refined by the dense CRF in a pool of CPU processes (segtrain.crf.Refiner),
    which sees the photo's own uint8 pixels, and each comes alone. `model` in eval mode."""
    def scored() -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        for indices, images, masks in batches:
            inputs, masks = to_device(images, masks, device)
            yield indices, images, predict(model, inputs, scales, flip, amp_dtype, probabilities=crf), masks

    if not crf:
        for indices, _, scores, masks in scored():
            yield indices, scores.argmax(dim=1), masks
        return
    with dense_crf.Refiner() as refiner:
        for (index, mask), labels in refiner.labels(_crf_inputs(scored())):
            yield [index], torch.from_numpy(labels).to(mask.device)[None], mask[None]


def predicted_labels(model: nn.Module, dataset: VOCSegmentation, device: torch.device, protocol: Protocol, *,
                     batch_size: int = 8, workers: int | None = 0, amp_dtype: torch.dtype | None = None
                     ) -> Iterator[tuple[Sequence[int], torch.Tensor, torch.Tensor]]:
    """(dataset indices, predicted class ids, masks) of `dataset` under `protocol` (its scales, flip and CRF;
    `model` built at its output stride), in same-size batches, as scoring predicts them."""
    model.eval()
    yield from labelled_batches(model, _batches(eval_loader(dataset, device, batch_size, workers), False), device,
                                scales=protocol.scales, flip=protocol.flip, amp_dtype=amp_dtype, crf=protocol.crf)


def _crf_inputs(scored: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor, torch.Tensor]]
                ) -> Iterator[tuple[tuple[int, torch.Tensor], np.ndarray, np.ndarray]]:
    """((index, mask), H x W x 3 uint8 RGB, classes x H x W float32 probabilities) per image, on the CPU."""
    for indices, images, probabilities, masks in scored:
        rgb = images.permute(0, 2, 3, 1).cpu().numpy()
        for index, mask, image, image_probabilities in zip(indices, masks, rgb, probabilities.float().cpu().numpy()):
            yield (index, mask), image, image_probabilities


def _batches(loader: DataLoader, progress: bool) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, images, masks) of an eval_loader's batches, with a progress bar."""
    batches = loader.batch_sampler
    with show_progress(total=sum(map(len, batches)), unit="images", desc="eval", leave=False,
                       enabled=progress, every_seconds=LINE_EVERY_SECONDS) as bar:
        for indices, (images, masks) in zip(batches, unwrap_worker_errors(loader)):
            yield indices, images, masks
            bar.update(len(indices))


# --- a run dir


def load_run_model(run_dir: str | Path, output_stride: int | None = None) -> tuple[nn.Module, TrainConfig, int]:
    """(model on the CPU at `output_stride` (None: the run's) with the checkpoint's weights, the
    run's config, the checkpoint's step). The weights do not depend on the dilation, so an
    OS 16 checkpoint loads into an OS 8 model. Problems with the files are UserErrors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run dir: pass the --out dir of a training run "
                        f"(it holds config.json and {CHECKPOINT})")
    config_path, checkpoint_path = run_dir / "config.json", run_dir / CHECKPOINT
    if not config_path.is_file():
        raise UserError(f"{config_path} not found: {run_dir} is not a run dir (segtrain.train --out DIR writes it)")
    if not checkpoint_path.is_file():
        raise UserError(f"{checkpoint_path} not found: this run kept no checkpoint (a search keeps only its "
                        f"best trials' ones); train it again with segtrain.train --out {run_dir}")
    return load_checkpoint_model(checkpoint_path, output_stride, config_path)


def load_checkpoint_model(checkpoint_path: str | Path, output_stride: int | None = None,
                          config_path: Path | None = None) -> tuple[nn.Module, TrainConfig, int]:
    """As load_run_model, from a checkpoint file alone: the run's config is the one the checkpoint holds,
    or `config_path`'s (a run dir's config.json), which must then describe the same model."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise UserError(f"{checkpoint_path}: no such checkpoint file: pass a {CHECKPOINT} that segtrain.train wrote")
    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        trained, weights, step = state["config"], state["model"], int(state["step"])
    except Exception as error:  # a corrupt or foreign file: say which and why, no traceback
        raise UserError(f"{checkpoint_path}: not a readable segtrain checkpoint ({error.__class__.__name__}); "
                        f"train the run again") from None
    cfg = TrainConfig.from_dict(read_config_file(config_path) if config_path else trained)
    trained = {**TrainConfig().to_dict(), **trained}  # a field added since the checkpoint: its default
    differ = [f"{key} {trained[key]!r} vs {getattr(cfg, key)!r}" for key in MODEL_FIELDS
              if trained[key] != getattr(cfg, key)]
    if differ:
        raise UserError(f"{checkpoint_path}: made by another run than {config_path} ({'; '.join(differ)}, "
                        f"checkpoint vs config); keep each checkpoint beside its own config.json")
    model = build_model(cfg.backbone, output_stride or cfg.output_stride, NUM_CLASSES, None, cfg.aux_loss,
                        cfg.model)
    problems = state_dict_problems(model.state_dict(), weights)
    if problems:
        raise UserError(f"{checkpoint_path}: does not fit the {cfg.backbone} model {config_path or 'it'} describes: "
                        + "; ".join(problems))
    model.load_state_dict(weights)
    return model, cfg, step


def evaluate_run(run_dir: str | Path, protocol: Protocol = PRESETS["ss"], *, data_root: str | Path | None = None,
                 split: str | None = None, eval_batch_size: int | None = None, device: str = "auto",
                 out: str | Path | None = None, reuse: bool = False) -> dict[str, Any]:
    """Evaluate a run dir's checkpoint under `protocol` and write the result as JSON; return it.

    Defaults come from the run's config.json: data root, val split, eval batch size (which
    changes the speed, never the result). `out` defaults to run_dir/eval-<protocol name>.json
    (eval-<split>-<protocol name>.json for another split than the run's val split). With
    `reuse`, an existing `out` for the same checkpoint step, split and protocol is returned
    as it is. Under torchrun the processes share the images and rank 0 writes.
    """
    run_dir = Path(run_dir)
    if protocol.crf:
        dense_crf.require()  # before anything is loaded
    model, cfg, step = load_run_model(run_dir, protocol.output_stride)
    protocol = protocol.for_run(cfg.output_stride)
    split = split or cfg.val_split
    batch_size = cfg.eval_batch_size if eval_batch_size is None else eval_batch_size
    if batch_size < 1:
        raise ConfigError("eval_batch_size", f"must be >= 1, got {batch_size}")
    stem = "eval" if split == cfg.val_split else f"eval-{split}"
    out = Path(out) if out is not None else run_dir / f"{stem}-{protocol.name}.json"
    counts_path = out.with_suffix(".npz")  # per image and class: TP, FP, FN (segtrain.metrics.PerImageCounts)
    key = {"run_dir": str(run_dir), "split": split, "checkpoint_step": step, "protocol": protocol.to_dict()}
    if reuse:
        previous = _read_result(out)
        if all(previous.get(field) == key[field] for field in ("split", "checkpoint_step", "protocol")) \
                and counts_path.is_file():
            return previous
    data_cfg = cfg.replace(data_root=str(data_root)) if data_root is not None else cfg
    dataset = VOCSegmentation(voc_dir_for(data_cfg), split, eval_transform())
    target = resolve_device(device)
    group = join_process_group(target.type)
    try:
        if group.is_distributed and target.type == "cuda":
            target = torch.device("cuda", group.local_rank)
        amp_dtype = amp_dtype_for(target)
        model = model.to(target, memory_format=torch.channels_last)
        started = time.perf_counter()
        per_image = PerImageCounts(len(dataset), NUM_CLASSES, target, IGNORE_INDEX)
        scores = evaluate_model(model, dataset, target, scales=protocol.scales, flip=protocol.flip,
                                batch_size=batch_size, workers=cfg.workers, amp_dtype=amp_dtype,
                                progress=group.is_main, crf=protocol.crf, per_image=per_image)
        result = {**key, "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
                  "mean_class_accuracy": scores.mean_class_accuracy, "per_class_iou": scores.per_class_iou,
                  "images": len(dataset), "seconds": time.perf_counter() - started, "device": target.type,
                  "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None, "out": str(out),
                  "per_image_counts": str(counts_path),
                  **({"crf_settings": dataclasses.asdict(dense_crf.DEEPLAB_V2)} if protocol.crf else {})}
        if group.is_main:
            per_image.save(counts_path, dataset.ids)
            write_json_atomic(out, result)
    finally:
        leave_process_group(group)
    return result


def _read_result(path: Path) -> dict[str, Any]:
    """An earlier result file's contents; {} when there is none or it does not parse."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
