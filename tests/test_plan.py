"""hpo.plan: the probe of a study's cost corners, the bill it predicts, the budget cut, and bad input.

The bill's arithmetic is checked on studies/demo.toml with a hand-written probe (every
configuration at 10 training images/s), so every figure is known in advance; the probe
itself is measured once, on a tiny spec, with one step per corner.
"""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch
from search_helpers import CHEAP_TRAIN, REPO, write_probe, write_spec

from hpo.plan import probe
from hpo.plan.cli import main
from hpo.plan.cost import CostModel
from hpo.plan.estimate import Estimator
from hpo.spec import load_spec
from segtrain import crf
from segtrain import profile
from segtrain.cli import run
from segtrain.config import TrainConfig

DEMO = REPO / "studies" / "demo.toml"
SECONDS_PER_IMAGE = 0.1  # training; evaluation a hundredth of it (write_probe)


@pytest.fixture(scope="module")
def demo(workdir):
    """studies/demo.toml planned in its own output dir, on a probe where everything trains at 10 images/s."""
    output_dir = workdir / "demo"
    write_probe(DEMO, lambda corner: SECONDS_PER_IMAGE, output_dir=output_dir)
    spec = load_spec(DEMO).with_output_dir(output_dir)
    return spec, Estimator(spec, CostModel(probe.load(probe.probe_path(spec))))


def plan_argv(*extra: str) -> list[str]:
    return ["--study", str(DEMO), "--output-dir", "demo", *extra]


def test_demo_plan_rows_add_up_to_the_total(demo, capsys):
    spec, estimator = demo
    assert run(main, plan_argv(), prog="hpo.plan") == 0
    out = capsys.readouterr().out
    plan = estimator.plan()
    # demo: a trial trains 1 epoch of train_aug_search (80 images) and evaluates 4 times on holdout (16);
    # finalize trains 1 epoch of train_aug (96) and evaluates 4 times on val (16), 3 seeds
    trial = 80 * SECONDS_PER_IMAGE + 4 * 16 * SECONDS_PER_IMAGE / 100
    final = 1.0 * 96 * SECONDS_PER_IMAGE + 4 * 16 * SECONDS_PER_IMAGE / 100
    # [finalize] eval = ["ss", "os8"]: a run trained at output stride 16 is scored once more at 8 (one pass
    # over the 16 val images); one trained at 8 is not. `share`: the sampled space's part at stride 16.
    os8 = 16 * SECONDS_PER_IMAGE / 100
    share = sum(point["output_stride"] == 16 for point in estimator.points) / len(estimator.points)
    # the ablation at the search budget: its centre trained again, then per factor the values that differ
    # from the centre's (the demo's space has crops 65/97/129, batches 2/4/8, three optimizers: either listed
    # value may differ; output stride is 8 or 16, so one of the two is the centre's own)
    search = 80 * SECONDS_PER_IMAGE + 4 * 16 * SECONDS_PER_IMAGE / 100
    assert [(row.name, row.runs, row.seeds, row.epochs) for row in plan.rows] == [
        ("search", 40, 1, 1.0), ("top-2 configurations", 2, 3, 1.0), ("baseline", 1, 3, 1.0),
        ("ResNet-101, ImageNet-pretrained", 1, 3, 1.0), ("ResNet-101, from scratch (x1 epochs)", 1, 3, 1.0),
        ("ablation centre (best, search budget)", 1, 3, 1.0), ("ablation of lr (x1/3, x3)", 2, 3, 1.0),
        ("ablation of optimizer (sgd, adam)", 2, 3, 1.0), ("ablation of crop_size (65, 97)", 2, 3, 1.0),
        ("ablation of batch_size (4, 8)", 2, 3, 1.0), ("ablation of output_stride (8, 16)", 1, 3, 1.0)]
    expected = [40 * trial * 0.57,  # 0.57: successive halving's saving
                6 * (final + share * os8), 3 * (final + os8),  # the baseline trains at 16
                3 * (final + share * os8), 3 * (final + share * os8),
                3 * (search + share * os8), *(6 * (search + share * os8),) * 4,
                3 * (search + os8 / 2)]  # output stride: 8 and 16 averaged
    assert [row.hours * 3600 for row in plan.rows] == pytest.approx(expected)
    assert plan.total_hours == pytest.approx(sum(row.hours for row in plan.rows))
    printed = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in out.splitlines()
               if line.startswith("| ") and line.count("|") == 7}
    assert printed["total"] == f"{plan.total_hours:.3g}"
    assert all(printed[row.name] == f"{row.hours:.3g}" for row in plan.rows)
    assert "probe of test device (reused" in out and "disk, in demo:" in out
    assert "0% of the space predicted not to fit" in out


def test_a_variant_and_the_crf_protocol_are_priced_from_their_own_figures(workdir):
    """The demo with [finalize] variants = ["deeplabv3plus"] and the crf protocol: V3+ gets probe corners of
    its own (on the space's backbone: it retrains the best configuration, never ResNet-101), here at twice
    V3's seconds an image, and its row is priced from them; every run's crf scoring adds segtrain.crf's
    CPU-seconds for its val images, shared over the pool's processes."""
    text = DEMO.read_text().replace('\neval = ["ss", "os8"]', '\nvariants = ["deeplabv3plus"]\neval = ["ss", "os8", "crf"]', 1)
    assert text != DEMO.read_text()
    (workdir / "demo-family.toml").write_text(text)
    output_dir = workdir / "demo-family"
    write_probe(workdir / "demo-family.toml", output_dir=output_dir,
                seconds_per_image=lambda c: SECONDS_PER_IMAGE * (2 if c.model == "deeplabv3plus" else 1))
    spec = load_spec(workdir / "demo-family.toml").with_output_dir(output_dir)
    plus = {(c.kind, c.backbone, c.output_stride) for c in probe.corner_configs(spec) if c.model == "deeplabv3plus"}
    assert plus == {(kind, "resnet50", stride) for kind in ("train", "eval") for stride in (8, 16)}
    assert probe.settings_key(load_spec(DEMO)) == probe.settings_key(load_spec(DEMO).with_output_dir(output_dir))
    estimator = Estimator(spec, CostModel(probe.load(probe.probe_path(spec))))
    rows = {row.name: row for row in estimator.plan().rows}
    crf_seconds = crf.SECONDS_PER_VOC_IMAGE * (96 * 72) / (500 * 375) / crf.default_processes()  # 96 px, 4:3
    assert estimator.crf_seconds_per_image == pytest.approx(crf_seconds)
    share = sum(point["output_stride"] == 16 for point in estimator.points) / len(estimator.points)
    each = 2 * SECONDS_PER_IMAGE
    # trained, evaluated 4 times, scored at OS 8 where it trained at 16, and scored with the crf: a forward pass
    # at its own stride, and the CRF's share of the clock
    variant = 1.0 * 96 * each + 4 * 16 * each / 100 + share * 16 * each / 100 + 16 * (each / 100 + crf_seconds)
    assert rows["variant: DeepLabV3+"].hours * 3600 == pytest.approx(3 * variant)
    baseline = 1.0 * 96 * SECONDS_PER_IMAGE + 4 * 16 * SECONDS_PER_IMAGE / 100 + 16 * SECONDS_PER_IMAGE / 100
    assert rows["baseline"].hours * 3600 == pytest.approx(3 * (baseline + 16 * (SECONDS_PER_IMAGE / 100 + crf_seconds)))
    crf_note = f"dense CRF (crf): {crf.SECONDS_PER_VOC_IMAGE:g} CPU-seconds a 500x375 image"
    assert any(note.startswith(crf_note) for note in estimator.plan().notes)


def test_a_budget_cut_proposes_a_spec_that_parses_and_fits(demo, workdir, capsys):
    """The demo with a 4-epoch finalize, so that the cut's first knob has room to move."""
    spec, estimator = demo
    long = workdir / "demo-long.toml"
    text = DEMO.read_text()
    long.write_text(text.replace("\nepochs = 1.0                   # of train_aug", "\nepochs = 4.0  # of train_aug",
                                 1))
    assert load_spec(long).finalize.epochs == 4.0
    estimator = Estimator(load_spec(long).with_output_dir(spec.study.output_dir), estimator.model)
    budget = 0.65 * estimator.plan().total_hours
    out_path = workdir / "demo-cut.toml"
    argv = ["--study", str(long), "--output-dir", "demo", "--budget-hours", f"{budget:.6f}"]
    assert run(main, [*argv, "--out", str(out_path)], prog="hpo.plan") == 0
    assert f"wrote {out_path}" in capsys.readouterr().out
    cut = load_spec(out_path).with_output_dir(spec.study.output_dir)
    replanned = Estimator(cut, estimator.model).plan()
    assert replanned.total_hours <= budget
    # the order: finalize epochs first, down to half the spec's (and twice a trial's); seeds and top_k are at
    # or below their floors already (3 and 4: the demo's top_k is 2); then trials, as few as needed: one more
    # would not fit
    assert (cut.finalize.epochs, cut.finalize.seeds, cut.finalize.top_k) == (2.0, (1, 2, 3), 2)
    assert 20 <= cut.study.trials < 40
    assert Estimator(cut, estimator.model).plan(trials=cut.study.trials + 1).total_hours > budget
    assert cut.study.budget_hours == pytest.approx(budget - replanned.finalize_hours, abs=0.011)
    original, written = long.read_text().splitlines(), out_path.read_text().splitlines()
    assert [line for line in original if line.lstrip().startswith("#")] == \
           [line for line in written if line.lstrip().startswith("#")]  # the comments are kept
    assert run(main, argv, prog="hpo.plan") == 0
    assert "cut [finalize] epochs 4 -> 2; trials 40 ->" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--budget-hours", "0"], "argument --budget-hours: must be a number of hours > 0, got '0'"),
    (["--budget-hours", "-3"], "argument --budget-hours: must be a number of hours > 0, got '-3'"),
    (["--budget-hours", "0.0001"], "--budget-hours 0.0001: smaller than one trial (0.00224 h on test device)"),
    (["--budget-hours", "0.0001", "--out", "x.toml"], "smaller than one trial"),
    (["--budget-hours", "1", "--out", str(DEMO)], "that is the study's own spec"),
    (["--out", "x.toml"], "--out: writes the plan that --budget-hours proposes"),
    (["--memory-limit-gb", "none"], "argument --memory-limit-gb: must be a number of GiB > 0"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, words, demo, workdir, capsys):
    spec, _ = demo
    before = probe.probe_path(spec).read_bytes()
    capsys.readouterr()
    assert run(main, plan_argv(*argv), prog="hpo.plan") == 2
    out, err = capsys.readouterr()
    assert words in err and err.count("\n") == 1 and "hpo.plan: error: " in err and not out, err
    assert probe.probe_path(spec).read_bytes() == before and not (workdir / "x.toml").exists()


def test_an_unreadable_probe_file_is_one_line_and_left_as_it_is(workdir, capsys):
    broken = workdir / "broken" / probe.PROBE_FILE
    broken.parent.mkdir()
    for text, words in [('{"schema": 1, "corners": [', "not JSON"), ('{"schema": 99}', "schema 99, expected 1"),
                        ('{"schema": 1, "device": "x"}', "KeyError")]:
        broken.write_text(text)
        assert run(main, ["--study", str(DEMO), "--output-dir", "broken"], prog="hpo.plan") == 2
        err = capsys.readouterr().err
        assert f"broken/probe.json: unreadable probe file ({words}" in err and err.count("\n") == 1, err
        assert f"python -m hpo.plan --study {DEMO} --reprobe" in err
        assert broken.read_text() == text


def test_the_probe_measures_every_corner_and_is_reused(workdir, capsys):
    """One step per corner of a tiny ResNet-101 study (finalize trains ResNet-101 too) at batch 2 and 4,
    told that the machine has 10 MiB: the batch-2 corner (the baseline's too) runs, and the batch-4 one,
    which it predicts to need more, is not run, as running out of memory on a CPU kills the process."""
    torch.set_num_threads(1)
    spec_path = write_spec(workdir, "tiny", workdir / "cache", train=CHEAP_TRAIN + 'backbone = "resnet101"\n',
                           space='lr = {type = "float", low = 1e-3, high = 1e-1, log = true}\n'
                                 'batch_size = {type = "categorical", choices = [2, 4]}',
                           baseline="lr = 0.02\nbatch_size = 2", pruner='type = "none"')
    argv = ["--study", str(spec_path), "--probe-steps", "1", "--memory-limit-gb", str(10 / 1024)]
    assert run(main, argv, prog="hpo.plan") == 0
    out = capsys.readouterr().out
    path = workdir / "runs" / "tiny" / probe.PROBE_FILE
    written = json.loads(path.read_text())
    assert written["schema"] == 1 and written["device"].startswith("cpu") and written["torch"] == torch.__version__
    assert (written["memory_limit_bytes"], written["memory_limit_source"]) == (10 * 2 ** 20, "--memory-limit-gb")
    assert written["settings"]["steps"] == 1 and written["settings"]["key"] == probe.settings_key(load_spec(spec_path))
    small, large, evaluation = written["corners"]
    assert {key: small[key] for key in ("kind", "backbone", "output_stride", "crop_size", "batch_size", "aux_loss",
                                        "optimizer")} == {"kind": "train", "backbone": "resnet101", "output_stride": 16,
                                                          "crop_size": 33, "batch_size": 2, "aux_loss": False,
                                                          "optimizer": "sgd"}
    assert (evaluation["kind"], evaluation["crop_size"], evaluation["batch_size"]) == ("eval", 32, 8)  # val images
    for corner in (small, evaluation):
        assert corner["images_per_second"] > 0 and corner["peak_memory_bytes"] > 0 and corner["out_of_memory"] is None
        assert corner["parameters"] > 40_000_000  # ResNet-101 DeepLabV3
    assert small["flops_per_image"] > 1e9 and evaluation["flops_per_image"] == 0
    assert large["batch_size"] == 4 and large["images_per_second"] is None
    assert large["out_of_memory"].startswith("not run on the CPU: the smaller corners predict ~")
    assert "probe of cpu" in out and "(measured," in out and "100% of the space predicted not to fit" in out
    assert run(main, argv[:2], prog="hpo.plan") == 0  # same corners: the file is reused as it is
    assert "(reused," in capsys.readouterr().out and json.loads(path.read_text()) == written


def test_under_wsd_the_peak_counts_the_decay_branchs_copy_of_the_state(workdir):
    """A decay branch holds a copy of the weights and the optimizer's buffers (SGD's momentum: as large
    again) while it trains: the probe's memory figure must include it, and a spec switched to wsd
    must be probed again."""
    torch.set_num_threads(1)
    cpu, peaks = torch.device("cpu"), {}
    for schedule in ("poly", "wsd"):
        cfg = TrainConfig(pretrained=None, crop_size=33, batch_size=2, schedule=schedule, device="cpu")
        peaks[schedule] = profile.measure_training(cfg, 1, cpu, workdir / "wsd-cache").peak_memory_bytes
    state_bytes = 2 * 4 * profile.parameter_count(cfg)  # fp32 weights + momentum
    # on the CPU a peak is the process's resident set, and the wsd run may reuse pages the poly run freed
    # (0.64-1.0x of the copy seen here): the lower bound says the copy is counted, not its exact size
    assert 0.5 * state_bytes < peaks["wsd"] - peaks["poly"] < 1.3 * state_bytes
    spec = load_spec(DEMO)
    assert probe.settings_key(spec) != probe.settings_key(spec.with_train(schedule="wsd"))


def test_evaluation_corners_time_voc_like_same_size_batches():
    """Whole batches of VOC's commonest size in both orientations, and the small batches of rarer sizes."""
    assert probe.eval_batch_shapes(500, 8) == [(375, 500, 8), (500, 375, 8), (333, 500, 2), (500, 450, 1)]
    assert probe.eval_batch_shapes(500, 1) == [(375, 500, 1), (500, 375, 1), (333, 500, 1), (500, 450, 1)]


def test_the_documented_gpu_estimate_is_priced_by_the_planner_and_marked_assumed(monkeypatch, capsys):
    """docs/gpu_estimate.py reproduces performance.md's tables: the planner's bill on an assumed probe whose
    baseline trains at utilisation x peak / its FLOPs, so the bill scales inversely with that, says it is no
    measurement, and its FLOP count is segtrain.profile's."""
    path = REPO / "docs" / "gpu_estimate.py"

    def total(*argv: str) -> tuple[float, str]:
        monkeypatch.setattr(sys, "argv", ["gpu_estimate.py", *argv])
        runpy.run_path(str(path), run_name="__main__")
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("| total "))
        return float(row.split("|")[5]), out

    on_3090, out = total("--card", "rtx3090")
    on_h100, _ = total("--card", "h100")
    measured, _ = total("--images-per-second", "93")  # twice the 3090's derived 46.5
    assert on_h100 == pytest.approx(on_3090 * (0.20 * 71) / (0.12 * 989), rel=0.01)
    assert measured == pytest.approx(on_3090 / 2, rel=0.01)
    assert "(assumed, not measured)" in out and "ResNet-101, from scratch" in out
    assert "baseline 46.5 training images/s = 0.2 x 71 TFLOP/s / 305.2 GFLOP an image" in out
    estimate = runpy.run_path(str(path))
    baseline = TrainConfig(backbone="resnet50", output_stride=16, crop_size=513, aux_loss=False, pretrained=None)
    assert profile.training_flops(baseline) / 1e9 == pytest.approx(estimate["BASELINE_GFLOP"], abs=0.05)
