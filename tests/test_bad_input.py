"""Bad input against an existing study: one line on stderr, exit code 2, no traceback, and the study
left exactly as it was (its trials, their values, the best value, its note).

The bad files themselves (corrupt JPEG, wrong-size mask, ...) are tested where they are read, in
test_data.py; a spec's every mistake in test_spec.py. Here: that hpo.search finds them before it
touches the study. Not covered by that promise: a file that is only found bad when decoded, in the
middle of a trial (a corrupt JPEG), which fails that trial with its reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note
from search_helpers import CHEAP_TRAIN, TINY_SPACE, write_spec

from hpo.search.cli import main
from segtrain.cli import run
from tests.conftest import VOC_SAMPLE

NAME = "kept"
VOC_TRAIN = 'synthetic = false\ntrain_split = "train"\nval_split = "val"\npretrained = "none"\ndevice = "cpu"\n'
CHEAP_RUN = "crop_size = 33\nepochs = 1.0\neval_points = 1\nworkers = 0\n"  # where a check that is missing would train


def snapshot(storage: str) -> tuple:
    study = optuna.load_study(study_name=NAME, storage=storage)
    trials = [(t.number, t.state, t.value, t.params, t.datetime_complete) for t in study.trials]
    return trials, study.best_value, get_note(study)


@pytest.fixture(scope="module")
def existing(module_tmp):
    """A finished 2-trial study whose storage lies outside runs/: (working dir, spec, storage, snapshot)."""
    directory = module_tmp("existing")
    storage = f"sqlite:///{directory / 'store' / 'study.db'}"
    spec = write_spec(directory, NAME, directory / "cache", train=CHEAP_TRAIN, study=f'storage = "{storage}"\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        assert run(main, ["--study", str(spec), "--trials", "2"], prog="hpo.search") == 0
        yield directory, spec, storage, snapshot(storage)


def voc_copy(directory: Path, damage: Callable[[Path], object] = lambda voc: None) -> Path:
    shutil.copytree(VOC_SAMPLE, directory / "voc")
    damage(directory / "voc/VOCdevkit/VOC2012")
    return directory / "voc"


def variant(directory: Path, storage: str, **kwargs) -> Path:
    """A spec for the same study (name and storage), in `directory`."""
    return write_spec(directory, NAME, directory / "cache", study=f'storage = "{storage}"\n', **kwargs)


def voc_spec(tmp: Path, storage: str) -> list[str]:
    return ["--study", str(variant(tmp, storage, train=VOC_TRAIN))]


def bad_space(name: str, line: str) -> Callable[[Path, str], list[str]]:
    """A spec whose [space] entry for `name` is `line`."""
    def argv(tmp: Path, storage: str) -> list[str]:
        space = "\n".join(line if entry.startswith(f"{name} =") else entry for entry in TINY_SPACE.splitlines())
        return ["--study", str(variant(tmp, storage, train=CHEAP_TRAIN, space=space, baseline=""))]
    return argv


def runs_is_a_file(tmp: Path, storage: str) -> list[str]:
    (tmp / "runs").write_text("")  # where runs/kept/ should go: an unwritable output dir, even for root
    return ["--chdir", str(tmp)]


def output_dir_in_a_file(tmp: Path, storage: str) -> list[str]:
    (tmp / "scratch").write_text("")  # a scratch disk that is not a directory
    return ["--output-dir", str(tmp / "scratch" / "kept")]


# case: (arguments after the study's own --study, given a tmp dir and the storage; words of the error)
CASES: dict[str, tuple[Callable[[Path, str], list[str]], str]] = {
    "missing data root": (lambda tmp, storage: [*voc_spec(tmp, storage), "--data-root", str(tmp / "nowhere")],
                          "nowhere is not a directory"),
    "mask missing for a listed id": (
        lambda tmp, storage: [*voc_spec(tmp, storage), "--data-root", str(voc_copy(
            tmp, lambda voc: (voc / "SegmentationClass/2007_000033.png").unlink()))],
        "2007_000033.png not found"),
    "empty split file": (
        lambda tmp, storage: [*voc_spec(tmp, storage), "--data-root", str(voc_copy(
            tmp, lambda voc: (voc / "ImageSets/Segmentation/val.txt").write_text("\n")))],
        "val.txt lists no image ids"),
    "spec unknown key": (bad_space("lr", 'lrr = {type = "float", low = 1e-3, high = 1e-1}'),
                         "[space] lrr: unknown TrainConfig field (did you mean 'lr'?)"),
    "spec low > high": (bad_space("lr", 'lr = {type = "float", low = 0.1, high = 0.01}'),
                        "[space] lr: low (0.1) must be < high (0.01)"),
    "spec unknown optimizer": (bad_space("optimizer", 'optimizer = {type = "categorical", choices = ["sgd", "lion"]}'),
                               "[space] optimizer: choices: must be one of sgd, adam, adamw, got 'lion'"),
    "spec empty choices": (bad_space("optimizer", 'optimizer = {type = "categorical", choices = []}'),
                           "[space] optimizer: choices must be a non-empty list"),
    "unknown storage scheme": (lambda tmp, storage: ["--storage", "redis://localhost/0"], "unknown scheme 'redis'"),
    "trials 0": (lambda tmp, storage: ["--trials", "0"], "argument --trials: must be >= 1, got 0"),
    "trials negative": (lambda tmp, storage: ["--trials", "-2"], "argument --trials: must be >= 1, got -2"),
    "unwritable output dir": (runs_is_a_file, "runs/kept: cannot write outputs there"),
    "unwritable --output-dir": (output_dir_in_a_file, "scratch/kept: cannot write outputs there"),
    "budget without a probe": (lambda tmp, storage: ["--budget-hours", "3"],
                               "a budget needs the probe of this spec (no probe at runs/kept/probe.json)"),
    # splits compared by their image ids, not their names (a synthetic set is made first, then compared)
    "VOC trainval scored on val": (
        lambda tmp, storage: ["--study", str(variant(tmp, storage, train=VOC_TRAIN.replace(
            'train_split = "train"', 'train_split = "trainval"') + CHEAP_RUN)), "--data-root", str(voc_copy(tmp))],
        "[train]: train_split 'trainval' and val_split 'val' share 1 of the 1 val image ids"),
    "synthetic train_aug scored on holdout": (
        lambda tmp, storage: ["--study", str(variant(tmp, storage, train=CHEAP_TRAIN
                                                     + 'train_split = "train_aug"\nval_split = "holdout"\n'))],
        "[train]: train_split 'train_aug' and val_split 'holdout' share 1 of the 1 val image ids"),
    "several workers, one line": (lambda tmp, storage: [*voc_spec(tmp, storage), "--workers", "3",
                                                        "--data-root", str(tmp / "nowhere")],
                                  "nowhere is not a directory"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_leaves_an_existing_study_as_it_was(case, existing, tmp_path, monkeypatch, capsys):
    _, spec, storage, before = existing
    make_argv, words = CASES[case]
    argv = ["--study", str(spec), "--trials", "4", *make_argv(tmp_path, storage)]
    if "--chdir" in argv:  # run from there (the spec's storage path is absolute)
        monkeypatch.chdir(argv.pop(argv.index("--chdir") + 1))
        argv.remove("--chdir")
    capsys.readouterr()
    assert run(main, argv, prog="hpo.search") == 2
    err = capsys.readouterr().err
    assert "hpo.search: error: " in err and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err
    assert snapshot(storage) == before
