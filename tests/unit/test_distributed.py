"""DDP through the shared loop: 2 CPU processes on gloo, launched the way torchrun launches them
(WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT in the environment).

The exactness test uses a model without BatchNorm or dropout: there, DDP's averaged gradients
over two equal shards of a global batch equal one process's gradient on the whole batch. The
cGAN and VAE have BatchNorm (per-shard statistics under DDP), so for them the test checks what
DDP promises instead: every rank ends with the same parameters.
"""

import os
import socket
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from crypson.models.cgan import Discriminator, Generator
from crypson.models.vae import VAE
from crypson.train import distributed
from crypson.train.cgan import CganTask
from crypson.train.distributed import World
from crypson.train.loop import InMemoryBatches, LoopSettings, fit
from crypson.train.vae import VaeTask

WORLD_SIZE = 2
GLOBAL_BATCH = 8


class LinearRegressionTask:
    """No BatchNorm, no dropout, mean-reduced loss: DDP on shards == one process on the batch."""

    monitor = "val_loss"
    mode = "min"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.train_model: nn.Module = self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.autocast = nullcontext
        self.rows_seen = 0

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": self.optimizer}

    def wrap_modules(self, wrap):
        self.train_model = wrap(self.model)

    def train_step(self, batch):
        inputs, targets = batch
        self.rows_seen += len(inputs)
        loss = nn.functional.mse_loss(self.train_model(inputs).squeeze(1), targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss}

    def validate(self):
        return {"val_loss": float(sum(p.abs().sum() for p in self.model.parameters()))}


def _regression_batches() -> InMemoryBatches:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(64, 4, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(64, generator=generator)
    return InMemoryBatches((inputs, targets), batch_size=GLOBAL_BATCH, seed=3)


def _settings(checkpoint: Path, epochs: int, world: World) -> LoopSettings:
    return LoopSettings(epochs=epochs, checkpoint_path=checkpoint, fingerprint="f", seed=5, progress=False,
                        world=world)


def _image_batches(num_classes: int) -> InMemoryBatches:
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (32, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(32) % num_classes
    return InMemoryBatches((images, labels), batch_size=GLOBAL_BATCH, seed=4)


def _worker(rank: int, port: int, out: Path) -> None:
    """One rank: the environment torchrun would set, then the real process group and loop."""
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")) as world:
        assert distributed.current() == world
        # Uninterrupted run; per-rank paths and callbacks show which rank writes.
        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            with (out / f"metrics-rank{rank}.txt").open("a") as log:
                log.write(f"{epoch}\n")

        task = LinearRegressionTask()
        result = fit(task, _regression_batches(), _settings(out / f"full-rank{rank}.pt", 3, world),
                     on_epoch_end=log_epoch)
        # The same run interrupted after epoch 1 and resumed: only rank 0 has a checkpoint file,
        # so rank 1 can resume only from what rank 0 sends it.
        fit(LinearRegressionTask(), _regression_batches(), _settings(out / f"resume-rank{rank}.pt", 1, world))
        resumed_task = LinearRegressionTask()
        resumed = fit(resumed_task, _regression_batches(), _settings(out / f"resume-rank{rank}.pt", 3, world))

        cgan = CganTask(Generator(3, noise_dim=8, width=4), Discriminator(3, embed_dim=8, hidden=(16,)), 2e-4,
                        (0.5, 0.999))
        fit(cgan, _image_batches(3), _settings(out / f"cgan-rank{rank}.pt", 1, world))
        vae = VaeTask(VAE(latent_dim=2, channels=(2, 2, 4, 4)), 1e-3, (0.9, 0.999), 0.3, 0.7,
                      torch.zeros(4, 32, 32, dtype=torch.uint8), batch_size=4)
        fit(vae, _image_batches(3), _settings(out / f"vae-rank{rank}.pt", 1, world))
    torch.save({
        "model": task.model.state_dict(), "history": result.history, "rows_seen": task.rows_seen,
        "resumed_model": resumed_task.model.state_dict(), "resumed_from_epoch": resumed.resumed_from_epoch,
        "cgan": {name: dict(m.named_parameters()) for name, m in cgan.modules().items()},
        "vae": dict(vae.vae.named_parameters()),
    }, out / f"result-rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD_SIZE, join=True)
    return out, [torch.load(out / f"result-rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def test_ddp_on_two_shards_matches_one_process_on_the_global_batch(two_ranks, tmp_path):
    _, ranks = two_ranks
    single = LinearRegressionTask()
    reference = fit(single, _regression_batches(), _settings(tmp_path / "single.pt", 3, World()))
    assert [rank["rows_seen"] for rank in ranks] == [single.rows_seen // WORLD_SIZE] * WORLD_SIZE
    for rank in ranks:
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(rank["model"][key], value, rtol=1e-5, atol=1e-6)
        # Logged losses are the mean over ranks, i.e. the loss on the global batch.
        for ours, theirs in zip(rank["history"], reference.history, strict=True):
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ranks[0]["history"][0]["loss"] > ranks[0]["history"][-1]["loss"]  # it did learn


def test_only_rank_zero_writes_checkpoints_and_metrics(two_ranks):
    out, _ = two_ranks
    assert (out / "full-rank0.pt").is_file() and not (out / "full-rank1.pt").exists()
    assert not (out / "cgan-rank1.pt").exists() and not (out / "vae-rank1.pt").exists()
    assert (out / "metrics-rank0.txt").read_text() == "0\n1\n2\n"
    assert not (out / "metrics-rank1.txt").exists()


def test_every_rank_resumes_from_rank_zeros_checkpoint(two_ranks):
    _, ranks = two_ranks
    for rank in ranks:
        assert rank["resumed_from_epoch"] == 1
        for key, value in rank["model"].items():
            torch.testing.assert_close(rank["resumed_model"][key], value, rtol=1e-5, atol=1e-6)


def test_batchnorm_models_stay_identical_across_ranks(two_ranks):
    """Each rank trains on different rows, so equal weights mean DDP synchronised G, D and the VAE."""
    _, (rank0, rank1) = two_ranks
    for name in ("generator", "discriminator"):
        for key, value in rank0["cgan"][name].items():
            assert torch.equal(value, rank1["cgan"][name][key]), (name, key)
    for key, value in rank0["vae"].items():
        assert torch.equal(value, rank1["vae"][key]), key


def test_ranks_see_disjoint_halves_of_each_global_batch():
    batches = InMemoryBatches((torch.arange(24),), batch_size=8, seed=0)
    whole = [b[0] for b in batches.epoch(3)]
    halves = [[b[0] for b in batches.epoch(3, rank, 2)] for rank in range(2)]
    for batch, first, second in zip(whole, *halves, strict=True):
        assert torch.equal(torch.cat([first, second]), batch)


def test_batch_size_must_split_evenly_across_ranks(tmp_path):
    batches = InMemoryBatches((torch.zeros(12, 4), torch.zeros(12)), batch_size=6, seed=0)
    with pytest.raises(ValueError, match="batch_size 6 must be a multiple of WORLD_SIZE 4"):
        fit(LinearRegressionTask(), batches, _settings(tmp_path / "c.pt", 1, World(rank=0, size=4)))


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, World()),
    ({"WORLD_SIZE": "1", "RANK": "0"}, World()),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, World(rank=3, local_rank=1, size=4)),
])
def test_world_from_the_launcher_environment(environ, expected):
    assert distributed.from_environment(environ) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "WORLD_SIZE=2, RANK=2"),
])
def test_bad_launcher_environment_is_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        distributed.from_environment(environ)


def test_cuda_ranks_get_their_local_gpu():
    world = World(rank=5, local_rank=1, size=8)
    assert distributed.local_device(torch.device("cuda"), world) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cpu"), world) == torch.device("cpu")
    assert distributed.local_device(torch.device("cuda"), World()) == torch.device("cuda")
