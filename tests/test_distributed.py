"""torchrun with 2 CPU processes (gloo) trains like one process with the same total batch,
and evaluates every image as one process does (its per-image counts too).

The draws are the same by construction (TrainStream; its split is tested in
test_sampling.py), BatchNorm statistics and dropout masks cover the whole batch,
and the loss is the mean over all labelled pixels: so the histories agree up to
float error, which a few SGD steps at a high learning rate amplify a little.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segtrain.config import TrainConfig
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import VOCSegmentation
from segtrain.engine import CHECKPOINT, train
from segtrain.evaluation import predictions
from segtrain.metrics import ConfusionMatrix, PerImageCounts
from segtrain.records import EvalResult
from tests.conftest import random_deeplab

REPO = Path(__file__).resolve().parents[1]

# 8 train images, batch 4 in total: 2 steps an epoch, 8 steps, evaluations after steps 4 and 8;
# lr 0.1 from scratch lifts val mIoU (0.17) well above the all-background 0.064 within those steps
RECIPE = dict(train_split="train", val_split="val", pretrained=None, head_lr_multiplier=1.0, lr=0.1,
              crop_size=65, output_stride=16, batch_size=4, epochs=4.0, eval_points=2, eval_batch_size=4,
              workers=0, device="cpu")


def flags(voc_dir) -> list[str]:
    """RECIPE as segtrain.train flags."""
    values = {**RECIPE, "data_root": voc_dir, "pretrained": "none"}
    return [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]


def torchrun(log_dir, *argv: str) -> None:
    """Two processes of `argv` (a script, or -m and a module, and arguments), each one's
    stdout and stderr in log_dir/<run id>/attempt_0/<rank>/."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--log-dir", str(log_dir), "--redirects", "3", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert finished.returncode == 0, finished.stderr + "".join(
        path.read_text() for path in log_dir.rglob("std*.log"))


def rank_output(log_dir, rank: int, stream: str) -> str:
    (path,) = log_dir.glob(f"*/attempt_0/{rank}/{stream}.log")
    return path.read_text()


def assert_same_training(two: list[EvalResult], one: list[EvalResult]) -> None:
    assert [(h.point, h.step, h.images_seen) for h in two] == [(h.point, h.step, h.images_seen) for h in one]
    for a, b in zip(two, one):
        assert a.miou == pytest.approx(b.miou, abs=0.02), (a, b)
        # reduction orders differ (all-reduce vs one sum): ~0.05% at step 4, amplified to ~0.7% by step 8
        assert a.loss == pytest.approx(b.loss, rel=2e-2), (a, b)


@pytest.fixture(scope="module")
def one_process(synthetic_voc, module_tmp):
    """The single-process run, and a copy of the checkpoint it wrote at its first evaluation."""
    run_dir, halfway = module_tmp("one"), module_tmp("halfway")

    def keep_first_checkpoint(result: EvalResult) -> None:
        if result.point == 1:
            os.link(run_dir / CHECKPOINT, halfway / CHECKPOINT)  # the file, before step 8 replaces it

    cfg = TrainConfig(**RECIPE, data_root=str(synthetic_voc))
    return train(cfg, on_eval=keep_first_checkpoint, run_dir=run_dir), halfway


def test_two_processes_train_like_one_with_the_whole_batch(synthetic_voc, one_process, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    torchrun(logs, "-m", "segtrain.train", *flags(synthetic_voc), "--out", str(out))
    two = json.loads((out / "result.json").read_text())
    one, _ = one_process
    assert TrainConfig.from_dict(two["config"]) == one.config
    assert two["steps"] == one.steps == 8
    assert_same_training([EvalResult(**h) for h in two["history"]], one.history)
    assert one.final_miou > 0.12  # a model that learned: predicting all background scores 0.064 here
    # rank 0 alone reports: the summary and the evaluation log once, nothing from rank 1
    assert rank_output(logs, 0, "stdout").count("val mIoU") == 1
    assert rank_output(logs, 0, "stderr").count("eval 2/2") == 1
    assert rank_output(logs, 1, "stdout") == rank_output(logs, 1, "stderr") == ""
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "per_image_counts.npz", "result.json"]


def test_two_processes_resume_a_checkpoint_and_finish_like_one(synthetic_voc, one_process, tmp_path):
    one, halfway = one_process
    logs = tmp_path / "logs"
    torchrun(logs, "-m", "segtrain.train", *flags(synthetic_voc), "--out", str(halfway), "--resume")
    resumed = json.loads((halfway / "result.json").read_text())
    assert "resumed from" in rank_output(logs, 0, "stderr")
    assert resumed["steps"] == 8
    assert_same_training([EvalResult(**h) for h in resumed["history"]], one.history)


STOP_ON_MAIN = """
import torch
from segtrain.distributed import join_process_group, leave_process_group, on_main_process

group = join_process_group("cpu")
calls = []
on_main_process(group, torch.device("cpu"), lambda: calls.append("saved"))
try:
    on_main_process(group, torch.device("cpu"), lambda: calls.append(1 / 0))  # a pruner, say
except Exception as error:
    print(calls, type(error).__name__)
leave_process_group(group)
"""


def test_an_error_on_rank_0_stops_every_process(tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(STOP_ON_MAIN)
    torchrun(tmp_path / "logs", str(script))
    assert rank_output(tmp_path / "logs", 0, "stdout") == "['saved'] ZeroDivisionError\n"
    assert rank_output(tmp_path / "logs", 1, "stdout") == "[] StoppedByMainProcess\n"


EVALUATE_ON_RANKS = """
import dataclasses, json, sys
import torch
from segtrain.data.voc import VOCSegmentation
from segtrain.distributed import join_process_group, leave_process_group
from segtrain.evaluation import evaluate_model, predictions
from segtrain.metrics import PerImageCounts
from tests.conftest import random_deeplab

torch.set_num_threads(1)
group = join_process_group("cpu")
model, dataset, out = random_deeplab(), VOCSegmentation(sys.argv[1], "val"), sys.argv[2]
scores = {index: value for indices, batch, _ in predictions(model, dataset, torch.device("cpu"), batch_size=8)
          for index, value in zip(indices, batch)}
torch.save(scores, f"{out}/rank{group.rank}.pt")
counts = PerImageCounts(len(dataset), 21)
print(json.dumps(dataclasses.asdict(evaluate_model(model, dataset, torch.device("cpu"), batch_size=8,
                                                   per_image=counts))))
torch.save(counts.counts, f"{out}/counts{group.rank}.pt")
leave_process_group(group)
"""


def test_two_processes_score_every_image_as_one_process_does(tmp_path):
    voc_dir = write_synthetic_voc(tmp_path / "data", train=2, val=6, size=48, seed=1)
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE_ON_RANKS)
    torchrun(tmp_path / "logs", str(script), str(voc_dir), str(tmp_path))
    shares = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert sorted(shares[0]) == [0, 2, 4] and sorted(shares[1]) == [1, 3, 5]  # images shared out by rank
    dataset, threads = VOCSegmentation(voc_dir, "val"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone, matrix, counts = {}, ConfusionMatrix(21), PerImageCounts(len(dataset), 21)
        for indices, batch, masks in predictions(random_deeplab(), dataset, torch.device("cpu"), batch_size=1):
            alone[indices[0]] = batch[0]
            matrix.update(batch.argmax(dim=1), masks)
            counts.update(indices, batch.argmax(dim=1), masks)
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):  # each process scored half the images; summed, both hold every image's counts
        assert torch.equal(torch.load(tmp_path / f"counts{rank}.pt"), counts.counts)
    for index, scores in {**shares[0], **shares[1]}.items():
        torch.testing.assert_close(scores, alone[index], rtol=1e-4, atol=1e-4)  # float32 rounding: test_evaluation
        assert torch.equal(scores.argmax(0), alone[index].argmax(0))
    for rank in (0, 1):  # both processes end with the mIoU of all images
        assert json.loads(rank_output(tmp_path / "logs", rank, "stdout")) == dataclasses.asdict(matrix.compute())
