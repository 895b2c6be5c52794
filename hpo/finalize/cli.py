"""python -m hpo.finalize: retrain the study's best configurations at full budget, and report.

The flags override [finalize]; hpo.finalize.workflow does the work.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna
from torchvision.models import resnet101

from hpo.cli import DEFAULT_STUDY, add_output_dir_argument, load_with_overrides
from hpo.finalize.workflow import finalize, plan_text, planned
from hpo.spec import FinalizeOptions, StudySpec
from segtrain.cli import ArgumentParser, run
from segtrain.errors import UserError
from segtrain.model import load_backbone_weights, load_state_dict


def check_weights(path: str, source: str) -> None:
    """Bad input before any training: the ResNet-101 weights file must exist and fit ResNet-101."""
    if not Path(path).is_file():
        raise UserError(f"{source} {path}: no such file; pass a torchvision ResNet-101 state_dict "
                        f"(e.g. resnet101-63fe2227.pth), or leave it out to download ImageNet weights")
    load_backbone_weights(resnet101(), load_state_dict(path), source=f"{source} {path}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.finalize", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--storage", help="Optuna storage URL (default: [study] storage, or "
                                          "sqlite:///<output dir>/study.db)")
    add_output_dir_argument(parser)
    parser.add_argument("--top-k", type=int, help="retrain the best K distinct configurations "
                                                  "(default: [finalize] top_k)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="seeds to train each configuration with, e.g. --seeds 1 2 3 "
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

