"""CLI: python -m segtrain.data {check,synthetic,prepare} — inspect, synthesise, or build train_aug."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from segtrain.cli import ArgumentParser, run
from segtrain.config import TrainConfig
from segtrain.data.check import check_voc, format_report
from segtrain.data.prepare import add_prepare_command
from segtrain.data.synthetic import write_synthetic_voc
from segtrain.data.voc import find_voc_dir

PROG = "python -m segtrain.data"


def _check(args: argparse.Namespace) -> int:
    result = check_voc(find_voc_dir(args.root, flag="--root"))
    print(format_report(result))
    return 2 if result.problems else 0


def _synthetic(args: argparse.Namespace) -> int:
    voc_dir = write_synthetic_voc(args.out, args.train, args.val, args.size, args.classes, args.seed)
    print(f"wrote {args.train} train + {args.val} val images (longest side up to {args.size} px, "
          f"{args.classes} classes, seed {args.seed}) to {voc_dir}")
    return 0


def build_parser() -> ArgumentParser:
    """One subparser per command; each sets `command` to the function that runs it."""
    parser = ArgumentParser(prog=PROG, description="Pascal VOC 2012 data: check a tree, write a synthetic one, "
                                                "or build train_aug from SBD.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="summarise every split and list every problem (exit 2 if any)")
    check.add_argument("--root", help="folder holding VOCdevkit/, or VOCdevkit/, or VOC2012/ (default: $VOC_ROOT)")
    check.set_defaults(command=_check)

    defaults = TrainConfig()
    synthetic = commands.add_parser("synthetic", help="write a synthetic VOC-format set to OUT/VOCdevkit/VOC2012")
    synthetic.add_argument("--out", required=True, help="folder to hold the new VOCdevkit/")
    synthetic.add_argument("--train", type=int, default=defaults.synthetic_train_images, help="train images")
    synthetic.add_argument("--val", type=int, default=defaults.synthetic_val_images, help="val images")
    synthetic.add_argument("--size", type=int, default=defaults.synthetic_image_size,
                           help="longest image side, pixels (scenes are 4:3 or 3:4, at this or 7/8 or 3/4 of it)")
    synthetic.add_argument("--classes", type=int, default=defaults.synthetic_classes,
                           help="object classes used (VOC ids 1..N), 1-20")
    synthetic.add_argument("--seed", type=int, default=defaults.synthetic_seed, help="same seed, same files")
    synthetic.set_defaults(command=_synthetic)

    add_prepare_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.command(args)


if __name__ == "__main__":
    raise SystemExit(run(main, prog=PROG))
