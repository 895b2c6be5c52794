"""Sampling a spec's space with real Optuna studies: types, ranges, log scale, conditionals,
per-condition ranges, the seeded baseline and recipes."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from hpo.space import Param, enqueue_seeded, suggest, train_overrides
from hpo.spec import StudySpec, load_spec
from segtrain.config import TrainConfig

SPEC = """
[train]
synthetic = true

[space]
lr = {type = "float", low = 1e-3, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adam", "adamw"]}
momentum = {type = "float", low = 0.8, high = 0.99, when = {optimizer = "sgd"}}
nesterov = {type = "categorical", choices = [true, false], when = {optimizer = ["sgd"]}}
weight_decay = {type = "categorical", choices = [0, 1e-4], when = {optimizer = ["adam", "adamw"]}}
crop_size = {type = "categorical", choices = [65, 97, 129]}
batch_size = {type = "int", low = 2, high = 8, step = 2}
warmup_epochs = {type = "float", low = 0, high = 1, step = 0.25}
eval_points = {type = "int", low = 1, high = 16, log = true}

[sampler]
type = "{sampler}"

[baseline]
lr = 0.02
optimizer = "sgd"
momentum = 0.9
nesterov = false
crop_size = 97
batch_size = 4
warmup_epochs = 0
eval_points = 4
"""


def make_spec(tmp_path: Path, sampler: str = "random") -> StudySpec:
    path = tmp_path / "space.toml"
    path.write_text(SPEC.replace("{sampler}", sampler), encoding="utf-8")
    return load_spec(path)


def sample(spec: StudySpec, n_trials: int) -> list[dict]:
    """Ask, suggest and tell `n_trials` times (so TPE leaves its random startup phase)."""
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler())
    samples = []
    for number in range(n_trials):
        trial = study.ask()
        params = suggest(trial, spec.space)
        assert params == trial.params
        study.tell(trial, math.log(params["lr"]) + (params["optimizer"] == "sgd") + number % 3 * 0.1)
        samples.append(params)
    return samples


@pytest.mark.parametrize(("sampler", "n_trials"), [("random", 30), ("tpe", 30), ("gp", 13)])  # GP fits are slow
def test_samples_respect_types_ranges_and_conditions(tmp_path: Path, sampler: str, n_trials: int) -> None:
    spec = make_spec(tmp_path, sampler)
    samples = sample(spec, n_trials)  # past the 10 random startup trials
    for params in samples:
        assert type(params["lr"]) is float and 1e-3 <= params["lr"] <= 1e-1
        assert params["optimizer"] in ("sgd", "adam", "adamw")
        assert type(params["crop_size"]) is int and params["crop_size"] in (65, 97, 129)
        assert type(params["batch_size"]) is int and params["batch_size"] in (2, 4, 6, 8)
        assert params["warmup_epochs"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert type(params["eval_points"]) is int and 1 <= params["eval_points"] <= 16
        is_sgd = params["optimizer"] == "sgd"
        assert ("momentum" in params) == ("nesterov" in params) == is_sgd
        assert ("weight_decay" in params) == (not is_sgd)
        if is_sgd:
            assert 0.8 <= params["momentum"] <= 0.99 and type(params["nesterov"]) is bool
        else:
            assert type(params["weight_decay"]) is float and params["weight_decay"] in (0.0, 1e-4)
        config = spec.train_config(params)
        assert isinstance(config, TrainConfig)
        assert (config.lr, config.optimizer, config.crop_size) == (params["lr"], params["optimizer"], params["crop_size"])
        assert config.momentum == params.get("momentum", TrainConfig.momentum)
    assert {params["optimizer"] == "sgd" for params in samples} == {True, False}  # both branches seen


def test_log_scale_is_uniform_in_the_exponent(tmp_path: Path) -> None:
    lrs = [params["lr"] for params in sample(make_spec(tmp_path), 300)]
    below_geometric_middle = sum(lr < 1e-2 for lr in lrs) / len(lrs)
    assert 0.4 < below_geometric_middle < 0.6  # a uniform draw on [1e-3, 1e-1] would give ~0.09


PER_OPTIMIZER = """
[train]
synthetic = true

[space]
optimizer = {type = "categorical", choices = ["sgd", "adamw"]}
lr = {type = "float", log = true, by = "optimizer", ranges = {sgd = [1e-3, 3e-2], adamw = [1e-5, 1e-3]}}
weight_decay = {type = "float", log = true, by = "optimizer", ranges = {adamw = [1e-3, 1e-1]}}
momentum = {type = "float", low = 0.8, high = 0.99, when = {optimizer = "sgd"}}

[sampler]
{sampler}

[baseline]
optimizer = "sgd"
lr = 0.001
momentum = 0.9

[recipes.decoupled]
source = "AdamW with decoupled decay"
optimizer = "adamw"
lr = 1e-4
weight_decay = 0.01

[recipes.fast]
source = "SGD at a high lr"
optimizer = "sgd"
lr = 0.02
momentum = 0.95
"""


@pytest.mark.parametrize("sampler", ['type = "random"', 'type = "tpe"\nn_startup_trials = 5'], ids=["random", "tpe"])
def test_per_condition_ranges_sample_only_their_own_range(tmp_path: Path, sampler: str) -> None:
    path = tmp_path / "per_optimizer.toml"
    path.write_text(PER_OPTIMIZER.replace("{sampler}", sampler), encoding="utf-8")
    spec = load_spec(path)
    assert [param.name for param in spec.space] == \
        ["optimizer", "lr[sgd]", "lr[adamw]", "weight_decay[adamw]", "momentum"]
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler())
    seen = set()
    for number in range(20):  # past TPE's 5 random startup trials
        trial = study.ask()
        params = suggest(trial, spec.space)
        optimizer = params["optimizer"]
        seen.add(optimizer)
        config = spec.train_config(train_overrides(spec.space, params))
        if optimizer == "sgd":
            assert set(params) == {"optimizer", "lr[sgd]", "momentum"}
            assert 1e-3 <= params["lr[sgd]"] <= 3e-2 and config.lr == params["lr[sgd]"]
            assert config.weight_decay == TrainConfig.weight_decay  # no sgd range: the [train]/default value
        else:
            assert set(params) == {"optimizer", "lr[adamw]", "weight_decay[adamw]"}
            assert 1e-5 <= params["lr[adamw]"] <= 1e-3 and config.lr == params["lr[adamw]"]
            assert 1e-3 <= params["weight_decay[adamw]"] <= 1e-1
            assert config.weight_decay == params["weight_decay[adamw]"]
        study.tell(trial, -abs(math.log10(config.lr) + 3) + number % 2 * 0.1)
    assert seen == {"sgd", "adamw"}


def test_baseline_and_recipes_are_the_first_trials_and_run_once_across_resumes(tmp_path: Path) -> None:
    path = tmp_path / "per_optimizer.toml"
    path.write_text(PER_OPTIMIZER.replace("{sampler}", 'type = "tpe"'), encoding="utf-8")
    spec = load_spec(path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for run in range(2):  # a rerun resumes the study: it must not enqueue the seeded trials again
        study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                    sampler=spec.make_sampler(seed_offset=run), load_if_exists=True)
        enqueue_seeded(study, spec.space, spec.seeded_trials())
        enqueue_seeded(study, spec.space, spec.seeded_trials())
        for _ in range(2):
            trial = study.ask()
            suggest(trial, spec.space)
            study.tell(trial, 0.5 if trial.user_attrs else 0.1)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 4
    assert trials[0].params == {"optimizer": "sgd", "lr[sgd]": 0.001, "momentum": 0.9}
    assert trials[0].user_attrs == {"baseline": True}
    assert trials[1].params == {"optimizer": "adamw", "lr[adamw]": 1e-4, "weight_decay[adamw]": 0.01}
    assert trials[1].user_attrs == {"recipe": "decoupled", "source": "AdamW with decoupled decay"}
    assert trials[2].user_attrs == {"recipe": "fast", "source": "SGD at a high lr"}
    assert train_overrides(spec.space, trials[2].params) == spec.recipes[1].values == \
        {"optimizer": "sgd", "lr": 0.02, "momentum": 0.95}
    assert not trials[3].user_attrs  # then the sampler's own


def test_a_bool_choice_is_not_an_int() -> None:
    nesterov = Param("nesterov", "categorical", choices=(True, False))
    assert nesterov.contains(True) and not nesterov.contains(1)
    crop = Param("crop_size", "categorical", choices=(1, 2))
    assert crop.contains(1) and not crop.contains(True)
    momentum = Param("momentum", "float", 0.8, 0.99, when={"optimizer": ("sgd",)})
    assert momentum.active({"optimizer": "sgd"}) and not momentum.active({"optimizer": "adam"})
    assert not momentum.active({})  # its parent was not sampled


def test_contains_respects_bounds_and_step() -> None:
    batch = Param("batch_size", "int", 2, 8, step=2)
    assert batch.contains(4) and not batch.contains(5) and not batch.contains(10) and not batch.contains(4.0)
    warmup = Param("warmup_epochs", "float", 0.0, 1.0, step=0.1)
    assert warmup.contains(0.3) and not warmup.contains(0.35) and warmup.contains(1)
