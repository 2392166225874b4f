"""Cipher throughput and ciphertext size, next to AES-256-GCM, a letter-by-letter loop and the old
redraw loop, in one run.

Characters per second of `crypson.cipher.codec.encrypt` / `decrypt` (batched: every character of a
message through each network in one forward pass, k = `cipher.candidates` candidate images each: the
sender's constant-work check) at several message sizes, against:
- AES-256-GCM from `cryptography` on the same text (a ratio: what the networks cost);
- a letter-by-letter loop over the same networks, one image and one forward pass per character, the
  pattern of the reference implementation (a ratio: what batching buys);
- the redraw loop the sender used before the constant-work check (`REDRAW BASELINE` below): a
  first image for every character, then batched rounds redrawing only the misread ones, up to
  --max-draws images. Its time depends on the letters (how often each class is misread).
Then encryption time for texts of one length made of different letters (all 'A', all 'W', digits, a
random mix): constant work must take the same time for each, within the repeat-to-repeat noise;
the redraw loop need not.

The network cost per image does not depend on the weights, so untrained networks of the configured
sizes (--sizes) time the constant-work sender faithfully (misreads allowed: untrained networks
misread nearly everything). The redraw loop's work depends on how good the models are: pass a
pipeline's output folder with --models (models/ under it, e.g. after `dvc repro`) to compare the two.

    python bench/cipher_throughput.py [--device auto|cpu|cuda] [--sizes default|report|tiny]
                                      [--lengths 16 256 4096] [--equal-length 4096] [--models .]
                                      [--candidates K] [--max-draws N]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import secrets
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypson import model_files
from crypson.cipher import codec
from crypson.cipher.envelope import Envelope, seal, to_bytes
from crypson.cipher.keys import SecretKey, derive_message_keys, generate_key, new_nonce, xor_with_stream
from crypson.cipher.loading import from_directory
from crypson.cipher.masks import MaskScheme, get_scheme
from crypson.config import load_config
from crypson.data.emnist import SPLIT_CLASSES
from crypson.compute import resolve_device

REPO = Path(__file__).resolve().parents[1]


def build_models(config, device: torch.device) -> codec.CipherModels:
    classes = SPLIT_CLASSES[config.data.split]
    generator, vae, classifier = (model_files.build(kind, model_files.hparams_from_config(kind, config, len(classes)))
                                  for kind in ("generator", "vae", "classifier"))
    return codec.CipherModels(generator.to(device), vae.to(device), classifier.to(device), tuple(classes))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_seconds(function: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one `function()` call, the device's queue drained on both sides."""
    _sync(device)
    started = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - started


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `function()` over `repeats` runs, after one warm-up."""
    function()
    return statistics.median(run_seconds(function, device) for _ in range(repeats))


@torch.no_grad()
def letter_by_letter(models: codec.CipherModels, text: str, scheme, key) -> str:
    """One network call per character, as the reference loop does (same networks, same mask)."""
    latents = []
    for char in text:
        index = torch.tensor([models.alphabet.lookup.get(char, 0)], device=models.device)
        image = models.generator.to_unit_range(models.generator(models.generator.sample_noise(1), index))
        latents.append(models.vae.encode_mean(image).cpu())
    payload = scheme.mask(torch.cat(latents), key.material)
    unmasked = scheme.unmask(payload, len(text), key.material)
    return "".join(models.classes[int(models.classifier(row[None].to(models.device)).argmax())] for row in unmasked)


# ---- REDRAW BASELINE ---------------------------------------------------------------------------
# The sender's check before constant work, as it was in crypson.cipher.codec (draw_until_read and
# encrypt with cipher.max_draws), kept here ONLY as the baseline the bench compares against. Its
# rounds depend on which characters the classifier misreads, so its time depends on the letters.

def redraw_until_read(encode: Callable[[torch.Tensor], torch.Tensor], classify: Callable[[torch.Tensor], torch.Tensor],
                      class_index: torch.Tensor, max_draws: int,
                      min_batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A latent for every character; those `classify` misreads redrawn in batched rounds, up to
    `max_draws` images each (a few last ones get several candidates a round). Returns the latents
    (N, d) and the images drawn for each character up to the one kept (N,)."""
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
    return latents, draws


def redraw_encrypt(models: codec.CipherModels, text: str, key: SecretKey, scheme: MaskScheme,
                   max_draws: int) -> tuple[Envelope, float]:
    """One text through the redraw loop's encrypt; the envelope and the mean images per character."""
    encoded = models.alphabet.encode(text)
    class_index = encoded.class_index.copy()
    spaces = class_index < 0
    class_index[spaces] = np.random.default_rng(secrets.randbits(128)).integers(0, len(models.classes), spaces.sum())
    noise_source = codec.fresh_noise_source(models)
    latents, draws = redraw_until_read(lambda index: codec.encode_characters(models, index, noise_source=noise_source),
                                       lambda z: codec.classify_latents(models, scheme.received(z)),
                                       torch.from_numpy(class_index), max_draws)
    nonce = new_nonce()
    keys = derive_message_keys(key, nonce)
    payload = scheme.mask(latents, keys.mask_key)
    flags = xor_with_stream(keys.flags_key, np.packbits(encoded.is_space).tobytes())
    envelope = seal(scheme.name, nonce, dict(models.versions), len(class_index), flags, payload, keys.mac_key)
    return envelope, float(draws.float().mean())

# ---- end of REDRAW BASELINE --------------------------------------------------------------------


def equal_length_texts(models: codec.CipherModels, length: int) -> dict[str, str]:
    """Texts of `length` characters made of different letters: one letter repeated, digits, a random mix."""
    lookup = models.alphabet.lookup
    letters = [c for c in ("A", "W") if c in lookup] or [models.classes[0], models.classes[-1]]
    texts = {f"all {c}": c * length for c in letters}
    if all(d in lookup for d in "0123456789"):
        texts["digits"] = ("0123456789" * (length // 10 + 1))[:length]
    mix = "".join(models.classes) + " "
    texts["random mix"] = "".join(random.Random(length).choice(mix) for _ in range(length))
    return texts


def letters_table(models: codec.CipherModels, key: SecretKey, scheme: MaskScheme, candidates: int, max_draws: int,
                  length: int, repeats: int, device: torch.device) -> None:
    """Encryption time of equal-length texts of different letters: constant k vs the redraw loop.

    The texts' runs are interleaved (one of each per repeat) so that drift of the machine's speed
    falls on all of them alike; the noise is the largest repeat-to-repeat spread of one text.
    """
    texts = equal_length_texts(models, length)
    encrypt = {name: (lambda text=text: codec.encrypt(models, [text], key, scheme, candidates=candidates,
                                                      allow_misread=True)) for name, text in texts.items()}
    redraw = {name: (lambda text=text: redraw_encrypt(models, text, key, scheme, max_draws))
              for name, text in texts.items()}
    for function in [*encrypt.values(), *redraw.values()]:
        function()  # warm-up
    runs = {(kind, name): [] for kind in ("k", "redraw") for name in texts}
    for _ in range(repeats):
        for name in texts:
            runs["k", name].append(run_seconds(encrypt[name], device))
            runs["redraw", name].append(run_seconds(redraw[name], device))
    images = {name: redraw[name]()[1] for name in texts}
    print(f"\nEqual length ({length} characters), different letters: median of {repeats} interleaved runs")
    print(f"{'text':<12}{'k=' + str(candidates) + ' c/s':>12}{'k ms':>9}{'redraw c/s':>12}{'redraw ms':>11}"
          f"{'redraw img/char':>17}")
    for name in texts:
        k_s, redraw_s = statistics.median(runs["k", name]), statistics.median(runs["redraw", name])
        print(f"{name:<12}{length / k_s:>12.0f}{k_s * 1e3:>9.1f}{length / redraw_s:>12.0f}{redraw_s * 1e3:>11.1f}"
              f"{images[name]:>17.2f}")
    for kind, label in (("k", f"constant k={candidates}"), ("redraw", f"redraw loop, max {max_draws}")):
        medians = [statistics.median(runs[kind, name]) for name in texts]
        across = (max(medians) - min(medians)) / statistics.median(medians)
        noise = max((max(r) - min(r)) / statistics.median(r) for (k, _), r in runs.items() if k == kind)
        print(f"{label}: spread across texts (max - min) / median = {across:.1%}; repeat noise within a text "
              f"{noise:.1%}: {'within' if across <= noise else 'OUTSIDE'} noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", choices=["default", "report", "tiny"], default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 256, 4096])
    parser.add_argument("--equal-length", type=int, default=4096, help="length of the different-letter texts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheme", default="keyed-modular")
    parser.add_argument("--models", type=Path,
                        help="a pipeline output folder with trained models/ (default: untrained)")
    parser.add_argument("--candidates", type=int, help="images per character [default: params cipher.candidates]")
    parser.add_argument("--max-draws", type=int, default=64,
                        help="the redraw baseline's limit (it was cipher.max_draws)")
    args = parser.parse_args()
    presets = {"default": [], "report": [REPO / "presets" / "report.yaml"], "tiny": [REPO / "presets" / "tiny.yaml"]}
    config = load_config(REPO / "params.yaml", presets[args.sizes])
    device = resolve_device(args.device)
    models = from_directory(args.models, device) if args.models else build_models(config, device)
    candidates = args.candidates or config.cipher.candidates
    key, scheme = generate_key(), get_scheme(args.scheme, models.vae.latent_dim)
    # Misreads are allowed (untrained networks misread nearly everything); the work is the same either way.
    logging.getLogger("crypson.cipher.codec").setLevel(logging.ERROR)
    alphabet = "".join(models.classes) + " "
    print(f"device={device} sizes={args.sizes if not args.models else args.models} scheme={args.scheme} "
          f"candidates={candidates} redraw max_draws={args.max_draws} threads={torch.get_num_threads()}")
    print(f"{'chars':>6}{'encrypt c/s':>13}{'redraw c/s':>12}{'img/char':>10}{'k/redraw':>10}{'decrypt c/s':>13}"
          f"{'AES-GCM c/s':>13}{'enc/AES':>9}{'loop c/s':>10}{'enc/loop':>10}{'bytes/char':>12}")
    for length in args.lengths:
        text = "".join(random.Random(length).choice(alphabet) for _ in range(length))
        envelopes = codec.encrypt(models, [text], key, scheme, candidates=candidates, allow_misread=True)
        encrypt_s = timed(lambda: codec.encrypt(models, [text], key, scheme, candidates=candidates,
                                                allow_misread=True), device, args.repeats)
        images = redraw_encrypt(models, text, key, scheme, args.max_draws)[1]
        redraw_s = timed(lambda: redraw_encrypt(models, text, key, scheme, args.max_draws), device, args.repeats)
        decrypt_s = timed(lambda: codec.decrypt(models, envelopes, key), device, args.repeats)
        aes, data = AESGCM(os.urandom(32)), text.encode()
        aes_s = timed(lambda: aes.encrypt(os.urandom(12), data, None), device, args.repeats)
        loop_length = min(length, 256)  # the per-letter loop is slow: time a prefix, report per character
        loop_s = timed(lambda: letter_by_letter(models, text[:loop_length], scheme, key), device, 1) / loop_length
        size = len(to_bytes(envelopes[0])) / length
        print(f"{length:>6}{length / encrypt_s:>13.0f}{length / redraw_s:>12.0f}{images:>10.2f}"
              f"{redraw_s / encrypt_s:>9.2f}x{length / decrypt_s:>13.0f}{length / aes_s:>13.0f}"
              f"{aes_s / encrypt_s:>9.1e}{1 / loop_s:>10.0f}{loop_s * length / encrypt_s:>9.1f}x{size:>12.2f}")
    letters_table(models, key, scheme, candidates, args.max_draws, args.equal_length, args.repeats, device)


if __name__ == "__main__":
    main()
