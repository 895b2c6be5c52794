"""`python -m hpo.search --workers N` on one machine: SQLite and journal storages, Ctrl-C, GPU pinning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from optuna.trial import TrialState
from search_helpers import CHEAP_TRAIN, assert_exactly_finished, load_study, python_path_env, write_spec

from hpo.search.cli import main
from hpo.search.workers import WORKER_ENV, worker_env
from segtrain.cli import run


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory for runs/, from which the workers can import this repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", python_path_env()["PYTHONPATH"])
    return tmp_path


@pytest.mark.parametrize("storage", [None, "journal://runs/pool/journal.log"], ids=["sqlite", "journal"])
def test_four_workers_share_one_study_and_stop_at_the_target(storage, workdir, capsys):
    spec = write_spec(workdir, "pool", workdir / "cache", train=CHEAP_TRAIN,
                      extra='[recipes.adam]\nsource = "a test recipe"\nlr = 0.01\noptimizer = "adam"\nbatch_size = 4\n')
    argv = ["--study", str(spec), "--trials", "6", "--workers", "4"]
    assert run(main, argv + (["--storage", storage] if storage else []), prog="hpo.search") == 0
    out, err = capsys.readouterr()
    for trouble in ("locked", "rror", "Traceback", "failed", "[W "):  # Optuna's warnings start with [W
        assert trouble not in err, err
    study = load_study("pool", storage or "sqlite:///runs/pool/study.db")
    assert_exactly_finished(study, 6)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2  # the workers shared the trials
    # the baseline, then the recipe, once each although every worker enqueued them
    assert [(t.number, t.user_attrs.get("baseline"), t.user_attrs.get("recipe")) for t in study.trials
            if "baseline" in t.user_attrs or "recipe" in t.user_attrs] == [(0, True, None), (1, None, "adam")]
    for number in range(6):  # each trial reported once, by the worker that ran it
        assert sum(f"] trial {number}: " in line for line in err.splitlines()) == 1, err
    assert out.count("study pool: ") == 1 and "best: trial" in out  # one summary, by the parent


def trial_started(run_dir) -> bool:
    return (run_dir / "config.json").exists()  # written once the model is built


def test_ctrl_c_stops_every_worker_and_queues_their_trials_again(workdir):
    endless = CHEAP_TRAIN.replace("epochs = 1.0", "epochs = 1000.0")  # trials that are still running
    spec = write_spec(workdir, "stopped", workdir / "cache", train=endless, pruner='type = "none"',
                      extra="[finalize]\nepochs = 1000.0\n")
    # as from a terminal: a runner in the background (`cmd &` in a script) ignores SIGINT, and a
    # Python started with SIGINT ignored keeps ignoring it
    parent = subprocess.Popen([sys.executable, "-m", "hpo.search", "--study", str(spec), "--trials", "4",
                               "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    trials = workdir / "runs/stopped/trials"
    deadline = time.monotonic() + 240  # a guard against a hang, not a timed assertion
    while not (trial_started(trials / "0") and trial_started(trials / "1")):
        assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
        time.sleep(0.2)
    parent.send_signal(signal.SIGINT)  # what the terminal's Ctrl-C sends the parent alone
    out, err = parent.communicate(timeout=240)
    assert parent.returncode == 130, err
    study = load_study("stopped", "sqlite:///runs/stopped/study.db")
    by_state = {state: [t for t in study.trials if t.state == state] for state in TrialState}
    assert not by_state[TrialState.RUNNING]
    assert sorted(t.user_attrs["failure"] for t in by_state[TrialState.FAIL]) == ["interrupted (Ctrl-C)"] * 2
    assert sorted(str(t.params) for t in by_state[TrialState.WAITING]) == \
           sorted(str(t.params) for t in by_state[TrialState.FAIL])  # each queued again, same parameters
    for trial in by_state[TrialState.FAIL]:  # and its worker is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(trial.user_attrs["worker"].rsplit(":", 1)[1]), 0)
    assert "[worker 0] " in err and "[worker 1] " in err


def test_each_worker_gets_one_gpu_or_its_share_of_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [worker_env(i, 3)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    assert [worker_env(i, 3)[WORKER_ENV] for i in range(3)] == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the GPUs a scheduler gave this job
    assert [worker_env(i, 2)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["4", "6"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    env = worker_env(0, 4)
    assert env["OMP_NUM_THREADS"] == "2" and "CUDA_VISIBLE_DEVICES" not in env
