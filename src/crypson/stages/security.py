"""The attack stage: what an attacker without the key learns from Crypson ciphertexts, per scheme.

Ciphertexts carry latents of cGAN images (the cipher's path), so the attackers are trained and
scored on those: fresh images of every class, encoded by the VAE, masked under fresh random keys.
Each attacker knows every public weight and the scheme, never the key (Kerckhoffs).
"""

from __future__ import annotations

import dataclasses
import math

import mlflow
import torch

from crypson import artifacts, tracking
from crypson.cipher.envelope import SCHEMES
from crypson.config import Config
from crypson.evaluate.attacks import AttackResult, advantage, run_attack_suite
from crypson.evaluate.metrics import generate_images
from crypson.io import atomic_write_bytes, atomic_write_json
from crypson.stages.common import Layout
from crypson.train.loop import derived_seed


@torch.no_grad()
def _cipher_latents(generator, vae, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = generate_images(generator, per_class, seed)
    return vae.encode_mean(images).float(), labels


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def report_markdown(results: list[AttackResult], default_scheme: str) -> str:
    """A table per scheme: attacker accuracy with its 95% interval, chance, receiver, advantage."""
    lines = ["# Crypson: what an attacker without the key learns", "",
             "Advantage = (attacker accuracy - chance) / (receiver accuracy - chance): 0 is ideal, 1 is a full break.",
             f"The cipher's configured scheme is `{default_scheme}`.", ""]
    for scheme in dict.fromkeys(r.scheme for r in results):
        lines += [f"## {scheme}", "", "| attacker | accuracy (95% CI) | chance | receiver | advantage | note |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in results if r.scheme == scheme):
            lines.append(f"| {r.attacker} | {r.accuracy:.3f} ({r.ci_low:.3f}-{r.ci_high:.3f}) | {r.chance:.3f} | "
                         f"{r.receiver_accuracy:.3f} | {r.advantage:.3f} | {r.note} |")
        lines.append("")
    return "\n".join(lines)


def attack(config: Config, layout: Layout, context: tracking.TrackingContext) -> dict:
    """Run every attacker against every mask scheme; write DVC metrics, a report, an MLflow run."""
    settings = config.attack
    generator, classes = artifacts.load_model(layout.model_dir("cgan") / "generator.pt", "generator")
    vae, _ = artifacts.load_model(layout.model_dir("vae") / "vae.pt", "vae")
    classifier, _ = artifacts.load_model(layout.model_dir("classifier") / "classifier.pt", "classifier")
    train_latents, train_labels = _cipher_latents(generator, vae, settings.train_per_class,
                                                  derived_seed(config.seed, "attack-train"))
    test_latents, test_labels = _cipher_latents(generator, vae, settings.test_per_class,
                                                derived_seed(config.seed, "attack-test"))
    with torch.no_grad():
        receiver = float((classifier(test_latents).argmax(1) == test_labels).float().mean())
    results = run_attack_suite(
        SCHEMES, train_latents, train_labels, test_latents, test_labels, classifier, receiver, len(classes),
        message_length=settings.message_length, seed=derived_seed(config.seed, "attack-keys"),
        gaussian_sigma=config.cipher.gaussian_sigma, modular_range=config.cipher.modular_range,
        restarts=settings.restarts, epochs=settings.epochs, grid_size=settings.timestep_grid)
    default = [r for r in results if r.scheme == config.cipher.scheme]
    summary = {
        "receiver_accuracy": round(receiver, 6),
        # JSON has no NaN: an advantage that cannot be measured (receiver at chance) is null.
        "default_scheme_max_advantage": _finite(max(r.advantage for r in default)),
        # The gate reads the lower 95% bound: it blocks promotion when an attacker is shown to beat
        # the threshold, not when sampling noise lifts a point estimate above it.
        "default_scheme_max_advantage_ci_low": _finite(max(advantage(r.ci_low, r.chance, r.receiver_accuracy)
                                                           for r in default)),
        "advantage": {s: {r.attacker: _finite(r.advantage) for r in results if r.scheme == s} for s in SCHEMES},
    }
    atomic_write_json(layout.metrics("attacks"), summary)
    markdown = report_markdown(results, config.cipher.scheme)
    atomic_write_bytes(layout.root / "reports" / "attacks.md", markdown.encode())
    with tracking.stage_run(context, "attack"):
        tracking.log_params({"attack.train_per_class": settings.train_per_class,
                             "attack.test_per_class": settings.test_per_class,
                             "attack.message_length": settings.message_length, "cipher.scheme": config.cipher.scheme})
        mlflow.log_metrics({f"advantage.{r.scheme}.{r.attacker}": r.advantage for r in results
                            if not math.isnan(r.advantage)})
        mlflow.log_text(markdown, "attacks.md")
        mlflow.log_dict({"results": [dataclasses.asdict(r) for r in results]}, "attacks.json")
    return summary
