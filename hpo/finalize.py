"""python -m hpo.finalize: retrain the study's best configurations at full budget, and report.

The top-k distinct complete configurations of the study, the baseline recipe, and
ResNet-101 with the best configuration's hyperparameters (ImageNet-pretrained and
from scratch) are each trained once per seed for the [finalize] budget. Every
(configuration, seed) run has its own run dir under runs/<study>/final/, so a rerun
reuses finished runs, resumes an interrupted one from its checkpoint and trains only
what is missing. Then hpo.report writes the tables, figures and report.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torchvision.models import resnet101
from tqdm import tqdm

from hpo import report
from hpo.objective import feasible
from hpo.search import add_output_dir_argument, load_with_overrides, open_existing_study
from hpo.space import train_overrides
from hpo.spec import FinalizeOptions, StudySpec
from hpo.storage import safe_url
from segtrain.cli import ArgumentParser, run
from segtrain.config import TrainConfig
from segtrain.engine import CHECKPOINT, RUNTIME_FIELDS, TrainingDiverged, TrainResult, train
from segtrain.errors import UserError, WeightsError
from segtrain.model import load_backbone_weights, load_state_dict

log = logging.getLogger(__name__)

DEFAULT_STUDY = Path("studies/voc_r50.toml")
RESULT = "result.json"


@dataclass(frozen=True)
class Configuration:
    """One configuration of the final table, trained once per seed."""

    name: str  # e.g. "top-1", "baseline", "r101-imagenet"; also names its run dirs
    description: str  # e.g. "trial 7 = baseline", "ResNet-101, ImageNet-pretrained"
    roles: tuple[str, ...]  # "top", "baseline", "r101-imagenet", "r101-scratch"
    trial: int | None  # the search trial it comes from, if any
    params: dict[str, Any]  # the overrides of the spec's [train] that define it
    config: TrainConfig  # seed 0; each run replaces the seed

    def for_seed(self, seed: int) -> TrainConfig:
        return self.config.replace(seed=seed)

    @property
    def key(self) -> str:
        """Identifies the training recipe (not where the data is or which device runs it)."""
        values = {k: v for k, v in self.config.to_dict().items() if k not in RUNTIME_FIELDS | {"seed"}}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class FinalRun:
    """One (configuration, seed) run: its result, or why it has none."""

    configuration: Configuration
    seed: int
    run_dir: Path
    result: TrainResult | None
    status: str  # "ok", "weights unavailable: ...", "diverged: ...", "out of memory: ..."
    how: str  # "trained", "resumed", "reused" or "not run"


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials with distinct params, best mIoU first; ties go to the cheaper one."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    trials.sort(key=lambda t: (-t.value, t.user_attrs.get("seconds", float("inf")), t.number))
    distinct: dict[str, FrozenTrial] = {}
    for trial in trials:
        distinct.setdefault(json.dumps(trial.params, sort_keys=True), trial)
    return list(distinct.values())


def plan(spec: StudySpec, study: optuna.Study, options: FinalizeOptions) -> list[Configuration]:
    """The configurations to retrain: top-k, baseline, ResNet-101 pretrained and scratch.

    Entries that train the very same recipe (e.g. the baseline is also the best
    trial) are merged into one configuration carrying both roles.
    """
    ranked = ranked_trials(study)
    if not ranked:
        raise UserError(f"study '{spec.study.name}' in {safe_url(spec.study.storage)} has no complete "
                        f"feasible trial to finalize; run more trials: python -m hpo.search --study {spec.path}")
    if len(ranked) < options.top_k:
        log.warning("only %d distinct complete configurations in the study (top_k = %d): finalizing those",
                    len(ranked), options.top_k)
    full = {"epochs": options.epochs, "seed": 0}
    entries = [(f"top-{rank}", f"trial {trial.number}", "top", trial.number,
                train_overrides(spec.space, trial.params))
               for rank, trial in enumerate(ranked[:options.top_k], start=1)]
    if spec.baseline:
        baseline = next((t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")), None)
        entries.append(("baseline", "the [baseline] recipe", "baseline", baseline, dict(spec.baseline)))
    best = ranked[0]
    weights = options.pretrained_weights or "imagenet"
    source = f" ({weights})" if options.pretrained_weights else ""
    entries.append(("r101-imagenet", f"ResNet-101, ImageNet-pretrained{source}, trial {best.number}'s "
                    "hyperparameters", "r101-imagenet", best.number,
                    {**train_overrides(spec.space, best.params), "backbone": "resnet101", "pretrained": weights}))
    entries.append(("r101-scratch", f"ResNet-101 from scratch, trial {best.number}'s hyperparameters",
                    "r101-scratch", best.number,
                    {**train_overrides(spec.space, best.params), "backbone": "resnet101", "pretrained": None}))

    configurations: list[Configuration] = []
    for name, description, role, trial, params in entries:
        configuration = Configuration(name, description, (role,), trial, params,
                                      spec.train_config({**params, **full}))
        same = next((i for i, c in enumerate(configurations) if c.key == configuration.key), None)
        if same is None:
            configurations.append(configuration)
        else:
            merged = configurations[same]
            configurations[same] = dataclasses.replace(
                merged, description=f"{merged.description} = {name}", roles=merged.roles + (role,))
    return configurations


def run_dir_for(final_dir: Path, configuration: Configuration, seed: int) -> Path:
    """final/<name>-<key>/seed-<seed>; a recipe keeps its dir when its rank (and so its name) changes."""
    existing = sorted(final_dir.glob(f"*-{configuration.key}"))
    folder = existing[0] if existing else final_dir / f"{configuration.name}-{configuration.key}"
    return folder / f"seed-{seed}"


def read_result(path: Path) -> TrainResult:
    try:
        return TrainResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: unreadable result ({error.__class__.__name__}); delete it to "
                        f"train that run again") from None


def run_one(configuration: Configuration, seed: int, run_dir: Path) -> FinalRun:
    """Reuse a finished run, resume an interrupted one, or train it; record why it failed if it did."""
    def outcome(result: TrainResult | None, status: str, how: str) -> FinalRun:
        return FinalRun(configuration, seed, run_dir, result, status, how)

    if (run_dir / RESULT).exists():
        return outcome(read_result(run_dir / RESULT), "ok", "reused")
    resume = (run_dir / CHECKPOINT).exists()
    how = "resumed" if resume else "trained"
    try:
        result = train(configuration.for_seed(seed), run_dir=run_dir, resume=resume)
    except WeightsError as error:
        return outcome(None, f"weights unavailable: {error}", "not run")
    except TrainingDiverged as error:
        return outcome(None, f"diverged: {error}", how)
    except torch.OutOfMemoryError as error:
        return outcome(None, f"out of memory: {str(error).splitlines()[0]}", how)
    return outcome(result, "ok", how)


def run_all(configurations: Sequence[Configuration], seeds: Sequence[int], final_dir: Path) -> list[FinalRun]:
    """Every (configuration, seed) run, with a progress bar over runs."""
    runs: list[FinalRun] = []
    unavailable: dict[str, str] = {}  # configuration -> why its weights could not be loaded
    todo = [(c, seed) for c in configurations for seed in seeds]
    for configuration, seed in tqdm(todo, unit="run", desc="finalize", disable=None, dynamic_ncols=True):
        run_dir = run_dir_for(final_dir, configuration, seed)
        if configuration.name in unavailable and not (run_dir / RESULT).exists():
            final = FinalRun(configuration, seed, run_dir, None, unavailable[configuration.name], "not run")
        else:
            final = run_one(configuration, seed, run_dir)
        if final.status.startswith("weights unavailable"):
            unavailable[configuration.name] = final.status
        log.info("%s seed %d: %s (%s)", configuration.name, seed,
                 f"mIoU {final.result.final_miou:.4f}" if final.result else final.status, final.how)
        runs.append(final)
    return runs


def check_weights(path: str, source: str) -> None:
    """Bad input before any training: the ResNet-101 weights file must exist and fit ResNet-101."""
    if not Path(path).is_file():
        raise UserError(f"{source} {path}: no such file; pass a torchvision ResNet-101 state_dict "
                        f"(e.g. resnet101-63fe2227.pth), or leave it out to download ImageNet weights")
    load_backbone_weights(resnet101(), load_state_dict(path), source=f"{source} {path}")


def finalize(spec: StudySpec, options: FinalizeOptions) -> report.Outputs:
    """Plan, train (or reuse) every run, write runs/<study>/final/ and attach it to the study.

    A run that cannot load its pretrained weights (offline, a bad file) gets that as
    its status ("weights unavailable: ...") and everything else still completes.
    """
    study = open_existing_study(spec)
    configurations = plan(spec, study, options)
    final_dir = spec.study.output_dir / "final"
    runs = run_all(configurations, options.seeds, final_dir)
    return report.write(spec, study, options, runs, final_dir)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.finalize", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--storage", help="Optuna storage URL (default: [study] storage, or "
                                          "sqlite:///<output dir>/study.db)")
    add_output_dir_argument(parser)
    parser.add_argument("--top-k", type=int, help="retrain the best K distinct configurations "
                                                  "(default: [finalize] top_k)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="seeds to train each configuration with, e.g. --seeds 0 1 2 "
                             "(default: [finalize] seeds)")
    parser.add_argument("--epochs", type=float, help="the full budget in epochs (default: [finalize] epochs)")
    parser.add_argument("--pretrained-weights", metavar="PATH",
                        help="local ResNet-101 ImageNet state_dict for the pretrained run (default: "
                             "[finalize] pretrained_weights, else torchvision's download)")
    parser.add_argument("--data-root", help="VOC root (overrides [train] data_root and $VOC_ROOT)")
    return parser


def options_from(args: argparse.Namespace, spec: StudySpec) -> FinalizeOptions:
    """[finalize], overridden by the flags given; FinalizeOptions checks them (a ConfigError names the flag)."""
    flags = {key: getattr(args, key) for key in ("top_k", "seeds", "epochs", "pretrained_weights")}
    return dataclasses.replace(spec.finalize, **{k: v for k, v in flags.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("segtrain.engine").setLevel(logging.WARNING)  # one line per run, not per evaluation
    spec = load_with_overrides(args)
    options = options_from(args, spec)
    if options.pretrained_weights:  # a wrong path is bad input: say so before hours of training
        check_weights(options.pretrained_weights, "--pretrained-weights" if args.pretrained_weights
                      else f"{spec.path}: [finalize] pretrained_weights")
    try:
        outputs = finalize(spec, options)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept and the running one resumes from its checkpoint "
              "on the next run", file=sys.stderr)
        raise
    print(outputs.summary())
    return 0


def cli() -> None:
    sys.exit(run(main, prog="hpo.finalize"))


if __name__ == "__main__":
    cli()
