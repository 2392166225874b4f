"""The one chunked no-grad loop: the same rows as one pass, chunk sizes from the input's length only,
tuples of outputs, empty inputs; the device's chunk size; and the one per-class cGAN sampler."""

import pytest
import torch
from torch import nn

from crypson.cipher import codec
from crypson.inference import ACCELERATOR_CHUNK, CPU_CHUNK, chunked, inference_chunk, sample_per_class
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE


def _recording(forward):
    """forward, and the list of the chunks it was called with."""
    seen = []

    def call(batch: torch.Tensor):
        seen.append(batch.clone())
        return forward(batch)

    return call, seen


def test_chunked_equals_one_pass_row_for_row():
    inputs = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    forward, seen = _recording(lambda batch: batch.argmax(1) * 10 + (batch > 0).sum(1))  # row by row, exact
    assert torch.equal(chunked(forward, inputs, 128), inputs.argmax(1) * 10 + (inputs > 0).sum(1))
    assert [len(batch) for batch in seen] == [128, 128, 44]
    assert torch.equal(torch.cat(seen), inputs)  # every row once, in order


def test_chunked_network_matches_the_unchunked_pass():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)).eval()
    inputs = torch.randn(1000, 8)
    with torch.no_grad():
        whole = network(inputs)
    torch.testing.assert_close(chunked(network, inputs, 128), whole, rtol=0, atol=1e-6)
    assert not chunked(network, inputs, 128).requires_grad  # no autograd graph, whatever the caller's mode


def test_chunk_sizes_depend_on_the_length_only():
    sizes = []
    for inputs in (torch.zeros(450, 3), torch.randn(450, 3), torch.arange(450.0)[:, None].expand(450, 3)):
        forward, seen = _recording(lambda batch: batch.sum(1))
        chunked(forward, inputs, 128)
        sizes.append([len(batch) for batch in seen])
    assert sizes == [[128, 128, 128, 66]] * 3
    forward, seen = _recording(lambda batch: batch.sum(1))
    chunked(forward, torch.zeros(256, 3), 128)
    assert [len(batch) for batch in seen] == [128, 128]  # no empty trailing call


def test_tuple_outputs_are_concatenated_each_on_its_own():
    inputs = torch.arange(10.0)[:, None]  # (10, 1)
    doubled, label = chunked(lambda batch: (batch * 2, batch[:, 0].long() % 3), inputs, 4)
    assert torch.equal(doubled, inputs * 2) and label.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def test_an_empty_input_gives_the_forward_pass_of_the_empty_input():
    forward, seen = _recording(nn.Linear(8, 5))
    empty = chunked(forward, torch.zeros(0, 8), 128)
    assert empty.shape == (0, 5) and empty.dtype == torch.float32 and [len(b) for b in seen] == [0]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, None])
def test_chunk_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"chunk must be an int >= 1, got {bad!r}"):
        chunked(lambda batch: batch, torch.zeros(3, 1), bad)


def test_chunk_size_by_device():
    assert inference_chunk("cpu") == CPU_CHUNK == 128
    assert inference_chunk(torch.device("cuda")) == ACCELERATOR_CHUNK == 8192  # named only, no GPU needed


def test_the_codec_draws_noise_chunk_by_chunk_in_order():
    """encode_characters over 300 characters in chunks of 128 equals three chunks drawn by hand, in turn."""
    torch.manual_seed(0)
    vae = VAE(latent_dim=8, channels=(4, 4, 8, 8))
    models = codec.CipherModels(Generator(5, 8, 4), vae, LatentClassifier(vae.decoder, 5, 16, 0.0), tuple("ABCDE"))
    labels = torch.arange(300) % 5
    latents = codec.encode_characters(models, labels, noise_source=torch.Generator().manual_seed(3))
    noise_source, by_hand = torch.Generator().manual_seed(3), []
    with torch.no_grad():
        for start in (0, 128, 256):
            chunk = labels[start : start + 128]
            images = models.generator(models.generator.sample_noise(len(chunk), noise_source), chunk)
            by_hand.append(models.vae.encode_mean(models.generator.to_unit_range(images)))
    assert torch.equal(latents, torch.cat(by_hand))
    empty = codec.encode_characters(models, labels[:0])
    assert empty.shape == (0, 8) and codec.receiver_logits(models, empty).shape == (0, 5)


def test_sample_per_class_is_the_seeded_eval_mode_pass_class_by_class():
    torch.manual_seed(0)
    generator = Generator(5, 8, 4)  # in training mode, as during training
    images, labels = sample_per_class(generator, 3, seed=7)
    assert images.shape == (15, 1, 32, 32) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert generator.training  # its mode is given back
    generator.eval()
    with torch.no_grad():
        noise = generator.sample_noise(15, torch.Generator().manual_seed(7))  # the same draw, by hand
        expected = generator.to_unit_range(generator(noise, labels))
    assert torch.equal(images, expected)  # BatchNorm's running statistics, not the batch's


def test_sample_per_class_repeats_for_a_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    generator = Generator(4, 8, 4).eval()
    state = torch.get_rng_state()
    first, _ = sample_per_class(generator, 2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(sample_per_class(generator, 2, seed=1)[0], first)
    assert not torch.equal(sample_per_class(generator, 2, seed=2)[0], first)
    assert not generator.training
