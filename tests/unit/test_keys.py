"""Keys, key files, nonces, HKDF subkeys and the ChaCha20 keystream."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypson.cipher.keys import (
    KEY_BYTES,
    KEY_ENV_VAR,
    NONCE_BYTES,
    MessageKeys,
    SecretKey,
    derive_message_keys,
    generate_key,
    key_from_env,
    new_nonce,
    prf_stream,
    read_key_file,
    write_key_file,
    xor_with_stream,
)

FIXED_KEY = SecretKey(bytes(range(32)))
FIXED_NONCE = bytes(range(0xA0, 0xB0))


def _renderings(secret: bytes) -> list[str]:
    """Ways a secret could leak into text: hex (both cases), base64, bytes repr."""
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1]]


def _assert_no_secret(text: str, secret: bytes) -> None:
    for rendering in _renderings(secret):
        assert rendering not in text
    # Not even a 16-hex-digit slice of it.
    assert not any(secret.hex()[i : i + 16] in text.lower() for i in range(0, 2 * len(secret) - 15))


# --- SecretKey -------------------------------------------------------------------------------------

def test_secret_key_reprs_are_redacted() -> None:
    key = generate_key()
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        _assert_no_secret(text, key.material)
    assert repr(key) == str(key) == "SecretKey(<redacted>)"


def test_secret_key_equality_and_length() -> None:
    material = bytes(range(32))
    assert SecretKey(material) == SecretKey(bytearray(material))
    assert SecretKey(material) != SecretKey(bytes(32))
    assert len(generate_key().material) == KEY_BYTES
    assert generate_key() != generate_key()
    with pytest.raises(ValueError, match="32 bytes, got 31") as raised:
        SecretKey(b"\xab" * 31)
    assert "abab" not in str(raised.value)
    with pytest.raises(TypeError):
        hash(SecretKey(material))


# --- key files --------------------------------------------------------------------------------------

def test_key_file_created_0600_and_round_trips(tmp_path) -> None:
    path = tmp_path / "crypson.key"
    key = write_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    content = path.read_text()
    assert content == key.material.hex() + "\n" and len(content) == 65
    assert content.strip() == content.strip().lower()
    assert read_key_file(path) == key


def test_key_file_is_0600_even_with_permissive_umask(tmp_path) -> None:
    previous = os.umask(0)
    try:
        write_key_file(tmp_path / "k")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600


def test_key_file_writes_a_given_key(tmp_path) -> None:
    returned = write_key_file(tmp_path / "k", FIXED_KEY)
    assert returned == FIXED_KEY
    assert (tmp_path / "k").read_text() == bytes(range(32)).hex() + "\n"


def test_key_file_refuses_overwrite_and_keeps_original(tmp_path) -> None:
    path = tmp_path / "k"
    original = write_key_file(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite") as raised:
        write_key_file(path, generate_key())
    assert str(path) in str(raised.value)
    assert path.read_bytes() == before
    assert read_key_file(path) == original


def test_key_file_needs_existing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="folder does not exist") as raised:
        write_key_file(tmp_path / "missing" / "k")
    assert "missing" in str(raised.value)


def test_read_missing_key_file_names_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="key file not found") as raised:
        read_key_file(tmp_path / "nope.key")
    assert "nope.key" in str(raised.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_read_refuses_open_permissions_like_ssh(tmp_path, mode: int) -> None:
    path = tmp_path / "k"
    key = write_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(PermissionError) as raised:
        read_key_file(path)
    message = str(raised.value)
    assert f"permissions {mode:04o} for '{path}' are too open" in message
    assert f"chmod 600 {path}" in message
    _assert_no_secret(message, key.material)


def test_read_accepts_0400_and_surrounding_whitespace(tmp_path) -> None:
    path = tmp_path / "k"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"  \n" + bytes(range(32)).hex().upper().encode() + b"\r\n\n")
    os.close(fd)
    os.chmod(path, 0o400)
    assert read_key_file(path) == FIXED_KEY


def test_read_refuses_a_fifo_without_waiting_for_a_writer(tmp_path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(ValueError, match="is not a regular file"):
        read_key_file(path)  # a blocking open would hang here for ever
    with pytest.raises(ValueError, match="is not a regular file"):
        read_key_file(tmp_path)


def test_read_refuses_a_symbolic_link_unless_asked(tmp_path) -> None:
    target = tmp_path / "k"
    write_key_file(target, FIXED_KEY)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=f"key file {link} is a symbolic link"):
        read_key_file(link)
    assert read_key_file(link, follow_symlinks=True) == FIXED_KEY


def test_read_refuses_a_key_file_another_user_owns(tmp_path, monkeypatch) -> None:
    path = tmp_path / "k"
    write_key_file(path, FIXED_KEY)
    owner = os.stat(path).st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # as if another account ran the CLI
    with pytest.raises(PermissionError, match=f"owned by uid {owner}, not by you \\(uid {owner + 1}\\)"):
        read_key_file(path)


def _private_file(path, content: bytes):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, content)
    os.close(fd)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a1" * 31 + "\n", "got 62 characters"),
        ("a1" * 33 + "\n", "got 66 characters"),
        ("", "got 0 characters"),
        ("a1" * 31 + "zq\n", "other than hex digits"),
        ("a1" * 30 + "a1 a\n", "other than hex digits"),
    ],
)
def test_read_rejects_bad_content_without_echoing_it(tmp_path, content: str, expected: str) -> None:
    path = _private_file(tmp_path / "k", content.encode())
    with pytest.raises(ValueError, match=expected) as raised:
        read_key_file(path)
    message = str(raised.value)
    assert str(path) in message
    stripped = content.strip()
    if stripped:
        assert stripped not in message and stripped[:16] not in message


def test_read_rejects_binary_content_without_echoing_it(tmp_path) -> None:
    path = _private_file(tmp_path / "k", b"\xff\xfe" + b"\x9c" * 62)
    with pytest.raises(ValueError, match="not ASCII") as raised:
        read_key_file(path)
    assert "0xff" not in str(raised.value) and "\\x9c" not in str(raised.value)


# --- environment -----------------------------------------------------------------------------------

def test_key_from_env() -> None:
    hex_key = bytes(range(32)).hex()
    assert key_from_env({KEY_ENV_VAR: hex_key}) == FIXED_KEY
    assert key_from_env({"OTHER": f" {hex_key}\n"}, name="OTHER") == FIXED_KEY


def test_key_from_env_unset_and_bad_values() -> None:
    with pytest.raises(LookupError, match=f"{KEY_ENV_VAR} is not set"):
        key_from_env({})
    bad = "cd" * 31 + "x!"
    with pytest.raises(ValueError, match="other than hex digits") as raised:
        key_from_env({KEY_ENV_VAR: bad})
    assert bad not in str(raised.value) and "cdcd" not in str(raised.value)
    with pytest.raises(ValueError, match="got 62 characters") as raised:
        key_from_env({KEY_ENV_VAR: "cd" * 31})
    assert "cdcd" not in str(raised.value)


# --- nonces ----------------------------------------------------------------------------------------

def test_nonces_have_right_length_and_never_repeat() -> None:
    draws = [new_nonce() for _ in range(100_000)]
    assert all(len(nonce) == NONCE_BYTES for nonce in draws[:100])
    assert len(set(draws)) == len(draws)


# --- HKDF subkeys ----------------------------------------------------------------------------------

def test_message_keys_match_rfc5869_hkdf_computed_independently() -> None:
    key, nonce = generate_key(), new_nonce()
    expected = HKDF(algorithm=hashes.SHA256(), length=96, salt=nonce,
                    info=b"crypson/v1/message-keys").derive(key.material)
    keys = derive_message_keys(key, nonce)
    assert keys.mask_key + keys.mac_key + keys.flags_key == expected
    assert [len(k) for k in (keys.mask_key, keys.mac_key, keys.flags_key)] == [32, 32, 32]


def test_message_keys_fixed_vector() -> None:
    # Generated once with this implementation (HKDF-SHA256, key 00..1f, salt a0..af, info as documented).
    keys = derive_message_keys(FIXED_KEY, FIXED_NONCE)
    assert keys.mask_key.hex() == "7208f77eeb7ec18ee4a2a6a0b92359f9057dd1d6165c26e1b439b1e0becf60ad"
    assert keys.mac_key.hex() == "44dec2806246a4249c43b95afc1933b6cbf041fd75ea9ed32075dbd7664df215"
    assert keys.flags_key.hex() == "a9cd7a2d957847ca0997ba4abcf51369c44472b4b4461f7746e97d282d44e167"


def test_message_keys_deterministic_and_distinct() -> None:
    key, other_key = generate_key(), generate_key()
    nonce, other_nonce = new_nonce(), new_nonce()
    keys = derive_message_keys(key, nonce)
    assert derive_message_keys(key, nonce) == keys
    assert len({keys.mask_key, keys.mac_key, keys.flags_key}) == 3
    for other in (derive_message_keys(key, other_nonce), derive_message_keys(other_key, nonce)):
        assert {other.mask_key, other.mac_key, other.flags_key}.isdisjoint(
            {keys.mask_key, keys.mac_key, keys.flags_key})


@pytest.mark.parametrize("length", [0, 15, 17, 32])
def test_message_keys_refuse_wrong_nonce_length(length: int) -> None:
    with pytest.raises(ValueError, match=f"nonce must be 16 bytes, got {length} bytes"):
        derive_message_keys(FIXED_KEY, bytes(length))


def test_message_keys_repr_is_redacted() -> None:
    keys = derive_message_keys(generate_key(), new_nonce())
    for text in (repr(keys), str(keys), f"{keys}", f"{keys!r}", repr([keys])):
        for secret in (keys.mask_key, keys.mac_key, keys.flags_key):
            _assert_no_secret(text, secret)
    assert repr(keys) == "MessageKeys(<redacted>)"
    with pytest.raises(ValueError, match="mac_key must be 32 bytes, got 3"):
        MessageKeys(bytes(32), b"abc", bytes(32))


# --- ChaCha20 keystream ----------------------------------------------------------------------------

def test_prf_stream_matches_rfc8439_test_vector() -> None:
    # RFC 8439 appendix A.1, test vector #1: all-zero key, all-zero nonce, block counter 0.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586")
    assert prf_stream(bytes(32), 64) == expected


def test_prf_stream_deterministic_prefix_consistent_and_keyed() -> None:
    subkey, other = derive_message_keys(generate_key(), new_nonce()).mask_key, bytes(range(32))
    stream = prf_stream(subkey, 1000)
    assert len(stream) == 1000 and prf_stream(subkey, 0) == b""
    assert prf_stream(subkey, 1000) == stream
    assert prf_stream(subkey, 37) == stream[:37]  # a longer stream extends a shorter one
    assert prf_stream(other, 1000) != stream
    assert len(set(stream)) > 200  # looks uniform: 1000 bytes cover most byte values


def test_prf_stream_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="subkey must be 32 bytes, got 16 bytes"):
        prf_stream(bytes(16), 8)
    with pytest.raises(ValueError, match="non-negative"):
        prf_stream(bytes(32), -1)


def test_xor_with_stream_round_trip() -> None:
    subkey = derive_message_keys(generate_key(), new_nonce()).flags_key
    data = os.urandom(123)
    masked = xor_with_stream(subkey, data)
    assert masked != data and len(masked) == len(data)
    assert xor_with_stream(subkey, masked) == data
    assert bytes(a ^ b for a, b in zip(data, prf_stream(subkey, len(data)))) == masked
    assert xor_with_stream(subkey, b"") == b""
