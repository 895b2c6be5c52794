"""python -m hpo.plan: what a study will cost on this machine, before it starts, and a plan that fits a budget.

Probes the study's cost corners (hpo.plan.probe; reused from <output dir>/probe.json while
the spec's corners stay the same), fits the cost model (hpo.plan.cost) and prints the bill
(hpo.plan.estimate): device-hours of the search and of each finalize row, their total, and
the disk they need. With --budget-hours H it proposes the largest plan within H
(hpo.plan.budget: what it cuts, in which order) and, with --out, writes it as a new spec.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hpo.cli import DEFAULT_STUDY, add_output_dir_argument, load_with_overrides, positive_int, positive_number
from hpo.plan import budget, estimate, probe
from hpo.plan.cost import CostModel
from hpo.spec import load_spec
from segtrain.cli import ArgumentParser, run
from segtrain.errors import UserError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--budget-hours", type=positive_number("hours"), metavar="H",
                        help="propose the largest plan within H device-hours (search and finalize together)")
    parser.add_argument("--out", type=Path, metavar="SPEC", help="write the proposed plan as a new study spec here")
    parser.add_argument("--trials", type=positive_int, help="plan this many search trials (default: [study] trials)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="search workers that will run at once, for the disk they need (default: 1)")
    parser.add_argument("--reprobe", action="store_true", help="measure the corners again, even if the probe "
                                                               "file matches the spec")
    parser.add_argument("--probe-steps", type=positive_int, metavar="N",
                        help=f"timed training steps per corner (default: {probe.DEFAULT_STEPS}; a probe file made "
                             f"with other steps is measured again)")
    parser.add_argument("--memory-limit-gb", type=positive_number("GiB"), metavar="G",
                        help="the memory a run may use, in GiB, instead of the device's (the free GPU memory, or "
                             "the available RAM on a CPU); recorded in the probe file, where the search reads it")
    parser.add_argument("--data-root", help="VOC root (overrides [train] data_root and $VOC_ROOT), to count its splits")
    add_output_dir_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = load_with_overrides(args)
    if args.out is not None and args.budget_hours is None:
        raise UserError("--out: writes the plan that --budget-hours proposes; give --budget-hours H too")
    if args.out is not None and args.out.resolve() == spec.path.resolve():
        raise UserError(f"--out {args.out}: that is the study's own spec; write the proposal to another file")
    memory = round(args.memory_limit_gb * 2 ** 30) if args.memory_limit_gb else None
    measured, how = probe.probe_for(spec, args.probe_steps, reprobe=args.reprobe, memory_limit_bytes=memory)
    estimator = estimate.Estimator(spec, CostModel(measured), workers=args.workers)
    unit = "GPU-hours" if measured.device_type == "cuda" else "CPU-hours"
    if args.budget_hours is not None:
        cut = budget.fit_budget(estimator, args.budget_hours, args.trials)  # bad input before any output
    print(f"probe of {measured.device} ({how}, {probe.probe_path(spec)}): {len(measured.corners)} corners, "
          f"{measured.settings.get('steps')} timed steps each, {measured.settings.get('amp') or 'no'} AMP, "
          f"torch {measured.torch}")
    print(probe.describe(measured), end="\n\n")
    print(f"plan of {spec.path}, in {unit} on this device (predictions, not measurements):")
    print(estimate.describe(estimator.plan(args.trials), unit))
    if args.budget_hours is None:
        return 0
    if not cut.cuts:
        print(f"\nbudget {args.budget_hours:g} h: the plan fits as it is ({cut.plan.total_hours:.3g} h)")
    else:
        print(f"\nbudget {args.budget_hours:g} h: cut {'; '.join(cut.cuts)} (in that order: see hpo/plan/budget.py)")
        print(estimate.describe(cut.plan, unit))
    if args.out is None:
        print("pass --out FILE to write this plan as a study spec")
        return 0
    budget.write_cut_spec(spec.path, args.out, cut)
    load_spec(args.out)  # it must parse like any spec
    print(f"wrote {args.out}: [study] trials = {cut.plan.trials}, budget_hours = "
          f"{cut.search_budget_hours:g} (the search's share); [finalize] top_k = {cut.plan.top_k}, "
          f"seeds = {list(cut.plan.seeds)}, epochs = {cut.plan.epochs:g}")
    return 0


def cli() -> None:
    sys.exit(run(main, prog="hpo.plan"))


if __name__ == "__main__":
    cli()
