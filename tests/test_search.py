"""hpo.search end to end on tiny synthetic studies: resume, seeded recipes, pruning, divergence, OOM
(real and predicted), budget, full disk, Ctrl-C, bad input."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna_dashboard import get_note
from search_helpers import CHEAP_TRAIN, TINY_BASELINE, TINY_TRAIN, write_probe, write_spec

import hpo.search.objective
from hpo.plan.cli import main as plan_main
from hpo.search.cli import main
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.engine import CHECKPOINT, train
from segtrain.records import TrainingDiverged, TrainResult


@pytest.fixture
def optuna_said():
    """The records Optuna's logger passes to its handlers during the test (its own prints them to stderr)."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    logging.getLogger("optuna").addHandler(handler)
    yield seen
    logging.getLogger("optuna").removeHandler(handler)


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///runs/{name}/study.db")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


RECIPE = '[recipes.adam]\nsource = "a test recipe"\nlr = 0.01\noptimizer = "adam"\nbatch_size = 2\n'


@pytest.fixture(scope="module")
def resumed_study(workdir):
    """`--trials 4`, then `--trials 6` on the same study: (trials after the first run, the study)."""
    spec = write_spec(workdir, "tiny", workdir / "cache", extra=RECIPE)
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
    recipe = study.trials[1]  # the published recipes follow the baseline, once each across the resume
    assert recipe.user_attrs == {**recipe.user_attrs, "recipe": "adam", "source": "a test recipe"}
    assert recipe.params == {"lr": 0.01, "optimizer": "adam", "batch_size": 2}
    assert [t.number for t in study.trials if "recipe" in t.user_attrs or "baseline" in t.user_attrs] == [0, 1]
    for trial in finished(study):
        config = TrainConfig.from_dict(trial.user_attrs["config"])
        assert config.lr == trial.params["lr"] and config.batch_size == trial.params["batch_size"]
        assert trial.intermediate_values, "each evaluation is reported"
        assert set(trial.intermediate_values) <= {1, 2}
        assert trial.user_attrs["seconds"] > 0 and trial.user_attrs["epochs"] > 0
        assert trial.user_attrs["device_seconds"] > 0 and trial.user_attrs["device"].startswith("cpu")
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

    monkeypatch.setattr(hpo.search.objective, "train", diverge_or_run_out_of_memory)
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


def test_ctrl_c_fails_the_running_trial_and_the_next_run_retries_it(workdir, monkeypatch, capsys, optuna_said):
    spec = write_spec(workdir, "interrupted", workdir / "cache")
    calls = []

    def interrupt_second(cfg, **kwargs):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(cfg, **kwargs)

    monkeypatch.setattr(hpo.search.objective, "train", interrupt_second)
    capsys.readouterr()
    assert run(main, ["--study", str(spec), "--trials", "3"], prog="hpo.search") == 130
    study = load("interrupted")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["failure"] == "interrupted (Ctrl-C)"
    assert study.trials[2].params == study.trials[1].params  # queued again, same parameters
    # only the project's lines: what happened and how to resume; no warning from Optuna, no traceback
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "interrupted: trial 1 is marked failed and queued to run again from its last checkpoint; rerun the same "
        "command to resume", "hpo.search: interrupted"]
    assert not [record for record in optuna_said if "failed" in record.getMessage() or record.exc_info]
    assert run(main, ["--study", str(spec), "--trials", "3"]) == 0
    study = load("interrupted")
    assert len(finished(study)) == 3 and study.trials[2].params == study.trials[1].params


@pytest.mark.parametrize("argv, words", [
    (["--trials", "0"], "argument --trials: must be >= 1, got 0"),
    (["--trials", "-3"], "argument --trials: must be >= 1, got -3"),
    (["--timeout", "soon"], "argument --timeout: must be a number of seconds > 0, got 'soon'"),
    (["--study", "nowhere.toml"], "nowhere.toml: cannot read the study spec"),
    (["--storage", "redis://localhost/0"], "unknown scheme 'redis'"),
    (["--budget-hours", "0"], "argument --budget-hours: must be a number of hours > 0, got '0'"),
    (["--budget-hours", "-2"], "argument --budget-hours: must be a number of hours > 0, got '-2'"),
    (["--budget-hours", "5"], "a budget needs the probe of this spec (no probe at runs/bad/probe.json); run "
                              "python -m hpo.plan --study"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, workdir, capsys):
    spec = write_spec(workdir, "bad", workdir / "cache")
    argv = argv if "--study" in argv else ["--study", str(spec), *argv]
    assert run(main, argv, prog="hpo.search") == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not Path("runs/bad/study.db").exists() or not load("bad").trials



def test_configurations_predicted_not_to_fit_end_without_training(workdir, monkeypatch, capsys, caplog):
    spec = write_spec(workdir, "fits", workdir / "cache", train=CHEAP_TRAIN, pruner='type = "none"',
                      extra=RECIPE.replace("adam]", "big]").replace("batch_size = 2", "batch_size = 4"))
    caplog.set_level(logging.INFO, logger="hpo.search")
    # a training corner needs 1 GiB per image of its batch; the planner is told the device has 1.5 GiB
    write_probe(spec, lambda corner: 0.01,
                memory_bytes=lambda corner: corner.batch_size * 2 ** 30 if corner.kind == "train" else 2 ** 28)
    assert run(plan_main, ["--study", str(spec), "--memory-limit-gb", "1.5"], prog="hpo.plan") == 0
    trained = []
    monkeypatch.setattr(hpo.search.objective, "train", lambda cfg, **kwargs: trained.append(cfg) or train(cfg, **kwargs))
    capsys.readouterr()
    assert run(main, ["--study", str(spec), "--trials", "2"], prog="hpo.search") == 0
    assert not trained  # neither the baseline (batch 2) nor the recipe (batch 4) fits: nothing trained
    baseline, big = load("fits").trials
    assert big.user_attrs["recipe"] == "big" and big.params["batch_size"] == 4
    for trial in (baseline, big):
        assert (trial.state, trial.value, trial.user_attrs["device_seconds"]) == (TrialState.COMPLETE, 0.0, 0.0)
    # by how far each is over the limit (at most 1): TPE ranks infeasible trials by it
    assert baseline.constraints == {"fits_memory": pytest.approx(2 / 1.5 - 1)}
    assert big.constraints == {"fits_memory": 1.0}
    assert big.user_attrs["failure"] == ("predicted out of memory at crop 33, batch 4, output stride 16: needs "
                                         "~4.0 GiB of 1.5 GiB on test device; not trained")
    assert "study fits: 2 complete (0 diverged, 2 predicted not to fit)" in capsys.readouterr().out
    assert "trial 1: predicted out of memory at crop 33, batch 4" in caplog.text


def test_the_search_keeps_its_budget_and_a_larger_budget_resumes_it(workdir, monkeypatch, capsys, caplog,
                                                                    optuna_said):
    # no baseline, epochs searched (1-1.5), every epoch priced at one hour: a trial costs ~1.0-1.5 h
    spec = write_spec(workdir, "budget", workdir / "cache", pruner='type = "none"', baseline="",
                      train=CHEAP_TRAIN.replace("epochs = 1.0\n", "batch_size = 2\n"),
                      space='lr = {type = "float", low = 1e-3, high = 1e-1, log = true}\n'
                            'epochs = {type = "float", low = 1.0, high = 1.5}')
    write_probe(spec, lambda corner: 3600 / 8)  # 8 train images: an hour an epoch; evaluation ~0.005 h a trial
    caplog.set_level(logging.INFO, logger="hpo.search")
    trained = []
    monkeypatch.setattr(hpo.search.objective, "train", lambda cfg, **kwargs: trained.append(cfg) or train(cfg, **kwargs))
    argv = ["--study", str(spec), "--trials", "1"]
    capsys.readouterr()
    assert run(main, [*argv, "--budget-hours", "0.9"], prog="hpo.search") == 2  # below one trial: bad input
    assert "--budget-hours 0.9: smaller than one trial (1.25 h on test device)" in capsys.readouterr().err
    assert not Path("runs/budget/study.db").exists()

    assert run(main, [*argv, "--budget-hours", "1.3"], prog="hpo.search") == 0
    study = load("budget")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    refused, queued = study.trials
    assert refused.params["epochs"] > 1.3, "the sampler's first draw (seeded) is a trial over the budget"
    assert refused.user_attrs["failure"].startswith("budget: needs ~1.3") and \
        refused.user_attrs["failure"].endswith("h left of 1.3 h; not trained")
    assert queued.system_attrs["fixed_params"] == refused.params and not trained  # queued again, to run next
    assert "budget: trial 0 needs" in caplog.text and "it is queued: rerun with a larger --budget-hours" in caplog.text
    assert not [record for record in optuna_said if "failed" in record.getMessage() or record.exc_info]
    assert "; budget 1.3 h, 1.30 h left" in capsys.readouterr().out

    caplog.clear()
    assert run(main, [*argv, "--budget-hours", "1.3"], prog="hpo.search") == 0  # the queued trial is over it still
    assert len(load("budget").trials) == 2 and not trained  # so nothing starts
    assert "budget: the next trial (queued as 1) needs" in caplog.text

    assert run(main, [*argv, "--budget-hours", "10"], prog="hpo.search") == 0  # a larger budget resumes it
    study = load("budget")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == refused.params and [cfg.epochs for cfg in trained] == [refused.params["epochs"]]
    assert study.trials[1].user_attrs["device_seconds"] > 0


def test_a_full_disk_fails_the_trial_with_its_reason_and_stops_the_search(workdir, monkeypatch, capsys,
                                                                          optuna_said):
    spec = write_spec(workdir, "full", workdir / "cache", train=CHEAP_TRAIN, pruner='type = "none"')
    save, saved = torch.save, []

    def full_at_the_second_checkpoint(state, file, *args, **kwargs):
        saved.append(file.name)
        if len(saved) == 2:
            file.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(state, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_the_second_checkpoint)
    capsys.readouterr()
    assert run(main, ["--study", str(spec), "--trials", "1"], prog="hpo.search") == 2
    err = capsys.readouterr().err
    checkpoint = Path("runs/full/trials/0") / CHECKPOINT
    assert err.startswith(f"hpo.search: error: {checkpoint}: no space left on its file system (needs ") and \
        err.count("\n") == 1 and "trial 0 is queued to resume from its last checkpoint" in err, err
    study = load("full")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["failure"].startswith(f"disk full: {checkpoint}: no space left")
    assert not [record for record in optuna_said if "failed" in record.getMessage() or record.exc_info]
    assert torch.load(checkpoint, weights_only=True)["step"] > 0  # the first evaluation's checkpoint, intact
    assert not list(checkpoint.parent.glob(".*.tmp"))  # no half-written file left behind
    # the copy is a retry of trial 0, so it resumes from that checkpoint once space is freed
    assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[1]) == [0]
