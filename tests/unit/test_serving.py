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
    service.operations = frozenset(serving.OPERATIONS)
    service.token_digest = serving.token_digest_from_env({serving.TOKEN_ENV_VAR: TOKEN})
    return service


TOKEN = "correct horse battery staple"


def _predict(service, rows: list[dict], token: str | None = TOKEN) -> list[dict]:
    return service.predict(None, pd.DataFrame(rows), {"token": token} if token is not None else None)


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


def test_requests_without_the_token_are_refused_with_401(service):
    from mlflow.exceptions import MlflowException

    for token in (None, "", "wrong token, long enough", TOKEN + " "):
        with pytest.raises(MlflowException, match="authentication required") as refused:
            _predict(service, [{"operation": "encrypt", "text": "AB"}], token)
        assert refused.value.get_http_status_code() == 401


def test_a_deployment_allows_only_its_operations(service, monkeypatch):
    from mlflow.exceptions import MlflowException

    sent = _predict(service, [{"operation": "encrypt", "text": "AB"}])[0]["ciphertext"]
    monkeypatch.setattr(service, "operations", frozenset({"encrypt"}))
    with pytest.raises(MlflowException, match="does not allow decrypt; it allows encrypt") as refused:
        _predict(service, [{"operation": "encrypt", "text": "AB"}, {"operation": "decrypt", "ciphertext": sent}])
    assert refused.value.get_http_status_code() == 403
    assert "ciphertext" in _predict(service, [{"operation": "encrypt", "text": "AB"}])[0]


def test_the_server_needs_a_token_and_valid_operations():
    with pytest.raises(ValueError, match="CRYPSON_SERVE_TOKEN must hold .*at least 16 characters.*got 5"):
        serving.token_digest_from_env({serving.TOKEN_ENV_VAR: "short"})
    with pytest.raises(ValueError, match="got 0 characters"):
        serving.token_digest_from_env({})
    assert serving.check_operations(["encrypt"]) == {"encrypt"}
    with pytest.raises(ValueError, match="operations must be one or both of decrypt, encrypt, got shred"):
        serving.check_operations(["shred"])
    with pytest.raises(ValueError, match="operations must be"):
        serving.check_operations([])


def test_a_refusal_does_not_echo_the_request(service):
    """MLflow's scoring server prefixes a predict error with the request data; a refusal keeps its own words."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        _predict(service, [{"operation": "encrypt", "text": "ATTACK AT DAWN"}], "wrong token, long enough")
    error = refused.value
    error.message = f"Failed to predict data '{error.message} ATTACK AT DAWN'"  # what the scoring server does
    assert "ATTACK" not in error.message and "ATTACK" not in error.serialize_as_json()
    assert error.message.startswith("authentication required")
