"""hpo.finalize.selection on an in-memory study: the top-k (more trials than k, a duplicate, a tie, an infeasible
trial), the baseline, the scratch arm's own recipe and the ablations, without training anything."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.finalize.selection import plan
from hpo.spec import load_spec
from hpo.trials import ranked_trials
from segtrain.errors import UserError

SPEC = """
[study]
name = "pick"
[train]
synthetic = true
pretrained = "none"
epochs = 1
[space]
lr = {type = "float", low = 1e-4, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adamw"]}
output_stride = {type = "categorical", choices = [8, 16]}
[baseline]
lr = 0.01
optimizer = "sgd"
output_stride = 16
[finalize]
top_k = 3
seeds = [0, 1]
epochs = 4
"""
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "optimizer": CategoricalDistribution(["sgd", "adamw"]),
                 "output_stride": CategoricalDistribution([8, 16])}


def trial(value: float, lr: float, optimizer: str = "sgd", output_stride: int = 16, seconds: float = 100.0,
          state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state, value=value if state == optuna.trial.TrialState.COMPLETE else None, distributions=DISTRIBUTIONS,
        params={"lr": lr, "optimizer": optimizer, "output_stride": output_stride},
        user_attrs={"seconds": seconds, **attrs.get("user_attrs", {})}, constraints=attrs.get("constraints"),
        intermediate_values={1: value / 2} if value is not None else {})


@pytest.fixture
def study() -> optuna.Study:
    """Eight trials: the baseline, a tie broken by cost, a duplicate, an infeasible best, a pruned one."""
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        trial(0.60, 0.01, user_attrs={"baseline": True}),  # 0: the baseline
        trial(0.80, 0.02, output_stride=8, seconds=300),  # 1: ties with 2, costlier
        trial(0.80, 0.03, "adamw", seconds=200),  # 2
        trial(0.70, 0.02, output_stride=8, seconds=10),  # 3: same params as 1, lower: not a second config
        trial(0.95, 0.09, constraints={"finite_loss": 1.0}),  # 4: diverged: infeasible, never selected
        trial(0.75, 0.005),  # 5
        trial(0.65, 0.004),  # 6: outside the top 3
        trial(None, 0.0002, state=optuna.trial.TrialState.PRUNED),  # 7
    ])
    return study


def spec_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "pick.toml"
    path.write_text(SPEC + extra)
    return path


def test_ranked_trials_are_distinct_feasible_and_complete_best_first_ties_to_the_cheaper(study):
    assert [t.number for t in ranked_trials(study)] == [2, 1, 5, 6, 0]


def test_top_k_with_more_trials_than_k_then_the_baseline_and_resnet101(tmp_path, study):
    spec = load_spec(spec_file(tmp_path))
    configurations = plan(spec, study, spec.finalize)
    assert [(c.name, c.trial, c.roles) for c in configurations] == [
        ("top-1", 2, ("top",)), ("top-2", 1, ("top",)), ("top-3", 5, ("top",)), ("baseline", 0, ("baseline",)),
        ("r101-imagenet", 2, ("r101-imagenet",)), ("r101-scratch", 2, ("r101-scratch",))]
    assert [c.search_value for c in configurations] == [0.80, 0.80, 0.75, 0.60, None, None]
    for c in configurations:  # the full budget, on finalize's splits
        assert (c.config.epochs, c.config.train_split, c.config.val_split) == (4.0, "train_aug", "val")
    assert configurations[1].params == {"lr": 0.02, "optimizer": "sgd", "output_stride": 8}


def test_a_wsd_search_is_finalized_with_poly_unless_finalize_says_otherwise(tmp_path, study):
    """The search may rank on wsd's annealed scores; the full-budget runs follow the published recipe."""
    wsd = SPEC.replace("epochs = 1\n", 'epochs = 1\nschedule = "wsd"\n', 1)
    (tmp_path / "pick.toml").write_text(wsd)
    spec = load_spec(tmp_path / "pick.toml")
    assert spec.train_config().schedule == "wsd"
    assert {c.config.schedule for c in plan(spec, study, spec.finalize)} == {"poly"}
    (tmp_path / "pick.toml").write_text(wsd + 'schedule = "wsd"\n')
    spec = load_spec(tmp_path / "pick.toml")
    assert {c.config.schedule for c in plan(spec, study, spec.finalize)} == {"wsd"}


def test_the_baseline_merges_with_the_top_trial_of_the_same_recipe(tmp_path, study):
    study.add_trial(trial(0.99, 0.01, user_attrs={"baseline": True}))  # the baseline's params, now the best
    spec = load_spec(spec_file(tmp_path))
    top = plan(spec, study, spec.finalize)[0]
    assert (top.name, top.roles, top.description) == ("top-1", ("top", "baseline"), "trial 8 = baseline")


def test_the_scratch_arm_gets_its_own_recipe_on_top_of_the_best(tmp_path, study):
    spec = load_spec(spec_file(tmp_path))
    best = plan(spec, study, spec.finalize)
    pretrained, scratch = best[-2].config, best[-1].config
    # pretrained: trial 2's recipe on ResNet-101 (TrainConfig's head_lr_multiplier 10)
    assert (pretrained.backbone, pretrained.pretrained, pretrained.lr, pretrained.head_lr_multiplier) == \
        ("resnet101", "imagenet", 0.03, 10.0)
    # scratch, by default: every layer at the head's lr (0.03 x 10), head multiplier 1, 5% warm-up, same budget
    assert (scratch.backbone, scratch.pretrained) == ("resnet101", None)
    assert (scratch.lr, scratch.head_lr_multiplier, scratch.epochs) == (pytest.approx(0.3), 1.0, 4.0)
    assert scratch.warmup_epochs == pytest.approx(0.2)
    assert (scratch.optimizer, scratch.output_stride) == ("adamw", 16)  # the rest is the best's


def test_scratch_settings_from_the_spec(tmp_path, study):
    spec = load_spec(spec_file(tmp_path, "[finalize.scratch]\nlr_multiplier = 3\nepochs_multiplier = 2.5\n"
                                         "warmup_fraction = 0.1\nweight_decay = 0.0005\n"))
    scratch = plan(spec, study, spec.finalize)[-1].config
    assert (scratch.lr, scratch.epochs, scratch.warmup_epochs) == (pytest.approx(0.09), 10.0, pytest.approx(1.0))
    assert (scratch.weight_decay, scratch.head_lr_multiplier) == (0.0005, 1.0)


def test_an_ablation_at_the_full_budget_centres_on_the_best_itself(tmp_path, study):
    spec = load_spec(spec_file(tmp_path, '[finalize.ablation]\nbudget = "full"\noutput_stride = [8, 16]\n'
                                         'crop_size = [321, 513]\n'))
    configurations = plan(spec, study, spec.finalize)
    top1 = configurations[0]
    assert top1.roles == ("top", "ablation-centre")  # the centre is top-1, trained once for both
    ablations = [c for c in configurations if c.role("ablation")]
    # the best (trial 2) has output stride 16 and crop 513 (TrainConfig's): those values are the centre itself
    assert [(c.name, c.factor, c.trial) for c in ablations] == [
        ("ablation output_stride=8", ("output_stride", 8), 2), ("ablation crop_size=321", ("crop_size", 321), 2)]
    assert ablations[0].config == top1.config.replace(output_stride=8)
    assert ablations[1].config == top1.config.replace(crop_size=321)
    assert [c.name for c in configurations][:4] == ["top-1", "top-2", "top-3", "baseline"]


def test_an_ablation_at_the_search_budget_trains_its_centre_again_there(tmp_path, study):
    spec = load_spec(spec_file(tmp_path, '[finalize.ablation]\nlr = ["x1/3", "x3"]\nbatch_size = [4, 16]\n'))
    configurations = plan(spec, study, spec.finalize)
    centre = next(c for c in configurations if c.role("ablation-centre"))
    assert centre.name == "ablation centre" and centre.trial == 2 and not centre.role("top")
    search = spec.train_config()
    assert (centre.config.epochs, centre.config.train_split) == (search.epochs, search.train_split)  # 1 epoch
    assert centre.config.val_split == spec.finalize.val_split  # scored where nothing selected
    assert centre.config == configurations[0].config.replace(epochs=search.epochs, train_split=search.train_split)
    ablations = [c for c in configurations if c.role("ablation")]
    assert [c.name for c in ablations] == ["ablation lr=0.01", "ablation lr=0.09", "ablation batch_size=4"]
    for ablation, changed in zip(ablations, [{"lr": 0.01}, {"lr": 0.09}, {"batch_size": 4}]):
        differing = {k: v for k, v in ablation.config.to_dict().items() if centre.config.to_dict()[k] != v}
        assert differing.keys() == changed.keys()
        assert differing == pytest.approx(changed)


def test_an_optimizer_swap_brings_the_lr_the_search_found_for_that_optimizer(tmp_path, study):
    spec = load_spec(spec_file(tmp_path, '[finalize.ablation]\noptimizer = ["sgd", "adamw"]\n'))
    swapped = next(c for c in plan(spec, study, spec.finalize) if c.role("ablation"))
    # the centre is trial 2 (adamw, lr 0.03); the search's best sgd trial is trial 1 (lr 0.02)
    assert (swapped.config.optimizer, swapped.config.lr, swapped.config.output_stride) == ("sgd", 0.02, 16)
    assert "lr 0.02 of trial 1, the search's best with sgd" in swapped.description


def test_without_a_trial_of_that_optimizer_it_takes_the_middle_of_its_range(tmp_path):
    text = SPEC.replace('lr = {type = "float", low = 1e-4, high = 1e-1, log = true}\noptimizer = {type = "categorical", '
                        'choices = ["sgd", "adamw"]}',
                        'optimizer = {type = "categorical", choices = ["sgd", "adamw"]}\n'
                        'lr = {type = "float", log = true, by = "optimizer", ranges = {sgd = [1e-3, 1e-1], '
                        'adamw = [1e-5, 1e-3]}}')
    path = tmp_path / "pick.toml"
    path.write_text(text + '[finalize.ablation]\noptimizer = ["adamw"]\n')
    spec = load_spec(path)
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        value=0.5, params={"optimizer": "sgd", "lr[sgd]": 0.01, "output_stride": 16},
        distributions={"optimizer": DISTRIBUTIONS["optimizer"], "lr[sgd]": FloatDistribution(1e-3, 1e-1, log=True),
                       "output_stride": DISTRIBUTIONS["output_stride"]}))
    swapped = next(c for c in plan(spec, study, spec.finalize) if c.role("ablation"))
    assert swapped.config.optimizer == "adamw" and swapped.config.lr == pytest.approx(1e-4)  # sqrt(1e-5 * 1e-3)
    assert "the middle of the space's range for adamw" in swapped.description


def test_a_recipe_change_that_clashes_with_the_best_names_its_table(tmp_path):
    """min_scale 1.5 is valid on its own (so the spec loads), not with the best trial's max_scale 1.0."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        value=0.5, params={"lr": 0.01, "max_scale": 1.0},
        distributions={"lr": DISTRIBUTIONS["lr"], "max_scale": FloatDistribution(0.5, 2.0)}))
    spec = load_spec(spec_file(tmp_path, "[finalize.scratch]\nmin_scale = 1.5\n"))
    with pytest.raises(UserError, match=r"pick.toml: \[finalize.scratch\] min_scale: must be > 0 and <= max_scale, "
                                        r"got 1.5 \(with ResNet-101 from scratch, trial 0's recipe"):
        plan(spec, study, spec.finalize)


def test_no_feasible_complete_trial_is_bad_input(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.9, 0.01, constraints={"finite_loss": 1.0}))
    spec = load_spec(spec_file(tmp_path))
    with pytest.raises(UserError, match="has no complete feasible trial to finalize"):
        plan(spec, study, spec.finalize)


def test_a_variant_retrains_the_best_configuration_as_deeplabv3plus(tmp_path, study):
    spec = load_spec(spec_file(tmp_path, 'variants = ["deeplabv3plus"]\n'))
    configurations = plan(spec, study, spec.finalize)
    assert [c.name for c in configurations] == ["top-1", "top-2", "top-3", "baseline", "variant deeplabv3plus",
                                                "r101-imagenet", "r101-scratch"]
    best, variant = configurations[0], configurations[4]
    assert (variant.roles, variant.trial, variant.factor, variant.search_value) == (
        ("variant",), 2, ("model", "deeplabv3plus"), None)
    assert variant.description == "trial 2's recipe as DeepLabV3+"
    assert best.config.model == "deeplabv3" and variant.config == best.config.replace(model="deeplabv3plus")
    assert variant.key != best.key  # its own run dirs
