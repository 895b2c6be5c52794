"""Tiny study specs for the search and finalize tests: 8 synthetic images, crop 65, a few steps a trial."""

from __future__ import annotations

from pathlib import Path

TINY_TRAIN = """
synthetic = true
synthetic_train_images = 8
synthetic_val_images = 4
synthetic_image_size = 64
pretrained = "none"
head_lr_multiplier = 1.0
crop_size = 65
epochs = 1.0
eval_points = 2
workers = 0
device = "cpu"
"""

TINY_SPACE = """
lr = {type = "float", low = 1e-3, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adam"]}
momentum = {type = "float", low = 0.8, high = 0.95, when = {optimizer = "sgd"}}
batch_size = {type = "categorical", choices = [2, 4]}
"""

TINY_BASELINE = """
lr = 0.02
optimizer = "sgd"
momentum = 0.9
batch_size = 2
"""


def write_spec(directory: Path, name: str, cache: Path, *, train: str = TINY_TRAIN, space: str = TINY_SPACE,
               baseline: str = TINY_BASELINE, pruner: str = 'type = "median"\nn_startup_trials = 1\n'
                                                           'n_warmup_steps = 0',
               extra: str = "") -> Path:
    """A study file in `directory`; `cache` holds the synthetic set, shared between studies."""
    path = directory / f"{name}.toml"
    path.write_text(f'[study]\nname = "{name}"\nheartbeat_interval = 1\ngrace_period = 3\n'
                    f'keep_checkpoints = 1\n\n[train]\ndata_root = "{cache}"\n{train}\n'
                    f'[space]\n{space}\n[baseline]\n{baseline}\n[pruner]\n{pruner}\n'
                    f'[sampler]\nn_startup_trials = 3\n{extra}')
    return path
