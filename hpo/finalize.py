"""python -m hpo.finalize: retrain the study's best configurations at full budget, and report.

hpo.selection picks the configurations (the top-k, the baseline, ResNet-101 pretrained
and from scratch with a recipe each, the ablations); each is trained once per seed on
[finalize] train_split for [finalize] epochs and scored on [finalize] val_split. Every
(configuration, seed) run has its own run dir under runs/<study>/final/, so a rerun
reuses finished runs, resumes an interrupted one from its checkpoint and trains only
what is missing. Each finished run is also scored under the [finalize] eval protocols
(segtrain.evaluation: output stride 8 at evaluation, multi-scale + flip), each result
kept as RUN/eval-<protocol>.json and reused by reruns. Then hpo.report writes the
tables, statistics, figures and report.md.

Imports flow one way: this CLI imports hpo.selection, hpo.results and hpo.report; none
of them imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from torchvision.models import resnet101
from tqdm import tqdm

from hpo import report
from hpo.cost import CostModel
from hpo.estimate import Estimator
from hpo.markdown import markdown_table
from hpo.probe import matching_probe
from hpo.results import OWN_PROTOCOL, RESULT, Configuration, FinalRun, read_result
from hpo.search import add_output_dir_argument, load_with_overrides, open_existing_study
from hpo.selection import plan
from hpo.spec import FinalizeOptions, StudySpec
from segtrain.cli import ArgumentParser, run
from segtrain.data import require_splits
from segtrain.engine import CHECKPOINT, TrainingDiverged, TrainResult, train
from segtrain.errors import UserError, WeightsError
from segtrain.evaluation import PRESETS, evaluate_run
from segtrain.model import load_backbone_weights, load_state_dict

log = logging.getLogger(__name__)

DEFAULT_STUDY = Path("studies/voc_r50.toml")


def run_dir_for(final_dir: Path, configuration: Configuration, seed: int) -> Path:
    """final/<name>-<key>/seed-<seed>; a recipe keeps its dir when its rank (and so its name) changes."""
    existing = sorted(final_dir.glob(f"*-{configuration.key}"))
    folder = existing[0] if existing else final_dir / f"{configuration.name}-{configuration.key}"
    return folder / f"seed-{seed}"


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


def evaluations(run: FinalRun, protocols: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """A finished run scored under each protocol but its own ("ss"): RUN/eval-<protocol>.json when it is there
    for this checkpoint, else evaluated now. A protocol that comes to the run's own (os8 on a run trained at
    output stride 8) is its own evaluation."""
    if run.result is None:
        return {}
    cfg = run.configuration.config
    own = PRESETS[OWN_PROTOCOL].for_run(cfg.output_stride)
    found = {}
    for name in protocols:
        if name == OWN_PROTOCOL:
            continue
        protocol = PRESETS[name].for_run(cfg.output_stride)
        if protocol == own:
            found[name] = {"miou": run.result.final_miou, "protocol": own.to_dict()}
            continue
        try:
            found[name] = evaluate_run(run.run_dir, protocol, reuse=True, device=cfg.device)
        except torch.OutOfMemoryError as error:  # a larger protocol than training needs: that column stays empty
            log.warning("%s seed %d: no %s evaluation, out of memory: %s", run.configuration.name, run.seed,
                        name, str(error).splitlines()[0])
    return found


def run_all(configurations: Sequence[Configuration], seeds: Sequence[int], final_dir: Path,
            protocols: Sequence[str] = (OWN_PROTOCOL,)) -> list[FinalRun]:
    """Every (configuration, seed) run, scored under `protocols`, with a progress bar over runs."""
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
        final = dataclasses.replace(final, evaluations=evaluations(final, protocols))
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


def plan_text(spec: StudySpec, configurations: Sequence[Configuration], options: FinalizeOptions,
              final_dir: Path) -> str:
    """What finalize will train: per configuration, the seeds still to run and their device-hours as the
    spec's probe (python -m hpo.plan) predicts them for these very configurations."""
    probe, why_not = matching_probe(spec)
    estimator = Estimator(spec, CostModel(probe)) if probe is not None else None
    rows, total, todo_runs = [], 0.0, 0
    for c in configurations:
        todo = sum(not (run_dir_for(final_dir, c, seed) / RESULT).exists() for seed in options.seeds)
        hours = estimator.final_run_hours(c.config) if estimator is not None else None
        if estimator is not None and hours is None:
            each, all_ = "does not fit", "-"
        else:
            each, all_ = ("-", "-") if hours is None else (f"{hours:.3g}", f"{hours * todo:.3g}")
        rows.append([c.name, c.description, f"{todo}/{len(options.seeds)}", f"{c.config.epochs:g}", each, all_])
        total += (hours or 0.0) * todo
        todo_runs += todo
    if estimator is None:
        cost = (f"no prediction of device-hours ({why_not}): python -m hpo.plan --study {spec.path} measures "
                f"this machine")
    else:
        unit = "GPU-hours" if probe.device_type == "cuda" else "CPU-hours"
        cost = f"predicted {total:.3g} {unit} on {probe.device} (the probe of {probe.created})"
    done = len(configurations) * len(options.seeds) - todo_runs
    return "\n".join([
        f"finalize: {len(configurations)} configurations x {len(options.seeds)} seeds: {todo_runs} runs to train "
        f"({done} done), each scored under {', '.join(options.eval)}; {cost}",
        markdown_table(["configuration", "what", "seeds to train", "epochs", "hours a run", "hours"], rows)])


def planned(spec: StudySpec, options: FinalizeOptions) -> tuple[optuna.Study, list[Configuration], Path]:
    """The study, the configurations finalize retrains, and where their runs go; bad input checked first."""
    study = open_existing_study(spec)
    configurations = plan(spec, study, options)
    require_splits(configurations[0].config)  # finalize's own splits, before any training
    return study, configurations, spec.study.output_dir / "final"


def finalize(spec: StudySpec, options: FinalizeOptions) -> report.Outputs:
    """Plan (logged first), train (or reuse) every run, write runs/<study>/final/ and attach it to the study.

    A run that cannot load its pretrained weights (offline, a bad file) gets that as
    its status ("weights unavailable: ...") and everything else still completes.
    """
    study, configurations, final_dir = planned(spec, options)
    log.info("%s", plan_text(spec, configurations, options, final_dir))
    runs = run_all(configurations, options.seeds, final_dir, options.eval)
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
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs finalize would train and their predicted device-hours; train nothing")
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
    if args.dry_run:
        _, configurations, final_dir = planned(spec, options)
        print(plan_text(spec, configurations, options, final_dir))
        return 0
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
