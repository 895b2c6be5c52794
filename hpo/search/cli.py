"""python -m hpo.search: run or resume an Optuna study of DeepLabV3 hyperparameters.

`--trials N` is the number of finished (complete or pruned) trials the study
should hold: a rerun only runs what is missing, and several workers on one
storage together stop at exactly N. `--workers N` runs N worker processes here
(hpo.search.workers); independent invocations on one storage work as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from hpo.cli import DEFAULT_STUDY, add_output_dir_argument, load_with_overrides, positive_int, positive_number
from hpo.plan.budget import trial_pricer
from hpo.search.loop import prepare, run_search, summary
from hpo.search.workers import run_workers
from hpo.spec import StudySpec
from segtrain.cli import ArgumentParser, run


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.search", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--trials", type=positive_int,
                        help="finished (complete + pruned) trials the study should hold (default: [study] trials, "
                             "else 40)")
    parser.add_argument("--storage", help="Optuna storage URL (default: [study] storage, or "
                                          "sqlite:///<output dir>/study.db)")
    add_output_dir_argument(parser)
    parser.add_argument("--timeout", type=positive_number("seconds"), help="start no new trial after this many seconds")
    parser.add_argument("--budget-hours", type=positive_number("hours"), metavar="H",
                        help="start no trial whose predicted cost exceeds what is left of H device-hours, all "
                             "workers together (default: [study] budget_hours); needs the probe of hpo.plan")
    parser.add_argument("--data-root", help="VOC root (overrides [train] data_root and $VOC_ROOT)")
    parser.add_argument("--workers", type=positive_int,
                        help="run this many worker processes on the study, one GPU each if there are GPUs")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # workers: the parent prints it
    return parser


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of each worker --workers starts: the parent's, less --workers and the summary."""
    options = {"--study": args.study, "--trials": args.trials, "--storage": args.storage,
               "--output-dir": args.output_dir, "--timeout": args.timeout, "--budget-hours": args.budget_hours,
               "--data-root": args.data_root}
    return [*(part for flag, value in options.items() if value is not None for part in (flag, str(value))),
            "--no-summary"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours,
    logging.getLogger("segtrain.engine").setLevel(logging.WARNING)  # not one per evaluation
    spec = load_with_overrides(args)
    budget_hours = args.budget_hours or spec.study.budget_hours
    if args.workers:
        try:
            return run_pool(spec, args, budget_hours)
        except KeyboardInterrupt:
            print("interrupted: each worker's running trial is marked failed and queued to run again from its "
                  "last checkpoint; rerun the same command to resume", file=sys.stderr)
            raise
    study = run_search(spec, args.trials or spec.study.trials, args.timeout, budget_hours)
    if not args.no_summary:
        print(summary(spec, study, budget_hours))
    return 0


def run_pool(spec: StudySpec, args: argparse.Namespace, budget_hours: float | None) -> int:
    """--workers N: check the input and open the study once, run the workers, then summarise."""
    trial_pricer(spec, budget_hours)  # a budget without a probe is bad input before anything starts
    study = prepare(spec)
    codes = run_workers(worker_argv(args), args.workers)
    print(summary(spec, study, budget_hours))
    failed = [(index, code) for index, code in enumerate(codes) if code]
    if failed:
        print(f"hpo.search: error: {', '.join(f'worker {i} exited with code {c}' for i, c in failed)}; "
              f"see its output above", file=sys.stderr)
        return failed[0][1] if failed[0][1] > 0 else 1  # < 0: killed by a signal
    return 0


def cli() -> None:
    sys.exit(run(main, prog="hpo.search"))

