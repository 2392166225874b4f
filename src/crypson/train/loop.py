"""The one training loop shared by the cGAN, the VAE and the classifier.

What it owns: device placement of batches, mixed precision on CUDA, per-epoch seeding (so a
resumed run repeats exactly what an uninterrupted one does), a checkpoint after every epoch
(written atomically, resumed when the stage is re-run after an interruption), keeping the
best epoch on validation, and a progress bar. Losses are summed on the device and read once
per epoch: no per-step host synchronisation.

What a model brings is a `TrainTask`: its modules, its optimizers, one `train_step` and a
`validate`. Under torchrun (`LoopSettings.world` from crypson.train.distributed) each rank trains
on its shard of every global batch through DDP-wrapped modules; rank 0 alone writes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from crypson.compute import seed_everything
from crypson.files import atomic_write_bytes
from crypson.train import distributed
from crypson.train.distributed import World

CHECKPOINT_FORMAT = 1


class InMemoryBatches:
    """Shuffled mini-batches sliced from tensors held in memory.

    The data sets here fit in memory (EMNIST balanced is 115 MB as uint8), so slicing whole
    tensors beats a DataLoader's per-item collate by a wide margin on a CPU.

    Args:
        tensors: tensors with the same first dimension (e.g. uint8 images and labels).
        batch_size: rows per batch.
        shuffle: reshuffle every epoch, from (seed, epoch).
        drop_last: drop a final short batch (keeps BatchNorm statistics sane).
        seed: base seed of the shuffle.
    """

    def __init__(
        self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool = True,
        drop_last: bool = True, seed: int = 0,
    ) -> None:
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(f"tensors must share their first dimension, got lengths {sorted(lengths)}")
        self.tensors = tensors
        self.size = lengths.pop()
        if self.size < batch_size and drop_last:
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({self.size} rows)")
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def epoch(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, ...]]:
        """The epoch's batches; with world_size > 1, rank's contiguous share of each global batch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        for batch_index in range(len(self)):
            rows = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            rows = rows.tensor_split(world_size)[rank]  # all of them when world_size is 1
            yield tuple(t[rows] for t in self.tensors)


class TrainTask(Protocol):
    """What a model brings to the loop."""

    monitor: str | None  # validation metric that picks the best epoch; None keeps the last
    mode: Literal["min", "max"]
    autocast: Callable[[], AbstractContextManager[Any]]  # set by the loop

    def modules(self) -> dict[str, nn.Module]: ...
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]: ...
    def validate(self) -> dict[str, float]: ...

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Run train_step's forward passes through wrap(module) (DDP); validate keeps the bare
        modules. Called by the loop only under DDP."""


@dataclass(frozen=True)
class LoopSettings:
    """How to run the loop (not what to train)."""

    epochs: int
    checkpoint_path: Path
    fingerprint: str  # identity of (config, data, code): a checkpoint with another one is ignored
    device: torch.device = torch.device("cpu")
    seed: int = 0
    max_train_batches: int | None = None  # the tests' fast path
    progress: bool = True
    world: World = World()  # this process among torchrun's ranks; a single process by default
    sync_batchnorm: bool = False  # under DDP: BatchNorm over the global batch (distributed.sync_batchnorm_on)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float | None = None
    best_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    resumed_from_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint_of(*parts: Any, files: tuple[Path, ...] = ()) -> str:
    """A stable hash of JSON-able parts and the bytes of source files."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _cpu_state(modules: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
            for name, m in modules.items()}


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(settings: LoopSettings) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when there is none or it belongs to another run."""
    if not settings.checkpoint_path.is_file():
        return None
    state = torch.load(settings.checkpoint_path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != settings.fingerprint:
        return None
    return state


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def fit(
    task: TrainTask,
    batches: InMemoryBatches,
    settings: LoopSettings,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train `task` for `settings.epochs`, resuming from a matching checkpoint.

    Args:
        task: the model's modules, optimizers and steps.
        batches: training batches (moved to the device here).
        settings: epochs, device, checkpoint path and fingerprint, seed.
        on_epoch_end: called with (epoch, metrics) after each epoch, before its checkpoint is written.
        extra: small JSON-able state stored in the checkpoint (e.g. the MLflow run id).
    Returns:
        The per-epoch history and the best epoch's weights (CPU tensors).
    """
    device, world = settings.device, settings.world
    use_amp = device.type == "cuda"
    task.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)
    modules, optimizers = task.modules(), task.optimizers()
    if world.is_distributed and batches.batch_size % world.size:
        raise ValueError(f"batch_size {batches.batch_size} must be a multiple of WORLD_SIZE {world.size}: "
                         "each rank trains on an equal share of every global batch")
    result = FitResult(extra=dict(extra or {}))
    start_epoch = 0
    # Rank 0 reads the checkpoint and sends it to the others: no rank needs to see rank 0's disk.
    checkpoint = distributed.broadcast_from_main(read_checkpoint(settings) if world.is_main else None, world)
    if checkpoint is not None:
        for name, module in modules.items():
            module.load_state_dict(checkpoint["modules"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        result.history = checkpoint["history"]
        result.best_epoch, result.best_metric = checkpoint["best_epoch"], checkpoint["best_metric"]
        result.best_state = checkpoint["best_state"]
        result.extra = {**checkpoint["extra"], **result.extra}
        start_epoch = result.resumed_from_epoch = checkpoint["epoch"] + 1
    with distributed.synchronised_batchnorm(modules.values(), world.is_distributed and settings.sync_batchnorm):
        if world.is_distributed:
            task.wrap_modules(lambda module: distributed.wrap(module, world))
        _train_epochs(task, batches, settings, result, start_epoch, on_epoch_end)
    return result


def _train_epochs(task: TrainTask, batches: InMemoryBatches, settings: LoopSettings, result: FitResult,
                  start_epoch: int, on_epoch_end: Callable[[int, dict[str, float]], None] | None) -> None:
    """The epochs from `start_epoch` on: train, validate, keep the best, checkpoint (fit's body)."""
    device, world = settings.device, settings.world
    modules, optimizers = task.modules(), task.optimizers()
    steps_per_epoch = min(len(batches), settings.max_train_batches or len(batches))
    for epoch in range(start_epoch, settings.epochs):
        seed_everything(settings.seed, epoch, world.rank)
        for module in modules.values():
            module.train()
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        rows = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{settings.epochs}",
                   disable=not (settings.progress and world.is_main), leave=False, mininterval=2.0)
        for step, batch in enumerate(batches.epoch(epoch, world.rank, world.size)):
            if step == steps_per_epoch:
                break
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            for key, value in task.train_step(batch).items():
                sums[key] = sums[key] + value.detach() if key in sums else value.detach().float()
            rows += len(batch[0])
            bar.update()
        bar.close()
        # One host sync (and, under DDP, one all-reduce) per epoch: the summed losses come back together.
        totals = distributed.sum_over_ranks(
            torch.stack([*sums.values(), torch.tensor(float(rows), device=device)]), world).tolist()
        metrics = {key: value / (steps_per_epoch * world.size) for key, value in zip(sums, totals)}
        elapsed = time.perf_counter() - started
        metrics["train_images_per_second"] = totals[-1] / max(elapsed, 1e-9)
        for module in modules.values():
            module.eval()
        with torch.no_grad():
            metrics.update(task.validate())
        metrics["epoch_seconds"] = time.perf_counter() - started
        result.history.append(metrics)
        monitored = metrics[task.monitor] if task.monitor else None
        if task.monitor is None or _is_better(monitored, result.best_metric, task.mode):
            result.best_epoch, result.best_metric = epoch, monitored
            result.best_state = _cpu_state(modules)
        # Metrics go to the tracker before the checkpoint: a kill in between re-runs (and re-logs)
        # this epoch instead of losing its metrics.
        if on_epoch_end is not None and world.is_main:
            on_epoch_end(epoch, metrics)
        if world.is_main:
            _save_atomic(
                {
                    "format": CHECKPOINT_FORMAT, "fingerprint": settings.fingerprint, "epoch": epoch,
                    "modules": _cpu_state(modules),
                    "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in optimizers.items()},
                    "history": result.history, "best_epoch": result.best_epoch,
                    "best_metric": result.best_metric, "best_state": result.best_state, "extra": result.extra,
                },
                settings.checkpoint_path,
            )
        # No rank starts the next epoch before this one's checkpoint exists, so a failure on any
        # rank resumes every rank from the same epoch.
        distributed.barrier(world)
        if settings.progress and world.is_main:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            tqdm.write(f"epoch {epoch + 1}/{settings.epochs}: {shown}")
