"""What survives the trip: end-to-end character error rate, and accuracy under channel noise.

End to end, every message goes through the real codec (`cipher.codec.encrypt` / `decrypt`): fresh
cGAN handwriting, the VAE, the keyed mask, the authenticated envelope and back. Its errors are the
networks' errors: the mask and the tag are exact. Misreads are allowed there, not refused (this
measures the cipher): a character the sender's check could not fix goes out and is counted.

Channel noise: Gaussian noise of a given standard deviation, in latent units, is added to the
masked numbers of each payload, which is then unmasked with the right key and classified. The
authenticated envelope itself refuses ANY modified ciphertext (its HMAC tag fails), so through
the codec noise means refusal; this curve says what each mask scheme would tolerate on a channel
that delivers noisy numbers behind its own integrity check (an analog or error-corrected link).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crypson.cipher.alphabet import Alphabet
from crypson.cipher.codec import CipherModels, decrypt, encrypt
from crypson.cipher.keys import KEY_BYTES, NONCE_BYTES, SecretKey, derive_message_keys
from crypson.cipher.masks import UINT16_MODULUS, MaskScheme
from crypson.evaluate.quality import character_error_rate


def supported_corpus(messages: tuple[str, ...] | list[str], alphabet: Alphabet) -> tuple[list[str], int]:
    """The messages with characters outside the alphabet removed, and how many were removed."""
    lookup = alphabet.lookup
    kept = ["".join(c for c in message if c == " " or c in lookup) for message in messages]
    removed = sum(len(message) for message in messages) - sum(len(message) for message in kept)
    return [message for message in kept if message.strip()], removed


def end_to_end_error_rate(models: CipherModels, messages: list[str], scheme: MaskScheme, key: SecretKey,
                          candidates: int) -> tuple[float, int, list[str], list[str]]:
    """Encrypt and decrypt every message through the codec; CER against the case-folded plaintext.

    The reference is what a perfect receiver returns: the message with each letter folded onto the
    class the split keeps (cipher/alphabet.py), so case merging is not counted as an error. The
    sender may send misreads here (`allow_misread`); each is a character decoded as another class.

    Returns:
        (character error rate, characters decoded as another class, decoded texts, references).
    """
    encoded = [models.alphabet.encode(message) for message in messages]
    references = [models.alphabet.decode(e.class_index, e.is_space) for e in encoded]
    envelopes = encrypt(models, messages, key, scheme, candidates=candidates, allow_misread=True)
    decoded = [result.text for result in decrypt(models, envelopes, key)]
    # Length and spaces always survive (the count and the flags are exact), so errors are substitutions.
    misread = sum(a != b for text, reference in zip(decoded, references) for a, b in zip(text, reference))
    return character_error_rate(decoded, references), misread, decoded, references


def add_channel_noise(scheme: MaskScheme, payload: bytes, noise: np.ndarray) -> bytes:
    """Add noise (one value per payload number, in latent units) to a payload's numbers.

    An exact scheme (keyed-modular): the noise is scaled to quantisation steps, rounded and added
    mod 2^16 to the words; the float schemes: added to the values, rounded back to their float32 /
    float16 format.
    """
    dtype = scheme.payload_dtype
    numbers = np.frombuffer(payload, dtype=dtype)
    if noise.shape != numbers.shape:
        raise ValueError(f"need one noise value per payload number ({numbers.size}), got {noise.size}")
    if scheme.exact:
        steps = np.round(noise * scheme.levels / (2 * scheme.range)).astype(np.int64)
        return ((numbers.astype(np.int64) + steps) % UINT16_MODULUS).astype(dtype).tobytes()
    noisy = numbers.astype(np.float64) + noise
    return noisy.astype(dtype).tobytes()


def channel_noise_accuracy(scheme: MaskScheme, latents: torch.Tensor, labels: torch.Tensor, classifier: nn.Module,
                           noise_levels: tuple[float, ...] | list[float], message_length: int,
                           seed: int) -> list[float]:
    """The receiver's accuracy, with the right key, after channel noise of each standard deviation.

    Args:
        latents, labels: (N, d) float32 CPU latents of cGAN images and their (N,) classes.
        noise_levels: noise standard deviations in latent units, each >= 0.
    Returns:
        One accuracy per noise level.
    """
    if any(level < 0 for level in noise_levels):
        raise ValueError(f"noise levels must be >= 0, got {list(noise_levels)}")
    rng = np.random.default_rng(seed)
    unmasked: list[list[torch.Tensor]] = [[] for _ in noise_levels]
    for start in range(0, len(latents), message_length):
        message = latents[start : start + message_length]
        mask_key = derive_message_keys(SecretKey(rng.bytes(KEY_BYTES)), rng.bytes(NONCE_BYTES)).mask_key
        payload = scheme.mask(message, mask_key)
        for index, level in enumerate(noise_levels):
            noise = level * rng.standard_normal(len(message) * scheme.latent_dim)
            unmasked[index].append(scheme.unmask(add_channel_noise(scheme, payload, noise), len(message), mask_key))
    with torch.no_grad():
        return [float((classifier(torch.cat(rows)).argmax(1) == labels).float().mean()) for rows in unmasked]
