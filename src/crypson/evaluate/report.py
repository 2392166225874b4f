"""The security-and-quality report as markdown: plain functions of the measured numbers.

The attack stage writes it to reports/security_quality.md (next to reports/figures/) and, as one
self-contained page (`markdown_to_html`), to reports/security_quality.html; both go to MLflow, the HTML also
to the KFP UI. Every number in it is also a DVC metric (metrics/evaluate.json, metrics/attacks.json).
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from crypson.evaluate.attacks import AttackResult, wilson_interval
from crypson.evaluate.inversion import PSNR_CAP_DB, ImageInversionResult, NonceReuseResult


@dataclass(frozen=True)
class EndToEnd:
    """The codec's character error rate over the corpus for one scheme, and a few decoded examples."""

    scheme: str
    cer: float
    characters: int
    misread: int  # characters decoded as another class (the sender's allowed misreads among them)
    examples: list[tuple[str, str]]  # (reference, decoded)


# The sender's target: the chance that a character goes out misread (design: "The sender's check").
MISREAD_TARGET = 1e-6


@dataclass(frozen=True)
class SenderCheck:
    """The sender's check (codec.draw_candidates) on every character the attack stage drew: the attack suite's
    (training and test) and `attack.sender_trials_per_class` more single images a class."""

    candidates: int  # k, images drawn for every character
    classes: tuple[str, ...]
    reads: tuple[int, ...]  # per class: candidates read back correctly, each on its own
    trials: tuple[int, ...]  # per class: candidates drawn
    no_correct_fraction: float  # characters with no candidate read back


def misread_chance(error_rate: float, candidates: int) -> float:
    """The chance that all k independent candidates are misread: error_rate ** k."""
    return error_rate**candidates


def candidates_needed(error_rate: float, target: float = MISREAD_TARGET) -> int | None:
    """The smallest k with error_rate ** k <= target; None when no k reaches it (error_rate 1)."""
    if not 0 <= error_rate <= 1 or not 0 < target < 1:
        raise ValueError(f"need 0 <= error_rate <= 1 and 0 < target < 1, got {error_rate} and {target}")
    if error_rate == 0:
        return 1
    if error_rate == 1:
        return None
    # 1e-12 absorbs the logarithms' rounding (0.1 ** 6 is 1e-6 exactly in real numbers).
    return max(1, math.ceil(math.log(target) / math.log(error_rate) - 1e-12))


def class_error_bounds(reads: tuple[int, ...], trials: tuple[int, ...]) -> list[float]:
    """Per class, the Wilson 95% upper bound of the single-image error rate: 1 - the accuracy's lower bound."""
    return [1.0 - wilson_interval(r, n)[0] for r, n in zip(reads, trials, strict=True)]


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
        f"{value('class_consistency_ci_high')}) | an independent CNN (the judge), trained on real images only, "
        "recognises the intended class, at the cGAN's own truncation |",
        f"| worst class's consistency | {value('worst_class_consistency')} | per class: "
        "reports/class_consistency.json and the bar chart below |",
        *[f"| class consistency, {key.removeprefix('class_consistency_').replace('_', ' ')} | {value(key)} | |"
          for key in sorted(evaluation) if key.startswith("class_consistency_trunc") or key.endswith("_untruncated")],
        f"| the judge's accuracy on the real test split | {value('reference_accuracy_real')} | "
        "the ceiling for class consistency: read every figure of the judge beside it |",
        f"| Frechet distance, real test vs cGAN | {value('frechet_distance', 2)} | in the judge's feature space |",
        f"| Frechet distance, real val vs real test | {value('frechet_distance_real_vs_real', 2)} | "
        "the floor at these sample sizes |",
        "",
        "![cGAN samples, one row per class](figures/samples_per_class.png)",
        "![cGAN class consistency per class](figures/class_consistency.png)",
        "![VAE reconstructions: originals on odd rows, reconstructions below them](figures/reconstructions.png)",
        "![VAE latent space, PCA](figures/latent_pca.png) ![VAE latent space, t-SNE](figures/latent_tsne.png)", "",
    ]


def _end_to_end_lines(results: list[EndToEnd], default_scheme: str, sender: SenderCheck | None) -> list[str]:
    lines = ["## End to end", "",
             "Every corpus message (src/crypson/evaluate/corpus.py) encrypted and decrypted through the real codec: "
             "fresh cGAN handwriting, the VAE, the keyed mask, the authenticated envelope and back. The reference is "
             "the case-folded plaintext (what a perfect receiver returns). Misreads are allowed here, not refused "
             "(this measures the cipher): a character decoded as another class is counted.", ""]
    if sender is not None:
        lines += _sender_lines(sender)
    lines += ["| scheme | character error rate | characters misread | characters |", "|---|---|---|---|"]
    lines += [f"| {r.scheme}{' (configured)' if r.scheme == default_scheme else ''} | {r.cer:.3f} | {r.misread} | "
              f"{r.characters} |" for r in results]
    examples = next((r.examples for r in results if r.scheme == default_scheme), [])
    if examples:
        lines += ["", f"Examples ({default_scheme}):", ""]
        lines += [f"    {reference!r}\n ->  {decoded!r}" for reference, decoded in examples]
    return lines + [""]


def _sender_lines(sender: SenderCheck, worst: int = 5) -> list[str]:
    """The sender's check and the misread calculation: max over classes of q_c ** k against the target."""
    k = sender.candidates
    bounds = class_error_bounds(sender.reads, sender.trials)
    order = sorted(range(len(bounds)), key=lambda c: -bounds[c])
    top = order[0]
    chance, needed = misread_chance(bounds[top], k), candidates_needed(bounds[top])
    verdict = (f"the configured k = {k} meets it" if chance <= MISREAD_TARGET else
               f"the configured k = {k} does NOT meet it")
    needs = (f"needs k >= {needed} (the smallest k with q^k <= {MISREAD_TARGET:.0e}: ceil(log target / log q))"
             if needed is not None else
             "no k reaches it (a class never read back)")
    lines = [f"The sender draws k = {k} candidate images for every character (`cipher.candidates`) in one batched "
             "pass: the networks see N x k inputs for N characters whatever the letters, so encryption time shows "
             "the length, not the text. It sends the candidate its copy of the receiver's classifier reads back with "
             "the largest margin (true-class logit minus the largest other); a message with a character that no "
             "candidate reads back is refused (`--allow-misread` sends it). On every character drawn here, the attack "
             "suite's and those drawn for this check alone (`attack.sender_trials_per_class`) "
             f"({sum(sender.trials) // k} characters, {sum(sender.trials)} candidates), "
             f"{sender.no_correct_fraction:.2%} had no candidate read back; the attacks below run on the chosen "
             "latents, as sent.", "",
             "Misread chance per character, assuming independent draws: max over classes c of q_c^k, with q_c the "
             "Wilson 95% upper bound of class c's single-image error rate (1 - p_c, p_c measured on the candidates "
             f"above). The {min(worst, len(order))} worst classes:", "",
             f"| class | single images read back | p_c | q_c (95% upper) | q_c^{k} |", "|---|---|---|---|---|"]
    for c in order[:worst]:
        rate = sender.reads[c] / sender.trials[c]
        lines.append(f"| {sender.classes[c]} | {sender.reads[c]}/{sender.trials[c]} | {rate:.4f} | {bounds[c]:.4f} | "
                     f"{misread_chance(bounds[c], k):.1e} |")
    lines += ["", f"Worst class {sender.classes[top]!r}: q = {bounds[top]:.4f}, q^{k} = {chance:.1e}. Target "
                  f"{MISREAD_TARGET:.0e} per character: {needs}; {verdict}.", ""]
    return lines


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


def markdown_to_html(markdown: str, figures: Path, title: str = "Crypson: security and quality") -> str:
    """One self-contained HTML page of a report: the markdown rendered (CommonMark and tables), every image
    it names under `figures`' parent inlined as a data URI, so the page opens anywhere (the KFP UI, an
    MLflow artifact view, a mail) without its folder. An image that is missing is named in the page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        source = match.group(2)
        path = (figures.parent / source).resolve()
        if not path.is_relative_to(figures.parent.resolve()) or not path.is_file():
            return f'{match.group(1)}"data:," data-missing="{html.escape(source)}"'
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f'{match.group(1)}"data:{kind};base64,{encoded}"'

    body = re.sub(r'(<img src=)"([^"]+)"', inline, body)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>{_REPORT_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


_REPORT_STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
                 "text-align:left}th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}")
