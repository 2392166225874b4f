"""Evaluation and promotion stages.

evaluate: receiver-path accuracy and confusion matrix on the real test split and, separately,
on fresh cGAN images; VAE PSNR and SSIM on the test split; the cGAN's class consistency and
Frechet distance under an independent judge, and the report's figures (stages/image_quality.py).
promote: the gates in params.yaml decide whether the registered version set becomes `champion`.
"""

from __future__ import annotations

import json
import logging
import math

import mlflow
import torch

from crypson import tracking
from crypson.cipher import loading
from crypson.compute import derived_seed, resolve_device
from crypson.config import Config
from crypson.data.prepare import load_manifest, load_prepared
from crypson.evaluate import figures, metrics
from crypson.evaluate.report import model_card
from crypson.inference import sample_per_class
from crypson.files import atomic_write_bytes, atomic_write_json
from crypson.stages import image_quality
from crypson.stages.common import write_csv
from crypson.layout import Layout
from crypson.train.vae import to_unit_range

log = logging.getLogger(__name__)
# What each registered network does in the cipher: the first line of its model card.
MODEL_ROLES = {"cgan": "The conditional GAN draws a fresh 32x32 image of a character from a class index and noise.",
               "vae": "The VAE encodes a character image to an 8-d latent (what is masked and sent) and decodes it back.",
               "classifier": "The classifier reads a received latent back as a character, through the frozen VAE decoder."}
# Copied onto the execution's parent run when promote ends it: the runs table answers "which execution
# shipped, with what figures" without a click.
HEADLINE_METRICS = ("accuracy_real", "accuracy_generated", "psnr_db", "class_consistency", "reference_accuracy_real", "frechet_distance",
                    "default_scheme_max_advantage", "default_scheme_max_advantage_ci_low", "sender_candidates")


def _confusion_figure(confusion: torch.Tensor, classes: tuple[str, ...], title: str):
    import matplotlib.pyplot as plt

    size = max(5.0, 0.22 * len(classes))
    figure, axes = plt.subplots(figsize=(size, size))
    normalised = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    axes.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, fontsize=7)
    axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def evaluate(config: Config, layout: Layout, context: tracking.TrackingContext) -> dict[str, float]:
    """Score the trained models; write DVC metrics and plots; log the MLflow evaluation run."""
    import matplotlib.pyplot as plt

    device = resolve_device(config.device)
    data = load_prepared(layout.prepared)
    models = loading.from_directory(layout.root, device)
    generator, vae, classifier, classes = models.generator, models.vae, models.classifier, models.classes
    if classes != data.classes:
        raise ValueError(f"the classifier was trained on classes {''.join(classes)!r}, "
                         f"the data has {''.join(data.classes)!r}: re-run the pipeline")
    K = len(classes)

    test_images = to_unit_range(torch.from_numpy(data.test.images))  # (N, 1, 32, 32)
    test_labels = torch.from_numpy(data.test.labels)
    predicted, reconstructions = metrics.receiver_predict(vae, classifier, test_images, config.evaluate.batch_size)
    confusion_real = metrics.confusion_matrix(predicted, test_labels, K)
    accuracy_real, per_class_real = metrics.accuracy_from_confusion(confusion_real)

    # Its own seed: these images must be new to the classifier, which trained on cGAN images too.
    generated, generated_labels = sample_per_class(generator, config.evaluate.generated_per_class,
                                                   derived_seed(config.seed, "evaluate"))
    predicted_generated, _ = metrics.receiver_predict(vae, classifier, generated, config.evaluate.batch_size)
    confusion_generated = metrics.confusion_matrix(predicted_generated, generated_labels, K)
    accuracy_generated, _ = metrics.accuracy_from_confusion(confusion_generated)

    results = {
        "accuracy_real": accuracy_real,
        "accuracy_generated": accuracy_generated,
        "psnr_db": float(metrics.psnr_per_image(reconstructions, test_images).mean()),
        "ssim": metrics.ssim(reconstructions, test_images),
        "chance": 1.0 / K,
        "worst_class_accuracy_real": min(a for a in per_class_real if not math.isnan(a)),
    }
    cgan_figures, consistency_per_class = image_quality.cgan_quality(config, data, generator, generated,
                                                                     generated_labels)
    results |= cgan_figures
    results = {key: round(value, 6) for key, value in results.items()}
    per_class = {char: round(acc, 6) for char, acc in zip(classes, per_class_real)}

    atomic_write_json(layout.metrics("evaluate"), results)
    atomic_write_json(layout.root / "reports" / "per_class_accuracy.json", per_class)
    consistency = {char: round(value, 6) for char, value in zip(classes, consistency_per_class)}
    atomic_write_json(layout.root / "reports" / "class_consistency.json",
                      {"judge_accuracy_real": results["reference_accuracy_real"], "per_class": consistency})
    write_csv(layout.plot("class_consistency.csv"),
              [{"class": c, "class_consistency": v} for c, v in consistency.items()])
    for name, actual, guess in (("real", test_labels, predicted), ("generated", generated_labels, predicted_generated)):
        write_csv(layout.plot(f"confusion_{name}.csv"),
                  [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(actual.tolist(), guess.tolist())])

    figure_paths = image_quality.write_figures(config, data, generator, vae, layout.root)
    figure = image_quality.class_consistency_figure(consistency_per_class, classes, results["reference_accuracy_real"])
    figure_paths.append(image_quality.figures_dir(layout.root) / image_quality.CONSISTENCY_FIGURE)
    atomic_write_bytes(figure_paths[-1], figures.figure_png(figure))

    with tracking.stage_run(context, "evaluate"):
        tracking.log_params({"evaluate.generated_per_class": config.evaluate.generated_per_class,
                             "evaluate.reference_epochs": config.evaluate.reference_epochs,
                             "evaluate.truncation_levels": list(config.evaluate.truncation_levels),
                             "cgan.truncation": generator.truncation,
                             "seed": config.seed, "data.version": data.manifest["data_version"]})
        tracking.log_dataset(layout.prepared, data.manifest, context="evaluation")
        mlflow.log_metrics(results)
        tracking.log_scored_models(results, [r.get("model_id", "") for r in layout.registrations().values()])
        image_quality.log_figures(figure_paths)
        mlflow.log_dict(per_class, "per_class_accuracy.json")
        mlflow.log_table({"class": list(consistency), "class_consistency": list(consistency.values())},
                         "class_consistency.json")
        for name, confusion, accuracy in (("real", confusion_real, accuracy_real),
                                          ("generated", confusion_generated, accuracy_generated)):
            figure = _confusion_figure(confusion, classes, f"receiver path, {name} images: accuracy {accuracy:.3f}")
            mlflow.log_figure(figure, f"confusion_{name}.png")
            plt.close(figure)
            mlflow.log_dict({"classes": list(classes), "matrix": confusion.tolist()}, f"confusion_{name}.json")
    return results


def check_gates(config: Config, results: dict[str, float]) -> list[dict]:
    """Each gate with its value, threshold and margin (positive = room to spare).

    Quality gates pass when value >= threshold; the attacker-advantage gate when the lower 95% bound
    of the best attacker's advantage is <= threshold. An advantage that could not be measured (NaN
    or missing) fails its gate.
    """
    gates = config.promote
    checks = [("accuracy_real", gates.min_accuracy_real, "min"),
              ("accuracy_generated", gates.min_accuracy_generated, "min"),
              ("psnr_db", gates.min_psnr_db, "min")]
    if gates.min_class_consistency is not None:
        checks.append(("class_consistency", gates.min_class_consistency, "min"))
    if gates.max_attacker_advantage is not None:
        checks.append(("default_scheme_max_advantage_ci_low", gates.max_attacker_advantage, "max"))
    report = []
    for metric, threshold, kind in checks:
        value = results.get(metric)
        value = math.nan if value is None else float(value)
        margin = value - threshold if kind == "min" else threshold - value
        report.append({"metric": metric, "value": value, "threshold": threshold, "kind": kind,
                       "margin": round(margin, 6), "passed": bool(margin >= 0)})
    return report


def promote(config: Config, layout: Layout, context: tracking.TrackingContext) -> dict:
    """Move `champion` to this execution's three versions if, and only if, every gate passes.

    A failing gate is reported with its shortfall, `champion` stays where it was, and the stage
    still succeeds: not promoting is a valid outcome of a pipeline run.
    """
    results = json.loads(layout.metrics("evaluate").read_text())
    results.update(json.loads(layout.metrics("attacks").read_text()))
    versions = {r["name"]: r["version"] for r in layout.registrations().values()}
    gates = check_gates(config, results)
    passed = all(gate["passed"] for gate in gates)
    before = tracking.champion_versions(list(versions))
    with tracking.stage_run(context, "promote"):
        mlflow.log_dict({"gates": gates}, "gates.json")
        mlflow.log_metrics({f"gate_margin.{g['metric']}": g["margin"] for g in gates if not math.isnan(g["margin"])})
        mlflow.set_tags({"promoted": str(passed).lower(), **{f"version.{n}": v for n, v in versions.items()}})
        tracking.tag_versions(versions, {"gates": "passed" if passed else "failed"})
        manifest = load_manifest(layout.prepared)
        for kind, registration in layout.registrations().items():
            card = model_card(registration["name"], registration["version"], MODEL_ROLES[kind], manifest,
                                     results, results, gates, config.cipher.scheme,
                                     config.evaluate.generated_per_class * manifest["num_classes"])
            tracking.describe_version(registration["name"], registration["version"], card)
            mlflow.log_text(card, f"model_cards/{registration['name']}-v{registration['version']}.md")
        if passed:
            tracking.set_champion(versions)
    headline = {key: results.get(key) for key in HEADLINE_METRICS} | {"promoted": float(passed)}
    tracking.end_execution(context.parent_run_id, "FINISHED", headline,
                           {"promoted": str(passed).lower(), **{f"version.{n}": v for n, v in versions.items()}})
    log.info("MLflow: %s", tracking.ui_link(mlflow.get_tracking_uri(), context.experiment_id, context.parent_run_id))
    failed = [g for g in gates if not g["passed"]]
    for gate in failed:
        log.warning("gate failed: %s = %.4g is %s %.4g by %.4g; champion stays at %s", gate["metric"],
                    gate["value"], "below" if gate["kind"] == "min" else "above", gate["threshold"],
                    -gate["margin"], before)
    decision = {"promoted": passed, "gates": gates, "candidate_versions": versions,
                "champion_before": before, "champion_after": versions if passed else before}
    atomic_write_json(layout.promotion_report, decision)
    return decision
