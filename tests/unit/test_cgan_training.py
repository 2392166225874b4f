"""The default cGAN's parts: conv discriminator, losses, EMA generator, truncated sampling, and the
classifier stage's use of the discriminator's class head."""

import math

import pytest
import torch
from torch import nn

from crypson.models.cgan import ConvDiscriminator, Generator, truncated_normal
from crypson.stages.training import _undisputed
from crypson.train import cgan as cgan_train


def test_conv_discriminator_shapes_and_bounded_class_logits():
    discriminator = ConvDiscriminator(num_classes=5, width=4, temperature=0.5).eval()
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    logit, class_logits = discriminator(images, torch.tensor([0, 2, 4]))
    assert logit.shape == (3,) and class_logits.shape == (3, 5)
    # Cosine logits over a temperature: |cos| <= 1, so every logit lies in [-1/T, 1/T].
    assert class_logits.abs().max() <= 1 / 0.5 + 1e-5
    assert torch.equal(discriminator.classify(images), class_logits)
    spectral = [name for name, _ in discriminator.named_parameters() if "parametrizations" in name]
    assert len(spectral) == 7  # four convs, the adversarial head, the projection, the class features


def test_projection_term_depends_on_the_class():
    discriminator = ConvDiscriminator(num_classes=3, width=4).eval()
    image = torch.rand(1, 1, 32, 32).repeat(2, 1, 1, 1)
    logit, class_logits = discriminator(image, torch.tensor([0, 1]))
    assert logit[0] != logit[1]
    assert torch.equal(class_logits[0], class_logits[1])  # the class head sees the image only


def test_hinge_and_bce_losses_against_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1)/2 = 0.75
    assert cgan_train.discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.75)
    assert cgan_train.generator_loss(fake, "hinge").item() == pytest.approx(1.0)  # -mean(fake)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.0)) / 2
    assert cgan_train.discriminator_loss(real, fake, "bce").item() == pytest.approx(expected)
    assert cgan_train.generator_loss(fake, "bce").item() == pytest.approx((softplus(2.0) + softplus(0.0)) / 2)
    with pytest.raises(ValueError, match="unknown cGAN loss 'wgan'; allowed: bce, hinge"):
        cgan_train.discriminator_loss(real, fake, "wgan")


def test_ema_of_a_constant_parameter_is_that_constant_and_decay_zero_gives_the_live_weights():
    generator = Generator(num_classes=3, noise_dim=4, width=2, conditioning="concat")
    ema = cgan_train.ema_of(generator, 0.9)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    for _ in range(5):
        ema.update_parameters(generator)  # the live weights never change: the average stays on them
    averaged = cgan_train.averaged_state(ema.state_dict())
    for name, _ in generator.named_parameters():
        assert torch.allclose(averaged[name], before[name])
    live = cgan_train.ema_of(generator, 0.0)
    live.update_parameters(generator)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(1.0)
    live.update_parameters(generator)
    averaged = cgan_train.averaged_state(live.state_dict())
    for name, parameter in generator.named_parameters():
        assert torch.equal(averaged[name], parameter)
    with pytest.raises(ValueError, match="EMA decay must lie in \\[0, 1\\), got 1.0"):
        cgan_train.ema_of(generator, 1.0)


def test_ema_follows_the_live_weights_at_its_rate():
    generator = Generator(num_classes=2, noise_dim=2, width=1, conditioning="concat")
    ema = cgan_train.ema_of(generator, 0.5)
    ema.update_parameters(generator)  # the first update copies
    start = generator.label_embedding.weight.detach().clone()
    with torch.no_grad():
        generator.label_embedding.weight.add_(2.0)
    ema.update_parameters(generator)
    averaged = cgan_train.averaged_state(ema.state_dict())["label_embedding.weight"]
    assert torch.allclose(averaged, start + 1.0, atol=1e-6)  # 0.5 * old + 0.5 * new


def test_a_train_step_updates_the_ema_and_reports_the_class_head():
    torch.manual_seed(0)
    generator = Generator(num_classes=3, noise_dim=8, width=2, conditioning="concat")
    discriminator = ConvDiscriminator(num_classes=3, width=2)
    task = cgan_train.CganTask(generator, discriminator, 1e-3, (0.5, 0.999), "hinge", 1.0, 0.5)
    assert set(task.modules()) == {"generator", "discriminator", "generator_ema"}
    metrics = task.train_step((torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])))
    assert {"d_class_accuracy_real", "d_class_accuracy_fake", "loss_generator"} <= set(metrics)
    averaged = cgan_train.averaged_state(task.ema.state_dict())
    assert int(task.ema.n_averaged) == 1
    assert torch.equal(averaged["label_embedding.weight"], generator.label_embedding.weight)


def test_recomputed_batchnorm_statistics_fit_the_generator():
    torch.manual_seed(0)
    generator = Generator(num_classes=3, noise_dim=8, width=2, conditioning="concat")
    first_norm = generator.net[0][1]
    first_norm.running_mean.fill_(100.0)  # statistics that belong to other weights
    cgan_train.recompute_batchnorm(generator, batches=8, batch_size=64, seed=1)
    assert first_norm.running_mean.abs().max() < 10
    assert first_norm.momentum == 0.1  # restored after the cumulative average
    assert generator.training  # it was in training mode, and is again
    generator.eval()
    cgan_train.recompute_batchnorm(generator, batches=1, batch_size=8, seed=1)
    assert not generator.training


def test_truncated_draws_stay_inside_the_bound_and_are_seeded():
    draws = truncated_normal(20_000, 4, 0.5, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert draws.abs().max() <= 0.5
    assert draws.std() == pytest.approx(0.28, abs=0.01)  # std of N(0, 1) cut at +-0.5: 0.2850
    again = truncated_normal(20_000, 4, 0.5, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(draws, again)
    untruncated = truncated_normal(20_000, 1, None, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert untruncated.abs().max() > 3
    generator = Generator(num_classes=2, noise_dim=6, width=1, truncation=1.0)
    assert generator.sample_noise(1000).abs().max() <= 1.0
    with pytest.raises(ValueError, match="truncation must be > 0 or None, got -1"):
        Generator(num_classes=2, truncation=-1)


class _FixedClassHead(nn.Module):
    """A stand-in discriminator whose class head says class 0 for dark images, class 1 for bright ones."""

    has_class_head = True

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        bright = images.mean(dim=(1, 2, 3)) > 0
        return torch.stack([(~bright).float(), bright.float()], dim=1)


def test_generated_images_the_class_head_disputes_are_left_out():
    dark, bright = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    images = torch.cat([dark, bright, dark, bright, bright, bright])  # in [0, 1]
    labels = torch.tensor([0, 0, 0, 1, 1, 1])  # row 1 is disputed (bright, labelled 0)
    kept = _undisputed(_FixedClassHead(), images, labels, per_class=2)
    assert kept.tolist() == [0, 2, 3, 4]  # at most 2 a class, the disputed row left out
    no_head = nn.Linear(1, 1)  # the report's discriminator has none: every image counts, still 2 a class
    assert _undisputed(no_head, images, labels, per_class=2).tolist() == [0, 1, 3, 4]


def test_class_margin_stops_the_pull_on_confidently_classified_images():
    temperature = 0.5
    cosines = torch.tensor([[0.99, 0.0, -0.2], [0.3, 0.5, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    loss = cgan_train.class_head_loss(cosines / temperature, labels, temperature, margin=0.9)
    loss.backward()
    # Row 0 is past both margins: its clipped logits are all 0, its loss log(3), its gradient none.
    assert cosines.grad[0].abs().max() == 0
    assert cosines.grad[1].abs().max() > 0
    row0 = torch.nn.functional.cross_entropy(torch.zeros(1, 3), torch.tensor([0]))
    assert row0.item() == pytest.approx(math.log(3))
    plain = cgan_train.class_head_loss(torch.tensor([[0.99, 0.0, -0.2]]) / temperature, torch.tensor([0]),
                                       temperature, margin=None)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(
        torch.tensor([[0.99, 0.0, -0.2]]) / temperature, torch.tensor([0])).item())


def test_paired_classes_give_each_fake_a_partner_of_its_class():
    classes = torch.tensor([4, 1, 3, 0, 2])
    paired = cgan_train.paired_classes(classes)
    assert paired.tolist() == [4, 1, 3, 4, 1]  # fake i and i + 3 share a class
    assert cgan_train.paired_classes(torch.tensor([2, 7])).tolist() == [2, 2]


def test_mode_seeking_term_against_a_hand_computed_value():
    # Pairs (0, 2) and (1, 3) for B = 4: image gaps 1 and 3 -> mean 2; noise gaps 2 and 2 -> mean 2.
    fake = torch.tensor([[0.0], [0.0], [1.0], [3.0]])
    noise = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    assert cgan_train.mode_seeking_loss(fake, noise).item() == pytest.approx(1 / (2 / 2 + 1e-5))
    # Identical images for different noise (a collapsed class) cost the most.
    collapsed = cgan_train.mode_seeking_loss(torch.zeros(4, 1), noise).item()
    assert collapsed == pytest.approx(1e5)
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        cgan_train.mode_seeking_loss(fake[:1], noise[:1])


def test_mode_seeking_pushes_same_class_images_apart():
    images = torch.randint(0, 256, (8, 32, 32), dtype=torch.uint8)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))

    def inverse_gap_after_training(weight: float) -> float:
        torch.manual_seed(0)
        generator = Generator(num_classes=3, noise_dim=8, width=4, conditioning="concat")
        task = cgan_train.CganTask(generator, ConvDiscriminator(num_classes=3, width=4), 1e-3, (0.5, 0.999),
                                   "hinge", 0.0, None, None, mode_seeking=weight)
        for _ in range(10):
            task.train_step((images, classes))
        with torch.no_grad():  # batch statistics, as the term saw them in training
            return float(cgan_train.mode_seeking_loss(generator(noise, cgan_train.paired_classes(classes)), noise))

    # Same seed, same batches: the term is what makes same-class images differ more.
    with_term, without = inverse_gap_after_training(1.0), inverse_gap_after_training(0.0)
    assert with_term < 0.8 * without
