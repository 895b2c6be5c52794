"""hpo.search end to end on tiny synthetic studies: resume, pruning, divergence, OOM, Ctrl-C, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from optuna_dashboard import get_note

import hpo.objective
from hpo.search import main
from search_helpers import CHEAP_TRAIN, TINY_BASELINE, TINY_TRAIN, write_spec
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.engine import CHECKPOINT, TrainingDiverged, TrainResult, train


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///runs/{name}/study.db")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding runs/ for the module's studies, and a shared data cache."""
    directory = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        yield directory


@pytest.fixture(scope="module")
def resumed_study(workdir):
    """`--trials 4`, then `--trials 6` on the same study: (trials after the first run, the study)."""
    spec = write_spec(workdir, "tiny", workdir / "cache")
    assert run(main, ["--study", str(spec), "--trials", "4"]) == 0
    first = load("tiny").trials
    assert run(main, ["--study", str(spec), "--trials", "6"]) == 0
    return first, load("tiny")


def test_resume_runs_only_the_missing_trials(resumed_study):
    first, study = resumed_study
    assert len([t for t in first if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    assert len(finished(study)) == 6 and len(study.trials) == 6
    for before, after in zip(first, study.trials):  # the first four are untouched
        assert (before.number, before.state, before.value, before.params, before.datetime_complete) == \
               (after.number, after.state, after.value, after.params, after.datetime_complete)


def test_baseline_is_trial_0_and_trials_store_their_story(resumed_study):
    _, study = resumed_study
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] is True
    assert baseline.params == {"lr": 0.02, "optimizer": "sgd", "momentum": 0.9, "batch_size": 2}
    for trial in finished(study):
        config = TrainConfig.from_dict(trial.user_attrs["config"])
        assert config.lr == trial.params["lr"] and config.batch_size == trial.params["batch_size"]
        assert trial.intermediate_values, "each evaluation is reported"
        assert set(trial.intermediate_values) <= {1, 2}
        assert trial.user_attrs["seconds"] > 0 and trial.user_attrs["epochs"] > 0
        assert (Path("runs/tiny/trials") / str(trial.number) / "config.json").exists()
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert trial.value == trial.intermediate_values[2]  # the final evaluation
        assert trial.user_attrs["images_per_second"] > 0 and trial.user_attrs["peak_memory_bytes"] > 0
        assert json.loads((Path("runs/tiny/trials") / str(trial.number) / "result.json").read_text())[
            "final_miou"] == trial.value
    assert "Study `tiny`" in get_note(study) and "Search space" in get_note(study)


def test_only_the_best_trials_keep_checkpoints(resumed_study):
    _, study = resumed_study
    kept = [t.number for t in study.trials if (Path("runs/tiny/trials") / str(t.number) / CHECKPOINT).exists()]
    assert kept == [study.best_trial.number]  # keep_checkpoints = 1


def test_best_trial_config_rerun_by_segtrain_gives_its_miou(resumed_study):
    _, study = resumed_study
    best = study.best_trial
    assert train(TrainConfig.from_dict(best.user_attrs["config"])).final_miou == best.value


def test_pruning_stops_trials_that_stay_at_background_level(workdir):
    spec = write_spec(workdir, "pruned", workdir / "cache", pruner='type = "threshold"\nlower = 0.9')
    assert run(main, ["--study", str(spec), "--trials", "3"]) == 0
    study = load("pruned")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all(t.last_step == 1 for t in study.trials)  # stopped at the first evaluation
    assert not list(Path("runs/pruned/trials").glob("*/" + CHECKPOINT))


def test_the_last_evaluation_is_never_pruned(workdir):
    """The budget is spent by then: pruning would only throw the full-budget result away."""
    spec = write_spec(workdir, "unpruned", workdir / "cache", pruner='type = "threshold"\nlower = 0.9',
                      train=TINY_TRAIN.replace("eval_points = 2", "eval_points = 1"))
    assert run(main, ["--study", str(spec), "--trials", "2"]) == 0
    study = load("unpruned")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.value < 0.9 for t in study.trials)  # the threshold pruner would have stopped them


def test_under_wsd_the_pruner_gets_the_annealed_score_at_each_evaluation(workdir):
    """What a trial reports (and pruners read back) at an evaluation before the last is the score
    after its decay branch; the trial's compute counts the branch."""
    spec = write_spec(workdir, "annealed", workdir / "cache", train=CHEAP_TRAIN + 'schedule = "wsd"\n',
                      baseline=TINY_BASELINE.replace("batch_size = 2", "batch_size = 4"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small train faster on one thread
    try:
        assert run(main, ["--study", str(spec), "--trials", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    trial = load("annealed").trials[0]
    history = TrainResult.from_dict(json.loads(Path("runs/annealed/trials/0/result.json").read_text())).history
    assert [(h.step, h.decay_steps) for h in history] == [(1, 1), (2, 0)]  # 2 steps, a branch of 1 at the first
    assert trial.intermediate_values == {h.point: h.miou for h in history}
    assert trial.user_attrs["epochs"] == history[-1].epochs_trained == 1.5  # 3 steps of 4 of 8 images


def test_diverged_and_out_of_memory_trials_end_with_their_reason(workdir, monkeypatch):
    """Trial 0 scores far above the rest at its first evaluation, then diverges: it keeps that
    score but is infeasible, so it never becomes the best trial. Trial 1 runs out of memory."""
    spec = write_spec(workdir, "faults", workdir / "cache",
                      space='lr = {type = "float", low = 1e-3, high = 1e-1, log = true}\n'
                            'batch_size = {type = "categorical", choices = [2, 4]}',
                      baseline="lr = 0.02\nbatch_size = 2", pruner='type = "none"')
    calls = []

    def diverge_or_run_out_of_memory(cfg, on_eval, **kwargs):
        calls.append(cfg)
        if len(calls) == 1:
            def high_then_nan(result):
                on_eval(dataclasses.replace(result, miou=0.99))
                raise TrainingDiverged(result.step + 1, cfg.lr, float("nan"))
            return train(cfg, on_eval=high_then_nan, **kwargs)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(cfg, on_eval=on_eval, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", diverge_or_run_out_of_memory)
    assert run(main, ["--study", str(spec), "--trials", "3"]) == 0
    study = load("faults")
    diverged, oom = study.trials[0], study.trials[1]
    assert diverged.state == TrialState.COMPLETE and diverged.constraints == {"finite_loss": 1.0}
    assert diverged.user_attrs["failure"].startswith("diverged: loss became nan")
    assert diverged.value == 0.99 > max(t.value for t in study.trials[2:])  # the highest value ...
    assert study.best_trial.number not in (diverged.number, oom.number)  # ... yet not the best
    assert oom.state == TrialState.FAIL
    assert oom.user_attrs["failure"].startswith("out of memory at crop 65, batch")
    assert len(finished(study)) == 3  # the study went on to its target


def test_ctrl_c_fails_the_running_trial_and_the_next_run_retries_it(workdir, monkeypatch, capsys):
    spec = write_spec(workdir, "interrupted", workdir / "cache")
    calls = []

    def interrupt_second(cfg, **kwargs):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(cfg, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", interrupt_second)
    assert run(main, ["--study", str(spec), "--trials", "3"], prog="hpo.search") == 130
    study = load("interrupted")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["failure"] == "interrupted (Ctrl-C)"
    assert study.trials[2].params == study.trials[1].params  # queued again, same parameters
    assert "interrupted" in capsys.readouterr().err
    assert run(main, ["--study", str(spec), "--trials", "3"]) == 0
    study = load("interrupted")
    assert len(finished(study)) == 3 and study.trials[2].params == study.trials[1].params


@pytest.mark.parametrize("argv, words", [
    (["--trials", "0"], "argument --trials: must be >= 1, got 0"),
    (["--trials", "-3"], "argument --trials: must be >= 1, got -3"),
    (["--timeout", "soon"], "argument --timeout: must be a number of seconds > 0, got 'soon'"),
    (["--study", "nowhere.toml"], "nowhere.toml: cannot read the study spec"),
    (["--storage", "redis://localhost/0"], "unknown scheme 'redis'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, workdir, capsys):
    spec = write_spec(workdir, "bad", workdir / "cache")
    argv = argv if "--study" in argv else ["--study", str(spec), *argv]
    assert run(main, argv, prog="hpo.search") == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not Path("runs/bad/study.db").exists() or not load("bad").trials

