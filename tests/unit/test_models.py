import math

import pytest
import torch

from crypson.models.cgan import Discriminator, Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.timestep import DiscreteTimestepEmbedding, SinusoidalTimestepEmbedding, sinusoidal_encoding
from crypson.models.vae import VAE, vae_loss


def test_generator_and_discriminator_shapes_and_range():
    generator = Generator(num_classes=5, noise_dim=16, width=4).eval()
    labels = torch.tensor([0, 1, 4])
    images = generator(generator.sample_noise(3), labels)
    assert images.shape == (3, 1, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    discriminator = Discriminator(num_classes=5, embed_dim=8, hidden=(32, 16))
    assert discriminator(images, labels).shape == (3,)


def test_generator_is_conditioned_on_the_label():
    generator = Generator(num_classes=3, noise_dim=8, width=2).eval()
    noise = generator.sample_noise(1).repeat(2, 1)
    images = generator(noise, torch.tensor([0, 1]))
    assert not torch.allclose(images[0], images[1])


def test_report_sizes():
    # The reference discriminator has about 11M parameters (DESIGN.md).
    discriminator = Discriminator(num_classes=47)
    parameters = sum(p.numel() for p in discriminator.parameters())
    assert 10.5e6 < parameters < 11.5e6
    generator = Generator(num_classes=47, noise_dim=64, width=64)
    assert [m.out_channels for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [512, 256, 128, 1]


def test_vae_shapes_and_eval_is_deterministic():
    vae = VAE(latent_dim=8).eval()
    image = torch.rand(2, 1, 32, 32)
    reconstruction, mu, logvar = vae(image)
    assert reconstruction.shape == image.shape and mu.shape == (2, 8) and logvar.shape == (2, 8)
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1
    assert torch.equal(vae(image)[0], reconstruction)  # eval uses the mean, no sampling
    assert torch.equal(vae.encode_mean(image), mu)


def test_vae_loss_against_hand_computed_case():
    # One image of two pixels: target (1, 0), reconstruction (0.5, 0.5):
    # BCE sum = 2 * ln 2. Latent mu = (1, 0), logvar = (0, ln 2):
    # KL = -0.5 * [(1 + 0 - 1 - 1) + (1 + ln 2 - 0 - 2)] = -0.5 * (-2 + ln 2) = 1 - ln(2) / 2.
    target = torch.tensor([[[[1.0, 0.0]]]])
    reconstruction = torch.full_like(target, 0.5)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    total, recon, kl = vae_loss(reconstruction, target, mu, logvar, recon_weight=0.3, kl_weight=0.7)
    assert recon.item() == pytest.approx(2 * math.log(2))
    assert kl.item() == pytest.approx(1 - math.log(2) / 2)
    assert total.item() == pytest.approx(0.3 * 2 * math.log(2) + 0.7 * (1 - math.log(2) / 2))


def test_classifier_keeps_its_decoder_frozen():
    vae = VAE(latent_dim=4, channels=(4, 4, 8, 8))
    classifier = LatentClassifier(vae.decoder, num_classes=3, hidden=8, dropout=0.0)
    before = {k: v.clone() for k, v in classifier.decoder.state_dict().items()}
    classifier.train()
    assert not classifier.decoder.training  # BatchNorm statistics must not move
    optimizer = torch.optim.SGD([p for p in classifier.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(classifier(torch.randn(6, 4)), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    optimizer.step()
    for key, value in classifier.decoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert classifier(torch.randn(2, 4)).shape == (2, 3)
    assert classifier.decoder is not vae.decoder  # a copy: the VAE itself is untouched


def test_timestep_embeddings():
    encoding = sinusoidal_encoding(torch.tensor([0, 1]), dim=4)
    # t=0: sin 0 = 0, cos 0 = 1; t=1, frequencies 1 and 10000^-0.5 = 0.01.
    assert torch.allclose(encoding[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(encoding[1], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]))
    assert SinusoidalTimestepEmbedding(dim=8, hidden=16)(torch.arange(5)).shape == (5, 8)
    assert DiscreteTimestepEmbedding(num_positions=10, dim=8)(torch.arange(3)).shape == (3, 8)
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_encoding(torch.tensor([1]), dim=3)


def test_both_conditionings():
    for conditioning in ("multiply", "concat"):
        generator = Generator(num_classes=4, noise_dim=8, width=2, conditioning=conditioning).eval()
        noise = generator.sample_noise(1).repeat(2, 1)
        images = generator(noise, torch.tensor([0, 3]))
        assert images.shape == (2, 1, 32, 32) and not torch.allclose(images[0], images[1])
    with pytest.raises(ValueError, match="unknown conditioning 'add'.*multiply, concat"):
        Generator(num_classes=4, conditioning="add")


def test_vae_direct_output_stage_and_class_head():
    vae = VAE(latent_dim=8, decoder_output="direct", num_classes=5).eval()
    reconstruction, mu, _ = vae(torch.rand(3, 1, 32, 32))
    assert reconstruction.shape == (3, 1, 32, 32) and 0 <= reconstruction.min() and reconstruction.max() <= 1
    assert vae.class_head(mu).shape == (3, 5)
    # No BatchNorm or ReLU on the image: the last upsampling layer is a bare transposed conv to 1 channel.
    last = vae.decoder.upsample[-1]
    assert isinstance(last, torch.nn.ConvTranspose2d) and last.out_channels == 1
    report = VAE(latent_dim=8)
    assert report.class_head is None
    assert isinstance(report.decoder.upsample[-1][1], torch.nn.BatchNorm2d)  # the report's 1-channel BN + ReLU
    with pytest.raises(ValueError, match="unknown decoder_output 'linear'; allowed: report, direct"):
        VAE(decoder_output="linear")
