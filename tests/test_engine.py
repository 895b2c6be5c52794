"""The training engine on tiny synthetic data: schedule of evaluations, exact resume, divergence."""

from __future__ import annotations

import json

import pytest

from segtrain.config import TrainConfig
from segtrain.engine import CHECKPOINT, Budget, EvalResult, TrainingDiverged, TrainResult, train


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
def uninterrupted(synthetic_voc, tmp_path_factory):
    seen: list[EvalResult] = []
    run_dir = tmp_path_factory.mktemp("uninterrupted")
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
    assert (run_dir / CHECKPOINT).stat().st_size > 100e6  # model + optimizer state
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


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
    from segtrain.errors import UserError
    with pytest.raises(UserError, match="lr differ"):
        train(tiny(synthetic_voc, lr=0.05), run_dir=run_dir, resume=True)


def test_other_seed_other_result(synthetic_voc):
    """Runs that differ in their seed alone (initialisation, image order, augmentation) differ."""
    first, other = (train(tiny(synthetic_voc, seed=seed, epochs=0.5, eval_points=1)) for seed in (0, 1))
    assert first.config.replace(seed=1) == other.config
    assert other.history[0].loss != first.history[0].loss


def test_peak_memory_is_each_runs_own(synthetic_voc):
    """Two runs in one process (a search worker, finalize): the second, much smaller, run's peak is
    not the first's carried over, as a process-wide maximum would have it."""
    large = train(tiny(synthetic_voc, crop_size=161, batch_size=4, epochs=0.5, eval_points=1))
    small = train(tiny(synthetic_voc, crop_size=33, epochs=0.25, eval_points=1))
    assert 0 < small.peak_memory_bytes < large.peak_memory_bytes


def test_nan_loss_stops_with_step_and_lr(synthetic_voc):
    with pytest.raises(TrainingDiverged) as caught:
        train(tiny(synthetic_voc, lr=1e12, optimizer="sgd", momentum=0.9))
    assert 1 <= caught.value.step <= 4  # noticed by the first evaluation at the latest
    assert caught.value.lr > 1e11
    assert "at step" in str(caught.value)


@pytest.mark.parametrize("batch_size", [2, 4, 8, 16])
def test_evaluation_k_means_the_same_data_for_every_batch_size(batch_size):
    budget = Budget.plan(TrainConfig(batch_size=batch_size, epochs=3.0, eval_points=4), 100, 1)
    images = [step * batch_size for step in budget.eval_steps]
    assert len(images) == 4
    for k, seen in enumerate(images, start=1):
        assert abs(seen - 300 * k / 4) <= batch_size / 2 + 1e-9


def test_budget_rejects_more_evaluations_than_steps():
    from segtrain.errors import ConfigError
    with pytest.raises(ConfigError, match="eval_points"):
        Budget.plan(TrainConfig(batch_size=8, epochs=1.0, eval_points=5), 16, 1)
