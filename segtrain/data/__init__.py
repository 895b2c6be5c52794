"""VOC 2012 on disk, synthetic VOC-format data, and the joint image+mask transforms."""

from __future__ import annotations

from pathlib import Path

from segtrain.config import TrainConfig
from segtrain.data.synthetic import ensure_synthetic
from segtrain.data.voc import VOCSegmentation, find_voc_dir


def voc_dir_for(cfg: TrainConfig) -> Path:
    """The VOC2012 dir a run reads: its synthetic set (made if missing), or VOC found under cfg.data_root."""
    if cfg.synthetic:
        return ensure_synthetic(cfg.synthetic_train_images, cfg.synthetic_val_images, cfg.synthetic_image_size,
                                cfg.synthetic_classes, cfg.synthetic_seed, cache_root=cfg.data_root)
    return find_voc_dir(cfg.data_root)


def require_splits(cfg: TrainConfig) -> None:
    """Fail now, with the DataError a run would meet, if cfg's data is not all there: its
    root, its split files, and an image and a mask for every id they list (not decoded)."""
    voc_dir = voc_dir_for(cfg)
    for split in (cfg.train_split, cfg.val_split):
        VOCSegmentation(voc_dir, split)
