"""EMNIST files: orientation, label offsets, mapping files and validation errors."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from crypson.data.emnist import (
    SPLIT_CLASSES,
    EmnistData,
    download_emnist,
    file_names,
    load_emnist,
    read_mapping,
    write_emnist,
)
from crypson.data.idx import read_idx


def l_shape() -> np.ndarray:
    """An upright "L": vertical bar in column 4, foot along row 23."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 4] = 255
    image[23, 4:18] = 255
    return image


def write_raw(directory: Path, split: str, images: np.ndarray, labels: list[int], mapping: str) -> None:
    """Build the official files by hand: struct-packed headers, gzip, images as stored (transposed)."""
    names = file_names(split)
    for part in ("train", "test"):
        header = struct.pack(">BBBBIII", 0, 0, 0x08, 3, len(images), 28, 28)
        (directory / names[f"{part}_images"]).write_bytes(gzip.compress(header + images.tobytes()))
        header = struct.pack(">BBBBI", 0, 0, 0x08, 1, len(labels))
        (directory / names[f"{part}_labels"]).write_bytes(gzip.compress(header + bytes(labels)))
    (directory / names["mapping"]).write_text(mapping)


def official_mapping(split: str) -> str:
    classes = SPLIT_CLASSES[split]
    if split == "letters":
        return "".join(f"{i + 1} {ord(c)} {ord(c.lower())}\n" for i, c in enumerate(classes))
    return "".join(f"{i} {ord(c)}\n" for i, c in enumerate(classes))


def tiny(split: str, count: int = 6) -> EmnistData:
    rng = np.random.default_rng(1)
    n = len(SPLIT_CLASSES[split])
    return EmnistData(
        train_images=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, n, count).astype(np.int64),
        test_images=rng.integers(0, 256, (count // 2, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, n, count // 2).astype(np.int64),
        classes=SPLIT_CLASSES[split],
    )


def test_split_classes_match_the_official_counts() -> None:
    sizes = {split: len(classes) for split, classes in SPLIT_CLASSES.items()}
    assert sizes == {"balanced": 47, "bymerge": 47, "byclass": 62, "letters": 26, "digits": 10, "mnist": 10}
    assert "".join(SPLIT_CLASSES["balanced"][36:]) == "abdefghnqrt"
    assert SPLIT_CLASSES["byclass"][10] == "A" and SPLIT_CLASSES["byclass"][36] == "a"


def test_file_names_are_the_official_ones() -> None:
    names = file_names("balanced")
    assert names["train_images"] == "emnist-balanced-train-images-idx3-ubyte.gz"
    assert names["train_labels"] == "emnist-balanced-train-labels-idx1-ubyte.gz"
    assert names["test_images"] == "emnist-balanced-test-images-idx3-ubyte.gz"
    assert names["test_labels"] == "emnist-balanced-test-labels-idx1-ubyte.gz"
    assert names["mapping"] == "emnist-balanced-mapping.txt"


def test_hand_built_raw_files_load_upright(tmp_path: Path) -> None:
    raw = l_shape().T[None]  # as NIST stores it: the bar runs along the top row
    assert raw[0, 4, 10] == 255 and raw[0, 10, 4] == 0
    write_raw(tmp_path, "digits", raw, [7], official_mapping("digits"))
    data = load_emnist(tmp_path, "digits")
    glyph = data.train_images[0]
    assert glyph[4:24, 4].min() == 255  # vertical bar on the left
    assert glyph[23, 4:18].min() == 255  # foot at the bottom
    assert glyph[4, 5:18].max() == 0 and glyph[5:23, 17].max() == 0  # no top bar, no right bar
    np.testing.assert_array_equal(glyph, l_shape())
    assert data.train_labels.tolist() == [7] and data.train_labels.dtype == np.int64
    assert data.classes == tuple("0123456789")


def test_letters_labels_shift_from_one_based(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    write_raw(tmp_path, "letters", images, [1, 26, 13], official_mapping("letters"))
    data = load_emnist(tmp_path, "letters")
    assert data.train_labels.tolist() == [0, 25, 12]
    assert [data.classes[i] for i in data.train_labels] == ["A", "Z", "M"]


@pytest.mark.parametrize("split", ["balanced", "letters", "byclass"])
def test_write_then_load_is_identity(tmp_path: Path, split: str) -> None:
    data = tiny(split)
    write_emnist(tmp_path, split, data)
    back = load_emnist(tmp_path, split)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(back, field), getattr(data, field))
    assert back.classes == data.classes


def test_write_stores_transposed_with_file_label_offset(tmp_path: Path) -> None:
    data = EmnistData(l_shape()[None], np.array([0]), l_shape()[None], np.array([25]), SPLIT_CLASSES["letters"])
    write_emnist(tmp_path, "letters", data)
    names = file_names("letters")
    np.testing.assert_array_equal(read_idx(tmp_path / names["train_images"])[0], l_shape().T)
    assert read_idx(tmp_path / names["test_labels"]).tolist() == [26]
    assert (tmp_path / names["mapping"]).read_text().splitlines()[:2] == ["1 65 97", "2 66 98"]


def test_read_mapping_two_and_three_columns(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("1 49\n0 48\n2 97\n")
    assert read_mapping(tmp_path / "m.txt", "balanced") == ("0", "1", "a")
    (tmp_path / "l.txt").write_text("1 65 97\n2 66 98\n")
    assert read_mapping(tmp_path / "l.txt", "letters") == ("A", "B")
    with pytest.raises(ValueError, match=r"l.txt:1: expected 2 integer columns"):
        read_mapping(tmp_path / "l.txt", "digits")
    (tmp_path / "gap.txt").write_text("0 48\n2 50\n")
    with pytest.raises(ValueError, match="labels must run"):
        read_mapping(tmp_path / "gap.txt", "digits")


def test_missing_file_names_the_full_path(tmp_path: Path) -> None:
    write_emnist(tmp_path, "mnist", tiny("mnist"))
    missing = tmp_path / file_names("mnist")["test_labels"]
    missing.unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_emnist(tmp_path, "mnist")
    assert str(missing) in str(error.value) and "gzip.zip" in str(error.value)


def test_unknown_split_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'digit'.*balanced, bymerge, byclass, letters, digits, mnist"):
        load_emnist(tmp_path, "digit")
    with pytest.raises(ValueError, match="allowed"):
        file_names("EMNIST")


def test_label_out_of_range_reports_the_numbers(tmp_path: Path) -> None:
    write_raw(tmp_path, "digits", np.zeros((2, 28, 28), np.uint8), [3, 10], official_mapping("digits"))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9 .* found 3..10"):
        load_emnist(tmp_path, "digits")
    write_raw(tmp_path, "letters", np.zeros((1, 28, 28), np.uint8), [0], official_mapping("letters"))
    with pytest.raises(ValueError, match=r"1..26 .* found 0..0"):
        load_emnist(tmp_path, "letters")


def test_count_mismatch_reports_both_counts(tmp_path: Path) -> None:
    write_raw(tmp_path, "digits", np.zeros((3, 28, 28), np.uint8), [1, 2], official_mapping("digits"))
    with pytest.raises(ValueError, match="3 images .* but 2 labels"):
        load_emnist(tmp_path, "digits")


def test_mapping_that_disagrees_is_rejected(tmp_path: Path) -> None:
    swapped = official_mapping("digits").replace("0 48", "0 49").replace("1 49", "1 48")
    write_raw(tmp_path, "digits", np.zeros((1, 28, 28), np.uint8), [0], swapped)
    with pytest.raises(ValueError, match="differ from the official 'digits' classes"):
        load_emnist(tmp_path, "digits")


def test_download_converts_torchvision_tensors_to_official_files(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    import torchvision.datasets

    class FakeEMNIST:
        """Holds what torchvision holds after a download: raw (transposed) images, raw 1..26 labels."""

        def __init__(self, root: str, split: str, train: bool, download: bool) -> None:
            assert split == "letters" and download
            self.data = torch.from_numpy(np.stack([l_shape().T, np.zeros((28, 28), np.uint8)]))
            self.targets = torch.tensor([12, 26] if train else [1, 1])

    monkeypatch.setattr(torchvision.datasets, "EMNIST", FakeEMNIST)
    download_emnist(tmp_path, "letters")
    data = load_emnist(tmp_path, "letters")
    np.testing.assert_array_equal(data.train_images[0], l_shape())
    assert data.train_labels.tolist() == [11, 25] and data.test_labels.tolist() == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(file_names("letters").values())
