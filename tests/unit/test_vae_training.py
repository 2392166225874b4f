"""What the VAE stage builds from the config and what one training step computes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crypson.config import parse_config
from crypson.data.prepare import ImageSet, PreparedData
from crypson.models.vae import VAE, vae_loss
from crypson.stages.training import vae_task
from crypson.train.vae import VaeTask, to_unit_range


def _task(class_weight: float, num_classes: int = 4) -> tuple[VaeTask, VAE]:
    torch.manual_seed(0)
    vae = VAE(latent_dim=3, channels=(4, 4, 8, 8), decoder_output="direct", num_classes=num_classes)
    val = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    task = VaeTask(vae, 1e-3, (0.9, 0.999), recon_weight=0.3, kl_weight=0.7, val_images_u8=val, batch_size=4,
                   class_weight=class_weight, val_labels=torch.tensor([0, 1, 2, 3, 0, 1]))
    return task, vae


def test_one_step_loss_is_the_weighted_elbo_plus_the_class_term():
    task, vae = _task(class_weight=5.0)
    images_u8 = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    vae.eval()  # deterministic forward (mean latent) for the hand computation
    task.train_vae = vae
    images = to_unit_range(images_u8)
    with torch.no_grad():
        reconstruction, mu, logvar = vae(images)
        total, _, _ = vae_loss(reconstruction, images, mu, logvar, 0.3, 0.7)
        expected = total + 5.0 * F.cross_entropy(vae.class_head(mu), labels)
    metrics = task.train_step((images_u8, labels))
    assert metrics["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["loss_class"].item() == pytest.approx(F.cross_entropy(vae.class_head(mu), labels).item(), rel=1e-3)


def test_validation_reports_psnr_and_the_class_head_accuracy():
    task, _ = _task(class_weight=1.0)
    metrics = task.validate()
    assert {"val_loss", "val_psnr_db", "val_class_accuracy"} <= set(metrics)
    assert 0 <= metrics["val_class_accuracy"] <= 1


def test_class_weight_without_a_head_is_refused():
    vae = VAE(latent_dim=3, channels=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="class_weight=2.0 needs a VAE built with num_classes > 0"):
        VaeTask(vae, 1e-3, (0.9, 0.999), 1.0, 0.7, torch.zeros(2, 32, 32, dtype=torch.uint8), 2, class_weight=2.0,
                val_labels=torch.zeros(2, dtype=torch.long))


def _prepared(classes: int = 4, per_split: int = 8) -> PreparedData:
    generator = np.random.default_rng(0)

    def split() -> ImageSet:
        return ImageSet(generator.integers(0, 256, (per_split, 32, 32), dtype=np.uint8),
                        np.arange(per_split, dtype=np.int64) % classes)

    return PreparedData(split(), split(), split(), tuple("ABCD"[:classes]), {})


def test_the_stage_builds_its_task_from_the_configured_weights():
    config = parse_config({"vae": {"recon_weight": 0.3, "kl_weight": 0.25, "class_weight": 5.0, "latent_dim": 3,
                                   "channels": [4, 4, 8, 8], "batch_size": 4}})
    data = _prepared()
    params, vae, task = vae_task(config, data, torch.device("cpu"))
    assert params["latent_dim"] == 3 and params["num_classes"] == 4 and vae.class_head is not None
    assert (task.recon_weight, task.kl_weight, task.class_weight) == (0.3, 0.25, 5.0)
    # One training step of the stage's task computes exactly the configured weighted loss.
    images_u8, labels = torch.from_numpy(data.train.images[:4]), torch.from_numpy(data.train.labels[:4])
    vae.eval()  # the mean latent: a deterministic forward for the hand computation
    images = to_unit_range(images_u8)
    with torch.no_grad():
        reconstruction, mu, logvar = vae(images)
        _, recon, kl = vae_loss(reconstruction, images, mu, logvar, 1.0, 1.0)
        expected = 0.3 * recon + 0.25 * kl + 5.0 * F.cross_entropy(vae.class_head(mu), labels)
    assert task.train_step((images_u8, labels))["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_validation_psnr_is_over_the_unit_range():
    config = parse_config({"vae": {"latent_dim": 3, "channels": [4, 4, 8, 8], "batch_size": 3}})
    data = _prepared(per_split=5)
    _, vae, task = vae_task(config, data, torch.device("cpu"))
    vae.eval()
    images = to_unit_range(torch.from_numpy(data.val.images))
    with torch.no_grad():
        reconstruction = vae(images)[0]
    mse = ((reconstruction - images) ** 2).mean(dim=(1, 2, 3))
    expected = (10 * torch.log10(1.0 / mse)).mean().item()  # images and reconstructions in [0, 1]
    assert task.validate()["val_psnr_db"] == pytest.approx(expected, rel=1e-4)
