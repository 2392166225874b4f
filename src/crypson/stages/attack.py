"""The attack stage: what an attacker without the key learns from Crypson ciphertexts, per scheme,
and what survives the trip (end-to-end error rate, channel noise); it writes the security-and-quality
report, reading the evaluate stage's metrics and figures.

Ciphertexts carry latents of cGAN images (the cipher's path), so the attackers are trained and
scored on those: fresh images of every class, encoded by the VAE, masked under fresh random keys.
Each attacker knows every public weight and the scheme, never the key (Kerckhoffs).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import mlflow
import numpy as np
import torch

from crypson import tracking
from crypson.cipher import codec, loading
from crypson.cipher.keys import KEY_BYTES, SecretKey
from crypson.cipher.masks import SCHEMES, MaskScheme, get_scheme
from crypson.compute import derived_seed
from crypson.config import Config
from crypson.evaluate import figures
from crypson.evaluate.attacks import AttackData, advantage, run_attack_suite
from crypson.evaluate.channel import channel_noise_accuracy, end_to_end_error_rate, supported_corpus
from crypson.evaluate.corpus import MESSAGES
from crypson.evaluate.inversion import image_inversion_suite, nonce_reuse_suite
from crypson.evaluate.report import (EndToEnd, SenderCheck, attacks_markdown, class_error_bounds, markdown_to_html,
                                     misread_chance, security_quality_markdown)
from crypson.files import atomic_write_bytes, atomic_write_json
from crypson.progress import Progress
from crypson.stages.common import write_csv
from crypson.layout import Layout
from crypson.stages.image_quality import FIGURES, figures_dir

# Logged against each scored model (MLflow LoggedModel metrics), beside the evaluation's figures.
SCORED_MODEL_METRICS = ("default_scheme_max_advantage", "default_scheme_max_advantage_ci_low", "default_scheme_cer",
                        "sender_misread_chance")


def _cipher_latents(models: codec.CipherModels, per_class: int, seed: int, candidates: int,
                    scheme: MaskScheme) -> tuple[torch.Tensor, torch.Tensor, codec.Checked]:
    """What the cipher sends for `per_class` characters of every class: the latents of the cGAN images
    the sender's check chose (`codec.draw_candidates`, under the configured scheme), from seeded noise."""
    labels = torch.arange(len(models.classes)).repeat_interleave(per_class)
    noise = torch.Generator(device=models.device).manual_seed(seed)
    checked = codec.draw_candidates(models, labels, candidates, scheme.received, noise_source=noise)
    return checked.latents, labels, checked


def _sender_check(classes: tuple[str, ...], draws: list[tuple[torch.Tensor, codec.Checked]]) -> SenderCheck:
    """Per class, how many single candidates the receiver read back; the characters with none.

    draws: (labels, what the sender's check found) of each batch of characters drawn; all of them are
    fresh, independent trials of the check, pooled.
    """
    labels = torch.cat([labels for labels, _ in draws])
    checked = codec.Checked(*(torch.cat([getattr(c, name) for _, c in draws])
                              for name in ("latents", "margin", "candidate_read")))
    per_class = [checked.candidate_read[labels == c] for c in range(len(classes))]  # each (n_c, k)
    return SenderCheck(checked.candidate_read.shape[1], tuple(classes), tuple(int(r.sum()) for r in per_class),
                       tuple(r.numel() for r in per_class), float((~checked.read_back).float().mean()))


def advantage_lower_bound(results: list) -> float:
    """The promotion gate's statistic: the largest lower 95% bound of any attacker's advantage.

    Each attacker's bound is its advantage at the low end of its accuracy's Wilson interval, so the
    gate blocks a champion when some attacker is shown to beat the threshold, not when sampling noise
    lifts a point estimate. NaN when a bound cannot be measured (receiver at chance); empty: NaN.
    """
    bounds = [advantage(r.ci_low, r.chance, r.receiver_accuracy) for r in results]
    if not bounds or any(math.isnan(b) for b in bounds):
        return math.nan
    return max(bounds)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _end_to_end(config: Config, models: codec.CipherModels, schemes: list[MaskScheme]) -> list[EndToEnd]:
    """The corpus through the real codec under each scheme, with a seeded key (nonces stay random)."""
    messages, removed = supported_corpus(MESSAGES, models.alphabet)
    if removed:
        mlflow.log_metric("corpus_characters_removed", removed)  # outside this split's alphabet
    key = SecretKey(np.random.default_rng(derived_seed(config.seed, "corpus-key")).bytes(KEY_BYTES))
    results = []
    progress = Progress("corpus", len(schemes))
    for scheme in schemes:
        with progress.step(f"{scheme.name}: {len(messages)} messages encrypted and decrypted"):
            cer, misread, decoded, references = end_to_end_error_rate(models, messages, scheme, key,
                                                                      config.cipher.candidates)
        results.append(EndToEnd(scheme.name, cer, sum(len(r) for r in references), misread,
                                list(zip(references, decoded))[:3]))
    return results


def attack(config: Config, layout: Layout, context: tracking.TrackingContext) -> dict:
    """Every attacker against every mask scheme, end-to-end and noise checks; DVC metrics, report, MLflow run."""
    settings, cipher = config.attack, config.cipher
    models = loading.from_directory(layout.root)
    vae, classifier, classes = models.vae, models.classifier, models.classes
    # Every registered scheme, with the configured settings; `sent` is the one the cipher uses.
    schemes = [get_scheme(name, vae.latent_dim, **cipher.scheme_settings) for name in SCHEMES]
    sent = schemes[SCHEMES.index(cipher.scheme)]
    train_latents, train_labels, train_checked = _cipher_latents(
        models, settings.train_per_class, derived_seed(config.seed, "attack-train"), cipher.candidates, sent)
    test_latents, test_labels, test_checked = _cipher_latents(
        models, settings.test_per_class, derived_seed(config.seed, "attack-test"), cipher.candidates, sent)
    # Every character the sender drew here is a fresh, independent trial of its check: all of them
    # bound the per-class single-image error rate (the attackers' train/test split does not matter here).
    # The attackers' characters alone (80 a class) leave that bound loose: ceil(n / k) more characters a
    # class, drawn the same way, bring each class's trials to at least n = attack.sender_trials_per_class.
    draws = [(train_labels, train_checked), (test_labels, test_checked)]
    more = -(-settings.sender_trials_per_class // cipher.candidates)
    if more:
        with Progress("sender check", 1).step(f"{more} more characters a class, {cipher.candidates} candidates each"):
            _, labels, checked = _cipher_latents(models, more, derived_seed(config.seed, "attack-sender"),
                                                 cipher.candidates, sent)
        draws.append((labels, checked))
    sender = _sender_check(classes, draws)
    k = sender.candidates
    with torch.no_grad():
        receiver = float((classifier(test_latents).argmax(1) == test_labels).float().mean())
    seed = derived_seed(config.seed, "attack-keys")
    data = AttackData(train_latents, train_labels, test_latents, test_labels, classifier, receiver, len(classes),
                      settings.message_length)
    results = run_attack_suite(schemes, data, seed, restarts=settings.restarts, epochs=settings.epochs,
                               grid_size=settings.timestep_grid)
    images = image_inversion_suite(schemes, data, vae.decoder, seed, settings.restarts, settings.epochs)
    nonce = nonce_reuse_suite(schemes, data, seed)
    levels = list(settings.noise_levels)
    noise = {scheme.name: channel_noise_accuracy(scheme, test_latents, test_labels, classifier, levels,
                                                 settings.message_length, seed) for scheme in schemes}

    default = [r for r in results if r.scheme == cipher.scheme]
    summary = {
        "receiver_accuracy": round(receiver, 6),
        # The sender's check on every character drawn here (cipher.candidates images each): each class's
        # single-image read-back rate, the share of characters with no candidate read back, and the
        # misread chance per character it implies (max over classes of the Wilson-bounded error ** k).
        "sender_candidates": k,
        "sender_single_image_read_back": {name: round(r / n, 6)
                                          for name, r, n in zip(classes, sender.reads, sender.trials)},
        "sender_single_image_trials_min": min(sender.trials),  # the fewest of any class: the loosest bound's n
        "sender_no_correct_fraction": round(sender.no_correct_fraction, 6),
        "sender_misread_chance": misread_chance(max(class_error_bounds(sender.reads, sender.trials)), k),
        # JSON has no NaN: an advantage that cannot be measured (receiver at chance) is null.
        "default_scheme_max_advantage": _finite(max(r.advantage for r in default)),
        # The gate reads the lower 95% bound: it blocks promotion when an attacker is shown to beat
        # the threshold, not when sampling noise lifts a point estimate above it.
        "default_scheme_max_advantage_ci_low": _finite(advantage_lower_bound(default)),
        "advantage": {s: {r.attacker: _finite(r.advantage) for r in results if r.scheme == s} for s in SCHEMES},
        "inversion_psnr_db": {r.scheme: {} for r in images},
        "inversion_ssim": {r.scheme: {} for r in images},
        "nonce_reuse_advantage": {r.reused.scheme: {"same_nonce": _finite(r.reused.advantage),
                                                    "fresh_nonces": _finite(r.fresh.advantage)} for r in nonce},
        "channel_noise_accuracy": {name: {f"{level:g}": round(a, 6) for level, a in zip(levels, noise[name])}
                                   for name in SCHEMES},
    }
    for r in images:
        summary["inversion_psnr_db"][r.scheme][r.attacker] = round(r.psnr_db, 4)
        summary["inversion_ssim"][r.scheme][r.attacker] = round(r.ssim, 6)
    with tracking.stage_run(context, "attack"):
        end_to_end = _end_to_end(config, models, schemes)
        summary["cer"] = {r.scheme: round(r.cer, 6) for r in end_to_end}
        summary["default_scheme_cer"] = summary["cer"][cipher.scheme]
        _write_outputs(config, layout, summary, results, images, nonce, levels, noise, end_to_end, sender)
    return summary


def _write_outputs(config, layout, summary, results, images, nonce, levels, noise, end_to_end, sender) -> None:
    """DVC metrics, plots and reports; the MLflow run's params, metrics and artifacts."""
    settings, chance = config.attack, results[0].chance
    atomic_write_json(layout.metrics("attacks"), summary)
    atomic_write_bytes(layout.root / "reports" / "attacks.md", attacks_markdown(results, config.cipher.scheme).encode())
    write_csv(layout.plot("channel_noise.csv"),
              [{"noise_std": level, **{name: round(noise[name][i], 6) for name in noise}}
               for i, level in enumerate(levels)])
    out = figures_dir(layout.root)
    atomic_write_bytes(out / "channel_noise.png", figures.noise_curve_png(levels, noise, chance))
    evaluation_path = layout.metrics("evaluate")
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else {}
    api_takes_nonce = "nonce" in inspect.signature(codec.encrypt).parameters
    markdown = security_quality_markdown(config.cipher.scheme, evaluation, results, images, nonce, levels, noise,
                                         end_to_end, api_takes_nonce, sender)
    report = layout.root / "reports" / "security_quality.md"
    atomic_write_bytes(report, markdown.encode())
    page = report.with_suffix(".html")  # the same report as one self-contained page, figures inlined
    atomic_write_bytes(page, markdown_to_html(markdown, out).encode())

    tracking.log_params({"attack.train_per_class": settings.train_per_class,
                         "attack.test_per_class": settings.test_per_class,
                         "attack.sender_trials_per_class": settings.sender_trials_per_class,
                         "attack.message_length": settings.message_length,
                         "attack.noise_levels": json.dumps(levels), "cipher.scheme": config.cipher.scheme,
                         "cipher.candidates": config.cipher.candidates})
    metrics = {f"advantage.{r.scheme}.{r.attacker}": r.advantage for r in results}
    metrics.update({f"nonce_reuse_advantage.{r.reused.scheme}": r.reused.advantage for r in nonce})
    metrics.update({f"inversion_psnr_db.{r.scheme}.{r.attacker}": r.psnr_db for r in images})
    metrics.update({f"inversion_ssim.{r.scheme}.{r.attacker}": r.ssim for r in images})
    metrics.update({f"cer.{r.scheme}": r.cer for r in end_to_end})
    metrics.update({key: summary[key] for key in ("sender_no_correct_fraction", "sender_misread_chance")})
    metrics["sender_single_image_read_back_min"] = min(summary["sender_single_image_read_back"].values())
    mlflow.log_metrics({key: value for key, value in metrics.items() if not math.isnan(value)})
    tracking.log_scored_models({key: summary[key] for key in SCORED_MODEL_METRICS},
                               [r.get("model_id", "") for r in layout.registrations().values()])
    for name, values in noise.items():
        for step, value in enumerate(values):  # one step per noise level (the levels are a param)
            mlflow.log_metric(f"channel_noise_accuracy.{name}", value, step=step)
    mlflow.log_text(attacks_markdown(results, config.cipher.scheme), "attacks.md")
    mlflow.log_dict({"results": [dataclasses.asdict(r) for r in results],
                     "image_inversion": [dataclasses.asdict(r) for r in images],
                     "nonce_reuse": [dataclasses.asdict(r) for r in nonce]}, "attacks.json")
    mlflow.log_artifact(str(report), "report")
    mlflow.log_artifact(str(page), "report")
    for name in (*FIGURES, "channel_noise.png"):
        if (out / name).is_file():
            mlflow.log_artifact(str(out / name), "report/figures")
