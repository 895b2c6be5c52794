"""Study spec parsing: the shipped studies load, and every kind of mistake is one line naming its key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.plan.cost import split_size
from hpo.spec import StudySpec, load_spec
from segtrain.config import TrainConfig
from segtrain.errors import ConfigError, UserError

STUDIES = Path(__file__).resolve().parent.parent / "studies"

SPACE = """
[space]
lr = {type = "float", low = 1e-3, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adam"]}
momentum = {type = "float", low = 0.8, high = 0.99, when = {optimizer = "sgd"}}
batch_size = {type = "categorical", choices = [2, 4]}
"""


def write_spec(tmp_path: Path, text: str, name: str = "trial_spec.toml") -> Path:
    """A spec file: `text`, plus the small SPACE above unless `text` has its own [space]."""
    path = tmp_path / name
    path.write_text(text if "[space]" in text else text + SPACE, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["demo.toml", "voc_r50.toml"])
def test_shipped_studies_parse(name: str) -> None:
    spec = load_spec(STUDIES / name)
    assert isinstance(spec.make_sampler(), optuna.samplers.TPESampler)
    assert isinstance(spec.make_pruner(), optuna.pruners.SuccessiveHalvingPruner)  # benchmarks/pruning.py
    assert {"lr", "optimizer", "crop_size", "batch_size", "output_stride"} <= {p.field for p in spec.space}
    baseline = spec.train_config(spec.baseline)
    assert (baseline.optimizer, baseline.momentum, baseline.output_stride) == ("sgd", 0.9, 16)
    # a final run sees more training images than a search trial (train_aug against train_aug_search)
    final_images = spec.finalize.epochs * split_size(baseline, spec.finalize.train_split)[0]
    assert final_images > baseline.epochs * split_size(baseline, baseline.train_split)[0]
    assert f"Study `{spec.study.name}`" in spec.to_markdown()


def test_demo_is_synthetic_and_cpu_sized() -> None:
    spec = load_spec(STUDIES / "demo.toml")
    config = spec.train_config(spec.baseline)
    assert config.synthetic and config.pretrained is None and config.workers == 0
    assert config.epochs * config.synthetic_train_images / config.batch_size <= 40  # steps of a full trial
    assert spec.study.storage == "sqlite:///runs/demo/study.db"


def test_voc_baseline_is_the_standard_recipe() -> None:
    spec = load_spec(STUDIES / "voc_r50.toml")
    config = spec.train_config(spec.baseline)
    assert config.train_split == "train_aug_search" and config.val_split == "holdout"  # selection held out
    assert (spec.finalize.train_split, spec.finalize.val_split) == ("train_aug", "val")  # the table: VOC val
    assert config.pretrained == "imagenet"
    assert (config.crop_size, config.batch_size) == (513, 16)
    assert config.lr * config.head_lr_multiplier == pytest.approx(0.01)  # head 0.01, backbone 0.001
    assert spec.study.output_dir == Path("runs/voc-r50")


def test_minimal_spec_gets_the_defaults(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, ""))
    assert spec.study.name == "trial_spec"
    assert spec.study.storage == "sqlite:///runs/trial_spec/study.db"
    assert (spec.study.heartbeat_interval, spec.study.grace_period, spec.study.keep_checkpoints) == (60, 120, 3)
    assert isinstance(spec.make_sampler(), optuna.samplers.TPESampler)
    assert spec.sampler.args == {"multivariate": True, "group": True}
    assert isinstance(spec.make_pruner(), optuna.pruners.MedianPruner)
    assert spec.pruner.args == {"n_warmup_steps": 2}
    assert spec.baseline == {} and spec.recipes == () and spec.seeded_trials() == []
    assert spec.finalize.seeds == (1, 2, 3) and spec.finalize.epochs == TrainConfig.epochs  # apart from the search's 0
    assert spec.train_config() == TrainConfig()


def test_full_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, """
[study]
name = "tiny"
storage = "sqlite:////tmp/elsewhere.db"
seed = 7
heartbeat_interval = 1
grace_period = 3
keep_checkpoints = 1

[train]
synthetic = true
epochs = 2
pretrained = "none"

[sampler]
type = "tpe"
n_startup_trials = 4
group = false

[pruner]
type = "hyperband"
min_resource = 1
max_resource = 4
reduction_factor = 2

[baseline]
lr = 0.01
optimizer = "sgd"
momentum = 0.9
batch_size = 2

[finalize]
top_k = 2
seeds = [3, 4]
epochs = 8
pretrained_weights = "weights/r101.pth"
eval = ["ss", "crf"]
variants = ["deeplabv3plus"]
""")
    spec = load_spec(path)
    assert (spec.study.name, spec.study.storage, spec.study.seed) == ("tiny", "sqlite:////tmp/elsewhere.db", 7)
    assert (spec.study.heartbeat_interval, spec.study.grace_period) == (1, 3)
    assert spec.sampler.args == {"multivariate": True, "group": False, "n_startup_trials": 4}
    assert isinstance(spec.make_pruner(), optuna.pruners.HyperbandPruner)
    assert spec.finalize == type(spec.finalize)(top_k=2, seeds=(3, 4), epochs=8.0,
                                                pretrained_weights="weights/r101.pth", eval=("ss", "crf"),
                                                variants=("deeplabv3plus",))
    assert "the best configuration also as DeepLabV3+." in spec.to_markdown()
    config = spec.train_config({"lr": 0.05, "optimizer": "adam", "batch_size": 4})
    assert (config.synthetic, config.epochs, config.pretrained) == (True, 2.0, None)
    assert (config.lr, config.optimizer, config.batch_size, config.momentum) == (0.05, "adam", 4, 0.9)


@pytest.mark.parametrize(("sampler", "cls"), [("tpe", optuna.samplers.TPESampler),
                                              ("random", optuna.samplers.RandomSampler),
                                              ("gp", optuna.samplers.GPSampler)])
def test_sampler_types(tmp_path: Path, sampler: str, cls: type) -> None:
    assert isinstance(load_spec(write_spec(tmp_path, f'[sampler]\ntype = "{sampler}"\n')).make_sampler(), cls)


@pytest.mark.parametrize(("pruner", "cls"), [("median", optuna.pruners.MedianPruner),
                                             ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                             ("hyperband", optuna.pruners.HyperbandPruner),
                                             ("none", optuna.pruners.NopPruner)])
def test_pruner_types(tmp_path: Path, pruner: str, cls: type) -> None:
    assert isinstance(load_spec(write_spec(tmp_path, f'[pruner]\ntype = "{pruner}"\n')).make_pruner(), cls)


def test_sampler_seed_comes_from_study_plus_offset(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, '[study]\nseed = 3\n[sampler]\ntype = "random"\n'))

    def first_lr(offset: int) -> float:
        return optuna.create_study(sampler=spec.make_sampler(offset)).ask().suggest_float("lr", 1e-3, 1e-1)

    assert first_lr(0) == first_lr(0)
    assert first_lr(0) != first_lr(1)


def test_with_train_fixes_more_fields(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "[train]\nepochs = 2\n"))
    moved = spec.with_train(data_root="/data/voc")
    assert moved.train_config().data_root == "/data/voc" and moved.train_config().epochs == 2.0
    assert spec.train_config().data_root is None
    with pytest.raises(ConfigError, match="lr: is searched"):
        spec.with_train(lr=0.1)
    with pytest.raises(ConfigError, match="workers"):
        spec.with_train(workers=-1)


def test_markdown_describes_data_space_and_search(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "[train]\nsynthetic = true\nsynthetic_classes = 3\n"
                                          '[baseline]\nlr = 0.01\noptimizer = "adam"\nbatch_size = 4\n'))
    note = spec.to_markdown()
    assert "Synthetic VOC-format data" in note and "3 object classes" in note
    assert "| momentum | float in [0.8, 0.99], when optimizer = sgd |" in note
    assert "TPESampler(multivariate=True, group=True)" in note and "MedianPruner(n_warmup_steps=2)" in note
    assert "optimizer = `'adam'`" in note


BY_OPTIMIZER = """[space]
optimizer = {{type = 'categorical', choices = ['sgd', 'adam']}}
momentum = {{type = 'float', low = 0.8, high = 0.99, when = {{optimizer = 'sgd'}}}}
lr = {{type = 'float', log = true, {}}}
"""

INVALID = {
    "malformed TOML": ("lr = = 1\n", "not valid TOML"),
    "unknown section": ("[trian]\nepochs = 1\n", "[trian]: unknown section (did you mean 'train'?)"),
    "section not a table": ('study = "x"\n', "[study]: must be a table"),
    "empty space": ("[space]\n", "[space]: no parameters"),
    "study unknown key": ("[study]\nnmae = 'x'\n", "[study] nmae: unknown setting (did you mean 'name'?)"),
    "study direction is no setting": ("[study]\ndirection = 'minimize'\n", "[study] direction: unknown setting"),
    "study bad type": ("[study]\nseed = 'zero'\n", "[study] seed: must be int, got 'zero'"),
    "study bad name": ("[study]\nname = 'a/b'\n", "[study] name: must be letters"),
    "study grace period": ("[study]\nheartbeat_interval = 10\ngrace_period = 10\n", "[study] grace_period: must be >"),
    "study heartbeat not int": ("[study]\nheartbeat_interval = 0.5\n", "[study] heartbeat_interval: must be int"),
    "train unknown key": ("[train]\nlrr = 0.1\n", "[train] lrr: unknown setting"),
    "train bad type": ("[train]\nepochs = 'many'\n", "[train] epochs: must be float"),
    "train bad value": ("[train]\nbackbone = 'vgg16'\n", "[train] backbone: must be one of"),
    "key in train and space": ("[train]\nlr = 0.01\n", "[space] lr: is also fixed in [train]"),
    "space unknown field": ("[space]\nlrr = {type = 'float', low = 0.1, high = 1.0}\n",
                            "[space] lrr: unknown TrainConfig field (did you mean 'lr'?)"),
    "space unknown option": ("[space]\nlr = {type = 'float', lo = 0.1, high = 1.0}\n",
                             "[space] lr: lo: unknown option (did you mean 'low'?)"),
    "space not a table": ("[space]\nlr = 0.1\n", "[space] lr: must be a table"),
    "space missing type": ("[space]\nlr = {low = 0.1, high = 1.0}\n", "[space] lr: type is required"),
    "space unknown type": ("[space]\nlr = {type = 'double', low = 0.1, high = 1.0}\n", "[space] lr: type must be one of"),
    "space missing bound": ("[space]\nlr = {type = 'float', low = 0.1}\n", '[space] lr: high is required for type "float"'),
    "space float type on int field": ("[space]\ncrop_size = {type = 'float', low = 65, high = 129}\n",
                                      '[space] crop_size: type "float" does not fit the int field'),
    "space int type on str field": ("[space]\noptimizer = {type = 'int', low = 1, high = 2}\n",
                                    '[space] optimizer: type "int" does not fit the str field; use "categorical"'),
    "space int field float bounds": ("[space]\ncrop_size = {type = 'int', low = 65.0, high = 129}\n",
                                     '[space] crop_size: low must be an integer for type "int", got 65.0'),
    "space bool bound": ("[space]\nlr = {type = 'float', low = true, high = 1.0}\n", "[space] lr: low must be a finite"),
    "space infinite bound": ("[space]\nlr = {type = 'float', low = 0.1, high = inf}\n", "[space] lr: high must be a finite"),
    "space low > high": ("[space]\nlr = {type = 'float', low = 0.1, high = 0.01}\n",
                         "[space] lr: low (0.1) must be < high (0.01)"),
    "space low == high": ("[space]\nlr = {type = 'float', low = 0.01, high = 0.01}\n",
                          "[space] lr: low (0.01) must be < high (0.01)"),
    "space log with low 0": ("[space]\nweight_decay = {type = 'float', low = 0.0, high = 0.1, log = true}\n",
                             "[space] weight_decay: log needs low > 0"),
    "space log not bool": ("[space]\nlr = {type = 'float', low = 0.01, high = 0.1, log = 1}\n",
                           "[space] lr: log must be true or false"),
    "space step zero": ("[space]\ncrop_size = {type = 'int', low = 65, high = 129, step = 0}\n",
                        "[space] crop_size: step must be > 0"),
    "space step off grid": ("[space]\ncrop_size = {type = 'int', low = 65, high = 129, step = 30}\n",
                            "[space] crop_size: high - low (129 - 65) must be a multiple of step (30)"),
    "space log with step": ("[space]\ncrop_size = {type = 'int', low = 64, high = 128, step = 32, log = true}\n",
                            "[space] crop_size: log and step cannot be combined"),
    "space empty choices": ("[space]\noptimizer = {type = 'categorical', choices = []}\n",
                            "[space] optimizer: choices must be a non-empty list"),
    "space choices not a list": ("[space]\noptimizer = {type = 'categorical', choices = 'sgd'}\n",
                                 "[space] optimizer: choices must be a list"),
    "space unknown optimizer": ("[space]\noptimizer = {type = 'categorical', choices = ['sgd', 'rmsprop']}\n",
                                "[space] optimizer: choices: must be one of sgd, adam, adamw, got 'rmsprop'"),
    "space choice of wrong type": ("[space]\nbatch_size = {type = 'categorical', choices = [4, '8']}\n",
                                   "[space] batch_size: choices: '8' does not fit the int field"),
    "space bool choice for int": ("[space]\nbatch_size = {type = 'categorical', choices = [4, true]}\n",
                                  "[space] batch_size: choices: True does not fit the int field"),
    "space repeated choice": ("[space]\nbatch_size = {type = 'categorical', choices = [4, 4]}\n",
                              "[space] batch_size: choices repeat a value"),
    "space categorical with low": ("[space]\nbatch_size = {type = 'categorical', choices = [4], low = 2}\n",
                                   "[space] batch_size: low does not apply"),
    "space range with choices": ("[space]\nlr = {type = 'float', low = 0.01, high = 0.1, choices = [0.05]}\n",
                                 "[space] lr: choices do not apply"),
    "space bound TrainConfig rejects": ("[space]\nmomentum = {type = 'float', low = 0.9, high = 1.0}\n",
                                        "[space] momentum: high: must be in [0, 1)"),
    "space when on later param": ("[space]\nmomentum = {type = 'float', low = 0.8, high = 0.9, when = {optimizer = 'sgd'}}\n"
                                  "optimizer = {type = 'categorical', choices = ['sgd', 'adam']}\n",
                                  "[space] momentum: when: 'optimizer' must be a categorical parameter defined before"),
    "space when on float param": ("[space]\nlr = {type = 'float', low = 0.01, high = 0.1}\n"
                                  "momentum = {type = 'float', low = 0.8, high = 0.9, when = {lr = 0.05}}\n",
                                  "[space] momentum: when: 'lr' must be a categorical parameter"),
    "space when value not a choice": ("[space]\noptimizer = {type = 'categorical', choices = ['sgd', 'adam']}\n"
                                      "momentum = {type = 'float', low = 0.8, high = 0.9, when = {optimizer = 'sgdd'}}\n",
                                      "[space] momentum: when: 'sgdd' is not among optimizer's choices"),
    "space when not a table": ("[space]\nmomentum = {type = 'float', low = 0.8, high = 0.9, when = 'sgd'}\n",
                               "[space] momentum: when must be a table"),
    "space when empty list": ("[space]\noptimizer = {type = 'categorical', choices = ['sgd', 'adam']}\n"
                              "momentum = {type = 'float', low = 0.8, high = 0.9, when = {optimizer = []}}\n",
                              "[space] momentum: when: optimizer needs at least one value"),
    "sampler unknown type": ("[sampler]\ntype = 'cmaes'\n", "[sampler] type: must be one of tpe, random, gp, got 'cmaes'"),
    "sampler type not a string": ("[sampler]\ntype = ['tpe']\n", "[sampler] type: must be one of tpe, random, gp"),
    "sampler unknown argument": ("[sampler]\nn_startup = 5\n",
                                 "[sampler] n_startup: unknown argument of TPESampler (did you mean 'n_startup_trials'?)"),
    "sampler seed": ("[sampler]\nseed = 1\n", "[sampler] seed: is set in [study]"),
    "sampler argument type": ("[sampler]\nn_startup_trials = '10'\n", "[sampler] n_startup_trials: must be int, got '10'"),
    "sampler callable argument": ("[sampler]\ngamma = 0.25\n", "[sampler] gamma: takes Callable"),
    "sampler rejects combination": ("[sampler]\nmultivariate = false\n",
                                    "[sampler] multivariate, group: rejected by TPESampler"),
    "pruner unknown type": ("[pruner]\ntype = 'asha'\n", "[pruner] type: must be one of median, successive_halving"),
    "pruner unknown argument": ("[pruner]\nn_warmup = 2\n",
                                "[pruner] n_warmup: unknown argument of MedianPruner (did you mean 'n_warmup_steps'?)"),
    "pruner bad argument value": ("[pruner]\nn_startup_trials = 5\nn_warmup_steps = -1\n",
                                  "[pruner] n_warmup_steps: rejected by MedianPruner"),
    "pruner bad argument type": ("[pruner]\ntype = 'successive_halving'\nmin_resource = 1.5\n",
                                 "[pruner] min_resource: must be str or int, got 1.5"),
    "pruner none with arguments": ("[pruner]\ntype = 'none'\nn_startup_trials = 5\n",
                                   "[pruner] n_startup_trials: unknown argument of NopPruner"),
    "baseline unknown key": ("[baseline]\nlrr = 0.01\n", "[baseline] lrr: unknown [space] parameter"),
    "baseline fixed key": ("[train]\nepochs = 1\n[baseline]\nepochs = 1\n", "[baseline] epochs: unknown [space] parameter"),
    "baseline outside range": ("[baseline]\nlr = 0.5\noptimizer = 'adam'\nbatch_size = 2\n",
                               "[baseline] lr: 0.5 is outside the space (float in [0.001, 0.1], log)"),
    "baseline outside choices": ("[baseline]\nlr = 0.01\noptimizer = 'adam'\nbatch_size = 16\n",
                                 "[baseline] batch_size: 16 is outside the space (one of 2, 4)"),
    "baseline wrong type": ("[baseline]\nlr = '0.01'\noptimizer = 'adam'\nbatch_size = 2\n",
                            "[baseline] lr: '0.01' is outside the space"),
    "baseline missing param": ("[baseline]\nlr = 0.01\noptimizer = 'adam'\n", "[baseline] batch_size: missing"),
    "baseline missing conditional": ("[baseline]\nlr = 0.01\noptimizer = 'sgd'\nbatch_size = 2\n",
                                     "[baseline] momentum: missing"),
    "baseline inactive conditional": ("[baseline]\nlr = 0.01\noptimizer = 'adam'\nmomentum = 0.9\nbatch_size = 2\n",
                                      "[baseline] momentum: is not sampled with these values"),
    "study budget zero": ("[study]\nbudget_hours = 0\n", "[study] budget_hours: must be > 0 hours, got 0"),
    "study budget negative": ("[study]\nbudget_hours = -2.5\n", "[study] budget_hours: must be > 0 hours"),
    "study trials zero": ("[study]\ntrials = 0\n", "[study] trials: must be >= 1"),
    "study output dir empty": ("[study]\noutput_dir = ''\n", "[study] output_dir: must be a directory path"),
    "space by without ranges": (BY_OPTIMIZER.format("by = 'optimizer'"), "[space] lr: by and ranges go together"),
    "space ranges without by": (BY_OPTIMIZER.format("ranges = {sgd = [0.001, 0.1]}"), "[space] lr: by and ranges go together"),
    "space by unknown": (BY_OPTIMIZER.format("by = 'opt', ranges = {sgd = [0.001, 0.1]}"),
                         "[space] lr: by: 'opt' must be a categorical parameter defined before 'lr'"),
    "space by on a float": (BY_OPTIMIZER.format("by = 'momentum', ranges = {sgd = [0.001, 0.1]}"),
                            "[space] lr: by: 'momentum' must be a categorical parameter"),
    "space ranges key not a choice": (BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [0.001, 0.1], lion = [1e-4, 1e-3]}"),
                                      "[space] lr: ranges: 'lion' is not among optimizer's choices (one of sgd, adam)"),
    "space range low > high": (BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [0.1, 0.01]}"),
                               "[space] lr: ranges: sgd: low (0.1) must be < high (0.01)"),
    "space range not a pair": (BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [0.1]}"),
                               "[space] lr: ranges: sgd must be [low, high], got [0.1]"),
    "space range bad bound": (BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = ['a', 0.1]}"),
                              "[space] lr: ranges: sgd: low must be a finite number"),
    "space ranges not a table": (BY_OPTIMIZER.format("by = 'optimizer', ranges = [0.001, 0.1]"),
                                 "[space] lr: ranges must be a table with one [low, high] per value of optimizer"),
    "space ranges and low": (BY_OPTIMIZER.format("by = 'optimizer', low = 0.001, ranges = {sgd = [0.001, 0.1]}"),
                             "[space] lr: low goes inside ranges when by is given"),
    "space ranges on categorical": ("[space]\noptimizer = {type = 'categorical', choices = ['sgd', 'adam']}\n"
                                    "nesterov = {type = 'categorical', choices = [true], by = 'optimizer', "
                                    "ranges = {sgd = [0, 1]}}\n",
                                    "[space] nesterov: by and ranges apply to float and int parameters"),
    "space range TrainConfig rejects": ("[space]\noptimizer = {type = 'categorical', choices = ['sgd', 'adam']}\n"
                                        "momentum = {type = 'float', by = 'optimizer', ranges = {sgd = [0.5, 1.0]}}\n",
                                        "[space] momentum: ranges: sgd: high: must be in [0, 1)"),
    "baseline outside its condition's range": (BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [0.001, 0.1], "
                                                                    "adam = [1e-5, 1e-3]}")
                                               + "[baseline]\noptimizer = 'adam'\nlr = 0.01\n",
                                               "[baseline] lr: 0.01 is outside the space (float in [1e-05, 0.001], "
                                               "log, when optimizer = adam)"),
    "baseline per-condition field with no range there": (
        BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [0.001, 0.1]}") + "[baseline]\noptimizer = 'adam'\nlr = 0.01\n",
        "[baseline] lr: is not sampled with these values"),
    "recipe without source": ("[recipes.x]\nlr = 0.01\noptimizer = 'adam'\nbatch_size = 2\n",
                              "[recipes.x] source: required"),
    "recipe not a table": ("[recipes]\nx = 3\n", "[recipes.x] source: [recipes.x] must be a table"),
    "recipe unknown key": ("[recipes.x]\nsource = 's'\nlrr = 0.01\n", "[recipes.x] lrr: unknown [space] parameter"),
    "recipe outside the space": ("[recipes.x]\nsource = 's'\nlr = 0.5\noptimizer = 'adam'\nbatch_size = 2\n",
                                 "[recipes.x] lr: 0.5 is outside the space (float in [0.001, 0.1], log)"),
    "recipe missing conditional": ("[recipes.x]\nsource = 's'\nlr = 0.01\noptimizer = 'sgd'\nbatch_size = 2\n",
                                   "[recipes.x] momentum: missing"),
    "recipe same as baseline": ("[baseline]\nlr = 0.01\noptimizer = 'adam'\nbatch_size = 2\n"
                                "[recipes.x]\nsource = 's'\nlr = 0.01\noptimizer = 'adam'\nbatch_size = 2\n",
                                "[recipes.x] source: the same values as [baseline]"),
    "recipe bad name": ("[recipes.'a b']\nsource = 's'\nlr = 0.01\noptimizer = 'adam'\nbatch_size = 2\n",
                        "[recipes.a b] name: 'a b' must be letters"),
    "finalize unknown key": ("[finalize]\ntopk = 3\n", "[finalize] topk: unknown setting (did you mean 'top_k'?)"),
    "finalize top_k zero": ("[finalize]\ntop_k = 0\n", "[finalize] top_k: must be >= 1"),
    "finalize empty seeds": ("[finalize]\nseeds = []\n", "[finalize] seeds: must be a non-empty list of integers"),
    "finalize repeated seeds": ("[finalize]\nseeds = [1, 1]\n", "[finalize] seeds: must not repeat"),
    "finalize epochs below search": ("[train]\nepochs = 10\n[finalize]\nepochs = 5\n",
                                     "[finalize] epochs: 5 is below the search budget ([train] epochs = 10)"),
    "finalize weights not a path": ("[finalize]\npretrained_weights = 3\n", "[finalize] pretrained_weights: must be str"),
    "finalize unknown split": ("[finalize]\nval_split = 'test'\n", "[finalize] val_split: must be one of train, val"),
    "finalize scores its train split": ("[finalize]\nval_split = 'train_aug'\n",
                                        "[finalize] val_split: must differ from train_split ('train_aug')"),
    "finalize unknown schedule": ("[finalize]\nschedule = 'cosine'\n",
                                  "[finalize] schedule: must be one of poly, wsd, got 'cosine'"),
    "finalize unknown protocol": ('[finalize]\neval = ["ss", "os4"]\n',
                                  "[finalize] eval: must be a non-empty list of protocols from ss, os8, ms_flip, "
                                  "os8_ms_flip, crf, os8_crf, ms_flip_crf, got ['ss', 'os4']"),
    "finalize repeated protocol": ('[finalize]\neval = ["os8", "os8"]\n',
                                   "[finalize] eval: must not repeat a protocol, got ['os8', 'os8']"),
    "finalize unknown variant": ('[finalize]\nvariants = ["deeplabv4"]\n',
                                 "[finalize] variants: must be a list of models from deeplabv3, deeplabv3plus, e.g. "
                                 "[\"deeplabv3plus\"], got ['deeplabv4']"),
    "finalize variant not a list": ('[finalize]\nvariants = "deeplabv3plus"\n',
                                    "[finalize] variants: must be a list of models from"),
    "finalize repeated variant": ('[finalize]\nvariants = ["deeplabv3plus", "deeplabv3plus"]\n',
                                  "[finalize] variants: must not repeat a model"),
    "finalize scratch not a table": ("[finalize]\nscratch = 2\n", "[finalize] scratch: must be a table"),
    "scratch unknown key": ("[finalize.scratch]\nlr_multiplyer = 2\n",
                            "[finalize.scratch] lr_multiplyer: unknown setting or TrainConfig field "
                            "(did you mean 'lr_multiplier'?)"),
    "scratch bad multiplier": ("[finalize.scratch]\nepochs_multiplier = 0\n",
                               "[finalize.scratch] epochs_multiplier: must be > 0, got 0"),
    "scratch bad warmup": ("[finalize.scratch]\nwarmup_fraction = 1.5\n",
                           "[finalize.scratch] warmup_fraction: must be in [0, 1), got 1.5"),
    "scratch sets its backbone": ("[finalize.scratch]\nbackbone = 'resnet50'\n",
                                  "[finalize.scratch] backbone: the arm is ResNet-101"),
    "scratch sets lr": ("[finalize.scratch]\nlr = 0.1\n", "[finalize.scratch] lr: set lr_multiplier"),
    "scratch sets a data field": ("[finalize.scratch]\nval_split = 'train'\n",
                                  "[finalize.scratch] val_split: is shared by every configuration"),
    "scratch bad override value": ("[finalize.scratch]\nmomentum = 1.5\n",
                                   "[finalize.scratch] momentum: must be in [0, 1), got 1.5"),
    "ablation unknown field": ("[finalize.ablation]\noutput_strides = [8, 16]\n",
                               "[finalize.ablation] output_strides: unknown setting or TrainConfig field (did you mean "
                               "'output_stride'?)"),
    "ablation not a list": ("[finalize.ablation]\noutput_stride = 8\n",
                            "[finalize.ablation] output_stride: must be a non-empty list of values"),
    "ablation bad value": ("[finalize.ablation]\noutput_stride = [8, 12]\n",
                           "[finalize.ablation] output_stride: must be 8 or 16, got 12"),
    "ablation repeated value": ("[finalize.ablation]\ncrop_size = [321, 321]\n",
                                "[finalize.ablation] crop_size: repeats a value"),
    "ablation of the seed": ("[finalize.ablation]\nseed = [1, 2]\n",
                             "[finalize.ablation] seed: is shared by every configuration"),
    "ablation bad centre": ('[finalize.ablation]\naround = "worst"\nlr = ["x3"]\n',
                            "[finalize.ablation] around: must be one of best, baseline, got 'worst'"),
    "ablation bad budget": ('[finalize.ablation]\nbudget = "half"\nlr = ["x3"]\n',
                            "[finalize.ablation] budget: must be one of search, full, got 'half'"),
    "ablation bad multiple": ('[finalize.ablation]\nlr = ["x0"]\n',
                              "[finalize.ablation] lr: 'x0': a multiple of the centre's value is written x3 or x1/3"),
    "ablation around no baseline": ('[finalize.ablation]\naround = "baseline"\nlr = ["x3"]\n',
                                    '[finalize.ablation] around: "baseline" needs a [baseline] recipe'),
    "ablation multiple of an int": ('[finalize.ablation]\ncrop_size = ["x2"]\n',
                                    "[finalize.ablation] crop_size: must be int, got 'x2'"),
}


@pytest.mark.parametrize(("text", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_spec_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write_spec(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the study spec"):
        load_spec(tmp_path / "absent.toml")


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec: StudySpec = load_spec(write_spec(tmp_path, ""))
    with pytest.raises(AttributeError):
        spec.study = spec.study  # type: ignore[misc]


def test_per_condition_ranges_and_recipes(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, BY_OPTIMIZER.format("by = 'optimizer', ranges = {sgd = [1e-3, 3e-2], "
                                                               "adam = [1e-5, 1e-3]}") + """
[baseline]
optimizer = "sgd"
momentum = 0.9
lr = 0.001

[recipes.adam-small]
source = "a made-up recipe"
optimizer = "adam"
lr = 1e-4
"""))
    lrs = {param.name: param for param in spec.space if param.field == "lr"}
    assert set(lrs) == {"lr[sgd]", "lr[adam]"}
    assert (lrs["lr[adam]"].low, lrs["lr[adam]"].high, lrs["lr[adam]"].when) == (1e-5, 1e-3, {"optimizer": ("adam",)})
    assert spec.recipes[0].values == {"optimizer": "adam", "lr": 1e-4}
    assert spec.seeded_trials() == [({"optimizer": "sgd", "momentum": 0.9, "lr": 0.001}, {"baseline": True}),
                                    ({"optimizer": "adam", "lr": 1e-4},
                                     {"recipe": "adam-small", "source": "a made-up recipe"})]
    note = spec.to_markdown()
    assert "| lr[adam] | float in [1e-05, 0.001], log, when optimizer = adam |" in note
    assert "**adam-small** (a made-up recipe): optimizer = `'adam'`, lr = `0.0001`" in note


def test_output_dir_moves_the_default_storage_only(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "[study]\noutput_dir = '/scratch/lab/demo'\ntrials = 12\n"))
    assert spec.study.output_dir == Path("/scratch/lab/demo") and spec.study.trials == 12
    assert spec.study.storage == "sqlite:////scratch/lab/demo/study.db"
    moved = spec.with_output_dir(tmp_path / "elsewhere")
    assert moved.study.storage == f"sqlite:///{tmp_path}/elsewhere/study.db"
    shared = load_spec(write_spec(tmp_path, "[study]\nstorage = 'postgresql://db/hpo'\n"))
    assert shared.with_output_dir(tmp_path).study.storage == "postgresql://db/hpo"


def test_ablation_values_may_be_multiples_of_the_centres(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, '[finalize.ablation]\nlr = ["x1/3", "x3"]\nbatch_size = [2, 4]\n'))
    ablation = spec.finalize.ablation
    assert (ablation.around, ablation.budget) == ("best", "search")  # the defaults: cheap, around the winner
    third, triple = ablation.factors["lr"]
    assert (str(third), str(triple)) == ("x1/3", "x3")
    assert (third.of(0.03), triple.of(0.03)) == (pytest.approx(0.01), pytest.approx(0.09))
    assert ablation.factors["batch_size"] == (2, 4)
