"""torch.distributed set-up for `torchrun`; a single process needs none of it.

`torchrun --nproc_per_node=N -m segtrain.train ...` starts N processes; each joins
the group described in its environment (gloo on CPU, nccl on CUDA with process k
on cuda:k of its node). Only rank 0 writes files and reports. `as_one_batch`
makes N processes train like one process with their batches together.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol  # torch's differentiable collectives


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # joined here, so left here; a group the caller set up stays theirs

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_rank() -> int:
    """This process's rank as torchrun announced it (0 outside torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0"))


def join_process_group(device_type: str) -> ProcessGroup:
    """Join the group torchrun describes in the environment (WORLD_SIZE > 1), else a group of one.

    On CUDA the process is bound to cuda:LOCAL_RANK before nccl starts, so nccl's
    collectives (barrier included) know their device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = not dist.is_initialized()
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        if owned:
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
    elif owned:
        dist.init_process_group(backend="gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, owned)


def leave_process_group(group: ProcessGroup) -> None:
    if group.owned and dist.is_initialized():
        dist.destroy_process_group()


class StoppedByMainProcess(RuntimeError):
    """Raised on the other processes when rank 0's share of the work raised there."""


def on_main_process(group: ProcessGroup, device: torch.device, work: Callable[[], None]) -> None:
    """Do `work` on rank 0 only (writing, reporting); if it raises, every process stops:
    rank 0 with that error, the others with StoppedByMainProcess, where they would
    otherwise wait forever in the next collective. `device`: where the collective's
    flag lives (nccl needs it on the GPU)."""
    failure = None
    if group.is_main:
        try:
            work()
        except Exception as error:
            failure = error
    if group.is_distributed:
        stop = torch.tensor([failure is not None], dtype=torch.int32, device=device)
        dist.broadcast(stop, src=0)
        if stop.item() and not group.is_main:
            raise StoppedByMainProcess("rank 0 stopped the run")
    if failure is not None:
        raise failure


@contextlib.contextmanager
def main_process_first(group: ProcessGroup) -> Iterator[None]:
    """Run the body on rank 0 first and on the others after it, e.g. so that rank 0
    alone downloads weights into the shared cache and the others find them there."""
    if group.is_distributed and not group.is_main:
        dist.barrier()
    try:
        yield
    finally:  # even when rank 0 fails: the others then fail on their own rather than wait forever
        if group.is_distributed and group.is_main:
            dist.barrier()


def as_one_batch(model: nn.Module, device_type: str) -> nn.Module:
    """`model` with BatchNorm statistics and dropout masks as if the batches of all
    processes were one batch: N processes then train like one with N times the batch."""
    if device_type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():  # the subclasses add no state: only forward changes
        if type(module) is nn.BatchNorm2d:  # on CPU only: on GPUs they are SyncBatchNorm by now
            module.__class__ = CPUSyncBatchNorm
        elif type(module) is nn.Dropout:
            module.__class__ = ShardedDropout
    return model


class ShardedDropout(nn.Dropout):
    """Dropout whose masks are the rows, for this process's samples, of the mask that one
    process would draw for the whole batch.

    Every process seeds the global RNG alike and draws the whole mask exactly as
    nn.Dropout does on CPU (a tensor of the input's layout, bernoulli_), then keeps
    rows rank, rank + N, ...: the samples TrainStream gives this rank. So each sample
    gets its own mask (not one shared by all ranks), and the RNG stays in step with a
    single-process run, which rank 0's checkpoint restores on every rank.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        rank, world = dist.get_rank(), dist.get_world_size()
        channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last)
        noise = torch.empty((input.shape[0] * world, *input.shape[1:]), dtype=input.dtype,
                            device=input.device,
                            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        noise.bernoulli_(1 - self.p).div_(1 - self.p)
        return input * noise[rank::world]


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all processes, on CPU.

    nn.SyncBatchNorm does this only on GPUs (its kernels are CUDA's, and DDP refuses
    it on CPU); this lets the distributed path run, and be tested, on CPU with gloo.
    The sums go through torch's differentiable all_reduce, so autograd synchronises the
    backward pass too. Evaluation uses the running statistics, as BatchNorm2d does.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        dims, shape = [0, 2, 3], (1, -1, 1, 1)
        local = torch.cat([input.sum(dims), input.new_full((1,), input.numel() / input.size(1))])
        total = funcol.all_reduce(local, "sum", dist.group.WORLD)
        count = total[-1]
        mean = total[:-1] / count
        centred = input - mean.view(shape)
        # a second pass over the centred input: exact like BatchNorm2d, where E[x²] - E[x]² cancels
        var = funcol.all_reduce((centred * centred).sum(dims), "sum", dist.group.WORLD) / count
        output = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)
        return output
