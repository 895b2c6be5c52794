"""python -m segtrain.predict: a trained model on images or folders -> VOC-format masks (and overlays).

One paletted PNG per image in VOC's SegmentationClass format (the image's size, VOC's
colour map), and with --overlay a JPEG of the image blended with its classes' colours and a
legend. The evaluation protocol flags are segtrain.evaluate's. An image that cannot be read
is one line naming it; the others are still written, and the exit code is 2 at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from segtrain.cli import ArgumentParser, run
from segtrain.device import resolve_device
from segtrain.errors import UserError
from segtrain.evaluate import add_protocol_arguments, protocol_from
from segtrain.evaluation import load_checkpoint_model, load_run_model
from segtrain.prediction import IMAGE_SUFFIXES, image_files, predict_files


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m segtrain.predict", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", type=Path, metavar="DIR",
                       help="run dir holding config.json and checkpoint.pt (segtrain.train --out, a trial, a final run)")
    model.add_argument("--checkpoint", type=Path, metavar="FILE", help="a checkpoint.pt alone (it holds its config)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help=f"image files, or folders of them ({' '.join(IMAGE_SUFFIXES)})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the masks go: DIR/<image name>.png")
    parser.add_argument("--overlay", action="store_true",
                        help="also write DIR/<image name>_overlay.jpg: the image blended with the classes' colours, "
                             "with a legend")
    add_protocol_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocol = protocol_from(args)
    paths = image_files(args.images)
    device = resolve_device(args.device)
    if args.run is not None:
        model, cfg, _ = load_run_model(args.run, protocol.output_stride)
    else:
        model, cfg, _ = load_checkpoint_model(args.checkpoint, protocol.output_stride)
    protocol = protocol.for_run(cfg.output_stride)
    done = predict_files(model, paths, args.out, protocol, device, overlay=args.overlay)
    masks = len(paths) - len(done.failed)
    print(f"{masks} masks{' and overlays' if args.overlay else ''} in {args.out} ({protocol.name})")
    if done.failed:
        raise UserError(f"{len(done.failed)} of {len(paths)} images could not be read (each named above); "
                        f"the other {masks} were written")
    return 0


def cli() -> None:
    sys.exit(run(main, prog="segtrain.predict"))


if __name__ == "__main__":
    cli()
