"""The training engine on tiny synthetic data: schedule of evaluations, exact resume, divergence,
the wsd schedule's decay branches."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

import segtrain.engine
from hpo.report.stats import miou_from_counts
import segtrain.evaluation as evaluation
from hpo.spec import load_spec
from segtrain import sharedmem
from segtrain.budget import Budget
from segtrain.config import TrainConfig
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import VOCSegmentation
from segtrain.distributed import ProcessGroup
from segtrain.engine import CHECKPOINT, _Run, changed_fields, train
from segtrain.errors import UserError
from segtrain.evaluation import PER_IMAGE_COUNTS
from segtrain.memory import peak_memory_bytes
from segtrain.metrics import read_per_image_counts
from segtrain.optim import decay_branch_lrs
from segtrain.records import EvalResult, TrainingDiverged, TrainResult
from segtrain.train import build_parser


class Stop(Exception):
    pass


def tiny(voc_dir, **changes) -> TrainConfig:
    """8 train images, batch 2, crop 65: 4 steps an epoch, evaluations after epochs 1 and 2."""
    values = dict(data_root=str(voc_dir), train_split="train", val_split="val", pretrained=None,
                  head_lr_multiplier=1.0, lr=0.01, crop_size=65, batch_size=2, epochs=2.0,
                  eval_points=2, workers=0, device="cpu", eval_batch_size=4)
    return TrainConfig(**{**values, **changes})


def comparable(history: list[EvalResult]) -> list[tuple]:
    return [(h.point, h.step, h.images_seen, h.miou, h.loss, h.per_class_iou) for h in history]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_voc, module_tmp):
    seen: list[EvalResult] = []
    run_dir = module_tmp("uninterrupted")
    return train(tiny(synthetic_voc), on_eval=seen.append, run_dir=run_dir), seen, run_dir


def test_evaluations_fall_at_fixed_fractions_and_reach_on_eval(uninterrupted):
    result, seen, _ = uninterrupted
    assert [(h.point, h.step, h.epoch, h.images_seen) for h in seen] == [(1, 4, 1.0, 8), (2, 8, 2.0, 16)]
    assert seen == result.history
    assert result.steps == 8 and result.final_miou == seen[-1].miou
    assert result.best_miou == max(h.miou for h in seen)
    assert 0.0 <= result.final_miou <= 1.0 and len(result.per_class_iou) == 21
    assert result.images_per_second > 0 and result.peak_memory_bytes > 0
    assert 39e6 < result.parameters < 40e6


def test_run_dir_holds_config_result_and_checkpoint(uninterrupted):
    result, _, run_dir = uninterrupted
    assert TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())) == result.config
    stored = TrainResult.from_dict(json.loads((run_dir / "result.json").read_text()))
    assert stored == result
    ids, counts = read_per_image_counts(run_dir / PER_IMAGE_COUNTS)  # the final evaluation, image by image
    assert ids == VOCSegmentation(result.config.data_root, result.config.val_split).ids
    assert float(miou_from_counts(counts.sum(axis=0))) == pytest.approx(result.final_miou, abs=1e-12)
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_finished_runs_checkpoint_keeps_the_weights_alone(uninterrupted):
    """Without the optimizer's momentum it is half the size: finalize keeps one per run and seed."""
    result, _, run_dir = uninterrupted
    saved = torch.load(run_dir / CHECKPOINT, weights_only=True, mmap=True)
    assert set(saved) == {"config", "step", "history", "train_seconds", "elapsed_seconds", "model"}
    assert saved["step"] == result.steps
    weights = 4 * result.parameters  # fp32; BatchNorm statistics and pickling add well under 1%
    assert weights < (run_dir / CHECKPOINT).stat().st_size < 1.01 * weights


def test_a_finished_checkpoint_refuses_a_budget_it_did_not_finish(uninterrupted, synthetic_voc, tmp_path):
    """Its weights cannot train on: a training split of another size is one clear error, not a crash."""
    _, _, run_dir = uninterrupted
    shutil.copy(run_dir / CHECKPOINT, tmp_path / CHECKPOINT)
    smaller = write_synthetic_voc(tmp_path / "voc", train=4, val=4, size=64, classes=5, seed=0)
    with pytest.raises(UserError, match="finished at step 8, but this one plans 4 steps"):
        train(tiny(smaller), run_dir=tmp_path, resume=True)


def test_same_seed_same_result_and_resume_is_exact(uninterrupted, synthetic_voc, tmp_path):
    expected, _, _ = uninterrupted
    cfg = tiny(synthetic_voc)

    def stop_after_first(result: EvalResult) -> None:
        if result.point == 1:
            raise Stop  # whatever on_eval raises stops training and propagates

    with pytest.raises(Stop):
        train(cfg, on_eval=stop_after_first, run_dir=tmp_path)
    assert not (tmp_path / "result.json").exists()
    resumed = train(cfg, run_dir=tmp_path, resume=True)
    assert comparable(resumed.history) == comparable(expected.history)
    assert resumed.final_miou == expected.final_miou
    # resuming a finished run trains nothing and gives the same result
    assert comparable(train(cfg, run_dir=tmp_path, resume=True).history) == comparable(expected.history)


def test_resume_refuses_a_checkpoint_of_another_config(uninterrupted, synthetic_voc):
    _, _, run_dir = uninterrupted
    with pytest.raises(UserError, match="lr differ"):
        train(tiny(synthetic_voc, lr=0.05), run_dir=run_dir, resume=True)


def test_other_seed_other_result(synthetic_voc):
    """Runs that differ in their seed alone (initialisation, image order, augmentation) differ."""
    first, other = (train(tiny(synthetic_voc, seed=seed, epochs=0.5, eval_points=1)) for seed in (0, 1))
    assert first.config.replace(seed=1) == other.config
    assert other.history[0].loss != first.history[0].loss


def test_peak_memory_is_each_runs_own(synthetic_voc):
    """In one process (a search worker, finalize), a run's peak is not an earlier peak carried over, as a
    process-wide maximum would have it: 2 GiB held and freed before a small run do not count in its figure."""
    cpu = torch.device("cpu")
    earlier = torch.ones(2 ** 29)  # 2 GiB, written: resident, as an earlier, larger run's tensors were
    held = peak_memory_bytes(cpu)
    del earlier
    small = train(tiny(synthetic_voc, crop_size=33, epochs=0.25, eval_points=1))
    assert 0 < small.peak_memory_bytes < held - 2 ** 30


def test_nan_loss_stops_with_step_and_lr(synthetic_voc):
    with pytest.raises(TrainingDiverged) as caught:
        train(tiny(synthetic_voc, lr=1e12, optimizer="sgd", momentum=0.9))
    assert 1 <= caught.value.step <= 4  # noticed by the first evaluation at the latest
    assert caught.value.lr > 1e11
    assert "at step" in str(caught.value)


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": torch.relu(self.norm(self.conv(images)))}


def tiny_deeplab(*args, **kwargs) -> DeepLabV3:
    """A stand-in for build_model's DeepLabV3 (torchvision's class, a one-layer backbone): milliseconds a step."""
    return DeepLabV3(TinyBackbone(), nn.Conv2d(8, 21, 1))


@pytest.fixture(scope="module")
def compiled_run(synthetic_voc, module_tmp):
    """A compile = true run of the tiny stand-in, torch.compile's tracing kept (its "eager" backend: the
    same wrapper and its `_orig_mod.` keys, without the minutes of code generation a CPU takes).
    Records what each training forward and each evaluation ran on, and cuDNN's autotuner flag then."""
    real_compile, real_head_logits, real_eval_loader = torch.compile, evaluation.head_logits, evaluation.eval_loader
    compiled, evaluated, loaders = [], [], []
    training_calls: list[bool] = []

    def compile_eagerly(model, **kwargs):
        wrapper = real_compile(model, backend="eager")
        wrapper.register_forward_pre_hook(lambda module, args: training_calls.append(torch.backends.cudnn.benchmark))
        compiled.append(wrapper)
        return wrapper

    def recording_head_logits(model, images):
        evaluated.append((model, torch.backends.cudnn.benchmark))
        return real_head_logits(model, images)

    def counting_eval_loader(*args, **kwargs):
        loaders.append(kwargs)
        return real_eval_loader(*args, **kwargs)

    run_dir = module_tmp("compiled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segtrain.engine, "build_model", tiny_deeplab)
        patch.setattr(torch, "compile", compile_eagerly)
        patch.setattr(evaluation, "head_logits", recording_head_logits)
        patch.setattr(segtrain.engine, "eval_loader", counting_eval_loader)
        result = train(tiny(synthetic_voc, compile=True), run_dir=run_dir)
    return result, run_dir, compiled, training_calls, evaluated, loaders


def test_compile_trains_the_compiled_module_and_checkpoints_the_eager_ones_keys(compiled_run):
    result, run_dir, compiled, training_calls, evaluated, _ = compiled_run
    assert len(compiled) == 1 and len(training_calls) == result.steps == 8  # every step through the compiled one
    eager = compiled[0]._orig_mod
    assert [model for model, _ in evaluated] == [eager] * 2  # one batch of 4 val images at each of 2 evaluations
    saved = torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]
    assert list(saved) == list(eager.state_dict()) and not any(key.startswith("_orig_mod.") for key in saved)
    tiny_deeplab().load_state_dict(saved)  # loadable without compile
    assert json.loads((run_dir / "config.json").read_text())["compile"] is True
    assert changed_fields({**result.config.to_dict(), "compile": False}, result.config) == []  # resumable either way


def test_compile_is_a_flag_and_a_spec_setting():
    assert TrainConfig().compile is False
    assert vars(build_parser().parse_args(["--compile"]))["compile"] is True
    demo = Path(segtrain.engine.__file__).parents[1] / "studies" / "demo.toml"
    assert load_spec(demo).with_train(compile=True).train_config().compile is True


def test_cudnn_autotunes_training_steps_and_not_evaluations(compiled_run):
    _, _, _, training_calls, evaluated, _ = compiled_run
    assert set(training_calls) == {True} and {benchmark for _, benchmark in evaluated} == {False}


def test_the_eval_loader_is_made_once_a_run_with_persistent_workers(compiled_run, synthetic_voc):
    _, _, _, _, _, loaders = compiled_run
    assert len(loaders) == 1 and loaders[0]["persistent"] is True  # two evaluations, one loader
    dataset = VOCSegmentation(synthetic_voc, "val")
    assert evaluation.eval_loader(dataset, torch.device("cpu"), 4, 1, persistent=True).persistent_workers
    assert not evaluation.eval_loader(dataset, torch.device("cpu"), 4, 0, persistent=True).persistent_workers


def test_short_shared_memory_stops_the_run_before_any_loader_starts(synthetic_voc, tmp_path, monkeypatch):
    monkeypatch.setattr(sharedmem.sys, "platform", "linux")
    monkeypatch.setattr(sharedmem, "free_bytes", lambda path=sharedmem.SHM: 2 ** 16)
    monkeypatch.setattr(segtrain.engine, "build_model", tiny_deeplab)
    monkeypatch.setattr(_Run, "train_loader", lambda self: pytest.fail("a loader started"))
    with pytest.raises(UserError, match=r"/dev/shm has 0 MiB free, but 1 loader workers .* --shm-size="):
        train(tiny(synthetic_voc, workers=1), run_dir=tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


def test_unset_workers_are_the_hosts_default(synthetic_voc, monkeypatch):
    monkeypatch.setattr(segtrain.engine, "build_model", tiny_deeplab)
    cpu = torch.device("cpu")
    run = _Run(tiny(synthetic_voc, workers=None), cpu, ProcessGroup(), None, False)
    assert run.workers == 0 and run.eval_loader.num_workers == 0  # CPU: load in the training process
    monkeypatch.setattr(segtrain.engine, "default_workers", lambda device: 2)
    assert _Run(tiny(synthetic_voc, workers=None), cpu, ProcessGroup(), None, False).train_loader().num_workers == 2


@pytest.mark.parametrize("batch_size", [2, 4, 8, 16])
def test_evaluation_k_means_the_same_data_for_every_batch_size(batch_size):
    budget = Budget.plan(TrainConfig(batch_size=batch_size, epochs=3.0, eval_points=4), 100, 1)
    images = [step * batch_size for step in budget.eval_steps]
    assert len(images) == 4
    for k, seen in enumerate(images, start=1):
        assert abs(seen - 300 * k / 4) <= batch_size / 2 + 1e-9


def test_wsd_budget_branches_make_complete_runs_of_their_length():
    """The demo's budget (80 images, batch 4, one epoch, 4 evaluations) under wsd with a 0.2 decay."""
    cfg = TrainConfig(batch_size=4, epochs=1.0, eval_points=4, schedule="wsd", decay_fraction=0.2)
    budget = Budget.plan(cfg, 80, 1)
    assert budget.eval_steps == (5, 10, 15, 20) and budget.decay_steps == 4
    assert budget.branch_steps == (1, 3, 4, 0)  # 8 steps on top of the run's 20
    for step, branch in zip(budget.eval_steps, budget.branch_steps[:-1]):
        complete = Budget.plan(cfg.replace(batch_size=2, eval_points=1), 2 * (step + branch), 1)
        assert complete.total_steps == step + branch and complete.decay_steps == branch
    assert Budget.plan(cfg.replace(schedule="poly"), 80, 1).branch_steps == (0, 0, 0, 0)


def test_budget_rejects_more_evaluations_than_steps():
    from segtrain.errors import ConfigError
    with pytest.raises(ConfigError, match="eval_points"):
        Budget.plan(TrainConfig(batch_size=8, epochs=1.0, eval_points=5), 16, 1)


# --- the wsd schedule: a decay branch before each evaluation but the last

def wsd(voc_dir, **changes) -> TrainConfig:
    """6 steps at crop 33: warmup over 4, decay over the last 2; evaluations after steps 2, 4 and 6,
    the first two after decay branches of 1 and 2 steps (0.3 / 0.7 of the steps so far)."""
    return tiny(voc_dir, **{"crop_size": 33, "epochs": 1.5, "eval_points": 3, "schedule": "wsd",
                            "decay_fraction": 0.3, "warmup_epochs": 1.0, "head_lr_multiplier": 10.0, **changes})


@dataclass(frozen=True)
class Evaluated:
    step: int
    digests: dict[str, str]  # sha256 of each part of the training state at the end of the run, of the
    # model (weights and BatchNorm buffers) elsewhere: hashing 300 MB at every evaluation is not free
    result: EvalResult


def sha256(value: Any, hashed=None) -> str:
    """Of tensors' bytes and other values' repr, in a fixed order: equal iff bitwise equal."""
    hashed = hashed or hashlib.sha256()
    if isinstance(value, torch.Tensor):
        hashed.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            hashed.update(repr(key).encode())
            sha256(value[key], hashed)
    elif isinstance(value, list | tuple):
        for item in value:
            sha256(item, hashed)
    else:
        hashed.update(repr(value).encode())
    return hashed.hexdigest()


@contextlib.contextmanager
def evaluations_seen() -> Iterator[list[Evaluated]]:
    """Every evaluation of the model while inside, with the training state it evaluated; on one
    intra-op thread (faster on tiny tensors, and the same for every run compared bitwise)."""
    seen: list[Evaluated] = []
    evaluate_point = _Run.evaluate_point

    def spy(run: _Run, loss: float) -> EvalResult:
        result = evaluate_point(run, loss)
        state = run.training_state()
        parts = state if run.step == run.budget.total_steps else {"model": state["model"]}
        seen.append(Evaluated(run.step, {k: sha256(v) for k, v in parts.items()}, result))
        return result

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_Run, "evaluate_point", spy)
            yield seen
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Observed:
    result: TrainResult
    evaluations: list[Evaluated]
    lrs: list[list[float]]  # of every parameter group at every optimizer step, branches included


def observe(cfg: TrainConfig, **kwargs) -> Observed:
    lrs: list[list[float]] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kw: lrs.append([group["lr"] for group in optimizer.param_groups]))
    try:
        with evaluations_seen() as seen:
            result = train(cfg, **kwargs)
    finally:
        hook.remove()
    return Observed(result, seen, lrs)


@pytest.fixture(scope="module")
def branched(synthetic_voc) -> Observed:
    return observe(wsd(synthetic_voc))


@pytest.fixture(scope="module")
def unbranched(synthetic_voc) -> Observed:
    """The same run evaluated only at the end, so without decay branches."""
    return observe(wsd(synthetic_voc, eval_points=1))


def test_wsd_lrs_read_back_from_the_optimizer_are_its_formula(branched):
    decayed = 1 - math.sqrt(1 / 2)  # 1-sqrt, halfway through a decay of 2 steps
    factors = [0.25, 0.5,  # warmup: (step + 1) / 4
               0.75,  # branch 1: 1 step, from the lr of step 2
               0.75, 1.0,
               1.0, decayed,  # branch 2: 2 steps, from the lr of step 4
               1.0, decayed]  # the run's own decay, over its last 2 steps
    base = [0.01, 0.01, 0.1, 0.1]  # backbone, backbone without weight decay, head (x10), head without
    assert len(branched.lrs) == len(factors)
    for lrs, factor in zip(branched.lrs, factors):
        assert lrs == pytest.approx([lr * factor for lr in base], rel=1e-12)


def test_decay_branches_leave_the_run_as_it_would_be_without_them(branched, unbranched):
    assert [e.step for e in branched.evaluations] == [2, 4, 6]  # one evaluation a point, after the branch
    assert [e.step for e in unbranched.evaluations] == [6]
    # weights and BatchNorm buffers, optimizer, scheduler, scaler and RNG: bitwise the same at the end
    assert branched.evaluations[-1].digests == unbranched.evaluations[-1].digests
    assert branched.result.steps == unbranched.result.steps == 6
    assert branched.result.final_miou == unbranched.result.final_miou


def test_an_annealed_score_is_that_of_a_complete_wsd_run_of_its_length(branched, unbranched):
    history = branched.result.history
    assert [h.decay_steps for h in history] == [1, 2, 0]
    assert [h.miou for h in history] == [e.result.miou for e in branched.evaluations]
    # 4 steps and a branch of 2 are a complete 6-step run: bitwise the model that run ends with
    assert branched.evaluations[1].digests["model"] == unbranched.evaluations[-1].digests["model"]
    assert history[1].miou == unbranched.result.final_miou
    assert [h.branch_epochs for h in history] == [0.25, 0.75, 0.75]  # 1, then 3 steps of 2 of 8 images
    assert [h.epochs_trained for h in history] == [0.75, 1.75, 2.25]
    assert branched.result.branch_steps == 3 and unbranched.result.branch_steps == 0
    assert TrainResult.from_dict(json.loads(json.dumps(branched.result.to_dict()))) == branched.result


def test_a_run_stopped_inside_a_decay_branch_resumes_to_the_same_end(branched, synthetic_voc, tmp_path):
    cfg = wsd(synthetic_voc)

    def stop_after_one_step(start_lrs, steps, shape):
        lrs = decay_branch_lrs(start_lrs, steps, shape)
        yield next(lrs)
        if steps > 1:
            raise Stop  # as Ctrl-C would, a step into the second branch
        yield from lrs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segtrain.engine, "decay_branch_lrs", stop_after_one_step)
        with pytest.raises(Stop):
            observe(cfg, run_dir=tmp_path)
    stopped = torch.load(tmp_path / CHECKPOINT, weights_only=True, mmap=True)
    assert stopped["step"] == 2 and len(stopped["history"]) == 1  # the first evaluation's checkpoint
    resumed = observe(cfg, run_dir=tmp_path, resume=True, save_checkpoints=False)  # saving is tested above
    assert without_seconds(resumed.result.history) == without_seconds(branched.result.history)
    assert resumed.evaluations[-1].digests == branched.evaluations[-1].digests
    assert resumed.lrs == branched.lrs[3:]  # from step 2 on, the second branch whole


def test_checkpoints_and_results_from_before_the_wsd_schedule_still_load(uninterrupted):
    """Written without the wsd fields, they read as poly without branches: as those runs were."""
    expected, _, _ = uninterrupted
    old = expected.to_dict()
    del old["branch_steps"]
    for key in ("schedule", "decay_fraction", "decay_shape"):
        del old["config"][key]
    for entry in old["history"]:
        del entry["decay_steps"], entry["branch_epochs"]
    assert TrainResult.from_dict(old) == expected  # result.json; a checkpoint's history reads the same
    assert changed_fields(old["config"], expected.config) == []  # resume accepts the checkpoint
    assert changed_fields(old["config"], expected.config.replace(schedule="wsd")) == ["schedule"]


def without_seconds(history: list[EvalResult]) -> list[EvalResult]:
    return [dataclasses.replace(h, seconds=0.0) for h in history]
