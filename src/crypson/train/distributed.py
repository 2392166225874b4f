"""Data-parallel training across processes: `torchrun` (on Kubeflow, in a Kubeflow Trainer TrainJob)
runs one process per GPU, or per CPU slot with gloo, and every process runs the same stage.

The launcher starts the processes: torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and
MASTER_ADDR/MASTER_PORT for the rendezvous). Without them, or with WORLD_SIZE=1, everything here
is a no-op and a stage runs as one process. params.yaml's `distributed` section says how many
processes a run is meant to have; `check_world` refuses a launcher that started another number.

Semantics under DDP: each optimizer step consumes one global batch of `batch_size` rows, split
into equal contiguous shards, one per rank; DDP averages the gradients, so for a model without
batch-coupled layers a step equals the single-process step on the whole batch. BatchNorm layers
normalise with their own shard's statistics (as in any DDP run without SyncBatchNorm) and their
running statistics are broadcast from rank 0 before every forward (DDP's buffer sync); with
`distributed.sync_batchnorm` they normalise with the whole global batch's statistics instead
(torch.nn.SyncBatchNorm: the single-process step again, at one all-reduce per BatchNorm layer and
step, CUDA only). Rank 0 alone writes checkpoints, model files, metrics and MLflow runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# How long a rank waits at a collective. The longest wait is by design: after the last epoch
# the other ranks wait at the final barrier while rank 0 alone logs and registers the models
# (nccl's default of 10 minutes is too short for a slow artifact store).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Where this process sits among the training processes (a single process by default)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 owns every output: checkpoints, model files, metrics, MLflow runs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def from_environment(environ: Mapping[str, str] | None = None) -> World:
    """The World that torchrun's (or the training operator's) WORLD_SIZE/RANK/LOCAL_RANK describe."""
    environ = os.environ if environ is None else environ
    size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(f"inconsistent launcher environment: WORLD_SIZE={size}, RANK={rank}, "
                         f"LOCAL_RANK={local_rank}; need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return World(rank=rank, local_rank=local_rank, size=size)


def check_world(world: World, processes: int) -> None:
    """Refuse a launcher whose number of processes is not the one the run's params ask for.

    Args:
        world: this process's World (from the launcher's environment).
        processes: distributed.nodes x distributed.gpus_per_node of the run's params.
    Raises:
        ValueError: naming both numbers; one process where params ask for more is what `dvc repro`
            and a single Kubeflow task start, so the message says how to start more.
    """
    if world.size == processes:
        return
    if world.size == 1:
        raise ValueError(f"distributed.nodes x gpus_per_node = {processes} processes, but this stage runs as one "
                         "(no torchrun WORLD_SIZE): dvc repro and a single pipeline task start one process; start it "
                         f"under torchrun with {processes} processes (on Kubeflow: a spec compiled from these params "
                         "runs a TrainJob) or set both to 1")
    raise ValueError(f"the launcher started WORLD_SIZE={world.size} processes, but distributed.nodes x gpus_per_node "
                     f"= {processes}: make the two agree")


def is_main_process() -> bool:
    """True for rank 0 or a single process: what a caller asks before doing rank-0-only work
    (e.g. creating the MLflow parent run) ahead of the process group."""
    return from_environment().is_main


def current() -> World:
    """The World of the initialised process group, or a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), local_rank=from_environment().local_rank, size=dist.get_world_size())


def local_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process: rank r on a node trains on cuda:LOCAL_RANK; CPU stays CPU."""
    if device.type == "cuda" and world.is_distributed:
        return torch.device("cuda", world.local_rank)
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the launcher's process group for the duration of a stage (nccl on CUDA, gloo on CPU).

    On a clean exit every rank waits at a barrier, so workers finish with rank 0 (which is still
    writing outputs after the last epoch); on an error the group is torn down at once, and the
    other ranks fail at their next collective instead of hanging.

    Args:
        device: the stage's resolved device; its type picks the backend.
    Yields:
        This process's World (a single process, without a group, when WORLD_SIZE is 1 or unset).
    """
    world = from_environment()
    if not world.is_distributed:
        yield world
        return
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised in this process")
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)  # one GPU per process; nccl binds its communicator here
        dist.init_process_group("nccl", rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device("cuda", world.local_rank))
    else:
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield world
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World) -> nn.Module:
    """DistributedDataParallel around a module whose parameters already sit on this rank's device.

    Wrapping broadcasts rank 0's parameters and buffers, so all replicas start equal (also
    after a resume). `forward_sync_buffers` (formerly `broadcast_buffers`) re-broadcasts rank 0's
    buffers before every forward, so BatchNorm running statistics stay rank 0's.
    """
    if not world.is_distributed:
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=True)


def sync_batchnorm_on(world: World, device: torch.device, requested: bool) -> bool:
    """Whether this run's BatchNorm layers synchronise: `requested` (distributed.sync_batchnorm) and DDP.

    Raises:
        ValueError: requested for DDP ranks that are not on CUDA (torch's SyncBatchNorm runs on GPUs only).
    """
    if not (requested and world.is_distributed):
        return False
    if device.type != "cuda":
        raise ValueError(f"distributed.sync_batchnorm needs CUDA ranks (torch's SyncBatchNorm runs on GPUs only), "
                         f"got device {device}; set it to false for CPU (gloo) processes")
    return True


@contextmanager
def synchronised_batchnorm(modules: Iterable[nn.Module], enabled: bool) -> Iterator[None]:
    """BatchNorm layers of `modules` as torch.nn.SyncBatchNorm for the duration of the block, then back.

    The SyncBatchNorm layers share the BatchNorm layers' parameters and running-statistics tensors (torch's
    convert_sync_batchnorm assigns, never copies), so optimizer steps, checkpoints and DDP's buffer sync act
    on the same tensors, and the layers put back afterwards hold the trained values. They are put back
    because rank 0 alone runs the modules after training (sampling, EMA BatchNorm statistics): a
    SyncBatchNorm in training mode there would wait for ranks that never join it.

    Args:
        modules: the models of a training task, on this rank's device, before DDP wraps them.
        enabled: False leaves the modules untouched.
    """
    if not enabled:
        yield
        return
    replaced: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, original BatchNorm)
    for module in modules:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"a bare {type(module).__name__} cannot be converted in place; pass its parent module")
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                    replaced.append((parent, name, child))
                    parent.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    try:
        yield
    finally:
        for parent, name, original in reversed(replaced):
            original.train(getattr(parent, name).training)
            parent.add_module(name, original)


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def broadcast_from_main(value: Any, world: World) -> Any:
    """Rank 0's (picklable) value on every rank: e.g. the checkpoint only rank 0 read."""
    if not world.is_distributed:
        return value
    holder = [value if world.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise sum of `tensor` over all ranks (in place, returned for chaining)."""
    if world.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
