"""The security-and-quality report as markdown: plain functions of the measured numbers.

The attack stage writes it to reports/security_quality.md (next to reports/figures/) and logs it to
MLflow; every number in it is also a DVC metric (metrics/evaluate.json, metrics/attacks.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypson.evaluate.attacks import AttackResult
from crypson.evaluate.inversion import PSNR_CAP_DB, ImageInversionResult, NonceReuseResult


@dataclass(frozen=True)
class EndToEnd:
    """The codec's character error rate over the corpus for one scheme, and a few decoded examples."""

    scheme: str
    cer: float
    characters: int
    examples: list[tuple[str, str]]  # (reference, decoded)


@dataclass(frozen=True)
class SenderCheck:
    """The sender's redraws (codec.draw_latents): its limit and what it took on the test characters."""

    max_draws: int
    mean_draws: float
    misread_fraction: float  # still misread after max_draws images


def attack_tables(results: list[AttackResult]) -> list[str]:
    """A table per scheme: attacker accuracy with its 95% interval, chance, receiver, advantage."""
    lines = []
    for scheme in dict.fromkeys(r.scheme for r in results):
        lines += [f"### {scheme}", "", "| attacker | accuracy (95% CI) | chance | receiver | advantage | note |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in results if r.scheme == scheme):
            lines.append(f"| {r.attacker} | {r.accuracy:.3f} ({r.ci_low:.3f}-{r.ci_high:.3f}) | {r.chance:.3f} | "
                         f"{r.receiver_accuracy:.3f} | {r.advantage:.3f} | {r.note} |")
        lines.append("")
    return lines


def attacks_markdown(results: list[AttackResult], default_scheme: str) -> str:
    """reports/attacks.md: the attacker tables alone."""
    lines = ["# Crypson: what an attacker without the key learns", "",
             "Advantage = (attacker accuracy - chance) / (receiver accuracy - chance): 0 is ideal, 1 is a full break.",
             f"The cipher's configured scheme is `{default_scheme}`.", ""]
    return "\n".join(lines + [line.replace("### ", "## ", 1) for line in attack_tables(results)])


def _quality_lines(evaluation: dict[str, float]) -> list[str]:
    def value(key: str, digits: int = 3) -> str:
        return f"{evaluation[key]:.{digits}f}" if key in evaluation else "n/a"

    return [
        "## Quality", "",
        "| metric | value | what it means |", "|---|---|---|",
        f"| receiver accuracy, real test split | {value('accuracy_real')} | image -> VAE mean -> classifier |",
        f"| receiver accuracy, cGAN images | {value('accuracy_generated')} | the cipher's path, one image per "
        "character (before the sender's check) |",
        f"| VAE PSNR (dB) / SSIM, real test split | {value('psnr_db', 2)} / {value('ssim')} | "
        "reconstruction from the posterior mean |",
        f"| cGAN class consistency (95% CI) | {value('class_consistency')} ({value('class_consistency_ci_low')}-"
        f"{value('class_consistency_ci_high')}) | an independent CNN, trained on real images only, "
        "recognises the intended class |",
        f"| that CNN's accuracy on the real test split | {value('reference_accuracy_real')} | "
        "the ceiling for class consistency |",
        f"| Frechet distance, real test vs cGAN | {value('frechet_distance', 2)} | in that CNN's 64-d feature space |",
        f"| Frechet distance, real val vs real test | {value('frechet_distance_real_vs_real', 2)} | "
        "the floor at these sample sizes |",
        "",
        "![cGAN samples, one row per class](figures/samples_per_class.png)",
        "![VAE reconstructions: originals on odd rows, reconstructions below them](figures/reconstructions.png)",
        "![VAE latent space, PCA](figures/latent_pca.png) ![VAE latent space, t-SNE](figures/latent_tsne.png)", "",
    ]


def _end_to_end_lines(results: list[EndToEnd], default_scheme: str, sender: SenderCheck | None) -> list[str]:
    lines = ["## End to end", "",
             "Every corpus message (src/crypson/evaluate/corpus.py) encrypted and decrypted through the real codec: "
             "fresh cGAN handwriting, the VAE, the keyed mask, the authenticated envelope and back. The reference is "
             "the case-folded plaintext (what a perfect receiver returns).", ""]
    if sender is not None:
        lines += [f"The sender checks each character with its copy of the classifier and draws a new image for one "
                  f"it would misread, up to {sender.max_draws} images (`cipher.max_draws`). On the attack suite's "
                  f"test characters: {sender.mean_draws:.2f} images per character on average; "
                  f"{sender.misread_fraction:.2%} still misread after {sender.max_draws} (sent as drawn). The draws "
                  "cost encryption time, not ciphertext size, and the attacks below are run on these checked "
                  "latents, as sent.", ""]
    lines += ["| scheme | character error rate | characters |", "|---|---|---|"]
    lines += [f"| {r.scheme}{' (configured)' if r.scheme == default_scheme else ''} | {r.cer:.3f} | {r.characters} |"
              for r in results]
    examples = next((r.examples for r in results if r.scheme == default_scheme), [])
    if examples:
        lines += ["", f"Examples ({default_scheme}):", ""]
        lines += [f"    {reference!r}\n ->  {decoded!r}" for reference, decoded in examples]
    return lines + [""]


def _noise_lines(levels: list[float], accuracy: dict[str, list[float]], chance: float) -> list[str]:
    lines = ["## Channel noise", "",
             "Gaussian noise (standard deviation in latent units) added to each payload's masked numbers, then "
             "unmasked with the right key and classified. The authenticated envelope refuses ANY modified ciphertext "
             "(its tag fails), so through the codec noise means refusal, for every scheme; this curve is what each "
             "mask would tolerate behind a channel's own integrity check.", "",
             "| noise std | " + " | ".join(accuracy) + " |", "|---" * (len(accuracy) + 1) + "|"]
    for index, level in enumerate(levels):
        lines.append(f"| {level:g} | " + " | ".join(f"{values[index]:.3f}" for values in accuracy.values()) + " |")
    figure = "![accuracy under channel noise](figures/channel_noise.png)"
    return lines + ["", f"Chance is {chance:.3f}.", "", figure, ""]


def _inversion_lines(results: list[ImageInversionResult]) -> list[str]:
    lines = ["### Image inversion", "",
             "The attacker predicts the latent from (ciphertext, position), trained on pairs under random keys, and "
             "decodes it with the public decoder; its images are scored against the receiver's. `mean-image` is the "
             f"best keyless guess: the yardstick of an attacker who learned nothing. PSNR is capped at {PSNR_CAP_DB:g} "
             "dB (identical images).", "",
             "| scheme | attacker | PSNR dB (95% CI) | SSIM (95% CI) | images |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.scheme} | {r.attacker} | {r.psnr_db:.2f} ({r.psnr_ci[0]:.2f}-{r.psnr_ci[1]:.2f}) | "
                     f"{r.ssim:.3f} ({r.ssim_ci[0]:.3f}-{r.ssim_ci[1]:.3f}) | {r.samples} |")
    return lines + [""]


def _nonce_lines(results: list[NonceReuseResult], api_takes_nonce: bool) -> list[str]:
    refusal = ("`codec.encrypt` takes a nonce from its caller: reuse is possible through the API."
               if api_takes_nonce else
               "`codec.encrypt` and the CLI take no nonce from their caller: each message draws its own 16 random "
               "bytes (`keys.new_nonce`), so reuse cannot happen through the API (a 128-bit collision is "
               "negligible). The table shows what a forced reuse would do.")
    lines = ["### Nonce reuse", "", refusal, "",
             "Pairs of messages under one key; the attacker knows the first message's characters, adds the "
             "ciphertext difference to their class means and classifies.", "",
             "| scheme | same nonce: identical masks | accuracy, same nonce (95% CI) | advantage | "
             "accuracy, fresh nonces (95% CI) | advantage |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.reused.scheme} | {'yes' if r.masks_identical else 'no'} | {r.reused.accuracy:.3f} "
                     f"({r.reused.ci_low:.3f}-{r.reused.ci_high:.3f}) | {r.reused.advantage:.3f} | "
                     f"{r.fresh.accuracy:.3f} ({r.fresh.ci_low:.3f}-{r.fresh.ci_high:.3f}) | {r.fresh.advantage:.3f} |")
    return lines + [""]


def security_quality_markdown(
    default_scheme: str,
    evaluation: dict[str, float],
    attack_results: list[AttackResult],
    image_results: list[ImageInversionResult],
    nonce_results: list[NonceReuseResult],
    noise_levels: list[float],
    noise_accuracy: dict[str, list[float]],
    end_to_end: list[EndToEnd],
    api_takes_nonce: bool,
    sender: SenderCheck | None = None,
) -> str:
    """The whole report: quality, end to end, channel noise, then what each attacker learns."""
    chance = attack_results[0].chance if attack_results else float("nan")
    lines = ["# Crypson: security and quality", "",
             f"Configured scheme: `{default_scheme}`. Attackers know every public weight and the scheme, never the "
             "key. Advantage = (attacker accuracy - chance) / (receiver accuracy - chance): 0 is ideal, 1 a full "
             "break.", ""]
    lines += _quality_lines(evaluation)
    lines += _end_to_end_lines(end_to_end, default_scheme, sender)
    lines += _noise_lines(noise_levels, noise_accuracy, chance)
    lines += ["## Security", "", "### Character attacks", ""] + attack_tables(attack_results)
    lines += _inversion_lines(image_results)
    lines += _nonce_lines(nonce_results, api_takes_nonce)
    return "\n".join(lines)
