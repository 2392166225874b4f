"""Training throughput of each model: Crypson's loop against a bare PyTorch loop, in one run.

For each model the same task (model, optimizer, train_step) is driven three ways, on the same
batches, alternating repeats so machine noise hits all three alike:
- bare: a plain `for` loop over pre-made batches calling train_step; one sync at the end;
- crypson: `crypson.train.loop.fit` for the same number of steps (batching, device moves,
  loss sums, validation, checkpoint write, MLflow-free);
- dataloader: torch DataLoader over float tensors with a `.item()` per step, the way the
  reference implementation's loop feeds and logs its models.
Ratios are within this run on this machine; absolute images/s only mean something on a GPU.

    python bench/train_throughput.py [--device auto|cpu|cuda] [--sizes default|report] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from crypson import model_files
from crypson.config import load_config
from crypson.train.cgan import CganTask
from crypson.train.classifier import ClassifierTask
from crypson.compute import resolve_device
from crypson.train.loop import InMemoryBatches, LoopSettings, fit
from crypson.train.vae import VaeTask

REPO = Path(__file__).resolve().parents[1]
CLASSES = 47


def make_task(name: str, config, device: torch.device, rows: int):
    """A fresh task and its training tensors (random data of the real shapes and dtypes)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (rows, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (rows,))
    if name == "cgan":
        c = config.cgan
        generator = model_files.build("generator", model_files.hparams_from_config("generator", config, CLASSES))
        discriminator = model_files.build("discriminator", model_files.hparams_from_config("discriminator", config, CLASSES))
        task = CganTask(generator.to(device), discriminator.to(device), c.lr, c.betas, c.loss, c.aux_weight,
                        c.ema_decay, c.class_margin)
        return task, (images, labels), c.batch_size
    if name == "vae":
        c = config.vae
        vae = model_files.build("vae", model_files.hparams_from_config("vae", config, CLASSES)).to(device)
        return VaeTask(vae, c.lr, c.betas, c.recon_weight, c.kl_weight, images[:c.batch_size], c.batch_size,
                       c.class_weight, labels[:c.batch_size]), (images, labels), c.batch_size
    c = config.classifier
    latents = torch.randn(rows, config.vae.latent_dim)
    classifier = model_files.build("classifier", model_files.hparams_from_config("classifier", config, CLASSES)).to(device)
    task = ClassifierTask(classifier, c.lr, c.betas, {"real": (latents[:c.batch_size], labels[:c.batch_size])},
                          c.batch_size)
    return task, (latents, torch.zeros_like(latents) - 4, labels), c.batch_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_bare(task, tensors, batch_size: int, steps: int, device: torch.device) -> float:
    batches = [tuple(t[i * batch_size:(i + 1) * batch_size].to(device) for t in tensors) for i in range(steps)]
    _sync(device)
    started = time.perf_counter()
    for batch in batches:
        losses = task.train_step(batch)
    float(next(iter(losses.values())).detach())
    _sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def time_crypson(task, tensors, batch_size: int, steps: int, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as folder:
        settings = LoopSettings(epochs=1, checkpoint_path=Path(folder) / "c.pt", fingerprint="bench",
                                device=device, max_train_batches=steps, progress=False)
        started = time.perf_counter()
        fit(task, InMemoryBatches(tensors, batch_size), settings)
        _sync(device)
        return steps * batch_size / (time.perf_counter() - started)


def time_dataloader(task, tensors, batch_size: int, steps: int, device: torch.device) -> float:
    floats = tuple(t.float() if t.dtype == torch.uint8 else t for t in tensors)
    loader = DataLoader(TensorDataset(*floats), batch_size=batch_size, shuffle=True, drop_last=True)
    started = time.perf_counter()
    for step, batch in enumerate(loader):
        if step == steps:
            break
        batch = tuple((b.to(torch.uint8) if t.dtype == torch.uint8 else b).to(device) for b, t in zip(batch, tensors))
        losses = task.train_step(batch)
        float(next(iter(losses.values())).detach())  # per-step logging, as the reference does
    _sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", choices=["default", "report"], default="default")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch (the checkpoint is per epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["cgan", "vae", "classifier"])
    args = parser.parse_args()
    overrides = [REPO / "presets" / "report.yaml"] if args.sizes == "report" else []
    config = load_config(REPO / "params.yaml", overrides)
    device = resolve_device(args.device)
    print(f"device={device} sizes={args.sizes} steps={args.steps} repeats={args.repeats} "
          f"threads={torch.get_num_threads()}")
    print(f"{'model':<11}{'bare img/s':>12}{'crypson img/s':>15}{'overhead':>10}{'dataloader img/s':>18}{'speedup':>9}")
    for name in args.models:
        runs = {"bare": [], "crypson": [], "dataloader": []}
        for _ in range(args.repeats):
            for kind, timer in (("bare", time_bare), ("crypson", time_crypson), ("dataloader", time_dataloader)):
                rows = (args.steps + 4) * getattr(config, name).batch_size
                task, tensors, batch_size = make_task(name, config, device, rows)
                timer(task, tensors, batch_size, 3, device)  # warm-up
                runs[kind].append(timer(task, tensors, batch_size, args.steps, device))
        bare, ours, loader = (statistics.median(runs[k]) for k in ("bare", "crypson", "dataloader"))
        print(f"{name:<11}{bare:>12.0f}{ours:>15.0f}{(bare / ours - 1):>10.1%}{loader:>18.0f}{ours / loader:>8.2f}x")


if __name__ == "__main__":
    main()
