"""Text <-> handwriting <-> latents <-> authenticated ciphertexts, batched.

Encrypt: every character of every message gets the same fixed number k of candidate images
(`candidates`) from the cGAN, encoded by the VAE (posterior means), in one batched pass. The sender
reads each candidate back with its copy of the receiver's classifier, on the latent as the mask
scheme delivers it, and keeps the one read correctly with the largest margin. The networks see N * k
inputs for N characters whatever the letters, so encryption time shows the length only (redrawing
just the misread characters, in rounds, would show the letters). A message with a character that
no candidate reads back is refused unless misreads are allowed. Each message then gets a fresh
nonce, its own HKDF subkeys, its mask, its encrypted space flags and an HMAC tag. Decrypt checks
the tag before anything else, removes the mask, and classifies all latents in one pass.

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
from crypson.cipher.envelope import Envelope, check_stream, seal, verify
from crypson.cipher.keys import SecretKey, derive_message_keys, new_nonce, xor_with_stream
from crypson.cipher.masks import MASK_SETTINGS, MaskScheme, get_scheme
from crypson.inference import chunked, inference_chunk
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE

MODEL_KINDS = ("cgan", "vae", "classifier")
# Mask settings travel in the authenticated header next to the model versions, as "mask.<setting>"
# (e.g. mask.gaussian_sigma), so a receiver never unmasks with a scale other than the sender's.
SETTING_PREFIX = "mask."
# Candidate images per character; params.yaml's cipher.candidates sets it from the measured
# single-image accuracy (the security-and-quality report shows the calculation).
DEFAULT_CANDIDATES = 4  # params.yaml cipher.candidates (tests/unit/test_config.py holds them equal)

log = logging.getLogger(__name__)
# Its one warning (characters sent misread, when allowed) must reach stderr or the server's log even where a library
# has raised the root logger's level (alembic does, under MLflow's SQL stores).
log.setLevel(logging.WARNING)


class ModelMismatchError(ValueError):
    """The ciphertext was made with other models than the ones loaded to decrypt it."""


class MisreadError(ValueError):
    """Some characters have no candidate the receiver's classifier reads correctly; nothing is sent."""


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
class Checked:
    """The sender's chosen latents and what its check found, for N characters of k candidates each."""

    latents: torch.Tensor  # (N, d) float32, CPU: each character's candidate with the largest margin
    margin: torch.Tensor  # (N,) float32: that candidate's margin (> 0: the receiver reads it correctly)
    candidate_read: torch.Tensor  # (N, k) bool: each candidate read correctly on its own

    @property
    def read_back(self) -> torch.Tensor:
        """(N,) bool: the chosen candidate is read correctly (some candidate is)."""
        return self.margin > 0


def fresh_noise_source(models: CipherModels) -> torch.Generator:
    """A noise generator on the models' device, seeded from the OS's randomness."""
    return torch.Generator(device=models.device).manual_seed(secrets.randbits(63))


def encode_characters(models: CipherModels, class_index: torch.Tensor, batch_size: int | None = None,
                      noise_source: torch.Generator | None = None) -> torch.Tensor:
    """class indices (N,) -> VAE posterior means (N, d) of freshly generated images, on CPU.

    batch_size: images per forward pass; None: what suits the device (crypson.inference).
    noise_source: the cGAN's noise generator (on the models' device); None draws a fresh seed. Each
        chunk draws its noise in turn.
    """
    noise_source = noise_source if noise_source is not None else fresh_noise_source(models)

    def encode(labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(models.device)
        noise = models.generator.sample_noise(len(labels), noise_source)
        images = models.generator.to_unit_range(models.generator(noise, labels))  # (B, 1, 32, 32) in [0, 1]
        return models.vae.encode_mean(images).float().cpu()

    return chunked(encode, class_index, batch_size or inference_chunk(models.device))


def receiver_logits(models: CipherModels, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """latents (N, d) -> the receiver's classifier logits (N, K), on CPU."""
    return chunked(lambda batch: models.classifier(batch.to(models.device)).float().cpu(), latents,
                   batch_size or inference_chunk(models.device))


def classify_latents(models: CipherModels, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """latents (N, d) -> class indices (N,), on CPU."""
    return receiver_logits(models, latents, batch_size).argmax(1)


def check_candidates(candidates: object) -> int:
    """`candidates` itself when it is an int >= 1; a ValueError naming it otherwise."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    return candidates


def true_class_margin(logits: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """logits (M, K), classes (M,) -> (M,): the true class's logit minus the largest other logit.

    Positive exactly when the classifier names the true class (ties count as misread).
    """
    column = class_index.long()[:, None]  # (M, 1)
    others = logits.scatter(1, column, float("-inf"))  # (M, K), the true class left out
    return logits.gather(1, column).squeeze(1) - others.amax(1)


def best_candidates(latents: torch.Tensor, logits: torch.Tensor, class_index: torch.Tensor,
                    candidates: int) -> Checked:
    """Keep each character's candidate with the largest margin (a correct one whenever there is one).

    Args:
        latents: (N * k, d) candidates, character-major: character i's are rows i*k .. i*k + k - 1.
        logits: (N * k, K) the receiver's classifier on those candidates, as it will receive them.
        class_index: (N,) int64 classes of the characters.
        candidates: k.
    Returns:
        Checked for the N characters.
    """
    count = len(class_index)
    margin = true_class_margin(logits, class_index.repeat_interleave(candidates)).view(count, candidates)
    best = margin.argmax(1)  # (N,)
    rows = torch.arange(count)
    chosen = latents.view(count, candidates, latents.shape[-1])[rows, best]  # (N, d)
    return Checked(chosen, margin[rows, best], margin > 0)


def draw_candidates(models: CipherModels, class_index: torch.Tensor, candidates: int = DEFAULT_CANDIDATES,
                    received: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    noise_source: torch.Generator | None = None) -> Checked:
    """The sender's check, constant work: k candidate images per character, in one batched pass.

    The generator, the VAE and the classifier each see exactly N * k inputs, in chunks whose sizes
    depend on N * k only (crypson.inference), whatever the classes.

    Args:
        class_index: (N,) int64 classes to draw.
        candidates: k, images per character, >= 1 (1: the networks' raw path, still checked).
        received: latents -> what the receiver gets back (`MaskScheme.received`); None: unchanged.
        noise_source: the cGAN's noise generator; None draws a fresh seed (the cipher's case).
    """
    candidates = check_candidates(candidates)
    wanted = class_index.repeat_interleave(candidates)  # (N * k,), character-major
    latents = encode_characters(models, wanted, noise_source=noise_source)  # (N * k, d)
    logits = receiver_logits(models, received(latents) if received is not None else latents)  # (N * k, K)
    return best_candidates(latents, logits, class_index, candidates)


def _context(models: CipherModels, scheme: MaskScheme) -> dict[str, str]:
    """The envelope's authenticated `models` field: the model versions and the scheme's settings."""
    settings = {SETTING_PREFIX + name: repr(float(value)) for name, value in scheme.setting_values().items()}
    return {**models.versions, **settings}


def encrypt(models: CipherModels, texts: list[str], key: SecretKey, scheme: MaskScheme,
            replace: str | None = None, candidates: int = DEFAULT_CANDIDATES,
            allow_misread: bool = False, one_stream: bool = True) -> list[Envelope]:
    """Encrypt each text into its own envelope (fresh nonce each).

    Args:
        models: the sender's networks.
        texts: messages; every character must be in `models.alphabet` (or `replace` given).
        key: the shared secret key.
        scheme: the mask scheme.
        replace: alphabet character to substitute for unsupported ones; None refuses them.
        candidates: cGAN images drawn for every character; the one the receiver's classifier reads
            back with the largest margin is sent (`draw_candidates`).
        allow_misread: send a character that no candidate reads back (its largest-margin candidate),
            with a warning that gives the count only; False refuses the whole call.
        one_stream: the texts are the parts of one stream (the lines of one input), bound in order
            under their tags (`envelope.check_stream`); False: each text is a stream of its own (the
            server's independent rows).
    Raises:
        MisreadError: a character has no candidate read back, and misreads are not allowed. The
            message gives the count, never the text.
    """
    encoded = [models.alphabet.encode(text, replace) for text in texts]
    class_index = np.concatenate([e.class_index for e in encoded]) if encoded else np.zeros(0, np.int64)
    spaces = class_index < 0
    # A space's slot carries a random decoy character: its latent looks like any other, and only
    # the encrypted flag says it is a space.
    class_index[spaces] = np.random.default_rng(secrets.randbits(128)).integers(0, len(models.classes), spaces.sum())
    checked = draw_candidates(models, torch.from_numpy(class_index), candidates, scheme.received)
    misread = int((~checked.read_back.numpy() & ~spaces).sum())  # a space's decoy is never read as a letter
    if misread:
        # The count of misread characters only: a total of letters would give away the number of spaces.
        found = (f"{misread} character{'s' if misread > 1 else ''} would be misread by the receiver's classifier "
                 f"({candidates} candidate image{'s' if candidates > 1 else ''} each)")
        if not allow_misread:
            raise MisreadError(f"{found}; nothing was sent. The models are too weak for them: retrain, raise "
                               "cipher.candidates, or allow misreads (--allow-misread)")
        log.warning("%s; they are sent misread (misreads allowed)", found)
    latents = checked.latents
    envelopes, start = [], 0
    context = _context(models, scheme)
    stream = new_nonce()
    for part, message in enumerate(encoded):
        count = len(message.class_index)
        nonce = new_nonce()
        keys = derive_message_keys(key, nonce)
        payload = scheme.mask(latents[start : start + count], keys.mask_key)
        flags = xor_with_stream(keys.flags_key, np.packbits(message.is_space).tobytes())
        place = {"stream": stream, "part": part, "final": part == len(encoded) - 1} if one_stream else {}
        envelopes.append(seal(scheme.name, nonce, context, count, flags, payload, keys.mac_key, **place))
        start += count
    return envelopes


def scheme_for(envelope: Envelope, latent_dim: int) -> MaskScheme:
    """The mask scheme an (authenticated) envelope names, with its recorded settings."""
    settings = {name: float(envelope.models[SETTING_PREFIX + name]) for name in MASK_SETTINGS
                if SETTING_PREFIX + name in envelope.models}
    return get_scheme(envelope.scheme, latent_dim, **settings)


def decrypt(models: CipherModels, envelopes: list[Envelope], key: SecretKey,
            one_stream: bool = True) -> list[Decrypted]:
    """Verify every tag first, then unmask and classify all characters in one pass.

    Args:
        one_stream: the envelopes must be one whole stream, in order (the lines of one encryption);
            False: each must be a whole one-part stream (the server's independent rows).
    Raises:
        AuthenticationError: wrong key or a modified ciphertext (no plaintext is produced).
        StreamError: a part missing, repeated, reordered, foreign, or the final part missing.
        ModelMismatchError: the envelope names other model versions than the loaded ones.
    """
    unmasked, flags = [], []
    for envelope in envelopes:
        keys = derive_message_keys(key, envelope.nonce)
        verify(envelope, keys.mac_key)
        wanted = {k: v for k, v in envelope.models.items() if not k.startswith(SETTING_PREFIX)}
        loaded = {k: models.versions.get(k) for k in wanted}
        if models.versions and wanted != loaded:
            raise ModelMismatchError(f"the ciphertext was made with models {wanted}, the loaded ones are {loaded}")
        scheme = scheme_for(envelope, models.vae.latent_dim)
        unmasked.append(scheme.unmask(envelope.payload, envelope.count, keys.mask_key))
        bits = xor_with_stream(keys.flags_key, envelope.flags)
        flags.append(np.unpackbits(np.frombuffer(bits, np.uint8))[: envelope.count].astype(bool))
    for stream in [envelopes] if one_stream else [[envelope] for envelope in envelopes]:
        check_stream(stream)
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
