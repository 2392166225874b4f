"""IDX files: the MNIST/EMNIST array format.

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code byte, a byte giving the number of
dimensions, one big-endian uint32 per dimension, then the data in big-endian C order. EMNIST ships its IDX
files gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from crypson.files import atomic_write_bytes

# dtype code byte -> big-endian numpy dtype, as listed in the IDX specification.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or plain (detected by the gzip magic bytes, not the suffix).

    Args:
        path: the IDX file.

    Returns:
        The array in native byte order, with the dtype and shape the header declares.

    Raises:
        ValueError: bad magic, unknown dtype code, or a payload size that does not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (magic {raw[:4].hex() or 'empty'}; expected 0000<dtype><ndim>)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X}; allowed: {allowed}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, the header needs {header_len}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} of {dtype.name} ({expected} data bytes), "
            f"but the file holds {len(raw) - header_len} data bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file, atomically and with deterministic bytes.

    Args:
        path: destination file.
        array: any shape (at most 255 dims); dtype uint8, int8, int16, int32, float32 or float64.
        compress: gzip the file; None means "if the suffix is .gz". The gzip header carries mtime=0 and no
            file name, so the same array always gives the same bytes.

    Raises:
        ValueError: a dtype the IDX format cannot hold, or too many dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        allowed = ", ".join(dtype.name for dtype in IDX_DTYPES.values())
        raise ValueError(f"{path}: IDX cannot hold dtype {array.dtype}; allowed: {allowed}")
    if array.ndim > 255:
        raise ValueError(f"{path}: IDX holds at most 255 dimensions, got {array.ndim}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)
