"""segtrain.progress: tqdm on a terminal; in a batch job, a plain line per unit done with elapsed time and time
left (a CLI with stderr to a file: tests/test_predict.py::test_a_batch_job_log_says_how_far_prediction_got)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import random_deeplab
from tqdm import tqdm

import segtrain.progress
from segtrain.data.voc import VOCSegmentation
from segtrain.evaluation import evaluate_model
from segtrain.progress import Lines, progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(segtrain.progress.time, "monotonic", clock)
    return clock


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "segtrain.progress"]


def test_without_a_terminal_each_unit_done_is_a_line_with_elapsed_and_left(clock, caplog, monkeypatch):
    monkeypatch.setattr(segtrain.progress.sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    corners = progress(["a", "b", "c", "d"], desc="probe", unit="corners")
    assert isinstance(corners, Lines)
    for _ in corners:
        clock.now += 90  # each corner takes 90 s: after the first, 3 x 90 s are left
    assert lines(caplog) == ["probe: 1/4 corners, 01:30 elapsed, ~04:30 left",
                             "probe: 2/4 corners, 03:00 elapsed, ~03:00 left",
                             "probe: 3/4 corners, 04:30 elapsed, ~01:30 left",
                             "probe: 4/4 corners, 06:00 elapsed"]


def test_a_resumed_phase_estimates_from_its_own_pace_and_fine_units_are_throttled(clock, caplog):
    caplog.set_level(logging.INFO)
    with Lines(total=100, initial=40, desc="train", unit="steps", every_seconds=30) as bar:
        for _ in range(60):
            clock.now += 1  # a step a second; the 40 steps done before the resume took no time here
            bar.set_postfix(loss="0.512")
            bar.update(1)
    assert lines(caplog) == ["train: 41/100 steps, 00:01 elapsed, ~00:59 left (loss=0.512)",
                             "train: 71/100 steps, 00:31 elapsed, ~00:29 left (loss=0.512)",
                             "train: 100/100 steps, 01:00 elapsed (loss=0.512)"]  # the last, always


def test_a_terminal_gets_tqdm_and_disabled_shows_nothing(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(segtrain.progress.sys.stderr, "isatty", lambda: True)
    assert isinstance(progress(range(3), desc="trials", unit="trials"), tqdm)
    monkeypatch.setattr(segtrain.progress.sys.stderr, "isatty", lambda: False)
    hidden = progress(range(3), desc="eval", unit="images", enabled=False)
    assert isinstance(hidden, tqdm) and hidden.disable
    assert list(hidden) == [0, 1, 2] and not lines(caplog)


def test_an_evaluation_says_how_far_it_got(synthetic_voc, caplog):
    caplog.set_level(logging.INFO)
    evaluate_model(random_deeplab(), VOCSegmentation(synthetic_voc, "val"), torch.device("cpu"), batch_size=4,
                   progress=True)
    (line,) = lines(caplog)  # 4 images in one batch: the last unit is always said
    assert line.startswith("eval: 4/4 images, ") and "elapsed" in line
