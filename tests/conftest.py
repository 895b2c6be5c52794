"""Shared fixtures: the two real VOC pairs kept in the repo, and a small synthetic VOC set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segtrain.data.synthetic import write_synthetic_voc

VOC_SAMPLE = Path(__file__).parent / "data" / "voc_sample"  # folder holding VOCdevkit/; counts in its README


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOC2012 dir of a small synthetic set (8 train, 4 val, 64x64, 5 classes); do not modify it."""
    return write_synthetic_voc(tmp_path_factory.mktemp("synthetic"), train=8, val=4, size=64, classes=5, seed=0)


@pytest.fixture
def voc_sample_copy(tmp_path: Path) -> Path:
    """VOC2012 dir of a writable copy of the real sample, for breaking files."""
    shutil.copytree(VOC_SAMPLE / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit" / "VOC2012"
