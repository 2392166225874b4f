"""Secret keys, key files, per-message nonces and the subkeys derived from them.

Every primitive comes from the `cryptography` package: HKDF-SHA256 (RFC 5869) turns the long-term key
and a fresh nonce into three one-message subkeys, and ChaCha20 (RFC 8439) stretches a subkey into a
keystream. Key bytes never appear in a repr, an exception message or a log line.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import stat
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 16
KEY_ENV_VAR = "CRYPSON_KEY"

# HKDF "info" (RFC 5869 section 3.2): binds the derived bytes to this protocol and version.
HKDF_INFO = b"crypson/v1/message-keys"
_KEY_HEX_CHARS = 2 * KEY_BYTES
_HEX_DIGITS = frozenset(string.hexdigits)
_MAX_KEY_FILE_BYTES = 4096  # a key file is 65 bytes; anything this large is not one
_REDACTED = "<redacted>"
# ChaCha20's 16-byte nonce argument: 32-bit block counter + 96-bit nonce (RFC 8439 section 2.3), all zero.
_CHACHA20_NONCE = bytes(16)


class SecretKey:
    """The long-term shared secret: 32 random bytes, shown nowhere but through `.material`."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if not isinstance(material, (bytes, bytearray)):
            raise TypeError(f"SecretKey needs bytes, got {type(material).__name__}")
        if len(material) != KEY_BYTES:
            raise ValueError(f"SecretKey needs {KEY_BYTES} bytes, got {len(material)}")
        self._material = bytes(material)

    @property
    def material(self) -> bytes:
        """The raw key bytes: the one place they leave this object."""
        return self._material

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return constant_time.bytes_eq(self._material, other._material)

    __hash__ = None  # type: ignore[assignment]  # a hash of the key would be a fingerprint of it

    def __repr__(self) -> str:
        return f"SecretKey({_REDACTED})"

    __str__ = __repr__


def generate_key() -> SecretKey:
    """A fresh key from the operating system's CSPRNG."""
    return SecretKey(secrets.token_bytes(KEY_BYTES))


def _parse_key_text(text: str, source: str) -> SecretKey:
    """Parse 64 hex characters (surrounding whitespace allowed) without echoing them on error.

    Args:
        text: the candidate key text.
        source: where it came from (a path or a variable name), for the error message.
    """
    stripped = text.strip()
    if len(stripped) != _KEY_HEX_CHARS:
        raise ValueError(f"{source}: a key is {_KEY_HEX_CHARS} hex characters, got {len(stripped)} characters")
    if not _HEX_DIGITS.issuperset(stripped):
        raise ValueError(f"{source}: the key contains characters other than hex digits 0-9a-f")
    return SecretKey(bytes.fromhex(stripped))


def write_key_file(path: Path, key: SecretKey | None = None) -> SecretKey:
    """Create a new key file readable by its owner only (mode 0600) and return the key in it.

    The file is created with O_EXCL and mode 0600 in the same call, so it is never readable by
    others, not even between creation and a chmod; an existing file is never overwritten.

    Args:
        path: the file to create; its folder must exist.
        key: the key to store; a fresh one from `generate_key()` when None.

    Returns:
        The key written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "cannot create the key file: its folder does not exist", str(path.parent))
    key = generate_key() if key is None else key
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing key file", str(path)) from None
    try:
        os.fchmod(descriptor, 0o600)  # the umask may have narrowed it further; make it exactly 0600
        with os.fdopen(descriptor, "wb") as stream:
            stream.write((key.material.hex() + "\n").encode("ascii"))
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written key behind
        raise
    return key


def read_key_file(path: Path, follow_symlinks: bool = False) -> SecretKey:
    """Read a key file written by `write_key_file`, refusing one that others may read (like ssh).

    Args:
        path: the key file: a regular file owned by the current user.
        follow_symlinks: read through a symbolic link at `path` (its target is checked the same way).

    Returns:
        The key.

    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file grants any access to group or others, or another user owns it.
        ValueError: not a regular file (a FIFO, a device, a folder), a symbolic link when not
            followed, or content that is not 64 hex characters (the content is never echoed).
    """
    path = Path(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: a link is refused unless asked.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "key file not found", str(path)) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"key file {path} is a symbolic link; pass its target (or follow it explicitly)") from None
        raise
    # fstat on the open file, not stat on the path: no window for a swap in between.
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise ValueError(f"key file {path} is not a regular file (a FIFO, device or folder); a key file is "
                         "what `crypson keygen` writes")
    with os.fdopen(descriptor, "rb") as stream:
        mode = info.st_mode & 0o777
        if os.name == "posix" and mode & 0o077:
            raise PermissionError(
                f"permissions {mode:04o} for '{path}' are too open; run chmod 600 {shlex.quote(str(path))}")
        if os.name == "posix" and info.st_uid != os.getuid():
            raise PermissionError(f"key file {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()})")
        content = stream.read(_MAX_KEY_FILE_BYTES + 1)
    if len(content) > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path}: not a key file (over {_MAX_KEY_FILE_BYTES} bytes)")
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the key file is not ASCII text") from None
    return _parse_key_text(text, str(path))


def key_from_env(environ: Mapping[str, str], name: str = KEY_ENV_VAR) -> SecretKey:
    """Read a key (64 hex characters) from an environment mapping the caller passes in.

    Args:
        environ: usually `os.environ`; library code never reads the environment by itself.
        name: the variable holding the key.

    Raises:
        LookupError: the variable is not set.
        ValueError: its value is not 64 hex characters (the value is never echoed).
    """
    if name not in environ:
        raise LookupError(f"environment variable {name} is not set (expected a key of {_KEY_HEX_CHARS} hex characters)")
    return _parse_key_text(environ[name], f"environment variable {name}")


def new_nonce() -> bytes:
    """16 fresh random bytes: with 128 bits a collision is negligible over any realistic message count."""
    return secrets.token_bytes(NONCE_BYTES)


@dataclass(frozen=True, repr=False)
class MessageKeys:
    """One message's subkeys: mask, MAC (envelope tag) and flags (space bitmap)."""

    mask_key: bytes
    mac_key: bytes
    flags_key: bytes

    def __post_init__(self) -> None:
        for name in ("mask_key", "mac_key", "flags_key"):
            if len(getattr(self, name)) != KEY_BYTES:
                raise ValueError(f"MessageKeys.{name} must be {KEY_BYTES} bytes, got {len(getattr(self, name))}")

    def __repr__(self) -> str:
        return f"MessageKeys({_REDACTED})"


def derive_message_keys(key: SecretKey, nonce: bytes) -> MessageKeys:
    """HKDF-SHA256 (RFC 5869): salt = nonce, info = b"crypson/v1/message-keys", 96 bytes -> 3 subkeys.

    Args:
        key: the long-term secret (HKDF input keying material).
        nonce: the message's 16-byte nonce (HKDF salt); fresh per message.

    Returns:
        Three independent 32-byte subkeys, in the order mask, mac, flags.
    """
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {_describe_length(nonce)}")
    okm = HKDF(algorithm=hashes.SHA256(), length=3 * KEY_BYTES, salt=bytes(nonce), info=HKDF_INFO).derive(key.material)
    return MessageKeys(mask_key=okm[:KEY_BYTES], mac_key=okm[KEY_BYTES : 2 * KEY_BYTES], flags_key=okm[2 * KEY_BYTES :])


def prf_stream(subkey: bytes, length: int) -> bytes:
    """`length` keystream bytes: ChaCha20 (RFC 8439) under `subkey`, encrypting zeros.

    The 16-byte ChaCha20 nonce (32-bit counter + 96-bit nonce, RFC 8439 section 2.3) is all zero:
    safe because every subkey comes from HKDF under a fresh nonce and is used for one message only.

    Args:
        subkey: a 32-byte one-message subkey.
        length: number of bytes wanted (>= 0).
    """
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    return xor_with_stream(subkey, bytes(length))


def xor_with_stream(subkey: bytes, data: bytes) -> bytes:
    """`data` XOR the subkey's keystream (its own inverse: applying it twice gives `data` back).

    ChaCha20 encryption is exactly plaintext XOR keystream (RFC 8439 section 2.4), so the
    library's cipher does the XOR.
    """
    if not isinstance(subkey, (bytes, bytearray)) or len(subkey) != KEY_BYTES:
        raise ValueError(f"subkey must be {KEY_BYTES} bytes, got {_describe_length(subkey)}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    encryptor = Cipher(algorithms.ChaCha20(bytes(subkey), _CHACHA20_NONCE), mode=None).encryptor()
    return encryptor.update(bytes(data)) + encryptor.finalize()


def _describe_length(value: object) -> str:
    """'N bytes' for bytes-like values, else the type name: never the value itself."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return type(value).__name__
