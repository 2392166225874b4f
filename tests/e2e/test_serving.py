"""`crypson-cipher` served by `mlflow models serve` over real HTTP on 127.0.0.1."""

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.helpers import BIN, run

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TOKEN = "e2e-token-0123456789abcdef"


def post(port: int, records: list[dict], token: str | None = TOKEN) -> list[dict]:
    body = {"dataframe_records": records} | ({"params": {"token": token}} if token is not None else {})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


@pytest.fixture
def served(pipeline_copy, tmp_path):
    repo, _ = pipeline_copy
    # The tiny models are barely trained: almost every character is misread under every candidate.
    registered = run(["crypson", "serve-register", "--models", "champion", "--allow-misread"], repo)
    assert "registered crypson-cipher" in registered.stdout
    key = os.urandom(32)
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CRYPSON_KEY": key.hex(),
           "CRYPSON_SERVE_TOKEN": TOKEN,
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "models:/crypson-cipher@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(1)
        else:
            raise AssertionError("the model server did not start in 120 s")
        yield repo, port, key, tmp_path / "server.log"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_served_model_encrypts_and_decrypts_over_http(served):
    repo, port, key, log = served
    for token in (None, "not-the-token-but-long"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(port, [{"operation": "encrypt", "text": "Quixotic 77"}], token)
        body = refused.value.read()
        assert refused.value.code == 401 and b"authentication required" in body
        assert b"Quixotic" not in body  # a refusal does not echo the request
    encrypted = post(port, [{"operation": "encrypt", "text": "Hello World 42"},
                            {"operation": "encrypt", "text": "Hi!"},
                            {"operation": "rot13", "text": "x"}])
    envelope = json.loads(encrypted[0]["ciphertext"])
    assert envelope["count"] == 14 and envelope["models"]["crypson-vae"]
    assert "unsupported characters '!'" in encrypted[1]["error"]
    assert "operation must be" in encrypted[2]["error"]
    tampered = json.dumps(dict(envelope, tag=base64.b64encode(bytes(32)).decode()))
    decrypted = post(port, [{"operation": "decrypt", "ciphertext": encrypted[0]["ciphertext"]},
                            {"operation": "decrypt", "ciphertext": tampered}])
    text = decrypted[0]["text"]
    assert len(text) == 14 and [c == " " for c in text] == [c == " " for c in "Hello World 42"]
    assert "authentication failed" in decrypted[1]["error"]
    # The served decrypt is the CLI's: same models, same key, same text.
    by_cli = run(["crypson", "decrypt"], repo, stdin=encrypted[0]["ciphertext"] + "\n",
                 env={"CRYPSON_KEY": key.hex()})
    assert by_cli.stdout == text + "\n"
    # A malformed row gets its own one-line error; the others are answered.
    hostile = post(port, [{"operation": "decrypt", "ciphertext": "[" * 50_000 + "]" * 50_000},
                          {"operation": "decrypt", "ciphertext": encrypted[0]["ciphertext"]}])
    assert "nested too deeply" in hostile[0]["error"] and "\n" not in hostile[0]["error"]
    assert hostile[1]["text"] == text
    # Nothing in the served model is a pickle: weights files and the code that loads them.
    served_files = [p for p in (repo / "mlartifacts").rglob("*") if p.is_file()]
    assert not [p for p in served_files if p.suffix == ".pkl"]
    models = [p.read_text() for p in served_files if p.name == "MLmodel"]
    assert len(models) == 4 and all("loader_module: mlflow.pyfunc.loaders.code_model" in m for m in models)
    assert sum("served_model.py" in m for m in models) == 1  # the bundle, beside the three networks
    assert not (repo / "mlruns").exists()  # nothing logged outside the pipeline's experiment
    # The key is in none of the served model's artifacts, the store, or the server's log.
    forms = [key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    blobs = [log.read_bytes(), (repo / "mlflow.db").read_bytes()]
    blobs += [p.read_bytes() for p in (repo / "mlartifacts").rglob("*") if p.is_file()]
    assert not any(form in blob for form in forms for blob in blobs)
