"""A registered version's model card: markdown that MLflow shows as the version's description.

Plain functions of the measured numbers (no torch): the promote stage writes one per version it scored.
"""

from __future__ import annotations

import math

from crypson.evaluate.stats import wilson_interval


def model_card(name: str, version: str, kind_role: str, data: dict, evaluation: dict, attacks: dict,
               gates: list[dict], scheme: str, generated_images: int) -> str:
    """A registered version's model card (markdown: MLflow shows it as the version's description).

    Args:
        name, version: the registered model and version.
        kind_role: what this network does in the cipher, one sentence.
        data: the prepared data's manifest (source, split, data_version, counts, num_classes).
        evaluation, attacks: the execution's metrics/evaluate.json and metrics/attacks.json.
        gates: the promotion gates with their values (crypson.stages.promotion.check_gates).
        scheme: cipher.scheme, the mask the figures of the cipher path were measured under.
        generated_images: how many fresh cGAN images the generated-image accuracy was measured on.
    """
    counts = data.get("counts", {})
    tests = int(counts.get("test", 0))
    generated = generated_images

    def share(key: str, trials: int) -> str:
        value = evaluation.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "not measured"
        if trials <= 0:
            return f"{value:.3f}"
        low, high = wilson_interval(round(value * trials), trials)
        return f"{value:.3f} ({low:.3f}-{high:.3f}, n = {trials})"

    consistency = evaluation.get("class_consistency")
    consistency_text = "not measured" if consistency is None else (
        f"{consistency:.3f} ({evaluation.get('class_consistency_ci_low', math.nan):.3f}-"
        f"{evaluation.get('class_consistency_ci_high', math.nan):.3f})")
    lines = [
        f"# {name} v{version}", "",
        f"**Intended use.** {kind_role} It is one of the three networks of the Crypson cipher (cGAN draws a "
        "character, the VAE encodes it to a latent, the classifier reads it back) and is meant for that "
        "cipher and for research on latent-space encryption. The networks carry no secret: anyone may hold "
        "them. What protects a message is the keyed mask on the latents and the authentication tag, both "
        "derived from the key.", "",
        f"**Data.** {data.get('source', '?')} / {data.get('split', '?')}, {data.get('num_classes', '?')} classes, "
        f"data version `{str(data.get('data_version', '?'))[:16]}`; train {counts.get('train', '?')}, "
        f"validation {counts.get('val', '?')}, test {counts.get('test', '?')} images.", "",
        "**Figures of the execution that registered it** (95% Wilson intervals):", "",
        "| figure | value |", "|---|---|",
        f"| receiver accuracy, real test images | {share('accuracy_real', tests)} |",
        f"| receiver accuracy, single fresh cGAN images | {share('accuracy_generated', generated)} |",
        f"| VAE PSNR on the test split | {evaluation.get('psnr_db', math.nan):.2f} dB |",
        f"| cGAN class consistency under the independent judge | {consistency_text} |",
        f"| the judge's own accuracy on real test images | {evaluation.get('reference_accuracy_real', math.nan):.3f} |",
        f"| Frechet distance in the judge's features (real vs real) | {evaluation.get('frechet_distance', math.nan):.1f} "
        f"({evaluation.get('frechet_distance_real_vs_real', math.nan):.1f}) |",
        f"| sender: candidates per character, misread chance bound | {attacks.get('sender_candidates', '?')}, "
        f"{_number(attacks.get('sender_misread_chance'))} |", "",
        f"**Attacker advantage** without the key (0 = chance, 1 = reads everything; `{scheme}` is the scheme "
        "the cipher uses; `report` is the insecure baseline):", "",
    ]
    advantage = attacks.get("advantage", {})
    attackers = sorted({a for per_scheme in advantage.values() for a in per_scheme})
    lines += ["| scheme | " + " | ".join(attackers) + " |", "|---" * (len(attackers) + 1) + "|"]
    for name_, per_scheme in advantage.items():
        lines.append(f"| {name_} | " + " | ".join(_number(per_scheme[a]) if a in per_scheme else "n/a"
                                                for a in attackers) + " |")
    lines += ["", f"Best attacker against `{scheme}`: {_number(attacks.get('default_scheme_max_advantage'))} "
              f"(lower 95% bound {_number(attacks.get('default_scheme_max_advantage_ci_low'))}).", "",
              "**Promotion gates:** " + ", ".join(
                  f"{g['metric']} {_number(g['value'])} {'>=' if g['kind'] == 'min' else '<='} {g['threshold']:g} "
                  f"{'passed' if g['passed'] else 'FAILED'}" for g in gates) + ".", "",
              "**Known limits.**",
              f"- Nonce reuse: two messages under one key and nonce give an attacker advantage "
              f"{_number(attacks.get('nonce_reuse_advantage', {}).get(scheme, {}).get('same_nonce'))} against "
              f"`{scheme}` (fresh nonces: "
              f"{_number(attacks.get('nonce_reuse_advantage', {}).get(scheme, {}).get('fresh_nonces'))}); never reuse one.",
              "- Timing and size: the sender does the same work for every character, so time and ciphertext size "
              "show a message's length, never its letters; the length itself is not hidden.",
              "- The figures are for the data above; on other handwriting the read-back and the misread chance "
              "must be measured again before trusting `cipher.candidates`.",
              "- Nothing here is a proof of security: the attacks are the ones measured, with their intervals."]
    return "\n".join(lines) + "\n"


def _number(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)
