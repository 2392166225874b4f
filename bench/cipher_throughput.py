"""Cipher throughput and ciphertext size, next to AES-256-GCM and a letter-by-letter loop, in one run.

Characters per second of `crypson.cipher.codec.encrypt` / `decrypt` (batched: every character of a
message through each network in one forward pass) at several message sizes, against:
- AES-256-GCM from `cryptography` on the same text (a ratio: what the networks cost);
- a letter-by-letter loop over the same networks, one forward pass per character, the pattern of
  the reference implementation (a ratio: what batching buys).
The network cost per image does not depend on the weights, so by default untrained networks of the
configured sizes are used, with one image per character (--max-draws 1: no sender's check; untrained
networks would never pass it). The sender's check redraws the characters its classifier misreads, so
encryption with it depends on how good the models are: pass a pipeline's output folder with --models
(models/ under it, e.g. after `dvc repro`) to time it; the mean images per character is printed.

    python bench/cipher_throughput.py [--device auto|cpu|cuda] [--sizes default|report] [--lengths 16 256 4096]
                                      [--models .] [--max-draws N]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import time
from pathlib import Path

import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypson import artifacts
from crypson.cipher import codec
from crypson.cipher.envelope import to_bytes
from crypson.cipher.keys import generate_key
from crypson.cipher.loading import from_directory
from crypson.cipher.masks import get_scheme
from crypson.config import load_config
from crypson.data.emnist import SPLIT_CLASSES
from crypson.train.loop import resolve_device

REPO = Path(__file__).resolve().parents[1]


def build_models(config, device: torch.device) -> codec.CipherModels:
    classes = SPLIT_CLASSES[config.data.split]
    c, v = config.cgan, config.vae
    generator = artifacts.build("generator", {"num_classes": len(classes), "noise_dim": c.noise_dim,
                                              "width": c.generator_width, "conditioning": c.conditioning,
                                              "label_dim": c.label_dim})
    vae = artifacts.build("vae", {"latent_dim": v.latent_dim, "channels": v.channels})
    classifier = artifacts.build("classifier", {"latent_dim": v.latent_dim, "channels": v.channels,
                                                "num_classes": len(classes), "hidden": config.classifier.hidden,
                                                "dropout": config.classifier.dropout})
    return codec.CipherModels(generator.to(device), vae.to(device), classifier.to(device), tuple(classes))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device, repeats: int) -> float:
    """Median seconds of `function()` over `repeats` runs, after one warm-up."""
    function()
    runs = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        function()
        _sync(device)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", choices=["default", "report"], default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 256, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheme", default="keyed-modular")
    parser.add_argument("--models", type=Path, help="a pipeline output folder with trained models/ (default: untrained)")
    parser.add_argument("--max-draws", type=int, help="sender's check [default: params cipher.max_draws with "
                                                      "--models, else 1]")
    args = parser.parse_args()
    config = load_config(REPO / "params.yaml", [REPO / "presets" / "report.yaml"] if args.sizes == "report" else [])
    device = resolve_device(args.device)
    models = from_directory(args.models, device) if args.models else build_models(config, device)
    max_draws = args.max_draws or (config.cipher.max_draws if args.models else 1)
    key, scheme = generate_key(), get_scheme(args.scheme, models.vae.latent_dim)
    if max_draws == 1:  # misreads are expected there; the codec would warn on every call
        logging.getLogger("crypson.cipher.codec").setLevel(logging.ERROR)
    alphabet = "".join(models.classes) + " "
    print(f"device={device} sizes={args.sizes if not args.models else args.models} scheme={args.scheme} "
          f"max_draws={max_draws} threads={torch.get_num_threads()}")
    print(f"{'chars':>6}{'encrypt c/s':>13}{'draws/char':>11}{'decrypt c/s':>13}{'AES-GCM c/s':>13}{'enc/AES':>9}"
          f"{'loop c/s':>10}{'enc/loop':>10}{'bytes/char':>12}")
    for length in args.lengths:
        text = "".join(random.Random(length).choice(alphabet) for _ in range(length))
        envelopes = codec.encrypt(models, [text], key, scheme, max_draws=max_draws)
        index = torch.from_numpy(models.alphabet.encode(text).class_index)
        index[index < 0] = torch.randint(len(models.classes), (int((index < 0).sum()),))  # spaces: decoys
        draws = float(codec.draw_latents(models, index, max_draws, scheme.received).draws.float().mean())
        encrypt_s = timed(lambda: codec.encrypt(models, [text], key, scheme, max_draws=max_draws), device,
                          args.repeats)
        decrypt_s = timed(lambda: codec.decrypt(models, envelopes, key), device, args.repeats)
        aes, data = AESGCM(os.urandom(32)), text.encode()
        aes_s = timed(lambda: aes.encrypt(os.urandom(12), data, None), device, args.repeats)
        loop_length = min(length, 256)  # the per-letter loop is slow: time a prefix, report per character
        loop_s = timed(lambda: letter_by_letter(models, text[:loop_length], scheme, key), device, 1) / loop_length
        size = len(to_bytes(envelopes[0])) / length
        print(f"{length:>6}{length / encrypt_s:>13.0f}{draws:>11.2f}{length / decrypt_s:>13.0f}{length / aes_s:>13.0f}"
              f"{aes_s / encrypt_s:>9.1e}{1 / loop_s:>10.0f}{loop_s * length / encrypt_s:>9.1f}x{size:>12.2f}")


if __name__ == "__main__":
    main()
