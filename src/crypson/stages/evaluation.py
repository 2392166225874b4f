"""The evaluate stage: receiver-path accuracy and confusion matrix on the real test split and,
separately, on fresh cGAN images; VAE PSNR and SSIM on the test split; the cGAN's class consistency and
Frechet distance under an independent judge, and the report's figures (stages/image_quality.py).
"""

from __future__ import annotations

import logging
import math

import mlflow
import torch

from crypson import tracking
from crypson.cipher import loading
from crypson.compute import derived_seed, resolve_device
from crypson.config import Config
from crypson.data.prepare import load_prepared
from crypson.evaluate import figures, metrics
from crypson.inference import sample_per_class
from crypson.files import atomic_write_bytes, atomic_write_json
from crypson.stages import image_quality
from crypson.stages.common import write_csv
from crypson.layout import Layout
from crypson.train.vae import to_unit_range

log = logging.getLogger(__name__)


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
