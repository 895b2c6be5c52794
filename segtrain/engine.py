"""One training run: `train(cfg)` -> TrainResult, evaluating mIoU at the budget's evaluation points.

The loop, its checkpoints and resume, and wsd's decay branches stay here together: a branch
saves and restores exactly the state a checkpoint does, so the two are one job. What a run
reports (segtrain.records) and its budget in steps (segtrain.budget) are plain data apart.

Under the wsd schedule each evaluation but the last scores a decay branch: from the
run's state at that point, the lr decays to 0 over a share of the steps done so far
(so that those steps and the branch make a complete wsd run), then the model is
evaluated and the run is put back exactly as it was before the branch. Its scores are
then annealed at every evaluation, as a run that ended there would be, and the run
itself ends exactly as it would without branches.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.contrib.logging import logging_redirect_tqdm

from segtrain.budget import Budget
from segtrain.config import TrainConfig
from segtrain.data import voc_dir_for
from segtrain.data.labels import IGNORE_INDEX, NUM_CLASSES
from segtrain.data.transforms import eval_transform, to_device, train_transform
from segtrain.data.voc import VOCSegmentation
from segtrain.device import amp_dtype_for, autocast, cudnn_benchmark, default_workers, resolve_device
from segtrain.distributed import (
    ProcessGroup,
    as_one_batch,
    join_process_group,
    leave_process_group,
    main_process_first,
    on_main_process,
)
from segtrain.errors import UserError, unwrap_worker_errors
from segtrain.evaluation import CHECKPOINT, OWN_PROTOCOL, PER_IMAGE_COUNTS, PRESETS, eval_loader, evaluate_model
from segtrain.fileio import write_atomic, write_json_atomic
from segtrain.memory import peak_memory_bytes, reset_peak_memory
from segtrain.metrics import PerImageCounts
from segtrain.model import build_model, count_parameters
from segtrain.optim import build_optimizer, build_schedule, decay_branch_lrs
from segtrain.progress import LINE_EVERY_SECONDS, progress
from segtrain.records import RUNTIME_FIELDS, EvalResult, TrainingDiverged, TrainResult
from segtrain.sampling import TrainStream
from segtrain.sharedmem import check_shared_memory
from segtrain.tracking import Tracker

log = logging.getLogger(__name__)

AUX_LOSS_WEIGHT = 0.4
SYNC_EVERY = 10  # steps between host syncs to read the loss (a sync every step stalls a GPU)


def changed_fields(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The fields, runtime ones aside, in which a checkpoint's config differs from `cfg`. A field
    added since the checkpoint was written counts as its default, which is what that run did."""
    saved = {**TrainConfig().to_dict(), **saved}
    return sorted(k for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS and saved[k] != v)


def train(cfg: TrainConfig, on_eval: Callable[[EvalResult], None] | None = None,
          run_dir: str | Path | None = None, resume: bool = False,
          save_checkpoints: bool = True, tracker: Tracker | None = None) -> TrainResult:
    """Train and evaluate one configuration.

    `on_eval` is called with each EvalResult (on the main process); whatever it
    raises stops training and propagates: that is how a pruner stops a trial.
    With `run_dir`, config.json, result.json and, at each evaluation, a checkpoint
    are written there; `resume=True` continues from that checkpoint: on the CPU it ends
    bit for bit as an uninterrupted run; on CUDA, whose kernels are not deterministic,
    as one such run (same data, augmentation and RNG state; the float noise differs).

    Under torchrun every process calls this: cfg.batch_size is split between them,
    process k uses cuda:LOCAL_RANK, rank 0 alone writes and calls `on_eval`, and
    if that raises, the others stop with distributed.StoppedByMainProcess. All of
    them read `run_dir` to resume, so it must be on a file system they share.
    A `tracker` (segtrain.tracking) gets the curves, from the main process; its caller closes it.
    """
    if resume and run_dir is None:
        raise ValueError("resume needs a run_dir holding the checkpoint")
    device = resolve_device(cfg.device)
    group = join_process_group(device.type)
    try:
        if group.is_distributed and device.type == "cuda":
            device = torch.device("cuda", group.local_rank)
        with logging_redirect_tqdm():
            run = _Run(cfg, device, group, Path(run_dir) if run_dir else None, save_checkpoints)
            run.tracker = tracker if group.is_main else None
            try:
                return run.execute(on_eval, resume)
            finally:
                run.close()
    finally:
        leave_process_group(group)


class _Run:
    """The state of one run, built in the order that makes it reproducible from cfg.seed."""

    def __init__(self, cfg: TrainConfig, device: torch.device, group: ProcessGroup,
                 run_dir: Path | None, save_checkpoints: bool):
        self.cfg, self.device, self.group = cfg, device, group
        reset_peak_memory(device)  # a search worker or finalize runs many: each figure is its own
        self.run_dir = run_dir
        self.writes = run_dir is not None and group.is_main
        self.save_checkpoints = save_checkpoints and self.writes
        voc_dir = voc_dir_for(cfg)
        self.train_set = VOCSegmentation(voc_dir, cfg.train_split,
                                         train_transform(cfg.crop_size, cfg.min_scale, cfg.max_scale))
        self.val_set = VOCSegmentation(voc_dir, cfg.val_split, eval_transform())
        self.budget = Budget.plan(cfg, len(self.train_set), group.world_size)
        self.cuda = device.type == "cuda"
        self.workers = default_workers(device) if cfg.workers is None else cfg.workers
        # made once: its workers persist from one evaluation to the next
        self.eval_loader = eval_loader(self.val_set, device, cfg.eval_batch_size, self.workers, persistent=True)
        self.amp_dtype = amp_dtype_for(device)
        _seed_everything(cfg.seed)  # right before the first random draw: the model's init
        with main_process_first(group):  # rank 0 alone downloads ImageNet weights into the cache
            model = build_model(cfg.backbone, cfg.output_stride, NUM_CLASSES, cfg.pretrained, cfg.aux_loss, cfg.model)
        self.parameters = count_parameters(model)
        if group.is_distributed:
            model = as_one_batch(model, device.type)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_schedule(self.optimizer, cfg, self.budget.total_steps,
                                        self.budget.warmup_steps, self.budget.decay_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
        self.step = 0
        self.history: list[EvalResult] = []
        self.train_seconds = 0.0
        self.elapsed_before = 0.0  # wall seconds of earlier sessions of a resumed run
        self.tracker: Tracker | None = None
        if group.is_distributed:
            self.model = DistributedDataParallel(
                self.model, device_ids=[device.index] if self.cuda else None)
        # what the training steps call; evaluation and checkpoints use the eager module (its own keys)
        self.training_model = torch.compile(self.model) if cfg.compile else self.model

    # --- the loop

    def execute(self, on_eval: Callable[[EvalResult], None] | None, resume: bool) -> TrainResult:
        if resume:
            self.restore()
        if self.writes:
            write_json_atomic(self.run_dir / "config.json", self.cfg.to_dict())
        self.check_shared_memory()
        self.started = time.perf_counter()
        budget = self.budget
        batches = unwrap_worker_errors(self.train_loader())
        pending: list[tuple[torch.Tensor, float]] = []  # (loss, lr) since the last host sync
        window: list[float] = []  # losses since the last evaluation
        self.model.train()
        with progress(total=budget.total_steps, initial=self.step, unit="steps", desc="train", leave=False,
                      enabled=self.group.is_main, every_seconds=LINE_EVERY_SECONDS) as bar:
            tick = time.perf_counter()
            while self.step < budget.total_steps:
                images, masks = next(batches)
                pending.append((self.train_step(images, masks), self.optimizer.param_groups[0]["lr"]))
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                evaluating = self.step in budget.eval_steps
                if len(pending) == SYNC_EVERY or evaluating:
                    losses = self.check_losses(pending, self.step)
                    window += losses
                    now = time.perf_counter()
                    self.train_seconds += now - tick
                    tick = now
                    bar.set_postfix(loss=f"{window[-1]:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                    img_s=f"{self.images_per_second():.1f}")
                    if self.tracker is not None:  # the losses are on the host now: logging them costs no sync
                        self.tracker.log_steps(self.step, losses, [lr for _, lr in pending], self.images_per_second())
                    pending = []
                if evaluating:
                    result = self.evaluation(sum(window) / len(window))
                    window = []
                    self.history.append(result)
                    on_main_process(self.group, self.device, lambda: self.report(result, on_eval))
                    self.model.train()
                    tick = time.perf_counter()
        return self.finish()

    def report(self, result: EvalResult, on_eval: Callable[[EvalResult], None] | None) -> None:
        if self.save_checkpoints:
            self.save()
        if self.tracker is not None:
            self.tracker.log_evaluation(result)
        if on_eval is not None:
            on_eval(result)

    def train_loader(self) -> DataLoader:
        stream = TrainStream(len(self.train_set), self.cfg.seed, self.step * self.budget.per_process_batch,
                             self.group.rank, self.group.world_size)
        return DataLoader(self.train_set, batch_size=self.budget.per_process_batch, sampler=stream,
                          num_workers=self.workers, pin_memory=self.cuda,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def check_shared_memory(self) -> None:
        """Before the first loader starts: /dev/shm must hold the uint8 batches its workers prefetch,
        the training loader's, a decay branch's beside it under wsd, and the largest evaluation batch's."""
        pixels = self.budget.per_process_batch * self.cfg.crop_size ** 2
        train_loaders = 2 if self.cfg.schedule == "wsd" else 1
        sizes = self.val_set.image_sizes
        largest_eval = max(len(batch) * sizes[batch[0]][0] * sizes[batch[0]][1]
                           for batch in self.eval_loader.batch_sampler)
        bytes_per_pixel = 4  # RGB and the mask, one byte each
        check_shared_memory(self.workers, [bytes_per_pixel * pixels] * train_loaders + [bytes_per_pixel * largest_eval])

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a loader's uint8 batch, converted on the device here."""
        images, masks = to_device(images, masks, self.device)
        per_pixel = self.per_pixel_weight(masks)
        with cudnn_benchmark(True):  # fixed shapes: each convolution's fastest algorithm is found once
            with self.autocast():
                outputs = self.training_model(images)
                loss = self.criterion(outputs["out"], masks) * per_pixel
                if "aux" in outputs:
                    loss = loss + AUX_LOSS_WEIGHT * self.criterion(outputs["aux"], masks) * per_pixel
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def per_pixel_weight(self, masks: torch.Tensor) -> torch.Tensor:
        """The factor from this process's summed pixel losses to its share of the mean over the
        labelled pixels of all processes; as DDP averages gradients, N processes then step like
        one with the whole batch (a mean of per-process means would weight pixels unequally)."""
        labelled = (masks != IGNORE_INDEX).sum()
        if self.group.is_distributed:
            torch.distributed.all_reduce(labelled)
        return self.group.world_size / labelled.clamp(min=1)

    def check_losses(self, pending: list[tuple[torch.Tensor, float]], last_step: int) -> list[float]:
        """Read the pending losses (mean over processes) of the steps up to `last_step`; raise on
        the first NaN/inf."""
        losses = torch.stack([loss for loss, _ in pending]).float()
        if self.group.is_distributed:
            torch.distributed.all_reduce(losses)
            losses /= self.group.world_size
        values = losses.tolist()
        first_step = last_step - len(values) + 1
        for offset, (value, (_, lr)) in enumerate(zip(values, pending)):
            if not math.isfinite(value):
                raise TrainingDiverged(first_step + offset, lr, value)
        return values

    def evaluation(self, loss: float) -> EvalResult:
        """The result of this evaluation point: after a decay branch where the budget plans one,
        with the compute of all branches so far."""
        decay_steps = self.budget.branch_steps[self.budget.eval_steps.index(self.step)]
        result = self.evaluate_after_decay(loss, decay_steps) if decay_steps else self.evaluate_point(loss)
        branch_steps = sum(h.decay_steps for h in self.history) + decay_steps
        return dataclasses.replace(result, decay_steps=decay_steps,
                                   branch_epochs=branch_steps * self.cfg.batch_size / len(self.train_set))

    def evaluate_after_decay(self, loss: float, steps: int) -> EvalResult:
        """Evaluate at the end of a decay branch: `steps` steps from the current lrs down to 0,
        on the batches the run itself trains on next. Then the run is put back exactly as it
        was (weights, BatchNorm statistics, optimizer, scheduler, scaler, RNG): the branch
        changes the score and nothing else."""
        if self.group.is_main:
            log.info("decay branch of %d steps from step %d, for an annealed score", steps, self.step)
        before = copy.deepcopy(self.training_state())
        start_lrs = [group["lr"] for group in self.optimizer.param_groups]
        pending: list[tuple[torch.Tensor, float]] = []
        with contextlib.closing(unwrap_worker_errors(self.train_loader())) as batches:
            for lrs in decay_branch_lrs(start_lrs, steps, self.cfg.decay_shape):
                for group, lr in zip(self.optimizer.param_groups, lrs):
                    group["lr"] = lr  # the scheduler is not stepped: its state stays the run's
                images, masks = next(batches)
                pending.append((self.train_step(images, masks), lrs[0]))
        self.check_losses(pending, self.step + steps)
        result = self.evaluate_point(loss)
        self.load_training_state(before)
        return result

    def evaluate_point(self, loss: float) -> EvalResult:
        """The scores now; the run's final evaluation also keeps its per-image counts beside result.json."""
        final = self.step == self.budget.total_steps
        per_image = PerImageCounts(len(self.val_set), NUM_CLASSES, self.device, IGNORE_INDEX) if final else None
        # the bare model: DDP's forward would broadcast buffers, a collective that ranks
        # with fewer val batches than rank 0 would never join
        scores = evaluate_model(self.bare_model(), self.val_set, self.device, amp_dtype=self.amp_dtype,
                                progress=self.group.is_main, loader=self.eval_loader, per_image=per_image)
        if per_image is not None and self.writes:
            per_image.save(self.run_dir / PER_IMAGE_COUNTS, self.val_set.ids)
        images_seen = self.step * self.cfg.batch_size
        result = EvalResult(
            point=self.budget.eval_steps.index(self.step) + 1, step=self.step,
            epoch=images_seen / len(self.train_set), images_seen=images_seen,
            miou=scores.miou, pixel_accuracy=scores.pixel_accuracy,
            mean_class_accuracy=scores.mean_class_accuracy, per_class_iou=scores.per_class_iou,
            loss=loss, seconds=self.elapsed())
        if self.group.is_main:
            log.info("eval %d/%d  step %d/%d  epoch %.2f  mIoU %.4f  pixel acc %.4f  loss %.4f",
                     result.point, self.cfg.eval_points, self.step, self.budget.total_steps,
                     result.epoch, result.miou, result.pixel_accuracy, loss)
        return result

    def finish(self) -> TrainResult:
        last = self.history[-1]
        result = TrainResult(
            config=self.cfg, final_miou=last.miou, best_miou=max(h.miou for h in self.history),
            per_class_iou=last.per_class_iou, pixel_accuracy=last.pixel_accuracy,
            mean_class_accuracy=last.mean_class_accuracy, history=self.history,
            steps=self.step, seconds=self.elapsed(), images_per_second=self.images_per_second(),
            peak_memory_bytes=peak_memory_bytes(self.device), parameters=self.parameters,
            branch_steps=sum(h.decay_steps for h in self.history),
            eval_protocol=PRESETS[OWN_PROTOCOL].for_run(self.cfg.output_stride).name)
        if self.writes:
            write_json_atomic(self.run_dir / "result.json", result.to_dict())
        return result

    # --- bookkeeping

    def close(self) -> None:
        """End the evaluation loader's persistent workers now, not whenever the run is collected."""
        self.eval_loader = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def images_per_second(self) -> float:
        return self.step * self.cfg.batch_size / self.train_seconds if self.train_seconds else 0.0

    def autocast(self):
        return autocast(self.amp_dtype)

    def bare_model(self) -> nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def training_state(self) -> dict[str, Any]:
        """What training steps change, but the step count: what a checkpoint and a decay branch restore."""
        return {
            "model": self.bare_model().state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.cuda else [],
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.bare_model().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        if self.cuda and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    def save(self) -> None:
        """A finished run keeps its weights alone: the optimizer's buffers (as large again as the weights with
        momentum, twice with Adam) serve only to train on, and finalize keeps a checkpoint per run and seed."""
        finished = self.step == self.budget.total_steps
        state = {
            "config": self.cfg.to_dict(), "step": self.step,
            "history": [dataclasses.asdict(h) for h in self.history],
            "train_seconds": self.train_seconds, "elapsed_seconds": self.elapsed(),
            **({"model": self.bare_model().state_dict()} if finished else self.training_state()),
        }
        write_atomic(self.run_dir / CHECKPOINT, lambda file: torch.save(state, file), size_hint=_tensor_bytes(state))

    def restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            if self.group.is_main:
                log.info("no checkpoint in %s: starting from step 0", self.run_dir)
            return
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:
            raise UserError(f"{path}: unreadable checkpoint ({error.__class__.__name__}); "
                            f"delete it to start the run over") from None
        changed = changed_fields(state["config"], self.cfg)
        if changed:
            raise UserError(f"{path}: made with a different config ({', '.join(changed)} differ); "
                            f"use another output dir or delete the checkpoint")
        if "optimizer" in state:
            self.load_training_state(state)
        elif state["step"] == self.budget.total_steps:  # a finished run: nothing left to train
            self.bare_model().load_state_dict(state["model"])
        else:
            raise UserError(f"{path}: holds the weights of a run finished at step {state['step']}, but this one "
                            f"plans {self.budget.total_steps} steps (its training split changed size?); "
                            f"use another output dir or delete the checkpoint")
        self.step = state["step"]
        self.history = [EvalResult(**h) for h in state["history"]]
        self.train_seconds = state["train_seconds"]
        self.elapsed_before = state["elapsed_seconds"]
        if self.group.is_main:
            log.info("resumed from %s at step %d/%d", path, self.step, self.budget.total_steps)


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: about what torch.save writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
