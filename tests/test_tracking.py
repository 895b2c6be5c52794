"""Tracking: segtrain.train --tracking tensorboard and a search with [study] tracking = "mlflow" or "tensorboard",
their curves read back from the event files (tensorboard's EventAccumulator) and the MLflow store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from search_helpers import CHEAP_TRAIN, write_spec
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hpo.finalize.runs
from hpo.finalize.runs import run_one
from hpo.report.results import Configuration
from hpo.search.loop import run_search
from hpo.search.tracking import StudyTracking
from hpo.spec import load_spec
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data.labels import CLASS_NAMES
from segtrain.records import EvalResult, TrainingDiverged
from segtrain.tracking import default_tracking_uri
from segtrain.train import main as train_main


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def tensorboard_run(synthetic_voc, module_tmp):
    """segtrain.train --tracking tensorboard: 8 images at batch 2 for 3 epochs = 12 steps, one evaluation at
    the end, so the loss is read at step 10 (SYNC_EVERY) and at 12. (run dir, result.json)."""
    out = module_tmp("tracking") / "baseline"
    argv = ["--data-root", str(synthetic_voc), "--train-split", "train", "--val-split", "val",
            "--pretrained", "none", "--crop-size", "33", "--batch-size", "2", "--epochs", "3", "--eval-points", "1",
            "--workers", "0", "--device", "cpu", "--out", str(out), "--tracking", "tensorboard"]
    assert run(train_main, argv) == 0
    return out, json.loads((out / "result.json").read_text())


def test_train_logs_every_steps_loss_and_the_evaluation_to_tensorboard(tensorboard_run):
    out, result = tensorboard_run
    log_dir = out / "tb" / "baseline"
    losses = scalars(log_dir, "train/loss")
    assert [step for step, _ in losses] == list(range(1, 13))
    (evaluation,) = result["history"]
    assert sum(value for _, value in losses) / 12 == pytest.approx(evaluation["loss"], rel=1e-5)
    assert [step for step, _ in scalars(log_dir, "train/lr")] == list(range(1, 13))
    assert [step for step, _ in scalars(log_dir, "train/images_per_second")] == [10, 12]
    assert scalars(log_dir, "val/miou") == [(12, pytest.approx(evaluation["miou"], rel=1e-6))]
    present = [(name, iou) for name, iou in zip(CLASS_NAMES, evaluation["per_class_iou"]) if iou is not None]
    assert present
    for name, iou in present:
        assert scalars(log_dir, f"val/iou/{name}") == [(12, pytest.approx(iou, rel=1e-6, abs=1e-7))]
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert "params/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| crop_size | 33 |" in text and "| batch_size | 2 |" in text


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what importlib finds of a package that is not installed
    assert run(train_main, ["--synthetic", "--data-root", str(tmp_path), "--tracking", "mlflow"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--tracking = mlflow needs mlflow" in line and "pip install -e '.[tracking]'" in line
    assert not list(tmp_path.iterdir())  # nothing made before the check


@pytest.fixture(scope="module")
def mlflow_study(workdir):
    """One cheap trial of a study tracked in MLflow: (spec, study)."""
    spec = load_spec(write_spec(workdir, "tracked", workdir / "cache", train=CHEAP_TRAIN, study='tracking = "mlflow"'))
    return spec, run_search(spec, trials=1)


def test_search_logs_each_trial_into_one_mlflow_run_with_its_summary(mlflow_study):
    spec, study = mlflow_study
    (trial,) = study.trials
    client = mlflow.MlflowClient(default_tracking_uri(spec.study.output_dir))
    experiment = client.get_experiment_by_name(spec.study.name)
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == str(trial.number)
    assert mlflow_run.data.params == {**{k: str(v) for k, v in trial.params.items()}, "trial": "0"}
    run_id = mlflow_run.info.run_id
    mious = [(m.step, m.value) for m in client.get_metric_history(run_id, "val/miou")]
    assert [value for _, value in mious] == pytest.approx(
        [trial.intermediate_values[point] for point in sorted(trial.intermediate_values)])
    assert [step for step, _ in mious] == [2, 4]  # 8 images at batch 2 for one epoch, evaluated twice
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    # optuna-integration's MLflowCallback summarised the finished trial in that same run
    assert mlflow_run.data.metrics["val mIoU"] == pytest.approx(trial.value)
    assert mlflow_run.data.tags["state"] == trial.state.name
    assert study.metric_names == ["val mIoU"]


def test_a_complete_trial_gets_its_hparams_beside_its_tensorboard_curves(tmp_path):
    tracking = StudyTracking("tensorboard", tmp_path, "demo", "holdout mIoU")
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=2,
                   callbacks=tracking.trials(lambda trial: 0.0)[1])
    for trial in study.trials:
        log_dir = tmp_path / "tb" / "trials" / str(trial.number)
        assert scalars(log_dir, "holdout mIoU") == [(0, pytest.approx(trial.value))]  # the HPARAMS tab's value
    pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.2})
    pruned.number = 2
    tracking.hparams(study, pruned)  # no value: its curves say where it stopped, the table compares finished ones
    assert not (tmp_path / "tb" / "trials" / str(pruned.number)).exists()


def test_a_final_run_is_tracked_with_its_configuration_and_seed(tmp_path, monkeypatch):
    """finalize's run_one opens a tracker per run (here a fake training that evaluates once, then diverges)."""
    def fake_train(cfg, run_dir, resume, tracker):
        tracker.log_evaluation(EvalResult(point=1, step=5, epoch=0.5, images_seen=10, miou=0.25, pixel_accuracy=0.5,
                                          mean_class_accuracy=0.3, per_class_iou=[0.5, 0.0] + [None] * 19,
                                          loss=1.0, seconds=1.0))
        raise TrainingDiverged(7, 0.1, float("nan"))

    monkeypatch.setattr(hpo.finalize.runs, "train", fake_train)
    configuration = Configuration("top-1", "trial 3", ("top",), 3, {"lr": 0.02}, TrainConfig(pretrained=None))
    run_dir = tmp_path / "final" / "top-1-abc" / "seed-1"
    final = run_one(configuration, 1, run_dir, StudyTracking("tensorboard", tmp_path, "demo", "holdout mIoU"))
    assert final.status.startswith("diverged")
    log_dir = tmp_path / "tb" / "final" / "top-1-abc" / "seed-1"
    assert scalars(log_dir, "val/miou") == [(5, 0.25)]
    assert scalars(log_dir, "val/iou/aeroplane") == [(5, 0.0)]
    events = EventAccumulator(str(log_dir))
    events.Reload()
    text = events.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert all(row in text for row in ("| configuration | top-1 |", "| seed | 1 |", "| trial | 3 |", "| lr | 0.02 |"))
