"""VOC 2012 on disk, synthetic VOC-format data, and the joint image+mask transforms."""

from __future__ import annotations

from pathlib import Path

from segtrain.config import TrainConfig
from segtrain.data.synthetic import ensure_synthetic
from segtrain.data.voc import VOCSegmentation, find_voc_dir, read_split_ids
from segtrain.errors import DataError


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


def require_disjoint_splits(cfg: TrainConfig, where: str) -> None:
    """Fail now if cfg's train and val splits list an image in common, compared by id, not by name
    (trainval holds val; train_aug holds holdout): a score on training images says nothing.
    `where` names what set the pair, e.g. "studies/x.toml: [finalize]"."""
    voc_dir = voc_dir_for(cfg)
    val = read_split_ids(voc_dir, cfg.val_split)
    shared = set(read_split_ids(voc_dir, cfg.train_split)) & set(val)
    if shared:
        raise DataError(f"{where}: train_split {cfg.train_split!r} and val_split {cfg.val_split!r} share "
                        f"{len(shared):,} of the {len(val):,} val image ids ({voc_dir}); a score on images the model "
                        f"trained on says nothing: choose splits that share none (search: train_aug_search and "
                        f"holdout; finalize: train_aug and val)")
