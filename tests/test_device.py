"""Device settings that only CUDA exercises, checked on the CPU with the CUDA queries mocked: the AMP dtype,
cuDNN's autotuner switch, the loader workers a host can give, and the /dev/shm check before loaders start."""

from __future__ import annotations

import pytest
import torch

from segtrain import device as device_module
from segtrain import sharedmem
from segtrain.device import amp_dtype_for, cudnn_benchmark, default_workers
from segtrain.errors import UserError

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bfloat16_only_on_cards_that_compute_it_natively(monkeypatch, capability, expected):
    """A V100 (7.0) or T4 (7.5) emulates bfloat16, and is_bf16_supported() says yes there: fp16 it must be
    (the engine's GradScaler is on exactly for fp16)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert amp_dtype_for(CUDA) == expected
    assert amp_dtype_for(torch.device("cpu")) is None


def test_cudnn_benchmark_is_set_for_the_block_and_restored():
    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
        with cudnn_benchmark(False):
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize("cores, local_world_size, expected", [(16, None, 8), (4, None, 3), (2, None, 1),
                                                               (64, "8", 7), (16, "4", 3)])
def test_workers_on_cuda_are_what_the_host_can_give(monkeypatch, cores, local_world_size, expected):
    monkeypatch.setattr(device_module.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert default_workers(CUDA) == expected
    assert default_workers(torch.device("cpu")) == 0  # loading in the training process: its threads use the cores


def test_short_shared_memory_stops_with_one_line_naming_shm_size_and_workers(monkeypatch):
    monkeypatch.setattr(sharedmem.sys, "platform", "linux")
    monkeypatch.setattr(sharedmem, "free_bytes", lambda path=sharedmem.SHM: 64 * 2 ** 20)  # Docker's default
    batch = 16 * 513 * 513 * 4  # uint8 RGB + mask, batch 16 at crop 513
    with pytest.raises(UserError) as raised:
        sharedmem.check_shared_memory(8, [batch, 8 * 375 * 500 * 4])
    message = str(raised.value)
    assert "\n" not in message and "/dev/shm has 64 MiB free" in message and "need about 349 MiB" in message
    assert "docker run --shm-size=1g" in message and "--workers" in message
    sharedmem.check_shared_memory(0, [batch])  # no workers: nothing in shared memory
    sharedmem.check_shared_memory(1, [batch])  # 2 batches of 16 MiB fit
    monkeypatch.setattr(sharedmem, "free_bytes", lambda path=sharedmem.SHM: None)  # nothing to read: no opinion
    sharedmem.check_shared_memory(8, [batch])
    monkeypatch.setattr(sharedmem.sys, "platform", "darwin")
    monkeypatch.setattr(sharedmem, "free_bytes", lambda path=sharedmem.SHM: 0)
    sharedmem.check_shared_memory(8, [batch])  # not Linux: torch shares memory otherwise there


def test_free_bytes_reads_the_file_system(tmp_path):
    assert sharedmem.free_bytes(tmp_path) > 0
    assert sharedmem.free_bytes(tmp_path / "absent") is None
