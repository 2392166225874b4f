"""The metadata suite: a clean table passes, each injected defect fails with its exact count."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypson.data.validate import ExpectationFailure, ValidationSettings, save_report, validate_metadata

NUM_CLASSES = 5
ROWS_PER_CLASS = {"train": 20, "val": 5, "test": 8}  # 165 rows in all
NUM_ROWS = NUM_CLASSES * sum(ROWS_PER_CLASS.values())
SETTINGS = ValidationSettings(num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    """A defect-free table: 5 classes x (20 train, 5 val, 8 test), distinct images, glyph-like stats."""
    rows = [(split, label) for split, count in ROWS_PER_CLASS.items()
            for label in range(NUM_CLASSES) for _ in range(count)]
    split, label = zip(*rows)
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "split": split,
        "label": np.array(label, dtype=np.int64),
        "char": ["ABCDE"[i] for i in label],
        "height": 32,
        "width": 32,
        "mean": rng.uniform(0.1, 0.2, len(rows)),
        "std": rng.uniform(0.25, 0.35, len(rows)),
        "min": 0.0,
        "max": 1.0,
        "nan_count": 0,
        "sha256": [hashlib.sha256(f"image {i}".encode()).hexdigest() for i in range(len(rows))],
    })


def _only(failures: list[ExpectationFailure], expectation: str, column: str) -> ExpectationFailure:
    matches = [f for f in failures if f.expectation == expectation and f.column == column]
    assert len(matches) == 1, [f.describe() for f in failures]
    return matches[0]


def _rows(metadata: pd.DataFrame, split: str, label: int) -> pd.Index:
    return metadata.index[(metadata["split"] == split) & (metadata["label"] == label)]


def test_clean_table_passes(clean: pd.DataFrame) -> None:
    report = validate_metadata(clean, SETTINGS)
    assert report.success, report.summary()
    assert report.failures == []
    assert set(report.results) == {"metadata", "train_class_counts"}
    assert report.summary() == "metadata validation passed"


def test_out_of_range_labels_are_counted(clean: pd.DataFrame) -> None:
    bad = clean.copy()
    bad.loc[_rows(bad, "train", 0)[:2], "label"] = [5, 99]
    report = validate_metadata(bad, SETTINGS)
    failure = _only(report.failures, "expect_column_values_to_be_between", "label")
    assert (failure.unexpected_count, failure.element_count) == (2, NUM_ROWS)
    assert set(failure.examples) == {5, 99}
    assert not report.success
    assert f"label: expect_column_values_to_be_between(0..4) failed on 2 of {NUM_ROWS} rows" in report.summary()


def test_nan_pixels_are_counted(clean: pd.DataFrame) -> None:
    bad = clean.copy()
    bad.loc[[3, 40, 150], "nan_count"] = 7
    failure = _only(validate_metadata(bad, SETTINGS).failures, "expect_column_values_to_be_in_set", "nan_count")
    assert failure.unexpected_count == 3
    assert failure.examples == (7, 7, 7)


@pytest.mark.parametrize(
    ("source_split", "flag"), [("train", "sha256_in_train_and_test"), ("val", "sha256_in_val_and_test")]
)
def test_image_shared_with_test_is_leakage(clean: pd.DataFrame, source_split: str, flag: str) -> None:
    bad = clean.copy()
    source, copy = _rows(bad, source_split, 1)[0], _rows(bad, "test", 2)[0]
    bad.loc[copy, "sha256"] = bad.loc[source, "sha256"]
    report = validate_metadata(bad, SETTINGS)
    assert len(report.failures) == 1, report.summary()
    failure = _only(report.failures, "expect_column_values_to_be_in_set", flag)
    assert failure.unexpected_count == 2  # the source row and its copy in test
    assert failure.examples == (f"sha256={bad.loc[source, 'sha256'][:12]}",)


def test_class_missing_from_test_split(clean: pd.DataFrame) -> None:
    bad = clean.drop(index=_rows(clean, "test", 3))
    report = validate_metadata(bad, SETTINGS)
    assert len(report.failures) == 1, report.summary()
    failure = _only(report.failures, "expect_column_distinct_values_to_equal_set", "label")
    assert (failure.scope, failure.unexpected_count, failure.examples) == ("test split", 1, (3,))
    assert "label: expect_column_distinct_values_to_equal_set(0..4) on test split failed: 1 values" in report.summary()


@pytest.mark.parametrize(
    ("defect", "expectation", "column"),
    [
        ("height", "expect_column_values_to_be_in_set", "height"),  # an image of another shape
        ("width", "expect_column_values_to_be_in_set", "width"),
        ("min", "expect_column_values_to_be_between", "min"),  # pixels below 0
        ("max", "expect_column_values_to_be_between", "max"),  # pixels above 1
    ],
)
def test_shape_and_pixel_range_defects_fail_their_own_expectation(clean, defect, expectation, column) -> None:
    bad = clean.copy()
    bad.loc[[3, 40], defect] = {"height": 28, "width": 28, "min": -0.5, "max": 1.5}[defect]
    failure = _only(validate_metadata(bad, SETTINGS).failures, expectation, column)
    assert failure.unexpected_count == 2


def test_class_missing_from_train_split(clean: pd.DataFrame) -> None:
    bad = clean.drop(index=_rows(clean, "train", 2))
    failures = validate_metadata(bad, SETTINGS).failures
    distinct = [f for f in failures if f.expectation == "expect_column_distinct_values_to_equal_set"]
    assert [(f.scope, f.examples) for f in distinct] == [("train split", (2,))]


def test_unbalanced_class_fails_on_class_counts(clean: pd.DataFrame) -> None:
    bad = clean.drop(index=_rows(clean, "train", 4)[2:])  # class 4 keeps 2 of 20 train images
    report = validate_metadata(bad, SETTINGS)
    assert len(report.failures) == 1, report.summary()
    failure = _only(report.failures, "expect_column_values_to_be_between", "count")
    # Counts (20, 20, 20, 20, 2) have mean 16.4, so the allowed range is 0.5 * 16.4 .. 2 * 16.4.
    assert (failure.unexpected_count, failure.element_count) == (1, NUM_CLASSES)
    assert (failure.scope, failure.params, failure.examples) == ("train class counts", "8.2..32.8", ("label=4",))


def test_blank_image_fails_std_and_mean(clean: pd.DataFrame) -> None:
    bad = clean.copy()
    bad.loc[10, ["mean", "std", "max"]] = 0.0
    failures = validate_metadata(bad, SETTINGS).failures
    std = _only(failures, "expect_column_values_to_be_between", "std")
    mean = _only(failures, "expect_column_values_to_be_between", "mean")
    assert (std.unexpected_count, std.examples, mean.unexpected_count) == (1, (0.0,), 1)
    assert std.describe() == f"std: expect_column_values_to_be_between(>=0.02) failed on 1 of {NUM_ROWS} rows (e.g. 0)"


def test_nan_statistic_is_not_skipped(clean: pd.DataFrame) -> None:
    bad = clean.copy()
    bad.loc[[5, 6], "mean"] = np.nan  # range checks ignore nulls; the not-null check must catch them
    failure = _only(validate_metadata(bad, SETTINGS).failures, "expect_column_values_to_not_be_null", "mean")
    assert failure.unexpected_count == 2


def test_missing_column_is_a_clear_failure(clean: pd.DataFrame) -> None:
    report = validate_metadata(clean.drop(columns=["std"]), SETTINGS)
    assert len(report.failures) == 1, report.summary()
    failure = report.failures[0]
    assert (failure.expectation, failure.column, failure.error) == ("expect_column_to_exist", "std", "")
    assert "std: expect_column_to_exist() failed: column is missing" in report.summary()


def test_save_report_writes_json_atomically(clean: pd.DataFrame, tmp_path) -> None:
    report = validate_metadata(clean.drop(index=_rows(clean, "test", 3)), SETTINGS)
    path = tmp_path / "validation.json"
    save_report(report, path)
    assert [p.name for p in tmp_path.iterdir()] == ["validation.json"]  # no temp file left behind
    saved = json.loads(path.read_text())
    assert saved["success"] is False
    assert saved["failures"][0]["examples"] == [3]
    assert saved["results"]["metadata"]["statistics"]["unsuccessful_expectations"] == 1


def test_validation_is_offline_silent_and_writes_nothing(clean, tmp_path, monkeypatch, capfd) -> None:
    def refuse(sock: socket.socket, address: object) -> None:
        raise AssertionError(f"great-expectations tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.chdir(tmp_path)
    assert validate_metadata(clean, SETTINGS).success
    assert list(tmp_path.iterdir()) == []  # ephemeral context: no gx/ project folder
    assert capfd.readouterr().err == ""  # no tqdm progress bars


def test_data_docs_show_the_validation_and_the_saved_result_is_the_same_for_the_same_data(
        clean, tmp_path, monkeypatch) -> None:
    broken = clean.drop(index=_rows(clean, "test", 3))
    monkeypatch.chdir(tmp_path)  # the stage passes a folder relative to the repository (`dvc repro`)
    report = validate_metadata(broken, SETTINGS, data_docs=Path("docs"))
    index = (tmp_path / "docs" / "index.html").read_text()
    assert "metadata" in index and "train_class_counts" in index  # both suites' validations are listed
    (page,) = (tmp_path / "docs" / "validations" / "metadata").rglob("*.html")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text()))
    assert "Failed" in text and "If split == test , then distinct values must match this set: 0 1 2 3 4" in text
    # the JSON result the training stages depend on (through DVC) does not change when the same data is
    # validated again: no run ids or times in it
    save_report(report, tmp_path / "first.json")
    save_report(validate_metadata(broken, SETTINGS), tmp_path / "second.json")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an int >= 2, got 1"),
        ({"image_size": 0}, "image_size must be an int >= 1, got 0"),
        ({"min_class_fraction": 1.5}, "min_class_fraction must be in (0, 1], got 1.5"),
        ({"max_class_fraction": 0.9}, "max_class_fraction must be >= 1, got 0.9"),
        ({"pixel_mean_range": (0.6, 0.2)}, "pixel_mean_range must satisfy 0 <= low < high <= 1, got (0.6, 0.2)"),
        ({"min_pixel_std": 0.5}, "min_pixel_std must be in [0, 0.5), got 0.5"),
    ],
)
def test_bad_settings_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ValidationSettings(**({"num_classes": NUM_CLASSES} | overrides))
