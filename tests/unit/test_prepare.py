import hashlib
import json

import numpy as np
import pytest

from crypson.data.prepare import (
    ImageSet, PreparedData, load_prepared, metadata_table, pad_to, stratified_split, write_prepared,
)
from crypson.files import atomic_directory


def test_pad_centres_28_in_32():
    images = np.ones((2, 28, 28), np.uint8)
    padded = pad_to(images, 32)
    assert padded.shape == (2, 32, 32)
    assert padded[:, 2:30, 2:30].all() and padded.sum() == 2 * 28 * 28
    with pytest.raises(ValueError, match="do not fit"):
        pad_to(np.zeros((1, 40, 40), np.uint8), 32)


def test_stratified_split_keeps_every_class_and_fraction():
    labels = np.repeat(np.arange(4), [10, 20, 30, 2])
    train, val = stratified_split(labels, 0.1, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [1, 2, 3, 1]  # at least one per class
    assert np.array_equal(stratified_split(labels, 0.1, seed=0)[1], val)  # deterministic


def test_metadata_table_values():
    images = np.zeros((2, 32, 32), np.uint8)
    images[1, :16] = 255  # half white
    table = metadata_table({"test": ImageSet(images, np.array([0, 1]))}, ("a", "b"))
    assert table["char"].tolist() == ["a", "b"]
    assert table["mean"].tolist() == pytest.approx([0.0, 0.5])
    assert table["std"].tolist() == pytest.approx([0.0, 0.5])
    assert table["max"].tolist() == [0.0, 1.0] and table["nan_count"].tolist() == [0, 0]
    assert table["sha256"][1] == hashlib.sha256(images[1].tobytes()).hexdigest()


def test_write_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sets = {name: ImageSet(rng.integers(0, 256, (n, 32, 32), dtype=np.uint8), np.arange(n) % 3)
            for name, n in (("train", 9), ("val", 3), ("test", 6))}
    data = PreparedData(**sets, classes=("x", "y", "z"), manifest={"data_version": "v1", "source": "glyphs"})
    metadata = write_prepared(tmp_path / "prepared", data)
    loaded = load_prepared(tmp_path / "prepared")
    assert np.array_equal(loaded.test.images, sets["test"].images)
    assert loaded.classes == ("x", "y", "z") and loaded.manifest["data_version"] == "v1"
    assert len(metadata) == 18 and set(metadata["split"]) == {"train", "val", "test"}
    assert json.loads((tmp_path / "prepared" / "classes.json").read_text()) == ["x", "y", "z"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no temporary folder left


def test_atomic_directory_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
