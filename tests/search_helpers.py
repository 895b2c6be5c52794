"""Tiny study specs for the search and finalize tests: 8 synthetic images, crop 65, a few steps a trial."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]

TINY_SYNTHETIC = """
synthetic = true
synthetic_train_images = 8
synthetic_val_images = 4
synthetic_image_size = 64
"""

TINY_RUN = """
pretrained = "none"
head_lr_multiplier = 1.0
crop_size = 65
epochs = 1.0
eval_points = 2
workers = 0
device = "cpu"
"""

TINY_TRAIN = TINY_SYNTHETIC + TINY_RUN

TINY_SPACE = """
lr = {type = "float", low = 1e-3, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adam"]}
momentum = {type = "float", low = 0.8, high = 0.95, when = {optimizer = "sgd"}}
batch_size = {type = "categorical", choices = [2, 4]}
"""

TINY_BASELINE = """
lr = 0.02
optimizer = "sgd"
momentum = 0.9
batch_size = 2
"""


def write_spec(directory: Path, name: str, cache: Path, *, space: str = TINY_SPACE,
               baseline: str = TINY_BASELINE, pruner: str = 'type = "median"\nn_startup_trials = 1\n'
                                                           'n_warmup_steps = 0',
               extra: str = "", train: str = TINY_TRAIN, study: str = "") -> Path:
    """A study file in `directory`; `cache` is [train] data_root: where the synthetic set is cached
    (shared between studies), or a VOC root when `train` is TINY_RUN (no synthetic data).

    `train` replaces the fixed settings but data_root; `study` adds [study] settings.
    """
    path = directory / f"{name}.toml"
    path.write_text(f'[study]\nname = "{name}"\nheartbeat_interval = 1\ngrace_period = 3\n'
                    f'keep_checkpoints = 1\n{study}\n[train]\ndata_root = "{cache}"\n{train}\n'
                    f'[space]\n{space}\n[baseline]\n{baseline}\n[pruner]\n{pruner}\n'
                    f'[sampler]\nn_startup_trials = 3\n{extra}')
    return path


# the cheapest trial that still trains, evaluates and checkpoints: for tests of processes, not of learning
CHEAP_TRAIN = TINY_TRAIN.replace("synthetic_val_images = 4", "synthetic_val_images = 2") \
    .replace("synthetic_image_size = 64", "synthetic_image_size = 32").replace("crop_size = 65", "crop_size = 33")


def python_path_env() -> dict[str, str]:
    """os.environ, with this repo importable by `python -m hpo.search` run from any directory."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def assert_exactly_finished(study: optuna.Study, target: int) -> None:
    """The study holds `target` trials, numbered 0..target-1 once each, all complete or pruned."""
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(target)), [t.number for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), \
        [(t.number, t.state, t.user_attrs.get("failure")) for t in trials]


def load_study(name: str, url: str) -> optuna.Study:
    """The study `name` in an Optuna storage URL, or in journal://PATH (which Optuna takes as an object)."""
    if url.startswith("journal://"):
        url = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[len("journal://"):]))
    return optuna.load_study(study_name=name, storage=url)


def write_probe(spec_path: Path, seconds_per_image, memory_bytes=lambda corner: 2 ** 30,
                limit_bytes: int = 64 * 2 ** 30, output_dir: Path | None = None) -> Path:
    """A hand-written probe of the spec's own corners (so hpo.plan and hpo.search take it as theirs):
    `seconds_per_image(corner)` and `memory_bytes(corner)` give each corner's figures (evaluation
    corners: a hundredth of the first), `limit_bytes` the device's memory."""
    import dataclasses

    from hpo.plan import probe
    from hpo.spec import load_spec

    spec = load_spec(spec_path)
    if output_dir is not None:
        spec = spec.with_output_dir(output_dir)
    corners = tuple(dataclasses.replace(corner, images_per_second=(1 if corner.kind == "train" else 100)
                                        / seconds_per_image(corner), peak_memory_bytes=memory_bytes(corner),
                                        flops_per_image=1e9 if corner.kind == "train" else 0.0, parameters=1000)
                    for corner in probe.corner_configs(spec))
    written = probe.Probe(spec.study.name, "2025-01-01T00:00:00+00:00", "test device", "cpu", "0", limit_bytes,
                          "written by the test", {"key": probe.settings_key(spec), "steps": 1, "eval_batches": 1},
                          corners)
    return probe.save(written, probe.probe_path(spec))
