"""Text <-> handwriting <-> latents <-> authenticated ciphertexts, batched.

Encrypt: every character of every message goes through the cGAN (a fresh image) and the VAE
encoder (its posterior mean) in one batched forward pass. The sender then checks what the receiver
will read (its copy of the classifier, on the latents as the mask scheme delivers them) and draws a
fresh image for each character that would be misread, in batched rounds, up to `max_draws` images a
character. Each message then gets a fresh nonce, its own HKDF subkeys, its mask, its encrypted space
flags and an HMAC tag. Decrypt checks the tag before anything else, removes the mask, and classifies
all latents in one pass.

What protects the text is the keyed mask and the tag (standard primitives from `cryptography`);
the networks only turn characters into latents and back, with public weights.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from crypson.cipher.alphabet import Alphabet
from crypson.cipher.envelope import Envelope, seal, verify
from crypson.cipher.keys import SecretKey, derive_message_keys, new_nonce, xor_with_stream
from crypson.cipher.masks import MaskScheme, get_scheme
from crypson.inference import inference_chunk
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE

MODEL_KINDS = ("cgan", "vae", "classifier")
# Mask settings travel in the authenticated header next to the model versions, so a receiver
# never unmasks with a scale other than the sender's.
SIGMA_KEY, RANGE_KEY = "mask.gaussian_sigma", "mask.modular_range"
# Images the sender draws at most for one character before sending one its classifier misreads.
DEFAULT_MAX_DRAWS = 64

log = logging.getLogger(__name__)
# Its one warning (characters sent misread) must reach stderr or the server's log even where a library
# has raised the root logger's level (alembic does, under MLflow's SQL stores).
log.setLevel(logging.WARNING)


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


@dataclass(frozen=True)
class Drawn:
    """The sender's latents and what its check found."""

    latents: torch.Tensor  # (N, d) float32, CPU
    draws: torch.Tensor  # (N,) int64: images drawn for each character, 1..max_draws
    read_back: torch.Tensor  # (N,) bool: the receiver's classifier names the character


def fresh_noise_source(models: CipherModels) -> torch.Generator:
    """A noise generator on the models' device, seeded from the OS's randomness."""
    return torch.Generator(device=models.device).manual_seed(secrets.randbits(63))


@torch.no_grad()
def encode_characters(models: CipherModels, class_index: torch.Tensor, batch_size: int | None = None,
                      noise_source: torch.Generator | None = None) -> torch.Tensor:
    """class indices (N,) -> VAE posterior means (N, d) of freshly generated images, on CPU.

    batch_size: images per forward pass; None: what suits the device (crypson.inference).
    noise_source: the cGAN's noise generator (on the models' device); None draws a fresh seed.
    """
    latents = []
    batch_size = batch_size or inference_chunk(models.device)
    noise_source = noise_source if noise_source is not None else fresh_noise_source(models)
    for start in range(0, len(class_index), batch_size):
        labels = class_index[start : start + batch_size].to(models.device)
        noise = models.generator.sample_noise(len(labels), noise_source)
        images = models.generator.to_unit_range(models.generator(noise, labels))  # (B, 1, 32, 32) in [0, 1]
        latents.append(models.vae.encode_mean(images).float().cpu())
    return torch.cat(latents) if latents else torch.zeros(0, models.vae.latent_dim)


@torch.no_grad()
def classify_latents(models: CipherModels, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """latents (N, d) -> class indices (N,), on CPU."""
    batch_size = batch_size or inference_chunk(models.device)
    predicted = [models.classifier(latents[s : s + batch_size].to(models.device)).argmax(1).cpu()
                 for s in range(0, len(latents), batch_size)]
    return torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)


def draw_until_read(encode: Callable[[torch.Tensor], torch.Tensor], classify: Callable[[torch.Tensor], torch.Tensor],
                    class_index: torch.Tensor, max_draws: int, min_batch: int = 32) -> Drawn:
    """Draw a latent for every character; redraw those `classify` misreads, up to `max_draws` each.

    Each round re-draws all still-misread characters in one batch. When few are left, each gets
    several candidates in the same batch (enough to fill `min_batch`, within its remaining draws) and
    keeps the first one read correctly, so a few hard characters do not cost many tiny rounds. A
    character still misread after `max_draws` images keeps its last one (`read_back` is False there).

    Args:
        encode: class indices (M,) -> latents (M, d) of fresh images (new noise on every call).
        classify: latents (M, d) -> class indices (M,), as the receiver will read them.
        class_index: (N,) int64 classes to draw.
        max_draws: images per character at most, >= 1 (1: no redraw, the networks' raw path).
        min_batch: images per round below which the remaining characters get several candidates.
    Returns:
        Drawn; `draws` counts the images up to the one kept (candidates after it are not counted).
    """
    if isinstance(max_draws, bool) or not isinstance(max_draws, int) or max_draws < 1:
        raise ValueError(f"max_draws must be an int >= 1, got {max_draws!r}")
    latents = encode(class_index)
    draws = torch.ones(len(class_index), dtype=torch.int64)
    pending = torch.nonzero(classify(latents) != class_index).flatten()
    used = 1
    while len(pending) and used < max_draws:
        count = len(pending)
        per_character = min(max(1, min_batch // count), max_draws - used)
        wanted = class_index[pending].repeat_interleave(per_character)  # (count * per_character,)
        candidates = encode(wanted)
        read = (classify(candidates) == wanted).view(count, per_character)
        found = read.any(1)
        first = read.int().argmax(1)  # the first candidate read correctly (0 when none is)
        kept = torch.where(found, first, per_character - 1)
        latents[pending] = candidates.view(count, per_character, -1)[torch.arange(count), kept]
        draws[pending] += kept + 1
        used += per_character
        pending = pending[~found]
    read_back = torch.ones(len(class_index), dtype=torch.bool)
    read_back[pending] = False
    return Drawn(latents, draws, read_back)


def draw_latents(models: CipherModels, class_index: torch.Tensor, max_draws: int = DEFAULT_MAX_DRAWS,
                 received: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 noise_source: torch.Generator | None = None) -> Drawn:
    """The sender's latents for these classes, checked against its copy of the receiver's classifier.

    Args:
        received: latents -> what the receiver gets back (`MaskScheme.received`); None: unchanged.
        noise_source: the cGAN's noise generator; None draws a fresh seed (the cipher's case).
    """
    noise_source = noise_source if noise_source is not None else fresh_noise_source(models)
    received = received if received is not None else (lambda latents: latents)
    return draw_until_read(lambda index: encode_characters(models, index, noise_source=noise_source),
                           lambda latents: classify_latents(models, received(latents)), class_index, max_draws)


def _context(models: CipherModels, scheme: MaskScheme) -> dict[str, str]:
    context = dict(models.versions)
    if scheme.name == "keyed-gaussian":
        context[SIGMA_KEY] = repr(float(scheme.sigma))
    if scheme.name == "keyed-modular":
        context[RANGE_KEY] = repr(float(scheme.range))
    return context


def encrypt(models: CipherModels, texts: list[str], key: SecretKey, scheme: MaskScheme,
            replace: str | None = None, max_draws: int = DEFAULT_MAX_DRAWS) -> list[Envelope]:
    """Encrypt each text into its own envelope (fresh nonce each).

    Args:
        models: the sender's networks.
        texts: messages; every character must be in `models.alphabet` (or `replace` given).
        key: the shared secret key.
        scheme: the mask scheme.
        replace: alphabet character to substitute for unsupported ones; None refuses them.
        max_draws: cGAN images drawn at most for one character until the receiver's classifier
            reads it back (1: no check). A character still misread is sent anyway, with a warning
            that gives the count only (never the text).
    """
    encoded = [models.alphabet.encode(text, replace) for text in texts]
    class_index = np.concatenate([e.class_index for e in encoded]) if encoded else np.zeros(0, np.int64)
    spaces = class_index < 0
    # A space's slot carries a random decoy character: its latent looks like any other, and only
    # the encrypted flag says it is a space.
    class_index[spaces] = np.random.default_rng(secrets.randbits(128)).integers(0, len(models.classes), spaces.sum())
    drawn = draw_latents(models, torch.from_numpy(class_index), max_draws, scheme.received)
    latents = drawn.latents
    misread = int((~drawn.read_back.numpy() & ~spaces).sum())  # a space's decoy is never read as a letter
    if misread:
        log.warning("%d of %d characters are still misread by the receiver's classifier after %d images each; "
                    "they are sent as drawn. The models are too weak for them: retrain, or raise cipher.max_draws",
                    misread, int((~spaces).sum()), max_draws)
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
