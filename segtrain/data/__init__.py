"""VOC 2012 on disk, synthetic VOC-format data, and the joint image+mask transforms."""

from __future__ import annotations

from pathlib import Path

from segtrain.config import TrainConfig
from segtrain.data.synthetic import ensure_synthetic
from segtrain.data.voc import find_voc_dir


def voc_dir_for(cfg: TrainConfig) -> Path:
    """The VOC2012 dir a run reads: its synthetic set (made if missing), or VOC found under cfg.data_root."""
    if cfg.synthetic:
        return ensure_synthetic(cfg.synthetic_train_images, cfg.synthetic_val_images, cfg.synthetic_image_size,
                                cfg.synthetic_classes, cfg.synthetic_seed, cache_root=cfg.data_root)
    return find_voc_dir(cfg.data_root)
