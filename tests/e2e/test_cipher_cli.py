"""`crypson keygen | encrypt | decrypt` against the tiny pipeline's registered models.

The tiny models are barely trained, so the sender's check (cipher.candidates images a character, the
one its copy of the classifier reads back sent) cannot always succeed; what is checked is the
command-line contract: the registry's champion models are used, a message with a misread is refused
with a one-line error naming the count (or sent with --allow-misread, with a warning), spaces and
length survive, the receiver misreads no more characters than the sender warned about, a wrong key
or a modified ciphertext gives a clear error and no plaintext, and the key appears in no output,
log, or tracking store.
"""

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import BIN

pytestmark = pytest.mark.e2e


def crypson(repo: Path, *args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(["crypson", *args], cwd=repo, input=stdin, capture_output=True, env=full_env)


def test_encrypt_decrypt_round_trip_and_refusals(pipeline):
    repo, _ = pipeline
    key_file = repo / "alice.key"
    assert crypson(repo, "keygen", "--key-file", str(key_file)).returncode == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = crypson(repo, "keygen", "--key-file", str(key_file))
    assert again.returncode == 2 and b"refusing to overwrite" in again.stderr

    checked = crypson(repo, "encrypt", "--key-file", str(key_file), stdin=b"Hello World 42\n")
    if checked.returncode != 0:  # the likely case on these models: a letter no candidate reads back
        assert checked.returncode == 2 and checked.stdout == b"", checked.stderr
        assert re.fullmatch(rb"error: \d+ characters? would be misread .*--allow-misread\)\n", checked.stderr)
        assert b"Hello" not in checked.stderr
    sent = crypson(repo, "encrypt", "--key-file", str(key_file), "--allow-misread", stdin=b"Hello World 42\n")
    assert sent.returncode == 0, sent.stderr
    envelope = json.loads(sent.stdout)
    assert envelope["scheme"] == "keyed-modular" and envelope["count"] == 14
    assert envelope["models"]["crypson-vae"]  # the champion versions it was made with

    back = crypson(repo, "decrypt", "--key-file", str(key_file), "--images", "hello.png", stdin=sent.stdout)
    assert back.returncode == 0, back.stderr
    text = back.stdout.decode().rstrip("\n")
    assert len(text) == 14 and [c == " " for c in text] == [c == " " for c in "Hello World 42"]
    warned = re.search(rb"(\d+) characters? would be misread", sent.stderr)
    misread = sum(a != b for a, b in zip(text, "HeLLO WOrLd 42"))  # EMNIST balanced folds l, o onto L, O
    assert misread <= (int(warned.group(1)) if warned else 0), (text, sent.stderr)
    assert b"Hello" not in sent.stderr
    assert (repo / "hello.png").read_bytes().startswith(b"\x89PNG")
    assert (repo / "hello.png").stat().st_mode & 0o777 == 0o600  # the decoded handwriting is the plaintext
    to_file = crypson(repo, "decrypt", "--key-file", str(key_file), "--output", "plain.txt", stdin=sent.stdout)
    assert to_file.returncode == 0 and (repo / "plain.txt").read_bytes() == back.stdout
    assert (repo / "plain.txt").stat().st_mode & 0o777 == 0o600

    other = repo / "mallory.key"
    crypson(repo, "keygen", "--key-file", str(other))
    wrong = crypson(repo, "decrypt", "--key-file", str(other), stdin=sent.stdout)
    assert wrong.returncode == 2 and b"authentication failed" in wrong.stderr and wrong.stdout == b""

    tampered = dict(envelope, payload=base64.b64encode(b"\0" * 224).decode())
    modified = crypson(repo, "decrypt", "--key-file", str(key_file), stdin=json.dumps(tampered).encode())
    assert modified.returncode == 2 and b"authentication failed" in modified.stderr and modified.stdout == b""

    baseline = crypson(repo, "encrypt", "Hi", "--scheme", "report", "--key-file", str(key_file))
    assert baseline.returncode == 2 and b"--insecure-baseline" in baseline.stderr
    # The key in any of its forms is nowhere: outputs, errors, the MLflow store, the artifacts.
    material = bytes.fromhex(key_file.read_text().strip())
    forms = [material.hex().encode(), material.hex().upper().encode(), base64.b64encode(material),
             base64.urlsafe_b64encode(material)]
    outputs = [checked.stderr, sent.stdout, sent.stderr, back.stdout, back.stderr, wrong.stderr, modified.stderr]
    stored = [p.read_bytes() for p in [repo / "mlflow.db", *(repo / "mlartifacts").rglob("*")] if p.is_file()]
    for blob in outputs + stored:
        assert not any(form in blob for form in forms)


def test_key_from_environment_and_bad_input(pipeline):
    repo, _ = pipeline
    key = crypson(repo, "keygen", "--key-file", str(repo / "env.key"))
    assert key.returncode == 0
    env = {"CRYPSON_KEY": (repo / "env.key").read_text().strip()}
    binary = crypson(repo, "encrypt", "AB", "--binary", "--allow-misread", env=env)
    assert binary.returncode == 0 and binary.stdout.startswith(b"CRYP")
    assert crypson(repo, "decrypt", stdin=binary.stdout, env=env).returncode == 0
    unsupported = crypson(repo, "encrypt", "Hi!", env=env)
    assert unsupported.returncode == 2 and b"unsupported characters '!'" in unsupported.stderr
    nokey = crypson(repo, "encrypt", "Hi")
    assert nokey.returncode == 2 and b"CRYPSON_KEY" in nokey.stderr
    truncated = crypson(repo, "decrypt", stdin=binary.stdout[:-5], env=env)
    assert truncated.returncode == 2 and b"truncated" in truncated.stderr

    # Streams, hostile input, key files and output modes: tests/unit/test_cipher_cli.py, in-process.
