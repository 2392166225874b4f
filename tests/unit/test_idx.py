"""IDX reading and writing: round trips, a hand-built header, and errors that name the file."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from crypson.data.idx import read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(0,), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip_keeps_values_dtype_and_shape(tmp_path: Path, dtype, shape, name: str) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.normal(0, 1e3, size=shape).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_hand_built_header_decodes_to_known_values(tmp_path: Path) -> None:
    # dtype 0x0B (int16), 2 dims (2, 3), big-endian data.
    raw = bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 2, 3) + struct.pack(">6h", 1, -2, 300, -32768, 32767, 0)
    (tmp_path / "h.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "h.idx"), [[1, -2, 300], [-32768, 32767, 0]])


def test_written_bytes_follow_the_spec(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels-idx1-ubyte", np.array([7, 0, 255], dtype=np.uint8))
    assert (tmp_path / "labels-idx1-ubyte").read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x07\x00\xff"
    write_idx(tmp_path / "f.idx", np.array([1.5], dtype=np.float32))
    assert (tmp_path / "f.idx").read_bytes() == b"\x00\x00\x0d\x01\x00\x00\x00\x01" + struct.pack(">f", 1.5)


def test_gzip_detected_by_magic_not_suffix(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "plain.gz", array, compress=False)
    write_idx(tmp_path / "packed.idx", array, compress=True)
    assert (tmp_path / "plain.gz").read_bytes()[:2] == b"\x00\x00"
    assert (tmp_path / "packed.idx").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.idx"), array)


def test_gzip_output_is_deterministic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    first = (tmp_path / "a.gz").read_bytes()
    write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == first
    assert gzip.decompress(first)[4:8] == struct.pack(">I", 100)
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="bad.idx.*not an IDX"):
        read_idx(path)


def test_unknown_dtype_code_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "code.idx"
    path.write_bytes(b"\x00\x00\x0a\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match=r"code.idx.*0x0A.*allowed: 0x08"):
        read_idx(path)


@pytest.mark.parametrize("cut", [2, 6, 10])
def test_truncated_file_names_the_file(tmp_path: Path, cut: int) -> None:
    whole = tmp_path / "whole.idx"
    write_idx(whole, np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(whole.read_bytes()[:-cut]))
    with pytest.raises(ValueError, match="short.idx.gz"):
        read_idx(path)


def test_extra_data_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06")
    with pytest.raises(ValueError, match=r"long.idx.*\(1,\).*holds 2 data bytes"):
        read_idx(path)


def test_unsupported_dtype_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64.*allowed"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))
