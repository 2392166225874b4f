from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from crypson.train.loop import InMemoryBatches, LoopSettings, fingerprint_of, fit, read_checkpoint


class Interrupted(Exception):
    pass


class RegressionTask:
    """A small real task: noisy linear regression with dropout (so the RNG matters)."""

    monitor = "val_loss"
    mode = "min"

    def __init__(self, fail_at_step: int | None = None, val_losses: list[float] | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.fail_at_step, self.steps = fail_at_step, 0
        self.val_losses = val_losses
        self.autocast = nullcontext

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": self.optimizer}

    def train_step(self, batch):
        if self.fail_at_step is not None and self.steps == self.fail_at_step:
            raise Interrupted  # stands in for a killed process, mid-epoch
        self.steps += 1
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.model(inputs).squeeze(1), targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss}

    def validate(self):
        epoch = len(self._seen) if hasattr(self, "_seen") else 0
        self._seen = [*getattr(self, "_seen", []), epoch]
        if self.val_losses is not None:
            return {"val_loss": self.val_losses[epoch]}
        return {"val_loss": float(sum(p.abs().sum() for p in self.model.parameters()))}


def _batches() -> InMemoryBatches:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(64, 4, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(64, generator=generator)
    return InMemoryBatches((inputs, targets), batch_size=8, seed=3)


def _settings(tmp_path: Path, epochs: int = 3, fingerprint: str = "a") -> LoopSettings:
    return LoopSettings(epochs=epochs, checkpoint_path=tmp_path / "ckpt.pt", fingerprint=fingerprint, seed=5,
                        progress=False)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    reference = RegressionTask()
    fit(reference, _batches(), _settings(tmp_path / "reference"))

    broken = RegressionTask(fail_at_step=8 + 3)  # killed in the middle of the second epoch
    with pytest.raises(Interrupted):
        fit(broken, _batches(), _settings(tmp_path))
    assert read_checkpoint(_settings(tmp_path))["epoch"] == 0  # the first epoch was saved

    resumed_task = RegressionTask()
    epochs_seen = []
    result = fit(resumed_task, _batches(), _settings(tmp_path), on_epoch_end=lambda e, m: epochs_seen.append(e))
    assert result.resumed_from_epoch == 1
    assert epochs_seen == [1, 2]  # only the unfinished epochs ran again
    assert len(result.history) == 3
    for key, value in reference.model.state_dict().items():
        assert torch.allclose(resumed_task.model.state_dict()[key], value, atol=1e-6), key


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    fit(RegressionTask(), _batches(), _settings(tmp_path, epochs=1, fingerprint="old"))
    result = fit(RegressionTask(), _batches(), _settings(tmp_path, epochs=2, fingerprint="new"))
    assert result.resumed_from_epoch is None and len(result.history) == 2


def test_best_epoch_is_kept(tmp_path):
    task = RegressionTask(val_losses=[3.0, 1.0, 2.0])
    result = fit(task, _batches(), _settings(tmp_path))
    assert result.best_epoch == 1 and result.best_metric == 1.0
    assert not torch.equal(result.best_state["model"]["0.weight"], task.model.state_dict()["0.weight"])


def test_max_train_batches_and_history(tmp_path):
    task = RegressionTask()
    settings = LoopSettings(epochs=2, checkpoint_path=tmp_path / "c.pt", fingerprint="x", max_train_batches=2,
                            progress=False)
    result = fit(task, _batches(), settings)
    assert task.steps == 4
    assert set(result.history[0]) >= {"loss", "val_loss", "train_images_per_second", "epoch_seconds"}


def test_batches_cover_every_row_once_per_epoch():
    rows = torch.arange(20)
    batches = InMemoryBatches((rows,), batch_size=6, drop_last=False, seed=0)
    assert len(batches) == 4
    seen = torch.cat([b[0] for b in batches.epoch(0)])
    assert sorted(seen.tolist()) == list(range(20))
    assert not torch.equal(seen, torch.cat([b[0] for b in batches.epoch(1)]))  # reshuffled
    assert torch.equal(seen, torch.cat([b[0] for b in batches.epoch(0)]))  # reproducible
    with pytest.raises(ValueError, match="share their first dimension"):
        InMemoryBatches((rows, torch.arange(3)), batch_size=2)


def test_fingerprint_changes_with_parts_and_files(tmp_path):
    source = tmp_path / "model.py"
    source.write_text("a = 1\n")
    first = fingerprint_of({"lr": 0.1}, files=(source,))
    assert first == fingerprint_of({"lr": 0.1}, files=(source,))
    assert first != fingerprint_of({"lr": 0.2}, files=(source,))
    source.write_text("a = 2\n")
    assert first != fingerprint_of({"lr": 0.1}, files=(source,))
