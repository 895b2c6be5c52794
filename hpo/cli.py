"""What every hpo command line shares: the study flag's default, number types, --output-dir, the spec as flags change it.

Below every phase's CLI (hpo.plan, hpo.search, hpo.finalize); imports hpo.spec only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpo.spec import StudySpec, load_spec

DEFAULT_STUDY = Path("studies/voc_r50.toml")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_number(unit: str):
    """An argparse type: a number of `unit` > 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a number of {unit} > 0, got {text!r}")
        return value
    return parse


def add_output_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="where trials/, final/, probe.json and the default study.db go (default: [study] "
                             "output_dir, else runs/<name>); with several machines, shared storage, so that a "
                             "retry finds its dead trial's checkpoint")


def load_with_overrides(args: argparse.Namespace) -> StudySpec:
    """The spec, with the CLI's --data-root, --output-dir and --storage (any it has) applied."""
    spec = load_spec(args.study)
    if getattr(args, "data_root", None):
        spec = spec.with_train(data_root=args.data_root)
    if getattr(args, "output_dir", None):
        spec = spec.with_output_dir(args.output_dir)
    if getattr(args, "storage", None):
        spec = spec.with_storage(args.storage)
    return spec
