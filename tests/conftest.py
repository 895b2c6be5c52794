"""Shared fixtures: the two real VOC pairs kept in the repo, a small synthetic VOC set, a PostgreSQL server,
and a seeded random DeepLabV3."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from segtrain.data.synthetic import write_synthetic_voc
from segtrain.model import build_model

VOC_SAMPLE = Path(__file__).parent / "data" / "voc_sample"  # folder holding VOCdevkit/; counts in its README


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOC2012 dir of a small synthetic set (8 train, 4 val, 64x64, 5 classes); do not modify it."""
    return write_synthetic_voc(tmp_path_factory.mktemp("synthetic"), train=8, val=4, size=64, classes=5, seed=0)


def random_deeplab(output_stride: int = 16, seed: int = 0) -> nn.Module:
    """A ResNet-50 DeepLabV3 in eval mode, every weight and BatchNorm statistic drawn from `seed`: untrained,
    yet its predictions vary from pixel to pixel (a fresh model's identity blocks and unit statistics would not)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("resnet50", output_stride, 21, None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path]]:
    """mktemp for a module's fixtures. The directories go when the module ends, unless one of its tests failed
    (pytest keeps a failed test's tmp_path alike): each training run leaves a 0.3-0.5 GB checkpoint, and kept
    to the end of the session they came to 10-15 GB, more than a CI machine's disk may have free."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(module_tmp: Callable[[str], Path], request: pytest.FixtureRequest) -> Iterator[Path]:
    """The module's working directory, shared by its tests: runs/ of its studies goes there."""
    directory = module_tmp(request.module.__name__.removeprefix("test_"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        yield directory


@pytest.fixture
def voc_sample_copy(tmp_path: Path) -> Path:
    """VOC2012 dir of a writable copy of the real sample, for breaking files."""
    shutil.copytree(VOC_SAMPLE / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit" / "VOC2012"


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest version installed), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1 (trust auth) for the session: its URL, with a password
    (trust ignores it) so that tests can check it is never shown."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    base = Path(tempfile.mkdtemp(prefix="deeplab-hpo-pg-"))  # not under pytest's root-only tmp dirs
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run([*as_postgres, str(bin_dir / tool), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    pg("initdb", "-D", str(base / "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    pg("pg_ctl", "-D", str(base / "data"), "-l", str(base / "log"), "-w", "-o",
       f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off", "start")
    try:
        yield f"postgresql://postgres:pg-secret-42@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
