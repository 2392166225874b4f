"""The versioned, authenticated ciphertext format (encrypt-then-MAC).

Binary layout (all integers big-endian):

    offset  size  field
    0       4     magic b"CRYP"
    4       1     format version (1)
    5       1     scheme id (index into SCHEME_IDS)
    6       16    nonce
    22      16    stream: id shared by the parts of one encryption (a one-part stream uses its nonce)
    38      4     part: this message's index in its stream (uint32, from 0)
    42      1     final: 1 on the stream's last part, else 0
    43      4     count: characters in the message (uint32)
    47      2     length m of the models JSON (uint16)
    49      m     models: canonical JSON (sorted keys, no spaces), registered model name -> version
    49+m    f     flags: encrypted space bitmap, f = ceil(count / 8)
    ...     4     payload length p (uint32)
    ...     p     payload: masked latents
    ...     32    tag: HMAC-SHA256 (RFC 2104) under the message's MAC subkey over every byte before it

Fixed overhead: FIXED_BYTES = 85 (49 header + 4 payload length + 32 tag). The tag always covers the
canonical binary encoding, whichever form (binary or JSON) carries the envelope, so the two convert
into each other without re-sealing.

Streams: the messages of one `crypson encrypt` (one a line) are the parts of one stream, as in the
STREAM construction (Hoang, Reyhanitabar, Rogaway & Vizar 2015): the stream id, the part's index and
the final flag sit under each part's tag, so `check_stream` refuses a missing, repeated, reordered or
foreign part, and a stream cut before its final part. Size bound: MAX_CIPHERTEXT_BYTES for one
envelope, checked before any parsing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from crypson.cipher.keys import KEY_BYTES, NONCE_BYTES
from crypson.cipher.scheme_ids import SCHEME_IDS  # each mask scheme's one-byte id: its position there

FORMAT_VERSION = 2  # 2: stream, part and final under the tag (1 had none)
MAGIC = b"CRYP"
TAG_BYTES = 32  # HMAC-SHA256 output
MAC_KEY_BYTES = KEY_BYTES

# magic, version, scheme id, nonce, stream, part, final, count, models length: read before anything variable.
_HEADER = struct.Struct(">4sBB16s16sIBIH")
_PAYLOAD_LENGTH = struct.Struct(">I")
HEADER_BYTES = _HEADER.size  # 49
FIXED_BYTES = HEADER_BYTES + _PAYLOAD_LENGTH.size + TAG_BYTES  # 85
STREAM_ID_BYTES = 16
# One envelope's largest form: ~43 bytes a character in JSON (16-byte latents in base64), so about
# 24,000 characters a line. Checked on the raw input before any parsing.
MAX_CIPHERTEXT_BYTES = 1 << 20

_MAX_UINT32 = 2**32 - 1
_MAX_MODELS = 32
_MODEL_TEXT = re.compile(r"[A-Za-z0-9._:/+@-]{1,64}")
_JSON_FIELDS = ("crypson", "scheme", "nonce", "stream", "part", "final", "models", "count", "flags", "payload", "tag")


class CiphertextError(ValueError):
    """Base class: this is not a ciphertext this code can accept."""


class FormatError(CiphertextError):
    """Truncated or malformed ciphertext."""


class UnsupportedVersionError(CiphertextError):
    """A format version this code does not read."""


class UnknownSchemeError(CiphertextError):
    """A mask scheme id or name outside SCHEME_IDS."""


class StreamError(CiphertextError):
    """The parts of a stream are not all there, once each, in order (see `check_stream`)."""


class AuthenticationError(CiphertextError):
    """The tag does not match: wrong key, or modified ciphertext."""

    def __init__(self, message: str = "authentication failed: wrong key, or the ciphertext was modified") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Envelope:
    """One encrypted message. Construction validates every field (and copies `models`).

    Attributes:
        version: format version (FORMAT_VERSION).
        scheme: mask scheme name, one of SCHEME_IDS.
        nonce: 16 random bytes, fresh per message (HKDF salt for its subkeys).
        models: registered model name -> version that decrypt it (plus mask settings).
        count: number of characters.
        flags: encrypted per-character bitmap, ceil(count / 8) bytes.
        payload: masked latents.
        tag: HMAC-SHA256 over `authenticated_bytes(self)`.
        stream: 16-byte id shared by the parts of one encryption.
        part: index of this message in its stream, from 0.
        final: True on the stream's last part.
    """

    version: int
    scheme: str
    nonce: bytes
    models: dict[str, str]  # Mapping accepted; stored as a dict copy
    count: int
    flags: bytes
    payload: bytes
    tag: bytes
    stream: bytes
    part: int
    final: bool

    def __post_init__(self) -> None:
        _check_version(self.version)
        _check_scheme(self.scheme)
        for name in ("nonce", "flags", "payload", "tag", "stream"):
            object.__setattr__(self, name, _as_bytes(getattr(self, name), name))
        if len(self.nonce) != NONCE_BYTES:
            raise FormatError(f"nonce must be {NONCE_BYTES} bytes, got {len(self.nonce)}")
        if len(self.stream) != STREAM_ID_BYTES:
            raise FormatError(f"stream id must be {STREAM_ID_BYTES} bytes, got {len(self.stream)}")
        if not _is_int(self.part) or not 0 <= self.part <= _MAX_UINT32:
            raise FormatError(f"part must be an int in [0, {_MAX_UINT32}], got {self.part!r}")
        if not isinstance(self.final, bool):
            raise FormatError(f"final must be a bool, got {type(self.final).__name__}")
        object.__setattr__(self, "models", _checked_models(self.models))
        if not _is_int(self.count) or not 0 <= self.count <= _MAX_UINT32:
            raise FormatError(f"count must be an int in [0, {_MAX_UINT32}], got {self.count!r}")
        if len(self.flags) != flags_length(self.count):
            raise FormatError(f"flags must be ceil(count/8) = {flags_length(self.count)} bytes for count "
                              f"{self.count}, got {len(self.flags)}")
        if len(self.payload) > _MAX_UINT32:
            raise FormatError(f"payload too large: {len(self.payload)} bytes, at most {_MAX_UINT32}")
        if len(self.tag) != TAG_BYTES:
            raise FormatError(f"tag must be {TAG_BYTES} bytes, got {len(self.tag)}")


def flags_length(count: int) -> int:
    """Bytes of the per-character bitmap: ceil(count / 8)."""
    return (count + 7) // 8


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise FormatError(f"{field} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _check_version(version: object) -> None:
    if not _is_int(version) or version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"unsupported ciphertext format version {version!r}; this code reads version {FORMAT_VERSION}")


def _check_scheme(scheme: object) -> None:
    if scheme not in SCHEME_IDS:
        raise UnknownSchemeError(f"unknown mask scheme {scheme!r}; allowed: {', '.join(SCHEME_IDS)}")


def _checked_models(models: object) -> dict[str, str]:
    """A copy of `models` after checking names and versions are short ASCII tokens."""
    if not isinstance(models, Mapping):
        raise FormatError(f"models must be a mapping of name -> version, got {type(models).__name__}")
    if len(models) > _MAX_MODELS:
        raise FormatError(f"models: at most {_MAX_MODELS} entries, got {len(models)}")
    for name, version in models.items():
        for what, text in (("name", name), ("version", version)):
            if not isinstance(text, str) or not _MODEL_TEXT.fullmatch(text):
                raise FormatError(f"models: {what} {text!r} must be 1-64 characters from A-Z a-z 0-9 . _ : / + @ -")
    return dict(models)


def _models_json(models: Mapping[str, str]) -> bytes:
    """The one canonical encoding of `models`: sorted keys, no spaces, ASCII."""
    return json.dumps(dict(models), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def authenticated_bytes(envelope: Envelope) -> bytes:
    """The canonical binary encoding of everything but the tag: what the tag covers.

    `seal`, `verify` and `to_bytes` all use this one function, so the binary form is exactly
    these bytes followed by the tag.
    """
    models = _models_json(envelope.models)
    header = _HEADER.pack(MAGIC, envelope.version, SCHEME_IDS.index(envelope.scheme), envelope.nonce,
                          envelope.stream, envelope.part, int(envelope.final), envelope.count, len(models))
    return b"".join((header, models, envelope.flags, _PAYLOAD_LENGTH.pack(len(envelope.payload)), envelope.payload))


def _mac(mac_key: bytes, envelope: Envelope) -> hmac.HMAC:
    """HMAC-SHA256 (RFC 2104) under `mac_key`, fed the envelope's authenticated bytes."""
    if not isinstance(mac_key, (bytes, bytearray)) or len(mac_key) != MAC_KEY_BYTES:
        length = len(mac_key) if isinstance(mac_key, (bytes, bytearray)) else type(mac_key).__name__
        raise ValueError(f"mac_key must be {MAC_KEY_BYTES} bytes, got {length}")
    mac = hmac.HMAC(bytes(mac_key), hashes.SHA256())
    mac.update(authenticated_bytes(envelope))
    return mac


def seal(scheme: str, nonce: bytes, models: Mapping[str, str], count: int, flags: bytes, payload: bytes,
         mac_key: bytes, stream: bytes | None = None, part: int = 0, final: bool = True) -> Envelope:
    """Build an envelope and tag it (encrypt-then-MAC: `flags` and `payload` are already encrypted).

    Args:
        scheme: mask scheme name, one of SCHEME_IDS.
        nonce: the 16-byte nonce the message's subkeys were derived from.
        models: registered model name -> version needed to decrypt.
        count: number of characters.
        flags: encrypted per-character bitmap, ceil(count / 8) bytes.
        payload: masked latents.
        mac_key: the message's 32-byte MAC subkey.
        stream, part, final: the message's place in its stream; by default a one-part stream whose
            id is the nonce.

    Returns:
        The sealed envelope.
    """
    unsigned = Envelope(FORMAT_VERSION, scheme, nonce, models, count, flags, payload, bytes(TAG_BYTES),
                        nonce if stream is None else stream, part, final)
    return dataclasses.replace(unsigned, tag=_mac(mac_key, unsigned).finalize())


def check_stream(envelopes: list[Envelope]) -> None:
    """Refuse unless the envelopes are one whole stream in order: one id, parts 0..n-1, the last final.

    Call it on authenticated envelopes (after `verify`): the fields it reads are under the tag.

    Raises:
        StreamError: names the first line (1-based) that is foreign, out of place, or the missing end.
    """
    for line, envelope in enumerate(envelopes, 1):
        if envelope.stream != envelopes[0].stream:
            raise StreamError(f"line {line} belongs to another encryption than line 1: streams were mixed")
        if envelope.part != line - 1:
            raise StreamError(f"line {line} is part {envelope.part + 1} of its stream: a part is missing, "
                              "repeated or out of order")
        if envelope.final and line != len(envelopes):
            raise StreamError(f"line {line} is the stream's last part, but {len(envelopes) - line} more follow")
    if envelopes and not envelopes[-1].final:
        raise StreamError(f"the stream ends after part {len(envelopes)} without its final part: it was cut short")


def verify(envelope: Envelope, mac_key: bytes) -> None:
    """Check the tag in constant time.

    Raises:
        AuthenticationError: wrong key, or any byte of the envelope changed.
    """
    try:
        _mac(mac_key, envelope).verify(envelope.tag)
    except InvalidSignature:
        raise AuthenticationError() from None


def to_bytes(envelope: Envelope) -> bytes:
    """The binary form: `authenticated_bytes(envelope)` followed by the tag."""
    return authenticated_bytes(envelope) + envelope.tag


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    """`size` bytes at `offset`, or a FormatError naming what was cut off."""
    if offset + size > len(data):
        raise FormatError(f"ciphertext truncated: {what} needs {offset + size} bytes, got {len(data)}")
    return data[offset : offset + size]


def from_bytes(data: bytes) -> Envelope:
    """Parse the binary form strictly: magic, then version, then scheme, then every length.

    Raises:
        FormatError: not a Crypson ciphertext, truncated, trailing bytes or malformed models JSON.
        UnsupportedVersionError: another format version (checked before anything else is read).
        UnknownSchemeError: a scheme id outside SCHEME_IDS.
    """
    data = _as_bytes(data, "ciphertext")
    _check_size(len(data))
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError(f"not a Crypson ciphertext: it does not start with {MAGIC!r}")
    version = _take(data, 4, 1, "version")[0]
    _check_version(version)
    scheme_id = _take(data, 5, 1, "scheme id")[0]
    if scheme_id >= len(SCHEME_IDS):
        raise UnknownSchemeError(f"unknown mask scheme id {scheme_id}; allowed: "
                                 + ", ".join(f"{i} ({name})" for i, name in enumerate(SCHEME_IDS)))
    _, _, _, nonce, stream, part, final, count, models_length = _HEADER.unpack(_take(data, 0, HEADER_BYTES, "header"))
    if final not in (0, 1):
        raise FormatError(f"final flag must be 0 or 1, got {final}")
    offset = HEADER_BYTES
    models = _parse_models_json(_take(data, offset, models_length, "models"))
    offset += models_length
    flags = _take(data, offset, flags_length(count), f"flags for {count} characters")
    offset += len(flags)
    (payload_length,) = _PAYLOAD_LENGTH.unpack(_take(data, offset, _PAYLOAD_LENGTH.size, "payload length"))
    offset += _PAYLOAD_LENGTH.size
    payload = _take(data, offset, payload_length, "payload")
    offset += payload_length
    tag = _take(data, offset, TAG_BYTES, "tag")
    offset += TAG_BYTES
    if offset != len(data):
        raise FormatError(f"ciphertext has {len(data) - offset} trailing bytes after the tag")
    return Envelope(version, SCHEME_IDS[scheme_id], nonce, models, count, flags, payload, tag, stream, part,
                    bool(final))


def _parse_models_json(raw: bytes) -> dict[str, str]:
    """Decode the models field and require that it is in canonical form (one encoding per value)."""
    try:
        models = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise FormatError("models: not valid ASCII JSON") from None
    if not isinstance(models, dict):
        raise FormatError(f"models: expected a JSON object, got {type(models).__name__}")
    models = _checked_models(models)
    if _models_json(models) != raw:
        raise FormatError("models: JSON is not in canonical form (sorted keys, no spaces)")
    return models


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_json(envelope: Envelope) -> str:
    """The JSON form (one line); binary fields in standard base64, the same tag as the binary form."""
    return json.dumps({
        "crypson": envelope.version,
        "scheme": envelope.scheme,
        "nonce": _b64encode(envelope.nonce),
        "stream": _b64encode(envelope.stream),
        "part": envelope.part,
        "final": envelope.final,
        "models": dict(sorted(envelope.models.items())),
        "count": envelope.count,
        "flags": _b64encode(envelope.flags),
        "payload": _b64encode(envelope.payload),
        "tag": _b64encode(envelope.tag),
    }, separators=(",", ":"))


def _b64_field(document: dict[str, Any], field: str) -> bytes:
    """Decode a standard-base64 field strictly (alphabet, padding and canonical trailing bits)."""
    text = document[field]
    if not isinstance(text, str):
        raise FormatError(f"field {field!r}: expected a base64 string, got {type(text).__name__}")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"field {field!r}: not valid standard base64") from None
    if _b64encode(decoded) != text:
        raise FormatError(f"field {field!r}: not canonical base64")
    return decoded


def _check_size(size: int) -> None:
    if size > MAX_CIPHERTEXT_BYTES:
        raise FormatError(f"ciphertext of {size} bytes is over the limit of {MAX_CIPHERTEXT_BYTES} bytes a message")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated field would let two readers see two different values. Linear time."""
    document = dict(pairs)
    if len(document) != len(pairs):
        repeated = sorted(key for key, times in Counter(key for key, _ in pairs).items() if times > 1)
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise FormatError(f"repeated field(s): {shown}")
    return document


def from_json(text: str | bytes) -> Envelope:
    """Parse the JSON form strictly: exactly the documented fields, each of the right type.

    Raises:
        FormatError: bad JSON, a missing or unknown field, wrong type or bad base64 (names the field).
        UnsupportedVersionError: "crypson" is not FORMAT_VERSION.
        UnknownSchemeError: "scheme" is not in SCHEME_IDS.
    """
    _check_size(len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text))
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except RecursionError:
        raise FormatError("ciphertext JSON is nested too deeply (an envelope is one flat object)") from None
    except (UnicodeDecodeError, ValueError) as error:
        detail = str(error) if isinstance(error, FormatError) else "ciphertext is not valid JSON"
        raise FormatError(detail) from None
    if not isinstance(document, dict):
        raise FormatError(f"ciphertext JSON must be an object, got {type(document).__name__}")
    if "crypson" not in document:
        raise FormatError("field 'crypson' (the format version) is missing")
    if not _is_int(document["crypson"]):
        raise FormatError(f"field 'crypson': expected an integer version, got {type(document['crypson']).__name__}")
    _check_version(document["crypson"])
    missing = [field for field in _JSON_FIELDS if field not in document]
    if missing:
        raise FormatError(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(document) - set(_JSON_FIELDS))
    if unknown:
        raise FormatError(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(_JSON_FIELDS)}")
    if not isinstance(document["scheme"], str):
        raise FormatError(f"field 'scheme': expected a string, got {type(document['scheme']).__name__}")
    if not isinstance(document["models"], dict):
        raise FormatError(f"field 'models': expected an object, got {type(document['models']).__name__}")
    for field in ("count", "part"):
        if not _is_int(document[field]):
            raise FormatError(f"field {field!r}: expected an integer, got {type(document[field]).__name__}")
    if not isinstance(document["final"], bool):
        raise FormatError(f"field 'final': expected true or false, got {type(document['final']).__name__}")
    return Envelope(document["crypson"], document["scheme"], _b64_field(document, "nonce"), document["models"],
                    document["count"], _b64_field(document, "flags"), _b64_field(document, "payload"),
                    _b64_field(document, "tag"), _b64_field(document, "stream"), document["part"],
                    document["final"])
