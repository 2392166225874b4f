"""Two more attacks: image inversion (PSNR/SSIM against the receiver's image) and nonce reuse.

Image inversion: the attacker wants the handwriting, not only the character. Knowing the public
decoder, it predicts the latent from (ciphertext, position), trained on pairs under random keys,
and decodes it; its image is scored against the receiver's (the decoder image of the true
latent). The yardstick is the best keyless guess, the mean receiver image: an attacker at that
level has learned nothing about the image from the ciphertext.

Nonce reuse: `codec.encrypt` draws every nonce itself (`keys.new_nonce`, 16 random bytes) and takes
none from its caller, so a nonce cannot be reused through the API. What reuse would do is shown
here: under one key and one nonce two messages get the same mask, and their difference reveals
the difference of their latents; with the first message known, the second falls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crypson.cipher.keys import KEY_BYTES, NONCE_BYTES, SecretKey, derive_message_keys
from crypson.cipher.masks import UINT16_MODULUS, MaskScheme
from crypson.evaluate.attacks import (
    AttackData,
    AttackResult,
    known_model_latents,
    make_ciphertexts,
    payload_features,
    scored_result,
)
from crypson.evaluate.learned import best_of_restarts, standardised_inputs
from crypson.evaluate.metrics import psnr_per_image
from crypson.inference import chunked, inference_chunk

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; 100 dB stands for "exact"


@dataclass(frozen=True)
class ImageInversionResult:
    """One attacker's images against the receiver's: mean PSNR and SSIM with 95% intervals."""

    scheme: str
    attacker: str
    psnr_db: float
    psnr_ci: tuple[float, float]
    ssim: float
    ssim_ci: tuple[float, float]
    samples: int


def mean_interval(values: torch.Tensor, z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval, mean +- z * sd / sqrt(n) (n >= 2)."""
    values = values.double()
    if len(values) < 2:
        raise ValueError(f"need at least 2 values for an interval, got {len(values)}")
    mean = float(values.mean())
    half_width = z * float(values.std()) / math.sqrt(len(values))
    return mean, mean - half_width, mean + half_width


def score_images(attacker: str, scheme: str, images: torch.Tensor, receiver: torch.Tensor) -> ImageInversionResult:
    """PSNR (capped at PSNR_CAP_DB) and SSIM of each (N, 1, H, W) image in [0, 1] against the receiver's."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # seconds to import: here

    psnr = psnr_per_image(images.clamp(0, 1), receiver).clamp(max=PSNR_CAP_DB)
    ssim = structural_similarity_index_measure(images.clamp(0, 1), receiver, data_range=1.0, reduction="none")
    psnr_mean, psnr_low, psnr_high = mean_interval(psnr)
    ssim_mean, ssim_low, ssim_high = mean_interval(ssim)
    return ImageInversionResult(scheme, attacker, psnr_mean, (psnr_low, psnr_high), ssim_mean, (ssim_low, ssim_high),
                                len(images))


def learned_latent_inversion(
    train_features: torch.Tensor,
    train_positions: torch.Tensor,
    train_latents: torch.Tensor,
    test_features: torch.Tensor,
    test_positions: torch.Tensor,
    restarts: int = 3,
    epochs: int = 30,
    hidden: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Regress the standardised latent from standardised (ciphertext, position one-hot); best of `restarts`
    by mean squared error on a validation split of the training pairs (crypson.evaluate.learned).

    Returns:
        (N_test, d) float32 predicted latents.
    """
    if restarts < 1 or len(train_features) < 5:
        raise ValueError(f"need restarts >= 1 and >= 5 training pairs, got {restarts} and {len(train_features)}")
    train_inputs, test_inputs = standardised_inputs(train_features, train_positions, test_features, test_positions)
    target_mean, target_std = train_latents.mean(0), train_latents.std(0).clamp_min(1e-6)
    targets = (train_latents - target_mean) / target_std
    model = best_of_restarts(train_inputs, targets, targets.shape[1], nn.functional.mse_loss, _negative_error,
                             restarts, epochs, hidden, seed)
    with torch.no_grad():
        return (model(test_inputs) * target_std + target_mean).float()


def _negative_error(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """The validation score of a latent regressor: minus its mean squared error."""
    return -float(nn.functional.mse_loss(predicted, targets))


def _decode(decoder: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    device = next(decoder.parameters()).device
    return chunked(lambda batch: decoder(batch.to(device)).float().cpu(), latents, inference_chunk(device))


def image_inversion_suite(schemes: Sequence[MaskScheme], data: AttackData, decoder: nn.Module, seed: int = 0,
                          restarts: int = 3, epochs: int = 30) -> list[ImageInversionResult]:
    """Per scheme, the known-model and the learned attacker's decoded images against the receiver's.

    Args:
        schemes: the mask schemes, with the sender's settings.
        data: latents of cGAN images: the attacker's training pairs, and the characters scored.
        decoder: the public VAE decoder, (N, d) -> (N, 1, 32, 32) in [0, 1].
    Returns:
        First the keyless baseline ("mean-image", scheme "keyless"), then two results per scheme.
    """
    receiver = _decode(decoder, data.test_latents)  # what the receiver sees
    mean_image = _decode(decoder, data.train_latents).mean(0, keepdim=True).expand_as(receiver)
    results = [score_images("mean-image", "keyless", mean_image, receiver)]
    for index, scheme in enumerate(schemes):
        train_seed, test_seed = (int(v) for v in np.random.default_rng([seed, index, 1]).integers(2**32, size=2))
        train_features, train_positions = make_ciphertexts(scheme, data.train_latents, data.message_length,
                                                           train_seed)
        test_features, test_positions = make_ciphertexts(scheme, data.test_latents, data.message_length, test_seed)
        guessed = known_model_latents(scheme, test_features, test_positions)
        results.append(score_images("known-model", scheme.name, _decode(decoder, guessed), receiver))
        learned = learned_latent_inversion(train_features, train_positions, data.train_latents, test_features,
                                           test_positions, restarts, epochs, seed=seed)
        results.append(score_images("learned-inversion", scheme.name, _decode(decoder, learned), receiver))
    return results


def latent_difference(scheme: MaskScheme, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """second - first of two ciphertexts' payload features, in latent units.

    An exact scheme's (keyed-modular's) words subtract mod 2^16, read as signed (|z2 - z1| < R, the
    clipping range, fits without wrapping); the float schemes subtract directly.
    """
    if scheme.exact:
        words = [torch.round(f.double() * UINT16_MODULUS).to(torch.int64) for f in (first, second)]
        signed = torch.remainder(words[1] - words[0] + UINT16_MODULUS // 2, UINT16_MODULUS) - UINT16_MODULUS // 2
        return (signed.double() * (2 * scheme.range / scheme.levels)).float()
    return (second - first).float()


def nonce_reuse_attack(
    scheme: MaskScheme,
    first_latents: torch.Tensor,
    first_labels: torch.Tensor,
    second_latents: torch.Tensor,
    class_means: torch.Tensor,
    classifier: nn.Module,
    message_length: int,
    seed: int,
    reuse: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Pairs of messages under one key, with the SAME nonce (`reuse`) or fresh ones (the control).

    The attacker knows the first message's characters (known plaintext), not its latents: it takes
    the class mean of the first character plus the ciphertext difference as the second latent,
    and classifies that with the public classifier.

    Args:
        first_latents, second_latents: (N, d) latents of the two messages of each pair, in order.
        first_labels: (N,) the first messages' characters.
        class_means: (K, d) mean latent of each class, from the attacker's own cGAN + VAE samples.
    Returns:
        ((N,) predicted classes of the second messages, whether every pair's masks were identical).
    """
    if len(first_latents) != len(second_latents) or len(first_latents) != len(first_labels):
        raise ValueError(f"the two messages of each pair must have equal lengths, got {len(first_latents)}, "
                         f"{len(second_latents)} and {len(first_labels)} labels")
    rng = np.random.default_rng(seed)
    estimates, identical = [], True
    zeros = torch.zeros(message_length, scheme.latent_dim)
    for start in range(0, len(first_latents), message_length):
        key, nonce = SecretKey(rng.bytes(KEY_BYTES)), rng.bytes(NONCE_BYTES)
        first_key = derive_message_keys(key, nonce).mask_key
        second_key = first_key if reuse else derive_message_keys(key, rng.bytes(NONCE_BYTES)).mask_key
        identical &= scheme.mask(zeros, first_key) == scheme.mask(zeros, second_key)
        chunk = slice(start, start + message_length)
        count = len(first_latents[chunk])
        first = payload_features(scheme, scheme.mask(first_latents[chunk], first_key), count)
        second = payload_features(scheme, scheme.mask(second_latents[chunk], second_key), count)
        estimates.append(class_means[first_labels[chunk]] + latent_difference(scheme, first, second))
    with torch.no_grad():
        predicted = classifier(torch.cat(estimates)).argmax(1)
    return predicted, bool(identical)


def class_means(latents: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, d) mean latent of each class (zeros for a class without samples)."""
    sums = torch.zeros(num_classes, latents.shape[1]).index_add_(0, labels, latents.float())
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return sums / counts


@dataclass(frozen=True)
class NonceReuseResult:
    """Second-message accuracy with a reused nonce and, as the control, with fresh nonces."""

    reused: AttackResult
    fresh: AttackResult
    masks_identical: bool


def nonce_reuse_suite(schemes: Sequence[MaskScheme], data: AttackData, seed: int = 0) -> list[NonceReuseResult]:
    """`nonce_reuse_attack` on every scheme: the test characters, shuffled, form pairs of messages.

    The class means come from the attacker's own training latents (public cGAN + VAE).
    """
    means = class_means(data.train_latents, data.train_labels, data.num_classes)
    order = torch.randperm(len(data.test_latents), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    if half == 0:
        raise ValueError(f"need at least 2 test characters, got {len(order)}")
    first, second = order[:half], order[half : 2 * half]
    latents, labels = data.test_latents, data.test_labels
    results = []
    for index, scheme in enumerate(schemes):
        scored = []
        for reuse in (True, False):
            predicted, identical = nonce_reuse_attack(
                scheme, latents[first], labels[first], latents[second], means, data.classifier,
                data.message_length, int(np.random.default_rng([seed, index]).integers(2**32)), reuse=reuse)
            accuracy = float((predicted == labels[second]).float().mean())
            note = "one key, the SAME nonce" if reuse else "control: one key, fresh nonces"
            scored.append((scored_result(scheme.name, "nonce-reuse" if reuse else "nonce-fresh", accuracy, half,
                                         data.chance, data.receiver_accuracy, note), identical))
        results.append(NonceReuseResult(scored[0][0], scored[1][0], scored[0][1]))
    return results
