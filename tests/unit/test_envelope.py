"""The authenticated ciphertext envelope: binary and JSON forms, tampering, truncation, versions."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from crypson.cipher.envelope import (
    FIXED_BYTES,
    FORMAT_VERSION,
    HEADER_BYTES,
    SCHEME_IDS,
    AuthenticationError,
    CiphertextError,
    Envelope,
    FormatError,
    UnknownSchemeError,
    UnsupportedVersionError,
    authenticated_bytes,
    from_bytes,
    from_json,
    seal,
    to_bytes,
    to_json,
    verify,
)
from crypson.cipher.keys import SecretKey, derive_message_keys, new_nonce, xor_with_stream

KEY = SecretKey(bytes(range(32)))
MODELS = {"crypson-vae": "2", "crypson-cgan": "3", "crypson-classifier": "11"}
COUNT = 5  # characters; the default scheme's payload is 16 bytes a character


def _sealed(key: SecretKey = KEY, scheme: str = "keyed-gaussian", count: int = COUNT) -> Envelope:
    nonce = new_nonce()
    keys = derive_message_keys(key, nonce)
    flags = xor_with_stream(keys.flags_key, bytes([0b01000000] + [0] * ((count + 7) // 8 - 1)) if count else b"")
    payload = xor_with_stream(keys.mask_key, bytes(i % 256 for i in range(16 * count)))
    return seal(scheme, nonce, MODELS, count, flags, payload, keys.mac_key)


def _open(envelope: Envelope, key: SecretKey = KEY) -> None:
    """What a receiver does: derive the MAC key from the envelope's nonce, then verify."""
    verify(envelope, derive_message_keys(key, envelope.nonce).mac_key)


# --- round trips and sizes -------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEME_IDS)
def test_binary_round_trip(scheme: str) -> None:
    envelope = _sealed(scheme=scheme)
    parsed = from_bytes(to_bytes(envelope))
    assert parsed == envelope
    _open(parsed)


@pytest.mark.parametrize("count", [0, 1, 8, 9])
def test_json_round_trip_and_conversion_to_binary(count: int) -> None:
    envelope = _sealed(count=count)
    text = to_json(envelope)
    assert "\n" not in text
    parsed = from_json(text)
    assert parsed == envelope
    _open(parsed)
    # The tag covers the canonical binary encoding, so JSON -> binary -> JSON needs no re-sealing.
    assert from_bytes(to_bytes(parsed)) == envelope
    assert to_json(from_bytes(to_bytes(parsed))) == text


def test_json_layout() -> None:
    envelope = _sealed()
    document = json.loads(to_json(envelope))
    assert list(document) == ["crypson", "scheme", "nonce", "stream", "part", "final", "models", "count", "flags",
                              "payload", "tag"]
    assert document["part"] == 0 and document["final"] is True
    assert base64.b64decode(document["stream"]) == envelope.nonce  # a one-part stream's id is its nonce
    assert document["crypson"] == FORMAT_VERSION and document["models"] == MODELS
    assert base64.b64decode(document["tag"]) == envelope.tag and len(envelope.tag) == 32


def test_binary_size_is_fixed_header_plus_variable_parts() -> None:
    envelope = _sealed()
    models_json = json.dumps(MODELS, sort_keys=True, separators=(",", ":")).encode()
    data = to_bytes(envelope)
    # 85 fixed bytes = magic 4 + version 1 + scheme 1 + nonce 16 + stream 16 + part 4 + final 1 + count 4
    #                  + models length 2 + payload length 4 + tag 32.
    assert HEADER_BYTES == 49 and FIXED_BYTES == 85
    assert len(data) == 85 + len(envelope.payload) + len(envelope.flags) + len(models_json)
    assert data[49 : 49 + len(models_json)] == models_json
    assert data[: len(data) - 32] == authenticated_bytes(envelope) and data[-32:] == envelope.tag
    # Per character: 16 payload bytes + 1/8 flag byte, within the 24-byte target.
    long = _sealed(count=800)
    per_character = (len(long.payload) + len(long.flags)) / 800
    assert per_character == 16.125 <= 24


def test_scheme_wire_ids_never_change() -> None:
    """Sent ciphertexts carry these ids: a new scheme is appended, none is ever reordered or removed."""
    assert SCHEME_IDS[:4] == ("report", "keyed-timestep", "keyed-gaussian", "keyed-modular")
    for scheme_id, scheme in enumerate(SCHEME_IDS):
        assert to_bytes(_sealed(scheme=scheme))[5] == scheme_id
        assert from_bytes(to_bytes(_sealed(scheme=scheme))).scheme == scheme


def test_binary_layout_fields() -> None:
    envelope = _sealed(scheme="keyed-modular")
    data = to_bytes(envelope)
    assert data[:4] == b"CRYP" and data[4] == 2 and data[5] == SCHEME_IDS.index("keyed-modular") == 3
    assert data[6:22] == envelope.nonce
    assert data[22:38] == envelope.stream == envelope.nonce
    assert int.from_bytes(data[38:42], "big") == 0 and data[42] == 1  # part 0, final
    assert int.from_bytes(data[43:47], "big") == COUNT


# --- authentication --------------------------------------------------------------------------------

def test_wrong_key_is_refused() -> None:
    envelope = _sealed()
    with pytest.raises(AuthenticationError, match="authentication failed: wrong key, or the ciphertext was modified"):
        _open(envelope, SecretKey(bytes(32)))


def test_every_single_byte_flip_is_refused() -> None:
    data = to_bytes(_sealed())
    _open(from_bytes(data))  # the untouched ciphertext opens
    for position in range(len(data)):
        for bit_pattern in (0x01, 0x80, 0xFF):
            tampered = bytearray(data)
            tampered[position] ^= bit_pattern
            with pytest.raises(CiphertextError):
                _open(from_bytes(bytes(tampered)))


def test_every_truncation_is_refused() -> None:
    data = to_bytes(_sealed())
    for length in range(len(data)):
        with pytest.raises(FormatError):
            from_bytes(data[:length])


def test_truncated_header_message() -> None:
    data = to_bytes(_sealed())
    with pytest.raises(FormatError, match="ciphertext truncated: header needs 49 bytes, got 11"):
        from_bytes(data[:11])


def test_trailing_byte_is_refused() -> None:
    data = to_bytes(_sealed())
    with pytest.raises(FormatError, match="1 trailing bytes"):
        from_bytes(data + b"\x00")


def test_bad_magic_is_refused() -> None:
    with pytest.raises(FormatError, match="not a Crypson ciphertext"):
        from_bytes(b"CRYX" + to_bytes(_sealed())[4:])


@pytest.mark.parametrize("version", [0, 1, 255])
def test_unknown_version_byte_is_named(version: int) -> None:
    data = bytearray(to_bytes(_sealed()))
    data[4] = version
    with pytest.raises(UnsupportedVersionError, match=f"version {version}; this code reads version 2"):
        from_bytes(bytes(data))
    # The version is checked before anything else is interpreted, even with the rest cut off.
    with pytest.raises(UnsupportedVersionError):
        from_bytes(bytes(data[:5]))


@pytest.mark.parametrize("scheme_id", [4, 200])
def test_unknown_scheme_id_lists_the_allowed_ones(scheme_id: int) -> None:
    data = bytearray(to_bytes(_sealed()))
    data[5] = scheme_id
    allowed = "allowed: 0 \\(report\\).*3 \\(keyed-modular\\)"
    with pytest.raises(UnknownSchemeError, match=f"scheme id {scheme_id}; {allowed}"):
        from_bytes(bytes(data))


def test_non_canonical_models_json_is_refused() -> None:
    envelope = _sealed()
    spaced = json.dumps(MODELS, sort_keys=True).encode()  # ", " and ": " separators
    canonical = json.dumps(MODELS, sort_keys=True, separators=(",", ":")).encode()
    data = to_bytes(envelope)
    rebuilt = (data[:47] + len(spaced).to_bytes(2, "big") + spaced + data[49 + len(canonical):])
    with pytest.raises(FormatError, match="canonical"):
        from_bytes(rebuilt)


# --- JSON tampering --------------------------------------------------------------------------------

def _tampered_json(envelope: Envelope, **changes) -> str:
    document = json.loads(to_json(envelope))
    document.update(changes)
    return json.dumps(document)


def test_json_field_tampering_is_refused() -> None:
    envelope = _sealed()
    payload = bytearray(envelope.payload)
    payload[0] ^= 1
    flipped = base64.b64encode(bytes(payload)).decode()
    for changes in (
        {"payload": flipped},
        {"models": {**MODELS, "crypson-cgan": "4"}},
        {"models": {k: v for k, v in MODELS.items() if k != "crypson-vae"}},
        {"scheme": "report"},
        {"count": COUNT + 1},  # same flags length, so only the tag catches it
        {"part": 1},
        {"final": False},
        {"stream": base64.b64encode(bytes(16)).decode()},
    ):
        with pytest.raises(CiphertextError):
            _open(from_json(_tampered_json(envelope, **changes)))


def test_json_missing_tag_is_named() -> None:
    document = json.loads(to_json(_sealed()))
    del document["tag"]
    with pytest.raises(FormatError, match="missing field.*tag"):
        from_json(json.dumps(document))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nonce": "not base64!"}, "nonce"),
        ({"payload": "QUJD="}, "payload"),  # wrong padding
        ({"tag": 7}, "tag"),
        ({"count": "5"}, "count"),
        ({"count": True}, "count"),
        ({"models": ["crypson-cgan"]}, "models"),
        ({"models": {"crypson-cgan": 3}}, "models"),
        ({"scheme": 2}, "scheme"),
        ({"extra": 1}, "extra"),
        ({"nonce": base64.b64encode(bytes(8)).decode()}, "nonce"),
        ({"flags": base64.b64encode(bytes(2)).decode()}, "flags"),
        ({"part": "0"}, "part"),
        ({"final": 1}, "final"),
        ({"stream": base64.b64encode(bytes(8)).decode()}, "stream"),
    ],
)
def test_json_bad_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(FormatError, match=field):
        from_json(_tampered_json(_sealed(), **changes))


def test_json_version_scheme_and_shape_errors() -> None:
    envelope = _sealed()
    with pytest.raises(UnsupportedVersionError, match="version 1; this code reads version 2"):
        from_json(_tampered_json(envelope, crypson=1))
    with pytest.raises(UnknownSchemeError, match="'rot13'; allowed: report, keyed-timestep"):
        from_json(_tampered_json(envelope, scheme="rot13"))
    with pytest.raises(FormatError, match="not valid JSON"):
        from_json(to_json(envelope)[:-1])
    with pytest.raises(FormatError, match="must be an object"):
        from_json("[1, 2]")
    with pytest.raises(FormatError, match="repeated field.*payload"):
        from_json(to_json(envelope)[:-1] + ',"payload":""}')


# --- seal's input checks ---------------------------------------------------------------------------

def test_seal_validates_inputs() -> None:
    nonce = new_nonce()
    mac_key = derive_message_keys(KEY, nonce).mac_key
    ok = dict(scheme="keyed-gaussian", nonce=nonce, models=MODELS, count=9, flags=bytes(2), payload=bytes(144),
              mac_key=mac_key)
    seal(**ok)
    for changes, error, message in (
        ({"scheme": "keyed-rot13"}, UnknownSchemeError, "allowed: report"),
        ({"nonce": bytes(12)}, FormatError, "nonce must be 16 bytes, got 12"),
        ({"flags": bytes(1)}, FormatError, "ceil\\(count/8\\) = 2 bytes"),
        ({"count": -1}, FormatError, "count must be"),
        ({"models": {"crypson cgan": "3"}}, FormatError, "models: name"),
        ({"models": {"crypson-cgan": "ü"}}, FormatError, "models: version"),
        ({"models": {"crypson-cgan": "3" * 65}}, FormatError, "1-64 characters"),
        ({"mac_key": bytes(16)}, ValueError, "mac_key must be 32 bytes, got 16"),
    ):
        with pytest.raises(error, match=message):
            seal(**{**ok, **changes})


def test_envelope_copies_models_and_tag_covers_them() -> None:
    models = dict(MODELS)
    nonce = new_nonce()
    keys = derive_message_keys(KEY, nonce)
    envelope = seal("report", nonce, models, 0, b"", b"", keys.mac_key)
    models["crypson-cgan"] = "99"  # the caller's dict is not the envelope's
    verify(envelope, keys.mac_key)
    changed = dataclasses.replace(envelope, models={**MODELS, "crypson-cgan": "99"})
    with pytest.raises(AuthenticationError):
        verify(changed, keys.mac_key)


# --- size bounds and hostile JSON ------------------------------------------------------------------

def test_repeated_fields_are_named_once_each() -> None:
    text = "{" + ",".join(['"a":1'] * 40_000 + [f'"f{i}":1,"f{i}":2' for i in range(7)]) + "}"
    with pytest.raises(FormatError, match="^repeated field\\(s\\): a, f0, f1, f2, f3 and 3 more$"):
        from_json(text)


def test_oversized_ciphertexts_are_refused_before_parsing() -> None:
    from crypson.cipher.envelope import MAX_CIPHERTEXT_BYTES

    with pytest.raises(FormatError, match=f"ciphertext of {MAX_CIPHERTEXT_BYTES + 1} bytes is over the limit"):
        from_json("x" * (MAX_CIPHERTEXT_BYTES + 1))  # not JSON: the size is checked first
    with pytest.raises(FormatError, match="over the limit"):
        from_bytes(b"CRYP" + bytes(MAX_CIPHERTEXT_BYTES))


def test_deeply_nested_json_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="nested too deeply"):
        from_json("[" * 100_000 + "]" * 100_000)


# --- streams ---------------------------------------------------------------------------------------

def _stream(parts: int, stream: bytes = bytes(range(16))) -> list[Envelope]:
    sealed = []
    for part in range(parts):
        nonce = new_nonce()
        keys = derive_message_keys(KEY, nonce)
        sealed.append(seal("keyed-modular", nonce, MODELS, 0, b"", b"", keys.mac_key, stream=stream, part=part,
                           final=part == parts - 1))
    return sealed


def test_a_whole_stream_in_order_passes() -> None:
    from crypson.cipher.envelope import check_stream

    check_stream(_stream(3))
    check_stream(_stream(1))
    check_stream([])


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (lambda p: [p[0], p[2]], "line 2 is part 3 of its stream"),  # a part dropped
        (lambda p: [p[1], p[0], p[2]], "line 1 is part 2"),  # reordered
        (lambda p: [p[0], p[0], p[1], p[2]], "line 2 is part 1"),  # repeated
        (lambda p: p[:2], "ends after part 2 without its final part"),  # cut short
        (lambda p: [p[0], p[1], p[2], p[2]], "line 3 is the stream's last part, but 1 more follow"),
    ],
)
def test_stream_edits_are_refused(arrange, message: str) -> None:
    from crypson.cipher.envelope import StreamError, check_stream

    with pytest.raises(StreamError, match=message):
        check_stream(arrange(_stream(3)))


def test_parts_of_another_stream_are_refused() -> None:
    from crypson.cipher.envelope import StreamError, check_stream

    mixed = _stream(2, bytes(16))[:1] + _stream(2, bytes(range(16)))[1:]
    with pytest.raises(StreamError, match="line 2 belongs to another encryption"):
        check_stream(mixed)
