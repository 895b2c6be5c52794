"""python -m segtrain.train: one DeepLabV3 (or V3+) training run (the baseline, or any config by hand).

Every TrainConfig field is a flag (--lr, --crop-size, ...); `--config FILE`
(TOML, or a run's config.json) supplies values first, flags override them.
Several processes: `torchrun --nproc_per_node=N -m segtrain.train ...`, where
--batch-size is the total over them and only rank 0 logs and prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from segtrain.cli import ArgumentParser, run
from segtrain.config import MODELS, TrainConfig, field_names, field_type, read_config_file
from segtrain.distributed import launched_rank
from segtrain.engine import train
from segtrain.errors import UserError
from segtrain.records import TrainResult
from segtrain.tracking import INSTALL, TRACKERS, require_tracker, tracked

HELP = {
    "data_root": "VOC root: the folder holding VOCdevkit/, VOCdevkit/ or VOC2012/ (default: $VOC_ROOT); "
                 "with --synthetic, where the synthetic set is cached",
    "synthetic": "train on a synthetic VOC-format set, made on first use",
    "model": "deeplabv3, or deeplabv3plus (its decoder refines the ASPP output with layer1's stride-4 features)",
    "pretrained": "imagenet, none (from scratch) or PATH to a torchvision ResNet state_dict",
    "lr": "backbone learning rate; the head gets lr * head-lr-multiplier",
    "epochs": "budget in epochs of the train split",
    "eval_points": "evaluations on val, at equal fractions of the budget",
    "batch_size": "images per step, over all processes",
    "schedule": "poly, or wsd (warmup-stable-decay: constant lr, a decay over the last decay-fraction of "
                "the budget, and annealed scores at every evaluation from short decay branches)",
    "decay_fraction": "wsd: the decay's share of the budget, and of each branch's run",
    "decay_shape": "wsd: 1-sqrt, linear or cosine",
    "workers": "DataLoader worker processes (default: on CUDA min(cores per GPU process - 1, 8), on the CPU 0)",
    "compile": "torch.compile the training model (minutes of compilation first; checkpoints stay eager)",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m segtrain.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML or JSON file of TrainConfig fields")
    parser.add_argument("--out", type=Path, help="run dir for config.json, result.json and the "
                                                 "checkpoint (default: runs/train/<time>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--tracking", choices=TRACKERS, default="none",
                        help="also log the curves to TensorBoard (OUT/tb/<run>) or MLflow ($MLFLOW_TRACKING_URI, "
                             f"else OUT/mlflow.db); needs {INSTALL} (default: none)")
    defaults = TrainConfig()
    fields = parser.add_argument_group("training config (defaults: the standard DeepLabV3 recipe)")
    for name in field_names():
        kind = field_type(name)
        flag = "--" + name.replace("_", "-")
        text = HELP.get(name, "")
        if "(default:" not in text:
            text = f"{text} (default: {getattr(defaults, name)})".lstrip()
        if kind is bool:
            fields.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            fields.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=name.upper(),
                                help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    main_process = launched_rank() == 0
    if not main_process:  # under torchrun, rank 0 speaks for all; the others report only trouble
        logging.getLogger().setLevel(logging.WARNING)
    args = vars(build_parser().parse_args(argv))
    config_file, out, resume, tracking = args.pop("config"), args.pop("out"), args.pop("resume"), args.pop("tracking")
    if resume and out is None:
        raise UserError("--resume needs --out DIR, the run dir holding the checkpoint")
    require_tracker(tracking, "--tracking")
    cfg = TrainConfig.from_dict({**(read_config_file(config_file) if config_file else {}), **args})
    out = out or Path("runs/train") / time.strftime("%Y%m%d-%H%M%S")
    with tracked(tracking, out, out.name, cfg.to_dict(), enabled=main_process) as tracker:
        result = train(cfg, run_dir=out, resume=resume, tracker=tracker)
    if main_process:
        print(summary(result, out))
    return 0


def summary(result: TrainResult, out: Path) -> str:
    cfg = result.config
    return "\n".join([
        f"{MODELS[cfg.model]} {cfg.backbone} OS {cfg.output_stride}, {cfg.optimizer} lr {cfg.lr:g}, "
        f"crop {cfg.crop_size}, batch {cfg.batch_size}, {cfg.epochs:g} epochs ({result.steps} steps)",
        f"val mIoU {result.final_miou:.4f} (best {result.best_miou:.4f}), "
        f"pixel accuracy {result.pixel_accuracy:.4f}",
        f"{result.seconds:.0f} s, {result.images_per_second:.1f} images/s, "
        f"peak memory {result.peak_memory_bytes / 2**30:.2f} GiB, {result.parameters / 1e6:.1f}M parameters",
        f"wrote {out / 'config.json'} and {out / 'result.json'}",
    ])


def cli() -> None:
    sys.exit(run(main, prog="segtrain.train"))


if __name__ == "__main__":
    cli()
