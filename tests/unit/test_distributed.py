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


# ---- SyncBatchNorm (distributed.sync_batchnorm) --------------------------------------------------------
def _training_tasks() -> dict[str, object]:
    """The three training tasks of the stages, tiny, on the CPU."""
    from crypson.models.classifier import LatentClassifier
    from crypson.train.classifier import ClassifierTask

    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4))
    validation = {"real": (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))}
    return {
        "cgan": CganTask(Generator(3, noise_dim=8, width=4), Discriminator(3, embed_dim=8, hidden=(16,)), 2e-4,
                         (0.5, 0.999)),
        "vae": VaeTask(vae, 1e-3, (0.9, 0.999), 0.3, 0.7, torch.zeros(4, 32, 32, dtype=torch.uint8), batch_size=4),
        "classifier": ClassifierTask(LatentClassifier(vae.decoder, 3, 8, 0.0), 1e-3, (0.9, 0.999), validation, 4),
    }


def _batchnorms(modules) -> dict[str, nn.Module]:
    return {f"{owner}.{name}": layer for owner, module in modules.items() for name, layer in module.named_modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("kind", ["cgan", "vae", "classifier"])
def test_sync_batchnorm_converts_every_batchnorm_for_the_block_only(kind):
    modules = _training_tasks()[kind].modules()
    before = _batchnorms(modules)
    assert before and not any(isinstance(layer, nn.SyncBatchNorm) for layer in before.values())
    with distributed.synchronised_batchnorm(modules.values(), enabled=True):
        during = _batchnorms(modules)
        assert set(during) == set(before)
        assert all(type(layer) is nn.SyncBatchNorm for layer in during.values())
        for name, layer in during.items():  # the same tensors, not copies: steps and checkpoints act on both
            original = before[name]
            assert layer.running_mean is original.running_mean and layer.num_batches_tracked is \
                original.num_batches_tracked, name
            assert layer.weight is original.weight or (layer.weight is None and original.weight is None), name
        for module in modules.values():
            module.eval()
    after = _batchnorms(modules)
    assert all(after[name] is layer for name, layer in before.items())  # the original layers are back
    assert not any(layer.training for layer in after.values())  # with the mode set inside the block


@pytest.mark.parametrize("kind", ["cgan", "vae", "classifier"])
def test_sync_batchnorm_off_leaves_the_modules_untouched(kind):
    modules = _training_tasks()[kind].modules()
    before = _batchnorms(modules)
    with distributed.synchronised_batchnorm(modules.values(), enabled=False):
        assert all(layer is before[name] for name, layer in _batchnorms(modules).items())


def test_fit_trains_through_syncbatchnorm_only_when_asked(tmp_path, monkeypatch):
    """fit's DDP path, collectives replaced by one process's identity (no process group: SyncBatchNorm then
    normalises locally), records which BatchNorm layers the DDP-wrapped modules hold."""
    monkeypatch.setattr(distributed, "broadcast_from_main", lambda value, world: value)
    monkeypatch.setattr(distributed, "sum_over_ranks", lambda tensor, world: tensor)
    monkeypatch.setattr(distributed, "barrier", lambda world: None)
    monkeypatch.setattr(distributed, "wrap", lambda module, world: module)
    for enabled in (True, False):
        task = _training_tasks()["vae"]
        seen = []
        wrap_modules = task.wrap_modules
        task.wrap_modules = lambda wrap, task=task, seen=seen, wrap_modules=wrap_modules: (
            seen.extend(type(layer) for layer in _batchnorms(task.modules()).values()), wrap_modules(wrap))
        settings = LoopSettings(epochs=1, checkpoint_path=tmp_path / f"{enabled}.pt", fingerprint="f",
                                progress=False, world=World(rank=0, size=2), sync_batchnorm=enabled)
        fit(task, _image_batches(3), settings)
        assert seen and set(seen) == {nn.SyncBatchNorm if enabled else nn.BatchNorm2d}, enabled
        assert not any(isinstance(layer, nn.SyncBatchNorm) for layer in _batchnorms(task.modules()).values())


def test_sync_batchnorm_needs_ddp_and_cuda():
    two = World(rank=0, size=2)
    assert distributed.sync_batchnorm_on(two, torch.device("cuda", 0), True)
    assert not distributed.sync_batchnorm_on(World(), torch.device("cuda"), True)  # one process: nothing to sync
    assert not distributed.sync_batchnorm_on(two, torch.device("cuda", 0), False)
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA ranks .* got device cpu"):
        distributed.sync_batchnorm_on(two, torch.device("cpu"), True)


# ---- the run's topology against the launcher's ----------------------------------------------------------
def test_world_must_match_the_params_topology():
    distributed.check_world(World(), 1)
    distributed.check_world(World(rank=7, local_rank=3, size=8), 8)
    with pytest.raises(ValueError, match="= 8 processes, but this stage runs as one .* torchrun with 8"):
        distributed.check_world(World(), 8)  # dvc repro, or a single pipeline task, under 2 x 4 params
    with pytest.raises(ValueError, match="WORLD_SIZE=4 processes, but distributed.nodes x gpus_per_node = 8"):
        distributed.check_world(World(rank=1, size=4), 8)


def test_every_training_stage_runs_inside_the_process_group():
    """The stage functions (not their helpers) join torchrun's group: a helper that joined it would leave
    it before training starts, and every rank would train alone and write as rank 0."""
    from crypson.stages import training

    for stage in (training.train_cgan, training.train_vae, training.train_classifier):
        assert stage.__wrapped__.__name__ == stage.__name__
    assert not hasattr(training.vae_task, "__wrapped__")
