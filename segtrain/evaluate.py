"""python -m segtrain.evaluate: a run's checkpoint on val under an evaluation protocol.

The protocol is the output stride at evaluation (a model trained at 16 can be
evaluated at 8), the input scales and left-right flips whose probabilities are
averaged, and optionally a dense CRF on that average (CPU processes; the `crf`
extra); every image is scored at its own size, whatever its batch mates. The result
goes to RUN/eval-<protocol>.json (see segtrain.evaluation). Several processes:
`torchrun --nproc_per_node=N -m segtrain.evaluate ...` shares the images out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segtrain.cli import ArgumentParser, run
from segtrain.config import OUTPUT_STRIDES, SPLITS
from segtrain.distributed import launched_rank
from segtrain.evaluation import MULTI_SCALES, Protocol, evaluate_run


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m segtrain.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, metavar="DIR",
                        help="run dir holding config.json and checkpoint.pt (segtrain.train --out)")
    parser.add_argument("--data-root", help="VOC root (default: the run's)")
    parser.add_argument("--split", choices=SPLITS, help="split to score (default: the run's val split)")
    add_protocol_arguments(parser)
    parser.add_argument("--crf", action="store_true",
                        help="refine the averaged probabilities with a dense CRF (DeepLab v2's settings), in a pool "
                             "of CPU processes, about 1.5 CPU-seconds a VOC image (pip install -e '.[crf]')")
    parser.add_argument("--eval-batch-size", type=int, metavar="N",
                        help="images per batch (default: the run's); changes the speed, never the result")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, metavar="FILE", help="result JSON (default: RUN/eval-<protocol>.json)")
    return parser


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """--output-stride, --scales, --flip: the evaluation protocol, shared with segtrain.predict."""
    parser.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES,
                        help="output stride at evaluation (default: the run's)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                        help=f"input scales whose predictions are averaged (default: 1.0; TF DeepLab's "
                             f"and mmsegmentation's multi-scale set is {' '.join(f'{s:g}' for s in MULTI_SCALES)})")
    parser.add_argument("--flip", action="store_true", help="also average the left-right flipped inputs")


def protocol_from(args: argparse.Namespace) -> Protocol:
    return Protocol(output_stride=args.output_stride, scales=tuple(args.scales), flip=args.flip)


def main(argv: Sequence[str] | None = None) -> int:
    if launched_rank() != 0:  # under torchrun, rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    protocol = dataclasses.replace(protocol_from(args), crf=args.crf)
    result = evaluate_run(args.run, protocol, data_root=args.data_root, split=args.split,
                          eval_batch_size=args.eval_batch_size, device=args.device, out=args.out)
    if launched_rank() == 0:
        print(summary(result))
    return 0


def summary(result: dict[str, Any]) -> str:
    protocol = result["protocol"]
    return (f"{result['split']} mIoU {result['miou']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f} "
            f"({protocol['name']}: output stride {protocol['output_stride']}, scales "
            f"{' '.join(f'{s:g}' for s in protocol['scales'])}, {'flip' if protocol['flip'] else 'no flip'}"
            f"{', dense CRF' if protocol.get('crf') else ''}; "
            f"{result['images']} images in {result['seconds']:.1f} s, checkpoint step "
            f"{result['checkpoint_step']}) -> {result['out']}")


def cli() -> None:
    sys.exit(run(main, prog="segtrain.evaluate"))


if __name__ == "__main__":
    cli()
