"""A worker killed with SIGKILL mid-trial: its trial is failed (SQLite: by the heartbeat; a journal,
which has none: as its process is gone), and the next run retries it with the same parameters
from that trial's last checkpoint (real processes, a real kill)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from search_helpers import CHEAP_TRAIN, load_study, python_path_env, write_spec

from segtrain.engine import CHECKPOINT

# hpo.search whose trials stop after their first evaluation (and checkpoint), as if the
# rest of the trial took an hour: the test kills the process there
STALL_AFTER_FIRST_EVALUATION = """
import sys, time
import hpo.search.objective
from hpo.search.cli import cli

train = hpo.search.objective.train

def stalling_train(cfg, on_eval, **kwargs):
    def report(result):
        on_eval(result)
        if result.point == 1:
            time.sleep(3600)
    return train(cfg, on_eval=report, **kwargs)

hpo.search.objective.train = stalling_train
cli()
"""


def reported_first_evaluation(checkpoint: Path, storage: str) -> bool:
    """Trial 0 saved its first checkpoint, and then reported that evaluation to the study."""
    return checkpoint.exists() and 1 in load_study("crash", storage).trials[0].intermediate_values


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retry_history
@pytest.mark.parametrize("storage", ["sqlite:///runs/crash/study.db", "journal://runs/crash/journal.log"],
                         ids=["sqlite", "journal"])
def test_a_killed_trial_is_retried_from_its_checkpoint(storage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # heartbeat every second, stale after 3 (write_spec's [study]); batch 2 of 8 images: 4 steps,
    # evaluations and checkpoints after steps 2 and 4
    spec = write_spec(tmp_path, "crash", tmp_path / "cache", train=CHEAP_TRAIN, pruner='type = "none"',
                      study=f'storage = "{storage}"\n')
    argv = ["--study", str(spec), "--trials", "1"]
    env = python_path_env()
    log = tmp_path / "worker.log"  # a file, not a pipe nobody reads while the test polls
    with log.open("w") as output:
        worker = subprocess.Popen([sys.executable, "-c", STALL_AFTER_FIRST_EVALUATION, *argv], env=env,
                                  stdout=output, stderr=subprocess.STDOUT)
    checkpoint = tmp_path / "runs/crash/trials/0" / CHECKPOINT
    deadline = time.monotonic() + 240  # a guard against a hang, not a timed assertion
    while not reported_first_evaluation(checkpoint, storage):
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == 2

    rerun = subprocess.run([sys.executable, "-m", "hpo.search", *argv], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = load_study("crash", storage)
    dead = study.trials[0]
    assert dead.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if RetryHeartbeatStaleTrialCallback.retry_history(t) == [0]]
    assert retry.params == dead.params and retry.state == TrialState.COMPLETE
    assert f"trial {retry.number} resumes trial 0 from its checkpoint" in rerun.stderr
    result = json.loads((tmp_path / f"runs/crash/trials/{retry.number}/result.json").read_text())
    # the first evaluation is the dead trial's, restored with its wall time, not done again;
    # training went on from step 2 to 4
    assert result["history"][0] == saved["history"][0]
    assert [h["step"] for h in result["history"]] == [2, 4]
    assert retry.intermediate_values[1] == dead.intermediate_values[1]
    assert not checkpoint.exists()  # moved to the retry
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]  # 1 finished: the target
