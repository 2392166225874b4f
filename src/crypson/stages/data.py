"""Data stages: ingest (raw EMNIST-format files, DVC-versioned), prepare, validate."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from crypson.config import Config
from crypson.data.emnist import download_emnist, file_names, load_emnist
from crypson.data.glyphs import GlyphStyle, generate_glyphs, resolve_fonts
from crypson.data.prepare import ImageSet, PreparedData, hash_files, pad_to, stratified_split, write_prepared
from crypson.files import atomic_directory
from crypson.layout import Layout

if TYPE_CHECKING:
    from crypson.tracking import TrackingContext


class DataValidationError(RuntimeError):
    """The data failed its expectations; the message is a short human summary."""


def ingest(config: Config, layout: Layout) -> Path:
    """Write the raw EMNIST-format files of `config.data.split` into `layout.raw`.

    `data.source` decides where they come from, and never silently switches:
    - emnist: copied from `data.emnist_dir` (the official archive, unpacked), or downloaded
      there through torchvision first when `data.emnist_download` is true;
    - glyphs: rendered offline from font files (see crypson.data.glyphs).
    """
    data = config.data
    with atomic_directory(layout.raw) as staging:
        if data.source == "emnist":
            source_dir = Path(data.emnist_dir)
            if data.emnist_download:
                download_emnist(source_dir, data.split)
            load_emnist(source_dir, data.split)  # fail here, loudly, on a missing or broken file
            for name in file_names(data.split).values():
                shutil.copy2(source_dir / name, staging / name)
        else:
            glyphs = data.glyphs
            style = GlyphStyle(
                max_rotation_deg=glyphs.max_rotation_deg, max_shear=glyphs.max_shear,
                scale_range=tuple(glyphs.scale_range), max_translate_px=glyphs.max_translate_px,
                stroke_width_max=glyphs.stroke_width_max, blur_sigma_max=glyphs.blur_sigma_max,
                noise_std=glyphs.noise_std, centring=glyphs.centring, name=glyphs.style,
                # Elastic distortion belongs to the handwriting style (params.yaml: "style=handwriting:").
                elastic_alpha=glyphs.elastic_alpha if glyphs.style == "handwriting" else 0.0,
                elastic_sigma=glyphs.elastic_sigma,
            )
            generate_glyphs(staging, data.split, glyphs.train_per_class, glyphs.test_per_class,
                            config.seed, resolve_fonts(list(glyphs.fonts), glyphs.style), style)
    return layout.raw


def prepare(config: Config, layout: Layout) -> pd.DataFrame:
    """Raw files -> padded 32x32 train/val/test arrays, classes, manifest and metadata table."""
    raw = load_emnist(layout.raw, config.data.split)
    train_rows, val_rows = stratified_split(raw.train_labels, config.prepare.val_fraction, config.seed)
    size = config.prepare.image_size
    train_images = pad_to(raw.train_images, size)
    manifest = {
        "source": config.data.source,
        "split": config.data.split,
        "data_version": hash_files([p for p in layout.raw.iterdir() if p.is_file()]),
        "counts": {"train": len(train_rows), "val": len(val_rows), "test": len(raw.test_labels)},
        "num_classes": len(raw.classes),
    }
    prepared = PreparedData(
        train=ImageSet(train_images[train_rows], raw.train_labels[train_rows]),
        val=ImageSet(train_images[val_rows], raw.train_labels[val_rows]),
        test=ImageSet(pad_to(raw.test_images, size), raw.test_labels),
        classes=raw.classes,
        manifest=manifest,
    )
    return write_prepared(layout.prepared, prepared)


def validate(config: Config, layout: Layout, context: TrackingContext | None = None) -> None:
    """Run the great-expectations suite on the metadata table: the full result (validation.json) and GX's
    Data Docs (an HTML site) under reports/; with a tracking context, its own MLflow run in the execution
    (the dataset as its input, the counts as metrics, the Data Docs as artifacts).

    Raises:
        DataValidationError: one line per failed expectation and where the Data Docs are, after saving both.
    """
    # great-expectations takes ~3 s to import: only this stage pays for it, not every `crypson stage`.
    from crypson.data.validate import ValidationSettings, save_report, validate_metadata

    metadata = pd.read_parquet(layout.prepared / "metadata.parquet")
    num_classes = len(json.loads((layout.prepared / "classes.json").read_text()))
    rules = config.validate_
    settings = ValidationSettings(
        num_classes=num_classes, image_size=config.prepare.image_size,
        min_class_fraction=rules.min_class_fraction, max_class_fraction=rules.max_class_fraction,
        pixel_mean_range=tuple(rules.pixel_mean_range), min_pixel_std=rules.min_pixel_std,
    )
    with atomic_directory(layout.data_docs) as staging:
        report = validate_metadata(metadata, settings, data_docs=staging)
    save_report(report, layout.validation_report)
    if context is not None:
        _log_validation(context, layout, report)
    if not report.success:
        raise DataValidationError(
            f"data validation failed (Data Docs: {layout.data_docs / 'index.html'}; full result: "
            f"{layout.validation_report}):\n{report.summary()}"
        )


def _log_validation(context: TrackingContext, layout: Layout, report) -> None:
    import mlflow

    from crypson import tracking
    from crypson.data.prepare import load_manifest

    expectations = sum(len(result["results"]) for result in report.results.values())
    with tracking.stage_run(context, "validate"):
        tracking.log_dataset(layout.prepared, load_manifest(layout.prepared), context="validation")
        mlflow.log_metrics({"expectations": expectations, "failed_expectations": len(report.failures),
                            "success": float(report.success)})
        with tempfile.TemporaryDirectory() as folder:  # the site without its 4 MB of web fonts (browsers fall back)
            site = shutil.copytree(layout.data_docs, Path(folder) / "data_docs", ignore=shutil.ignore_patterns("fonts"))
            mlflow.log_artifacts(str(site), "data_docs")
        mlflow.log_artifact(str(layout.validation_report))
