"""Text <-> handwriting <-> latents <-> authenticated ciphertexts, batched.

Encrypt: every character of every message goes through the cGAN (a fresh image) and the VAE
encoder (its posterior mean) in one batched forward pass; each message then gets a fresh nonce,
its own HKDF subkeys, its mask, its encrypted space flags and an HMAC tag. Decrypt checks the tag
before anything else, removes the mask, and classifies all latents in one pass.

What protects the text is the keyed mask and the tag (standard primitives from `cryptography`);
the networks only turn characters into latents and back, with public weights.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from crypson.cipher.alphabet import Alphabet
from crypson.cipher.envelope import Envelope, seal, verify
from crypson.cipher.keys import SecretKey, derive_message_keys, new_nonce, xor_with_stream
from crypson.cipher.masks import MaskScheme, get_scheme
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE

MODEL_KINDS = ("cgan", "vae", "classifier")
# Mask settings travel in the authenticated header next to the model versions, so a receiver
# never unmasks with a scale other than the sender's.
SIGMA_KEY, RANGE_KEY = "mask.gaussian_sigma", "mask.modular_range"


class ModelMismatchError(ValueError):
    """The ciphertext was made with other models than the ones loaded to decrypt it."""


@dataclass
class CipherModels:
    """The three trained networks, their classes and registry versions, on one device."""

    generator: Generator
    vae: VAE
    classifier: LatentClassifier
    classes: tuple[str, ...]
    versions: dict[str, str] = field(default_factory=dict)  # registered name -> version

    def __post_init__(self) -> None:
        for module in (self.generator, self.vae, self.classifier):
            module.eval()
        self.alphabet = Alphabet(self.classes)

    @property
    def device(self) -> torch.device:
        return self.generator.label_embedding.weight.device


@dataclass(frozen=True)
class Decrypted:
    text: str
    latents: torch.Tensor  # (N, d) unmasked latents, CPU
    is_space: np.ndarray  # (N,) bool


@torch.no_grad()
def encode_characters(models: CipherModels, class_index: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """class indices (N,) -> VAE posterior means (N, d) of freshly generated images, on CPU."""
    latents = []
    noise_source = torch.Generator(device=models.device).manual_seed(secrets.randbits(63))
    for start in range(0, len(class_index), batch_size):
        labels = class_index[start : start + batch_size].to(models.device)
        noise = models.generator.sample_noise(len(labels), noise_source)
        images = models.generator.to_unit_range(models.generator(noise, labels))  # (B, 1, 32, 32) in [0, 1]
        latents.append(models.vae.encode_mean(images).float().cpu())
    return torch.cat(latents) if latents else torch.zeros(0, models.vae.latent_dim)


@torch.no_grad()
def classify_latents(models: CipherModels, latents: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """latents (N, d) -> class indices (N,), on CPU."""
    predicted = [models.classifier(latents[s : s + batch_size].to(models.device)).argmax(1).cpu()
                 for s in range(0, len(latents), batch_size)]
    return torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)


def _context(models: CipherModels, scheme: MaskScheme) -> dict[str, str]:
    context = dict(models.versions)
    if scheme.name == "keyed-gaussian":
        context[SIGMA_KEY] = repr(float(scheme.sigma))
    if scheme.name == "keyed-modular":
        context[RANGE_KEY] = repr(float(scheme.range))
    return context


def encrypt(models: CipherModels, texts: list[str], key: SecretKey, scheme: MaskScheme,
            replace: str | None = None) -> list[Envelope]:
    """Encrypt each text into its own envelope (fresh nonce each).

    Args:
        models: the sender's networks.
        texts: messages; every character must be in `models.alphabet` (or `replace` given).
        key: the shared secret key.
        scheme: the mask scheme.
        replace: alphabet character to substitute for unsupported ones; None refuses them.
    """
    encoded = [models.alphabet.encode(text, replace) for text in texts]
    class_index = np.concatenate([e.class_index for e in encoded]) if encoded else np.zeros(0, np.int64)
    spaces = class_index < 0
    # A space's slot carries a random decoy character: its latent looks like any other, and only
    # the encrypted flag says it is a space.
    class_index[spaces] = np.random.default_rng(secrets.randbits(128)).integers(0, len(models.classes), spaces.sum())
    latents = encode_characters(models, torch.from_numpy(class_index))
    envelopes, start = [], 0
    context = _context(models, scheme)
    for message in encoded:
        count = len(message.class_index)
        nonce = new_nonce()
        keys = derive_message_keys(key, nonce)
        payload = scheme.mask(latents[start : start + count], keys.mask_key)
        flags = xor_with_stream(keys.flags_key, np.packbits(message.is_space).tobytes())
        envelopes.append(seal(scheme.name, nonce, context, count, flags, payload, keys.mac_key))
        start += count
    return envelopes


def scheme_for(envelope: Envelope, latent_dim: int) -> MaskScheme:
    """The mask scheme an (authenticated) envelope names, with its recorded settings."""
    settings = {}
    if SIGMA_KEY in envelope.models:
        settings["gaussian_sigma"] = float(envelope.models[SIGMA_KEY])
    if RANGE_KEY in envelope.models:
        settings["modular_range"] = float(envelope.models[RANGE_KEY])
    return get_scheme(envelope.scheme, latent_dim, **settings)


def decrypt(models: CipherModels, envelopes: list[Envelope], key: SecretKey) -> list[Decrypted]:
    """Verify every tag first, then unmask and classify all characters in one pass.

    Raises:
        AuthenticationError: wrong key or a modified ciphertext (no plaintext is produced).
        ModelMismatchError: the envelope names other model versions than the loaded ones.
    """
    unmasked, flags = [], []
    for envelope in envelopes:
        keys = derive_message_keys(key, envelope.nonce)
        verify(envelope, keys.mac_key)
        wanted = {k: v for k, v in envelope.models.items() if not k.startswith("mask.")}
        loaded = {k: models.versions.get(k) for k in wanted}
        if models.versions and wanted != loaded:
            raise ModelMismatchError(f"the ciphertext was made with models {wanted}, the loaded ones are {loaded}")
        scheme = scheme_for(envelope, models.vae.latent_dim)
        unmasked.append(scheme.unmask(envelope.payload, envelope.count, keys.mask_key))
        bits = xor_with_stream(keys.flags_key, envelope.flags)
        flags.append(np.unpackbits(np.frombuffer(bits, np.uint8))[: envelope.count].astype(bool))
    latents = torch.cat(unmasked) if unmasked else torch.zeros(0, models.vae.latent_dim)
    predicted = classify_latents(models, latents).numpy()
    results, start = [], 0
    for envelope, is_space in zip(envelopes, flags):
        end = start + envelope.count
        text = models.alphabet.decode(predicted[start:end], is_space)
        results.append(Decrypted(text, latents[start:end], is_space))
        start = end
    return results


@torch.no_grad()
def decode_images(models: CipherModels, decrypted: Decrypted) -> torch.Tensor:
    """The receiver's view of the handwriting: decoder images (N, 1, 32, 32) in [0, 1]; spaces blank."""
    images = models.vae.decoder(decrypted.latents.to(models.device)).float().cpu()
    images[torch.from_numpy(decrypted.is_space)] = 0
    return images
