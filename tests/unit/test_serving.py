"""The served `crypson-cipher`'s row handling, on small untrained models: a bad row gets a one-line
error of its own and the other rows their answers; nothing unexpected reaches the client as a trace."""

import json

import pandas as pd
import pytest
import torch

from crypson.cipher import codec, serving
from crypson.cipher.keys import generate_key
from crypson.cipher.masks import get_scheme
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE

CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")


@pytest.fixture(scope="module")
def service() -> serving.CipherService:
    torch.manual_seed(0)
    vae = VAE(latent_dim=8, channels=(4, 4, 8, 8))
    service = serving.CipherService()
    service.models = codec.CipherModels(Generator(len(CLASSES), 8, 4), vae, LatentClassifier(vae.decoder, len(CLASSES),
                                        16, 0.0), CLASSES, {"crypson-cgan": "1", "crypson-vae": "1",
                                                            "crypson-classifier": "1"})
    service.scheme, service.key = get_scheme("keyed-modular"), generate_key()
    service.candidates, service.allow_misread = 1, True
    return service


def _predict(service, rows: list[dict]) -> list[dict]:
    return service.predict(None, pd.DataFrame(rows))


def test_rows_round_trip_each_on_its_own(service):
    sent = _predict(service, [{"operation": "encrypt", "text": "AB C"}, {"operation": "encrypt", "text": "D"}])
    # Independent rows: each is a one-part stream and decrypts alone, in any order.
    back = _predict(service, [{"operation": "decrypt", "ciphertext": row["ciphertext"]} for row in sent[::-1]])
    assert [len(row["text"]) for row in back] == [1, 4] and back[1]["text"][2] == " "


def test_a_bad_row_gets_its_own_one_line_error(service):
    good = _predict(service, [{"operation": "encrypt", "text": "OK"}])[0]["ciphertext"]
    rows = [
        {"operation": "decrypt", "ciphertext": good},
        {"operation": "decrypt", "ciphertext": "[" * 50_000 + "]" * 50_000},
        {"operation": "decrypt", "ciphertext": "{" + ",".join(['"a":1'] * 8000) + "}"},
        {"operation": "encrypt", "text": "A" * (serving.MAX_TEXT_CHARACTERS + 1)},
        {"operation": "encrypt", "text": "Hi!"},
        {"operation": "shred", "text": "x"},
        {"operation": "decrypt", "ciphertext": None},
    ]
    results = _predict(service, rows)
    assert len(results[0]["text"]) == 2
    expected = ["nested too deeply", "repeated field(s): a", f"over the limit of {serving.MAX_TEXT_CHARACTERS}",
                "unsupported characters '!'", "operation must be 'encrypt' or 'decrypt', got 'shred'",
                "needs a string 'ciphertext'"]
    for result, message in zip(results[1:], expected):
        assert set(result) == {"error"} and message in result["error"] and "\n" not in result["error"], result


def test_an_unexpected_failure_answers_without_a_trace(service, monkeypatch, caplog):
    def broken(models, envelopes, key, one_stream=True):
        raise RuntimeError("/secret/path/to/model.pt exploded")

    monkeypatch.setattr(codec, "decrypt", broken)
    good = _predict(service, [{"operation": "encrypt", "text": "OK"}])[0]["ciphertext"]
    result, = _predict(service, [{"operation": "decrypt", "ciphertext": good}])
    assert result == {"error": "internal error while processing this decrypt row"}
    assert "exploded" in caplog.text  # the server's log keeps the cause
    assert "/secret/path" not in json.dumps(result)
