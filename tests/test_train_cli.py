"""python -m segtrain.train: a real run that learns, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.data import voc_dir_for
from segtrain.data.voc import VOCSegmentation
from segtrain.metrics import ConfusionMatrix
from segtrain.train import main


def all_background_miou(voc_dir) -> float:
    """The score of a model that predicts background everywhere: the bar to clear."""
    matrix = ConfusionMatrix(21)
    for _, mask in VOCSegmentation(voc_dir, "val"):
        matrix.update(torch.zeros_like(mask), mask)
    return matrix.compute().miou


def test_cli_run_learns_far_beyond_background(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segtrain.train", "--synthetic", "--data-root", str(tmp_path / "cache"),
               "--synthetic-train-images", "48", "--synthetic-val-images", "12",
               "--pretrained", "none", "--head-lr-multiplier", "1", "--lr", "0.02",
               "--crop-size", "97", "--batch-size", "4", "--epochs", "3", "--eval-points", "2",
               "--workers", "0", "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 36
    config = json.loads((out / "config.json").read_text())
    floor = all_background_miou(voc_dir_for(TrainConfig.from_dict(config)))
    assert result["final_miou"] > floor + 0.3, (result["final_miou"], floor)
    assert f"val mIoU {result['final_miou']:.4f}" in finished.stdout


@pytest.mark.parametrize("argv, words", [
    (["--lr", "-1"], "--lr: must be > 0"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (["--optimizer", "rmsprop"], "--optimizer: must be one of sgd, adam, adamw"),
    (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as exited:
        sys.exit(run(main, argv, prog="segtrain.train"))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_bad_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "recipe.toml"
    config.write_text('lr = 0.01\ncrop_sise = 321\n')
    assert run(main, ["--config", str(config)], prog="segtrain.train") == 2
    err = capsys.readouterr().err
    assert "recipe.toml: crop_sise: unknown setting (did you mean 'crop_size'?)" in err
    config.write_text("lr = \n")
    assert run(main, ["--config", str(config)], prog="segtrain.train") == 2
    assert "recipe.toml: not valid TOML" in capsys.readouterr().err


def test_missing_data_root_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VOC_ROOT", raising=False)
    code = run(main, ["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")],
               prog="segtrain.train")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err
